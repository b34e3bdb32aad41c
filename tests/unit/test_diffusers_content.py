"""A full erased pipeline folder is compared with the standard model by content, not by file
bytes: a re-saved VAE, tokenizer or scheduler that means the same is the standard object, and
the provenance names only what really differs, with how many tensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from pytest_erasure.models.formats.diffusers_folder import component_digest  # noqa: E402
from pytest_erasure.models.loading import load_models  # noqa: E402
from pytest_erasure.testing import save_tiny_pipeline, tiny_pipeline  # noqa: E402

CHANGED = "attn2.to_k"  # the keys our 'erasure' edits (cross-attention keys, as ESD-x does)


@pytest.fixture(scope="module")
def standard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("std") / "standard", seed=0)


def erased_unet_pipeline():
    """The standard pipeline (seed 0) with every cross-attention key projection edited."""
    pipe = tiny_pipeline(seed=0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, tensor in pipe.unet.state_dict().items():
            if CHANGED in name:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return pipe


def changed_keys(a: torch.nn.Module, b: torch.nn.Module) -> int:
    ours, theirs = a.state_dict(), b.state_dict()
    return sum(not torch.equal(ours[k], theirs[k].to(ours[k].dtype)) for k in ours)


def reserialise(folder: Path, out: Path) -> Path:
    """`folder` written again the way another tool would: the VAE's tensors re-saved with other
    safetensors metadata and a re-formatted config from another diffusers version, the tokenizer
    as vocab.json + merges.txt (SD v1.4's own layout) instead of tokenizer.json, the scheduler's
    config re-ordered. Same meaning, other bytes."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, out)
    weights = out / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    save_file(dict(reversed(list(tensors.items()))), str(weights),
              metadata={"format": "pt", "saved_by": "another tool"})
    for file in (out / "vae" / "config.json", out / "scheduler" / "scheduler_config.json"):
        config = json.loads(file.read_text())
        config["_diffusers_version"] = "0.30.0"
        file.write_text(json.dumps(dict(reversed(list(config.items())))))
    tokenizer = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    merges = tokenizer["model"]["merges"]
    (out / "tokenizer" / "tokenizer.json").unlink()
    (out / "tokenizer" / "vocab.json").write_text(json.dumps(tokenizer["model"]["vocab"], indent=1))
    (out / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "".join(
        (" ".join(m) if isinstance(m, list) else m) + "\n" for m in merges))
    return out


def test_resaved_components_equal_in_content_are_shared(standard_dir, tmp_path):
    erased = erased_unet_pipeline()
    erased.save_pretrained(tmp_path / "first")
    folder = reserialise(tmp_path / "first", tmp_path / "erased")
    for part in ("vae", "tokenizer", "scheduler"):  # the bytes really differ
        assert component_digest(folder, part) != component_digest(standard_dir, part), part
    models = load_models(standard_dir, folder)
    record = models.provenance["erased"]
    assert record["components_replaced"] == ["unet"]
    assert record["components_shared"] == ["vae", "text_encoder", "tokenizer", "scheduler"]
    expected = changed_keys(tiny_pipeline(0).unet, erased.unet)
    assert expected == sum(CHANGED in k for k in erased.unet.state_dict()) > 0
    assert record["unet"] == {"tensors_changed": expected,
                              "tensors_total": len(erased.unet.state_dict())}
    assert record["vae"] == {"tensors_changed": 0, "tensors_total": len(erased.vae.state_dict())}
    assert record["tokenizer"] == {"differs_in": []} and record["scheduler"] == {"differs_in": []}
    assert record["identical_files"] == ["text_encoder"]
    assert record["compared_in_dtype"] == "float32"
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(models.erased, part) is getattr(models.standard, part), part
    # The UNet holds only its changed tensors; the rest are the standard UNet's own.
    ours, theirs = models.standard.unet.state_dict(), models.erased.unet.state_dict()
    shared = [k for k in ours if ours[k].data_ptr() == theirs[k].data_ptr()]
    assert len(shared) == len(ours) - expected
    assert all(torch.equal(theirs[k], v) for k, v in erased.unet.state_dict().items())

    from pytest_erasure.report.text import model_line
    from pytest_erasure.report.text import models as summaries

    line = next(model_line(m) for m in summaries(SimpleNamespace(provenance=models.provenance))
                if m["role"] == "erased")
    assert f"replaces unet ({expected} of {len(ours)} tensors changed)," in line
    assert "vae" not in line and "tokenizer" not in line


def test_a_different_vae_and_tokenizer_are_still_reported(standard_dir, tmp_path):
    erased = tiny_pipeline(seed=0)
    erased.vae = tiny_pipeline(seed=1).vae
    erased.tokenizer.add_tokens(["<hidden>"])
    erased.save_pretrained(tmp_path / "erased")
    models = load_models(standard_dir, tmp_path / "erased")
    record = models.provenance["erased"]
    assert record["components_replaced"] == ["vae", "tokenizer"]
    expected = changed_keys(tiny_pipeline(0).vae, erased.vae)
    total = len(erased.vae.state_dict())
    assert 0 < expected < total  # norms (ones) and biases (zeros) are the same in both seeds
    assert record["vae"] == {"tensors_changed": expected, "tensors_total": total}
    assert set(record["tokenizer"]["differs_in"]) >= {"added_tokens", "vocabulary"}
    assert models.erased.vae is not models.standard.vae
    assert models.erased.tokenizer is not models.standard.tokenizer
    assert "<hidden>" in models.erased.tokenizer.get_vocab()
    assert models.erased.unet is models.standard.unet
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(models.erased.vae.decode(latents).sample,
                           erased.vae.decode(latents).sample)


def test_equal_in_the_compute_dtype_counts_as_equal(standard_dir, tmp_path):
    """A text encoder stored in float16 equals the standard one in a float16 audit (both run the
    same numbers) and differs in a float32 audit (the stored values lost precision)."""
    erased = erased_unet_pipeline()
    erased.text_encoder.to(torch.float16)
    erased.save_pretrained(tmp_path / "erased")
    half = load_models(standard_dir, tmp_path / "erased", dtype="float16")
    record = half.provenance["erased"]
    assert record["compared_in_dtype"] == "float16"
    assert record["components_replaced"] == ["unet"]
    assert half.erased.text_encoder is half.standard.text_encoder
    full = load_models(standard_dir, tmp_path / "erased", dtype="float32")
    record = full.provenance["erased"]
    assert record["components_replaced"] == ["unet", "text_encoder"]
    expected = changed_keys(tiny_pipeline(0).text_encoder, erased.text_encoder)
    assert record["text_encoder"]["tensors_changed"] == expected > 0


def test_a_changed_config_replaces_the_component_whole(standard_dir, tmp_path):
    erased = tiny_pipeline(seed=0)
    erased.vae.register_to_config(scaling_factor=0.5)
    erased.save_pretrained(tmp_path / "erased")
    models = load_models(standard_dir, tmp_path / "erased")
    record = models.provenance["erased"]
    assert record["components_replaced"] == ["vae"]
    assert record["vae"]["config_changed"] == ["scaling_factor"]
    assert models.erased.vae.config.scaling_factor == 0.5
    assert models.standard.vae.config.scaling_factor != 0.5
