"""The weight grids a quantized release rounds to, as codes and scales: one place for both
the quantize-dequantize overlay (`quantize.dequantized`) and the real kernels' packing
(`kernels.pack`), so both paths multiply by the same quantized weights. Lazy torch imports:
`quantize` is imported at plugin load."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

E4M3_MAX = 448.0
"""float8 e4m3's largest finite value."""


def integer_codes(weight: torch.Tensor, bits: int,
                  group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight`'s symmetric round-to-nearest codes (whole numbers as floats, in [-127, 127] or
    [-8, 7]) and their scales, on its own device and dtype: 8 bits per output channel (codes
    (n, k), scales (n, 1)), 4 bits per group of `group_size` inputs of each output channel
    (codes (n, groups, group_size), the last group zero-padded, scales (n, groups, 1)). The
    quantize-dequantize overlay and the kernels' packing (`kernels.pack`) both take them from
    here, so both paths multiply by the same quantized weights."""
    import torch

    rows = weight.reshape(weight.shape[0], -1)
    if bits == 8:
        scale = rows.abs().amax(dim=1, keepdim=True) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.round(rows / scale).clamp(-127, 127), scale
    pad = (-rows.shape[1]) % group_size
    padded = torch.nn.functional.pad(rows, (0, pad)).reshape(rows.shape[0], -1, group_size)
    scale = padded.abs().amax(dim=2, keepdim=True) / 7
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(padded / scale).clamp(-8, 7), scale


def fp8_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` per output channel in float8 e4m3 (scale max|w| / 448, e4m3's largest finite
    value) and the scales (n, 1), on its own device: both paths' fp8 numbers (`integer_codes`'
    twin)."""
    import torch

    rows = weight.reshape(weight.shape[0], -1)
    scale = rows.abs().amax(dim=1, keepdim=True) / E4M3_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (rows / scale).to(torch.float8_e4m3fn), scale
