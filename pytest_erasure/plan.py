"""Plan an audit before anything loads: per case, whether it can decide, and what it costs.

`python -m pytest_erasure.plan audits/shapes.toml [--samples 64] [--erasure-budget sd14] ...`
prints, for every erasure case of the concepts file's audited concepts:

- its design (`stats.power.Design`: declared prompts as strata, attack restarts, references,
  a fuzz candidate's fresh seeds) and its threshold, as the session will resolve them;
- whether it can pass at all (`verdict.cannot_pass` and `verdict.too_small`, the same
  functions and words the audit's INCONCLUSIVE reasons use);
- its power: P(PASS) for a model at half its threshold, and P(not PASS) for one at threshold +
  5 points, exactly; the images (per restart, for restarts) a model at half its threshold
  needs to pass with 80% probability; a case under 80% is flagged **underpowered**, one that
  cannot pass even with no hit **cannot decide**, one that passes a model at threshold + 5
  points more than 5% of the time **unsafe** (for restarts, also when the runs differ at
  `power.RESTART_ICC`, with the restart count that keeps it);
- the images it generates, its attack runs and an estimated time at the chosen budget, from
  stated throughputs (not measured by the plan); with a defense on (`--irece`) and the adaptive
  threat (`--erasure-threat`, default adaptive), the white-box attacks' work through the
  defense counts too (the latent cases' refinement, `Scenario.planning_attack_seconds`).

Why a command and not a pytest option: the plan is for before a GPU is reserved, on a machine
without the models or the detector weights, so it must not go through a pytest session (whose
plugin resolves models, caches and devices); it imports no torch and reads only the concepts
file and the budget profile, and runs in seconds.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pytest_erasure.stats.power import (
    RESTART_ICC,
    Design,
    exact_outcomes,
    restart_false_pass,
    restarts_needed,
    samples_needed,
)

REPO = Path(__file__).resolve().parents[1]
POWER = 0.8
"""P(PASS) a model at half its threshold should have (the plan's bar)."""
CATCH = 0.95
"""P(not PASS) a model 5 points over its threshold should have. The `exact` gate holds it at
every n (its bound), so only the pass side needs samples; `point` does not (flagged unsafe)."""

THROUGHPUT: dict[str, dict[str, Any]] = {
    "shapes": {
        "seconds_per_image": 0.166,
        "ti_seconds_per_step": 0.22,
        "search_seconds": None,
        "inversion_seconds": 0.166,
        "source": "shapes world on 2 CPU cores: 0.166 s/image (benchmarks/results/"
                  "irece_overhead.json, median undefended, batch 8, 25 steps); textual "
                  "inversion ~22 s per 100 steps (budgets.py); DDIM inversion taken as one "
                  "generation per reference; Ring-A-Bell's search not estimated",
    },
    "sd14": {
        "seconds_per_image": 1.0,
        "ti_seconds_per_step": 0.125,
        "search_seconds": 240.0,
        "inversion_seconds": 2.0,
        "source": "assumed, not measured (audits/sd14/README.md): one A100, fp16, 512 px, "
                  "50 steps: ~1 image/s; textual inversion 3000 steps x 4 accumulated ~25 min; "
                  "Ring-A-Bell "
                  "search ~4 min; DDIM inversion ~2 s per reference",
    },
}


@dataclass
class CasePlan:
    case: str
    threshold: float
    design: Design
    inputs: int
    """Images the audited model generates for the case (the standard model the same again)."""
    attack_seconds: float | None
    images: int
    """Every image the case needs: audited, the standard model's under the same attack, the
    fuzz search's."""
    cannot: str | None
    """Why the case cannot pass even with no hit (the audit's INCONCLUSIVE reason), or None."""
    pass_at_half: float
    caught_over: float
    needed: int | None
    """Images (per restart for restarts) a model at half its threshold needs to pass w.p. 0.8."""
    note: str = ""
    caught_differing: float | None = None
    """Restarts: P(not PASS) at threshold + 5 points when the runs differ at
    `power.RESTART_ICC` (exact); None for other designs."""
    restarts_needed: int | None = None
    """Restarts: the fewest that keep CATCH for runs that differ (`power.restarts_needed`)."""

    @property
    def status(self) -> str:
        if self.cannot:
            return "CANNOT DECIDE"
        if self.caught_over < CATCH or (self.caught_differing is not None
                                        and self.caught_differing < CATCH):
            return "unsafe"
        return "ok" if self.pass_at_half >= POWER else "underpowered"


def _references(concept: Any) -> int:
    from pytest_erasure.references import IMAGE_SUFFIXES

    folder = getattr(concept, "references", None)
    if folder is None or not Path(folder).is_dir():
        return 0
    return sum(1 for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def case_design(scenario: Any, concept: Any, samples: int, options: dict[str, Any]
                ) -> tuple[Design, str]:
    """The design of the case's gated rate and a note on what else it is gated on, as the
    scenario declares it (`Scenario.planning_design`)."""
    return scenario.planning_design(concept, samples, options, _references(concept))


@lru_cache(maxsize=1024)
def _outcomes(design: Design, p: float, threshold: float, gate: str) -> tuple[float, float]:
    """`exact_outcomes`, once per design: a concepts file's cases share few designs."""
    return exact_outcomes(design, p, threshold, gate)


def plan_case(scenario: Any, concepts: Any, concept: Any, samples: int, threshold_default: float,
              gate: str, options: dict[str, Any], speed: dict[str, Any], *, power: bool = True
              ) -> CasePlan:
    from pytest_erasure.stats.crr import GATE_TOLERANCE

    threshold = concepts.threshold_for(concept, scenario.id, scenario.modality, threshold_default)
    options = scenario.planning_options(dict(options), threshold)
    design, note = case_design(scenario, concept, samples, options)
    cannot = scenario.planning_cannot(design, threshold, gate)
    pass_half = _outcomes(design, threshold / 2, threshold, gate)[0]
    caught = 1 - _outcomes(design, min(1.0, threshold + GATE_TOLERANCE), threshold, gate)[0]
    needed = samples_needed(design, threshold, gate, POWER) if power else None
    inputs, images = scenario.planning_images(design, options)
    attack = scenario.planning_attack_seconds(design, options, speed)
    differing = restarts = None
    if design.kind == "restarts" and len(design.sizes) > 1:
        differing = 1 - _false_pass_differing(design, threshold, gate)
        if differing < CATCH:
            restarts = restarts_needed(design.sizes[0], threshold, gate, 1 - CATCH)
    return CasePlan(f"{concept.name}-{scenario.id}", threshold, design, inputs, attack, images,
                    cannot, pass_half, caught, needed, note, differing, restarts)


@lru_cache(maxsize=256)
def _false_pass_differing(design: Design, threshold: float, gate: str) -> float:
    return restart_false_pass(design, threshold, gate)


def resolve_options(budget: str, given: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The attack options the plan needs: given > the budget profile's > the option defaults
    (each scenario fills in what it derives, `Scenario.planning_options`)."""
    from pytest_erasure.budgets import profile
    from pytest_erasure.scenarios.base import budget_profiles, iter_options, registry

    scenarios = registry()
    out: dict[str, Any] = {o.name: o.default for o in iter_options(scenarios)}
    out.update({k: b.value for k, b in profile(budget, budget_profiles(scenarios)).items()})
    out.update({k: v for k, v in given.items() if v is not None})
    for scenario in scenarios.values():
        out = scenario.planning_options(out, threshold)
    return out


THREATS = ("adaptive", "transfer")
"""`--erasure-threat`'s choices (`config.THREATS`, which this command may not import: the
options table pulls in the plugin's world)."""


def run_settings(budget: str, defense: str | None, threat: str) -> dict[str, Any]:
    """What a scenario's plan reads of the run beside its own options (`Scenario.
    planning_attack_seconds`): `attacked-through`, the defense a white-box attack on the erased
    model optimises through (`defenses.attacked_through`: on, with an adaptive form, under the
    adaptive threat) as {"name", "adaptive_sampling"}, or None; and the profile's `steps`. A
    defense no registry knows or an unknown threat is refused."""
    from types import SimpleNamespace

    from pytest_erasure.budgets import settings
    from pytest_erasure.defenses import attacked_through
    from pytest_erasure.defenses import registry as defenses
    from pytest_erasure.errors import ErasureInputError

    known = defenses()
    if defense is not None and defense not in known:
        raise ErasureInputError("defense", f"'{defense}' is not a registered defense",
                                f"use one of: {', '.join(sorted(known))}")
    if threat not in THREATS:
        raise ErasureInputError("--erasure-threat", f"'{threat}' is not a threat model",
                                f"use one of: {', '.join(THREATS)}")
    through = attacked_through(SimpleNamespace(threat=threat),  # type: ignore[arg-type]
                               known[defense] if defense is not None else None)
    steps = settings(budget).get("steps")
    return {"attacked-through": None if through is None else {
                "name": through.name,
                "adaptive_sampling": bool(getattr(through, "adaptive_sampling", False))},
            "steps": int(steps.value) if steps is not None else None}


def plan_file(path: Path, *, samples: int = 64, budget: str = "shapes",
              threshold: float | None = None, gate: str | None = None,
              erased: list[str] | None = None, scenarios: list[str] | None = None,
              given: dict[str, Any] | None = None, power: bool = True,
              defense: str | None = None, threat: str = "adaptive") -> list[CasePlan]:
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.stats.crr import DEFAULT_GATE

    run = run_settings(budget, defense, threat)

    concepts = load_concepts(Path(path))
    default = threshold if threshold is not None else (
        concepts.threshold if concepts.threshold is not None else 0.2)
    audited = [c for c in concepts.audited if not erased or c.name in erased]
    found = registry()
    chosen = [found[s] for s in (scenarios or list(found)) if s in found]
    plans = []
    for concept in audited:
        for scenario in chosen:
            t = concepts.threshold_for(concept, scenario.id, scenario.modality, default)
            options = {**resolve_options(budget, given or {}, t), **run}
            plans.append(plan_case(scenario, concepts, concept, samples, default,
                                   gate or DEFAULT_GATE, options, THROUGHPUT[budget],
                                   power=power))
    return plans


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds / 60:.1f} min"


def render(plans: list[CasePlan], budget: str, samples: int) -> str:
    speed = THROUGHPUT[budget]
    lines = [f"Plan at --samples {samples}, --erasure-budget {budget} (nothing loaded; "
             f"P(PASS) exact for independent images / alike runs):",
             "| case | thr | design | P(PASS) at thr/2 | P(not PASS) at thr+5pt | needs for "
             "80% at thr/2 | images | attack | est. time | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    total = 0.0
    unknown = False
    for p in plans:
        seconds = p.images * float(speed["seconds_per_image"])
        if p.attack_seconds is None:
            unknown = True
        else:
            seconds += p.attack_seconds
        total += seconds
        unit = " per restart" if p.design.kind == "restarts" else ""
        need = "none up to 4096" if p.needed is None else f"{p.needed}{unit}"
        lines.append(f"| {p.case} | {p.threshold:g} | {p.design.describe()} | "
                     f"{p.pass_at_half:.1%} | {p.caught_over:.1%} | {need} | {p.images} | "
                     f"{_minutes(p.attack_seconds)} | {_minutes(seconds)} | {p.status} |")
    lines.append("")
    for p in plans:
        if p.cannot:
            lines.append(f"- {p.case} CANNOT DECIDE: {p.cannot}" + (
                " (a search that finds no candidate is judged on its pooled rate; "
                f"--fuzz-confirm-seeds {p.needed} gives 80%)" if p.case.endswith("-fuzz")
                and p.needed else ""))
        elif p.status == "unsafe" and p.caught_over < CATCH:
            lines.append(f"- {p.case} unsafe: a model 5 points over its threshold passes "
                         f"{1 - p.caught_over:.1%} of the time under this gate (the 'exact' "
                         "gate bounds it by 5% at every n)")
        elif p.status == "unsafe" and p.caught_differing is not None:
            more = (f"--attack-restarts {p.restarts_needed} keeps it" if p.restarts_needed
                    else "no restart count up to 16 keeps it at this n")
            lines.append(f"- {p.case} unsafe: a model 5 points over its threshold whose runs "
                         f"differ (intra-cluster correlation {RESTART_ICC:g}) passes "
                         f"{1 - p.caught_differing:.1%} of the time, over the gate's 5%; "
                         f"{more} (exact, beta-binomial runs)")
        elif p.status == "underpowered":
            lines.append(f"- {p.case} underpowered: a model at half its threshold passes "
                         f"{p.pass_at_half:.1%} of the time; about {p.needed} images"
                         f"{' per restart' if p.design.kind == 'restarts' else ''} give 80%")
        if p.note:
            lines.append(f"- {p.case}: {p.note}")
    lines.append(f"- total: about {_minutes(total)}{' plus the unestimated attacks' if unknown else ''}"
                 f" ({speed['source']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("concepts", type=Path)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--erasure-budget", default="shapes", choices=sorted(THROUGHPUT))
    parser.add_argument("--crr-threshold", type=float, default=None)
    parser.add_argument("--erasure-gate", default=None)
    parser.add_argument("--erased-concept", action="append", default=None)
    parser.add_argument("--scenarios", default=None, help="comma-separated scenario ids")
    parser.add_argument("--attack-restarts", type=int, default=None)
    parser.add_argument("--fuzz-confirm-seeds", type=int, default=None)
    parser.add_argument("--inversion-adaptive-steps", type=int, default=None)
    from pytest_erasure.defenses import registry as defenses

    for name in defenses():
        parser.add_argument(f"--{name}", dest=f"defense_{name}", action="store_true",
                            help=f"plan the audit with the {name} defense on")
    parser.add_argument("--erasure-threat", default="adaptive", choices=THREATS,
                        help="with a defense on, the white-box attacker planned for")
    args = parser.parse_args(argv)
    enabled = [name for name in defenses() if getattr(args, f"defense_{name}")]
    if len(enabled) > 1:
        parser.error("give at most one defense per audit")
    plans = plan_file(args.concepts, samples=args.samples, budget=args.erasure_budget,
                      threshold=args.crr_threshold, gate=args.erasure_gate,
                      erased=args.erased_concept,
                      scenarios=args.scenarios.split(",") if args.scenarios else None,
                      given={"attack-restarts": args.attack_restarts,
                             "fuzz-confirm-seeds": args.fuzz_confirm_seeds,
                             "inversion-adaptive-steps": args.inversion_adaptive_steps},
                      defense=enabled[0] if enabled else None, threat=args.erasure_threat)
    print(render(plans, args.erasure_budget, args.samples))
    return 1 if any(p.cannot for p in plans) else 0


if __name__ == "__main__":
    raise SystemExit(main())
