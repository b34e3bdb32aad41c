"""Out of GPU memory: the batch is halved and retried, and results are those of a run at the
batch size that worked, bit for bit.

The out-of-memory is simulated where a real one happens, at the UNet's allocation for a batch:
the real tiny pipeline's `unet.forward` is wrapped to raise `torch.OutOfMemoryError` when it is
given more rows than a budget. Under classifier-free guidance a batch of B images is 2B UNet
rows (unconditional and conditional), so a budget of 8 rows fits a generation batch of 4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.memory import BatchSizes, chunked, halving, recording


def limit_rows(pipe, max_rows: int, module: str = "unet", methods: tuple[str, ...] = ("forward",)
               ) -> list[tuple[int, bool]]:
    """Make `pipe.<module>` run out of memory above `max_rows` rows in `methods`; returns the
    log of (rows, ran) of every call."""
    calls: list[tuple[int, bool]] = []
    target = getattr(pipe, module)
    for method in methods:
        real = getattr(target, method)

        def limited(sample, *args, _real=real, **kwargs):
            rows = int(sample.shape[0])
            calls.append((rows, rows <= max_rows))
            if rows > max_rows:
                raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {rows} rows > "
                                             f"{max_rows})")
            return _real(sample, *args, **kwargs)

        setattr(target, method, limited)
    return calls


def unlimit(pipe) -> None:
    for module, method in (("unet", "forward"), ("vae", "encode"), ("vae", "decode")):
        getattr(pipe, module).__dict__.pop(method, None)


@pytest.fixture(scope="module")
def pipe():
    from pytest_erasure.testing import tiny_pipeline

    pipe = tiny_pipeline(0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def inputs(n: int):
    from pytest_erasure.records import GenerationInput

    return [GenerationInput(prompt=["a circle", "a red square"][i % 2], seed=100 + i,
                            label=str(i)) for i in range(n)]


def sampling():
    from pytest_erasure.generate import Sampling

    return Sampling(steps=2, guidance=7.5, height=32, width=32, device="cpu", dtype="float32")


def sha(images: torch.Tensor) -> str:
    from pytest_erasure.checks import image_sha256

    return image_sha256(images)


# -- the helper alone ---------------------------------------------------------------------------

def test_chunked_redoes_the_failed_chunk_at_half_and_keeps_that_size() -> None:
    ran: list[tuple[int, int]] = []

    def run(start: int, stop: int) -> None:
        if stop - start > 3:
            raise torch.cuda.OutOfMemoryError("simulated")
        ran.append((start, stop))

    sizes = BatchSizes()
    with recording(sizes):
        assert chunked("work", 10, 8, run, lambda: "w") == 2
        # a later computation of the same kind starts at the size that worked
        assert chunked("work", 3, 8, run, lambda: "w") == 2
    assert ran == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (0, 2), (2, 3)]
    assert sizes.reduced() == {"work": 2}
    assert sizes.requested == {"work": 8}


def test_halving_restarts_the_whole_computation() -> None:
    tried: list[int] = []

    def attempt(size: int) -> int:
        tried.append(size)
        if size > 2:
            raise torch.OutOfMemoryError("simulated")
        return size * 10

    assert halving("whole", 9, attempt, lambda: "w") == 20
    assert tried == [9, 4, 2]


def test_other_errors_are_not_retried() -> None:
    def run(start: int, stop: int) -> None:
        raise RuntimeError("not memory")

    with pytest.raises(RuntimeError, match="not memory"):
        chunked("work", 4, 4, run, lambda: "w")


# -- generation ---------------------------------------------------------------------------------

def test_generation_out_of_memory_at_8_gives_the_batch_4_images(pipe) -> None:
    from pytest_erasure.generate import generate

    reference, ref_flags = generate(pipe, inputs(12), sampling(), 4)
    calls = limit_rows(pipe, 8)  # CFG: 4 images are 8 UNet rows
    sizes = BatchSizes()
    try:
        with recording(sizes):
            images, flags = generate(pipe, inputs(12), sampling(), 8)
    finally:
        unlimit(pipe)
    assert sha(images) == sha(reference)
    assert flags == ref_flags
    assert sizes.reduced() == {"generation": 4}
    # the chunk of 8 failed at its first UNet call, then three chunks of 4 ran, 2 steps each
    assert calls == [(16, False)] + [(8, True)] * 6


def test_generation_out_of_memory_at_batch_1_is_a_clear_error(pipe) -> None:
    from pytest_erasure.generate import generate

    limit_rows(pipe, 1)  # not even one image with its unconditional row
    try:
        with pytest.raises(ErasureInputError) as info:
            generate(pipe, inputs(3), sampling(), 4)
    finally:
        unlimit(pipe)
    message = str(info.value)
    assert "\n" not in message
    for part in ("GPU memory", "StableDiffusionPipeline", "32x32", "float32",
                 "batch size 1", "--height/--width", "--dtype float16"):
        assert part in message, (part, message)


# -- inversion ----------------------------------------------------------------------------------

def test_inversion_and_regeneration_out_of_memory_give_the_batch_2_results(pipe) -> None:
    from pytest_erasure.attacks.inversion import ddim_invert, reconstruction_error

    images = torch.rand((5, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    latents = ddim_invert(pipe, images, steps=2, batch_size=2)
    errors = reconstruction_error(pipe, latents, images, steps=2, batch_size=2)
    calls = limit_rows(pipe, 2)  # guidance 1: no CFG, one row per image
    vae_calls = limit_rows(pipe, 2, "vae", ("encode", "decode"))
    sizes = BatchSizes()
    try:
        with recording(sizes):
            latents_oom = ddim_invert(pipe, images, steps=2, batch_size=8)
            errors_oom = reconstruction_error(pipe, latents_oom, images, steps=2, batch_size=8)
    finally:
        unlimit(pipe)
    assert torch.equal(latents_oom, latents)
    assert errors_oom == errors
    assert sizes.reduced() == {"ddim inversion": 2, "denoise": 2, "vae decode": 2,
                               "vae encode": 2}
    assert (5, False) in calls and all(rows <= 2 for rows, ran in calls if ran)
    assert (5, False) in vae_calls and all(rows <= 2 for rows, ran in vae_calls if ran)


# -- textual inversion --------------------------------------------------------------------------

def test_textual_inversion_restarts_at_half_the_micro_batch(pipe) -> None:
    from pytest_erasure.attacks.textual_inversion import train_textual_inversion

    images = torch.rand((3, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    budget = {"token": "<c>", "steps": 3, "lr": 1e-2, "batch_size": 4, "seed": 7}
    full, full_losses = train_textual_inversion(pipe, images, **budget)
    configured, losses = train_textual_inversion(pipe, images, micro_batch=2, **budget)
    calls = limit_rows(pipe, 2)
    sizes = BatchSizes()
    try:
        with recording(sizes):
            after_oom, oom_losses = train_textual_inversion(pipe, images, **budget)
    finally:
        unlimit(pipe)
    assert torch.equal(after_oom, configured) and oom_losses == losses
    assert sizes.reduced() == {"textual inversion micro-batch": 2}
    assert calls[0] == (4, False) and all(rows == 2 for rows, _ in calls[1:])
    assert len(calls) == 1 + 3 * 2  # restarted: every step of the run in two passes of 2
    # accumulation keeps the effective batch: the same run up to float rounding
    assert torch.allclose(configured, full, atol=1e-5)
    assert losses == pytest.approx(full_losses, rel=1e-5)


# -- an audit -----------------------------------------------------------------------------------

def test_an_audit_that_runs_out_of_memory_reports_the_batch_that_worked(
        tiny_world: dict[str, Path], tmp_path: Path) -> None:
    from pytest_erasure.session import session_for_pipelines
    from pytest_erasure.testing import _shift_output, tiny_pipeline

    def session(cache: Path, batch: int):
        return session_for_pipelines(_shift_output(tiny_pipeline(0), 0.6),
                                     _shift_output(tiny_pipeline(0), -0.6),
                                     tiny_world["concepts"], cache, steps=2, samples=8,
                                     batch_size=batch)

    four = session(tmp_path / "b4", 4)
    case = next(c for c in four.cases() if c.id == "circle-text")
    expected = four.run(case)
    eight = session(tmp_path / "b8", 8)
    for role in ("standard", "erased"):
        limit_rows(eight.context.pipeline(role), 8)
    result = eight.run(case)
    assert result.facts["image_sha256"] == expected.facts["image_sha256"]
    assert result.rate == expected.rate
    assert result.facts["effective_batch_size"] == {"generation": 4}
    assert "effective_batch_size" not in expected.facts
    same = sorted(p.name for p in (tmp_path / "b4").rglob("*.safetensors"))
    assert same == sorted(p.name for p in (tmp_path / "b8").rglob("*.safetensors"))
