"""Textual inversion and the embedding scenarios, on real tiny SD-architecture pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.errors import ErasureInputError

torch = pytest.importorskip("torch")


def squares(n: int = 4) -> torch.Tensor:
    """Dark images with a red square: something for a token to learn."""
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.2
    images[:, :, 8:24, 8:24] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return images


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.clone() for name in ("unet", "text_encoder", "vae")
            for k, v in getattr(pipe, name).state_dict().items()}


def test_training_lowers_the_loss_and_changes_nothing_shared():
    from pytest_erasure.attacks.textual_inversion import (
        evaluation_loss,
        initial_vectors,
        train_textual_inversion,
    )
    from pytest_erasure.testing import tiny_pipeline

    pipe = tiny_pipeline()
    before, vocab = snapshot(pipe), len(pipe.tokenizer)
    images = squares()
    init = initial_vectors(pipe, "shape", 1)
    ticks: list[int] = []
    embeds, losses = train_textual_inversion(pipe, images, token="<sq>", init_token="shape",
                                             steps=10, lr=5e-2, batch_size=4, seed=0,
                                             progress=ticks.append)
    assert embeds.shape == (1, 32) and len(losses) == 10 and sum(ticks) == 10
    assert not torch.equal(embeds, init)  # the new row learned
    assert evaluation_loss(pipe, images, "<sq>", embeds, samples=32) < \
        evaluation_loss(pipe, images, "<sq>", init, samples=32)
    # Only the new row learns: every existing row, every other weight, the shared tokenizer,
    # the text encoder's hooks and gradients are exactly as they were.
    after = snapshot(pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(pipe.tokenizer) == vocab and "<sq>" not in pipe.tokenizer.get_vocab()
    assert not pipe.text_encoder.get_input_embeddings()._forward_hooks
    assert all(p.grad is None for p in pipe.unet.parameters())


def test_saved_embedding_reloads_through_diffusers(tmp_path: Path):
    from pytest_erasure.attacks.textual_inversion import (
        encode_with_embedding,
        save_learned_embeds,
    )
    from pytest_erasure.testing import tiny_pipeline

    pipe = tiny_pipeline()
    embeds = torch.randn(2, 32, generator=torch.Generator().manual_seed(1)) * 0.1
    file = save_learned_embeds(tmp_path / "emb", "<c>", embeds)
    assert file.name == "learned_embeds.safetensors"
    ours = encode_with_embedding(pipe, "a red <c>", "<c>", embeds)
    assert ours.shape == (1, 77, 32)
    for source, kwargs in ((file.parent, {}), (file, {"token": "<c>"})):
        fresh = tiny_pipeline()
        fresh.load_textual_inversion(str(source), **kwargs)
        with torch.no_grad():
            theirs, _ = fresh.encode_prompt("a red <c>", "cpu", 1, False)
        assert torch.allclose(ours, theirs, atol=1e-6)
    # A prompt without the token encodes as the untouched pipeline does.
    with torch.no_grad():
        plain, _ = pipe.encode_prompt("a red square", "cpu", 1, False)
    assert torch.equal(encode_with_embedding(pipe, "a red square", "<c>", embeds), plain)
    assert len(pipe.tokenizer) == len(tiny_pipeline().tokenizer)


def test_bad_budgets_are_usage_errors():
    from pytest_erasure.attacks.textual_inversion import train_textual_inversion
    from pytest_erasure.testing import tiny_pipeline

    pipe = tiny_pipeline()
    for kwargs in ({"steps": 0}, {"lr": 0.0}, {"batch_size": 0}, {"num_vectors": 0}):
        with pytest.raises(ErasureInputError):
            train_textual_inversion(pipe, squares(), token="<x>", **kwargs)
    with pytest.raises(ErasureInputError, match="already in the tokenizer"):
        train_textual_inversion(pipe, squares(), token="shape", steps=1)
    with pytest.raises(ErasureInputError):
        train_textual_inversion(pipe, squares()[:0], token="<x>", steps=1)


def test_scenario_ids_and_options():
    from pytest_erasure.scenarios.base import registry

    scenarios = registry()
    assert {"embedding-white", "embedding-black"} <= set(scenarios)
    assert scenarios["embedding-white"].access == "white-box"
    assert scenarios["embedding-black"].access == "black-box"
    names = {o.name: o for o in scenarios["embedding-white"].options}
    assert set(names) >= {"ti-steps", "ti-lr", "ti-batch-size", "ti-init-token", "ti-vectors"}
    assert (names["ti-steps"].default, names["ti-lr"].default,
            names["ti-batch-size"].default) == (100, 2e-3, 32)
    assert names["ti-accumulation"].default == 1
    from pytest_erasure.budgets import help_note
    from pytest_erasure.config import budget_profiles

    assert "sd14: 3000, When Are Concepts Erased" in help_note("ti-steps", 100, budget_profiles())


# -- the scenarios through an audit session ------------------------------------------------------

# One restart: these tests are about one textual-inversion run (tests/unit/test_restarts.py: several).
TI = {"ti-steps": 4, "ti-batch-size": 4, "ti-lr": 1e-2, "ti-train-images": 3, "attack-restarts": 1}


def context(world: dict[str, Path], cache: Path | None, **options):
    from pytest_erasure.session import context_for_pipelines
    from pytest_erasure.testing import _shift_output, tiny_pipeline

    standard = _shift_output(tiny_pipeline(0), 0.6)
    erased = _shift_output(tiny_pipeline(0), -0.6)
    with torch.no_grad():  # an edited text side, so the target's encoder matters
        row = erased.tokenizer.convert_tokens_to_ids("a</w>")
        erased.text_encoder.get_input_embeddings().weight[row].mul_(-1)
    return context_for_pipelines(standard, erased, world["concepts"], cache, steps=4,
                                 samples=5, batch_size=8, scenario_options={**TI, **options})


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import pytest_erasure.attacks.textual_inversion as ti

    calls: list[str] = []
    real = ti.train_textual_inversion

    def spy(*args, **kwargs):
        calls.append(kwargs["token"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ti, "train_textual_inversion", spy)
    return calls


def test_embedding_plans(tiny_world: dict[str, Path], tmp_path: Path, counted: list[str]):
    from pytest_erasure.attacks.textual_inversion import encode_with_embedding
    from pytest_erasure.scenarios.base import registry

    ctx = context(tiny_world, tmp_path / "cache")
    white, black = registry()["embedding-white"], registry()["embedding-black"]
    circle = ctx.concepts.concepts["circle"]
    plan = white.plan(ctx, circle, "erased", 5)
    assert len(plan.inputs) == 5 and len({i.seed for i in plan.inputs}) == 5
    assert all(i.prompt is None and i.prompt_embeds.shape == (77, 32) for i in plan.inputs)
    facts = plan.facts
    assert facts["optimised_through"] == "erased" and facts["token"] == "<circle>"
    assert facts["training_images"]["source"] == "references"
    assert facts["budget"] == {"steps": 4, "lr": 1e-2, "batch_size": 4, "init_token": "shape",
                               "num_vectors": 1}
    assert isinstance(facts["final_loss"], float) and facts["prompts"][0] == "a <circle>"
    # The artifact reproduces the case by hand through diffusers.
    file = Path(plan.artifacts["embedding"])
    assert file.is_file()
    by_hand = context(tiny_world, None).pipeline("erased")
    by_hand.load_textual_inversion(str(file))
    with torch.no_grad():
        expected, _ = by_hand.encode_prompt("a <circle>", "cpu", 1, False)
    assert torch.allclose(plan.inputs[0].prompt_embeds, expected[0], atol=1e-6)

    # Black-box learns through the standard model, then encodes through the target's encoder.
    transfer = black.plan(ctx, circle, "erased", 5)
    assert transfer.facts["optimised_through"] == "standard"
    assert counted == ["<circle>", "<circle>"]
    learned = _load(transfer.artifacts["embedding"], "<circle>")
    assert torch.allclose(transfer.inputs[0].prompt_embeds, encode_with_embedding(
        ctx.pipeline("erased"), "a <circle>", "<circle>", learned)[0])
    # ... and the standard target of a black-box case is the white-box attack on the standard
    # model: one training serves both.
    white.plan(ctx, circle, "standard", 5)
    assert len(counted) == 2

    # A concept without references trains on the standard model's own images.
    square = white.plan(ctx, ctx.concepts.concepts["square"], "erased", 2)
    assert square.facts["training_images"]["source"].startswith("generated by the standard")
    assert square.facts["training_images"]["count"] == 3


def _load(path: str, token: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(path)[token]


def test_rerun_computes_nothing_and_reproduces(tiny_world: dict[str, Path], tmp_path: Path,
                                               counted: list[str]):
    from pytest_erasure.scenarios.base import registry

    scenario = registry()["embedding-white"]
    first = context(tiny_world, tmp_path / "cache")
    plan = scenario.plan(first, first.concepts.concepts["circle"], "erased", 3)
    assert len(counted) == 1
    rerun = context(tiny_world, tmp_path / "cache")  # a new session on the same cache
    again = scenario.plan(rerun, rerun.concepts.concepts["circle"], "erased", 3)
    assert len(counted) == 1 and rerun.cache.misses == 0
    assert all(torch.equal(a.prompt_embeds, b.prompt_embeds)
               for a, b in zip(plan.inputs, again.inputs, strict=True))
    assert again.facts == plan.facts and again.artifacts == plan.artifacts
    uncached = context(tiny_world, None)  # computed afresh: the same numbers
    fresh = scenario.plan(uncached, uncached.concepts.concepts["circle"], "erased", 3)
    assert len(counted) == 2
    assert torch.equal(fresh.inputs[0].prompt_embeds, plan.inputs[0].prompt_embeds)
    # A changed budget is a different entry.
    changed = context(tiny_world, tmp_path / "cache", **{"ti-steps": 5})
    scenario.plan(changed, changed.concepts.concepts["circle"], "erased", 3)
    assert len(counted) == 3


def test_zero_budget_is_refused_before_training(tiny_world: dict[str, Path], counted: list[str]):
    from pytest_erasure.scenarios.base import registry

    ctx = context(tiny_world, None, **{"ti-steps": 0})
    with pytest.raises(ErasureInputError, match="--ti-steps"):
        registry()["embedding-black"].plan(ctx, ctx.concepts.concepts["circle"], "erased", 2)
    assert counted == []
