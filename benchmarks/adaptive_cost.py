"""What the adaptive attack through IRECE costs: seconds per adaptive vs transfer textual
inversion on the shapes world (measured), and the projected SD v1.4 cost at the sd14 budgets
(work counted, rates assumed).

Measured: one textual-inversion run of the white-box embedding case on the shapes world's UCE
model at the shapes budget (`--ti-steps`, batch 32, the budget profile's values), with `--irece`
at its defaults, learned as the transfer attacker does (no surrogate: `--erasure-threat
transfer`) and as the adaptive one does (through `IreceSurrogate`), alternating, `--repeats`
times each, caching off. Per case, the embedding-white case runs `--attack-restarts` such runs
through the erased model (adaptive or not) and as many through the standard model (never
defended: the same in both), then generates and judges the same images in both: only the
erased-side training differs, and the per-case figure adds the measured difference to the
transfer case. The two images-and-judging parts are not re-measured here (the same work).

Projected for SD v1.4 (`benchmarks/sd14_time.py`'s rates, **assumed**): a textual-inversion
micro-step of batch 1 costs 0.125 s (forward and backward through the UNet and text encoder);
the surrogate adds, on the defended share (0.5) of each micro-batch, one standard-UNet forward
without gradient, **assumed** to cost a third of a forward-and-backward step (a backward pass
costs about twice a forward one); the shapes world's measured ratio is printed beside it.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/adaptive_cost.py --repeats 2 \
        --out benchmarks/results/adaptive_cost.json

`--inversion` measures the adaptive DDIM inversion instead (`scenarios.latent`,
`inversion.adaptive_invert`): the white-box null-prompt latent case's plan on the UCE model
with `--irece`, as the transfer attacker makes it (invert, check) and as the adaptive one does
(the same, then `--inversion-adaptive-steps` refinement steps through IRECE), `--samples`
references, caching off. The case then generates and judges the same number of images in
both, so the plan's seconds are what differs. Projected for SD v1.4 at the sd14 budget (50
steps, --samples 150, 20 refinement steps): each refinement step is one unrolled 50-step
denoising with gradient, checkpointed (forward, recomputed forward, backward counted as two:
4 forwards per step), plus 2 x 4 held-out defended denoisings without gradient; a UNet
forward of one image **assumed** at sd14_time.py's DDIM-inversion rate (2 s per 50 steps,
batch 1) and, as the optimistic bound, at its batched generation rate (1 image/s for 50
guided steps: 0.01 s per image-forward).

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/adaptive_cost.py --inversion --repeats 1 \
        --samples 16 --out benchmarks/results/adaptive_inversion_cost.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TI_MICRO_STEP_S = 0.125
"""sd14_time.py's assumed seconds of one textual-inversion micro-step of batch 1 (A100, fp16)."""
FORWARD_SHARE = 1 / 3
"""Assumed: a no-gradient UNet forward costs a third of a forward-and-backward step."""


def learn_seconds(threat: str, steps: int) -> tuple[float, dict]:
    """Seconds of one textual-inversion run of embedding-white on UCE with --irece, as the
    `threat` attacker learns it (cache off: computed every time)."""
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.session import AuditSession, default_config

    config = default_config(cache_dir=None, defense="irece", threat=threat,
                            erased_model=ROOT / "fixtures/shapes/erased/uce-circle",
                            scenario_options={"ti-steps": steps})
    session = AuditSession(config, load_concepts(config.concepts_file))
    ctx = session.context
    circle = ctx.concepts.concepts["circle"]
    white = registry()["embedding-white"]
    _ = ctx.pipeline("erased"), white.budget(ctx)  # load the models before the clock starts
    from pytest_erasure.scenarios.embedding import concept_images

    concept_images(ctx, circle, int(ctx.option("ti-train-images")))
    start = time.perf_counter()
    _, facts, _ = white.learn(ctx, circle, "erased")
    return time.perf_counter() - start, {"budget": facts["budget"],
                                         "adaptive": facts.get("adaptive")}


INVERT_S = 2.0
"""sd14_time.py's assumed seconds of one 50-step DDIM inversion of one image."""
GENERATE_S = 1.0
"""sd14_time.py's assumed seconds of one 50-step guided generation (batches of 16)."""


def plan_seconds(threat: str, samples: int) -> tuple[float, dict]:
    """Seconds of latent-white-null's plan on UCE with --irece, as the `threat` attacker
    makes it (cache off)."""
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.scenarios.embedding import concept_images
    from pytest_erasure.session import AuditSession, default_config

    config = default_config(cache_dir=None, defense="irece", threat=threat, samples=samples,
                            erased_model=ROOT / "fixtures/shapes/erased/uce-circle")
    ctx = AuditSession(config, load_concepts(config.concepts_file)).context
    circle = ctx.concepts.concepts["circle"]
    case = registry()["latent-white-null"]
    _ = ctx.pipeline("erased"), ctx.pipeline("standard")  # loaded before the clock starts
    concept_images(ctx, circle, samples)
    start = time.perf_counter()
    plan = case.plan(ctx, circle, "erased", samples)
    return time.perf_counter() - start, {"adaptive": plan.facts.get("adaptive"),
                                         "n": len(plan.inputs)}


def inversion_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    from pytest_erasure.config import budget_profiles
    from pytest_erasure.scenarios.latent import ADAPTIVE_EVALUATIONS

    runs: dict[str, list[float]] = {"transfer": [], "adaptive": []}
    facts = {}
    for _ in range(args.repeats):
        for threat in ("transfer", "adaptive"):
            seconds, facts[threat] = plan_seconds(threat, args.samples)
            runs[threat].append(round(seconds, 2))
            print(f"{threat}: {seconds:.1f} s for {args.samples} references", flush=True)
    transfer, adaptive = min(runs["transfer"]), min(runs["adaptive"])
    sd14 = {k: v.value for k, v in budget_profiles()["sd14"].items()}
    iterations, steps, samples = int(sd14["inversion-adaptive-steps"]), 50, 150
    forwards = iterations * steps * 4 + 2 * ADAPTIVE_EVALUATIONS * steps + iterations
    per_image = {"inversion_rate": forwards * INVERT_S / steps,
                 "batched_generation_rate": forwards * GENERATE_S / (2 * steps)}
    result = {
        "command": "python benchmarks/adaptive_cost.py " + " ".join(argv or sys.argv[1:]),
        "shapes_world": {
            "model": "fixtures/shapes/erased/uce-circle", "defense": "irece (defaults)",
            "case": "latent-white-null", "references": args.samples,
            "seconds_transfer_plans": runs["transfer"], "seconds_adaptive_plans": runs["adaptive"],
            "adaptive_over_transfer": round(adaptive / transfer, 2),
            "per_case_extra_seconds": round(adaptive - transfer, 1),
            "refinement": {k: v for k, v in (facts["adaptive"]["adaptive"] or {}).items()
                           if k in ("iterations", "lr", "evaluations", "refined")}},
        "sd14_projection": {
            "assumed": {"invert_50_steps_s": INVERT_S, "generate_50_guided_steps_s": GENERATE_S},
            "references": samples, "steps": steps, "iterations": iterations,
            "unet_image_forwards_per_reference": forwards,
            "transfer_inversion_min_per_case": round(samples * INVERT_S / 60, 1),
            "refinement_h_per_case": {k: round(samples * v / 3600, 1)
                                      for k, v in per_image.items()}},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100, help="--ti-steps (shapes budget: 100)")
    parser.add_argument("--inversion", action="store_true",
                        help="measure the adaptive DDIM inversion instead")
    parser.add_argument("--samples", type=int, default=16,
                        help="--inversion: references per case")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.inversion:
        return inversion_main(args, argv)
    from pytest_erasure.config import budget_profiles

    runs: dict[str, list[float]] = {"transfer": [], "adaptive": []}
    facts = {}
    for _ in range(args.repeats):
        for threat in ("transfer", "adaptive"):
            seconds, facts[threat] = learn_seconds(threat, args.steps)
            runs[threat].append(round(seconds, 2))
            print(f"{threat}: {seconds:.1f} s for {args.steps} steps", flush=True)
    transfer = min(runs["transfer"])
    adaptive = min(runs["adaptive"])
    ratio = adaptive / transfer
    shapes = {k: v.value for k, v in budget_profiles()["shapes"].items()}
    restarts = int(shapes["attack-restarts"])
    scale = int(shapes["ti-steps"]) / args.steps  # a run's time is linear in its steps
    # The measured overhead per micro-step, as a share of a training step: what a forward costs
    # relative to forward + backward in this world, times the defended share.
    share = (facts["adaptive"]["adaptive"] or {}).get("share", 0.5)
    sd14 = {k: v.value for k, v in budget_profiles()["sd14"].items()}
    micro_steps = int(sd14["ti-steps"]) * int(sd14["ti-accumulation"])
    sd_restarts = int(sd14["attack-restarts"])
    transfer_run = micro_steps * TI_MICRO_STEP_S
    assumed_run = transfer_run * (1 + share * FORWARD_SHARE)
    measured_run = transfer_run * ratio
    result = {
        "command": "python benchmarks/adaptive_cost.py " + " ".join(argv or sys.argv[1:]),
        "shapes_world": {
            "model": "fixtures/shapes/erased/uce-circle", "defense": "irece (defaults)",
            "ti_steps": args.steps, "batch_size": facts["transfer"]["budget"]["batch_size"],
            "seconds_transfer_runs": runs["transfer"], "seconds_adaptive_runs": runs["adaptive"],
            "adaptive_over_transfer": round(ratio, 3),
            "per_case_extra_seconds": round(restarts * scale * (adaptive - transfer), 1),
            "per_case_note": f"{restarts} restarts of {shapes['ti-steps']} steps through the "
                             f"erased model differ (scaled from the {args.steps}-step runs); "
                             f"the standard model's {restarts} runs and every image are the "
                             "same work in both",
            "surrogate": facts["adaptive"]["adaptive"]},
        "sd14_projection": {
            "assumed": {"ti_micro_step_s": TI_MICRO_STEP_S,
                        "forward_over_forward_backward": round(FORWARD_SHARE, 3)},
            "micro_steps_per_run": micro_steps, "restarts": sd_restarts,
            "transfer_run_min": round(transfer_run / 60, 1),
            "adaptive_run_min_assumed_rate": round(assumed_run / 60, 1),
            "adaptive_run_min_shapes_ratio": round(measured_run / 60, 1),
            "per_case_extra_min_assumed_rate": round(sd_restarts * (assumed_run - transfer_run)
                                                     / 60, 1),
            "per_case_extra_min_shapes_ratio": round(sd_restarts * (measured_run - transfer_run)
                                                     / 60, 1)},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
