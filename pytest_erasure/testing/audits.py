"""One tiny-world audit through the real plugin, in a pytester subprocess, read back from the
report it writes: how the opt-in attacks' end-to-end tests (probes, image attacks) check the
case of one concept. Through a subprocess so the plugin loads as a user's pytest loads it."""

from __future__ import annotations

import json
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
