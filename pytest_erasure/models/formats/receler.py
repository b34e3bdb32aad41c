"""Receler: `eraser_weights.pt` (one adapter per transformer block, keyed by the block's prefix
such as `down_blocks.0.attentions.0`, each {down.weight, down.bias, up.weight, up.bias}) and
`eraser_config.json` {"eraser_type": "adapter", "eraser_rank": r}.

As Receler's `inject_eraser` does, every BasicTransformerBlock's attn2 output `a` becomes
`a + up(GELU(down(a)))`. We add the adapter as a forward hook on attn2 of a copy of the standard
UNet (all UNet tensors shared) instead of wrapping attn2, so module names and attention
processors stay as diffusers made them (attention capture and IRECE still find every attn2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.models.formats import BuiltinFormat
from pytest_erasure.models.formats.configs import peek_json, read_json
from pytest_erasure.models.formats.files import (
    WEIGHT_SUFFIXES,
    hash_files,
    is_safetensors,
    lone_weight_file,
    read_state_dict,
    tensor_keys,
)
from pytest_erasure.models.formats.sharing import clone_sharing

ADAPTER_KEYS = ("down.weight", "down.bias", "up.weight", "up.bias")


class AdapterEraser(nn.Module):
    """Receler's AdapterEraser: up(GELU(down(x))), a residual added to the attn2 output."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.act = nn.GELU()
        self.up = nn.Linear(rank, dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(hidden_states)))


def _add_adapter(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output + module.receler_eraser(output)


def block_prefix(name: str) -> str:
    """Receler's `diffuser_prefix_name`: the Transformer2DModel that holds a transformer block."""
    parts = name.split(".")
    return ".".join(parts[:3] if parts[0] == "mid_block" else parts[:4])


def is_adapter_dict(tensors: dict[str, Any]) -> bool:
    """Nested {prefix: {down.weight, ...}} or flat {prefix.down.weight: ...} adapter weights."""
    keys = [k for k in tensors if not isinstance(tensors[k], dict)]
    nested = [v for v in tensors.values() if isinstance(v, dict)]
    if nested and not keys:
        return all(set(v) <= set(ADAPTER_KEYS) and v for v in nested)
    return bool(keys) and all(k.endswith(ADAPTER_KEYS) for k in keys)


def eraser_config(folder: Path) -> Path | None:
    """The folder's JSON file that configures an eraser (eraser_config.json, by content)."""
    for candidate in sorted(folder.glob("*.json")):
        data = peek_json(candidate)
        if "eraser_type" in data or "eraser_rank" in data:
            return candidate
    return None


def is_adapter_file(path: Path) -> bool:
    """Adapter weights: nested per block in a pickle, or flat keys inside attention blocks."""
    keys = tensor_keys(path)
    if not keys:
        return False
    if not is_safetensors(path):
        state = read_state_dict(path)
        if any(isinstance(v, dict) for v in state.values()) and is_adapter_dict(state):
            return True
    return all(k.endswith(ADAPTER_KEYS) and ".attentions." in k for k in keys)


def find_files(path: Path) -> tuple[Path | None, Path]:
    """(config file or None, weights file) of a Receler folder, found by content."""
    what = f"--erased-model {path}"
    if path.is_file():
        return None, path
    config = eraser_config(path)
    preferred = path / "eraser_weights.pt"
    weights = [preferred] if preferred.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(weights) != 1:
        raise ErasureInputError(what, f"holds {len(weights)} weight files",
                                "give Receler's folder with one eraser_weights.pt and "
                                "eraser_config.json")
    return config, weights[0]


def grouped(tensors: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if isinstance(value, dict):
            out[key] = dict(value)
            continue
        for leaf in ADAPTER_KEYS:
            if key.endswith("." + leaf):
                out.setdefault(key[: -len(leaf) - 1], {})[leaf] = value
    return out


def load(standard: Any, standard_path: Path, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    what = f"--erased-model {path}"
    config_file, weights_file = find_files(path)
    config: dict[str, Any] = {}
    if config_file is not None:
        config = read_json(config_file, "--erased-model")
    eraser_type = config.get("eraser_type", "adapter")
    if eraser_type != "adapter":
        raise ErasureInputError(f"{what} ({config_file})",
                                f"eraser_type is '{eraser_type}'; only 'adapter' is published",
                                "give a Receler adapter eraser")
    raw = read_state_dict(weights_file)
    if not is_adapter_dict(raw):
        raise ErasureInputError(f"{what} ({weights_file})",
                                "is not Receler adapter weights (expected {block prefix: "
                                "{down.weight, down.bias, up.weight, up.bias}})",
                                "give Receler's eraser_weights.pt, or pass the right "
                                "--erased-format")
    adapters = grouped(raw)
    unet = clone_sharing(standard.unet)
    blocks = [(n, m) for n, m in unet.named_modules()
              if type(m).__name__ == "BasicTransformerBlock" and getattr(m, "attn2", None)]
    prefixes = {block_prefix(n) for n, _ in blocks}
    matched = [p for p in adapters if p in prefixes]
    if set(adapters) != prefixes:
        missing = sorted(prefixes - set(adapters))
        unknown = sorted(set(adapters) - prefixes)
        detail = f"{len(matched)} of {len(adapters)} adapters match the standard UNet's " \
                 f"{len(prefixes)} cross-attention blocks"
        if missing:
            detail += f"; no adapter for {', '.join(missing[:3])}"
        if unknown:
            detail += f"; unknown blocks {', '.join(unknown[:3])}"
        raise ErasureInputError(f"{what} ({weights_file})", detail,
                                "give a Receler eraser trained on this standard model")
    rank = config.get("eraser_rank")
    param = next(standard.unet.parameters())
    for name, block in blocks:
        prefix = block_prefix(name)
        state = adapters[prefix]
        dim = block.attn2.to_out[0].weight.shape[1]
        found_rank = state["down.weight"].shape[0] if "down.weight" in state else None
        if rank is not None and found_rank != rank:
            raise ErasureInputError(f"{what} ({weights_file})",
                                    f"adapter {prefix} has rank {found_rank}, eraser_config.json "
                                    f"says {rank}", "give the config that came with the weights")
        adapter = AdapterEraser(dim, found_rank or 1)
        try:
            adapter.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ErasureInputError(f"{what} ({weights_file})",
                                    f"adapter {prefix} does not fit its block (attn2 width {dim}): "
                                    f"{str(error).splitlines()[0][:200]}",
                                    "give a Receler eraser trained on this standard model") from None
        block.attn2.add_module("receler_eraser", adapter.to(device=param.device, dtype=param.dtype))
        block.attn2.register_forward_hook(_add_adapter)
    tensors = 4 * len(blocks)
    files = [p for p in (config_file, weights_file) if p is not None]
    return {"unet": unet}, {
        "files": hash_files(files),
        "receler": {"eraser_type": eraser_type, "eraser_rank": rank, "adapters": len(blocks),
                    "config_file": str(config_file) if config_file else None},
        "unet": {"tensors_in_file": tensors, "tensors_added": tensors, "tensors_replaced": 0,
                 "tensors_total": len(standard.unet.state_dict())},
    }


class RecelerFormat(BuiltinFormat):
    loader = staticmethod(load)
    name = "receler"
    separable = "Receler adapters added after every attn2 output"
    applies_to_standard = True
    options: tuple[str, ...] = ()

    def detect(self, path: Path) -> float:
        """Its eraser config (0.9); adapter weights (0.8); a folder of only such a file (0.5)."""
        if path.is_dir():
            if eraser_config(path) is not None:
                return 0.9
            lone = lone_weight_file(path)
            return 0.5 if lone is not None and is_adapter_file(lone) else 0.0
        return 0.8 if is_adapter_file(path) else 0.0


FORMAT = RecelerFormat()
