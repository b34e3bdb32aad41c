"""UNet tensors onto the standard UNet (ESD, UCE; new partial safetensors and old full
`diffusers-*.pt` / `erased-*.pt` state dicts), in diffusers or LDM key names, with or without a
`unet.` / `model.diffusion_model.` prefix. Also a diffusers UNet folder (config.json + weights).
Unchanged tensors stay shared with the standard UNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.formats.files import flatten, hash_files, read_state_dict
from pytest_erasure.formats.ldm import ldm_to_diffusers_map, looks_ldm
from pytest_erasure.formats.sharing import override, strip_prefixes

PREFIXES = ("module.", "unet.", "model.diffusion_model.", "diffusion_model.", "model.")


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


def load(standard: Any, standard_path: Path, path: Path, **_: Any) -> tuple[dict[str, Any],
                                                                           dict[str, Any]]:
    what = f"--erased-model {path}"
    if path.is_dir():
        from pytest_erasure.formats.diffusers_folder import compare_unet_config
        from pytest_erasure.formats.text_encoder import read_many, weight_files

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
