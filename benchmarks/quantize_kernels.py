"""Real low-bit kernels against quantize-dequantize on the shapes world's UCE model (issue 26).

For int8 (per channel) and 4-bit (round-to-nearest, groups of 64, the sd14 budget) the erased
model (fixtures/shapes/erased/uce-circle) generates N images of the `circle` prompts (the
concept's declared prompts in turn, seeds from --seed as the audit derives them) under the
quantize overlay, once through the CPU kernels (`--quantize-kernels native`) and once as
quantize-dequantize, each in its own process, so its peak resident memory (`ru_maxrss`) is its
own; the unquantized model is run the same way as the reference. Recorded per run: seconds per
image (after one warm-up image, which also packs the weights), peak RSS, which layers ran the
kernel; per format: the largest pixel difference between the two paths (uint8 levels) and how
many of the N images the shapes detector labels differently.

The machine this was built on is shared (2 cores, other engineers' tests): the load average
before and after is recorded, and seconds are upper bounds.

    python benchmarks/quantize_kernels.py --n 16     # writes benchmarks/results/quantize_kernels.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "quantize_kernels.json"
MODEL = ROOT / "fixtures" / "shapes" / "erased" / "uce-circle"
RUNS = (("none", "-"), ("int8", "dequantize"), ("int8", "native"), ("4bit", "dequantize"),
        ("4bit", "native"))


def child(form: str, kernels: str, n: int, out: Path) -> None:
    """One run in this process: N circle images on the quantized UCE model, timed."""
    import torch

    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.overlays import kind
    from pytest_erasure.overlays.quantize import quantize
    from pytest_erasure.records import GenerationInput
    from pytest_erasure.session import AuditSession, default_config

    config = default_config(cache_dir=None, erased_model=MODEL)
    ctx = AuditSession(config, load_concepts(config.concepts_file)).context
    circle = ctx.concepts.concepts["circle"]
    prompts = circle.texts()
    seeds = ctx.seeds(n + 1, "quantize-kernels")
    inputs = [GenerationInput(seed=s, prompt=prompts[i % len(prompts)])
              for i, s in enumerate(seeds)]
    overlays: tuple[Any, ...] = ()
    if form != "none":
        overlays = (quantize(8 if form == "int8" else 4, group_size=64, kernels=kernels),)
    ctx.pipeline("erased")
    ctx.generate("erased", inputs[:1], overlays=overlays)  # warm-up: loading, packing
    start = time.perf_counter()
    images = ctx.generate("erased", inputs[1:], overlays=overlays)
    seconds = time.perf_counter() - start
    present = [bool(p) for p in ctx.detect(images, circle).present]
    record: dict[str, Any] = {
        "form": form, "kernels": kernels, "n": n, "seconds_per_image": round(seconds / n, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "detected": sum(present), "present": present}
    if overlays:
        record["applied_layers"] = kind("quantize").describe(overlays[0]).get("applied_layers")
    torch.save({"record": record, "images": images}, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="images per run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, metavar=("FORM", "KERNELS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.n, Path(args.child[2]))
        return
    import torch

    load_before = os.getloadavg()
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for form, kernels in RUNS:
            path = Path(tmp) / f"{form}-{kernels}.pt"
            subprocess.run([sys.executable, __file__, "--n", str(args.n), "--child", form,
                            kernels, str(path)], check=True, cwd=ROOT,
                           env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
            runs[(form, kernels)] = torch.load(path)
            print(json.dumps({k: v for k, v in runs[(form, kernels)]["record"].items()
                              if k != "present"}), flush=True)
    compared = {}
    for form in ("int8", "4bit"):
        native, slow = runs[(form, "native")], runs[(form, "dequantize")]
        plain = runs[("none", "-")]
        compared[form] = {
            "max_pixel_difference_native_vs_dequantize": int(
                (native["images"].int() - slow["images"].int()).abs().max()),
            "labels_differing_native_vs_dequantize": sum(
                a != b for a, b in zip(native["record"]["present"], slow["record"]["present"],
                                       strict=True)),
            "max_pixel_difference_dequantize_vs_unquantized": int(
                (slow["images"].int() - plain["images"].int()).abs().max()),
        }
    result = {"model": "fixtures/shapes/erased/uce-circle", "n": args.n, "concept": "circle",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "torch": torch.__version__, "load_average_before": load_before,
              "load_average_after": os.getloadavg(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "runs": [run["record"] for run in runs.values()], "compared": compared,
              "command": f"python benchmarks/quantize_kernels.py --n {args.n}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(compared, indent=1))


if __name__ == "__main__":
    main()
