"""docs/options.md lists every flag the plugin declares with its ini twin, and stays in step with
the code: a stale file (an option added, renamed or re-defaulted without regenerating it) fails."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_erasure.declarations import _Recorder, declare
from pytest_erasure.options_doc import render, rows

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "options.md"


def test_the_committed_options_doc_is_the_rendered_one() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), \
        "docs/options.md is stale: python -m pytest_erasure.options_doc docs/options.md"


def test_every_declared_flag_and_ini_key_is_listed_as_a_pair() -> None:
    """The pairs pytest is told (declarations.declare: each addoption followed by its twin's
    addini) against the doc's table rows, read back from the Markdown."""
    recorder = _Recorder()
    declare(recorder)
    declared: list[tuple[str, str]] = []
    for kind, args, kwargs in recorder.calls:
        if kind == "addoption":
            declared.append((args[0], kwargs["dest"]))
        else:
            assert args[0] == declared[-1][1], f"{args[0]} is no flag's ini twin"
    listed = re.findall(r"^\| `(--[a-z0-9-]+)` \| `(erasure_[a-z0-9_]+)` \|", DOC.read_text(),
                        flags=re.MULTILINE)
    assert listed == declared
    assert ("--crr-threshold", "erasure_crr_threshold") in listed
    assert ("--ti-steps", "erasure_opt_ti_steps") in listed and ("--irece", "erasure_irece") in listed


def test_profile_columns_show_what_each_profile_sets() -> None:
    by_flag = {flag: profiles for flag, _ini, _default, profiles, _help in rows()}
    assert by_flag["--steps"] == {"shapes": "`25`", "sd14": "`50`"}
    assert by_flag["--ti-steps"]["sd14"] == "`3000`"
    assert by_flag["--samples"] == {}  # no profile sets it


def test_readme_points_to_the_options_doc() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "[docs/options.md](docs/options.md)" in readme
