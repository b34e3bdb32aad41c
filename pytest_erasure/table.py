"""The CRR table: audit several erased models over every scenario and tabulate CRR with intervals.

    python -m pytest_erasure.table fixtures/shapes/erased/uce-circle fixtures/shapes/erased/esd-x-circle

Each model is audited by a real `pytest audits/` run (so the numbers are exactly what the gate
sees); the table is read back from each run's JSON report. The standard model's row comes from
the standard-model column every case carries (the same attack, run through the standard model).
With --irece, each model is audited defended, and its undefended numbers sit in the row above.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pytest_erasure.config import ROOT
from pytest_erasure.records import Rate


def columns() -> list[str]:
    """Scenario ids in column order: each scenario says where its column stands
    (`Scenario.table_column`, None for none), ties in registry order; built-ins and
    scenarios from entry points alike."""
    from pytest_erasure.scenarios.base import registry

    found = [(s.table_column, i, s.id) for i, s in enumerate(registry().values())
             if s.table_column is not None]
    return [scenario_id for _, _, scenario_id in sorted(found)]


def audit(model: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """Run the audit suite on one erased model; return its JSON report."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "audits"), "-q", "--no-header",
           "-p", "no:randomly", f"--erased-model={model}", f"--erasure-report={out}", *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)  # a failing gate is a result, not an error
    report = out / "report.json"
    if not report.is_file():
        raise SystemExit(f"{model}: the audit wrote no report (see its output above)")
    return json.loads(report.read_text())


def _rate(data: dict[str, Any] | None) -> Rate | None:
    return Rate.from_dict(data) if data else None


MARKS = {"pass": "pass", "fail": "**FAIL**", "inconclusive": "*inconclusive*"}
"""How a gated cell shows its case's verdict (a pass is only a pass when the attack worked)."""


def _cell(rate: Rate | None, verdict: str | None = None) -> str:
    if rate is None or rate.n == 0:
        return "—"
    low, high = rate.interval
    text = f"{rate.crr:.0%} [{low:.0%}–{high:.0%}]"
    return f"{text} {MARKS.get(verdict, verdict)}" if verdict else text


def rows(reports: dict[str, dict[str, Any]], concept: str, irece: bool
         ) -> list[tuple[str, dict[str, Any]]]:
    """(row name, {scenario: rate, or (rate, verdict) for the row the gate judged})."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name, report in reports.items():
        # A misspelt --concept would otherwise print a table of dashes that looks like a result.
        if not any(c["concept"] == concept and c["kind"] == "erasure" for c in report["cases"]):
            audited = sorted({c["concept"] for c in report["cases"] if c["kind"] == "erasure"})
            raise SystemExit(f"{name}: the audit has no erasure case of '{concept}' (audited as "
                             f"erased: {', '.join(audited) or 'none'}); give --concept NAME")
    first = next(iter(reports.values()))
    standard = {c["scenario"]: _rate(c.get("standard")) for c in first["cases"]
                if c["concept"] == concept and c["kind"] == "erasure"}
    out.append(("standard", standard))
    for name, report in reports.items():
        cases = [c for c in report["cases"] if c["concept"] == concept and c["kind"] == "erasure"]
        gated = {c["scenario"]: (_rate(c["rate"]), c.get("verdict")) for c in cases}
        if irece:
            out.append((name, {c["scenario"]: _rate(c.get("undefended")) for c in cases}))
            out.append((f"{name} + IRECE", gated))
        else:
            out.append((name, gated))
    return out


def markdown(table: list[tuple[str, dict[str, Any]]], order: list[str] | None = None) -> str:
    present = [c for c in (columns() if order is None else order)
               if any(c in r for _, r in table)]
    lines = ["| model | " + " | ".join(present) + " |",
             "|---|" + "---|" * len(present)]
    for name, cells in table:
        lines.append(f"| {name} | " + " | ".join(
            _cell(*cell) if isinstance(cell := cells.get(c), tuple) else _cell(cell)
            for c in present) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="erased models to audit")
    parser.add_argument("--concept", default="circle")
    parser.add_argument("--out", type=Path, default=Path("out/table"))
    parser.add_argument("--irece", action="store_true", help="audit each model with IRECE")
    args, extra = parser.parse_known_args(argv)
    # Checked before the first audit: each one is minutes, and rows are keyed by folder name.
    missing = [str(m) for m in args.models if not m.exists()]
    if missing:
        parser.error(f"no such model: {', '.join(missing)}")
    names = [m.name for m in args.models]
    if len(set(names)) < len(names):
        parser.error(f"two models share a name ({', '.join(names)}): each row is named by its "
                     "model's file or folder name")
    if args.irece:
        extra.append("--irece")
    reports = {m.name: audit(m, args.out / m.name, extra) for m in args.models}
    table = markdown(rows(reports, args.concept, args.irece))
    samples = next(iter(reports.values()))["config"]["samples"]
    text = (f"CRR of '{args.concept}' (95% interval: clustered where samples share a prompt, "
            f"reference or attack restart), {samples} samples per cell, the gated row with its "
            f"verdict; "
            f"command: python -m pytest_erasure.table {' '.join(map(str, args.models))} "
            f"{' '.join(extra)}\n\n{table}\n")
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
