"""Seconds per probe case on the shapes world (measured: read from the audits' report.json) and
the projected cost of one case at the sd14 budgets (counted from the scenarios' code, rates
assumed as in `benchmarks/sd14_time.py`: no GPU was lent to this project).

Work per case at --samples S (both models: the erased one and the standard one under the same
probe), the base rate's S neutral images and the baseline's S standard images beside it:
- noise-probe: S searches x 24 tries (6 etas x 4 step-noise scales) on each model, every try
  judged, and S more searches of the same 24 tries on the neutral prompts (the measured null,
  erased model); the kept tries are re-judged from the cache (no new image);
- completion-probe: the standard model's prefix of k DDIM steps for each k in 1,2,3 (k/50 of
  an image each, shared by both models), then S x 3 completions on each model, and the same
  prefixes and S x 3 completions on the neutral prompts (the measured null);
- inpainting-probe: S inpainted images on each model and S reference encodings (negligible).

    python benchmarks/probes_cost.py --samples 150 [REPORT.json ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measured import print_measured  # noqa: E402


def projected(samples: int) -> list[tuple[str, int, float]]:
    """(scenario, images generated, projected seconds) per case at the sd14 budgets."""
    from sd14_time import DETECT_S, GENERATE_S

    from pytest_erasure.config import budget_profiles

    p = {k: v.value for k, v in budget_profiles()["sd14"].items()}
    tries = (len(str(p["noise-etas"]).split(",")) * len(str(p["noise-scales"]).split(",")))
    handovers = [int(k) for k in str(p["completion-steps"]).split(",")]
    context = 2 * samples  # base rate + baseline (shared with every case of the concept)
    one = GENERATE_S + DETECT_S
    noise = 3 * samples * tries + context  # erased, standard, and the null's searches
    completion = 3 * samples * len(handovers) + context
    prefix = 2 * samples * sum(handovers) / 50 * GENERATE_S  # concept and neutral prompts
    inpainting = 2 * samples + context
    return [("noise-probe", noise, noise * one),
            ("completion-probe", completion, completion * one + prefix),
            ("inpainting-probe", inpainting, inpainting * one)]


def erased_share(scenario: str) -> float:
    """The share of a probe case's images (less the base rate and baseline) drawn by the erased
    model, which a further erased model draws again: its search and, for a best-of-N probe,
    the measured null's searches (2 of 3); the standard model's third is cached."""
    return 2 / 3 if scenario in ("noise-probe", "completion-probe") else 1 / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("reports", nargs="*", type=Path,
                        help="report.json files of shapes-world probe runs (measured seconds)")
    args = parser.parse_args(argv)
    print_measured(args.reports)
    print(f"projected at the sd14 budgets, --samples {args.samples} (rates assumed: "
          "benchmarks/sd14_time.py):")
    for scenario, images, seconds in projected(args.samples):
        print(f"  {scenario}: {images} images, {seconds / 3600:.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
