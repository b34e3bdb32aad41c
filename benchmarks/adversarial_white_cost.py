"""Seconds per white-box adversarial-prompt case on the shapes world (measured: read from the
audits' report.json) and the projected cost of one case at the sd14 budgets (counted from the
scenarios' code, rates assumed as in `benchmarks/sd14_time.py`: no GPU was lent to this task).

Work per case at --samples S (`scenarios/adversarial_white.py`), on each of the two models (the
erased one and the standard one under the same attack):
- S searches, each `steps` gradient steps per attack (UnlearnDiffAtk: timesteps x iterations,
  2,000; P4D: 3000 per variant, two variants), one UNet forward and backward through the text
  encoder per step, taken as one textual-inversion micro-step of batch 1
  (`sd14_time.TI_MICRO_STEP_S`); P4D adds the standard UNet's forward for its target, taken as
  a third of a step;
- every search's candidates generated and judged (UnlearnDiffAtk: 1 + 50; P4D: 2 x 60);
- under a defense with the adaptive threat the erased model's attack runs twice (adaptive and
  transfer) and its candidates are generated through the defense (`--defended` doubles that
  share; IRECE's own overhead is not counted);
- the random-prefix control on the erased model (`--advw-control`, on by default): as many
  generations per search as the erased model's search judges candidates;
- the S concept images the standard model draws (shared by both models), the base rate's and
  the baseline's S images beside it.

    python benchmarks/adversarial_white_cost.py --samples 150 [--defended] [REPORT.json ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measured import print_measured  # noqa: E402

P4D_TARGET_SHARE = 1 / 3
"""P4D's extra forward pass of the standard UNet (no backward), as a share of one step."""


def projected(samples: int, defended: bool = False) -> list[tuple[str, int, float, float]]:
    """(scenario, images generated, gradient steps, projected seconds) per case at sd14."""
    from sd14_time import DETECT_S, GENERATE_S, TI_MICRO_STEP_S

    from pytest_erasure.config import budget_profiles
    from pytest_erasure.scenarios.adversarial_white import SCENARIOS

    table = {k: v.value for k, v in budget_profiles()["sd14"].items()}
    out = []
    for scenario in SCENARIOS:
        options = {o.name: table.get(o.name, o.default) for o in scenario.options}
        attacks = scenario.attacks(options=options)
        runs = 2 if defended else 1  # the erased model's: adaptive and transfer
        control = sum(scenario.control_draws(options, s, runs) for _n, s in attacks)
        images = (scenario.tries(attacks, runs) + scenario.tries(attacks) + control) * samples \
            + 3 * samples
        steps = (runs + 1) * samples * sum(s.steps for _n, s in attacks)
        step_s = TI_MICRO_STEP_S * (1 + (P4D_TARGET_SHARE if scenario.method != "unlearndiffatk"
                                         else 0))
        out.append((scenario.id, images, steps, images * (GENERATE_S + DETECT_S)
                    + steps * step_s))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--defended", action="store_true",
                        help="under a defense with the adaptive threat (adaptive + transfer)")
    parser.add_argument("reports", nargs="*", type=Path,
                        help="report.json files of shapes-world runs (measured seconds)")
    args = parser.parse_args(argv)
    print_measured(args.reports, unit=' searches')
    print(f"projected at the sd14 budgets, --samples {args.samples}"
          f"{' under a defense (adaptive + transfer)' if args.defended else ''} (rates "
          "assumed: benchmarks/sd14_time.py):")
    for scenario, images, steps, seconds in projected(args.samples, args.defended):
        print(f"  {scenario}: {images} images, {steps} gradient steps, {seconds / 3600:.1f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
