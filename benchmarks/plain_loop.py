"""The baseline of the overhead benchmark: the images of one text case made with diffusers alone.

The audit's `circle-text` case generates the concept prompts on the erased and the standard
model and the neutral prompts on the erased model, and judges every image. This script does the
same work with nothing but diffusers and the detector: no pytest, no cache, no reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ROOT / "fixtures" / "shapes"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--freeze", action="store_true",
                        help="collect and freeze the heap after loading, as the audit does "
                             "(models.loading.settle_heap)")
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.detectors.base import DetectorSpec, build_detector

    def load(path: Path) -> StableDiffusionPipeline:
        pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True,
                                                       torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    erased, standard = load(SHAPES / "erased" / "uce-circle"), load(SHAPES / "standard")
    detector = build_detector(DetectorSpec("shapes", SHAPES / "detector"), "cpu")
    if args.freeze:
        import gc

        gc.collect()
        gc.freeze()
    concept = ["a circle", "an image of a circle", "a red circle", "a blue circle"]
    neutral = ["a shape", ""]
    hits = 0
    for pipe, prompts in ((erased, concept), (standard, concept), (erased, neutral)):
        for start in range(0, args.samples, args.batch):
            idx = range(start, min(start + args.batch, args.samples))
            latents = torch.cat([torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(i))
                                 for i in idx])
            images = pipe([prompts[i % len(prompts)] for i in idx], latents=latents,
                          num_inference_steps=args.steps, guidance_scale=7.5,
                          output_type="pt").images
            hits += sum(detector.detect(images, "circle").present)
    print(hits)


if __name__ == "__main__":
    main()
