"""Copies of modules that share every unchanged tensor with the original.

An erased model usually differs from the standard one in a few tensors (ESD-x, UCE: only
cross-attention; SPM: a rank-1 delta; AdvUnlearn: only the text encoder). We copy the module
objects (cheap) but keep the standard model's tensors wherever the erased model's are equal, so
memory grows only by what differs. A component with no change at all is not copied.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from pytest_erasure.errors import ErasureInputError


def clone_sharing(module: torch.nn.Module) -> torch.nn.Module:
    """A structural copy of `module` whose parameters and buffers are the original objects."""
    memo: dict[int, Any] = {id(t): t for t in module.parameters()}
    memo.update({id(t): t for t in module.buffers()})
    return copy.deepcopy(module, memo)


def set_tensor(module: torch.nn.Module, key: str, value: torch.Tensor) -> None:
    """Replace one parameter or buffer (by state-dict key) with a new tensor object."""
    owner_name, _, leaf = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        owner._parameters[leaf] = torch.nn.Parameter(
            value, requires_grad=bool(old is not None and old.requires_grad))
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:
        raise KeyError(key)


def fit_report(tensors: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
               ignore: Iterable[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """(keys that fit, keys unknown to the target, keys whose shape differs)."""
    ignored = set(ignore)
    fit, unknown, misshapen = [], [], []
    for key, value in tensors.items():
        if key in ignored:
            continue
        if key not in target:
            unknown.append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            misshapen.append(key)
        else:
            fit.append(key)
    return fit, unknown, misshapen


def describe_misfit(tensors: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                    fit: list[str], unknown: list[str], misshapen: list[str], total: int) -> str:
    """'3 of 10 keys fit the standard UNet; 7 match no tensor (e.g. ...)' for error messages."""
    parts = [f"{len(fit)} of {total} keys fit"]
    if unknown:
        parts.append(f"{len(unknown)} match no tensor (e.g. {', '.join(unknown[:3])})")
    if misshapen:
        key = misshapen[0]
        parts.append(f"{len(misshapen)} have another shape (e.g. {key}: "
                     f"{tuple(tensors[key].shape)} in the file, {tuple(target[key].shape)} in the "
                     "standard model)")
    return "; ".join(parts)


def override(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], *, what: str,
             role: str, ignore: Iterable[str] = (), require_all: bool = False,
             ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """`module` with `tensors` put in place of its own, sharing everything unchanged.

    Every key must fit by name and shape (a half-mapped checkpoint must not pass silently);
    with `require_all` every tensor of `module` must also be present (a full checkpoint).
    Returns the (possibly identical) module and counts for the provenance.
    """
    target = module.state_dict()
    fit, unknown, misshapen = fit_report(tensors, target, ignore)
    considered = len(fit) + len(unknown) + len(misshapen)
    if not fit or unknown or misshapen:
        detail = describe_misfit(tensors, target, fit, unknown, misshapen, considered)
        raise ErasureInputError(what, f"does not fit the standard {role}: {detail}",
                                f"give weights made for this standard model's {role} "
                                "(or pass --erased-format if the format was misdetected)")
    if require_all:
        missing = [k for k in target if k not in tensors and k not in set(ignore)]
        if missing:
            raise ErasureInputError(
                what, f"lacks {len(missing)} of the standard {role}'s {len(target)} tensors "
                f"(e.g. {', '.join(missing[:3])})",
                "give a complete checkpoint, or the override formats for partial weights")
    changed = []
    for key in fit:
        old = target[key]
        new = tensors[key].to(device=old.device, dtype=old.dtype)
        if not torch.equal(new, old):
            changed.append((key, new))
    stats = {"tensors_in_file": len(tensors), "tensors_replaced": len(fit),
             "tensors_changed": len(changed), "tensors_total": len(target)}
    if not changed:
        return module, stats
    clone = clone_sharing(module)
    for key, new in changed:
        set_tensor(clone, key, new)
    return clone, stats


def strip_prefixes(keys: Iterable[str], prefixes: Iterable[str]) -> dict[str, str]:
    """{old key: new key}, removing, repeatedly, any listed prefix that every key carries."""
    mapping = {k: k for k in keys}
    changed = True
    while changed and mapping:
        changed = False
        for prefix in prefixes:
            if all(v.startswith(prefix) for v in mapping.values()):
                mapping = {k: v[len(prefix):] for k, v in mapping.items()}
                changed = True
    return mapping
