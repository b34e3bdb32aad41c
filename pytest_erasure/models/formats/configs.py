"""The JSON configs erased models come with, read and checked against the standard model's.

Shared by the formats (a pipeline folder, a UNet folder and a text-encoder folder all carry
configs), so that no format imports another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_erasure.errors import ErasureInputError

# UNet config entries that fix the architecture; an erased UNet must agree with the standard one.
UNET_ARCHITECTURE = ("cross_attention_dim", "in_channels", "out_channels", "block_out_channels",
                     "layers_per_block", "down_block_types", "up_block_types",
                     "attention_head_dim", "use_linear_projection")
# Architecture fields a replacement text encoder must share with the standard one.
TEXT_ARCHITECTURE = ("hidden_size", "intermediate_size", "num_attention_heads",
                     "num_hidden_layers", "vocab_size", "max_position_embeddings", "hidden_act",
                     "projection_dim")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object the model needs, or ErasureInputError naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ErasureInputError(f"{what} {path}", f"is not valid JSON ({error})",
                                "the file is corrupt; fetch the model again") from error
    if not isinstance(data, dict):
        raise ErasureInputError(f"{what} {path}", "is not a JSON object",
                                "the file is corrupt; fetch the model again")
    return data


def peek_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} for anything else: detection looks at every JSON file in a folder,
    and one that is not a config must not stop it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def compare_unet_config(path: Path, standard_path: Path, what: str, config_file: Path) -> None:
    """Refuse an erased UNet whose architecture differs from the standard one (e.g. SD 2)."""
    erased = read_json(config_file, what)
    standard = read_json(standard_path / "unet" / "config.json", "--standard-model")
    for key in UNET_ARCHITECTURE:
        if _norm(erased.get(key)) != _norm(standard.get(key)):
            raise ErasureInputError(
                f"{what} {path}", f"has a UNet with {key} {erased.get(key)}, the standard "
                f"model's is {standard.get(key)}",
                "give an erased model made from this standard model (same architecture)")


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def compare_text_config(config_file: Path, standard_path: Path, path: Path) -> None:
    """Refuse a text encoder of another size or vocabulary than the standard one."""
    erased = read_json(config_file, "--erased-model")
    standard = read_json(standard_path / "text_encoder" / "config.json", "--standard-model")
    for key in TEXT_ARCHITECTURE:
        if key in standard and erased.get(key) != standard.get(key):
            raise ErasureInputError(
                f"--erased-model {path}", f"has a text encoder with {key} {erased.get(key)}, the "
                f"standard model's is {standard.get(key)}",
                "give a text encoder made for this standard model (same tokenizer and size)")
