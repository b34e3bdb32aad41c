"""Every cached computation of textual inversion and of latent inversion is keyed by the dtype
and the device type it ran on: a result computed in one precision or on one kind of device is
never served to another (the images' keys already are, through `Sampling.key`)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

SETUPS = {"cpu-fp32": ("cpu", "float32"), "cpu-bf16": ("cpu", "bfloat16"),
          "cuda1-fp32": ("cuda:1", "float32"), "cuda0-fp32": ("cuda:0", "float32")}


@pytest.fixture(scope="module")
def pipelines():
    from pytest_erasure.testing import tiny_pipeline

    return tiny_pipeline(0), tiny_pipeline(1)


def keys(world: dict[str, Path], pipelines, device: str, dtype: str) -> dict[str, dict]:
    """Every TI and inversion cache key for fixed inputs, in a session set to device/dtype.
    Only keys are built: nothing runs on the device (this machine may have no GPU)."""
    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.session import context_for_pipelines

    ctx = context_for_pipelines(*pipelines, world["concepts"], None, device=device, dtype=dtype)
    scenarios = registry()
    embedding, latent = scenarios["embedding-white"], scenarios["latent-black-null"]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    embeds = torch.ones(1, 32)
    settings = {"prompt": "", "steps": 4, "guidance": 1.0}
    return {
        "learn": embedding.learn_key(ctx, "erased", images, {"steps": 2}, "<circle>", 7),
        "encode": embedding.encode_key(ctx, "erased", ["a <circle>"], "<circle>", embeds),
        "invert": latent.invert_key(ctx, "standard", images, settings),
        "reconstruction": latent.reconstruction_key(ctx, "standard", torch.zeros(2, 4, 16, 16),
                                                    images, settings),
        "check": latent.check_key(ctx, "erased", torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
                                  images),
    }


def test_ti_and_inversion_keys_carry_dtype_and_device_type(tiny_world, pipelines):
    from pytest_erasure.cache import digest

    found = {name: keys(tiny_world, pipelines, *setup) for name, setup in SETUPS.items()}
    for computation in found["cpu-fp32"]:
        hashed = {name: digest(k[computation]) for name, k in found.items()}
        assert hashed["cpu-fp32"] != hashed["cpu-bf16"], computation
        assert hashed["cpu-fp32"] != hashed["cuda1-fp32"], computation
        # Which GPU of a kind does not change the numbers: cuda:0 and cuda:1 share entries.
        assert hashed["cuda1-fp32"] == hashed["cuda0-fp32"], computation
        assert found["cuda1-fp32"][computation]["device"] == "cuda"
