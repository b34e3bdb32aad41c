"""The default audit with `local`, `process`, and `ray` on 1 worker and on 2: time and JSON.

    python benchmarks/ray_audit.py [--reps 1] [--keep DIR] [--runs ray-1,ray-2 --against DIR]
                                   [-- EXTRA PYTEST ARGS]

Each run is `python -m pytest audits/` (the shapes world, every default) in a subprocess with an
empty cache, one torch thread per worker: `local` and `process` under OMP_NUM_THREADS=1, `ray` with
`--ray-worker-cpus=1` (each actor sets one thread) and `--ray-workers` 1 or 2. Runs alternate
rep by rep. Reported: wall seconds (median over reps), the ratios ray-1 / local and ray-2 / ray-1
(the issue's target: <= 0.6), and whether every report agrees with local's case for case on hits,
n, image_sha256 and the standard and base-rate hits (`compare_reports.py`). The machine's CPU
count and load average are recorded beside the numbers: with other work on the machine, two
workers cannot be twice as fast, and the figure says so.

Writes benchmarks/results/ray_audit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = {
    "local": ["--erasure-executor=local"],
    "process": ["--erasure-executor=process"],
    "ray-1": ["--erasure-executor=ray", "--ray-workers=1", "--ray-worker-cpus=1"],
    "ray-2": ["--erasure-executor=ray", "--ray-workers=2", "--ray-worker-cpus=1"],
}


def audit(name: str, folder: Path, extra: list[str]) -> tuple[float, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "audits/", *RUNS[name], "-q", "-p",
               "no:cacheprovider", f"--erasure-cache={folder / 'cache'}",
               f"--erasure-report={folder / 'report'}", *extra]
    start = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if result.returncode not in (0, 1, 6):
        sys.exit(f"{name} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                 f"{result.stderr[-3000:]}")
    return seconds, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="copy every run's report folder here")
    parser.add_argument("--runs", default=",".join(RUNS),
                        help="which of local, process, ray-1, ray-2 to run (comma-separated)")
    parser.add_argument("--out", default="ray_audit.json", help="file in benchmarks/results")
    parser.add_argument("--against", type=Path,
                        help="without local in --runs: a kept local report folder to compare with")
    parser.add_argument("extra", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare_reports import cases, compare

    runs = [name for name in args.runs.split(",") if name]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown or ("local" not in runs and args.against is None):
        sys.exit(f"--runs: unknown {unknown}" if unknown else "--runs without local needs "
                 "--against, a kept local report folder")
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    exits: dict[str, list[int]] = {name: [] for name in runs}
    agree: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = list(runs) if rep % 2 == 0 else list(reversed(runs))
            for name in order:
                folder = Path(tmp) / f"{name}-{rep}"
                took, code = audit(name, folder, args.extra)
                seconds[name].append(took)
                exits[name].append(code)
                print(f"{name} rep {rep}: {took:.1f} s, exit {code}", flush=True)
        want = cases(Path(tmp) / "local-0" / "report" / "report.json" if "local" in runs
                     else args.against / "report.json")
        for name in runs:
            for rep in range(args.reps):
                got = cases(Path(tmp) / f"{name}-{rep}" / "report" / "report.json")
                agree[f"{name} rep {rep}"] = not compare(want, got)
        if args.keep:
            import shutil

            for name in runs:
                for rep in range(args.reps):
                    shutil.copytree(Path(tmp) / f"{name}-{rep}" / "report",
                                    args.keep / f"{name}-{rep}", dirs_exist_ok=True)
    median = {name: statistics.median(v) for name, v in seconds.items()}
    result: dict[str, Any] = {
        "what": "wall seconds of the default audit (pytest audits/) per executor, one torch "
                "thread per worker, empty cache; median over reps",
        "seconds": seconds,
        "median_seconds": median,
        **{f"ratio_{a.replace('-', '')}_to_{b.replace('-', '')}": median[a] / median[b]
           for a, b in (("process", "local"), ("ray-1", "local"), ("ray-2", "ray-1"))
           if a in median and b in median},
        "exit_codes": exits,
        "same_json_as_local": agree,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_after": os.getloadavg()},
        "command": "python benchmarks/ray_audit.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("median", "ratio"))
                      or k == "same_json_as_local"}, indent=2))


if __name__ == "__main__":
    main()
