"""The plugin's cost to a pytest run that audits nothing, in CPU seconds as well as wall seconds.

    python benchmarks/load_cpu.py [--reps 7]

`run.py --only load` times collect-only of a plain test folder with and without the plugin by
the wall clock, which on a shared machine mostly measures the neighbours. This runs the same
pair, alternated, and also reads each run's own CPU time (user + system, from the kernel's
accounting of the finished child), which the neighbours do not inflate. The declarations record
(`pytest_erasure/declarations.py`) is made before timing, as after a user's first run; the first
run's own cost (recording) is measured apart, with an empty cache folder.
Writes benchmarks/results/load_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-load-"))
    (folder / "test_plain.py").write_text("def test_one():\n    assert 1\n")
    cache = Path(tempfile.mkdtemp(prefix="bench-load-cache-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    base = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
            str(folder)]
    first = run(base, env)  # records the declarations
    without_first = run([*base, "-p", "no:erasure"], env)
    pairs: list[dict[str, Any]] = []
    for rep in range(args.reps):
        order = [("with", base), ("without", [*base, "-p", "no:erasure"])]
        if rep % 2:
            order.reverse()
        got = {name: run(cmd, env) for name, cmd in order}
        pairs.append({"with": got["with"], "without": got["without"]})
    wall = [p["with"][0] / p["without"][0] for p in pairs]
    cpu = [p["with"][1] / p["without"][1] for p in pairs]
    result = {
        "what": "collect-only of a plain test folder, with the plugin / without (-p no:erasure)",
        "pairs_seconds_wall_cpu": pairs,
        "median_ratio_wall": statistics.median(wall),
        "median_ratio_cpu": statistics.median(cpu),
        "ratios_cpu": cpu,
        "first_run_recording_declarations": {"with_wall_cpu": first,
                                             "without_wall_cpu": without_first,
                                             "ratio_cpu": first[1] / without_first[1]},
        "environment": {"PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE")},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()},
        "target": "<= 1.05x",
        "command": "python benchmarks/load_cpu.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_ratio_wall", "median_ratio_cpu",
                                              "first_run_recording_declarations")}, indent=2))


if __name__ == "__main__":
    main()
