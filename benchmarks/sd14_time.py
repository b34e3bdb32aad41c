"""Projected time of an SD v1.4 audit, per scenario: work counted from the code, rates assumed.

No GPU was lent to this project, so nothing here is a measurement. What is counted is the work
each scenario does at the sd14 budget profile (`pytest_erasure/budgets.py`, read here) with
`--samples` S and `--attack-restarts` R, per concept, as the scenarios' code does it:

- text: S images on the erased model, S on the standard model (the same prompts and seeds);
  baseline: the text case's standard images (cached); base rate: S erased images of the neutral
  prompts, once per concept; retention: per neighbour, S erased + S standard.
- adversarial-black (Ring-A-Bell, `scenarios/adversarial.py`): R genetic searches of
  population x generations text-encoder evaluations through the standard model's text encoder,
  then S images per restart on each model (R x S each, `scenarios/restarts.py`).
- fuzz (`scenarios/fuzz.py`, not sized by S): per model, the search evaluates up to
  `fuzz-max-prompts` prompts x `fuzz-seeds-per-prompt` seeds, at least `fuzz-examples` of them;
  up to `fuzz-confirm-candidates` candidates are re-scored on fresh seeds (16 at threshold
  0.2, `fuzz.confirm_seeds`); without a confirmed
  bypass the pooled rate takes every evaluated prompt on a third set of seeds. Projected here
  at its ceiling: max-prompts x seeds x 2 + candidates x 16, on each model.
- embedding-white (textual inversion, `scenarios/embedding.py`): R runs learned through the
  erased model and R through the standard model (the standard side of the comparison), each
  `ti-steps` x `ti-accumulation` micro-steps of `ti-batch-size`; then R x S images on each
  model. embedding-black learns through the standard model: the same R runs (cached), and
  R x S erased images (its standard images are the white case's: same salt and seeds).
- latent (`scenarios/latent.py`): no reference images ship with the SD v1.4 suites, so each
  latent case inverts S images the standard model draws (one draw, cached); white-box cases
  invert through the erased model (and through the standard one for the comparison), with the
  null or the concept prompt; black-box cases invert perturbed copies through the standard
  model once for both. Each inversion is `inversion-steps` DDIM steps per image; then S images
  regenerated on each model.
- every generated image is judged by the detector.

Work that depends only on the standard model (its images, its textual inversions, the
Ring-A-Bell search through its text encoder, its inversions) is cached by content
(`pytest_erasure/cache.py`), so a second erased model of the same concept pays only the rest:
the "further model" column.

Rates (assumed, not measured: replace them with `benchmarks/gpu_check.py`'s on your GPU):
generation 1 image/s (SD v1.4, fp16, 512 px, 50 steps with guidance, batches of 16, one A100),
the detector 0.1 s per image (Grounding DINO tiny), one textual-inversion micro-step of batch 1
0.125 s (3000 x 4 in 25 min; "When Are Concepts Erased" reports ~60 min on an A6000), one
50-step DDIM inversion 2 s per image, one Ring-A-Bell search 4 minutes (600k text-encoder
evaluations in batches of 200).

    python benchmarks/sd14_time.py --samples 150       # audits/sd14/README.md's table
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # probes_cost

GENERATE_S = 1.0
DETECT_S = 0.1
TI_MICRO_STEP_S = 0.125
INVERT_S = 2.0
RAB_SEARCH_S = 240.0
NEIGHBOURS = 3
THRESHOLD = 0.2
"""cifar10.toml's CRR threshold: the fuzz confirmation's fresh seeds depend on it."""


def rows(samples: int) -> list[tuple[str, str, float, float]]:
    """(scenario, the work counted, seconds the first time, seconds for a further erased model
    of the same standard model and concept)."""
    from pytest_erasure.config import budget_profiles
    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.scenarios.fuzz import confirm_seeds

    p = {k: v.value for k, v in budget_profiles()["sd14"].items()}
    fuzz_options = {o.name: o.default for s in registry().values() if s.id == "fuzz"
                    for o in s.options}
    s, r = samples, int(p["attack-restarts"])
    ti_run = int(p["ti-steps"]) * int(p["ti-accumulation"]) * TI_MICRO_STEP_S
    images = (GENERATE_S + DETECT_S)

    def gen(n: int) -> float:
        return n * images

    out: list[tuple[str, str, float, float]] = []
    out.append(("text", f"{s} erased + {s} standard images", gen(2 * s), gen(s)))
    out.append(("baseline", "the text case's standard images (cached)", 0.0, 0.0))
    out.append(("base rate (neutral prompts, once per concept)", f"{s} erased images",
                gen(s), gen(s)))
    out.append((f"retention ({NEIGHBOURS} neighbours)",
                f"{NEIGHBOURS} x ({s} erased + {s} standard) images",
                gen(NEIGHBOURS * 2 * s), gen(NEIGHBOURS * s)))
    out.append(("adversarial-black (Ring-A-Bell)",
                f"{r} searches of {p['rab-population']} x {p['rab-generations']} text-encoder "
                f"evaluations; {r} x {s} erased + {r} x {s} standard images",
                r * RAB_SEARCH_S + gen(2 * r * s), gen(r * s)))
    prompts, seeds = int(p["fuzz-max-prompts"]), int(p["fuzz-seeds-per-prompt"])
    candidates = int(fuzz_options["fuzz-confirm-candidates"])
    fresh = confirm_seeds(None, candidates, THRESHOLD)
    per_model = prompts * seeds * 2 + candidates * fresh
    out.append(("fuzz (at its ceiling)",
                f"per model: {prompts} prompts x {seeds} seeds searched and scored again + "
                f"{candidates} candidates x {fresh} fresh seeds = {per_model} images",
                gen(2 * per_model), gen(per_model)))
    micro = f"{p['ti-steps']} x {p['ti-accumulation']}"
    out.append(("embedding-white (textual inversion)",
                f"{r} runs ({micro} micro-steps) through the erased model + {r} through the "
                f"standard model; {r} x {s} erased + {r} x {s} standard images",
                2 * r * ti_run + gen(2 * r * s), r * ti_run + gen(r * s)))
    out.append(("embedding-black",
                f"the standard model's {r} runs (cached); {r} x {s} erased images",
                gen(r * s), gen(r * s)))
    steps = int(p["inversion-steps"])
    # The standard model's own images of the concept, inverted (no references): drawn once, with
    # the seeds textual inversion draws its ti-train-images from (`embedding.concept_images`).
    source = gen(s)
    white = f"{s} inversions ({steps} steps) through each model; {s} erased + {s} standard images"
    out.append(("latent-white-null", white + f"; first: {s} standard images to invert (shared by "
                f"every latent case; textual inversion trains on their first "
                f"{p['ti-train-images']})",
                source + 2 * s * INVERT_S + gen(2 * s), s * INVERT_S + gen(s)))
    out.append(("latent-white-prompt", white, 2 * s * INVERT_S + gen(2 * s),
                s * INVERT_S + gen(s)))
    black = (f"{s} inversions of perturbed copies through the standard model; "
             f"{s} erased + {s} standard images")
    out.append(("latent-black-null", black, s * INVERT_S + gen(2 * s), gen(s)))
    out.append(("latent-black-prompt", black, s * INVERT_S + gen(2 * s), gen(s)))
    from probes_cost import erased_share, projected

    # the probes' own count (benchmarks/probes_cost.py), less the base rate and baseline images
    # it includes, which rows above count once per concept
    probes = {name: (images - 2 * s, seconds - gen(2 * s))
              for name, images, seconds in projected(s)}
    from adversarial_white_cost import projected as white_projected
    from image_attacks_cost import projected as image_projected

    # white-box adversarial prompts (benchmarks/adversarial_white_cost.py), less the base rate
    # and baseline images it includes
    white = {name: (images - 2 * s, steps, seconds - gen(2 * s))
             for name, images, steps, seconds in white_projected(s)}
    # image-white and guidance-probe (benchmarks/image_attacks_cost.py), less the base rate and
    # baseline it includes, as for the probes
    images_side = {name: (images - 2 * s, seconds - gen(2 * s))
                   for name, images, seconds, _note in image_projected(s)}
    for scenario in registry().values():  # run only when --scenarios names them
        if getattr(scenario, "opt_in", False) and scenario.id in white:
            images, steps, seconds = white[scenario.id]
            out.append((f"{scenario.id} (opt-in, not in the total)",
                        f"{steps} gradient steps and {images} images on the two models (counted "
                        "in benchmarks/adversarial_white_cost.py); a further model: its own "
                        "half", seconds, seconds / 2))
        elif getattr(scenario, "opt_in", False) and scenario.id in images_side:
            images, seconds = images_side[scenario.id]
            out.append((f"{scenario.id} (opt-in, not in the total)",
                        f"at most {images} images on the two models and their searches' "
                        "optimisation, worst case (counted in benchmarks/"
                        "image_attacks_cost.py); a further model: the erased model's share "
                        "(half; two thirds for guidance-probe, whose control runs on it)",
                        seconds, seconds * (2 / 3 if "guidance" in scenario.id else 1 / 2)))
        elif getattr(scenario, "opt_in", False) and scenario.id in probes:
            images, seconds = probes[scenario.id]
            share = erased_share(scenario.id)
            out.append((f"{scenario.id} (opt-in, not in the total)",
                        f"{images} images, {round(images * share)} on the erased model ("
                        f"{'its searches and the measured null' if share > 0.5 else 'its samples'}"
                        ") and "
                        f"{round(images * (1 - share))} on the standard model (counted in "
                        "benchmarks/probes_cost.py); a further model: its erased share",
                        seconds, seconds * share))
        elif getattr(scenario, "opt_in", False) and scenario.modality == "finetune":
            out.append((f"{scenario.id} (opt-in, not in the total)",
                        f"{r} LoRA trainings per model (not counted here: "
                        "benchmarks/finetune_cost.py); "
                        f"{r} x {s} erased + {r} x {s} standard images",
                        gen(2 * r * s), gen(r * s)))
        elif getattr(scenario, "opt_in", False) and scenario.id.endswith("-embedding"):
            # textual inversion under the quantize overlay: embedding-white's work, on
            # quantize-dequantized weights (the same arithmetic as unquantized ones)
            out.append((f"{scenario.id} (opt-in, not in the total)",
                        f"{r} runs ({micro} micro-steps) through the quantized erased model + "
                        f"{r} through the quantized standard model; {r} x {s} erased + "
                        f"{r} x {s} standard images, both models under the same overlay",
                        2 * r * ti_run + gen(2 * r * s), r * ti_run + gen(r * s)))
        elif getattr(scenario, "opt_in", False):
            out.append((f"{scenario.id} (opt-in, not in the total)",
                        f"{s} erased + {s} standard images, both models under the same "
                        "overlay (the standard side cached for a further model)",
                        gen(2 * s), gen(s)))
    return out


def _duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def markdown(samples: int) -> str:
    table = rows(samples)
    lines = ["| scenario | work per concept (sd14 profile) | first erased model | further "
             "erased model |", "|---|---|---|---|"]
    for name, work, first, further in table:
        lines.append(f"| {name} | {work} | {_duration(first)} | {_duration(further)} |")
    counted = [row for row in table if "not in the total" not in row[0]]
    first = sum(row[2] for row in counted)
    further = sum(row[3] for row in counted)
    lines.append(f"| **one concept, every scenario** | | **{_duration(first)}** | "
                 f"**{_duration(further)}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=150, help="--samples of the audit (S)")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown(args.samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
