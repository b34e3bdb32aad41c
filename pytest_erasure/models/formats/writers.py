"""Write erased models the way the published methods write them, for tests, benchmarks and the
shapes world: ESD/UCE UNet tensors, an LDM single-file checkpoint, Receler's folder, an
AdvUnlearn text encoder, a kohya/SPM LoRA. Key names, nesting and config files follow each
method's own code (see docs/formats.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pytest_erasure.models.formats.ldm import UNET_PREFIX, unet_key_to_ldm


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> Path:
    """.safetensors by suffix, otherwise torch.save (what the methods' old releases did)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(plain, str(path))
    else:
        torch.save(plain, path)
    return path


def unet_tensors(unet: torch.nn.Module, select: str = "all") -> dict[str, torch.Tensor]:
    """ESD-x: every attn2 parameter; ESD-u: every parameter but attn2; UCE: attn2 to_k/to_v
    weights; all: the full state dict (old `diffusers-*.pt` / `erased-*.pt` releases)."""
    state = unet.state_dict()
    keep = {
        "esd-x": lambda k: ".attn2." in k,
        "esd-u": lambda k: ".attn2." not in k,
        "uce": lambda k: ".attn2.to_k.weight" in k or ".attn2.to_v.weight" in k,
        "all": lambda k: True,
    }[select]
    return {k: v for k, v in state.items() if keep(k)}


def unet_to_ldm(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    return {prefix + unet_key_to_ldm(k, config): v for k, v in tensors.items()}


_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}


def vae_to_ldm(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """AutoencoderKL tensors under LDM's `first_stage_model.` names (attention as 1x1 convs)."""
    ups = len(vae.config.up_block_types)
    out: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        name = key.replace("conv_norm_out", "norm_out")
        parts = name.split(".")
        if parts[1] == "down_blocks":
            i, kind, rest = parts[2], parts[3], parts[4:]
            name = f"{parts[0]}.down.{i}." + ("downsample." + ".".join(rest[1:])
                                              if kind == "downsamplers" else
                                              f"block.{'.'.join(rest)}")
        elif parts[1] == "up_blocks":
            i, kind, rest = ups - 1 - int(parts[2]), parts[3], parts[4:]
            name = f"{parts[0]}.up.{i}." + ("upsample." + ".".join(rest[1:])
                                            if kind == "upsamplers" else f"block.{'.'.join(rest)}")
        elif len(parts) > 1 and parts[1] == "mid_block":
            kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                name = f"{parts[0]}.mid.block_{j + 1}.{rest}"
            else:
                for new, old in _VAE_ATTENTION.items():
                    if rest.startswith(new + "."):
                        rest = old + rest[len(new):]
                name = f"{parts[0]}.mid.attn_1.{rest}"
                if value.dim() == 2:
                    value = value[:, :, None, None]
        for new, old in _VAE_RESNET.items():
            name = name.replace(new, old)
        out["first_stage_model." + name] = value
    return out


def write_single_file(pipeline: Any, path: Path) -> Path:
    """A CompVis-layout SD checkpoint (`.ckpt` wraps it in {"state_dict": ...} as LDM does)."""
    tensors = unet_to_ldm(pipeline.unet.state_dict(), pipeline.unet.config)
    tensors.update(vae_to_ldm(pipeline.vae))
    # SD v1 checkpoints name CLIP tensors `cond_stage_model.transformer.text_model.*`.
    tensors.update({"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
                    for k, v in pipeline.text_encoder.state_dict().items()})
    if path.suffix == ".safetensors":
        return save_tensors(tensors, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.contiguous() for k, v in tensors.items()}}, path)
    return path


def receler_adapters(unet: torch.nn.Module, rank: int, seed: int = 0,
                     scale: float = 0.1) -> dict[str, dict[str, torch.Tensor]]:
    """Random adapters keyed as Receler keys them ({block prefix: AdapterEraser.state_dict()})."""
    from pytest_erasure.models.formats.receler import AdapterEraser, block_prefix

    generator = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, module in unet.named_modules():
        if type(module).__name__ == "BasicTransformerBlock":
            dim = module.attn2.to_out[0].weight.shape[1]
            state = AdapterEraser(dim, rank).state_dict()
            out[block_prefix(name)] = {
                k: torch.randn(v.shape, generator=generator) * scale for k, v in state.items()}
    return out


def write_receler(folder: Path, adapters: Mapping[str, Mapping[str, torch.Tensor]],
                  rank: int) -> Path:
    """Receler's `save_eraser_to_diffusers_format`: eraser_weights.pt + eraser_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: dict(v) for k, v in adapters.items()}, folder / "eraser_weights.pt")
    (folder / "eraser_config.json").write_text(
        json.dumps({"eraser_type": "adapter", "eraser_rank": rank}, indent=4))
    return folder


def lora_layers(unet: torch.nn.Module) -> list[str]:
    """SPM's targets: every Linear/Conv2d inside a Transformer2DModel."""
    names = []
    for name, module in unet.named_modules():
        if type(module).__name__ == "Transformer2DModel":
            for child, layer in module.named_modules():
                if child and isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
                    names.append(f"{name}.{child}")
    return names


def spm_lora(unet: torch.nn.Module, rank: int = 1, alpha: float = 1.0, seed: int = 0,
             scale: float = 0.1) -> dict[str, torch.Tensor]:
    """Random kohya-style LoRA tensors on SPM's targets (`lora_unet_<path with _>.*`)."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name in lora_layers(unet):
        layer = unet.get_submodule(name)
        weight = layer.weight
        key = "lora_unet_" + name.replace(".", "_")
        if weight.dim() == 4:
            down_shape = (rank, weight.shape[1], *weight.shape[2:])
            up_shape = (weight.shape[0], rank, 1, 1)
        else:
            down_shape, up_shape = (rank, weight.shape[1]), (weight.shape[0], rank)
        out[key + ".lora_down.weight"] = torch.randn(down_shape, generator=generator) * scale
        out[key + ".lora_up.weight"] = torch.randn(up_shape, generator=generator) * scale
        out[key + ".alpha"] = torch.tensor(alpha)
    return out
