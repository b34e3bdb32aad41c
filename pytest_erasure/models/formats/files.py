"""Reading weight files a user hands us: hashing, safe loading, and the errors both can raise.

Everything here treats files as untrusted: pickles load only through `torch.load(weights_only=True)`
(which refuses any object that is not a tensor or a plain container), safetensors are parsed by the
safetensors library, and any failure becomes an `ErasureInputError` that names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_erasure.errors import ErasureInputError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Files besides weights whose content changes what a folder loads as (configs, tokenizer).
CONFIG_SUFFIXES = (".json", ".txt", ".model")

_HASHES: dict[tuple[str, int, int], str] = {}
# The last state dict read, so detecting a format and loading it read a pickle once.
_LAST: dict[tuple[str, int, int], dict[str, Any]] = {}
# Key names per file, so every format's detection reads a file's keys once.
_KEYS: dict[tuple[str, int, int], list[str]] = {}


def _stat_key(path: Path) -> tuple[str, int, int]:
    resolved = path.resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_size, stat.st_mtime_ns


def forget() -> None:
    """Drop the remembered state dict (call once loading is done, to free its memory)."""
    _LAST.clear()
    _KEYS.clear()


def sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process."""
    key = _stat_key(path)
    resolved = Path(key[0])
    if key not in _HASHES:
        from pytest_erasure.cache import file_sha256

        try:
            _HASHES[key] = file_sha256(resolved)
        except OSError as error:
            raise ErasureInputError(str(path), f"cannot be read ({error.strerror})",
                                    "check the file's permissions") from error
    return _HASHES[key]


def hash_files(paths: Iterable[Path]) -> dict[str, str]:
    """{path: sha256} for the given files, in sorted order (JSON-able)."""
    return {str(p): sha256(p) for p in sorted(paths)}


def walk_files(path: Path) -> list[Path]:
    """Every file under a folder, through symlinked subfolders too (a model folder may be a
    tree of links into a download cache, and `Path.rglob` does not follow them before Python
    3.13), each real folder once so a link cycle ends; a file is itself."""
    if not path.is_dir():
        return [path]
    found, seen = [], set()
    for folder, dirs, names in os.walk(path, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        found += [Path(folder) / name for name in names]
    return found


def folder_files(folder: Path, subfolders: Iterable[str] | None = None) -> list[Path]:
    """Weight and config files of a model folder (optionally only some component subfolders)."""
    roots = [folder] if subfolders is None else [folder / s for s in subfolders]
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in walk_files(root):
            hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
            if path.is_file() and not hidden and path.suffix in WEIGHT_SUFFIXES + CONFIG_SUFFIXES:
                found.append(path)
    if subfolders is not None and (folder / "model_index.json").is_file():
        found.append(folder / "model_index.json")
    return sorted(found)


def require_readable(path: Path, what: str) -> None:
    """Refuse a missing, empty or unreadable path before any loader sees it."""
    if not path.exists():
        raise ErasureInputError(f"{what} {path}", "does not exist",
                                "give the path of a local model (nothing is downloaded)")
    if not os.access(path, os.R_OK):
        raise ErasureInputError(f"{what} {path}", "is not readable", "check its permissions")
    if path.is_dir():
        if not any(path.iterdir()):
            raise ErasureInputError(f"{what} {path}", "is an empty folder",
                                    "give a folder that holds the model's files")
    elif path.stat().st_size == 0:
        raise ErasureInputError(f"{what} {path}", "is an empty file",
                                "the download or copy is incomplete; fetch the file again")


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then '{'."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except Exception as error:  # safetensors raises its own error types for every corruption
        raise ErasureInputError(str(path), f"is not a valid safetensors file ({_first_line(error)})",
                                "the file is truncated or corrupt; fetch it again") from error


def tensor_keys(path: Path) -> list[str]:
    """A weight file's top-level key names: the safetensors header (tensors unread), or the
    pickle's state dict, whose nested dicts (Receler's) count by their own names only when
    nothing else is at the top."""
    key = _stat_key(path)
    if key not in _KEYS:
        if is_safetensors(path):
            _KEYS[key] = safetensors_keys(path)
        else:
            state = read_state_dict(path)
            _KEYS[key] = [k for k, v in state.items() if not isinstance(v, dict)] or list(state)
    return _KEYS[key]


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a transformers/diffusers model folder (sharded or not)."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    safetensors = [p for p in found if p.suffix == ".safetensors"]
    return safetensors or found


def lone_weight_file(folder: Path) -> Path | None:
    """The one weight file of a folder (by suffix, else by safetensors content), if just one."""
    weights = [p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        weights = [p for p in folder.iterdir() if p.is_file() and is_safetensors(p)]
    return weights[0] if len(weights) == 1 else None


def read_many(files: list[Path]) -> dict[str, Any]:
    """The tensors of every file (shards of one model), merged."""
    tensors: dict[str, Any] = {}
    for file in files:
        tensors.update(read_state_dict(file))
    return tensors


def read_state_dict(path: Path) -> dict[str, Any]:
    """A weight file's tensors: safetensors by content, anything else as a weights-only pickle.

    Nested dicts are kept (Receler's file is a dict of dicts); a top-level `state_dict` wrapper
    (Lightning/LDM checkpoints) is unwrapped.
    """
    key = _stat_key(path)
    if key not in _LAST:
        _LAST.clear()
        _LAST[key] = _read(path)
    return _LAST[key]


def _read(path: Path) -> dict[str, Any]:
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(str(path))
        except Exception as error:
            raise ErasureInputError(
                str(path), f"is not a valid safetensors file ({_first_line(error)})",
                "the file is truncated or corrupt; fetch it again") from error
        # safetensors hands back each tensor at its byte offset in the file (4-byte aligned,
        # wherever the header's length puts it). On CPUs where MKL runs its SSE kernels a GEMM
        # sums in another order for an unaligned operand, so the same weights gave other last
        # bits than from a .ckpt or a diffusers folder (torch allocates 64-byte aligned): copy.
        loaded = {k: v.clone() for k, v in loaded.items()}
    else:
        loaded = _load_pickle(path)
    while isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(
            loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded:
        raise ErasureInputError(str(path), "holds no tensors (not a state dict)",
                                "give a file saved with torch.save(state_dict) or safetensors")
    return dict(loaded)


def _load_pickle(path: Path) -> Any:
    import pickle
    import zipfile

    import torch

    try:
        # A file object, not a path: torch.load picks a reader by suffix, and names lie.
        with open(path, "rb") as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _refused_global(error)
        if found:
            raise ErasureInputError(
                str(path), f"holds Python objects other than tensors ({found}), refused for "
                "safety: pickles load weights-only, nothing in them runs",
                "convert it to safetensors where it was made, or re-save only its state dict"
            ) from error
        raise ErasureInputError(
            str(path), f"is not a weights-only PyTorch file ({_unpickler_reason(error)}), refused",
            "the file is truncated or corrupt, or pickles more than tensors; fetch it again, or "
            "convert it to safetensors where it was made") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, LookupError,
            TypeError, AttributeError) as error:  # torch.load on garbage raises many types
        reason = _first_line(error)
        if isinstance(error, LookupError | TypeError | AttributeError):
            reason = f"{type(error).__name__}: {reason}"
        raise ErasureInputError(str(path), f"cannot be read as a weight file ({reason})",
                                "the file is truncated or not a PyTorch/safetensors file") from error


def _refused_global(error: BaseException) -> str | None:
    """The callable a weights-only load refused ('posix.system'), if that is why it failed."""
    import re

    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return match.group(1) if match else None


def refused_global_in(error: BaseException) -> str | None:
    """`_refused_global` anywhere in an exception's chain (libraries re-raise as OSError)."""
    import pickle

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, pickle.UnpicklingError):
            found = _refused_global(current)
            if found:
                return found
        current = current.__cause__ or current.__context__
    return None


def _unpickler_reason(error: BaseException) -> str:
    """torch's own reason, without its advice to retry with weights_only=False (never do that
    with a file from the internet)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    _, found, rest = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()] if found else []
    return lines[0][:200] if lines else "weights-only unpickling failed"


def flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": t}} -> {"a.b": t}; non-tensor leaves are dropped."""
    import torch

    out: dict[str, Any] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, torch.Tensor):
            out[name] = value
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
