"""What running a unit through each executor costs, on the shapes world's real models.

    python benchmarks/executors.py [--reps 5] [--images 4]

For each executor (`local`, `process`), in one process and alternated rep by rep:
- an empty unit (a module-level function returning nothing): the executor's own round trip;
- a generation unit of `--images` fresh images (new seeds every rep, so neither the memo nor the
  cache serves it) on the erased model, the audit's most frequent unit;
- a detection unit on those images.
Reported: median seconds per unit, the ratio process / local per kind, the overhead process - local
per unit, and the peak resident memory (VmHWM) of the driver and of the worker process.
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
    args = parser.parse_args()

    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.config import DEFAULT_CONCEPTS
    from pytest_erasure.context import Context
    from pytest_erasure.records import GenerationInput
    from pytest_erasure.session import default_config

    contexts = {name: Context(default_config(no_cache=True, cache_dir=None, executor=name),
                              load_concepts(DEFAULT_CONCEPTS))
                for name in ("local", "process")}
    concept = contexts["local"].concepts.concepts["circle"]
    start = time.perf_counter()
    contexts["process"].run(contexts["process"].unit(nothing))  # starts the worker, loads models
    first = time.perf_counter() - start
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
    worker = contexts["process"].executor._workers[0][0].pid  # type: ignore[attr-defined]
    result = {
        "what": "seconds per unit through each executor (shapes world, erased model, "
                f"{args.images} images per generation unit; medians of {args.reps} alternated reps)",
        "seconds": times,
        "median_seconds": medians,
        "ratio_process_to_local": {k: medians["process"][k] / medians["local"][k]
                                   for k in medians["local"]},
        "overhead_process_minus_local_seconds": {k: medians["process"][k] - medians["local"][k]
                                                 for k in medians["local"]},
        "worker_first_unit_seconds": first,
        "peak_rss_mib": {"driver (local models loaded)": peak_rss_mib(os.getpid()),
                         "process worker": peak_rss_mib(worker)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()},
        "command": "python benchmarks/executors.py " + " ".join(sys.argv[1:]),
    }
    for ctx in contexts.values():
        ctx.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "executors.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median_seconds": medians,
                      "ratio_process_to_local": result["ratio_process_to_local"],
                      "peak_rss_mib": result["peak_rss_mib"]}, indent=2))


if __name__ == "__main__":
    main()
