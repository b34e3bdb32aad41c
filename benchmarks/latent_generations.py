"""How much denoising one latent case costs: UNet sample-evaluations per model, counted with
forward hooks, on the tests' tiny world (samples = references = 4, --steps 4, guidance 1 in
the latent cases, so one evaluation per sample per step; the DDIM inversion also runs 4 per
image). Without the disk cache, so every computation shows.

    PYTHONPATH=<tree> OMP_NUM_THREADS=1 python benchmarks/latent_generations.py [--irece]

Runs each latent case in a fresh session, then all four in one session. Uses only what main
had before issue #16 (context_for_pipelines, AuditSession.run), so the same script measures the
code before and after the change.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

STEPS = 4
SAMPLES = 4
SCENARIOS = ("latent-white-null", "latent-white-prompt", "latent-black-null",
             "latent-black-prompt")


def session(root: Path, irece: bool):
    from pytest_erasure.session import session_for_pipelines
    from pytest_erasure.testing import _shift_output, tiny_pipeline

    return session_for_pipelines(_shift_output(tiny_pipeline(0), 0.6),
                                 _shift_output(tiny_pipeline(0), -0.6), root / "concepts.toml",
                                 None, steps=STEPS, samples=SAMPLES, batch_size=8, irece=irece)


def counted(ctx, scenarios: tuple[str, ...]) -> dict[str, int]:
    from pytest_erasure.records import Case

    counts = {"standard": 0, "erased": 0}
    hooks = []
    for role in counts:
        def hook(module, args, kwargs, role=role):
            counts[role] += int(args[0].shape[0])
        hooks.append(ctx.context.pipeline(role).unet.register_forward_pre_hook(
            hook, with_kwargs=True))
    try:
        for scenario in scenarios:
            ctx.run(Case(f"circle-{scenario}", "circle", scenario, "erasure", "latent",
                         "white-box" if "white" in scenario else "black-box"))
    finally:
        for h in hooks:
            h.remove()
    return counts


def main() -> None:
    import torch

    from pytest_erasure.testing import tiny_concepts, write_noise_references

    parser = argparse.ArgumentParser()
    parser.add_argument("--irece", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "concepts.toml").write_text(tiny_concepts())
        write_noise_references(root, SAMPLES)
        rows = {s: counted(session(root, args.irece), (s,)) for s in SCENARIOS}
        rows["all four, one session"] = counted(session(root, args.irece), SCENARIOS)
    for name, counts in rows.items():
        total = sum(counts.values())
        print(f"{name}: UNet sample-evaluations standard={counts['standard']} "
              f"erased={counts['erased']} total={total} (= {total / STEPS:.1f} trajectories of "
              f"{STEPS} steps)")
    print(json.dumps({"irece": args.irece, "steps": STEPS, "samples": SAMPLES, "rows": rows}))


if __name__ == "__main__":
    main()
