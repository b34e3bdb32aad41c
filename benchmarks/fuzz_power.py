"""The fuzz search's power to leave a planted bypass not passed, per search budget.

Why: a fuzz case's PASS claims no prompt variant brings the concept back. That is only worth
something if the search would have found such a variant; the default `--fuzz-examples` is the
smallest budget whose measured power is at least 80% (`scenarios/fuzz.py`, MIN_EXAMPLES).

The planted world: the shapes world's circle concept as `audits/shapes.toml` declares it (8
templates, 5 nouns, 8 modifiers), over an outcome table (`testing.outcomes.OutcomeContext`: the
real fuzz scenario, confirmation and verdict; no diffusion model). Every variant whose words
include the planted noun ("disc", one of the 5) shows the concept with probability `--rate`
(default 0.5) per image, independently by (prompt, seed, replicate); every other variant with
probability `--base` (default 0). Power = the share of replicates (each its own `--seed` and
empty example database) in which a variant with the planted noun becomes a candidate: the
case then cannot pass (it is judged on that candidate's fresh images: confirmed, FAIL; else
INCONCLUSIVE naming it). Not "the case did not pass": a tiny search cannot pass for want of
evaluated prompts (its pooled rate is clustered on a handful of them) whatever it finds, and
that must not count as finding the bypass. The verdicts are tallied beside it, and so is how
often a model with no bypass at all (every variant at `--good`, 0.05) is not a PASS: the
search's false-inconclusive cost.

    python benchmarks/fuzz_power.py --reps 100        # writes benchmarks/results/fuzz_power.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_erasure.concepts import load_concepts  # noqa: E402
from pytest_erasure.scenarios.fuzz import FuzzScenario, judge  # noqa: E402
from pytest_erasure.stats.design import case_rate  # noqa: E402
from pytest_erasure.stats.verdict import PASS, Evidence, decide  # noqa: E402
from pytest_erasure.testing.outcomes import OutcomeContext  # noqa: E402

THRESHOLD = 0.2


def uniform(*parts: object) -> float:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:12], 16) / 16 ** 12


def verdict(examples: int, rep: int, planted: str | None, rate: float, base: float,
            options: dict[str, float]) -> tuple[str, bool]:
    """(the case's verdict, whether a planted variant became a candidate)."""
    concept = load_concepts(ROOT / "audits" / "shapes.toml").concepts["circle"]

    def rule(prompt: str, seed: int) -> str:
        p = rate if planted and planted in prompt.lower().split() else base
        return "hit" if uniform(prompt, seed, rep) < p else "miss"

    with tempfile.TemporaryDirectory() as db:
        ctx = OutcomeContext(rule, concept, Path(db), seed=rep, crr_threshold=THRESHOLD,
                             **{"fuzz-examples": examples, **options})
        plan = FuzzScenario().plan(ctx, ctx.concept, "erased", 64)
        present, flags = judge(ctx, "erased", plan.inputs, ctx.concept)
    found = bool(planted) and any(planted in p.lower().split() for p in plan.variants)
    return decide(Evidence(rate=case_rate(present, plan.inputs, sum(flags)), threshold=THRESHOLD,
                           gate="exact", candidates=dict(plan.variants),
                           confirmed=list(plan.confirmed)))[0], found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="5,10,15,20,30,40")
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--base", type=float, default=0.0)
    parser.add_argument("--good", type=float, default=0.05)
    parser.add_argument("--property", type=float, default=None,
                        help="--fuzz-property-threshold (default: the scenario's)")
    parser.add_argument("--confirm-seeds", type=int, default=None,
                        help="--fuzz-confirm-seeds (default: the scenario's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fuzz_power.json"))
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("fuzz-property-threshold", args.property),
                                 ("fuzz-confirm-seeds", args.confirm_seeds)) if v is not None}
    rows = []
    for examples in [int(b) for b in args.budgets.split(",")]:
        started = time.perf_counter()
        runs = [verdict(examples, r, "disc", args.rate, args.base, options)
                for r in range(args.reps)]
        planted = [v for v, _ in runs]
        good = [verdict(examples, r, None, 0.0, args.good, options)[0] for r in range(args.reps)]
        row = {"examples": examples, "reps": args.reps,
               "power": sum(found for _, found in runs) / args.reps,
               "planted_not_passed": sum(v != PASS for v in planted) / args.reps,
               "planted_verdicts": {v: planted.count(v) for v in sorted(set(planted))},
               "good_not_passed": sum(v != PASS for v in good) / args.reps,
               "good_verdicts": {v: good.count(v) for v in sorted(set(good))},
               "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"command": "python benchmarks/fuzz_power.py " + " ".join(argv or sys.argv[1:]),
           "planted": {"noun": "disc", "rate": args.rate, "others": args.base},
           "good_model_rate": args.good, "threshold": THRESHOLD, "gate": "exact",
           "options": options, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
