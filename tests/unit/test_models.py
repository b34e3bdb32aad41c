"""load_models as the session uses it: provenance, fingerprints, sharing, device/dtype checks, and
every bad model input a user can cause (each an ErasureInputError naming the input)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytest_erasure.config import SHAPES
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.models.formats import detect_format, writers
from pytest_erasure.models.formats import names as format_names
from pytest_erasure.models.loading import check_device, load_models
from pytest_erasure.testing import save_tiny_pipeline, tiny_pipeline


@pytest.fixture(scope="module")
def standard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("std") / "standard", seed=0)


@pytest.fixture(scope="module")
def base():
    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def wide():
    """An SD-architecture pipeline of another width (as SD 2 is to SD 1)."""
    return tiny_pipeline(seed=0, cross_attention_dim=48)


def uce_file(base, path: Path) -> Path:
    keys = writers.unet_tensors(base.unet, "uce")
    return writers.save_tensors({k: v + 0.01 for k, v in keys.items()}, path)


def test_models_module_imports_no_torch():
    code = ("import sys, pytest_erasure.models.loading, pytest_erasure.models.formats; "
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_provenance_and_fingerprints(standard_dir, base, tmp_path):
    path = uce_file(base, tmp_path / "uce-circle.safetensors")
    models = load_models(standard_dir, path)
    record = models.provenance["erased"]
    assert record["files"] == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
    assert record["format"] == record["detected_format"] == "unet"
    assert record["format_forced"] is False
    assert record["components_shared"] == ["vae", "text_encoder", "tokenizer", "scheduler"]
    assert record["components_replaced"] == ["unet"]
    unet_file = standard_dir / "unet" / "diffusion_pytorch_model.safetensors"
    standard_files = models.provenance["standard"]["files"]
    assert standard_files[str(unet_file)] == hashlib.sha256(unet_file.read_bytes()).hexdigest()
    assert models.provenance["device"] == "cpu" and models.provenance["dtype"] == "float32"
    json.dumps(models.provenance)
    assert set(models.fingerprints) == {"standard", "erased"}
    assert models.fingerprints["standard"] != models.fingerprints["erased"]
    again = load_models(standard_dir, path)
    assert again.fingerprints == models.fingerprints
    # Another erased file, another fingerprint; the standard's stays.
    other = writers.save_tensors({k: v + 0.02 for k, v in
                                  writers.unet_tensors(base.unet, "uce").items()},
                                 tmp_path / "other.safetensors")
    changed = load_models(standard_dir, other).fingerprints
    assert changed["standard"] == models.fingerprints["standard"]
    assert changed["erased"] != models.fingerprints["erased"]


def test_symlinked_component_folders_are_fingerprinted(standard_dir, tmp_path):
    """A model folder made of links into a download cache: the UNet behind a linked `unet/`
    must be part of the fingerprint, or changed weights would be served stale results."""
    linked = tmp_path / "linked"
    linked.mkdir()
    for entry in standard_dir.iterdir():
        (linked / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    files = load_models(linked, linked).provenance["standard"]["files"]
    assert str(linked / "unet" / "diffusion_pytorch_model.safetensors") in files


def test_hash_is_cached_per_path_size_mtime(tmp_path):
    from pytest_erasure.models.formats import files

    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    first = files.sha256(path)
    assert first == hashlib.sha256(b"abc").hexdigest()
    assert any(key[0] == str(path.resolve()) for key in files._HASHES)
    path.write_bytes(b"abcd")
    os.utime(path, ns=(1, 10**9))
    assert files.sha256(path) == hashlib.sha256(b"abcd").hexdigest()


def test_dtype_is_honoured(standard_dir, base, tmp_path):
    path = uce_file(base, tmp_path / "uce.safetensors")
    models = load_models(standard_dir, path, dtype="bfloat16")
    for pipe in (models.standard, models.erased):
        assert pipe.unet.dtype == torch.bfloat16
        assert pipe.text_encoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in models.erased.unet.parameters())


def test_safety_checker_is_off(standard_dir, base, tmp_path):
    models = load_models(standard_dir, uce_file(base, tmp_path / "u.safetensors"))
    assert models.standard.safety_checker is None and models.erased.safety_checker is None


# --- device and dtype ---------------------------------------------------------------------------

def test_cpu_accepts_every_dtype():
    for dtype in ("float32", "bfloat16", "float16"):
        check_device("cpu", dtype)


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps", "banana", "xla:0", "meta"])
def test_devices_that_do_not_exist_here(device):
    if device.startswith("cuda") and torch.cuda.is_available() and \
            torch.cuda.device_count() > 3:
        pytest.skip("this machine has the device")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    with pytest.raises(ErasureInputError, match="--device"):
        check_device(device, "float32")


def test_unknown_dtype():
    with pytest.raises(ErasureInputError, match="--dtype"):
        check_device("cpu", "float64")


# --- bad inputs ---------------------------------------------------------------------------------

def raises_naming(text: str, *args, **kwargs) -> ErasureInputError:
    with pytest.raises(ErasureInputError) as info:
        load_models(*args, **kwargs)
    assert text in str(info.value), str(info.value)
    return info.value


def test_missing_erased_path(standard_dir, tmp_path):
    error = raises_naming(str(tmp_path / "nope"), standard_dir, tmp_path / "nope")
    assert "does not exist" in str(error)


def test_missing_standard_path(base, tmp_path):
    path = uce_file(base, tmp_path / "u.safetensors")
    raises_naming("--standard-model", tmp_path / "absent", path)


def test_empty_file(standard_dir, tmp_path):
    (tmp_path / "empty.safetensors").touch()
    error = raises_naming("empty.safetensors", standard_dir, tmp_path / "empty.safetensors")
    assert "empty file" in str(error)


def test_empty_folder(standard_dir, tmp_path):
    (tmp_path / "esd").mkdir()
    raises_naming("empty folder", standard_dir, tmp_path / "esd")


def test_unreadable_file(standard_dir, base, tmp_path, monkeypatch):
    """chmod 000. Root (as CI runs) reads any file, so there the permission check's answer is
    what the kernel would give anyone else: os.access says no for this one path."""
    path = uce_file(base, tmp_path / "u.safetensors")
    path.chmod(0)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: (
            False if Path(p) == path and mode & os.R_OK else real(p, mode, *a, **k)))
    raises_naming("not readable", standard_dir, path)


def test_standard_is_a_file(base, tmp_path):
    path = uce_file(base, tmp_path / "u.safetensors")
    raises_naming("--standard-model", path, path)


def test_standard_is_not_a_pipeline_folder(base, tmp_path):
    (tmp_path / "std").mkdir()
    (tmp_path / "std" / "readme.txt").write_text("hi")
    raises_naming("no model_index.json", tmp_path / "std", uce_file(base, tmp_path / "u.pt"))


def sdxl_folder(path: Path) -> Path:
    path.mkdir()
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}))
    return path


def test_sdxl_folder_as_erased(standard_dir, tmp_path):
    error = raises_naming("StableDiffusionXLPipeline", standard_dir, sdxl_folder(tmp_path / "xl"))
    assert str(tmp_path / "xl") in str(error)


def test_sdxl_folder_as_standard(base, tmp_path):
    raises_naming("StableDiffusionXLPipeline", sdxl_folder(tmp_path / "xl"),
                  uce_file(base, tmp_path / "u.safetensors"))


def test_erased_pipeline_of_another_width(standard_dir, wide, tmp_path):
    wide.save_pretrained(tmp_path / "sd2ish")
    error = raises_naming("cross_attention_dim 48", standard_dir, tmp_path / "sd2ish")
    assert str(tmp_path / "sd2ish") in str(error)


def test_truncated_safetensors(standard_dir, base, tmp_path):
    path = uce_file(base, tmp_path / "uce.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    error = raises_naming(str(path), standard_dir, path)
    assert "truncated or corrupt" in str(error)


def test_corrupt_safetensors_header(standard_dir, tmp_path):
    path = tmp_path / "esd.safetensors"
    header = b'{"a.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'  # no }
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    raises_naming(str(path), standard_dir, path)


def test_random_bytes(standard_dir, tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(os.urandom(4096))
    raises_naming(str(path), standard_dir, path)


def test_keys_match_nothing(standard_dir, tmp_path):
    path = writers.save_tensors({"foo.weight": torch.zeros(2), "bar.bias": torch.zeros(2)},
                                tmp_path / "x.safetensors")
    raises_naming("no known erased-model format", standard_dir, path)
    error = raises_naming("0 of 2 keys fit", standard_dir, path, erased_format="unet")
    assert str(path) in str(error)


def test_some_keys_do_not_fit(standard_dir, base, tmp_path):
    tensors = dict(writers.unet_tensors(base.unet, "uce"))
    good = len(tensors)
    tensors["down_blocks.9.attentions.0.transformer_blocks.0.attn2.to_k.weight"] = \
        torch.zeros(4, 4)
    path = writers.save_tensors(tensors, tmp_path / "uce.safetensors")
    raises_naming(f"{good} of {good + 1} keys fit", standard_dir, path)


def test_shapes_do_not_fit(standard_dir, wide, tmp_path):
    tensors = writers.unet_tensors(wide.unet, "uce")
    path = writers.save_tensors(tensors, tmp_path / "uce-sd2.safetensors")
    error = raises_naming(f"0 of {len(tensors)} keys fit", standard_dir, path)
    assert "another shape" in str(error)


def test_text_encoder_of_another_width(standard_dir, wide, tmp_path):
    wide.text_encoder.save_pretrained(tmp_path / "te")
    raises_naming("hidden_size 48", standard_dir, tmp_path / "te")
    path = writers.save_tensors(wide.text_encoder.state_dict(), tmp_path / "te.safetensors")
    raises_naming("another shape", standard_dir, path)


def test_lora_for_sdxl(standard_dir, tmp_path):
    path = writers.save_tensors({
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(1, 8),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 1),
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(1, 8),
    }, tmp_path / "xl-lora.safetensors")
    raises_naming("SDXL", standard_dir, path)


def test_lora_modules_match_nothing(standard_dir, tmp_path):
    path = writers.save_tensors({
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(1, 8),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(8, 1),
        "lora_unet_input_blocks_4_1_proj_in.alpha": torch.tensor(1.0),
    }, tmp_path / "lora.safetensors")
    raises_naming("0 of 1 LoRA modules match", standard_dir, path)


def test_lora_of_another_width(standard_dir, wide, tmp_path):
    path = writers.save_tensors(writers.spm_lora(wide.unet), tmp_path / "spm.safetensors")
    raises_naming("does not fit its layer", standard_dir, path)


def test_receler_missing_block(standard_dir, base, tmp_path):
    adapters = writers.receler_adapters(base.unet, 4)
    adapters.pop("mid_block.attentions.0")
    folder = writers.write_receler(tmp_path / "receler", adapters, 4)
    raises_naming("no adapter for mid_block.attentions.0", standard_dir, folder)


def test_receler_rank_disagrees_with_config(standard_dir, base, tmp_path):
    folder = writers.write_receler(tmp_path / "receler",
                                   writers.receler_adapters(base.unet, 4), 4)
    (folder / "eraser_config.json").write_text('{"eraser_type": "adapter", "eraser_rank": 128}')
    raises_naming("eraser_config.json says 128", standard_dir, folder)


def test_single_file_missing_tensors(standard_dir, base, tmp_path):
    from pytest_erasure.models.formats.files import read_state_dict

    path = writers.write_single_file(base, tmp_path / "full.safetensors")
    tensors = read_state_dict(path)
    cut = {k: v for k, v in tensors.items() if "output_blocks.0." not in k}
    writers.save_tensors(cut, path)
    raises_naming("lacks", standard_dir, path)


def test_unknown_format_name(standard_dir, base, tmp_path):
    raises_naming("--erased-format", standard_dir, uce_file(base, tmp_path / "u.safetensors"),
                  erased_format="esd")


def test_lora_multiplier_must_be_finite(standard_dir, base, tmp_path):
    raises_naming("--lora-multiplier", standard_dir, uce_file(base, tmp_path / "u.safetensors"),
                  lora_multiplier=float("nan"))


def test_unknown_folder(standard_dir, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.json").write_text("{}")
    raises_naming("no known erased-model format", standard_dir, tmp_path / "m")


# --- untrusted pickles --------------------------------------------------------------------------

class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["torch-save", "raw-pickle"])
def test_crafted_pickle_is_refused(standard_dir, base, tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "diffusers-esd.pt"
    state = dict(writers.unet_tensors(base.unet, "uce"))
    state["evil"] = Payload(marker)
    if kind == "torch-save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    with pytest.raises(ErasureInputError) as info:
        detect_format(path)
    assert str(path) in str(info.value) and "refused" in str(info.value)
    for fmt in (None, "unet", "single-file", "receler", "text-encoder", "lora"):
        raises_naming(str(path), standard_dir, path, erased_format=fmt)
    assert not marker.exists(), "the payload ran"


# --- the shapes world's shipped erased models ---------------------------------------------------

# every shipped erased model (erasure.json beside them records how they were made)
SHAPES_ERASED = (sorted(p for p in (SHAPES / "erased").glob("*") if p.suffix != ".json")
                 if (SHAPES / "erased").is_dir() else [])


def test_the_shapes_world_is_shipped():
    """The world is tracked in git: missing, it fails here (the round trip below would
    otherwise parametrize over nothing and pass without running)."""
    assert (SHAPES / "standard" / "model_index.json").is_file(), "rebuild: fixtures/shapes/build.py"
    assert [p.name for p in SHAPES_ERASED] == ["esd-x-circle", "esd-x-circle.safetensors",
                                               "uce-circle", "uce-circle.safetensors"]


@pytest.mark.parametrize("erased", SHAPES_ERASED, ids=[p.name for p in SHAPES_ERASED])
def test_shapes_world_round_trip(erased):
    fmt = detect_format(erased)
    assert fmt in format_names()
    models = load_models(SHAPES / "standard", erased)
    record = models.provenance["erased"]
    assert record["format"] == fmt and record["files"]
    assert record["components_replaced"], "the erased model is identical to the standard one"
    for name in record["components_shared"]:
        assert getattr(models.erased, name) is getattr(models.standard, name)
    for file, digest in record["files"].items():
        assert hashlib.sha256(Path(file).read_bytes()).hexdigest() == digest
