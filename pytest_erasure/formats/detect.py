"""Which format an erased model is in, from its content (file names may mislead)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.formats.files import (
    WEIGHT_SUFFIXES,
    is_safetensors,
    read_state_dict,
    require_readable,
    safetensors_keys,
)

UNET_ROOTS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in.", "conv_out.",
              "conv_norm_out.", "time_embedding.", "input_blocks.", "middle_block.",
              "output_blocks.", "time_embed.")
# CLIP text encoder keys, with transformers 4's `text_model.` level or without (transformers 5).
CLIP_ROOTS = ("embeddings.token_embedding.", "embeddings.position_embedding.",
              "embeddings.position_ids", "encoder.layers.", "final_layer_norm.")


def detect_format(path: Path) -> str:
    require_readable(path, "--erased-model")
    return _detect_folder(path) if path.is_dir() else _detect_file(path)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _detect_folder(path: Path) -> str:
    if (path / "model_index.json").is_file():
        return "diffusers"
    configs = {p: _json(p) for p in sorted(path.glob("*.json"))}
    if any("eraser_type" in c or "eraser_rank" in c for c in configs.values()):
        return "receler"
    config = configs.get(path / "config.json", {})
    if config.get("_class_name") == "UNet2DConditionModel":
        return "unet"
    if config.get("model_type") in ("clip_text_model", "clip") or any(
            "CLIPText" in a for a in config.get("architectures", []) or []):
        return "text-encoder"
    weights = [p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        weights = [p for p in path.iterdir() if p.is_file() and is_safetensors(p)]
    if len(weights) == 1:
        found = _detect_file(weights[0])
        if found in ("receler",):
            return found
    raise ErasureInputError(
        f"--erased-model {path}", "is a folder of no known erased-model format (no "
        "model_index.json, eraser_config.json, or UNet/CLIP config.json)",
        "give the model's own file or folder, or name its format with --erased-format")


def classify_keys(keys: list[str], nested: bool = False) -> str | None:
    """The format a state dict's key names point to, or None."""
    from pytest_erasure.formats.lora import is_lora
    from pytest_erasure.formats.receler import ADAPTER_KEYS
    from pytest_erasure.formats.single_file import is_single_file

    if not keys:
        return None
    if is_lora(keys):
        return "lora"
    if nested or all(k.endswith(ADAPTER_KEYS) and ".attentions." in k for k in keys):
        return "receler"
    if is_single_file(keys):
        return "single-file"
    bare = [k.split("text_encoder.", 1)[-1].split("cond_stage_model.transformer.", 1)[-1]
            for k in keys]
    if all(k.removeprefix("module.").removeprefix("text_model.").startswith(CLIP_ROOTS)
           for k in bare):
        return "text-encoder"
    stripped = [_strip(k) for k in keys]
    if sum(k.startswith(UNET_ROOTS) for k in stripped) > len(keys) / 2:
        return "unet"
    return None


def _strip(key: str) -> str:
    for prefix in ("module.", "unet.", "model.diffusion_model.", "diffusion_model.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _detect_file(path: Path) -> str:
    if is_safetensors(path):
        keys, nested = safetensors_keys(path), False
    else:
        state = read_state_dict(path)
        from pytest_erasure.formats.receler import is_adapter_dict

        nested = any(isinstance(v, dict) for v in state.values()) and is_adapter_dict(state)
        keys = [k for k, v in state.items() if not isinstance(v, dict)] or list(state)
    found = classify_keys(keys, nested)
    if found is None:
        raise ErasureInputError(
            f"--erased-model {path}", "holds tensors of no known erased-model format "
            f"(e.g. keys {', '.join(keys[:3])})",
            "give UNet, text-encoder, LoRA, Receler or full-checkpoint weights, or name the "
            "format with --erased-format")
    return found
