"""Key names of the original (CompVis LDM) Stable Diffusion layout, mapped to diffusers' names.

ESD's original code and every single-file checkpoint name UNet tensors as
`model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight`; diffusers calls
the same tensor `down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight`. The map is
derived from the standard UNet's own keys and config, so it holds for any SD-v1-family size.
Single-file checkpoints use diffusers' converters; this map serves partial UNet state dicts,
which those converters cannot handle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

UNET_PREFIX = "model.diffusion_model."
LDM_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "out.")

_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}


def _resnet(rest: list[str]) -> str:
    return ".".join([_RESNET.get(rest[0], rest[0]), *rest[1:]])


def unet_key_to_ldm(key: str, config: Mapping[str, Any]) -> str | None:
    """The LDM name of a diffusers UNet key (None for keys the SD v1 layout does not have)."""
    for new, old in _FIXED.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        return None
    parts = key.split(".")
    if len(parts) < 5 or not parts[1].isdigit() and parts[0] != "mid_block":
        return None
    if parts[0] == "down_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        first = 1 + block * (layers + 1)
        if kind == "resnets":
            return f"input_blocks.{first + index}.0.{_resnet(rest)}"
        if kind == "attentions":
            return f"input_blocks.{first + index}.1.{'.'.join(rest)}"
        if kind == "downsamplers":
            return f"input_blocks.{first + layers}.0.op.{'.'.join(rest[1:])}"
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        position = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}.get((kind, index))
        if position is None:
            return None
        inner = _resnet(rest) if kind == "resnets" else ".".join(rest)
        return f"middle_block.{position}.{inner}"
    if parts[0] == "up_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        first = block * (layers + 1)
        if kind == "resnets":
            return f"output_blocks.{first + index}.0.{_resnet(rest)}"
        if kind == "attentions":
            return f"output_blocks.{first + index}.1.{'.'.join(rest)}"
        if kind == "upsamplers":
            has_attention = "CrossAttn" in config["up_block_types"][block]
            return f"output_blocks.{first + layers}.{2 if has_attention else 1}.conv." + \
                ".".join(rest[1:])
    return None


def ldm_to_diffusers_map(unet_keys: Iterable[str], config: Mapping[str, Any]) -> dict[str, str]:
    """{LDM key: diffusers key} for every key of the standard UNet that has an LDM name."""
    out: dict[str, str] = {}
    for key in unet_keys:
        ldm = unet_key_to_ldm(key, config)
        if ldm is not None:
            out[ldm] = key
    return out


def looks_ldm(keys: Iterable[str]) -> bool:
    return any(k.startswith(LDM_ROOTS) for k in keys)
