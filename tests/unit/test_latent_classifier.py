"""The guidance probe's latent classifier (`attacks.latent_classifier`, the paper's
`LatentClassifierT`) on the tiny world's real pipelines.

The tiny world's concept is brightness (its detector's rule). Its models ignore the prompt
almost entirely (the concept's and the neutral prompts' latents of one model are not
separable: a nearest-mean rule on clean latents scored 0.48 on 64 fresh ones), so the classes
here are the images the detector tells apart: the bright standard model's images of the
concept's prompts (every one flagged) against the dark erased model's images of the neutral
prompts (none flagged), encoded by the VAE. The tiny VAE's latents have a standard deviation of
0.044 under SD's scaling factor 0.18215, so at almost every timestep the paper's power-law draw
buries them under unit noise and nothing is learnt (300 and 1,000 steps: held-out loss stayed
at ln 2); SD chose 0.18215 to give its latents unit variance, and so here the tiny VAE's
scaling factor is set the same way (0.18215 / 0.0436). Measured (`pytest
tests/unit/test_latent_classifier.py -k learns`, 64 images per class, 300 steps, seed 0, the
paper's other settings): the kept weights (step 300) score held-out loss 0.178 and balanced
accuracy 0.92 on the split's 12 images (1.0 at t = 100..700, 0.83 at t = 900), and 1.0 on 64
fresh latents (0.89 at t = 900); chance is 0.5.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

PROMPTS = ("a circle", "a red circle")
NEUTRAL = ("a shape", "")


SCALING = 0.18215 / 0.0436
"""The tiny VAE's scaling factor that gives its latents unit variance, as SD's 0.18215 does."""


def _pipeline(bias: float) -> Any:
    """A tiny-world model (bright for bias > 0, dark below), its VAE scaled as SD's is."""
    from pytest_erasure.testing import _shift_output, tiny_pipeline

    pipe = _shift_output(tiny_pipeline(0), bias)
    pipe.vae.register_to_config(scaling_factor=SCALING)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(bias: float, prompts: tuple[str, ...], n: int, salt: int) -> Any:
    from pytest_erasure.attacks.inversion import encode

    pipe = _pipeline(bias)
    with torch.no_grad():
        images = pipe([prompts[i % len(prompts)] for i in range(n)], num_inference_steps=4,
                      generator=[torch.Generator().manual_seed(salt + i) for i in range(n)],
                      height=32, width=32, output_type="pt").images
    return encode(pipe, images.float(), 64).float()


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    from diffusers import DDIMScheduler

    from pytest_erasure.attacks.latent_classifier import train
    from pytest_erasure.testing import tiny_pipeline

    alphas = DDIMScheduler.from_config(tiny_pipeline(0).scheduler.config).alphas_cumprod
    pos, neg = _latents(0.6, PROMPTS, 64, 0), _latents(-0.6, NEUTRAL, 64, 1000)
    labels = torch.tensor([1.0] * 64 + [0.0] * 64)
    state, facts = train(torch.cat([pos, neg]), labels, alphas, steps=300, seed=0)
    return {"state": state, "facts": facts, "alphas": alphas}


def test_the_classifier_learns_the_concept_on_held_out_latents(trained: dict[str, Any]) -> None:
    from torch import nn

    from pytest_erasure.attacks.latent_classifier import evaluate
    from pytest_erasure.noisy_classifier import from_state

    facts = trained["facts"]
    assert facts["held_out_images"] == {"positives": 6, "negatives": 6}
    assert facts["kept"]["balanced_accuracy"] > 0.75, facts["held_out_curve"]
    assert len(facts["held_out_curve"]) == 10 and facts["train_loss"]
    fresh = torch.cat([_latents(0.6, PROMPTS, 32, 5000), _latents(-0.6, NEUTRAL, 32, 6000)])
    scores = evaluate(from_state(trained["state"]), fresh,
                      torch.tensor([1.0] * 32 + [0.0] * 32), nn.BCEWithLogitsLoss(),
                      torch.Generator().manual_seed(7))
    assert scores["balanced_accuracy"] > 0.75, scores


def test_training_is_deterministic_in_its_seed() -> None:
    from pytest_erasure.attacks.latent_classifier import train

    alphas = torch.linspace(0.999, 0.01, 1000)
    latents = torch.randn((12, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1.0] * 6 + [0.0] * 6)
    a, facts = train(latents, labels, alphas, steps=5, seed=3)
    b, _ = train(latents, labels, alphas, steps=5, seed=3)
    c, _ = train(latents, labels, alphas, steps=5, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert facts["train_images"] == {"positives": 5, "negatives": 5}


def test_a_class_missing_is_refused() -> None:
    from pytest_erasure.attacks.latent_classifier import train

    with pytest.raises(ValueError, match="needs both classes"):
        train(torch.randn(4, 4, 4, 4), torch.ones(4), torch.linspace(0.99, 0.01, 1000),
              steps=1, seed=0)


def test_the_guide_moves_the_dark_model_towards_the_concept(trained: dict[str, Any]) -> None:
    """The sampler's latent guidance (`samplers.steer` -> `classifier_guide`, kind
    "latent-classifier") on the dark model: every guided final latent reads as more of the
    concept to the classifier (its logit at t = 0) than the same seed's unguided one (eta
    equal), and more so at the largest published scale. Read in latent space: the tiny
    decoder's output is almost all its bias, so the images' brightness barely moves."""
    from pytest_erasure.cache import tensor_digest
    from pytest_erasure.noisy_classifier import from_state, leave
    from pytest_erasure.samplers import steer

    sha = tensor_digest(trained["state"])
    leave(trained["state"], sha)
    pipe = _pipeline(-0.6)
    classifier = from_state(trained["state"])

    def logits(scale: float) -> list[float]:
        scheduler, kwargs = steer(pipe, {
            "eta": 1.0, "classifier_scale": scale,
            "classifier": {"kind": "latent-classifier", "sha256": sha, "label": "circle"}})
        original, pipe.scheduler = pipe.scheduler, scheduler
        try:
            with torch.no_grad():
                final = pipe(["a circle"] * 3, num_inference_steps=4, height=32, width=32,
                             generator=[torch.Generator().manual_seed(s) for s in (3, 4, 5)],
                             output_type="latent", **kwargs).images
        finally:
            pipe.scheduler = original
        with torch.no_grad():
            return classifier(final.float(), torch.zeros(3, dtype=torch.long)).flatten().tolist()

    plain, guided, stronger = logits(0.0), logits(25.0), logits(193.0)
    assert all(g > p for g, p in zip(guided, plain, strict=True)), (plain, guided)
    assert all(s > g for s, g in zip(stronger, guided, strict=True)), (guided, stronger)


def test_the_cache_key_changes_with_each_input() -> None:
    from pytest_erasure.cache import digest
    from pytest_erasure.scenarios.guidance import classifier_key

    base: dict[str, Any] = {
        "model": "m", "concept": "circle", "prompts": ["a circle"], "neutral": ["a shape"],
        "detector": "d", "label": "circle", "images": 48, "steps": 300, "seed": 1,
        "data": "x", "numerics": {"dtype": "float32", "device": "cpu"}}
    changed: dict[str, Any] = {
        "model": "m2", "concept": "square", "prompts": ["a red circle"], "neutral": [""],
        "detector": "d2", "label": "round", "images": 49, "steps": 301, "seed": 2,
        "data": "y", "numerics": {"dtype": "float16", "device": "cpu"}}
    keys = {digest(classifier_key(**base))}
    for name, value in changed.items():
        keys.add(digest(classifier_key(**{**base, name: value})))
    assert len(keys) == 1 + len(changed)
    assert digest(classifier_key(**base)) == digest(classifier_key(**dict(base)))


def test_weights_are_checked_against_their_sha256(tmp_path: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    from pytest_erasure import noisy_classifier as lc

    monkeypatch.setattr(lc, "FOLDER", tmp_path)
    model = lc.LatentClassifierT(64, torch.linspace(0.99, 0.01, 1000))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(lc.weights_file("0" * 64)))
    lc.load.cache_clear()
    with pytest.raises(ValueError, match="does not match"):
        lc.load("0" * 64, "cpu")
    with pytest.raises(FileNotFoundError):
        lc.load("1" * 64, "cpu")
