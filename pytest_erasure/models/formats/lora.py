"""kohya-style LoRA (SPM's published form): `lora_unet_<module path with _>.lora_down.weight`,
`.lora_up.weight`, `.alpha` (and `lora_te_...` for the text encoder).

Merged at a fixed multiplier: W' = W + multiplier * alpha / rank * up @ down, into copies of only
the affected weights. SPM scales its multiplier at inference by the prompt's similarity to the
erased concept; a fixed multiplier is what we audit and report.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.models.formats import BuiltinFormat
from pytest_erasure.models.formats.files import hash_files, read_state_dict, tensor_keys
from pytest_erasure.models.formats.sharing import clone_sharing, set_tensor

ROLES = {"lora_unet_": ("unet", "UNet"), "lora_te_": ("text_encoder", "text encoder")}
FOREIGN = {"lora_te1_": "SDXL (two text encoders)", "lora_te2_": "SDXL (two text encoders)",
           "lora_transformer_": "a transformer (DiT) model"}
LEAVES = ("lora_down.weight", "lora_up.weight", "alpha")


def is_lora(keys: list[str]) -> bool:
    return any(k.startswith(("lora_unet_", "lora_te")) and ".lora_" in k for k in keys)


def group(tensors: dict[str, Any], what: str) -> dict[str, dict[str, torch.Tensor]]:
    """{lora module name: {lora_down.weight, lora_up.weight, alpha}}."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, leaf = key.partition(".")
        for prefix, arch in FOREIGN.items():
            if name.startswith(prefix):
                raise ErasureInputError(what, f"is a LoRA for {arch} (key {key})",
                                        "give a LoRA trained on this SD v1-family standard model")
        if leaf not in LEAVES:
            raise ErasureInputError(what, f"has a key outside the kohya LoRA layout: {key}",
                                    "give a kohya-style LoRA (lora_down/lora_up/alpha)")
        modules.setdefault(name, {})[leaf] = value
    return modules


def targets(module: torch.nn.Module, prefix: str) -> dict[str, str]:
    """{kohya name: module path} for every Linear/Conv2d in `module`."""
    return {prefix + name.replace(".", "_"): name for name, m in module.named_modules()
            if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}


def delta(down: torch.Tensor, up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """up @ down shaped like `weight` (Linear, or Conv2d with a 1x1 up), None if it cannot be."""
    if down.shape[0] != up.shape[1] or up.dim() not in (2, 4) or \
            (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
        return None
    product = up.flatten(1).float() @ down.flatten(1).float()
    if product.numel() != weight.numel() or product.shape[0] != weight.shape[0]:
        return None
    return product.reshape(weight.shape)


def load(standard: Any, path: Path, lora_multiplier: float) -> tuple[dict[str, Any],
                                                                   dict[str, Any]]:
    what = f"--erased-model {path}"
    tensors = read_state_dict(path)
    if not is_lora(list(tensors)):
        raise ErasureInputError(what, "is not a kohya-style LoRA (no lora_unet_*/lora_te_* keys)",
                                "give SPM's LoRA safetensors, or pass the right --erased-format")
    modules = group(tensors, what)
    overrides: dict[str, Any] = {}
    report: dict[str, Any] = {"multiplier": lora_multiplier, "modules": len(modules)}
    for prefix, (component, role) in ROLES.items():
        mine = {n: v for n, v in modules.items() if n.startswith(prefix)}
        if not mine:
            continue
        base = getattr(standard, component)
        names = targets(base, prefix)
        known = [n for n in mine if n in names]
        if len(known) != len(mine):
            unknown = [n for n in mine if n not in names]
            raise ErasureInputError(
                what, f"{len(known)} of {len(mine)} LoRA modules match a layer of the standard "
                f"{role} (e.g. no layer for {', '.join(unknown[:3])})",
                "give a LoRA trained on this SD v1-family standard model (another architecture's "
                "LoRA does not apply)")
        clone = clone_sharing(base)
        ranks, alphas = set(), set()
        for name, parts in mine.items():
            if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
                raise ErasureInputError(what, f"LoRA module {name} lacks lora_down or lora_up",
                                        "the file is incomplete; fetch it again")
            layer = base.get_submodule(names[name])
            weight = layer.weight
            down, up = parts["lora_down.weight"], parts["lora_up.weight"]
            change = delta(down, up, weight)
            if change is None:
                raise ErasureInputError(
                    what, f"LoRA module {name} (down {tuple(down.shape)}, up {tuple(up.shape)}) "
                    f"does not fit its layer's weight {tuple(weight.shape)}",
                    "give a LoRA trained on this standard model")
            rank = down.shape[0]
            alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
            ranks.add(rank)
            alphas.add(alpha)
            merged = weight.detach().float() + lora_multiplier * alpha / rank * change.to(
                weight.device)
            set_tensor(clone, names[name] + ".weight", merged.to(weight.dtype))
        overrides[component] = clone
        report[component] = {"modules_patched": len(mine), "layers_total": len(names),
                             "tensors_replaced": len(mine),
                             "tensors_total": len(base.state_dict()),
                             "ranks": sorted(ranks), "alphas": sorted(alphas)}
    if not overrides:
        raise ErasureInputError(what, "holds no lora_unet_ or lora_te_ modules",
                                "give a kohya-style LoRA for SD v1")
    return overrides, {"files": hash_files([path]), "lora": report}


class LoraFormat(BuiltinFormat):
    name = "lora"
    separable = "a LoRA merged into the standard UNet (SPM's form)"
    applies_to_standard = True
    options = ("lora_multiplier",)

    def detect(self, path: Path) -> float:
        """kohya's `lora_unet_` / `lora_te` key names (0.9: nothing else writes them)."""
        return 0.9 if path.is_file() and is_lora(tensor_keys(path)) else 0.0

    def load(self, standard: Any, standard_path: Path, path: Path, options: Mapping[str, Any]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        return load(standard, path, options["lora_multiplier"])



FORMAT = LoraFormat()
