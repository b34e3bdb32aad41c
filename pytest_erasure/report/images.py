"""Evidence grids: a case's images as one PNG, each framed by what the detector said.

People would rather look than read: a reviewer sees at a glance whether the red frames (concept
found) really show the concept, which is how a detector that cannot see it is caught. Thumbnails
carry their 1-based index so the report can list each image's label (prompt, seed) beside the grid.
Only numpy and PIL: reports must stay cheap to import.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FOUND = (214, 39, 40)
"""Frame of an image in which the detector found the concept."""
NOT_FOUND = (44, 160, 44)
"""Frame of an image in which it did not."""
UNKNOWN = (150, 150, 150)
"""Frame when the detector gave no answer (None), e.g. a degenerate image."""
BACKGROUND = (255, 255, 255)
LETTERBOX = (32, 32, 32)
FRAME = 4
GAP = 4


def grid_png(images_uint8_nhwc: np.ndarray, present: list[bool], columns: int = 8,
             thumb: int = 96, numbered: bool = True) -> bytes:
    """A PNG of `images` as thumbnails, `columns` per row, framed red (found) or green (not).

    Images are fitted into `thumb` x `thumb` keeping their aspect ratio: upscaled with nearest
    neighbour (a 32x32 shapes render stays crisp instead of turning to blur), downscaled with a
    box filter. Grayscale (N, H, W) and RGBA inputs are accepted.
    """
    images = np.asarray(images_uint8_nhwc)
    if images.dtype != np.uint8:
        raise ValueError(f"grid_png needs uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"grid_png needs (N, H, W, 3) images, got shape {images.shape}")
    if len(present) != len(images):
        raise ValueError(f"grid_png got {len(images)} images but {len(present)} detections")
    if columns < 1 or thumb < 1:
        raise ValueError("grid_png needs columns >= 1 and thumb >= 1")

    n = len(images)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    cell = thumb + 2 * FRAME
    sheet = Image.new("RGB", (GAP + cols * (cell + GAP), GAP + rows * (cell + GAP)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font(max(8, thumb // 8)) if numbered else None
    for i, (image, found) in enumerate(zip(images, present, strict=True)):
        x = GAP + (i % cols) * (cell + GAP)
        y = GAP + (i // cols) * (cell + GAP)
        colour = UNKNOWN if found is None else (FOUND if found else NOT_FOUND)
        draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour)
        draw.rectangle((x + FRAME, y + FRAME, x + FRAME + thumb - 1, y + FRAME + thumb - 1),
                       fill=LETTERBOX)
        tile = _thumbnail(image, thumb)
        ox = x + FRAME + (thumb - tile.width) // 2
        oy = y + FRAME + (thumb - tile.height) // 2
        sheet.paste(tile, (ox, oy))
        if font is not None:
            _number(draw, font, str(i + 1), x + FRAME, y + FRAME, colour)
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


def to_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def evidence(title: str, images_uint8_nhwc: np.ndarray, present: list[bool],
             labels: list[str] | None = None, columns: int = 8, thumb: int = 96) -> dict[str, Any]:
    """One entry of `CaseResult.evidence`: the grid plus what the report lists beside it."""
    png = grid_png(images_uint8_nhwc, present, columns=columns, thumb=thumb)
    return {
        "title": title,
        "png_base64": to_base64(png),
        "labels": list(labels) if labels is not None else [""] * len(present),
        "present": [None if p is None else bool(p) for p in present],
    }


def _thumbnail(image: np.ndarray, thumb: int) -> Image.Image:
    if image.shape[-1] == 1:
        tile = Image.fromarray(image[..., 0], mode="L").convert("RGB")
    else:
        tile = Image.fromarray(np.ascontiguousarray(image[..., :3]), mode="RGB")
    h, w = image.shape[:2]
    scale = thumb / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return tile
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BOX
    return tile.resize(size, resample)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _number(draw: ImageDraw.ImageDraw, font: Any, text: str, x: int, y: int,
            colour: tuple[int, int, int]) -> None:
    """The index on a small tab of the frame's colour, so it reads over any image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.rectangle((x, y, x + right - left + 3, y + bottom - top + 3), fill=colour)
    draw.text((x + 2 - left, y + 2 - top), text, fill=(255, 255, 255), font=font)


def split_grid(png: bytes, n: int) -> list[bytes]:
    """The `n` framed thumbnails of a grid `grid_png` made, each as its own PNG, so a report can
    put each image's prompt under it. The layout is recovered from the sheet's size (columns,
    cell) and must match exactly; anything else (another tool's image, a damaged one) gives []
    and the report shows the grid whole."""
    try:
        sheet = Image.open(io.BytesIO(png))
        sheet.load()
    except Exception:  # noqa: BLE001 - any undecodable data: show the grid whole
        return []
    if n < 1:
        return []
    cols = min(8, n)
    rows = -(-n // cols)
    cell, rest = divmod(sheet.width - GAP, cols)
    cell -= GAP
    if rest or cell <= 2 * FRAME or sheet.height != GAP + rows * (cell + GAP):
        return []
    out = []
    for i in range(n):
        x = GAP + (i % cols) * (cell + GAP)
        y = GAP + (i // cols) * (cell + GAP)
        buffer = io.BytesIO()
        sheet.crop((x, y, x + cell, y + cell)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out
