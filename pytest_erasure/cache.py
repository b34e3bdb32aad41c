"""Content-addressed storage of everything an audit computes.

A key is the sha256 of a canonical JSON of what the result depends on (model fingerprint,
scenario settings, seed, ...), so an unchanged rerun recomputes nothing and a changed setting
can never be served a stale result. Entries are safetensors files written to a temporary name
and renamed into place (atomic on POSIX), with a checksum in the metadata over their tensors
*and* their facts (a found Ring-A-Bell prompt, a degenerate flag, TI losses are results as much
as the tensors are): an interrupted write leaves no entry, and a damaged or edited entry is
detected, dropped and recomputed.
A file lock per key keeps two processes (xdist workers, two audits sharing one cache folder)
from computing the same entry twice: `tensors` and `get_or_compute_many` take the locks of the
keys they must compute, read again once they hold them (the other process may have written the
entry meanwhile), and compute only what is still missing. Reading needs no lock (an entry
appears whole, by rename); dropping a damaged entry takes the key's lock, so a process never
deletes an entry another one has just written in its place.

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

from filelock import FileLock, Timeout

if TYPE_CHECKING:
    import torch

Tensors = dict[str, "torch.Tensor"]
Entry = tuple[Tensors, dict[str, Any]]

MAX_HELD_LOCKS = 256
"""Keys locked (and computed) at once by `get_or_compute_many`: each lock is an open file."""


def digest(key: Any) -> str:
    """Stable hash of a JSON-able key (dict order does not matter)."""
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (weights are gigabytes): the one file
    hash that model provenance and detector descriptions record."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def entry_checksum(tensors: Tensors, facts: Any) -> str:
    """The checksum of a tensor entry: its tensors and its facts, the facts as canonical JSON
    (`digest`), so what is checked is the facts' meaning, not the whitespace they were written
    with."""
    return hashlib.sha256(f"{tensor_digest(tensors)}\n{digest(facts)}".encode()).hexdigest()


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

    def get_or_compute_many(self, kind: str, keys: list[Any],
                            compute_missing: Callable[[list[int]], list[Entry]]) -> list[Entry]:
        """(tensors, facts) for every key, in order. `compute_missing(indices)` gets the indices
        (into `keys`) of entries no one has stored and returns their (tensors, facts) in that
        order; it runs while this process holds those keys' locks, so another process asking
        for one of them waits and then reads it. Keys another process is computing are not
        waited for while there is work of our own: they are read (or computed) afterwards.
        Locks are only ever tried, never waited for while others are held, so two processes
        asking for overlapping keys in any order cannot deadlock."""
        found: dict[int, Entry] = {}
        if self.root is None:
            computed = compute_missing(list(range(len(keys)))) if keys else []
            self.misses += len(keys)
            return list(computed)
        paths = [self.path(kind, key) for key in keys]
        first: dict[Path, int] = {}  # one computation per distinct key, even if repeated
        for i, path in enumerate(paths):
            first.setdefault(path, i)  # type: ignore[arg-type]
        pending = []
        for i in first.values():
            entry = self._read(paths[i], drop_damaged=False)  # type: ignore[arg-type]
            if entry is None:
                pending.append(i)
            else:
                found[i] = entry
                self.hits += 1
        while pending:
            held: dict[int, FileLock] = {}
            for i in pending:
                if len(held) == MAX_HELD_LOCKS:
                    break
                lock = self._lock(paths[i])  # type: ignore[arg-type]
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    continue
                held[i] = lock
            if not held:  # every one is being computed elsewhere: wait for the first
                lock = self._lock(paths[pending[0]])  # type: ignore[arg-type]
                lock.acquire()
                held[pending[0]] = lock
            try:
                todo = []
                for i in held:
                    entry = self._read(paths[i])  # type: ignore[arg-type]
                    if entry is None:
                        todo.append(i)
                    else:
                        found[i] = entry
                        self.hits += 1
                if todo:
                    computed = compute_missing(todo)
                    if len(computed) != len(todo):
                        raise ValueError(f"compute_missing returned {len(computed)} entries "
                                         f"for {len(todo)} keys")
                    for i, (tensors, facts) in zip(todo, computed, strict=True):
                        self._write(paths[i], tensors, facts)  # type: ignore[arg-type]
                        found[i] = (tensors, facts)
                        self.misses += 1
            finally:
                for lock in held.values():
                    lock.release()
            pending = [i for i in pending if i not in found]
        return [found[first[path]] for path in paths]  # type: ignore[index]

    def json(self, kind: str, key: Any, compute: Callable[[], Any]) -> Any:
        """The JSON value stored for key, computed (under the key's lock) and stored on a miss.
        The value is `normalise`d: fresh or cached, the same value comes back."""
        found = self.read_json(kind, key)
        if found is not None:
            self.hits += 1
            return found
        path = self.path(kind, key, suffix=".json")
        if path is None:
            self.misses += 1
            return normalise(compute())
        with self._lock(path):
            found = self.read_json(kind, key)
            if found is not None:
                self.hits += 1
                return found
            self.misses += 1
            value = normalise(compute())
            self.write_json(kind, key, value)
            return value

    def read_json(self, kind: str, key: Any) -> Any | None:
        """The JSON value stored for key, or None (caching off, absent, or damaged)."""
        path = self.path(kind, key, suffix=".json")
        if path is None:
            return None
        value = _read_json(path)
        if value is _DAMAGED:
            with self._lock(path):  # recomputed rather than trusted; dropped unless replaced
                if _read_json(path) is _DAMAGED:
                    path.unlink(missing_ok=True)
            return None
        return value

    def write_json(self, kind: str, key: Any, value: Any) -> None:
        """Store a JSON-able value (no-op with caching off); `normalise` it first if the caller
        must use exactly what a later read returns."""
        path = self.path(kind, key, suffix=".json")
        if path is not None:
            atomic_write_text(path, json.dumps({"sha256": digest(value), "value": value},
                                               sort_keys=True))

    def _lock(self, path: Path) -> FileLock:
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path) + ".lock")

    def _read(self, path: Path, drop_damaged: bool = True) -> tuple[Tensors, dict[str, Any]] | None:
        """The entry at path, or None. A damaged entry is recomputed rather than trusted, and
        dropped when `drop_damaged`: only by a caller holding the key's lock."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        if not path.is_file():
            return None
        try:
            data = path.read_bytes()
            tensors = load(data)
            meta = _safetensors_metadata(data)
            facts = json.loads(meta.get("facts", "{}"))
            # An entry written before the checksum covered the facts (no "checksum") is
            # recomputed, not trusted: its facts cannot be verified. ("sha256", the tensors'
            # digest alone, is still written, so an older version reading this cache keeps
            # working as before.)
            if meta.get("checksum") != entry_checksum(tensors, facts):
                raise ValueError("checksum mismatch")
            return tensors, facts
        except (SafetensorError, ValueError, OSError, json.JSONDecodeError):
            if drop_damaged:
                path.unlink(missing_ok=True)
            return None

    def _write(self, path: Path, tensors: Tensors, facts: dict[str, Any]) -> None:
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        text = json.dumps(facts, default=str)
        meta = {"sha256": tensor_digest(tensors), "facts": text,
                "checksum": entry_checksum(tensors, json.loads(text))}
        atomic_write_bytes(path, save(tensors, metadata=meta))


_DAMAGED = object()


def _read_json(path: Path) -> Any:
    """The value in a JSON entry, None when absent, `_DAMAGED` when it fails its checksum."""
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entry, dict) or entry.get("sha256") != digest(entry.get("value")):
            raise ValueError("checksum mismatch")
    except FileNotFoundError:
        return None
    except (ValueError, OSError, UnicodeDecodeError):
        return _DAMAGED
    return entry["value"]


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob, from the bytes already read: reading the file
    again could see another entry renamed into place in between."""
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError("truncated header")
    header = json.loads(data[8:8 + size])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("bad metadata")
    return meta
