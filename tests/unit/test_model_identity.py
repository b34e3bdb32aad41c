"""One edit, four packagings, one model: the content identity (`models.identity.content_identity`)
and the summary every format shows are those of the weights the audit runs, not of the files.

The edit is UCE's (attn2 to_k/to_v of the tiny UNet), published as UCE publishes it (only the
edited tensors), as an old full `.pt` UNet state dict, as a diffusers folder and as an LDM single
file; each is written by the project's writers and loaded through `load_models`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pytest_erasure.models.formats import writers
from pytest_erasure.models.loading import load_models
from pytest_erasure.report.text import content_text
from pytest_erasure.testing import save_tiny_pipeline, tiny_pipeline


@pytest.fixture(scope="module")
def standard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("std") / "standard", seed=0)


def uce_edit(seed: int) -> dict[str, torch.Tensor]:
    unet = tiny_pipeline(seed=0).unet
    generator = torch.Generator().manual_seed(seed)
    return {k: v + torch.randn(v.shape, generator=generator) * 0.05
            for k, v in writers.unet_tensors(unet, "uce").items()}


def packagings(edit: dict[str, torch.Tensor], root: Path) -> dict[str, Path]:
    pipe = tiny_pipeline(seed=0)
    pipe.unet.load_state_dict(edit, strict=False)
    root.mkdir(parents=True, exist_ok=True)
    folder = root / "diffusers"
    pipe.save_pretrained(folder)
    return {
        "delta": writers.save_tensors(edit, root / "uce.safetensors"),
        "full": writers.save_tensors(pipe.unet.state_dict(), root / "unet-full.pt"),
        "diffusers": folder,
        "single-file": writers.write_single_file(pipe, root / "model.ckpt"),
    }


def test_four_packagings_are_one_model(standard_dir, tmp_path):
    edit = uce_edit(seed=3)
    loaded = {name: load_models(standard_dir, path)
              for name, path in packagings(edit, tmp_path / "a").items()}
    records = {name: m.provenance["erased"] for name, m in loaded.items()}
    assert {n: r["format"] for n, r in records.items()} == {
        "delta": "unet", "full": "unet", "diffusers": "diffusers", "single-file": "single-file"}
    # Four files, four file fingerprints (the cache's keys) ...
    assert len({m.fingerprints["erased"] for m in loaded.values()}) == 4
    # ... one model: the same content identity and the same count of differing tensors.
    contents = {n: r["content"] for n, r in records.items()}
    assert len({c["fingerprint"] for c in contents.values()}) == 1, contents
    total = sum(len(getattr(loaded["delta"].standard, c).state_dict())
                for c in ("unet", "text_encoder", "vae"))
    for name, content in contents.items():
        assert content["tensors_differing"] == len(edit), name
        assert content["components"]["unet"]["differing"] == len(edit), name
        assert content["components"]["vae"]["differing"] == 0, name
        assert content["tensors_total"] == total, name
        assert content["tensors_added"] == 0, name
    texts = {content_text(c) for c in contents.values()}
    assert texts == {f"{len(edit)} of {total} tensors differ from the standard model"}


def test_another_edit_is_another_model(standard_dir, tmp_path):
    paths = packagings(uce_edit(seed=3), tmp_path / "a")
    other = packagings(uce_edit(seed=4), tmp_path / "b")
    first = load_models(standard_dir, paths["delta"]).provenance["erased"]["content"]
    second = load_models(standard_dir, other["single-file"]).provenance["erased"]["content"]
    assert first["tensors_differing"] == second["tensors_differing"]
    assert first["fingerprint"] != second["fingerprint"]


def test_the_standard_model_resaved_differs_in_nothing(standard_dir, tmp_path):
    """A folder identical in weights to the standard one: zero tensors differ, whatever its
    files' bytes."""
    copy = save_tiny_pipeline(tmp_path / "same", seed=0)
    content = load_models(standard_dir, copy).provenance["erased"]["content"]
    assert content["tensors_differing"] == 0
    assert content_text(content).startswith("0 of ")
