"""DDIM inversion under every sampler, on the shapes world: the default audit's latent-white-null
case (UCE-erased circle, 16 references, 25 steps, DDIM-inverted through the erased model with
the null prompt), regenerated with each `--sampler`. Reads the case's reconstruction and CRR
from the JSON report and writes benchmarks/results/samplers.json.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/samplers.py [--samples 16]

Only DDIM retraces the inversion; the others integrate the same ODE otherwise and Euler
ancestral re-noises every step, so their PSNR says how far each lands from the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLERS = ("ddim", "pndm", "lms", "euler", "euler-ancestral", "dpm++2m", "unipc")


def run(sampler: str, samples: int, work: Path) -> dict:
    report = work / sampler
    command = [sys.executable, "-m", "pytest", "audits/", "--scenarios=latent-white-null",
               f"--sampler={sampler}", f"--samples={samples}", f"--erasure-report={report}",
               f"--erasure-cache={work / 'cache'}", "-q", "-p", "no:cacheprovider",
               "-p", "no:randomly", "--irece", "--erasure-inconclusive=report"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "CI": "1"})
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{sampler}: exit {done.returncode}\n{done.stdout[-3000:]}")
    data = json.loads((report / "report.json").read_text())
    case = next(c for c in data["cases"] if c["case_id"] == "circle-latent-white-null")
    check = case["facts"]["case_reconstruction"]
    standard_check = case["facts"].get("standard_plan", case["facts"])["case_reconstruction"]
    return {
        "sampler": sampler,
        "class": data["provenance"]["erased"]["sampler"]["class"],
        "inversion_exact": case["facts"]["inversion_exact"]["exact"],
        "reconstruction_psnr": check["psnr"],
        "inversion_psnr": check["inversion_psnr"],
        "vae_psnr": check["vae_psnr"],
        "standard_reconstruction_psnr": standard_check["psnr"],
        "crr": case["undefended"]["hits"] / case["undefended"]["n"],
        "irece_crr": case["rate"]["hits"] / case["rate"]["n"],
        "n": case["rate"]["n"],
        "standard_crr": case["standard"]["hits"] / case["standard"]["n"],
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "samplers.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in args.samplers.split(","):
            rows.append(run(sampler, args.samples, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": "PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/samplers.py "
                   f"--samples {args.samples}",
        "audit": "pytest audits/ --scenarios=latent-white-null --sampler=X --irece "
                 f"--samples={args.samples} (shapes world, UCE-erased circle, 25 steps; crr "
                 "undefended, irece_crr with IRECE at its defaults)",
        "psnr": "dB against the 16 reference renders (reconstruction), against their VAE round "
                "trip (inversion), and of the VAE round trip itself (vae); erased model's "
                "undefended images; standard_reconstruction_psnr: the same through the standard "
                "model",
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| sampler | DDIM inversion exact | reconstruction PSNR | inversion PSNR | VAE PSNR "
          "| CRR (erased) | CRR (erased + IRECE) | CRR (standard) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {'yes' if r['inversion_exact'] else 'no'} "
              f"| {r['reconstruction_psnr']:.1f} dB | {r['inversion_psnr']:.1f} dB "
              f"| {r['vae_psnr']:.1f} dB | {r['crr']:.0%} | {r['irece_crr']:.0%} "
              f"| {r['standard_crr']:.0%} |")


if __name__ == "__main__":
    main()
