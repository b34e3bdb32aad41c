"""Which shapes-world finetune-concept budget keeps the attack's positive control strong?

The shapes profile's first budget (60 steps, lr 1e-3, rank 4, 16 shots) recovered circle through
UCE but also cost the standard model most of its circles (97% -> 28%), which makes ESD-x's case
inconclusive (issue 26). This trains the LoRA of each candidate budget on the standard model,
the UCE-erased and the ESD-x-erased model (the audit's references and caption, training seeds
`--seeds`, not the audit's) and counts the circles the shapes detector finds in 32 images of
the concept's 8 declared prompts (one generator seeded 1, 25 steps), before and after.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/finetune_budget.py --seeds 0 1 2 \
        --out benchmarks/results/finetune_budget.json

A LoRA's effect on the standard model depends a lot on its training seed (at 30 steps, lr 1e-3:
5 to 25 circles of 32 across seeds), so counts from seeds 0, 1, 2 are not the audit's counts.
`--audit-restarts R` measures what `pytest audits/ --scenarios finetune-concept` does for the
default `--seed 0`: restart r's LoRA from the audit's restart seed (`restarts.restart_seed`),
and its images from the audit's inputs for that restart (per-image seeds, prompts as
`FinetuneScenario.plan` assigns them, `generate.generate` on batch-invariant layers, the
detector on uint8 images), so its counts are the audit's restart by restart:

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/finetune_budget.py --only 2 \
        --models standard --audit-restarts 3 --out benchmarks/results/finetune_budget_audit.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

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


def audit_plan(restarts: int, images: int, prompts: list[str]) -> tuple[list[int], list[list]]:
    """(each restart's LoRA seed, each restart's generation inputs) as an audit with the
    default --seed 0 draws them for finetune-concept on circle (`FinetuneScenario.learn` and
    `.plan`): the context's own seed formula, called on a stand-in holding only the seed."""
    from pytest_erasure.context import Context
    from pytest_erasure.records import GenerationInput
    from pytest_erasure.scenarios.restarts import restart_of, restart_seed, slot_in_restart

    ctx = SimpleNamespace(config=SimpleNamespace(seed=0))
    ctx.seeds = lambda n, salt="": Context.seeds(ctx, n, salt)  # type: ignore[arg-type]
    salt = "finetune-concept/circle"
    train = [restart_seed(ctx, ctx.seeds(1, salt)[0], salt, r)  # type: ignore[arg-type]
             for r in range(restarts)]
    inputs: list[list] = [[] for _ in range(restarts)]
    for i, seed in enumerate(ctx.seeds(images * restarts, salt)):
        prompt = prompts[slot_in_restart(i, restarts) % len(prompts)]
        inputs[restart_of(i, restarts)].append(GenerationInput(seed=seed, prompt=prompt,
                                                               label=prompt))
    return train, inputs


def main() -> None:
    from pytest_erasure.attacks.finetune import train_lora
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.detectors.base import DetectorSpec, build_detector
    from pytest_erasure.generate import Sampling, generate
    from pytest_erasure.invariant import make_batch_invariant
    from pytest_erasure.overlays import Overlaid
    from pytest_erasure.overlays.lora import lora
    from pytest_erasure.references import load_reference_images

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=32, help="images per LoRA")
    parser.add_argument("--only", type=int, nargs="*", help="candidate indices to run")
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="*", default=[0],
                        help="training seeds (one LoRA each, as --attack-restarts runs)")
    parser.add_argument("--audit-restarts", type=int, default=0,
                        help="instead of --seeds: the audit's seeds and inputs for R restarts")
    args = parser.parse_args()
    circle = load_concepts(ROOT / "audits" / "shapes.toml").concepts["circle"]
    texts = circle.texts()
    prompts = (texts * args.images)[:args.images]
    detector = build_detector(DetectorSpec("shapes", SHAPES / "detector", {"threshold": 0.5}),
                              "cpu")
    refs = load_reference_images(circle, (32, 32))
    audit = args.audit_restarts > 0
    seeds, inputs = (audit_plan(args.audit_restarts, args.images, texts) if audit
                     else (args.seeds, []))
    sampling = Sampling(25, 7.5, 32, 32, "cpu", "float32", batch_invariant=True)

    def count(pipe, run: int) -> int:
        if audit:  # the audit's path: its inputs, generator and uint8 images
            images = generate(pipe, inputs[run], sampling, 16)[0].float() / 255.0
        else:
            images = pipe(prompts, num_inference_steps=25, output_type="pt",
                          generator=torch.Generator().manual_seed(1)).images
        return int(sum(detector.detect(images, "circle").present))

    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    pipes = {name: pipeline(MODELS[name]) for name in args.models}
    if audit:  # as the audit loads models on the CPU (`--batch-invariant auto`)
        make_batch_invariant(*(getattr(p, c) for p in pipes.values()
                               for c in ("unet", "vae", "text_encoder")))
    runs = range(len(seeds))
    before = {name: [count(p, r) for r in runs] if audit else count(p, 0)
              for name, p in pipes.items()}
    print("before", before, flush=True)
    for i, budget in enumerate(CANDIDATES):
        if args.only and i not in args.only:
            continue
        row = {"budget": budget, "images": args.images, "seeds": seeds,
               "generation": "audit inputs (--seed 0)" if audit else "one generator, seed 1",
               "before": before, "after": {}, "seconds": {}}
        for name, pipe in pipes.items():
            row["after"][name], row["seconds"][name] = [], []
            for run, seed in enumerate(seeds):
                start = time.perf_counter()
                images = refs[:budget["shots"]]
                state, _ = train_lora(pipe, images, [texts[0]] * len(images),
                                      rank=budget["rank"], steps=budget["steps"],
                                      lr=budget["lr"], batch_size=budget["batch_size"],
                                      accumulation=budget.get("accumulation", 1), seed=seed)
                row["seconds"][name].append(round(time.perf_counter() - start, 1))
                overlaid = Overlaid()
                with overlaid.applied(lambda role, p=pipe: p, (("erased", lora(state)),)):
                    row["after"][name].append(count(overlaid.active["erased"], run))
            print(budget, name, row["after"][name], flush=True)
        rows.append(row)
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
