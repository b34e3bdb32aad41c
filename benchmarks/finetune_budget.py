"""Which shapes-world finetune-concept budget keeps the attack's positive control strong?

The shapes profile's first budget (60 steps, lr 1e-3, rank 4, 16 shots) recovered circle through
UCE but also cost the standard model most of its circles (97% -> 28%), which makes ESD-x's case
inconclusive (issue 26). This trains the LoRA of each candidate budget on the standard model,
the UCE-erased and the ESD-x-erased model (the same references, captions and seed the audit
uses for restart 0) and counts the circles the shapes detector finds in 32 images of the
concept's 8 declared prompts (fixed seeds, 25 steps), before and after.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/finetune_budget.py --seeds 0 1 2 \
        --out benchmarks/results/finetune_budget.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "fixtures" / "shapes"
MODELS = {"standard": SHAPES / "standard", "uce-circle": SHAPES / "erased" / "uce-circle",
          "esd-x-circle": SHAPES / "erased" / "esd-x-circle"}
CANDIDATES = [
    {"rank": 4, "steps": 60, "lr": 1e-3, "shots": 16, "batch_size": 4},   # the first budget
    {"rank": 4, "steps": 60, "lr": 3e-4, "shots": 16, "batch_size": 4},
    {"rank": 4, "steps": 30, "lr": 1e-3, "shots": 16, "batch_size": 4},
    {"rank": 4, "steps": 60, "lr": 1e-4, "shots": 16, "batch_size": 4},
    {"rank": 1, "steps": 60, "lr": 1e-3, "shots": 16, "batch_size": 4},
    {"rank": 4, "steps": 20, "lr": 1e-3, "shots": 16, "batch_size": 4},
    {"rank": 4, "steps": 60, "lr": 5e-4, "shots": 16, "batch_size": 4},
    {"rank": 4, "steps": 30, "lr": 1e-3, "shots": 16, "batch_size": 4, "accumulation": 4},
    {"rank": 4, "steps": 60, "lr": 1e-3, "shots": 16, "batch_size": 4, "accumulation": 4},
]


def pipeline(path: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    from pytest_erasure.attacks.finetune import train_lora
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.detectors.base import DetectorSpec, build_detector
    from pytest_erasure.overlays import Overlaid
    from pytest_erasure.overlays.lora import lora
    from pytest_erasure.references import load_reference_images

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--only", type=int, nargs="*", help="candidate indices to run")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0],
                        help="training seeds (one LoRA each, as --attack-restarts runs)")
    args = parser.parse_args()
    circle = load_concepts(ROOT / "audits" / "shapes.toml").concepts["circle"]
    prompts = [p.replace("{concept}", "circle") for p in circle.prompts]
    prompts = (prompts * args.images)[:args.images]
    detector = build_detector(DetectorSpec("shapes", SHAPES / "detector", {"threshold": 0.5}),
                              "cpu")
    refs = load_reference_images(circle, (32, 32))

    def count(pipe) -> int:
        images = pipe(prompts, num_inference_steps=25, output_type="pt",
                      generator=torch.Generator().manual_seed(1)).images
        return int(sum(detector.detect(images, "circle").present))

    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    pipes = {name: pipeline(path) for name, path in MODELS.items()}
    before = {name: count(p) for name, p in pipes.items()}
    print("before", before, flush=True)
    for i, budget in enumerate(CANDIDATES):
        if args.only and i not in args.only:
            continue
        row = {"budget": budget, "images": args.images, "seeds": args.seeds,
               "before": before, "after": {}, "seconds": {}}
        for name, pipe in pipes.items():
            row["after"][name], row["seconds"][name] = [], []
            for seed in args.seeds:
                start = time.perf_counter()
                images = refs[:budget["shots"]]
                state, _ = train_lora(pipe, images, [circle.texts()[0]] * len(images),
                                      rank=budget["rank"], steps=budget["steps"],
                                      lr=budget["lr"], batch_size=budget["batch_size"],
                                      accumulation=budget.get("accumulation", 1), seed=seed)
                row["seconds"][name].append(round(time.perf_counter() - start, 1))
                overlaid = Overlaid()
                with overlaid.applied(lambda role, p=pipe: p, (("erased", lora(state)),)):
                    row["after"][name].append(count(overlaid.active["erased"]))
            print(budget, name, row["after"][name], flush=True)
        rows.append(row)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
