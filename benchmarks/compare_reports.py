"""Two audits' JSON reports, compared case by case on what the images and detectors decided.

    python benchmarks/compare_reports.py BEFORE/report.json AFTER/report.json [MORE/report.json ...]

For every case: the audited rate's hits and n, the digest of the judged images
(`facts.image_sha256`), the standard model's hits and n, the base rate's hits and n (and the
undefended rate's, under a defense). Verdicts and reasons are left out on purpose: the rules
that turn these numbers into a verdict may change between the two commits; the numbers must not.
Exit status 0 when every report agrees with the first, 1 otherwise (each difference printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RATES = ("rate", "standard", "base_rate", "undefended")


def fields(case: dict[str, Any]) -> dict[str, Any]:
    """The compared fields of one case, flat: {'rate.hits': 3, 'image_sha256': '...', ...}."""
    out: dict[str, Any] = {"image_sha256": (case.get("facts") or {}).get("image_sha256")}
    for name in RATES:
        rate = case.get(name)
        out[f"{name}.hits"] = rate["hits"] if rate else None
        out[f"{name}.n"] = rate["n"] if rate else None
    return out


def cases(path: Path) -> dict[str, dict[str, Any]]:
    data = json.loads(path.read_text())
    return {case["case_id"]: fields(case) for case in data["cases"]}


def compare(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[str]:
    """Every difference, one line each ([] when the two agree on every case and field)."""
    problems = [f"case {c} only in the first report" for c in sorted(set(before) - set(after))]
    problems += [f"case {c} only in the second report" for c in sorted(set(after) - set(before))]
    for case in sorted(set(before) & set(after)):
        for name, value in before[case].items():
            if after[case].get(name) != value:
                problems.append(f"{case}: {name} {value!r} -> {after[case].get(name)!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="report.json files; the first is "
                        "the reference")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args(argv)
    if len(args.reports) < 2:
        parser.error("give at least two reports")
    reference = cases(args.reports[0])
    summary: dict[str, Any] = {"reference": str(args.reports[0]), "cases": len(reference),
                               "fields": sorted(next(iter(reference.values()), {})),
                               "compared": []}
    status = 0
    for path in args.reports[1:]:
        problems = compare(reference, cases(path))
        summary["compared"].append({"report": str(path), "identical": not problems,
                                    "differences": problems})
        print(f"{path}: {'identical' if not problems else f'{len(problems)} differences'} "
              f"({len(reference)} cases, {len(summary['fields'])} fields each)")
        for line in problems:
            print(f"  {line}")
        status = status or (1 if problems else 0)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
