"""UNet tensors onto the standard UNet (ESD, UCE; new partial safetensors and old full
`diffusers-*.pt` / `erased-*.pt` state dicts), in diffusers or LDM key names, with or without a
`unet.` / `model.diffusion_model.` prefix. Also a diffusers UNet folder (config.json + weights).
Unchanged tensors stay shared with the standard UNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.models.formats import BuiltinFormat
from pytest_erasure.models.formats.configs import compare_unet_config, peek_json
from pytest_erasure.models.formats.files import (
    flatten,
    hash_files,
    read_many,
    read_state_dict,
    tensor_keys,
    weight_files,
)
from pytest_erasure.models.formats.ldm import ldm_to_diffusers_map, looks_ldm
from pytest_erasure.models.formats.sharing import override, strip_prefixes

PREFIXES = ("module.", "unet.", "model.diffusion_model.", "diffusion_model.", "model.")
# First names of UNet tensors, diffusers' and the CompVis layout's.
UNET_ROOTS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in.", "conv_out.",
              "conv_norm_out.", "time_embedding.", "input_blocks.", "middle_block.",
              "output_blocks.", "time_embed.")


def is_unet(keys: list[str]) -> bool:
    """Most keys (past any prefix) a UNet's: a UNet state dict may carry a few extras."""
    stripped = [_strip(k) for k in keys]
    return bool(keys) and sum(k.startswith(UNET_ROOTS) for k in stripped) > len(keys) / 2


def _strip(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def normalise(tensors: dict[str, Any], unet: Any) -> tuple[dict[str, Any], str]:
    """Tensors under diffusers UNet key names, and which layout the file used."""
    tensors = flatten(tensors)
    mapping = strip_prefixes(tensors, PREFIXES)
    renamed = {new: tensors[old] for old, new in mapping.items()}
    if not looks_ldm(renamed):
        return renamed, "diffusers"
    names = ldm_to_diffusers_map(unet.state_dict().keys(), unet.config)
    # Keys without an LDM name stay as they are, so the fit report lists them as unknown.
    return {names.get(k, k): v for k, v in renamed.items()}, "ldm"


def load(standard: Any, standard_path: Path, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    what = f"--erased-model {path}"
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ErasureInputError(what, "is a folder without config.json",
                                    "give a diffusers UNet folder or a UNet weight file")
        compare_unet_config(path, standard_path, "--erased-model", config)
        files = weight_files(path)
        if not files:
            raise ErasureInputError(what, "holds no weight file",
                                    "give the UNet's diffusion_pytorch_model.safetensors")
        tensors, hashed = read_many(files), [config, *files]
    else:
        tensors, hashed = read_state_dict(path), [path]
    tensors, layout = normalise(tensors, standard.unet)
    unet, stats = override(standard.unet, tensors, what=what, role="UNet")
    return {"unet": unet}, {"files": hash_files(hashed), "key_layout": layout, "unet": stats}


class UnetFormat(BuiltinFormat):
    loader = staticmethod(load)
    name = "unet"
    applies_to_standard = True
    options: tuple[str, ...] = ()

    def detect(self, path: Path) -> float:
        """A diffusers UNet config.json, or mostly UNet key names."""
        if path.is_dir():
            unet = peek_json(path / "config.json").get("_class_name") == "UNet2DConditionModel"
            return 0.6 if unet else 0.0
        return 0.6 if is_unet(tensor_keys(path)) else 0.0


FORMAT = UnetFormat()
