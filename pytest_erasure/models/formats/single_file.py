"""Single-file Stable Diffusion checkpoints (.safetensors / .ckpt in the original LDM layout:
`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`).

The configuration comes from the standard model's folder, never from the hub: the file's tensors
are converted with diffusers' own single-file converters against the standard components'
configs, then put onto copies of those components that share every unchanged tensor (a checkpoint
that only retrained the UNet costs one UNet of memory, and its VAE is the standard VAE object).
The result equals `StableDiffusionPipeline.from_single_file(path, config=standard_folder)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.models.formats import BuiltinFormat
from pytest_erasure.models.formats.clip_keys import IGNORED, normalise
from pytest_erasure.models.formats.files import hash_files, read_state_dict, tensor_keys
from pytest_erasure.models.formats.sharing import override

UNET_KEY = "model.diffusion_model."
VAE_KEYS = ("first_stage_model.", "vae.")
TEXT_KEYS = ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.")


def is_single_file(keys: list[str]) -> bool:
    return any(k.startswith(UNET_KEY) for k in keys) and any(
        k.startswith(VAE_KEYS + TEXT_KEYS + ("cond_stage_model.",)) for k in keys)


def load(standard: Any, standard_path: Path, path: Path, **_: Any) -> tuple[dict[str, Any],
                                                                           dict[str, Any]]:
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    what = f"--erased-model {path}"
    if path.is_dir():
        raise ErasureInputError(what, "is a folder, not a single checkpoint file",
                                "give the .safetensors/.ckpt file, or --erased-format diffusers")
    checkpoint = read_state_dict(path)
    if not any(k.startswith(UNET_KEY) for k in checkpoint):
        raise ErasureInputError(what, f"has no UNet tensors ({UNET_KEY}*)",
                                "give a full Stable Diffusion checkpoint, or pass the format of "
                                "a partial one (--erased-format unet / text-encoder)")
    converted = {
        "unet": convert_ldm_unet_checkpoint(checkpoint, dict(standard.unet.config)),
        "vae": convert_ldm_vae_checkpoint(checkpoint, dict(standard.vae.config))
        if any(k.startswith(VAE_KEYS) for k in checkpoint) else {},
        "text_encoder": normalise(convert_ldm_clip_checkpoint(checkpoint), standard.text_encoder)
        if any(k.startswith(TEXT_KEYS) for k in checkpoint) else {},
    }
    roles = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder"}
    overrides: dict[str, Any] = {}
    report: dict[str, Any] = {"files": hash_files([path])}
    for component, tensors in converted.items():
        if not tensors:
            report[component] = "not in the file: the standard model's is used"
            continue
        module, stats = override(getattr(standard, component), tensors, what=what,
                                 role=roles[component], require_all=True,
                                 ignore=IGNORED if component == "text_encoder" else ())
        if module is not getattr(standard, component):
            overrides[component] = module
        report[component] = stats
    return overrides, report


class SingleFileFormat(BuiltinFormat):
    loader = staticmethod(load)
    name = "single-file"
    applies_to_standard = True
    options: tuple[str, ...] = ()

    def detect(self, path: Path) -> float:
        """UNet tensors beside VAE or text-encoder ones, in the CompVis layout."""
        return 0.7 if path.is_file() and is_single_file(tensor_keys(path)) else 0.0


FORMAT = SingleFileFormat()
