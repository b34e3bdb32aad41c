"""Real images a user hands the audit: a concept's references (what textual inversion learns
from and DDIM inversion inverts) and labelled calibration images (what a detector is measured
on). Both are folders of image files; every problem with one is the user's to fix, so each
error names the folder and the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_erasure.errors import ErasureInputError

if TYPE_CHECKING:
    import torch

    from pytest_erasure.concepts import Concept

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def load_reference_images(concept: Concept, size: tuple[int, int]) -> torch.Tensor:
    """A concept's reference images as (N, 3, H, W) in [0, 1] at the model's resolution.

    Every problem is the user's to fix, so each names the folder and the file.
    """
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    folder = concept.references
    what = f"reference folder of concept '{concept.name}'"
    if folder is None:
        raise ErasureInputError(what, "is not declared",
                                "set references = \"path/to/images\" in the concepts file")
    if not folder.is_dir():
        raise ErasureInputError(f"{what} {folder}", "does not exist",
                                "create it and put the concept's reference images in it")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ErasureInputError(f"{what} {folder}", "is empty", "add PNG/JPEG reference images")
    arrays, sizes = [], set()
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ErasureInputError(f"{what}: {path.name}", "is not an image file",
                                    f"keep only images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                sizes.add(image.size)
                arrays.append(np.asarray(image.resize((size[1], size[0]),
                                                      Image.Resampling.BICUBIC)))
        except (UnidentifiedImageError, OSError) as exc:
            raise ErasureInputError(f"{what}: {path.name}", f"cannot be read ({exc})",
                                    "replace or remove the file") from None
    if len(sizes) > 1:
        raise ErasureInputError(f"{what} {folder}",
                                f"mixes image sizes {sorted(sizes)}",
                                "give every reference image the same size")
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return stacked
