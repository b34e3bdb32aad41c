"""IRECE evidence on the shapes world: a t* x tau sweep of what it removes and what it damages.

    python benchmarks/irece_sweep.py --erased fixtures/shapes/erased/uce-circle --samples 32

For every (t*, tau): the concept's CRR on the defended erased model in the text and
latent-white-null scenarios, the neighbours' CRR (retention: IRECE must not remove what it
should leave alone), and the image distance between defended and undefended images of the
neighbours' prompts (PSNR; higher = less damage). Undefended numbers are the first row.
Everything goes through the audit session, so these are the numbers the gate would see.
Writes benchmarks/results/irece_sweep.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def psnr(a: Any, b: Any) -> float:
    mse = float(((a.float() - b.float()) / 255).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--erased", type=Path, default=ROOT / "fixtures/shapes/erased/uce-circle")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--t-star", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.6])
    parser.add_argument("--tau", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    parser.add_argument("--cache", type=Path, default=Path(".pytest_cache/d/erasure"))
    args = parser.parse_args(argv)

    import torch

    from pytest_erasure import checks
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.scenarios.text import prompt_plan
    from pytest_erasure.session import AuditSession, default_config

    torch.set_num_threads(max(1, torch.get_num_threads()))
    base = default_config(erased_model=args.erased, samples=args.samples, cache_dir=args.cache)
    concepts = load_concepts(base.concepts_file)
    circle = concepts.concepts["circle"]
    neighbours = [concepts.concepts[n] for n in circle.retain]
    session = AuditSession(base, concepts).context
    latent = session.scenarios["latent-white-null"]
    text = session.scenarios["text"]

    def measure(config: Any) -> dict[str, Any]:
        session.config = config  # models, detectors and caches stay loaded
        session._irece_conditioning.clear()
        row: dict[str, Any] = {}
        for name, scenario in (("text", text), ("latent-white-null", latent)):
            plan = scenario.plan(session, circle, "erased", args.samples)
            rate = checks.measure(session, "erased", plan, circle).rate
            row[name] = rate.to_dict()
        kept, distances = [], []
        for neighbour in neighbours:
            plan = prompt_plan(session, neighbour.texts(), args.samples, f"text/{neighbour.name}")
            defended = session.generate("erased", plan.inputs, circle)  # mask from circle
            # judged as the neighbour: does it still draw what was asked?
            present = session.detect(defended, neighbour).present
            kept.append(sum(present) / len(present))
            plain = session.generate("erased", plan.inputs, circle, defended=False)
            distances.append(psnr(defended, plain))
        row["retention_crr_mean"] = sum(kept) / len(kept)
        row["neighbour_psnr_db"] = (sum(d for d in distances if math.isfinite(d)) /
                                    max(1, sum(math.isfinite(d) for d in distances))
                                    if any(math.isfinite(d) for d in distances) else math.inf)
        return row

    rows = [{"irece": False, **measure(dataclasses.replace(base, irece=False))}]
    for t_star in args.t_star:
        for tau in args.tau:
            config = dataclasses.replace(base, irece=True, irece_t_star=t_star, irece_tau=tau)
            rows.append({"irece": True, "t_star": t_star, "tau": tau, **measure(config)})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"erased": str(args.erased), "samples": args.samples, "steps": base.steps,
           "guidance": base.guidance, "rows": rows,
           "command": "python benchmarks/irece_sweep.py " + " ".join(argv or [])}
    (RESULTS / "irece_sweep.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| IRECE t* | tau | text CRR | latent-white-null CRR | neighbours' CRR | "
             "neighbour PSNR vs undefended |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.get('t_star', 'off')} | {r.get('tau', '—')} | {r['text']['crr']:.0%} | "
            f"{r['latent-white-null']['crr']:.0%} | {r['retention_crr_mean']:.0%} | "
            + ("—" if not r["irece"] else f"{r['neighbour_psnr_db']:.1f} dB") + " |")
    (RESULTS / "irece_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
