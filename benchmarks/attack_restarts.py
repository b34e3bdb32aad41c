"""Per-restart CRRs of a random attack on the shapes world: how much one run's result varies.

    python benchmarks/attack_restarts.py --erased esd-x-circle --restarts 4 --samples 64
    python benchmarks/attack_restarts.py --scenario adversarial-black --restarts 4 --samples 64

Plans the case's erased target through the scenario (restarts cached under --cache), judges the
images with the concepts file's detector, and prints one JSON line: hits per restart, each
restart's seed and final loss, the pooled rate clustered on restarts and the worst restart
(`clusters.worst_restart`). The numbers behind `scenarios.restarts.DEFAULT_RESTARTS` came from
it (results in benchmarks/results/attack_restarts.jsonl).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    from pytest_erasure.checks import measure
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.config import DEFAULT_CONCEPTS, SHAPES
    from pytest_erasure.context import Context
    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.session import default_config
    from pytest_erasure.stats.clusters import worst_restart

    parser = argparse.ArgumentParser()
    parser.add_argument("--erased", default="uce-circle", help="a model in fixtures/shapes/erased")
    parser.add_argument("--scenario", default="embedding-white")
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--cache", default="/tmp/attack-restarts-cache")
    args = parser.parse_args()

    config = default_config(erased_model=SHAPES / "erased" / args.erased, samples=args.samples,
                            cache_dir=args.cache,
                            scenario_options={"attack-restarts": args.restarts})
    ctx = Context(config, load_concepts(DEFAULT_CONCEPTS))
    circle = ctx.concepts.concepts["circle"]
    start = time.time()
    plan = registry()[args.scenario].plan(ctx, circle, "erased", args.samples)
    measured = measure(ctx, "erased", plan, circle)
    rate, present = measured.rate, measured.present
    outcomes: dict[int, list[bool]] = {}
    inner: dict[int, list[str]] = {}
    for item, restart, hit in zip(plan.inputs, plan.facts["input_restarts"], present, strict=True):
        outcomes.setdefault(restart, []).append(hit)
        inner.setdefault(restart, []).append(item.cluster)
    summary = worst_restart(outcomes, inner)

    def final_loss(run: dict) -> float:
        return run["final_loss"] if "final_loss" in run else run["searches"][0]["final_loss"]

    print(json.dumps({
        "erased": args.erased, "scenario": args.scenario, "restarts": args.restarts,
        "samples": args.samples, "seconds": round(time.time() - start), "crr": rate.crr,
        "hits_per_restart": {r: [sum(v), len(v)] for r, v in outcomes.items()},
        "seeds": [run["seed"] for run in plan.facts["attack_runs"]],
        "final_loss": [final_loss(run) for run in plan.facts["attack_runs"]],
        "pooled": str(summary.pooled), "worst": str(summary.worst),
        "worst_restart": summary.worst_restart}))


if __name__ == "__main__":
    main()
