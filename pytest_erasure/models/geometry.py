"""What an image size must fit, read from a diffusers folder's config files (no weights load):
the VAE's scale factor, the native size, and the cross-attention map sizes. Options are checked
against it before any model loads (`AuditConfig.validate_size`), and the free-space estimate of
the outputs uses the native size (`outputs.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PIPELINE_MULTIPLE = 8


@dataclass(frozen=True)
class ModelGeometry:
    """What the image size must fit, read from a diffusers folder's config files."""

    scale_factor: int
    native_size: int | None
    attention_levels: tuple[int, ...] = ()
    """Down-block indices whose maps have cross-attention (the mid block counts as the last)."""

    def attention_sizes(self, height: int, width: int) -> list[int]:
        """The longer side of each cross-attention map (how IRECE's `--irece-resolutions` names them):
        every down block halves the latent, rounding up like a stride-2 convolution."""
        h, w = height // self.scale_factor, width // self.scale_factor
        sizes: list[int] = []
        for level in range(max(self.attention_levels, default=-1) + 1):
            if level in self.attention_levels:
                sizes.append(max(h, w))
            h, w = -(-h // 2), -(-w // 2)
        return sorted(set(sizes), reverse=True)


def model_geometry(folder: Path) -> ModelGeometry:
    """The VAE's scale factor (2 ** (len(block_out_channels) - 1), as diffusers computes it)
    and the native size (UNet sample_size x factor) of a diffusers pipeline folder. Anything
    unreadable gives SD v1's values (8, unknown): loading the model reports the folder itself."""
    def read(part: str) -> dict[str, Any]:
        try:
            data = json.loads((folder / part / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    vae, unet = read("vae"), read("unet")
    blocks = vae.get("block_out_channels")
    factor = 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8
    sample = unet.get("sample_size")
    if isinstance(sample, list) and sample:
        sample = max(sample)
    native = int(sample) * factor if isinstance(sample, int) and not isinstance(sample, bool) \
        else None
    down = unet.get("down_block_types") or []
    levels = [i for i, kind in enumerate(down) if "CrossAttn" in str(kind)]
    if down and "CrossAttn" in str(unet.get("mid_block_type", "UNetMidBlock2DCrossAttn")):
        levels.append(len(down) - 1)
    return ModelGeometry(factor, native, tuple(sorted(set(levels))))


def train_timesteps(folder: Path) -> int | None:
    """The scheduler's num_train_timesteps from a diffusers folder's config (None when it is not
    readable: loading the model reports the folder itself). DDIM inversion and denoising cannot
    take more steps than that."""
    try:
        config = json.loads((Path(folder) / "scheduler" / "scheduler_config.json")
                            .read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("num_train_timesteps") if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
