"""Cost of the weight-attack cases (issue 26: fine-tuning, its adaptive form through IRECE, the
quantized cases and their embedding companions): seconds per case on the shapes world, measured
(from reports), and the projected SD v1.4 cost per case at the sd14 budgets, with peak memory
(assumed, not measured).

Measured: `--run MODEL ...` audits each shapes-world erased model with `--scenarios finetune`
(`pytest audits/ --erased-model=fixtures/shapes/erased/MODEL --scenarios finetune -k finetune
--samples S`, one erasure cache for all models, so a model after the first pays no standard-side
training or images: the "further model" cost) and reads each case's `seconds` from its
report.json, and the audit process's peak resident memory (`getrusage(RUSAGE_CHILDREN)`). Or
`--reports DIR ...` reads reports a run already wrote. Results are appended to
benchmarks/results/finetune_cost.jsonl.

Projected (no GPU was lent to this project: every rate is assumed, as in
`benchmarks/sd14_time.py`, whose rates this reads): one LoRA micro-step of batch 1 at 512 px
costs what one textual-inversion micro-step does there (both are one fp16 UNet forward and
backward; the LoRA's backward stops at the UNet, textual inversion's continues through the text
encoder, so this errs long), generation and detection at sd14_time's rates. Per case: R restarts
x 2 models (erased, standard: the positive control) x steps x accumulation micro-steps, then
R x S images on each model. Peak memory of a training step: the fp16 weights (~2.1 GB) plus the
activations autograd saves for one 512 px sample (~0.72 GB in fp16: budgets.py's count on the
full SD v1.4 architecture) plus the adapters and their AdamW state (counted here from the
architecture: float32, x4 with gradients and two moments); the backward's transient buffers
and allocator slack are not counted.

    python benchmarks/finetune_cost.py --run uce-circle esd-x-circle --samples 32
    python benchmarks/finetune_cost.py --reports /tmp/ftm/uce-circle /tmp/ftm/esd-x-circle
    python benchmarks/finetune_cost.py --project            # the sd14 projection alone
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "finetune_cost.jsonl"

WEIGHTS_GB = 2.1
"""fp16 SD v1.4 weights: UNet ~860M, CLIP ViT-L ~123M, VAE ~84M parameters (budgets.py)."""
ACTIVATIONS_GB = 0.72
"""Saved activations of one 512 px sample's UNet backward in fp16 (budgets.py: 1444 MiB counted
in float32 on the CPU)."""


def _sd14_time():
    spec = importlib.util.spec_from_file_location("sd14_time", ROOT / "benchmarks" / "sd14_time.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def adapter_parameters(rank: int) -> int:
    """LoRA parameters on SD v1.4's UNet attention projections at `rank` (counted from the
    architecture, built on the meta device: nothing is allocated)."""
    import torch
    from diffusers import UNet2DConditionModel

    from pytest_erasure.attacks.finetune import target_modules
    from pytest_erasure.testing.sd14 import sd14_configs

    config = {k: v for k, v in sd14_configs("full")["unet/config.json"].items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    return sum(rank * (m.in_features + m.out_features) for m in target_modules(unet).values())


def project(samples: int) -> list[dict[str, object]]:
    """Per fine-tuning case at the sd14 profile: seconds (first erased model, a further one)
    and peak memory of a training step; every rate assumed."""
    from pytest_erasure.config import budget_profiles

    rates = _sd14_time()
    p = {k: v.value for k, v in budget_profiles()["sd14"].items()}
    r = int(p["attack-restarts"])
    image = rates.GENERATE_S + rates.DETECT_S
    rows = []
    for case, prefix in (("finetune-concept", "ft"), ("finetune-benign", "benign")):
        micro = int(p[f"{prefix}-steps"]) * int(p[f"{prefix}-accumulation"])
        train = micro * int(p[f"{prefix}-batch-size"]) * rates.TI_MICRO_STEP_S
        params = adapter_parameters(int(p[f"{prefix}-rank"]))
        adapters_gb = params * 4 * 4 / 1e9
        peak = WEIGHTS_GB + ACTIVATIONS_GB * int(p[f"{prefix}-batch-size"]) + adapters_gb
        rows.append({
            "case": case, "samples": samples, "restarts": r, "micro_steps_per_run": micro,
            "training_s_per_run": train,
            "first_model_s": 2 * r * train + 2 * r * samples * image,
            "further_model_s": r * train + r * samples * image,
            "adapter_parameters": params, "peak_training_gb": round(peak, 2),
            "assumed": f"rates of benchmarks/sd14_time.py (generation {rates.GENERATE_S} s, "
                       f"detection {rates.DETECT_S} s per image, a micro-step "
                       f"{rates.TI_MICRO_STEP_S} s); memory: {WEIGHTS_GB} GB fp16 weights + "
                       f"{ACTIVATIONS_GB} GB saved activations per sample + adapters x4"})
    # With --irece under the adaptive threat: the erased model's R LoRAs train through the
    # surrogate (one extra standard-UNet forward, no gradient, on its share of each batch: a
    # forward taken as a third of a forward and backward) and the transfer attacker's R run
    # beside them, each restart's images generated (2R x S on the erased model).
    from pytest_erasure.defenses.irece import ADAPTIVE_SHARE

    micro = int(p["ft-steps"]) * int(p["ft-accumulation"])
    train = micro * int(p["ft-batch-size"]) * rates.TI_MICRO_STEP_S
    adaptive = train * (1 + ADAPTIVE_SHARE / 3)
    rows.append({
        "case": "finetune-concept (--irece, adaptive)", "samples": samples, "restarts": 2 * r,
        "micro_steps_per_run": micro, "training_s_per_run": adaptive,
        "first_model_s": r * (adaptive + train) + r * train + 3 * r * samples * image,
        "further_model_s": r * adaptive + 2 * r * samples * image,
        "peak_training_gb": rows[0]["peak_training_gb"],
        "assumed": f"as finetune-concept, the surrogate's forward on {ADAPTIVE_SHARE:g} of each "
                   "batch a third of a micro-step; the transfer LoRAs shared with the "
                   "undefended run's cache"})
    # quantized-<v>-embedding: embedding-white's textual inversion through the quantized
    # model (R runs on each of the two models), then R x S images on each; the quantized UNet
    # is a second copy of its weights per model while its units run (the overlay's fork).
    ti = (int(p["ti-steps"]) * int(p["ti-accumulation"]) * int(p["ti-batch-size"])
          * rates.TI_MICRO_STEP_S)
    unet_gb = 1.72  # SD v1.4's UNet, ~860M parameters in fp16
    rows.append({
        "case": "quantized-<variant>-embedding", "samples": samples, "restarts": r,
        "training_s_per_run": ti,
        "first_model_s": 2 * r * ti + 2 * r * samples * image,
        "further_model_s": r * ti + r * samples * image,
        "peak_training_gb": round(WEIGHTS_GB + 2 * unet_gb + ACTIVATIONS_GB
                                  * int(p["ti-batch-size"]), 2),
        "assumed": f"a textual-inversion micro-step {rates.TI_MICRO_STEP_S} s; memory: "
                   f"{WEIGHTS_GB} GB weights + two quantized UNet copies (erased, standard; "
                   f"{unet_gb} GB each, memoised per model) + one sample's activations; the "
                   "quantize-dequantize itself (once per model, CPU) not counted"})
    return rows


def read_reports(folders: list[Path]) -> list[dict[str, object]]:
    rows = []
    for folder in folders:
        record = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        erased = record.get("provenance", {}).get("erased", {})
        for case in record["cases"]:
            if case["kind"] != "erasure" or not case["scenario"].startswith(
                    ("finetune", "quantized")):
                continue
            low, high = case["rate"]["ci_low"], case["rate"]["ci_high"]
            rows.append({"report": str(folder), "model": erased.get("path"),
                         "defense": record["config"].get("defense"), "case": case["case_id"],
                         "seconds": case["seconds"], "crr": case["rate"]["crr"],
                         "interval": [low, high], "verdict": case["verdict"],
                         "standard_crr": (case.get("standard") or {}).get("crr"),
                         "base_rate": (case.get("base_rate") or {}).get("crr"),
                         "final_losses": [r["final_loss"] for r in
                                          case["facts"].get("attack_runs", [])]})
    return rows


def run(models: list[str], samples: int, cache: Path, out: Path) -> list[dict[str, object]]:
    rows = []
    for model in models:
        folder = out / model
        command = [sys.executable, "-m", "pytest", "audits/", "-p", "no:cacheprovider", "-q",
                   f"--erased-model=fixtures/shapes/erased/{model}", "--scenarios", "finetune",
                   "-k", "finetune", f"--samples={samples}", f"--erasure-cache={cache}",
                   f"--erasure-report={folder}"]
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       check=False)
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        for row in read_reports([folder]):
            rows.append({**row, "wall_s": round(wall, 1), "peak_rss_mib_so_far": round(peak)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="*", default=[], help="shapes-world erased models")
    parser.add_argument("--reports", nargs="*", type=Path, default=[])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/finetune-cost-cache"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/finetune-cost"))
    parser.add_argument("--project", action="store_true", help="the sd14 projection only")
    parser.add_argument("--sd14-samples", type=int, default=150)
    args = parser.parse_args(argv)
    measured = run(args.run, args.samples, args.cache, args.out) if args.run else []
    measured += read_reports(args.reports)
    projected = project(args.sd14_samples)
    for row in measured:
        print(json.dumps(row))
    for row in projected:
        print(json.dumps(row))
    if measured and not args.project:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a", encoding="utf-8") as fh:
            for row in measured + projected:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
