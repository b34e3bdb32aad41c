"""Two audits' JSON reports, compared case by case on what the images and detectors decided.

    python benchmarks/compare_reports.py BEFORE/report.json AFTER/report.json [MORE/report.json ...]

For every case: the audited rate's hits and n, the digest of the judged images
(`facts.image_sha256`), the standard model's hits and n, the base rate's hits and n (and the
undefended rate's, under a defense). Verdicts and reasons are left out on purpose: the rules
that turn these numbers into a verdict may change between the two commits; the numbers must not.
Exit status 0 when every report agrees with the first, 1 otherwise (each difference printed).
With `--common`, only the cases every report holds are compared (runs stopped early with Ctrl-C
write the cases they finished); the others are listed, not counted as differences.
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


def compare(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
            common: bool = False) -> list[str]:
    """Every difference, one line each ([] when the two agree on every case and field)."""
    problems = [] if common else (
        [f"case {c} only in the first report" for c in sorted(set(before) - set(after))]
        + [f"case {c} only in the second report" for c in sorted(set(after) - set(before))])
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
    parser.add_argument("--common", action="store_true",
                        help="compare only the cases every report holds (interrupted runs)")
    args = parser.parse_args(argv)
    if len(args.reports) < 2:
        parser.error("give at least two reports")
    every = [cases(path) for path in args.reports]
    reference = every[0]
    left_out: list[str] = []
    if args.common:
        shared = set.intersection(*(set(c) for c in every))
        left_out = sorted(set.union(*(set(c) for c in every)) - shared)
        every = [{k: v for k, v in c.items() if k in shared} for c in every]
        reference = every[0]
    summary: dict[str, Any] = {"reference": str(args.reports[0]), "cases": len(reference),
                               "fields": sorted(next(iter(reference.values()), {})),
                               "compared": [], "not_in_every_report": left_out}
    status = 0
    for path, found in zip(args.reports[1:], every[1:], strict=True):
        problems = compare(reference, found, args.common)
        summary["compared"].append({"report": str(path), "identical": not problems,
                                    "differences": problems})
        print(f"{path}: {'identical' if not problems else f'{len(problems)} differences'} "
              f"({len(reference)} cases, {len(summary['fields'])} fields each)")
        for line in problems:
            print(f"  {line}")
        status = status or (1 if problems else 0)
    if left_out:
        print(f"not in every report (not compared): {', '.join(left_out)}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
