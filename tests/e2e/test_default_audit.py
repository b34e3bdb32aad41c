"""`pytest audits/` as README tells a new user to run it, with its defaults: the verdicts, the
banner and the exit code README says it ends with (red by design: the shipped UCE model still
draws circles under the embedding and latent attacks and a fuzzed prompt)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _stated() -> tuple[int, list[str]]:
    """README's stated exit code and the lines it says the run ends with (its fenced block
    right after 'What `pytest audits/` prints')."""
    section = README[README.index("What `pytest audits/` prints"):]
    code = int(re.search(r"exit code (\d)", section).group(1))  # type: ignore[union-attr]
    block = section[section.index("```\n") + 4:]
    return code, [line for line in block[:block.index("```")].splitlines() if line.strip()]


@pytest.mark.slow
def test_pytest_audits_with_its_defaults_ends_as_readme_says(tmp_path: Path) -> None:
    code, lines = _stated()
    assert code == 1 and len(lines) >= 2, lines
    # Only where pytest keeps its cache (and so the erasure cache) differs from a user's run:
    # a cold run, and nothing written into the repository.
    junit = tmp_path / "junit.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "audits/", "-o", f"cache_dir={tmp_path / 'cache'}",
         f"--junitxml={junit}"],
        cwd=REPO, capture_output=True, text=True, timeout=3600,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    out = done.stdout
    assert done.returncode == code, out[-4000:] + done.stderr[-2000:]
    for line in lines:
        assert line in out, f"README says the run prints {line!r}; it printed:\n{out[-4000:]}"
    # Each case's outcome, from pytest's own JUnit file, against README's FAILED lines.
    failed_in_readme = {m.group(1) for line in lines
                        if (m := re.match(r"FAILED audits/test_erasure.py::test_erasure\[(.+?)\]",
                                          line))}
    cases = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        case_id = re.search(r"\[(.+)\]", case.get("name", "")).group(1)  # type: ignore[union-attr]
        cases[case_id] = ("error" if case.find("error") is not None else
                          "failed" if case.find("failure") is not None else
                          "skipped" if case.find("skipped") is not None else "passed")
    assert len(cases) == 15 and "error" not in cases.values(), cases
    assert failed_in_readme and all(cases[c] == "failed" for c in failed_in_readme), cases
    # "the shipped UCE model keeps the typed concept away (baseline and text pass)"
    assert cases["circle-baseline"] == cases["circle-text"] == "passed", cases
