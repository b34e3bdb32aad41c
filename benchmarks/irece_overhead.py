"""Wall time per image of the undefended vs the IRECE-defended pipeline (target ratio <= 1.05).

Runs both in one process, interleaved A/B (alternating which goes first) over several
repetitions, and reports the median of the per-repetition ratios, so drift in a shared CPU's
load hits both arms alike. Process CPU time is reported beside wall time: on a CPU shared with
another job it is the steadier of the two. Prints JSON and writes it to
benchmarks/results/irece_overhead.json.

    python benchmarks/irece_overhead.py                      # shapes world if built, else tiny
    python benchmarks/irece_overhead.py --standard PATH --erased PATH --batch 8 --reps 7

With only a standard model the same UNet serves as erased and standard (the cost is what is
measured, not the defense's effect); the output says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_STANDARD = ROOT / "fixtures" / "shapes" / "standard"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "irece_overhead.json"


def load(path: Path, dtype: str):
    import torch
    from diffusers import StableDiffusionPipeline

    # Models may be stored in fp16 (the shapes world is); CPU runs them in float32.
    return StableDiffusionPipeline.from_pretrained(
        path, local_files_only=True, safety_checker=None, requires_safety_checker=False,
        torch_dtype=getattr(torch, dtype))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standard", type=Path, default=None,
                        help=f"standard model folder (default: {DEFAULT_STANDARD} if it exists, "
                             "else a tiny random pipeline)")
    parser.add_argument("--erased", type=Path, default=None,
                        help="erased model folder (default: the standard model itself)")
    parser.add_argument("--prompt", default="a circle", help="generation prompt")
    parser.add_argument("--mask-prompt", default="a circle", help="IRECE's concept prompt")
    parser.add_argument("--term", default="circle", help="concept term within the mask prompt")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--batch", type=int, default=8, help="images per pipeline call")
    parser.add_argument("--reps", type=int, default=7, help="A/B repetitions (after one warm-up)")
    parser.add_argument("--t-star", type=float, default=0.2)
    parser.add_argument("--tau", type=float, default=0.4)
    parser.add_argument("--irece-steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import torch

    from pytest_erasure.defenses.irece import IRECE, concept_conditioning
    from pytest_erasure.testing import tiny_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    notes = []
    standard_path = args.standard or (DEFAULT_STANDARD if DEFAULT_STANDARD.exists() else None)
    if standard_path is not None:
        standard = load(standard_path, args.dtype)
        model = str(standard_path)
    else:
        standard = tiny_pipeline()
        model = "tiny_pipeline() (random weights; the shapes world's standard model is not built)"
    if args.erased is not None:
        erased = load(args.erased, args.dtype)
    else:
        erased = standard
        notes.append("only one model: its UNet serves as both standard and erased")

    embeds, tokens = concept_conditioning(standard, args.mask_prompt, args.term)
    irece = IRECE(standard.unet, embeds, tokens, num_inference_steps=args.steps,
                  t_star=args.t_star, tau=args.tau, n_steps=args.irece_steps)

    in_callback: list[float] = []

    def timed(pipe, step_index, timestep, callback_kwargs):
        start = time.perf_counter()
        out = irece(pipe, step_index, timestep, callback_kwargs)
        in_callback[-1] += time.perf_counter() - start
        return out

    cpu_seconds: dict[bool, list[float]] = {False: [], True: []}

    def run(defended: bool, seed: int) -> float:
        irece.reset()
        if defended:
            in_callback.append(0.0)
        kwargs = ({"callback_on_step_end": timed,
                   "callback_on_step_end_tensor_inputs": irece.tensor_inputs} if defended else {})
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.no_grad():
            erased([args.prompt] * args.batch, num_inference_steps=args.steps,
                   guidance_scale=args.guidance, generator=torch.Generator().manual_seed(seed),
                   output_type="pt", **kwargs)
        cpu_seconds[defended].append((time.process_time() - cpu_start) / args.batch)
        return (time.perf_counter() - start) / args.batch

    erased.set_progress_bar_config(disable=True)
    run(False, 0), run(True, 0)  # warm-up: allocator, first-call paths
    in_callback.clear()
    cpu_seconds[False].clear(), cpu_seconds[True].clear()
    undefended, defended, ratios = [], [], []
    for rep in range(args.reps):
        if rep % 2 == 0:
            a = run(False, rep)
            b = run(True, rep)
        else:
            b = run(True, rep)
            a = run(False, rep)
        undefended.append(a)
        defended.append(b)
        ratios.append(b / a)

    result = {
        "benchmark": "irece_overhead",
        "model": model,
        "erased": str(args.erased) if args.erased else model,
        "notes": notes,
        "steps": args.steps,
        "guidance": args.guidance,
        "batch": args.batch,
        "reps": args.reps,
        "irece": irece.describe(),
        "standard_forwards_per_batch": len(irece.steps),
        "seconds_per_image_undefended": undefended,
        "seconds_per_image_defended": defended,
        "ratios": ratios,
        "median_seconds_per_image_undefended": statistics.median(undefended),
        "median_seconds_per_image_defended": statistics.median(defended),
        "median_ratio": statistics.median(ratios),
        "median_seconds_per_image_in_irece": statistics.median(in_callback) / args.batch,
        "irece_share_of_undefended_time": (statistics.median(in_callback) / args.batch
                                           / statistics.median(undefended)),
        "cpu_ratios": [b / a for a, b in zip(cpu_seconds[False], cpu_seconds[True], strict=True)],
        "median_cpu_ratio": statistics.median(
            b / a for a, b in zip(cpu_seconds[False], cpu_seconds[True], strict=True)),
        "target_ratio": 1.05,
        "meets_target": statistics.median(ratios) <= 1.05,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "device": "cpu",
        "dtype": args.dtype,
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
