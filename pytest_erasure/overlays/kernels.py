"""Real low-bit kernels for the `quantize` overlay: Linear layers that multiply by packed weights.

Quantize-dequantize (`quantize.dequantized`) gives the numbers a low-bit kernel multiplies by;
this module runs the kernel itself where this torch and device have one, so an audit measures
the model as users run it, accumulation order and activation rounding included:
- int8 (per output channel): `torch._weight_int8pack_mm` (int8 weights [N, K], one scale per
  row; CPU, and CUDA where this torch builds it), activations in the model's dtype;
- 4-bit round-to-nearest groups: torch's tinygemm layout (`_convert_weight_to_int4pack_for_cpu`
  + `_weight_int4pack_mm_for_cpu` on CPU; `_convert_weight_to_int4pack` + `_weight_int4pack_mm`
  on CUDA, bfloat16 activations only, so other dtypes are cast to bfloat16 around it, as torchao's
  int4 weight-only requires). The grid is ours (q in [-8, 7], zero point 0): tinygemm dequantizes
  (q_u - 8) * scale + zero with q_u = q + 8, which is the same number. It takes group sizes 32,
  64, 128, 256 only, out_features a multiple of 16 (CPU) or 8 (CUDA), in_features a multiple of
  the group (and on CUDA of 16 x its inner k-tiles);
- fp8 e4m3: `torch._scaled_mm` (CPU in this torch; CUDA on compute capability 8.9 or newer,
  K and N multiples of 16) with rowwise scales: the weight per output channel as the
  quantize-dequantize path has it, and the activations quantized to e4m3 per row at every call
  (what torchao's float8 dynamic-activation kernels do). So the fp8 kernel's numbers differ from
  weight-only quantize-dequantize by the activations' rounding too: it is a different model;
- NF4: bitsandbytes' `matmul_4bit` on its `quantize_4bit` blocks (CUDA, where bitsandbytes
  imports; nothing here can test it: no GPU on the machines this project is built on).

Conv2d layers stay quantize-dequantize: torch has no weight-only low-bit convolution, and neither
do the libraries users quantize diffusion models with: torchao's `quantize_` filters to
`nn.Linear` by default and bitsandbytes (diffusers' `BitsAndBytesConfig`) replaces only
`nn.Linear` layers, leaving convolutions in 16 bits. The audit still rounds conv weights (the
stricter choice, and the numbers of a release that stores them quantized) and says how many.

Batch invariance: where the replaced Linear had the batch-invariant form (the CPU default,
`invariant.py`), the kernel runs per sample, so an image does not depend on its batch.

Gradients: textual inversion through a quantized model needs d(output)/d(input) of each layer;
the kernels have no derivative, so `_KernelMatmul.backward` multiplies by the dequantized weight
(what bitsandbytes' 4-bit matmul does for QLoRA). The weights are frozen: none is learned here.

This module imports torch at the top: it is imported only where a kernel overlay is applied.
"""

from __future__ import annotations

from typing import Any

import torch

from pytest_erasure.overlays.grids import E4M3_MAX, fp8_codes, integer_codes

INT4_GROUPS = (32, 64, 128, 256)
FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def op_for(form: str, device: str) -> str | None:
    """The kernel this torch has for `form` on `device` (a device type or "cuda:1"), by name,
    or None. Static: what the build exposes (and the GPU's capability for fp8)."""
    kind = device.split(":")[0]
    if form == "int8" and kind in ("cpu", "cuda") and hasattr(torch, "_weight_int8pack_mm"):
        return "torch._weight_int8pack_mm"
    if form == "4bit":
        if kind == "cpu" and hasattr(torch, "_weight_int4pack_mm_for_cpu"):
            return "torch._weight_int4pack_mm_for_cpu"
        if kind == "cuda" and hasattr(torch, "_weight_int4pack_mm"):
            return "torch._weight_int4pack_mm"
    if form == "fp8-e4m3" and hasattr(torch, "_scaled_mm") and hasattr(torch, "float8_e4m3fn"):
        if kind == "cpu":
            return "torch._scaled_mm"
        if kind == "cuda" and torch.cuda.is_available() and \
                torch.cuda.get_device_capability(torch.device(device)) >= (8, 9):
            return "torch._scaled_mm"
    if form == "nf4" and kind == "cuda":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return None
        return "bitsandbytes.matmul_4bit"
    return None


_PROBED: dict[tuple[str, int, str, str], str | None] = {}


def probe(form: str, group: int, device: str, dtype: str) -> str | None:
    """Why this torch cannot run `form`'s kernel on `device` in `dtype`, or None when it can:
    the op's static presence, the 4-bit group size, and one real call on a 16 x 256 layer (a
    build may expose an op that has no kernel for this device or dtype). Memoised."""
    key = (form, group, device, dtype)
    if key in _PROBED:
        return _PROBED[key]
    reason: str | None = None
    op = op_for(form, device)
    if op is None:
        reason = f"this torch ({torch.__version__}) has no {form} kernel on {device.split(':')[0]}"
    elif form == "4bit" and group not in INT4_GROUPS:
        reason = (f"{op} takes groups of {', '.join(map(str, INT4_GROUPS))} weights, not "
                  f"{group}")
    else:
        try:
            layer = torch.nn.Linear(256, 16).to(device, getattr(torch, dtype))
            packed = pack(layer, form, group)
            if isinstance(packed, str):
                reason = packed
            else:
                with torch.no_grad():
                    out = packed(torch.ones(2, 256, device=device, dtype=getattr(torch, dtype)))
                if not torch.isfinite(out).all():
                    reason = f"{op} gave non-finite numbers on a probe layer"
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:
            reason = f"{op} failed on {device} in {dtype}: {str(error).splitlines()[0][:160]}"
    _PROBED[key] = reason
    return reason


class _KernelMatmul(torch.autograd.Function):
    """The kernel forward; backward through the dequantized weight (the kernels have none)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: KernelLinear) -> torch.Tensor:  # noqa: D102
        ctx.layer = layer
        return layer.kernel(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad @ ctx.layer.dequantized().to(grad.dtype), None


class KernelLinear(torch.nn.Module):
    """A Linear layer whose matmul is a low-bit kernel on packed weights (buffers computed once
    per layer); the bias is the original layer's Parameter, shared, never written."""

    def __init__(self, form: str, op: str, layer: torch.nn.Linear, group: int,
                 tensors: dict[str, Any]) -> None:
        super().__init__()
        self.form, self.op, self.group = form, op, group
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.bias = layer.bias
        from pytest_erasure.invariant import is_batch_invariant

        self.per_sample = type(layer) is not torch.nn.Linear and is_batch_invariant(layer)
        """The layer it replaces had batch-invariant form (`invariant.py`, on by default on
        the CPU): the kernel is then called per sample, so its row count, and with it the
        kernel's blocking and summation order, does not depend on the batch."""
        self.extra: dict[str, Any] = {}
        for name, value in tensors.items():
            if isinstance(value, torch.Tensor):
                self.register_buffer(name, value)
            else:
                self.extra[name] = value  # bitsandbytes' quant state

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kernel={self.op}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_sample and x.dim() > 1 and x.shape[0] > 1:
            return torch.cat([self.matmul(part) for part in x.split(1)])
        return self.matmul(x)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] through the kernel (and the bias), as one call."""
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        if flat.requires_grad and torch.is_grad_enabled():
            out = _KernelMatmul.apply(flat, self)
        else:
            out = self.kernel(flat)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] @ the layer's quantized weight, by the kernel, in x's dtype."""
        if self.form == "int8":
            return torch._weight_int8pack_mm(x, self.q, self.scale.to(x.dtype))
        if self.form == "4bit":
            if x.device.type == "cpu":
                return torch._weight_int4pack_mm_for_cpu(x, self.packed, self.group,
                                                         self.scales_zeros.to(x.dtype))
            out = torch._weight_int4pack_mm(x.to(torch.bfloat16), self.packed, self.group,
                                            self.scales_zeros.to(torch.bfloat16))
            return out.to(x.dtype)
        if self.form == "fp8-e4m3":
            rows = x.float()
            scale_x = rows.abs().amax(dim=1, keepdim=True) / E4M3_MAX
            scale_x = torch.where(scale_x > 0, scale_x, torch.ones_like(scale_x))
            xq = (rows / scale_x).to(torch.float8_e4m3fn)
            out_dtype = x.dtype if x.device.type == "cpu" else torch.bfloat16
            out = torch._scaled_mm(xq, self.q.t(), scale_a=scale_x,
                                   scale_b=self.scale.reshape(1, -1), out_dtype=out_dtype)
            return out.to(x.dtype)
        import bitsandbytes as bnb

        return bnb.matmul_4bit(x, self.q.t(), quant_state=self.extra["state"]).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by, float32 [N, K] (for gradients and tests)."""
        if self.form in ("int8", "fp8-e4m3"):
            return self.q.float() * self.scale.float().reshape(-1, 1)
        if self.form == "4bit":
            n, k = self.out_features, self.in_features
            groups = self.q.float().reshape(n, k // self.group, self.group)
            return (groups * self.scales.float().unsqueeze(-1)).reshape(n, k)
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(self.q, self.extra["state"]).float()


def pack(layer: torch.nn.Linear, form: str, group: int) -> KernelLinear | str:
    """`layer` as a `KernelLinear` for `form` on its own device, or why it cannot take the
    kernel (a reason, counted by the overlay, which keeps that layer quantize-dequantize).
    Codes and scales are `grids.integer_codes` / `fp8_codes`, in float32, as quantize-
    dequantize computes them, so both paths multiply by the same quantized weights."""
    device = layer.weight.device
    op = op_for(form, str(device))
    if op is None:
        return f"no {form} kernel on {device.type}"
    if layer.weight.dtype not in FLOATS:
        return f"weights in {layer.weight.dtype}"
    w = layer.weight.detach().to(torch.float32)
    n, k = w.shape
    if form == "int8":
        codes, scale = integer_codes(w, 8, 0)
        return KernelLinear(form, op, layer, 0, {"q": codes.to(torch.int8),
                                                 "scale": scale.squeeze(1)})
    if form == "4bit":
        if group not in INT4_GROUPS:
            return f"group size {group} (the int4 kernel takes {INT4_GROUPS})"
        if k % group:
            return f"in_features not a multiple of {group}"
        if n % (16 if device.type == "cpu" else 8):
            return f"out_features not a multiple of {16 if device.type == 'cpu' else 8}"
        codes, grouped = integer_codes(w, 4, group)  # k is a multiple of group: no padding
        scales = grouped.squeeze(-1)
        q = codes.to(torch.int8).reshape(n, k)
        # tinygemm's [K / group, N, 2] scales and zero points (zero point 0: symmetric grid)
        scales_zeros = torch.stack([scales.t(), torch.zeros_like(scales.t())], dim=-1)
        if device.type == "cpu":
            packed = torch._convert_weight_to_int4pack_for_cpu((q + 8).to(torch.int32), 1)
        else:
            tiles = next((t for t in (8, 4, 2) if k % (16 * t) == 0), None)
            if tiles is None:
                return "in_features not a multiple of 32 (the CUDA int4 kernel's k-tiles)"
            unsigned = (q + 8).to(torch.uint8)
            packed = torch._convert_weight_to_int4pack(
                (unsigned[:, ::2] << 4 | unsigned[:, 1::2]).contiguous(), tiles)
        return KernelLinear(form, op, layer, group, {
            "q": q, "scales": scales, "packed": packed,
            "scales_zeros": scales_zeros.contiguous()})
    if form == "fp8-e4m3":
        if device.type == "cuda" and (k % 16 or n % 16):
            return "in_features or out_features not a multiple of 16 (fp8 GEMMs on CUDA)"
        q, scale = fp8_codes(w)
        return KernelLinear(form, op, layer, 0, {"q": q, "scale": scale.squeeze(1)})
    import bitsandbytes.functional as bnbf

    try:
        q, state = bnbf.quantize_4bit(layer.weight.detach(), blocksize=group, quant_type="nf4")
    except (RuntimeError, ValueError, AssertionError) as error:
        return f"bitsandbytes refused blocksize {group}: {str(error)[:80]}"
    return KernelLinear(form, op, layer, group, {"q": q, "state": state})
