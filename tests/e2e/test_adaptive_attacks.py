"""Adaptive white-box attacks through IRECE (issue 25), on the tiny world.

The adaptive textual inversion trains its token through IRECE's surrogate
(`defenses.irece.IreceSurrogate`); these tests hold that (a) its machinery leaves the
undefended attack bit for bit what it was, (b) it is IRECE's own mask and re-noise that enter
the objective, and (c) an audit with `--irece` names the adaptive threat model, gates the
adaptive and the transfer attacker's restarts together, and a leaking model still does not pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
TI = {"ti-steps": 3, "ti-batch-size": 4, "ti-lr": 1e-2, "ti-train-images": 3,
      "attack-restarts": 1}


def squares(n: int = 4) -> torch.Tensor:
    """Dark images with a red square: something for a token to learn."""
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.2
    images[:, :, 8:24, 8:24] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return images


def surrogate_for(pipe, *, share: float, tau: float = 0.4):
    from pytest_erasure.defenses.irece import (
        IreceSurrogate,
        concept_conditioning,
        intervention_timesteps,
    )

    embeds, indices = concept_conditioning(pipe, "a circle", "circle")
    timesteps = intervention_timesteps(pipe.scheduler, 4, 0.2, 1)
    return IreceSurrogate(pipe.unet, embeds, indices, timesteps, pipe.scheduler.alphas_cumprod,
                          tau=tau, resolutions=None, seed=3, share=share)


def train(pipe, surrogate=None, micro_batch=None):
    from pytest_erasure.attacks.textual_inversion import train_textual_inversion

    return train_textual_inversion(pipe, squares(), token="<circle>", init_token="shape",
                                   steps=3, lr=1e-2, batch_size=4, seed=5, surrogate=surrogate,
                                   micro_batch=micro_batch)


def test_a_surrogate_that_defends_nothing_is_the_undefended_attack_bit_for_bit():
    """The hook costs the undefended attack nothing: a surrogate that defends no sample draws
    from its own generator only, so the token, every loss and every draw are the plain run's."""
    from pytest_erasure.testing import tiny_pipeline

    pipe = tiny_pipeline(0)
    plain, plain_losses = train(pipe)
    idle = surrogate_for(pipe, share=0.0)
    same, same_losses = train(pipe, idle)
    assert idle.defended == 0
    assert torch.equal(plain, same) and plain_losses == same_losses
    defended, _ = train(pipe, surrogate_for(pipe, share=1.0))
    assert not torch.equal(plain, defended)  # ...and one that defends changes what is learned


def test_the_surrogate_re_noises_irece_s_mask_with_the_consistent_target():
    """Inside the loss: the defended samples sit at IRECE's intervention timestep, their masked
    entries are the surrogate's draw xi, the target there is the noise that takes xi back to
    the clean latent, and everything outside the mask is the drawn sample bit for bit. The
    same micro-batch split of a batch learns the same token (the draws are made whole)."""
    from pytest_erasure.defenses.irece import IRECE, concept_conditioning
    from pytest_erasure.testing import tiny_pipeline

    pipe = tiny_pipeline(0)
    surrogate = surrogate_for(pipe, share=1.0, tau=0.4)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 16, 16, generator=gen)
    noise = torch.randn(3, 4, 16, 16, generator=gen)
    draw = surrogate.redraw({"latents": latents, "noise": noise,
                             "t": torch.tensor([10, 500, 900]),
                             "pick": torch.zeros(3, dtype=torch.long)})
    assert draw["t"].tolist() == surrogate.timesteps * 3 == [501] * 3
    a = pipe.scheduler.alphas_cumprod[draw["t"]].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    defended, target = surrogate(noisy, latents, noise, draw["t"], draw)
    mask = surrogate.mask(noisy, draw["t"]).bool().expand_as(noisy)
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.equal(defended[~mask], noisy[~mask]) and torch.equal(target[~mask], noise[~mask])
    assert torch.equal(defended[mask], draw["xi"][mask])
    back = (defended - (1 - a).sqrt() * target) / a.sqrt()  # the x0 the target points at
    assert torch.allclose(back[mask], latents[mask], atol=1e-4)
    # The mask is IRECE's own: the generation-time callback on the same latent at the same step.
    embeds, indices = concept_conditioning(pipe, "a circle", "circle")
    irece = IRECE(pipe.unet, embeds, indices, num_inference_steps=4, t_star=0.2, tau=0.4)
    irece.intervene(pipe.scheduler, noisy[:1], torch.tensor(501), 1)
    assert torch.equal(irece.masks[0].bool(), mask[:1, :1])
    whole, _ = train(pipe, surrogate_for(pipe, share=0.5))
    split, _ = train(pipe, surrogate_for(pipe, share=0.5), micro_batch=2)
    assert torch.allclose(whole, split, atol=1e-5)


# -- end to end: what an audit with --irece reports ----------------------------------------------

def world(paths: dict[str, Path], erased: str) -> list[str]:
    return [f"--standard-model={paths['standard']}", f"--erased-model={paths[erased]}",
            f"--concepts={paths['concepts']}"]


def embedding_case(report: dict) -> dict:
    return next(c for c in report["cases"] if c["kind"] == "erasure"
                and c["scenario"] == "embedding-white")


@pytest.fixture(scope="module")
def audits(tiny_world, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The white-box embedding case with --irece: the leaky model under the default (adaptive)
    threat and under --erasure-threat=transfer, and the erased model under the adaptive one."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("adaptive-audits")
    (root / "test_audit.py").write_text(AUDIT)
    (root / "pytest.ini").write_text("[pytest]\n")
    # Three restarts: one run cannot show how runs vary, and its case is never decided.
    budget = [f"--{k}={v}" for k, v in {**TI, "attack-restarts": 3}.items()]
    reports = {}
    for name, model, extra in (("leaky", "leaky", []),
                               ("leaky-transfer", "leaky", ["--erasure-threat=transfer"]),
                               ("erased", "erased", [])):
        out = root / name
        result = subprocess.run(
            [sys.executable, "-m", "pytest", str(root / "test_audit.py"), "-q", "-p",
             "no:randomly", "-p", "no:cacheprovider", *world(tiny_world, model), "--samples=8",
             "--steps=4", "--batch-size=8", "--irece", "--scenarios=embedding-white",
             "--erasure-gate=point", f"--erasure-cache={root / 'cache'}",
             f"--erasure-report={out}", *budget, *extra],
            cwd=root, capture_output=True, text=True, timeout=900,
            env={**__import__("os").environ,
                 "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert result.returncode in (0, 1), result.stdout + result.stderr
        reports[name] = json.loads((out / "report.json").read_text())
    return reports


def test_with_irece_the_white_box_token_is_the_adaptive_attacker_s(audits) -> None:
    """Under the default threat the white-box embedding case trained through IRECE and says so;
    a leaking model does not pass (its defended CRR is over the bar: FAIL)."""
    leaky = embedding_case(audits["leaky"])
    assert leaky["facts"]["threat_model"] == "white-box adaptive"
    assert "threat model white-box adaptive" in leaky["message"]
    adaptive = leaky["facts"]["adaptive"]
    assert adaptive["defense"] == "irece" and adaptive["defended_samples"] > 0
    assert adaptive["timesteps"] == [501]  # t* = 0.2 of 4 DDIM steps: step 1's timestep
    assert leaky["verdict"] == "fail" and not leaky["passed"], leaky["message"]
    # The adaptive attacker also runs the transfer attack and keeps the stronger: its 3 restarts
    # and then the transfer attacker's 3, every one gated.
    runs = leaky["facts"]["attack_runs"]
    assert [r["attack"] for r in runs] == ["adaptive"] * 3 + ["transfer"] * 3
    assert set(leaky["facts"]["restarts"]["per_restart"]) == {f"restart-{r}" for r in range(6)}


def test_transfer_threat_learns_on_the_undefended_model(audits) -> None:
    """--erasure-threat=transfer runs the transfer attack (no surrogate, its own token) and
    labels it so; the leak fails there too."""
    transfer = embedding_case(audits["leaky-transfer"])
    assert transfer["facts"]["threat_model"] == "white-box transfer"
    assert "adaptive" not in transfer["facts"]
    assert transfer["verdict"] == "fail"
    adaptive = embedding_case(audits["leaky"])
    assert transfer["artifacts"]["embedding"] != adaptive["artifacts"]["embedding"]
    # ... and the adaptive case's transfer restarts are these very tokens (one cache entry).
    assert adaptive["artifacts"]["embedding-restart-3"] == transfer["artifacts"]["embedding"]


def test_an_adaptive_case_is_not_held_back_as_a_transfer_result(audits) -> None:
    """The erased (dark) model behind IRECE, attacked adaptively: the case is judged on its
    evidence, with no 'transfer attack' reason keeping it from passing."""
    erased = embedding_case(audits["erased"])
    assert erased["facts"]["threat_model"] == "white-box adaptive"
    assert "transfer attack" not in (erased["reason"] or "")
    assert erased["verdict"] == "pass", erased["message"]


# -- the adaptive DDIM inversion -------------------------------------------------------------------

def latent_case(report: dict) -> dict:
    return next(c for c in report["cases"] if c["kind"] == "erasure"
                and c["scenario"] == "latent-white-null")


@pytest.fixture(scope="module")
def latent_audits(tiny_world, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The white-box null-prompt latent case of the leaky model: with --irece under the
    default (adaptive) threat, under --erasure-threat=transfer, and without a defense."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("adaptive-latent-audits")
    (root / "test_audit.py").write_text(AUDIT)
    (root / "pytest.ini").write_text("[pytest]\n")
    reports = {}
    for name, extra in (("adaptive", ["--irece"]),
                        ("transfer", ["--irece", "--erasure-threat=transfer"]),
                        ("undefended", [])):
        out = root / name
        result = subprocess.run(
            [sys.executable, "-m", "pytest", str(root / "test_audit.py"), "-q", "-p",
             "no:randomly", "-p", "no:cacheprovider", *world(tiny_world, "leaky"),
             "--samples=4", "--steps=4", "--batch-size=4", "--scenarios=latent-white-null",
             "--erasure-gate=point", "--inversion-adaptive-steps=2",
             f"--erasure-cache={root / 'cache'}", f"--erasure-report={out}", *extra],
            cwd=root, capture_output=True, text=True, timeout=900,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert result.returncode in (0, 1), result.stdout + result.stderr
        reports[name] = json.loads((out / "report.json").read_text())
    return reports


def saved_latents(case: dict) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(case["artifacts"]["latents"])["latents"]


def test_with_irece_the_white_box_inversion_is_refined_through_it(latent_audits) -> None:
    """Under the default threat the latent case is the adaptive attacker's: its latents were
    refined through IRECE's sampling surrogate (facts say how and which were kept), and the
    leaking model does not pass."""
    case = latent_case(latent_audits["adaptive"])
    assert case["facts"]["threat_model"] == "white-box adaptive"
    assert "threat model white-box adaptive" in case["message"]
    adaptive = case["facts"]["adaptive"]
    assert adaptive["defense"] == "irece" and adaptive["iterations"] == 2
    assert len(adaptive["kept"]) == 4 and set(adaptive["kept"]) <= {"inverted", "refined"}
    # The transfer attacker's CRR on the same references, beside: both threat models reported.
    assert adaptive["transfer_n"] == 4 and 0 <= adaptive["transfer_hits"] <= 4
    assert "transfer attack" not in (case["reason"] or "")
    assert case["verdict"] == "fail" and not case["passed"], case["message"]


def test_without_the_adaptive_attacker_the_inversion_is_the_plain_one_bit_for_bit(
        latent_audits) -> None:
    """No defense, or --erasure-threat=transfer: the latents are the plain DDIM inversion, the
    same bits; the adaptive case's latents equal them wherever the attacker kept the inverted
    one, and the transfer case is labelled so."""
    plain = saved_latents(latent_case(latent_audits["undefended"]))
    transfer_case = latent_case(latent_audits["transfer"])
    assert torch.equal(saved_latents(transfer_case), plain)
    assert transfer_case["facts"]["threat_model"] == "white-box transfer"
    assert "adaptive" not in transfer_case["facts"]
    assert latent_case(latent_audits["undefended"])["facts"]["threat_model"] == "white-box"
    adaptive_case = latent_case(latent_audits["adaptive"])
    adaptive = saved_latents(adaptive_case)
    for i, kept in enumerate(adaptive_case["facts"]["adaptive"]["kept"]):
        assert torch.equal(adaptive[i], plain[i]) == (kept == "inverted")
    # The reconstruction the case is gated on is the inversion's own, the same in all three.
    assert adaptive_case["facts"]["reconstruction"] == transfer_case["facts"]["reconstruction"]
