"""Peak resident memory of loading the standard model alone, with an erased override through
our loader (shares every unchanged tensor), or with a second full pipeline (`--copy`)."""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STANDARD = ROOT / "fixtures" / "shapes" / "standard"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--erased", type=Path)
    parser.add_argument("--copy", action="store_true", help="load the erased model as a second "
                        "full pipeline, as a loader without sharing would")
    args = parser.parse_args()
    import torch
    from diffusers import StableDiffusionPipeline

    if args.erased is None:
        StableDiffusionPipeline.from_pretrained(STANDARD, local_files_only=True,
                                                torch_dtype=torch.float32)
    elif args.copy:
        keep = [StableDiffusionPipeline.from_pretrained(p, local_files_only=True,
                                                        torch_dtype=torch.float32)
                for p in (STANDARD, args.erased)]
        assert len(keep) == 2
    else:
        from pytest_erasure.models.loading import load_models

        load_models(STANDARD, args.erased)
    print(json.dumps({"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
