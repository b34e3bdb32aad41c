"""Full diffusers pipeline folders (`save_pretrained` output): the standard model, and erased
models published whole. Components whose files are byte-identical to the standard model's are
not loaded at all: the standard pipeline's objects are used."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.models.formats.configs import compare_text_config, compare_unet_config, read_json
from pytest_erasure.models.formats.files import (
    folder_files,
    hash_files,
    refused_global_in,
    require_readable,
    sha256,
)

PIPELINE_CLASS = "StableDiffusionPipeline"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def validate_pipeline_folder(path: Path, what: str) -> dict[str, Any]:
    """model_index.json of a Stable Diffusion v1-family pipeline folder, or ErasureInputError."""
    require_readable(path, what)
    if not path.is_dir():
        raise ErasureInputError(f"{what} {path}", "is a file, not a diffusers pipeline folder",
                                "give the folder written by save_pretrained (model_index.json, "
                                "unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ErasureInputError(f"{what} {path}",
                                "is not a diffusers pipeline folder (no model_index.json)",
                                "give the folder written by save_pretrained")
    index = read_json(index_file, what)
    cls = index.get("_class_name")
    if cls != PIPELINE_CLASS:
        raise ErasureInputError(f"{what} {path}",
                                f"is a {cls or 'unnamed'} folder, not a {PIPELINE_CLASS}",
                                "give a Stable Diffusion v1-family model (SD v1.4 architecture)")
    for component in COMPONENTS:
        if not (path / component).is_dir():
            raise ErasureInputError(f"{what} {path}", f"has no {component}/ folder",
                                    "give a complete StableDiffusionPipeline folder")
    unet_config = read_json(path / "unet" / "config.json", what)
    if unet_config.get("_class_name") != "UNet2DConditionModel":
        raise ErasureInputError(f"{what} {path}",
                                f"has a {unet_config.get('_class_name')} UNet, not "
                                "UNet2DConditionModel", "give an SD v1-family model")
    text_config = read_json(path / "text_encoder" / "config.json", what)
    hidden = text_config.get("hidden_size")
    if hidden != unet_config.get("cross_attention_dim"):
        raise ErasureInputError(
            f"{what} {path}", f"has a text encoder of width {hidden} but a UNet with "
            f"cross_attention_dim {unet_config.get('cross_attention_dim')}",
            "give a consistent SD v1-family pipeline folder")
    return index


def load_standard(path: Path, torch_dtype: Any, device: str) -> tuple[Any, dict[str, Any]]:
    """The standard pipeline (offline, safety checker off) and its provenance."""
    from diffusers import StableDiffusionPipeline

    validate_pipeline_folder(path, "--standard-model")
    files = folder_files(path, COMPONENTS)
    hashes = hash_files(files)
    pipeline = _from_pretrained(StableDiffusionPipeline, path, "--standard-model",
                                dtype=torch_dtype)
    pipeline.to(device)
    return pipeline, {"path": str(path), "format": "diffusers", "files": hashes}


def _from_pretrained(cls: Any, path: Path, what: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(path, local_files_only=True, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False,
                                   use_safetensors=None, **kwargs)
    except ErasureInputError:
        raise
    except Exception as error:  # diffusers raises many types for a corrupt folder
        refused = refused_global_in(error)
        if refused:
            raise ErasureInputError(
                f"{what} {path}", f"has a weight file holding Python objects other than tensors "
                f"({refused}), refused for safety: pickles load weights-only, nothing in them runs",
                "use the model's .safetensors files, or re-save its state dicts") from error
        text = str(error).strip().splitlines()
        raise ErasureInputError(f"{what} {path}", "cannot be loaded as a diffusers pipeline ("
                                f"{type(error).__name__}: {text[0][:200] if text else ''})",
                                "check that the folder is complete and its files intact") from error


def component_digest(folder: Path, component: str) -> dict[str, str]:
    root = folder / component
    return {str(p.relative_to(root)): sha256(p) for p in folder_files(folder, [component])
            if p.parent != folder}


def load(standard: Any, standard_path: Path, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from diffusers import StableDiffusionPipeline

    validate_pipeline_folder(path, "--erased-model")
    compare_unet_config(path, standard_path, "--erased-model", path / "unet" / "config.json")
    compare_text_config(path / "text_encoder" / "config.json", standard_path, path)
    identical = [c for c in COMPONENTS
                 if component_digest(path, c) == component_digest(standard_path, c)]
    files = folder_files(path, [c for c in COMPONENTS if c not in identical])
    hashes = hash_files(files)
    pipeline = _from_pretrained(StableDiffusionPipeline, path, "--erased-model",
                                dtype=standard.unet.dtype,
                                **{c: getattr(standard, c) for c in identical})
    pipeline.to(standard.unet.device)
    overrides = {c: getattr(pipeline, c) for c in COMPONENTS if c not in identical}
    return overrides, {"files": hashes, "identical_files": identical}


class DiffusersFormat:
    name = "diffusers"
    applies_to_standard = False
    options: tuple[str, ...] = ()

    def detect(self, path: Path) -> float:
        """A pipeline folder declares itself (model_index.json)."""
        return 1.0 if path.is_dir() and (path / "model_index.json").is_file() else 0.0

    def load(self, standard: Any, standard_path: Path, path: Path, options: Mapping[str, Any]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        return load(standard, standard_path, path)

    def describe(self, details: dict[str, Any]) -> dict[str, Any]:
        return details


FORMAT = DiffusersFormat()
