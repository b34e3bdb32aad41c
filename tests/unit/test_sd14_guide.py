"""The SD v1.4 guide's tables against the code they describe: the budget table against the sd14
profile (`budgets.py`), the time table against the projection that counts it
(`benchmarks/sd14_time.py`), so neither can go stale silently."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from pytest_erasure.budgets import SETTINGS
from pytest_erasure.config import budget_profiles

PROFILES = budget_profiles()  # what the scenarios declare (`Scenario.budgets`)

REPO = Path(__file__).resolve().parents[2]
GUIDE = (REPO / "audits" / "sd14" / "README.md").read_text(encoding="utf-8")


def _projection():
    spec = importlib.util.spec_from_file_location("sd14_time", REPO / "benchmarks" / "sd14_time.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same(written: str, value: object) -> bool:
    written = written.strip().strip("`")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(written) == float(value)
    return written == str(value)


def test_the_budget_table_is_the_sd14_profile() -> None:
    profile = {name: b.value for name, b in PROFILES["sd14"].items()}
    profile.update({name: b.value for name, b in SETTINGS["sd14"].items()})
    checked = set()
    for options, values in re.findall(r"^\| ((?:`--[a-z0-9-]+`(?:, | x )?)+) \| ([^|]+) \|", GUIDE,
                                      flags=re.MULTILINE):
        names = re.findall(r"`--([a-z0-9-]+)`", options)
        cells = re.split(r", | x ", re.sub(r"\s*\(.*\)", "", values))
        assert len(cells) == len(names), (options, values)
        for name, cell in zip(names, cells, strict=True):
            assert _same(cell, profile[name]), f"--{name}: guide says {cell}, sd14 sets {profile[name]}"
            checked.add(name)
    assert checked == set(profile), set(profile) - checked  # every value the profile sets


def test_the_time_table_is_the_projection() -> None:
    projection = _projection()
    assert projection.markdown(150) in GUIDE
    total_64 = projection.markdown(64).strip().splitlines()[-1].split("|")
    assert f"({'`--samples 64`'}): {total_64[3].strip()} and {total_64[4].strip()}." in GUIDE


def test_the_projection_counts_every_scenario_and_the_restarts() -> None:
    from pytest_erasure.scenarios.base import registry

    rows = _projection().rows(150)
    named = " ".join(row[0] for row in rows)
    for scenario in registry():
        assert scenario in named, scenario
    works = {row[0].split(" ")[0]: row[1] for row in rows}
    restarts = PROFILES["sd14"]["attack-restarts"].value
    assert works["embedding-white"].startswith(f"{restarts} runs")
    assert works["adversarial-black"].startswith(f"{restarts} searches")
    # the first model pays the standard side too; a further one never more than the first
    assert all(first >= further for _name, _work, first, further in rows)
