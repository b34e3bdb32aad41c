"""A replacement CLIP text encoder (AdvUnlearn): a transformers folder (config.json + weights) or
a bare state dict, with or without a `text_encoder.` (or LDM `cond_stage_model.transformer.`)
prefix. The weights go onto a copy of the standard text encoder that shares unchanged tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.formats.files import WEIGHT_SUFFIXES, flatten, hash_files, read_state_dict
from pytest_erasure.formats.sharing import override, strip_prefixes

PREFIXES = ("module.", "text_encoder.", "cond_stage_model.transformer.", "cond_stage_model.",
            "transformer.")
# Architecture fields a replacement must share with the standard text encoder.
ARCHITECTURE = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                "vocab_size", "max_position_embeddings", "hidden_act", "projection_dim")
# Buffers older transformers versions saved and newer ones recompute.
IGNORED = ("text_model.embeddings.position_ids", "embeddings.position_ids")


def compare_text_config(config_file: Path, standard_path: Path, path: Path) -> None:
    from pytest_erasure.formats.diffusers_folder import read_json

    erased = read_json(config_file, "--erased-model")
    standard = read_json(standard_path / "text_encoder" / "config.json", "--standard-model")
    for key in ARCHITECTURE:
        if key in standard and erased.get(key) != standard.get(key):
            raise ErasureInputError(
                f"--erased-model {path}", f"has a text encoder with {key} {erased.get(key)}, the "
                f"standard model's is {standard.get(key)}",
                "give a text encoder made for this standard model (same tokenizer and size)")


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a transformers/diffusers model folder (sharded or not)."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    safetensors = [p for p in found if p.suffix == ".safetensors"]
    return safetensors or found


def read_many(files: list[Path]) -> dict[str, Any]:
    tensors: dict[str, Any] = {}
    for file in files:
        tensors.update(read_state_dict(file))
    return tensors


def normalise(tensors: dict[str, Any], target: Any) -> dict[str, Any]:
    """Tensors under the key names of the standard text encoder's own state dict.

    Checkpoints on disk name CLIP tensors `text_model.encoder...` (transformers 4, SD v1.4,
    AdvUnlearn) or `encoder...` (transformers 5 drops the `text_model.` level); either fits.
    """
    tensors = flatten(tensors)
    mapping = strip_prefixes(tensors, PREFIXES)
    out = {new: tensors[old] for old, new in mapping.items()}
    wants_prefix = any(k.startswith("text_model.") for k in target.state_dict())
    if wants_prefix:
        return {k if k.startswith("text_model.") else f"text_model.{k}": v
                for k, v in out.items()}
    return {k.removeprefix("text_model."): v for k, v in out.items()}


def load(standard: Any, standard_path: Path, path: Path, **_: Any) -> tuple[dict[str, Any],
                                                                           dict[str, Any]]:
    what = f"--erased-model {path}"
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ErasureInputError(what, "is a folder without config.json",
                                    "give a CLIP text encoder folder (config.json + weights) or "
                                    "its state dict file")
        compare_text_config(config, standard_path, path)
        files = weight_files(path)
        if not files:
            raise ErasureInputError(what, "holds no weight file", "give the text encoder's "
                                    "model.safetensors or pytorch_model.bin with its config")
        hashed = [config, *files]
    else:
        files, hashed = [path], [path]
    tensors = normalise(read_many(files), standard.text_encoder)
    encoder, stats = override(standard.text_encoder, tensors, what=what, role="text encoder",
                              ignore=IGNORED)
    return {"text_encoder": encoder}, {"files": hash_files(hashed), "text_encoder": stats}
