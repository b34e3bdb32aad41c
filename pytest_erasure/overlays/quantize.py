"""The `quantize` overlay: weight-only round-to-nearest quantization, as quantize-dequantize.

What a quantized release of an erased model computes with: every Linear and Conv2d weight of
the named components (default: the UNet) rounded to a grid and mapped back to the model's dtype.
- `bits=8`: symmetric int8, one scale per output channel (scale = max|w| / 127, q in
  [-127, 127]);
- `bits=4`: symmetric 4-bit, one scale per group of `group_size` consecutive input weights of an
  output channel (scale = max|w| / 7, q in [-8, 7]; a last group may be shorter).
Computed in float32 on the CPU and put back in the model's dtype and device; biases, norms and
embeddings are kept. This measures the rounding a quantized model carries, not int8 / int4
kernels: activations stay in the model's dtype (the weights are stored dequantized).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_erasure.overlays import Patch, overlay_error
from pytest_erasure.records import Overlay

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

COMPONENTS = ("unet", "text_encoder", "vae")
BITS = (8, 4)
DEFAULT_GROUP = 64


def quantize(bits: int = 8, group_size: int = DEFAULT_GROUP,
             components: tuple[str, ...] = ("unet",)) -> Overlay:
    """A `quantize` overlay (int8 per-channel, or 4-bit group-wise); checked at once."""
    params: dict[str, Any] = {"bits": bits, "components": list(components),
                              "scheme": "per-channel" if bits == 8 else "group"}
    if bits != 8:
        params["group_size"] = group_size
    overlay = Overlay("quantize", params)
    KIND.validate(overlay)
    return overlay


def round_to_nearest(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """`weight` quantized and dequantized (float32, CPU), per output channel (8 bits) or per
    group of `group_size` inputs of each output channel (4 bits)."""
    import torch

    w = weight.detach().to("cpu", torch.float32)
    rows = w.reshape(w.shape[0], -1)
    if bits == 8:
        scale = rows.abs().amax(dim=1, keepdim=True) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return (torch.round(rows / scale).clamp(-127, 127) * scale).reshape(w.shape)
    columns = rows.shape[1]
    pad = (-columns) % group_size
    padded = torch.nn.functional.pad(rows, (0, pad)).reshape(rows.shape[0], -1, group_size)
    scale = padded.abs().amax(dim=2, keepdim=True) / 7
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(padded / scale).clamp(-8, 7) * scale
    return q.reshape(rows.shape[0], -1)[:, :columns].reshape(w.shape)


class QuantizeKind:
    name = "quantize"

    def components(self, overlay: Overlay) -> tuple[str, ...]:
        return tuple(overlay.params.get("components", ("unet",)))

    def validate(self, overlay: Overlay) -> None:
        params = overlay.params
        bits = params.get("bits")
        if bits not in BITS:
            raise overlay_error(overlay, f"has bits={bits!r}", "use 8 (int8 per-channel) or 4 "
                                "(4-bit group-wise)")
        if bits == 4:
            group = params.get("group_size")
            if not isinstance(group, int) or isinstance(group, bool) or group < 1:
                raise overlay_error(overlay, f"has group_size={group!r}",
                                    "give a positive whole number of weights per group (e.g. 64)")
        unknown = [c for c in params.get("components", ()) if c not in COMPONENTS]
        if unknown or not params.get("components"):
            raise overlay_error(overlay, f"names components {params.get('components')!r}",
                                f"name one or more of {', '.join(COMPONENTS)}")

    def describe(self, overlay: Overlay) -> dict[str, Any]:
        params = overlay.params
        grid = ("int8, one scale per output channel" if params["bits"] == 8 else
                f"4-bit, one scale per group of {params['group_size']} weights")
        return {"description": f"weight-only round-to-nearest quantization ({grid}, "
                "symmetric) of every Linear and Conv2d weight of "
                f"{', '.join(self.components(overlay))}, as quantize-dequantize computed on the "
                "CPU in float32: the rounding a quantized model carries, not low-bit kernels"}

    def apply(self, pipe: StableDiffusionPipeline, overlay: Overlay, patch: Patch) -> None:
        import torch

        bits = int(overlay.params["bits"])
        group = int(overlay.params.get("group_size", DEFAULT_GROUP))
        for component in self.components(overlay):
            module = getattr(pipe, component)
            done = patch.memo.setdefault(component, {})
            for name, layer in module.named_modules():
                if not isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
                    continue
                weight = layer.weight
                if name not in done:
                    done[name] = round_to_nearest(weight, bits, group).to(weight.device,
                                                                          weight.dtype)
                patch.parameter(layer, "weight", done[name])


KIND = QuantizeKind()
