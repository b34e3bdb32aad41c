"""Seconds per image-white / guidance-probe case on the shapes world (measured: read from the
audits' report.json) and the projected cost of one case at the sd14 budgets (counted from the
scenarios' code, rates assumed as in `benchmarks/sd14_time.py`: no GPU was lent to this task).

Work per case at --samples S, both models (the erased one and the standard one, each searched),
the base rate's S neutral images and the baseline's S standard images beside it:
- image-white (RECALL): per search the reference's img2img, then per round (at most the
  profile's timesteps) `iterations` PGD iterations, each a UNet forward on the reference's CFG
  pair (no gradient) and a forward + backward on the adversarial one, then one judged img2img
  (the schedule entered at the img2img step, 80% of its steps: counted as one image). A search
  stops at its first
  success, so the projection is the worst case (no search succeeds) and the published ~64 s per
  attack (RECALL, an A100-class GPU) is beside it. Under IRECE with the adaptive threat each
  search may run both forms: up to twice the rounds;
- guidance-probe: S searches x the grid's tries on each model, and the guided control's S x
  tries on the erased model. With the default guide (`--guidance-classifier latent`, the
  paper's classifier of noisy latents) a guided step adds the gradient of a small MLP on the
  latent (assumed free beside the UNet), and the classifier is trained once per concept: the
  standard model draws `--guidance-classifier-images` per class (concept and neutral prompts,
  each detected), then `--guidance-classifier-steps` steps of batch 8 x 7 noisings (assumed
  CLASSIFIER_STEP_S each). With `--guidance-classifier detector` every step of a guided try
  decodes the predicted clean image and backpropagates through the VAE decoder and the
  detector (assumed: 3 UNet-forward-equivalents per step, the VAE decoder at 512 px being
  about one).

Rates: one UNet forward of batch 1 = GENERATE_S / 100 (50 steps x 2 for guidance); a forward +
backward = one textual-inversion micro-step (TI_MICRO_STEP_S, batch 1).

    python benchmarks/image_attacks_cost.py --samples 150 [REPORT.json ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measured import print_measured  # noqa: E402

GUIDED_STEP_FORWARDS = 3.0
"""Assumed: a detector-guided step's extra work (VAE decode + its backward + the detector's) in
UNet forwards of batch 1 (`--guidance-classifier detector`)."""
CLASSIFIER_STEP_S = 0.005
"""Assumed: one training step of the latent classifier (an MLP of 16,384 -> 1,024 -> 512 -> 1
on 56 noised latents, forward and backward) on the GPU."""


def projected(samples: int) -> list[tuple[str, int, float, str]]:
    """(scenario, images generated, projected seconds, note) per case at the sd14 budgets."""
    from sd14_time import DETECT_S, GENERATE_S, TI_MICRO_STEP_S

    from pytest_erasure.scenarios.guidance import BUDGETS as GUIDANCE
    from pytest_erasure.scenarios.image_white import BUDGETS as RECALL

    forward = GENERATE_S / 100
    one = GENERATE_S + DETECT_S
    context = 2 * samples * one
    r = {k: v.value for k, v in RECALL["sd14"].items()}
    rounds, iterations = int(r["recall-timesteps"]), int(r["recall-iterations"])
    per_round = iterations * (2 * forward + 2 * TI_MICRO_STEP_S) + one
    search = one + rounds * per_round
    recall_images = 2 * samples * (1 + rounds) + 2 * samples
    recall = 2 * samples * search + context
    g = {k: v.value for k, v in GUIDANCE["sd14"].items()}
    tries = len(str(g["guidance-scales"]).split(",")) * len(str(g["guidance-etas"]).split(","))
    guided = GENERATE_S + DETECT_S  # the latent classifier's gradient: assumed free
    per_class = int(g["guidance-classifier-images"])
    training = 2 * per_class * one + int(g["guidance-classifier-steps"]) * CLASSIFIER_STEP_S
    guidance_images = 3 * samples * tries + 2 * samples + 2 * per_class
    guidance = 3 * samples * tries * guided + context + training
    return [("image-white", recall_images, recall,
             f"worst case, no search succeeds: {search:.0f} s per search ({rounds} rounds x "
             f"{iterations} iterations); published ~64 s per attack (stops at first success); "
             "under IRECE (adaptive threat) up to 2x"),
            ("guidance-probe", guidance_images, guidance,
             f"{tries} guided tries per search on both models and the guided control; "
             f"{guided:.1f} s per guided image; the latent classifier {training / 60:.0f} min "
             f"({2 * per_class} standard images and its training), once per concept; with "
             f"--guidance-classifier detector "
             f"{GENERATE_S + 50 * GUIDED_STEP_FORWARDS * forward + DETECT_S:.1f} s per image")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("reports", nargs="*", type=Path,
                        help="report.json files of shapes-world runs (measured seconds)")
    args = parser.parse_args(argv)
    print_measured(args.reports)
    print(f"projected at the sd14 budgets, --samples {args.samples} (rates assumed: "
          "benchmarks/sd14_time.py):")
    for scenario, images, seconds, note in projected(args.samples):
        print(f"  {scenario}: {images} images at most, {seconds / 3600:.1f} h ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
