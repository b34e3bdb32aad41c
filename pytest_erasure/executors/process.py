"""`--erasure-executor=process`: units run in worker processes that load and hold their models.

Each worker is a fresh interpreter (the spawn start method: no forked torch or CUDA state), and
keeps one `HandleHost` per model handle it has been sent, so each worker loads a model pair once
however many units it runs on it. A unit travels pickled (with the standard pickle, as it would to
any other machine), and so does its result; a unit goes to the worker that already holds its
models. Progress comes back as messages while the unit runs, and the batch sizes the unit had to
halve to come back with its result and are noted in the caller's recording: a worker starts each
unit at the sizes the driver has already learnt, exactly like a local run.

The workers are daemons: they end with the driver even when nobody closes the executor.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import traceback
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess
    from multiprocessing.queues import Queue

    from pytest_erasure.config import AuditConfig
    from pytest_erasure.executors import Host
    from pytest_erasure.executors.units import Unit
    from pytest_erasure.models.handle import ModelHandle

POLL_S = 0.5
"""How often the driver checks that the worker running its unit is still alive."""


class ProcessExecutor:
    name = "process"

    def __init__(self, config: AuditConfig | None = None, local: Host | None = None,
                 workers: int = 1) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._size = max(1, workers)
        self._workers: list[tuple[SpawnProcess, Queue[Any]]] = []
        self._results: Queue[Any] = self._context.Queue()
        self._holding: dict[ModelHandle | None, int] = {}
        self._next_id = 0
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    def _worker(self, models: ModelHandle | None) -> int:
        """The worker holding `models`, or a new one (or the least used one when all are up)."""
        if models in self._holding:
            return self._holding[models]
        if len(self._workers) < self._size:
            inbox: Queue[Any] = self._context.Queue()
            process = self._context.Process(target=serve, args=(inbox, self._results),
                                            name=f"pytest-erasure-worker-{len(self._workers)}",
                                            daemon=True)
            process.start()
            self._workers.append((process, inbox))
            index = len(self._workers) - 1
        else:
            used = [list(self._holding.values()).count(i) for i in range(len(self._workers))]
            index = used.index(min(used))
        self._holding[models] = index
        return index

    def run(self, unit: Unit, advance: Callable[[int], None]) -> Any:
        from pytest_erasure.memory import absorb, snapshot

        if unit.needs_models and unit.models is None:
            raise RuntimeError("the process executor runs units on models loaded from files; "
                               "models given in memory can only run with the local executor")
        index = self._worker(unit.models if unit.needs_models else None)
        process, inbox = self._workers[index]
        self._next_id += 1
        task = self._next_id
        inbox.put((task, pickle.dumps(unit), pickle.dumps(snapshot())))
        while True:
            try:
                message = self._results.get(timeout=POLL_S)
            except queue.Empty:
                if not process.is_alive():
                    what = unit.title or unit.fn.__name__
                    raise RuntimeError(f"worker {process.name} ended (exit code "
                                       f"{process.exitcode}) while running {what}") from None
                continue
            kind, of, payload = message
            if of != task:
                continue  # a message of a unit whose caller gave up (an exception) earlier
            if kind == "progress":
                advance(payload)
            elif kind == "done":
                result, sizes = pickle.loads(payload)
                absorb(sizes)
                return result
            else:
                raise pickle.loads(payload)

    def close(self) -> None:
        self._finalizer()


def _shutdown(workers: list[tuple[Any, Any]]) -> None:
    for _process, inbox in workers:
        inbox.put(None)
    for process, _inbox in workers:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
    workers.clear()


def serve(inbox: Queue[Any], results: Queue[Any]) -> None:
    """A worker's loop: run units until told to stop (None), holding a host per model handle."""
    from pytest_erasure.executors.hosts import HandleHost
    from pytest_erasure.executors.units import execute
    from pytest_erasure.memory import recording

    hosts: dict[Any, HandleHost] = {}
    while (task := inbox.get()) is not None:
        number, unit_bytes, sizes_bytes = task
        try:
            unit: Unit = pickle.loads(unit_bytes)
            key = unit.models if unit.needs_models else None
            host = hosts.get(key) or hosts.setdefault(key, HandleHost(key))

            def advance(n: int, number: int = number) -> None:
                results.put(("progress", number, n))

            with recording(pickle.loads(sizes_bytes)) as sizes:
                result = execute(unit, host, advance)
            results.put(("done", number, pickle.dumps((result, sizes))))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the driver
            results.put(("error", number, _portable(exc)))


def _portable(exc: BaseException) -> bytes:
    """The exception as the driver can unpickle it: itself when it round-trips (the user's
    `ErasureInputError` included), else a RuntimeError carrying the worker's traceback."""
    from pytest_erasure.errors import ErasureInputError

    if isinstance(exc, ErasureInputError):
        return pickle.dumps(_InputError(exc.what, exc.problem, exc.fix))
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - anything that cannot travel is described instead
        return pickle.dumps(RuntimeError("".join(traceback.format_exception(exc))))


class _InputError:
    """Rebuilds an `ErasureInputError` on the driver (its three-argument constructor does not
    survive pickle's default round trip)."""

    def __init__(self, what: str, problem: str, fix: str) -> None:
        self.args = (what, problem, fix)

    def __reduce__(self) -> tuple[Any, ...]:
        from pytest_erasure.errors import ErasureInputError

        return (ErasureInputError, self.args)
