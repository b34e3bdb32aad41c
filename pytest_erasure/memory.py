"""Running out of GPU memory: halve the batch and retry, down to one.

A batch that does not fit is redone at half the size, and the rest of the computation stays at
that size: a chunk of 8 that fails is redone as 4 + 4 and later chunks are of 4, exactly the
chunking a run started at 4 makes, so results are those of a run at the batch size that worked
(bit for bit; with batch-invariant kernels they equal every other batch size's too). What must
not change with the batch (textual inversion's effective batch) is the caller's to keep: it
passes a micro-batch and accumulates. Between tries the failed attempt's tensors are dropped and
`torch.cuda.empty_cache()` returns the freed blocks, so the smaller try sees the memory.

The batch size that worked is recorded in the active `BatchSizes` (`recording`), which the
session opens around each case and writes into the case's facts; later computations of the same
kind start at the size that worked, so a run pays for each out-of-memory once. A unit run in
another process (`executors/`) starts from a `snapshot` of the recording and its halvings are
`absorb`ed back, so the same holds across processes.

Out of memory at batch size 1 is the user's to fix: an `ErasureInputError` that names the model,
the resolution and the dtype.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from pytest_erasure.errors import ErasureInputError

T = TypeVar("T")


@dataclass
class BatchSizes:
    """Per kind of computation ('generation', 'ddim inversion', ...): the size asked for and the
    size that worked, for the kinds that had to shrink."""

    requested: dict[str, int] = field(default_factory=dict)
    effective: dict[str, int] = field(default_factory=dict)

    def start(self, what: str, requested: int) -> int:
        return min(requested, self.effective.get(what, requested))

    def note(self, what: str, requested: int, size: int) -> None:
        if size < requested:
            self.requested[what] = max(requested, self.requested.get(what, 0))
            self.effective[what] = min(size, self.effective.get(what, size))

    def reduced(self) -> dict[str, int]:
        """{kind: effective batch size} for every kind that shrank ({} when none did)."""
        return dict(sorted(self.effective.items()))


_active: ContextVar[BatchSizes | None] = ContextVar("pytest_erasure_batch_sizes", default=None)


@contextmanager
def recording(sizes: BatchSizes) -> Iterator[BatchSizes]:
    """While open, halvings are noted in `sizes`, and computations start at its sizes."""
    token = _active.set(sizes)
    try:
        yield sizes
    finally:
        _active.reset(token)


def snapshot() -> BatchSizes:
    """A copy of the active recording (empty when none is open): what a unit run elsewhere
    starts from, so it starts at the sizes this process has already learnt."""
    sizes = _active.get()
    if sizes is None:
        return BatchSizes()
    return BatchSizes(dict(sizes.requested), dict(sizes.effective))


def absorb(sizes: BatchSizes) -> None:
    """Note in the active recording what a unit run elsewhere had to halve to (`snapshot`'s
    copy, after the unit): the run learns it as if the unit had run here."""
    for what, size in sizes.effective.items():
        _note(what, sizes.requested.get(what, size), size)


def oom_errors() -> tuple[type[BaseException], ...]:
    """`torch.OutOfMemoryError` and `torch.cuda.OutOfMemoryError` (one class in recent torch,
    two in older ones; both caught)."""
    import torch

    found = {getattr(torch, "OutOfMemoryError", None),
             getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)}
    return tuple(e for e in found if isinstance(e, type))


def _release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe(pipe: object, doing: str, dtype: object) -> str:
    """'<model> generating 512x512 images in float16': what ran out of memory, for the error."""
    config = getattr(pipe, "config", None)
    name = getattr(config, "_name_or_path", None) or (
        config.get("_name_or_path") if isinstance(config, dict) else None)
    model = f"model {name}" if name else f"an in-memory {type(pipe).__name__}"
    return f"{model} {doing} in {str(dtype).removeprefix('torch.')}"


def out_of_memory_error(what: str, describe: str) -> ErasureInputError:
    return ErasureInputError(
        f"GPU memory ({what})",
        f"{describe} does not fit even at batch size 1",
        "lower --height/--width, use --dtype float16 (or bfloat16), free the GPU of other "
        "processes, or use a GPU with more memory; --batch-size 1 does not help (batch size 1 "
        "is what failed)")


def halving(what: str, size: int, attempt: Callable[[int], T], describe: Callable[[], str]
            ) -> T:
    """`attempt(size)`, retried at half the size after each out-of-memory; the size that worked
    is noted in the active recording. For a computation that must restart as a whole at the
    smaller size (textual inversion); `chunked` redoes only the failed chunk."""
    errors = oom_errors()
    requested = size
    size = _start(what, size)
    while True:
        try:
            result = attempt(size)
        except errors:
            failed = True  # leave the except block first: the traceback holds the tensors
        else:
            failed = False
        if not failed:
            _note(what, requested, size)
            return result
        size = _smaller(what, size, describe)


def chunked(what: str, n: int, size: int, run: Callable[[int, int], None],
            describe: Callable[[], str]) -> int:
    """`run(start, stop)` over [0, n) in chunks of `size`; a chunk that runs out of memory is
    redone at half the size and later chunks keep that size. Returns the size that worked
    (for the caller's next loop)."""
    errors = oom_errors()
    requested = size
    size = _start(what, size)
    start = 0
    while start < n:
        stop = min(start + size, n)
        try:
            run(start, stop)
        except errors:
            failed = True
        else:
            failed = False
        if failed:
            size = _smaller(what, size, describe)
            continue
        start = stop
    _note(what, requested, size)
    return size


def _start(what: str, size: int) -> int:
    sizes = _active.get()
    return sizes.start(what, size) if sizes is not None else size


def _note(what: str, requested: int, size: int) -> None:
    sizes = _active.get()
    if sizes is not None:
        sizes.note(what, requested, size)


def _smaller(what: str, size: int, describe: Callable[[], str]) -> int:
    _release()
    if size <= 1:
        raise out_of_memory_error(what, describe()) from None
    return size // 2
