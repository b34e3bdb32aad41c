"""Content-addressed storage of everything an audit computes.

A key is the sha256 of a canonical JSON of what the result depends on (model fingerprint,
scenario settings, seed, ...), so an unchanged rerun recomputes nothing and a changed setting
can never be served a stale result. Entries are safetensors files written to a temporary name
and renamed into place (atomic on POSIX), with the sha256 of their tensors in the metadata:
an interrupted write leaves no entry, and a damaged entry is detected, dropped and recomputed.
A file lock per key keeps two xdist workers from computing the same entry twice.

Small JSON-able records (a detector's verdicts, what loading a model reported) are JSON files
with the same discipline: atomic writes, a checksum over the value, a damaged file dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

if TYPE_CHECKING:
    import torch

Tensors = dict[str, "torch.Tensor"]


def digest(key: Any) -> str:
    """Stable hash of a JSON-able key (dict order does not matter)."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def normalise(value: Any) -> Any:
    """`value` as a JSON round trip returns it (tuples become lists, other objects strings), so
    a value used fresh and the same value read back from the cache are equal."""
    return json.loads(json.dumps(value, default=str))


def tensor_digest(tensors: Tensors) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class Cache:
    """`root=None` disables caching (every call computes) but keeps the same interface."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key: Any, suffix: str = ".safetensors") -> Path | None:
        if self.root is None:
            return None
        h = digest({"kind": kind, "key": key})
        return self.root / kind / h[:2] / f"{h}{suffix}"

    def tensors(self, kind: str, key: Any, compute: Callable[[], tuple[Tensors, dict[str, Any]]]
                ) -> tuple[Tensors, dict[str, Any]]:
        """Return (tensors, JSON-able facts) for key, computing and storing them on a miss."""
        path = self.path(kind, key)
        if path is None:
            self.misses += 1
            return compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            found = self._read(path)
            if found is not None:
                self.hits += 1
                return found
            self.misses += 1
            tensors, facts = compute()
            self._write(path, tensors, facts)
            return tensors, facts

    def read_json(self, kind: str, key: Any) -> Any | None:
        """The JSON value stored for key, or None (caching off, absent, or damaged)."""
        path = self.path(kind, key, suffix=".json")
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(entry, dict) or entry.get("sha256") != digest(entry.get("value")):
                raise ValueError("checksum mismatch")
        except (ValueError, OSError, UnicodeDecodeError):
            path.unlink(missing_ok=True)  # recomputed rather than trusted
            return None
        return entry["value"]

    def write_json(self, kind: str, key: Any, value: Any) -> None:
        """Store a JSON-able value (no-op with caching off); `normalise` it first if the caller
        must use exactly what a later read returns."""
        path = self.path(kind, key, suffix=".json")
        if path is not None:
            atomic_write_text(path, json.dumps({"sha256": digest(value), "value": value},
                                               sort_keys=True))

    def _read(self, path: Path) -> tuple[Tensors, dict[str, Any]] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load, safe_open

        if not path.is_file():
            return None
        try:
            data = path.read_bytes()
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load(data)
            if meta.get("sha256") != tensor_digest(tensors):
                raise ValueError("checksum mismatch")
            return tensors, json.loads(meta.get("facts", "{}"))
        except (SafetensorError, ValueError, OSError, json.JSONDecodeError):
            # A damaged entry is recomputed rather than trusted.
            path.unlink(missing_ok=True)
            return None

    def _write(self, path: Path, tensors: Tensors, facts: dict[str, Any]) -> None:
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"sha256": tensor_digest(tensors), "facts": json.dumps(facts, default=str)}
        atomic_write_bytes(path, save(tensors, metadata=meta))
