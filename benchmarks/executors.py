"""What running a unit through each executor costs, on the shapes world's real models.

    python benchmarks/executors.py [--reps 5] [--images 4] [--executors local,process,ray]

For each executor (`local`, `process`, and `ray` with one actor when Ray is installed), in one
process and alternated rep by rep:
- an empty unit (a module-level function returning nothing): the executor's own round trip;
- a generation unit of `--images` fresh images (new seeds every rep, so neither the memo nor the
  cache serves it) on the erased model, the audit's most frequent unit;
- a detection unit on those images.
Reported: median seconds per unit, the ratio to local per kind, the overhead over local per unit,
and the peak resident memory (VmHWM) of the driver and of each worker process (a Ray actor's
process included).
Writes benchmarks/results/executors.json. Models are loaded before timing (the worker's first
unit loads them; that load is reported apart as `worker_first_unit_seconds`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def nothing(host: Any, advance: Any) -> None:
    """The empty unit: what is left is the executor's own cost."""


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--executors", default="local,process,ray")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in the driver and in every worker (default 1: on a "
                             "shared machine, more threads than free cores slow every side)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the driver's torch and spawned workers
    wanted = [name.strip() for name in args.executors.split(",") if name.strip()]
    if "ray" in wanted:
        try:
            import ray  # noqa: F401
        except ImportError:
            wanted.remove("ray")
            print("ray is not installed: measuring without it")

    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.config import DEFAULT_CONCEPTS
    from pytest_erasure.context import Context
    from pytest_erasure.records import GenerationInput
    from pytest_erasure.session import default_config

    contexts = {name: Context(default_config(no_cache=True, cache_dir=None, executor=name,
                                             scenario_options={"ray-workers": 1,
                                                               "ray-worker-cpus": args.threads}),
                              load_concepts(DEFAULT_CONCEPTS))
                for name in wanted}
    concept = contexts["local"].concepts.concepts["circle"]
    first = {}
    for name in wanted[1:]:
        start = time.perf_counter()
        contexts[name].run(contexts[name].unit(nothing))  # starts the worker, loads models
        first[name] = time.perf_counter() - start
    for ctx in contexts.values():  # models and detector loaded before any timing
        ctx.detect(ctx.generate("erased", [GenerationInput(seed=0, prompt="a circle")]), concept)
    times: dict[str, dict[str, list[float]]] = {
        name: {"empty": [], "generate": [], "detect": []} for name in contexts}
    seed = 1000
    for rep in range(args.reps):
        order = list(contexts) if rep % 2 == 0 else list(reversed(contexts))
        seed += args.images
        inputs = [GenerationInput(seed=seed + i, prompt="a circle") for i in range(args.images)]
        for name in order:
            ctx = contexts[name]
            t0 = time.perf_counter()
            ctx.run(ctx.unit(nothing))
            t1 = time.perf_counter()
            ctx._memo.clear()  # a fresh generation every time, for both executors
            images = ctx.generate("erased", inputs)
            t2 = time.perf_counter()
            ctx.detect(images, concept)
            t3 = time.perf_counter()
            times[name]["empty"].append(t1 - t0)
            times[name]["generate"].append(t2 - t1)
            times[name]["detect"].append(t3 - t2)
    medians = {name: {kind: statistics.median(v) for kind, v in kinds.items()}
               for name, kinds in times.items()}
    peaks = {"driver (local models loaded)": peak_rss_mib(os.getpid())}
    if "process" in contexts:
        worker = contexts["process"].executor._workers[0][0].pid  # type: ignore[attr-defined]
        peaks["process worker"] = peak_rss_mib(worker)
    if "ray" in contexts:
        actor = contexts["ray"].executor.pids()[0]  # type: ignore[attr-defined]
        peaks["ray actor"] = peak_rss_mib(actor)
    result = {
        "what": "seconds per unit through each executor (shapes world, erased model, "
                f"{args.images} images per generation unit; medians of {args.reps} alternated reps; "
                f"{args.threads} torch thread(s) in the driver and in each worker)",
        "seconds": times,
        "median_seconds": medians,
        "ratio_to_local": {name: {k: medians[name][k] / medians["local"][k]
                                  for k in medians["local"]} for name in wanted[1:]},
        "overhead_over_local_seconds": {name: {k: medians[name][k] - medians["local"][k]
                                               for k in medians["local"]}
                                        for name in wanted[1:]},
        "worker_first_unit_seconds": first,
        "peak_rss_mib": peaks,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()},
        "command": "python benchmarks/executors.py " + " ".join(sys.argv[1:]),
    }
    for ctx in contexts.values():
        ctx.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "executors.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median_seconds": medians,
                      "ratio_to_local": result["ratio_to_local"],
                      "peak_rss_mib": result["peak_rss_mib"]}, indent=2))


if __name__ == "__main__":
    main()
