"""What `python -m pytest_erasure.plan` says cannot decide, a real audit reports as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_erasure.plan import plan_file

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
FAST = ["--steps", "2", "--batch-size", "4", "-p", "no:randomly", "-p", "no:cacheprovider"]


def test_a_case_the_plan_cannot_decide_is_inconclusive_in_the_audit_for_that_reason(
        pytester: pytest.Pytester, tiny_world: dict[str, Path]) -> None:
    plans = plan_file(tiny_world["concepts"], samples=4, scenarios=["text"], power=False)
    [text] = [p for p in plans if p.case == "circle-text"]
    assert text.status == "CANNOT DECIDE" and text.cannot

    pytester.makepyfile(test_audit=AUDIT)
    out = pytester.path / "report"
    result = pytester.runpytest_inprocess(
        f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['erased']}",
        f"--concepts={tiny_world['concepts']}", *FAST, "--samples=4", "--scenarios=text",
        f"--erasure-report={out}")
    assert result.ret != 0  # an inconclusive case fails the release gate
    case = next(c for c in json.loads((out / "report.json").read_text())["cases"]
                if c["case_id"] == "circle-text")
    assert case["verdict"] == "inconclusive" and text.cannot in case["reason"]
