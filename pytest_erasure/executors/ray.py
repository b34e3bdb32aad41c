"""`--erasure-executor=ray`: units on Ray actors that each hold their models, pytest the driver.

Why actors and not Ray Data: an audit's units come one at a time from a pytest test (a case asks
for a batch, judges it, decides what to ask next), so there is no dataset to stream through
`map_batches`; what Ray Data's Stable Diffusion recipe gets from `ActorPoolStrategy` (a model
loaded once per GPU and reused) is what a pool of actors gives here directly. Each actor holds
one `HandleHost` per model handle it was sent (the process executor's worker, on Ray), on one
GPU with `--device cuda` (`num_gpus=1`) or `--ray-worker-cpus` CPUs, and runs any unit.

Choices a reader would otherwise have to guess:
- **Parallelism within a unit.** pytest runs one case at a time per process, so workers would
  idle if a unit went to one actor. Units whose work is independent per item (generation: each
  image has its own seed and initial latent; detection: each image is judged alone) are split
  across the actors (`units.split`) and their results joined in input order. With
  batch-invariant layers (the CPU default) an image's bits do not depend on its batch, so the
  split changes no bit; other units (an embedding's training, an inversion) run whole on one.
- **Results through the object store, the cache written by the driver.** Images come back as
  uint8 tensors (a 512 x 512 image is 0.75 MiB) and the driver stores them in the cache exactly as
  `local` does, atomically and content-addressed: the cache needs no path every node can see, no
  lock across machines, and a rerun recomputes only what the driver's cache lacks. Ray's known
  pitfall with large outputs spilling the object store (ray#26441) is bounded by the unit: a
  generation unit's images are one case's batch, fetched at once and released.
- **Lost workers.** Actors restart (`max_restarts`) and their unfinished units are retried
  (`max_task_retries`): Ray's defaults are 0 and 0, so without this a killed worker would fail
  the audit. A retried unit recomputes from its inputs and seeds, so its result is the same; its
  progress bar may count some steps twice. A unit that keeps failing raises on the driver.
- **Embedded or joined.** With no `--ray-address` Ray starts on this machine and its workers get
  the driver's `sys.path` (so they import the very code pytest runs, tests' modules included).
  With an address the cluster's nodes must have pytest-erasure installed themselves; an actor of
  another version is refused.
- **Checked before anything loads** (`check`, from preflight): Ray installed, the address
  reachable (a TCP connect with a short timeout; Ray itself retries for minutes), the cluster
  holding the CPUs and GPUs the workers ask for: each a one-line usage error otherwise.

Nothing here imports Ray at module level: the plugin reads this module's options when it declares
its flags, on machines without the extra.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.scenarios.base import ScenarioOption

if TYPE_CHECKING:
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.executors import Host
    from pytest_erasure.executors.units import Unit

INSTALL = "pip install -e '.[ray]' (from a clone) or pip install 'pytest-erasure[ray]'"
POLL_S = 0.5
"""How often the driver asks the actors how far their units are."""
RESTARTS = 3
"""How many times an actor is restarted, and a unit retried, after its worker died."""
CONNECT_TIMEOUT_S = 3.0

OPTIONS = (
    ScenarioOption("ray-address", str, "",
                   "with --erasure-executor=ray: the cluster to join (auto, HOST:PORT of its head "
                   "node, or ray://HOST:PORT); empty: start Ray on this machine"),
    ScenarioOption("ray-workers", int, 0,
                   "with --erasure-executor=ray: actors holding the models (0: one per GPU of the "
                   "cluster with --device cuda, else 1)"),
    ScenarioOption("ray-worker-cpus", int, 1,
                   "with --erasure-executor=ray: CPUs (and torch threads) each actor takes"),
)


def _option(config: AuditConfig, name: str) -> Any:
    default = next(o.default for o in OPTIONS if o.name == name)
    value = (getattr(config, "scenario_options", None) or {}).get(name)
    return default if value is None else value


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ErasureInputError("--erasure-executor", "ray is named, but Ray is not installed",
                                f"install the extra: {INSTALL}") from None
    return ray


def _reachable(address: str) -> None:
    """A cluster address Ray could connect to, checked in seconds (Ray retries for minutes)."""
    if address == "auto":
        return  # Ray finds the local cluster's address file itself, or says there is none
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ErasureInputError("--ray-address", f"'{address}' is not an address",
                                "give auto, HOST:PORT of the head node, or ray://HOST:PORT; "
                                "leave it empty to start Ray on this machine")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ErasureInputError("--ray-address", f"nothing answers at {host_port} ({exc})",
                                "start the head node (ray start --head) or fix the address; "
                                "leave it empty to start Ray on this machine") from None


def _connect(config: AuditConfig) -> Any:
    """Ray, initialised for this audit (once per process)."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    address = str(_option(config, "ray-address") or "").strip()
    env = {"TRANSFORMERS_VERBOSITY": "error"}
    if not address:  # embedded: workers import what the driver imports
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    else:
        _reachable(address)
    try:
        ray.init(address=address or None, runtime_env={"env_vars": env},
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ErasureInputError("--ray-address", f"cannot join the Ray cluster at "
                                f"'{address}': {first}",
                                "start it (ray start --head) or leave --ray-address empty to "
                                "start Ray on this machine") from None
    return ray


def _plan(config: AuditConfig, resources: dict[str, float]) -> tuple[int, dict[str, float]]:
    """(workers, each actor's resources), refused when the cluster cannot hold them."""
    gpu = str(config.device).startswith("cuda")
    if not gpu and str(config.device) != "cpu":
        raise ErasureInputError("--device", f"'{config.device}' is not a device Ray actors are "
                                "placed on", "use --device cuda (one GPU per actor) or cpu")
    if gpu and str(config.device) != "cuda":
        raise ErasureInputError("--device", f"'{config.device}' names one GPU, but Ray gives each "
                                "actor a GPU of its own", "use --device cuda")
    cpus = int(_option(config, "ray-worker-cpus"))
    workers = int(_option(config, "ray-workers"))
    if cpus < 1:
        raise ErasureInputError("--ray-worker-cpus", f"is {cpus}", "give 1 or more")
    if workers < 0:
        raise ErasureInputError("--ray-workers", f"is {workers}", "give 1 or more (0: automatic)")
    have_gpu, have_cpu = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if workers == 0:
        workers = have_gpu if gpu else 1
    if gpu and have_gpu < max(workers, 1):
        raise ErasureInputError(
            "--ray-workers", f"{max(workers, 1)} GPU worker(s) asked with --device "
            f"{config.device}, but the Ray cluster has {have_gpu} GPU(s)",
            "add GPU nodes, lower --ray-workers, or audit with --device cpu")
    if workers * cpus > have_cpu:
        raise ErasureInputError(
            "--ray-workers", f"{workers} worker(s) x {cpus} CPU(s) asked, but the Ray cluster "
            f"has {have_cpu} CPU(s)", "lower --ray-workers or --ray-worker-cpus")
    return workers, {"num_cpus": cpus, "num_gpus": 1 if gpu else 0}


class UnitActor:
    """A Ray actor: runs units on `HandleHost`s it keeps per model handle; answers how far a
    unit has come while it runs (a second thread: the actor is created with max_concurrency 2)."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.hosts: dict[Any, Any] = {}
        self.steps: dict[int, int] = {}

    def version(self) -> tuple[str, int]:
        from pytest_erasure import __version__

        return __version__, os.getpid()

    def progress(self, task: int) -> int:
        return self.steps.get(task, 0)

    def run(self, task: int, unit_bytes: bytes, sizes_bytes: bytes) -> tuple[str, bytes]:
        from pytest_erasure.executors.hosts import HandleHost
        from pytest_erasure.executors.process import _portable
        from pytest_erasure.executors.units import execute
        from pytest_erasure.memory import recording

        self.steps[task] = 0
        try:
            unit: Unit = pickle.loads(unit_bytes)
            key = unit.models if unit.needs_models else None
            host = self.hosts.get(key) or self.hosts.setdefault(key, HandleHost(key))

            def advance(n: int) -> None:
                self.steps[task] = self.steps.get(task, 0) + n

            with recording(pickle.loads(sizes_bytes)) as sizes:
                result = execute(unit, host, advance)
            return "done", pickle.dumps((result, sizes))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the driver
            return "error", _portable(exc)
        finally:
            self.steps.pop(task, None)


class RayExecutor:
    name = "ray"
    options = OPTIONS
    devices_elsewhere = True
    """The actors' devices are the cluster's: `check` counts its GPUs; the driver needs none."""

    @staticmethod
    def check(config: AuditConfig) -> None:
        """Ray installed, the cluster reachable and able to hold the workers: before any load."""
        _plan(config, _connect(config).cluster_resources())

    @staticmethod
    def concurrency(config: AuditConfig) -> int:
        """One unit per actor at a time: the context hands this many independent units over
        together (`Context.map`)."""
        return _plan(config, _connect(config).cluster_resources())[0]

    def __init__(self, config: AuditConfig, local: Host | None = None) -> None:
        self.ray = _connect(config)
        self.workers, self.resources = _plan(config, self.ray.cluster_resources())
        self._actors: list[Any] = []
        self._free: list[Any] = []
        """Actors running no unit: each runs one unit at a time (its second thread only
        answers `progress`), whichever driver thread sent it."""
        self._idle = threading.Condition()
        self._task = 0

    def actors(self) -> list[Any]:
        """The pool, started on first use; refused when an actor runs another version."""
        with self._idle:
            if not self._actors:
                from pytest_erasure import __version__

                remote = self.ray.remote(UnitActor).options(
                    max_concurrency=2, max_restarts=RESTARTS, max_task_retries=RESTARTS,
                    **self.resources)
                actors = [remote.remote(int(self.resources["num_cpus"]))
                          for _ in range(self.workers)]
                versions = self.ray.get([a.version.remote() for a in actors])
                other = sorted({v for v, _pid in versions if v != __version__})
                if other:
                    raise RuntimeError(f"Ray workers run pytest-erasure {', '.join(other)}, the "
                                       f"driver {__version__}: install the same version on "
                                       "every node")
                self._actors, self._free = actors, list(actors)
            return self._actors

    def pids(self) -> list[int]:
        """Each actor's worker process id (for tests that kill one)."""
        return [pid for _v, pid in self.ray.get([a.version.remote() for a in self.actors()])]

    def run(self, unit: Unit, advance: Callable[[int], None]) -> Any:
        """The unit's result. A splittable unit is cut into one part per actor (whatever is
        busy: the parts, and so the bits, do not depend on timing), and each part goes to the
        next actor that is idle; safe to call from several threads at once (`Context.map`)."""
        from pytest_erasure.executors.units import join, split
        from pytest_erasure.memory import absorb, snapshot

        if unit.needs_models and unit.models is None:
            raise RuntimeError("the ray executor runs units on models loaded from files; "
                               "models given in memory can only run with the local executor")
        actors = self.actors()
        parts = split(unit, len(actors)) or [unit]
        sizes = pickle.dumps(snapshot())
        # cloudpickle (Ray's): a unit function defined in a script's __main__ travels by
        # value, as it cannot be imported by name on the actor
        payloads = [self.ray.cloudpickle.dumps(part) for part in parts]
        answers = self._run_parts(payloads, sizes, advance, unit)
        results = []
        for kind, payload in answers:
            if kind != "done":
                raise pickle.loads(payload)
            result, learnt = pickle.loads(payload)
            absorb(learnt)
            results.append(result)
        return results[0] if len(parts) == 1 else join(unit, results)

    def _take(self, wait: float) -> Any:
        """An idle actor, waiting up to `wait` seconds for one (None if none came)."""
        with self._idle:
            if not self._free:
                self._idle.wait(wait)
            return self._free.pop(0) if self._free else None

    def _give(self, actor: Any) -> None:
        with self._idle:
            self._free.append(actor)
            self._idle.notify()

    def _run_parts(self, payloads: list[bytes], sizes: bytes, advance: Callable[[int], None],
                   unit: Unit) -> list[tuple[str, bytes]]:
        """Every part's answer in order: parts go to idle actors as they free up, the bar
        advances by what the running parts report, and an actor is given back as soon as its
        part is done (never held while this thread waits for another)."""
        ray = self.ray
        queue = list(range(len(payloads)))
        running: dict[Any, tuple[int, int, Any]] = {}  # ref -> (part, task, actor)
        answers: list[Any] = [None] * len(payloads)
        shown: dict[int, int] = {}
        failure: BaseException | None = None
        while queue or running:
            while queue and failure is None:
                actor = self._take(0 if running else POLL_S)
                if actor is None:
                    break
                with self._idle:
                    self._task += 1
                    task = self._task
                part = queue.pop(0)
                shown[task] = 0
                running[actor.run.remote(task, payloads[part], sizes)] = (part, task, actor)
            if failure is not None:
                queue.clear()
            if not running:
                continue
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in done:
                part, task, actor = running.pop(ref)
                try:
                    answers[part] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    failure = failure or exc
                self._give(actor)
            if running and not done:
                self._poll(running, shown, advance)
        if failure is not None:
            what = unit.title or unit.fn.__name__
            text = str(failure).strip()
            first = text.splitlines()[0] if text else type(failure).__name__
            raise RuntimeError(f"a Ray worker failed {RESTARTS + 1} times running {what}: "
                               f"{first}") from None
        if unit.total and sum(shown.values()) < unit.total:
            advance(unit.total - sum(shown.values()))
        return answers

    def _poll(self, running: dict[Any, tuple[int, int, Any]], shown: dict[int, int],
              advance: Callable[[int], None]) -> None:
        """Advance the bar by the steps the running parts report since the last poll."""
        calls = list(running.values())
        try:
            polled = self.ray.get([a.progress.remote(t) for _p, t, a in calls], timeout=POLL_S)
        except Exception:  # noqa: BLE001 - an actor restarting: its progress comes later
            return
        for (_p, task, _a), steps in zip(calls, polled, strict=True):
            if steps > shown[task]:  # a retried unit restarts from 0: never count twice
                advance(steps - shown[task])
                shown[task] = steps

    def close(self) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(actor)
        self._actors, self._free = [], []
