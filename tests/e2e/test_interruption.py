"""Interruption: Ctrl-C after a case, kill -9 in the middle of one, then rerun.

Real audits in subprocesses on the tiny world, sharing one cache folder. What must hold:
- an interrupted run still writes its report, for the cases it finished, and says it is partial;
- no cache entry is ever half-written: every entry loads and its checksum verifies, and a killed
  writer leaves at most a hidden temporary file, never something that looks like an entry;
- a rerun takes finished cases from the cache (it writes no entry for them and rewrites none);
- the final rerun's report covers every case.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
CASES = ["circle-baseline", "circle-text", "circle-retention-square"]
ENTRY = re.compile(r"[0-9a-f]{64}\.(safetensors|json)")
# Enough work per case (48 images x 8 steps, batches of 4) that a case takes a few seconds.
WORK = ("--samples=48", "--steps=8", "--batch-size=4", "--scenarios=baseline,text,retention")


def _command(world: dict[str, Path], cache: Path, report: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-v", "-p", "no:randomly", "-p", "no:cacheprovider",
            f"--standard-model={world['standard']}", f"--erased-model={world['erased']}",
            f"--concepts={world['concepts']}", f"--erasure-cache={cache}",
            f"--erasure-report={report}", *WORK, *extra]


def _env() -> dict[str, str]:
    # One thread: on a shared CPU, torch's thread pool fights the other jobs and is far slower.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "CI": "1"}


def _start(command: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    # A shell's background job ignores SIGINT, and Python then installs no KeyboardInterrupt
    # handler: restore the default so Ctrl-C reaches pytest as it would at a terminal.
    return subprocess.Popen(command, cwd=cwd, env=_env(), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(condition, proc: subprocess.Popen[bytes], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the audit ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _finished(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return re.findall(r"test_erasure\[([\w-]+)\] (?:PASSED|FAILED)", text)


def _entries(cache: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in cache.rglob("*") if ENTRY.fullmatch(p.name)}


def _check_cache(cache: Path) -> None:
    """Every entry is whole (loads, checksum verifies); anything else is hidden and temporary."""
    from safetensors import safe_open

    from pytest_erasure.cache import Cache, digest, tensor_digest

    store = Cache(cache)
    for path in sorted(p for p in cache.rglob("*") if p.is_file()):
        if path.name.startswith("."):
            assert path.name.endswith((".tmp", ".lock")), path  # a killed writer's leftover
            continue
        assert ENTRY.fullmatch(path.name) or path.suffix == ".lock", path
        if path.suffix == ".lock":
            continue
        if path.suffix == ".json":  # verdicts, model and detector identities
            entry = json.loads(path.read_text())
            assert entry["sha256"] == digest(entry["value"]), f"{path} is damaged"
            continue
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        assert meta["sha256"] == tensor_digest(tensors), f"{path} is damaged"
        assert store._read(path) is not None, f"{path} does not load"


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_interrupted_and_killed_runs_resume_from_the_cache(pytester: pytest.Pytester,
                                                           tiny_world: dict[str, Path]) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    root = pytester.path
    cache = root / "cache"

    # 1. Ctrl-C once the first case has finished: the second is then mid-generation.
    log, report = root / "sigint.log", root / "report-sigint"
    proc = _start(_command(tiny_world, cache, report), root, log)
    _wait_for(lambda: _finished(log), proc, "the first case finished")
    first = _finished(log)[0]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == pytest.ExitCode.INTERRUPTED, log.read_text()
    output = log.read_text()
    assert "KeyboardInterrupt" in output
    done = _finished(log)
    assert first == CASES[0] and len(done) < len(CASES), output
    data = _report(report)
    assert [c["case_id"] for c in data["cases"]] == done, "finished results are never lost"
    assert data["summary"]["verdict"] == "INCOMPLETE", "a partial audit is not a release decision"
    assert data["incomplete"]["interrupted"] is True, data.get("incomplete")
    _check_cache(cache)
    after_sigint = _entries(cache)

    # 2. kill -9 in the middle of a case that the first run did not finish.
    log = root / "sigkill.log"
    proc = _start(_command(tiny_world, cache, root / "report-sigkill"), root, log)
    _wait_for(lambda: len(_entries(cache)) > len(after_sigint) + 8, proc,
              "new cache entries from an unfinished case")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed = _finished(log)
    assert len(killed) < len(CASES), "the kill came mid-audit"
    _check_cache(cache)
    before = _entries(cache)
    assert all(before[p] == t for p, t in after_sigint.items()), "entries are never rewritten"

    # 3. The case finished before the interruption comes wholly from the cache.
    log = root / "rerun-first.log"
    proc = _start(_command(tiny_world, cache, root / "report-first", "-k", "baseline"), root,
                  log)
    assert proc.wait(timeout=240) == pytest.ExitCode.OK, log.read_text()
    assert _finished(log) == [CASES[0]]
    assert _entries(cache) == before, "a finished case wrote or rewrote cache entries"

    # 4. The full rerun computes only what is missing, and its report covers every case.
    log, report = root / "rerun.log", root / "report-rerun"
    proc = _start(_command(tiny_world, cache, report), root, log)
    assert proc.wait(timeout=240) == pytest.ExitCode.TESTS_FAILED, log.read_text()
    assert _finished(log) == CASES
    after = _entries(cache)
    assert all(after[p] == t for p, t in before.items()), "a rerun rewrote a finished entry"
    assert len(after) > len(before), "the unfinished cases were completed"
    _check_cache(cache)
    data = _report(report)
    assert sorted(c["case_id"] for c in data["cases"]) == sorted(CASES)
    assert "incomplete" not in data or not data["incomplete"]
