"""The `lora` overlay: a diffusers / peft LoRA state dict merged into the UNet's attention
projections for one unit, and taken out by restoring the saved weights.

Keys read (an optional `unet.` prefix is dropped):
- peft, as diffusers saves LoRAs today: `<path>.lora_A.weight` (down) and `.lora_B.weight` (up);
- diffusers' older attention-processor form: `<block>.processor.to_q_lora.down.weight` / `.up.weight`
  (`to_out_lora` is `to_out.0`);
- `LoRACompatibleLinear`'s: `<path>.lora.down.weight` / `.up.weight`;
each with an optional `<path>.alpha`. `<path>` must name a Linear `to_q`, `to_k`, `to_v` or
`to_out.0` under an `attn1` / `attn2` of the UNet: what fine-tuning recovery and published
SD LoRAs train. The merge is W' = W + scale * (alpha / rank) * up @ down (alpha absent: rank, so
the factor is `scale`), in float32, cast back to W's dtype. Removal puts the original parameter
objects back (`overlays.Patch`): exact, with nothing subtracted.

kohya's `lora_unet_*` files are an erased-model format (`--erased-format lora`), not read here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.overlays import Patch, overlay_error
from pytest_erasure.records import Overlay

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

PROJECTION = re.compile(r"(^|\.)attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
_FORMS = (
    (re.compile(r"^(?P<path>.+)\.lora_A\.weight$"), "down"),
    (re.compile(r"^(?P<path>.+)\.lora_B\.weight$"), "up"),
    (re.compile(r"^(?P<path>.+)\.lora\.down\.weight$"), "down"),
    (re.compile(r"^(?P<path>.+)\.lora\.up\.weight$"), "up"),
    (re.compile(r"^(?P<path>.+)\.alpha$"), "alpha"),
)
_PROCESSOR = re.compile(r"^(?P<block>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\."
                        r"(?P<leaf>down|up)\.weight$")


def lora(weights: Mapping[str, Any] | str | Path, scale: float = 1.0) -> Overlay:
    """A `lora` overlay of a state dict (kept in the record, travelling with the unit) or a
    .safetensors / .pt file (read where the unit runs); keyed by the weights' sha256."""
    from pytest_erasure.cache import tensor_digest

    if isinstance(weights, str | Path):
        from pytest_erasure.models.formats.files import sha256

        path = Path(weights).expanduser().resolve()
        return Overlay("lora", {"scale": float(scale)}, content=sha256(path), path=str(path))
    tensors = {k: v.detach().cpu() for k, v in weights.items()}
    return Overlay("lora", {"scale": float(scale)}, content=tensor_digest(tensors),
                   tensors=tensors)


def modules(tensors: Mapping[str, Any], overlay: Overlay) -> dict[str, dict[str, Any]]:
    """{UNet module path: {"down", "up"[, "alpha"]}} from a LoRA state dict's keys."""
    found: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        name = key.removeprefix("unet.")
        if (match := _PROCESSOR.match(name)) is not None:
            proj = "to_out.0" if match["proj"] == "to_out" else match["proj"]
            found.setdefault(f"{match['block']}.{proj}", {})[match["leaf"]] = value
            continue
        for pattern, leaf in _FORMS:
            if (match := pattern.match(name)) is not None:
                found.setdefault(match["path"], {})[leaf] = value
                break
        else:
            raise overlay_error(overlay, f"has a key outside the LoRA layouts it reads: {key}",
                                "give a diffusers/peft LoRA (lora_A/lora_B) of the UNet")
    for path, parts in found.items():
        if not PROJECTION.search(path):
            raise overlay_error(overlay, f"targets {path}, not a UNet attention projection",
                                "give a LoRA of attn1/attn2's to_q, to_k, to_v or to_out.0")
        if "down" not in parts or "up" not in parts:
            raise overlay_error(overlay, f"module {path} lacks its down or up matrix",
                                "the LoRA is incomplete; save it again")
    if not found:
        raise overlay_error(overlay, "holds no LoRA weights", "give a non-empty LoRA state dict")
    return found


def stored_shapes(overlay: Overlay) -> dict[str, tuple[int, ...]] | None:
    """{key: shape} of the LoRA's tensors without reading them: the state dict's, or a
    .safetensors file's header (8-byte length, then JSON); None for a file format whose shapes
    cannot be read without loading it (.pt)."""
    import json
    import struct

    if overlay.tensors is not None:
        return {k: tuple(v.shape) for k, v in overlay.tensors.items()}
    assert overlay.path is not None
    path = Path(overlay.path)
    if path.suffix != ".safetensors":
        return None
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as error:
        raise overlay_error(overlay, f"file {path} is not a readable .safetensors file "
                            f"({error})", "give a LoRA saved with safetensors") from None
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


_PROJECTIONS: dict[tuple[str, float], dict[str, tuple[int, int]]] = {}


def projections(unet_config: Path) -> dict[str, tuple[int, int]]:
    """{module path: (out, in)} of every attention projection of the UNet `unet_config`
    describes: the UNet built on torch's meta device (its structure, no weights read or
    allocated), so a LoRA is checked against the model before the model loads."""
    import json

    import torch
    from diffusers import UNet2DConditionModel

    memo = (str(unet_config), unet_config.stat().st_mtime)
    if memo not in _PROJECTIONS:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(json.loads(unet_config.read_text()))
        _PROJECTIONS[memo] = {name: (m.out_features, m.in_features)
                              for name, m in unet.named_modules()
                              if PROJECTION.search(name) and isinstance(m, torch.nn.Linear)}
    return _PROJECTIONS[memo]


def check_fits(overlay: Overlay, unet_config: Path) -> None:
    """Refuse a LoRA made for another architecture (ErasureInputError) before any model loads:
    every module it targets must be an attention projection of this UNet, each with the shape
    its up @ down product must have."""
    shapes = stored_shapes(overlay)
    if shapes is None:
        return  # checked when it is merged (`apply`)
    expected = projections(unet_config)
    for path, parts in modules(shapes, overlay).items():
        if path not in expected:
            raise overlay_error(
                overlay, f"targets {path}, which this model's UNet ({unet_config.parent}) "
                "lacks: a LoRA for another architecture",
                "give a LoRA trained on this model's UNet")
        down, up = tuple(parts["down"]), tuple(parts["up"])
        out, inp = expected[path]
        if len(down) != 2 or len(up) != 2 or up[1] != down[0] or (up[0], down[1]) != (out, inp):
            raise overlay_error(
                overlay, f"module {path} (down {down}, up {up}) does not fit this model's "
                f"weight ({out}, {inp}): a LoRA for another architecture",
                "give a LoRA trained on this model's UNet")


class LoraKind:
    name = "lora"

    def fits(self, overlay: Overlay, standard_model: Path) -> None:
        """Before any model loads: the LoRA against the standard model folder's UNet config
        (the erased model shares its architecture); a model given otherwise (one file, a hub
        id) is checked when the LoRA is merged."""
        config = Path(standard_model) / "unet" / "config.json"
        if config.is_file():
            check_fits(overlay, config)

    def components(self, overlay: Overlay) -> tuple[str, ...]:
        return ("unet",)

    def validate(self, overlay: Overlay) -> None:
        import math

        scale = overlay.params.get("scale", 1.0)
        if not isinstance(scale, int | float) or not math.isfinite(scale):
            raise overlay_error(overlay, f"has scale {scale!r}", "give a finite number")
        if overlay.tensors is None and overlay.path is None:
            raise overlay_error(overlay, "names no weights", "give a state dict or a file")

    def describe(self, overlay: Overlay) -> dict[str, Any]:
        return {"description": "LoRA merged into the UNet's attention projections "
                "(W + scale * alpha/rank * up @ down, float32) for the unit; removed by "
                "restoring the original weights"}

    def weights(self, overlay: Overlay) -> Mapping[str, Any]:
        if overlay.tensors is not None:
            return overlay.tensors
        from pytest_erasure.models.formats.files import read_state_dict

        assert overlay.path is not None
        return read_state_dict(Path(overlay.path))

    def apply(self, pipe: StableDiffusionPipeline, overlay: Overlay, patch: Patch) -> None:
        import torch

        unet = pipe.unet
        if "merged" not in patch.memo:
            merged: dict[str, torch.Tensor] = {}
            scale = float(overlay.params.get("scale", 1.0))
            for path, parts in modules(self.weights(overlay), overlay).items():
                try:
                    layer = unet.get_submodule(path)
                except AttributeError:
                    raise overlay_error(overlay, f"targets {path}, which this UNet lacks",
                                        "give a LoRA trained on this model's UNet") from None
                if not isinstance(layer, torch.nn.Linear):
                    raise overlay_error(overlay, f"targets {path}, not a Linear layer",
                                        "give a LoRA of the attention projections")
                weight = layer.weight
                down, up = parts["down"].float(), parts["up"].float()
                if (down.dim() != 2 or up.dim() != 2 or up.shape[1] != down.shape[0]
                        or (up.shape[0], down.shape[1]) != tuple(weight.shape)):
                    raise overlay_error(
                        overlay, f"module {path} (down {tuple(down.shape)}, up "
                        f"{tuple(up.shape)}) does not fit its weight {tuple(weight.shape)}",
                        "give a LoRA trained on this model's UNet")
                rank = down.shape[0]
                alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
                delta = (up.to(weight.device) @ down.to(weight.device)) * (scale * alpha / rank)
                merged[path] = (weight.detach().float() + delta).to(weight.dtype)
            patch.memo["merged"] = merged
        for path, value in patch.memo["merged"].items():
            patch.parameter(unet.get_submodule(path), "weight", value)


KIND = LoraKind()
