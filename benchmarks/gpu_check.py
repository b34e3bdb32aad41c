"""The GPU check: SD v1.4 as it ships, at the budgets a real audit uses, on one GPU in <= 8 min.

Everything runs on the full-size SD v1.4 architecture (860M UNet, CLIP ViT-L/14 text encoder,
the published configs and PNDM scheduler with skip_prk_steps, the real CLIP tokenizer) with
random fp16 weights at 512 px, 50 PNDM steps: no real weights exist on the machines this project
is built on, and none are needed to measure speed, memory and whether anything breaks. It
measures, and writes to `--out` (default benchmarks/results/gpu_check.json):

- raw diffusers images/s at batch 8 and 16 (`StableDiffusionPipeline.__call__`, CFG 7.5);
- the plugin's text case on the same model (a real `pytest audits/` run, `--scenarios text`,
  no cache): images/s of the case, and its ratio to raw diffusers at batch 16;
- IRECE's overhead per image (defended / undefended wall time at batch 8);
- textual-inversion steps/s at the sd14 budget profile's micro-batch and accumulation;
- DDIM inversion seconds per image (50 steps);
- the quantize overlay's real low-bit kernels (`--quantize-kernels native`: int8 and 4-bit
  weight-only GEMMs, fp8 `_scaled_mm` on compute capability >= 8.9, NF4 through bitsandbytes
  where it is installed), each against quantize-dequantize on the same UNet: whether this
  torch and GPU run it (the probe's reason where not), how many Linear layers took it, seconds
  and peak memory of a batch, and the largest pixel difference between the two paths. These
  CUDA branches were written without a GPU: this is their first test;
- peak GPU memory of each part;
- the paper-scale audit time projected from those rates: 10 concepts x every scenario x 100
  images + 20 TI runs at the sd14 profile.

It fails loudly (non-zero exit, the reason on the last line) on anything that would break a real
run: non-finite or constant images in fp16, a PNDM run that is not N+1 timesteps, an IRECE mask
that never fires, a TI loss that is not finite, an inversion that does not round-trip finitely,
an audit that exits with anything but 0/1.

    python benchmarks/gpu_check.py                       # on the GPU machine (cuda, fp16, 512 px)
    python benchmarks/gpu_check.py --smoke               # here: CPU, reduced model, 64 px, seconds

Preparing a GPU machine that has torch (with its CUDA libraries) but neither diffusers nor our
pure-Python dependencies, and no network. Here, from the repository root, with network (pip
fetches each pinned release and builds openai-clip's sdist into a wheel):

    pip wheel -w .gpu-wheels --no-deps -c constraints.txt -r benchmarks/gpu_wheels.txt

This is 49 wheels, 58 MiB for CPython 3.11 on x86-64 Linux (the largest are numpy 16 MiB and
transformers 13 MiB); `.gpu-wheels/` is git-ignored, so copy it to the machine beside the
tree. scipy (35 MiB, needed only for --sampler lms) and hf-xet
(4 MiB, needed only for Hub downloads) are left out so the wheels stay under the 64 MiB a
device run carries. For a machine whose Python is not 3.11, add
`--only-binary=:all: --python-version 3.X --platform manylinux_2_28_x86_64` (openai-clip then
has to be built here beforehand: `pip wheel -w .gpu-wheels --no-deps openai-clip==1.0.1`). On
the machine, offline:

    pip install --no-index --find-links .gpu-wheels --no-deps -c constraints.txt \
        -r benchmarks/gpu_wheels.txt
    pip install --no-index --find-links .gpu-wheels --no-deps -e .
    python benchmarks/gpu_check.py --out $OUT/gpu_check.json

(checked here: these two installs into a fresh venv holding only torch==2.13.0 give an
environment where `--smoke` runs; `pip check` then reports only scipy and hf-xet missing.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "a photo of an airplane"
TERM = "airplane"
CONCEPTS = """
neutral_prompts = ["a photo"]
[defaults]
detector = "pytest_erasure.testing:build_brightness_detector"
prompts = ["a photo of an {concept}"]
[[concept]]
name = "airplane"
"""
"""Random weights draw no airplane: the brightness rule stands in for a detector (its cost is
nil), so the text case times generation and the plugin, not a detector."""
SCENARIOS_PER_CONCEPT = 9  # text, adversarial-black, fuzz, embedding x2, latent x4
"""Erasure scenarios the default registry runs per concept (the projection counts them)."""


class CheckFailed(SystemExit):
    """A check that would break a real run: exit 1 with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"GPU CHECK FAILED: {reason}")


def require(ok: bool, reason: str) -> None:
    if not ok:
        raise CheckFailed(reason)


class Clock:
    """Wall time with the device synchronised on both ends (CUDA runs asynchronously)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - start, out


def peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def check_images(images: Any, what: str) -> None:
    """Finite, not constant: what a real run needs to score anything."""
    import torch

    require(bool(torch.isfinite(images).all()), f"{what}: non-finite pixels (fp16 overflow?)")
    flat = images.flatten(1)
    spread = (flat.max(1).values - flat.min(1).values)
    require(bool((spread > 2 / 255).all()), f"{what}: a constant image (degenerate output)")


def build(args: argparse.Namespace) -> Any:
    import torch

    from pytest_erasure.testing.sd14 import sd14_pipeline

    pipe = sd14_pipeline(args.variant, seed=0)
    pipe.to(args.device, getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_raw(pipe: Any, args: argparse.Namespace, clock: Clock, batch: int) -> dict[str, Any]:
    pipe.scheduler.set_timesteps(args.steps)
    timesteps = len(pipe.scheduler.timesteps)
    if type(pipe.scheduler).__name__ == "PNDMScheduler":
        require(timesteps == args.steps + 1,
                f"PNDM with skip_prk_steps ran {timesteps} timesteps for {args.steps} steps")

    def call() -> Any:
        return pipe([PROMPT] * batch, num_inference_steps=args.steps, guidance_scale=7.5,
                    height=args.size, width=args.size, output_type="pt").images

    call()  # warm-up: kernels, allocator
    peak_reset(args.device)
    seconds, images = clock.time(call)
    check_images(images.float(), f"raw diffusers batch {batch}")
    return {"batch": batch, "seconds": round(seconds, 3),
            "images_per_s": round(batch / seconds, 3), "peak_gib": peak_gib(args.device),
            "timesteps": timesteps}


def bench_irece(pipe: Any, args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    from pytest_erasure.defenses.irece import IRECE

    batch = args.irece_batch
    irece = IRECE.for_concept(pipe, PROMPT, TERM, num_inference_steps=args.steps,
                              seed=list(range(batch)))

    def run(defended: bool) -> Any:
        kwargs = ({"callback_on_step_end": irece,
                   "callback_on_step_end_tensor_inputs": irece.tensor_inputs}
                  if defended else {})
        return pipe([PROMPT] * batch, num_inference_steps=args.steps, guidance_scale=7.5,
                    height=args.size, width=args.size, output_type="pt", **kwargs).images

    run(True)
    require(bool(irece.masks), "IRECE never intervened")
    times = {"undefended": [], "defended": []}
    peak_reset(args.device)
    for _ in range(args.reps):
        for name, defended in (("undefended", False), ("defended", True)):
            seconds, images = clock.time(lambda d=defended: run(d))
            times[name].append(seconds)
            check_images(images.float(), f"IRECE {name}")
    undefended, defended = min(times["undefended"]), min(times["defended"])
    covered = float(irece.masks[-1].float().mean())
    return {"batch": batch, "undefended_s": round(undefended, 3), "defended_s": round(defended, 3),
            "ratio": round(defended / undefended, 4),
            "overhead_s_per_image": round((defended - undefended) / batch, 4),
            "mask_fraction_last": round(covered, 4), "peak_gib": peak_gib(args.device)}


def budget(name: str) -> dict[str, Any]:
    """A budget profile's values (as the scenarios declare them), e.g. the sd14 profile's TI
    budget."""
    from pytest_erasure.budgets import profile
    from pytest_erasure.config import budget_profiles

    return {option: entry.value for option, entry in profile(name, budget_profiles()).items()}


def bench_ti(pipe: Any, args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    import torch

    from pytest_erasure.attacks.textual_inversion import train_textual_inversion

    values = budget(args.budget)
    batch = int(values["ti-batch-size"])
    accumulation = int(values.get("ti-accumulation", 1))
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((4, 3, args.size, args.size), generator=generator)
    steps = args.ti_steps

    def train() -> Any:
        return train_textual_inversion(
            pipe, images, token="<gpu-check>", init_token=str(values["ti-init-token"]),
            steps=steps, lr=float(values["ti-lr"]), batch_size=batch,
            accumulation=accumulation, micro_batch=batch, seed=0)

    train_textual_inversion(pipe, images, token="<gpu-check>",
                            init_token=str(values["ti-init-token"]), steps=1,
                            lr=float(values["ti-lr"]), batch_size=batch,
                            accumulation=accumulation, micro_batch=batch, seed=0)  # warm-up
    peak_reset(args.device)
    seconds, (embeds, losses) = clock.time(train)
    require(all(math.isfinite(v) for v in losses), "TI loss is not finite (fp16 underflow?)")
    require(bool(torch.isfinite(embeds).all()), "TI learned a non-finite embedding")
    return {"steps": steps, "batch": batch, "accumulation": accumulation,
            "steps_per_s": round(steps / seconds, 4),
            "profile_steps": int(values["ti-steps"]),
            "minutes_per_run": round(int(values["ti-steps"]) / (steps / seconds) / 60, 2),
            "first_loss": losses[0], "last_loss": losses[-1], "peak_gib": peak_gib(args.device)}


def bench_inversion(pipe: Any, args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    import torch

    from pytest_erasure.attacks.inversion import ddim_invert

    n = args.inversion_images
    generator = torch.Generator().manual_seed(1)
    images = torch.rand((n, 3, args.size, args.size), generator=generator)
    ddim_invert(pipe, images[:1], prompt=PROMPT, steps=2, batch_size=1)  # warm-up
    peak_reset(args.device)
    seconds, latents = clock.time(lambda: ddim_invert(
        pipe, images, prompt=PROMPT, steps=args.steps, batch_size=n))
    require(bool(torch.isfinite(latents).all()), "DDIM inversion gave non-finite latents")
    return {"images": n, "steps": args.steps, "seconds_per_image": round(seconds / n, 4),
            "peak_gib": peak_gib(args.device)}


def bench_quantize_kernels(pipe: Any, args: argparse.Namespace, clock: Clock
                           ) -> dict[str, Any]:
    """Each quantized format through its real kernel and through quantize-dequantize, on the
    UNet (what `quantized-*` cases run). A format the device lacks is recorded with the reason
    (not a failure); a kernel that the probe accepts and that then breaks or gives degenerate
    images is recorded as an error, which fails the check once everything is written."""
    import torch

    from pytest_erasure.overlays import Overlaid, kind
    from pytest_erasure.overlays.kernels import probe
    from pytest_erasure.overlays.quantize import form_of, quantize

    batch, steps = args.quant_batch, args.quant_steps

    def generate(p: Any) -> Any:
        generator = torch.Generator(args.device).manual_seed(0)
        return p([PROMPT] * batch, num_inference_steps=steps, guidance_scale=7.5,
                 height=args.size, width=args.size, output_type="pt",
                 generator=generator).images

    out: dict[str, Any] = {"batch": batch, "steps": steps}
    for bits, form in ((8, None), (4, None), (8, "fp8-e4m3"), (4, "nf4")):
        plain = quantize(bits, group_size=64, format=form)
        name = form_of(plain.params)
        why = probe(name, 64, args.device, args.dtype)
        if why is not None:
            out[name] = {"native": False, "reason": why}
            continue
        entry: dict[str, Any] = {"native": True}
        runs = {}
        try:
            for label, overlay in (("dequantize", plain),
                                   ("native", quantize(bits, group_size=64, format=form,
                                                       kernels="native"))):
                overlaid = Overlaid()
                with overlaid.applied(lambda role: pipe, (("erased", overlay),)):
                    forked = overlaid.active["erased"]
                    generate(forked)  # warm-up, and the packing
                    peak_reset(args.device)
                    seconds, images = clock.time(lambda f=forked: generate(f))
                check_images(images.float(), f"quantize {name} {label}")
                runs[label] = images.float()
                entry[label] = {"seconds": round(seconds, 3), "peak_gib": peak_gib(args.device)}
                if label == "native":
                    entry["applied_layers"] = kind("quantize").describe(overlay)["applied_layers"]
            entry["max_pixel_difference"] = round(
                float((runs["native"] - runs["dequantize"]).abs().max()) * 255, 2)
        except (RuntimeError, NotImplementedError, CheckFailed) as error:
            entry["error"] = str(error).splitlines()[0][:300]
        out[name] = entry
    return out


def bench_text_case(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """A real `pytest audits/` text case on the same architecture, saved to disk in fp16 (the
    audit loads it the way it loads a stock SD v1.4 folder)."""
    from pytest_erasure.testing.sd14 import save_sd14_folder

    folder = save_sd14_folder(work / "sd14", args.variant, seed=0, safety_checker=False,
                              dtype=args.dtype)
    concepts = work / "concepts.toml"
    concepts.write_text(CONCEPTS)
    report = work / "report"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "audits"), "-q", "-p", "no:cacheprovider",
           f"--standard-model={folder}", f"--erased-model={folder}", f"--concepts={concepts}",
           "--scenarios=text", f"--samples={args.case_samples}", f"--batch-size={args.case_batch}",
           f"--steps={args.steps}", f"--height={args.size}", f"--width={args.size}",
           f"--device={args.device}", f"--dtype={args.dtype}", "--no-erasure-cache",
           f"--erasure-report={report}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    require(proc.returncode in (0, 1),
            f"the text-case audit exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    data = json.loads((report / "report.json").read_text())
    case = next(c for c in data["cases"] if c["scenario"] == "text")
    # erased + standard + base rate: three sets of --samples images
    images = 3 * args.case_samples
    return {"samples": args.case_samples, "batch": args.case_batch, "images": images,
            "case_seconds": case["seconds"], "images_per_s": round(images / case["seconds"], 3),
            "process_seconds": round(wall, 1), "exit": proc.returncode}


def project(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Paper scale: 10 concepts x every scenario x 100 images, + 20 TI runs (sd14 profile).

    Images per concept: each erasure scenario generates 100 on the erased and 100 on the
    standard model; the base rate 100; 3 retention neighbours x 2 x 100; the baseline reuses
    the text case's standard images. Inversions: 100 references per concept, once through the
    erased and once through the standard model (the four latent cases share them)."""
    rate = result["text_case"]["images_per_s"]  # the plugin's own rate, overhead included
    images = 10 * (SCENARIOS_PER_CONCEPT * 2 * 100 + 100 + 3 * 2 * 100)
    generation_h = images / rate / 3600
    ti_h = 20 * result["ti"]["minutes_per_run"] / 60
    inversion_h = 10 * 2 * 100 * result["inversion"]["seconds_per_image"] / 3600
    return {"images": images, "generation_hours": round(generation_h, 2),
            "ti_hours": round(ti_h, 2), "inversion_hours": round(inversion_h, 2),
            "total_hours": round(generation_h + ti_h + inversion_h, 2),
            "not_counted": "Ring-A-Bell search (text encoder only) and fuzzing's search images"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, reduced model, 64 px, 4 steps: checks the script itself")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "gpu_check.json")
    args = parser.parse_args(argv)
    if args.smoke:
        settings = {"device": "cpu", "dtype": "float32", "variant": "reduced", "size": 64,
                    "steps": 4, "batches": (2, 4), "irece_batch": 2, "reps": 1, "ti_steps": 2,
                    "inversion_images": 2, "case_samples": 4, "case_batch": 4,
                    "budget": "sd14", "quant_batch": 2, "quant_steps": 2}
    else:
        settings = {"device": "cuda", "dtype": "float16", "variant": "full", "size": 512,
                    "steps": 50, "batches": (8, 16), "irece_batch": 8, "reps": 2,
                    "ti_steps": 20, "inversion_images": 8, "case_samples": 16, "case_batch": 16,
                    "budget": "sd14", "quant_batch": 8, "quant_steps": 10}
    for key, value in settings.items():
        setattr(args, key, value)
    import torch

    if args.device == "cuda":
        require(torch.cuda.is_available(), "no CUDA device: run with --smoke on a CPU")
    started = time.perf_counter()
    clock = Clock(args.device)
    result: dict[str, Any] = {"settings": {k: v for k, v in settings.items()}}
    result["device_name"] = (torch.cuda.get_device_name(0) if args.device == "cuda"
                             else platform.processor() or platform.machine())
    pipe = build(args)
    result["raw"] = [bench_raw(pipe, args, clock, b) for b in args.batches]
    print(json.dumps(result["raw"]), flush=True)
    result["irece"] = bench_irece(pipe, args, clock)
    print(json.dumps(result["irece"]), flush=True)
    result["ti"] = bench_ti(pipe, args, clock)
    print(json.dumps(result["ti"]), flush=True)
    result["inversion"] = bench_inversion(pipe, args, clock)
    print(json.dumps(result["inversion"]), flush=True)
    result["quantize_kernels"] = bench_quantize_kernels(pipe, args, clock)
    print(json.dumps(result["quantize_kernels"]), flush=True)
    del pipe
    if args.device == "cuda":
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        result["text_case"] = bench_text_case(args, Path(tmp))
    result["text_case"]["ratio_to_raw"] = round(
        result["raw"][-1]["images_per_s"] / result["text_case"]["images_per_s"], 3)
    result["projection"] = project(result, args)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["date"] = time.strftime("%Y-%m-%d")
    result["versions"] = {"torch": torch.__version__, "python": platform.python_version(),
                          "cuda": torch.version.cuda}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    broken = {k: v["error"] for k, v in result["quantize_kernels"].items()
              if isinstance(v, dict) and "error" in v}
    require(not broken, f"quantize kernels that the probe accepted then failed: {broken}")
    return result


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
