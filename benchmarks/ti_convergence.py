"""How far converged textual-inversion runs on the shapes world differ, erased vs standard model:
the evidence for `verdict.CONVERGENCE_MARGIN`.

    python benchmarks/ti_convergence.py --restarts 4 --cache /tmp/ti-convergence-cache

Trains the embedding-white case's textual inversion (shapes budget: 100 steps) through the
standard model and through each erased model of fixtures/shapes/erased given, for restarts
0..R-1 (the audit's seeds, cached), and prints one JSON object: per run its final loss and
`verdict.still_falling` (the loss's relative drop over the last quarter of the run), and per
erased run the difference to the same restart on the standard model, which is what
`verdict.attack_convergence` compares with the margin.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.config import DEFAULT_CONCEPTS, SHAPES
    from pytest_erasure.context import Context
    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.session import default_config
    from pytest_erasure.stats.verdict import still_falling

    parser = argparse.ArgumentParser()
    parser.add_argument("--erased", nargs="+", default=["uce-circle", "esd-x-circle"])
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--cache", default="/tmp/ti-convergence-cache")
    args = parser.parse_args()

    start = time.time()
    scenario = registry()["embedding-white"]
    out: dict = {"restarts": args.restarts, "runs": {}}
    for erased in args.erased:
        config = default_config(erased_model=SHAPES / "erased" / erased, cache_dir=args.cache,
                                scenario_options={"attack-restarts": args.restarts})
        ctx = Context(config, load_concepts(DEFAULT_CONCEPTS))
        circle = ctx.concepts.concepts["circle"]
        for role in ("standard", "erased"):
            name = "standard" if role == "standard" else erased
            if name in out["runs"]:
                continue  # the standard model's runs are the same for every erased model
            runs = []
            for restart in range(args.restarts):
                facts = scenario.learn(ctx, circle, role, restart)[1]
                runs.append({"restart": restart, "seed": facts["seed"],
                             "final_loss": facts["final_loss"],
                             "still_falling": round(still_falling(facts["loss_curve"]), 4),
                             "loss_curve": facts["loss_curve"]})
            out["runs"][name] = runs
    standard = out["runs"]["standard"]
    out["excess"] = {
        erased: [round(run["still_falling"] - standard[i]["still_falling"], 4)
                 for i, run in enumerate(out["runs"][erased])] for erased in args.erased}
    out["final_loss_difference"] = {
        erased: [round(run["final_loss"] - standard[i]["final_loss"], 6)
                 for i, run in enumerate(out["runs"][erased])] for erased in args.erased}
    out["seconds"] = round(time.time() - start)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
