"""One audit through the real plugin, in a subprocess, read back from the report it writes: how
the opt-in attacks' end-to-end tests check the case of one concept, on the tiny world
(`concept_case`) or on the shipped shapes world's `audits/` (`shapes_case`, the slow tests whose
fixture is a shapes model the measurements found). Through a subprocess so the plugin loads as a
user's pytest loads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
"""The whole audit module a suite needs: every declared case, each checked by its gate."""


def concept_case(pytester: pytest.Pytester, world: dict[str, Path], standard: str, erased: str,
                 *flags: str, concept: str = "circle") -> dict[str, Any]:
    """`concept`'s one erasure case from report.json, after auditing `world[erased]` against
    `world[standard]` with `flags`; the run must end with a verdict (exit 0 or 1), never a
    traceback."""
    pytester.makepyfile(test_audit=AUDIT)
    out = pytester.path / f"report-{standard}-{erased}-{abs(hash(flags))}"
    result = pytester.runpytest_subprocess(
        f"--standard-model={world[standard]}", f"--erased-model={world[erased]}",
        f"--concepts={world['concepts']}", f"--erasure-report={out}", *flags)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret in (0, 1) and "Traceback" not in output, output
    cases = [c for c in json.loads((out / "report.json").read_text())["cases"]
             if c["concept"] == concept and c["kind"] == "erasure"]
    assert len(cases) == 1, [c["case_id"] for c in cases]
    return cases[0]


def shapes_case(out: Path, erased: str, case_id: str, *flags: str) -> dict[str, Any]:
    """`case_id` from report.json after `pytest audits/` on the shipped shapes world, erased
    model `fixtures/shapes/erased/<erased>`, with `flags` (the scenario and its budgets), its
    cache and report under `out`; the run must end with a verdict, never a traceback."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "audits/", "-q", "-p", "no:cacheprovider", "-k", case_id,
         f"--erased-model={repo / 'fixtures' / 'shapes' / 'erased' / erased}",
         f"--erasure-cache={out / 'cache'}", f"--erasure-report={out / 'report'}", *flags],
        cwd=repo, env=env, capture_output=True, text=True, timeout=3000)
    output = done.stdout + done.stderr
    assert done.returncode in (0, 1) and "Traceback" not in output, output
    return next(c for c in json.loads((out / "report" / "report.json").read_text())["cases"]
                if c["case_id"] == case_id)
