"""The price of batch-invariant layers where it is paid: one UNet forward pass.

    python benchmarks/invariant_layers.py --threads 2 --reps 7

The shapes world's standard UNet on 16 samples as generation calls it (32 rows: unconditional
and conditional), native layers vs `invariant.make_batch_invariant`, alternated; prints the
median time of each and their ratio. A whole audit (`run.py --only invariant`) also pays for
pipeline steps, decoding and judging, so its ratio is this one diluted, and noisier.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="forward passes per timing")
    args = parser.parse_args()

    import torch
    from diffusers import UNet2DConditionModel

    from pytest_erasure.invariant import make_batch_invariant

    torch.set_num_threads(args.threads)
    native = UNet2DConditionModel.from_pretrained(
        ROOT / "fixtures" / "shapes" / "standard" / "unet", torch_dtype=torch.float32).eval()
    invariant = copy.deepcopy(native)
    make_batch_invariant(invariant)
    g = torch.Generator().manual_seed(0)
    size = native.config.sample_size
    z = torch.randn(32, native.config.in_channels, size, size, generator=g)
    states = torch.randn(32, 77, native.config.cross_attention_dim, generator=g)
    t = torch.tensor(500)
    seconds: dict[str, list[float]] = {"native": [], "invariant": []}
    with torch.no_grad():
        for model in (native, invariant):  # warm-up: first calls allocate and pick kernels
            model(z, t, encoder_hidden_states=states)
        for rep in range(args.reps):
            order = [("native", native), ("invariant", invariant)]
            for name, model in order if rep % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                for _ in range(args.calls):
                    model(z, t, encoder_hidden_states=states)
                seconds[name].append((time.perf_counter() - start) / args.calls)
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    print(json.dumps({"threads": args.threads, "rows": 32,
                      "median_ms": {k: round(v * 1000, 1) for k, v in medians.items()},
                      "ratio": round(medians["invariant"] / medians["native"], 3)}))


if __name__ == "__main__":
    main()
