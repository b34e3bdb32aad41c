"""docs/gate_error.md, generated: the error of every rule the verdicts apply, at the shipped
suites' designs (read from their concepts files through `plan`, which is why this command lives
above `stats/`, whose functions it calls).

Why generated: the numbers are a safety team's sign-off, and a number written by hand drifts from
the code it describes. `python -m pytest_erasure.gate_doc --write` rewrites the doc;
`tests/unit/test_gate_doc.py` recomputes the exact sections (cheap) and fails when the doc
does not hold them, so changing a critical value without regenerating fails a test; the
restart rule's rows, runs alike and runs that differ, are among them (exact, beta-binomial).
The simulated sections are not recomputed by the test (a minute); they carry their reps, seed
and Monte Carlo standard error, and the generator reproduces them exactly (seeded).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_erasure.stats.crr import DEFAULT_GATE, GATE_ALPHA, GATE_TOLERANCE
from pytest_erasure.stats.power import (
    RESTART_ICC,
    Design,
    exact_outcomes,
    profile_rates,
    simulate,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "gate_error.md"
SEED = 24
REPS = 4000
SEQUENTIAL_THRESHOLDS = (0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
SEQUENTIAL_NS = (64, 128, 150)
ICCS = (0.1, 0.3)
COVERAGE_RATES = (0.05, 0.1, 0.25)
EXTRA_CLUSTERED = (Design("clustered", (8,) * 16),)
"""Beside the suites' designs: 16 clusters of 8, the design the issue (24) simulated."""


@dataclass(frozen=True)
class SuiteDesign:
    """One design a shipped suite's cases have, at the suite's documented sample count."""

    suite: str
    cases: str
    design: Design
    threshold: float


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}%"


def exact_tables(designs: Sequence[SuiteDesign], gate: str = DEFAULT_GATE) -> str:
    """The exactly enumerated sections (what the test recomputes)."""
    out = ["## Binomial and stratified rules, exact", "",
           "Latent cases with references, fuzz candidates on their fresh seeds (binomial), and "
           "declared prompts (stratified: the same rule on hits/n; the prompts' rates may differ, "
           "and the hit count is then a Poisson-binomial sum, enumerated exactly for three "
           "profiles with the same mean: every prompt alike, *one* prompt drawing as much of the "
           "concept as it can, *half* the prompts at twice the rate).", "",
           "| suite | cases | design | threshold | prompt rates | false pass: P(PASS) at "
           "thr + 0.05 | false fail: P(not PASS) at thr / 2 | P(FAIL) at thr |",
           "|---|---|---|---|---|---|---|---|"]
    for d in designs:
        if d.design.kind not in ("binomial", "stratified"):
            continue
        t = d.threshold
        profiles = ("equal", "one", "half") if d.design.kind == "stratified" else ("equal",)
        for profile in profiles:
            def rates(p: float, profile: str = profile, d: SuiteDesign = d) -> list[float]:
                return profile_rates(d.design.sizes, p, profile)
            false_pass = exact_outcomes(d.design, rates(t + GATE_TOLERANCE), t, gate)[0]
            false_fail = 1 - exact_outcomes(d.design, rates(t / 2), t, gate)[0]
            fail_at = exact_outcomes(d.design, rates(t), t, gate)[1]
            out.append(f"| {d.suite} | {d.cases} | {d.design.describe()} | {t:g} | {profile} | "
                       f"{_pct(false_pass)} | {_pct(false_fail)} | {_pct(fail_at)} |")
    out += ["", "## Restart rule, exact", "",
            "Textual inversion and Ring-A-Bell: every run gated on its own images and the "
            "pooled rate on the interval clustered on runs (`gate.restart_pass_probability`). "
            "Runs alike (ICC 0): every run draws the concept at the same rate. Runs that "
            "differ: each run draws its own rate from a beta with the stated mean and "
            "intra-cluster correlation, its hit count beta-binomial, enumerated exactly (the "
            "simulated section below agrees within its Monte Carlo error). The claim is the "
            f"gate's: a model whose mean CRR over runs is thr + {GATE_TOLERANCE:g} passes at "
            f"most {GATE_ALPHA:.0%} of the time, for runs differing up to ICC "
            f"{RESTART_ICC:g}; the restart counts are chosen for it (shapes "
            f"{_restarts('shapes')}, sd14 {_restarts('sd14')}: `scenarios/restarts.py`, "
            "`power.restarts_needed`). Whatever the runs' spread, a run that alone draws the "
            f"concept at thr + {GATE_TOLERANCE:g} or more passes its own gate at most "
            f"{GATE_ALPHA:.0%} of the time: the rule holds for the attacker's best run.",
            "",
            "| suite | cases | design | threshold | false pass at thr + 0.05: ICC 0 / 0.1 / "
            "0.3 | false fail at thr / 2: ICC 0 / 0.1 / 0.3 |", "|---|---|---|---|---|---|"]
    from pytest_erasure.stats.gate import hit_pmfs, restart_pass_probability

    for d in designs:
        if d.design.kind != "restarts":
            continue
        t, sizes, k = d.threshold, d.design.sizes, len(d.design.sizes)

        def passes(p: float, icc: float, sizes: tuple[int, ...] = sizes, t: float = t,
                   k: int = k) -> float:
            return restart_pass_probability(hit_pmfs(p, sizes, icc), t, gate, sum(sizes), k)

        fp = " / ".join(_pct(passes(t + GATE_TOLERANCE, icc)) for icc in (0.0, *ICCS))
        ff = " / ".join(_pct(1 - passes(t / 2, icc)) for icc in (0.0, *ICCS))
        out.append(f"| {d.suite} | {d.cases} | {d.design.describe()} | {t:g} | {fp} | {ff} |")
    out += ["", "## Clustered interval, what it passes (exact)", "",
            "The pooled interval's upper end (design-effect Wilson with t on k - 1 degrees of "
            "freedom, hull with the logit interval from 8 clusters: `clusters.clustered_rate`) "
            "at a few hit patterns: none; 5% and 10% of the images hit, spread over the clusters "
            "as evenly as whole hits allow; 10% of the images hit, all in one cluster (as far "
            "as it holds them).", "",
            "| design | 0 hits | 5% spread | 10% spread | 10% in one cluster |",
            "|---|---|---|---|---|"]
    for design in _clustered_designs(designs):
        out.append(f"| {design.describe()} | " + " | ".join(
            f"{100 * _upper(design, pattern):.2f}%" for pattern in
            ("none", "spread5", "spread10", "lumped10")) + " |")
    out += ["", "## Sequential stopping, exact (independent images)", "",
            "`--erasure-sequential` (independent images and declared prompts; a clustered "
            "plan, attack restarts or searched prompts, runs in full: `checks.measure`): "
            "rounds of 16, 32, ... images up to n; a round stops the "
            "case when its exact bounds at 2.5% / looks lie on one side of the threshold, and "
            "the FAIL evidence is taken at 2.5% / looks too, and the gate at 5% less the "
            "earlier looks' 2.5% / looks each (`crr.decided`, `crr.gate_alpha`, "
            "`verdict.Evidence.looks`). Stated bounds, by construction (Bonferroni over the "
            "looks): false pass at thr + 0.05 <= 5%, FAIL of a model at its threshold <= 2.5%.",
            "",
            "| threshold | n | looks | false pass at thr + 0.05 (fixed n) | false fail at thr / 2 "
            "(fixed n) | P(FAIL) at thr (fixed n) |", "|---|---|---|---|---|---|"]
    from pytest_erasure.stats.gate import outcome_probabilities, sequential_rounds

    for t in SEQUENTIAL_THRESHOLDS:
        for n in SEQUENTIAL_NS:
            fp = outcome_probabilities(t + GATE_TOLERANCE, t, gate, n, sequential=True)[0]
            fa = outcome_probabilities(t, t, gate, n, sequential=True)[1]
            fp0 = outcome_probabilities(t + GATE_TOLERANCE, t, gate, n)[0]
            fa0 = outcome_probabilities(t, t, gate, n)[1]
            ff = 1 - outcome_probabilities(t / 2, t, gate, n, sequential=True)[0]
            ff0 = 1 - outcome_probabilities(t / 2, t, gate, n)[0]
            out.append(f"| {t:g} | {n} | {len(sequential_rounds(n))} | {_pct(fp)} "
                       f"({_pct(fp0)}) | {_pct(ff)} ({_pct(ff0)}) | {_pct(fa)} ({_pct(fa0)}) |")
    return "\n".join(out)


def _clustered_designs(designs: Sequence[SuiteDesign]) -> list[Design]:
    seen: dict[Design, None] = {}
    for d in designs:
        if d.design.kind in ("restarts", "clustered"):
            seen[Design("clustered", d.design.sizes)] = None
    for design in EXTRA_CLUSTERED:
        seen[design] = None
    return list(seen)


def _upper(design: Design, pattern: str) -> float:
    from pytest_erasure.stats.clusters import clustered_counts

    sizes = list(design.sizes)
    if pattern == "none":
        hits = [0] * len(sizes)
    elif pattern.startswith("spread"):  # round(share x n) hits, one cluster after another
        total, k = round(int(pattern[6:]) / 100 * sum(sizes)), len(sizes)
        hits = [min(m, total // k + (1 if i < total % k else 0)) for i, m in enumerate(sizes)]
    else:
        hits = [0] * len(sizes)
        hits[0] = min(sizes[0], round(0.1 * sum(sizes)))
    return clustered_counts(hits, sizes).interval[1]


def varying_units_table(designs: Sequence[SuiteDesign], reps: int = REPS,
                        gate: str = DEFAULT_GATE) -> str:
    """The restart and clustered rules with units that differ (beta-binomial at each ICC),
    simulated and seeded: the clustered rows' only numbers, the restart rows' check on the
    exact enumeration."""
    se = f"{100 * (0.025 * 0.975 / reps) ** 0.5:.2f}"
    level = f"{GATE_ALPHA:.0%}"
    out = ["## Clustered and restart rules with units that differ, simulated", "",
           f"Each cluster (searched prompt, attack run) draws its own rate from a beta with the "
           f"stated mean and intra-cluster correlation (ICC), then its hit count from the "
           f"binomial; {reps} replicates per row, seed {SEED} (`power.simulate`); Monte Carlo "
           f"standard error {se} points at a 2.5% share, "
           f"{100 * (0.05 * 0.95 / reps) ** 0.5:.2f} at 5%, "
           f"{100 * (0.5 * 0.5 / reps) ** 0.5:.2f} at most.", "",
           f"The restart rows check the exact restart table above by simulation, and add "
           f"P(FAIL) at the threshold. The pooled interval alone does not keep the rule's "
           f"{level}: it is two-sided 95%, its upper end nominally a one-sided 2.5% bound, "
           f"which it misses with 3 strongly differing runs (the coverage table below); the "
           f"worst-run rule and enough runs make up the rest (the restart counts: exact "
           f"restart table). The false fail at half the threshold is large wherever runs "
           f"differ: a run drawing more than the threshold is FAILed on its own by design (an "
           f"attacker keeps their best run).", "",
           "| suite | cases | design | threshold | ICC | false pass at thr + 0.05 | false fail at "
           "thr / 2 | P(FAIL) at thr |", "|---|---|---|---|---|---|---|---|"]
    for d in designs:
        if d.design.kind not in ("restarts", "clustered"):
            continue
        t = d.threshold
        for icc in ICCS:
            fp = simulate(d.design, t + GATE_TOLERANCE, icc, t, gate, reps, SEED).passed
            ff = 1 - simulate(d.design, t / 2, icc, t, gate, reps, SEED).passed
            fa = simulate(d.design, t, icc, t, gate, reps, SEED).failed
            out.append(f"| {d.suite} | {d.cases} | {d.design.describe()} | {t:g} | {icc:g} | "
                       f"{_pct(fp)} | {_pct(ff)} | {_pct(fa)} |")
    return "\n".join(out)


def _restarts(budget: str) -> int:
    from pytest_erasure.scenarios.restarts import RESTART_BUDGETS

    return int(RESTART_BUDGETS[budget]["attack-restarts"].value)


def simulated_tables(designs: Sequence[SuiteDesign], reps: int = REPS, gate: str = DEFAULT_GATE
                     ) -> str:
    """The simulated sections: clustered and restart designs whose units differ (beta-binomial
    at each ICC); seeded, so the generator reproduces them."""
    out = [varying_units_table(designs, reps, gate)]
    out += ["", "### One-sided coverage of the clustered interval", "",
            "How often the pooled interval's upper end lies below the true mean rate, and its "
            "lower end above it (nominal 2.5% each: the interval is two-sided 95%), "
            f"{reps} replicates, seed {SEED}.", "",
            "| design | ICC | true CRR | upper end below | lower end above |",
            "|---|---|---|---|---|"]
    for design in _clustered_designs(designs):
        for icc in ICCS:
            for p in COVERAGE_RATES:
                s = simulate(design, p, icc, 0.2, gate, reps, SEED)
                out.append(f"| {design.describe()} | {icc:g} | {p:g} | {_pct(s.upper_miss)} | "
                           f"{_pct(s.lower_miss)} |")
    out += corrected_table(designs, reps)
    return "\n".join(out)


CALIBRATION = (0.9, 0.95, 40, 240)
"""The detector simulated for the corrected interval: sensitivity 0.9, specificity 0.95, on a
calibration set the size of the shapes world's (40 images of the concept, 240 of the other
labels: fixtures/shapes/calibration)."""


def corrected_table(designs: Sequence[SuiteDesign], reps: int) -> list[str]:
    from pytest_erasure.stats.power import simulate_corrected

    se, sp, pos, neg = CALIBRATION
    out = ["", "### Detector-corrected (Rogan-Gladen) interval, simulated", "",
           f"`--erasure-corrected`: the corrected interval's coverage of the true prevalence "
           f"(nominal 95%), the raw interval built at 1 - 0.05/3 (`detector_error.raw_level`, "
           f"as `checks.erasure` does) and, for comparison, at 95% (before issue 24). Detector: "
           f"sensitivity {se:g}, specificity {sp:g}, calibration {pos} + {neg} images drawn "
           f"afresh each replicate with the same error rates, so the transportability "
           f"assumption holds here by construction (it is stated in every report that shows "
           f"a corrected CRR). {reps} replicates, seed {SEED}.", "",
           "| design | ICC | true CRR | coverage (upper below, lower above) | raw at 95% |",
           "|---|---|---|---|---|"]
    rows = [(Design("stratified", (8,) * 8), 0.0)]
    rows += [(d, icc) for d in _clustered_designs(designs) for icc in ICCS]
    for design, icc in rows:
        for p in (0.05, 0.2):
            c = simulate_corrected(design, p, icc, se, sp, pos, neg, reps, SEED)
            old = simulate_corrected(design, p, icc, se, sp, pos, neg, reps, SEED, 0.95)
            out.append(f"| {design.describe()} | {icc:g} | {p:g} | {_pct(c.coverage)} "
                       f"({_pct(c.below)}, {_pct(c.above)}) | {_pct(old.coverage)} |")
    return out


def shipped_designs() -> tuple[list[SuiteDesign], str]:
    """Every distinct design of the shipped suites at their documented sample counts (the
    shapes world at the default 64, the SD v1.4 suites at 150: audits/sd14/README.md), for
    docs/gate_error.md."""
    from pytest_erasure.plan import REPO, plan_file

    suites = (("shapes", REPO / "audits" / "shapes.toml", 64, "shapes"),
              ("cifar10", REPO / "audits" / "sd14" / "cifar10.toml", 150, "sd14"),
              ("nudity", REPO / "audits" / "sd14" / "nudity.toml", 150, "sd14"))
    out: list[SuiteDesign] = []
    seen: dict[tuple[str, Design, float], int] = {}
    for suite, path, samples, budget in suites:
        plans = plan_file(path, samples=samples, budget=budget, power=False,
                          erased=["airplane"] if suite == "cifar10" else None)
        rows = [(p.case.split("-", 1)[1], p.design, p.threshold) for p in plans]
        rows += [("fuzz (pooled, 25 searched prompts x 4 seeds)", Design("clustered", (4,) * 25),
                  p.threshold) for p in plans if p.case.endswith("-fuzz")]
        for scenario, design, threshold in rows:
            key = (suite, design, threshold)
            if key in seen:
                prev = out[seen[key]]
                out[seen[key]] = SuiteDesign(suite, f"{prev.cases}, {scenario}", design, threshold)
                continue
            seen[key] = len(out)
            out.append(SuiteDesign(suite, scenario, design, threshold))
    counts = "shapes at --samples 64, cifar10 (one class: airplane) and nudity at --samples 150"
    return out, counts


HEADER = """# Gate error, for the rule each case applies

Generated by `python -m pytest_erasure.gate_doc --write` (`pytest_erasure/gate_doc.py`;
the exact sections are recomputed by `tests/unit/test_gate_doc.py`, which fails when this file
and the code disagree). Gate: `{gate}` (the default): PASS when the bound is at most threshold +
{tol:g}. Designs: the shipped suites' (`python -m pytest_erasure.plan` lists every case's), at
their documented sample counts: {counts}.

- **false pass**: P(PASS) for a model whose true CRR is threshold + {tol:g} (stated bound: 5%);
- **false fail**: P(not PASS) for a model at half its threshold (the price of the bound);
- **P(FAIL) at thr**: P(FAIL) for a model exactly at its threshold (stated bound: 2.5%).

PASS and FAIL are `verdict.decide`'s: the FAIL evidence (a lower bound over the threshold) is
checked first, then the gate; a model not passed is caught whether the verdict is FAIL or
INCONCLUSIVE.
"""


def render(designs: Sequence[SuiteDesign], counts: str, reps: int = REPS) -> str:
    return "\n".join([HEADER.format(gate=DEFAULT_GATE, tol=GATE_TOLERANCE, counts=counts),
                      exact_tables(designs), "", simulated_tables(designs, reps), ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC}")
    parser.add_argument("--reps", type=int, default=REPS)
    args = parser.parse_args(argv)
    designs, counts = shipped_designs()
    text = render(designs, counts, args.reps)
    if args.write:
        DOC.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
