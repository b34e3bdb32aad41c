"""The measured half of the cost scripts (`probes_cost.py`, `image_attacks_cost.py`,
`adversarial_white_cost.py`): each case's own seconds as its audit recorded them in report.json,
printed the same way by all three, so a projection always sits beside what was measured."""

from __future__ import annotations

import json
from pathlib import Path


def print_measured(reports: list[Path], unit: str = "") -> None:
    """One line per erasure case of each report: its id, the run's folder, seconds and n."""
    for report in reports:
        record = json.loads(Path(report).read_text())
        for case in record["cases"]:
            if case["kind"] == "erasure":
                print(f"measured {case['case_id']} ({Path(report).parent.name}): "
                      f"{case['seconds']:.0f} s, n={case['rate']['n']}{unit}")
