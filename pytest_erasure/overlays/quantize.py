"""The `quantize` overlay: weight-only quantization, by real low-bit kernels or quantize-dequantize.

What a quantized release of an erased model computes with: every Linear and Conv2d weight of
the named components (default: the UNet) rounded to a grid and mapped back to the model's dtype.
- `bits=8`: symmetric int8, one scale per output channel (scale = max|w| / 127, q in
  [-127, 127]);
- `bits=4`: symmetric 4-bit, one scale per group of `group_size` consecutive input weights of an
  output channel (scale = max|w| / 7, q in [-8, 7]; a last group may be shorter).
Computed in float32 on the CPU and put back in the model's dtype and device; biases, norms and
embeddings are kept. This measures the rounding a quantized model carries, not int8 / int4
kernels: activations stay in the model's dtype (the weights are stored dequantized).

With `kernels="native"` in the parameters (`--quantize-kernels`: `auto` picks it where this torch
and device have the format's kernel), the Linear layers run the real kernel instead, on weights
packed once per layer (`overlays/kernels.py`: torch's int8 / int4 weight-only GEMMs, `_scaled_mm`
for fp8, bitsandbytes for NF4 on CUDA), swapped in as modules through the `Patch`, so removal
puts the original Linear objects back. Conv2d layers stay quantize-dequantize (no library runs
weight-only low-bit convolutions; `kernels.py` says which do what), and a Linear the kernel
cannot take (shape, group size) falls back to quantize-dequantize; both are counted and
reported (`applied_layers`). The parameter is absent for quantize-dequantize, so those cache
keys are what they always were, and present for kernels, whose images are other numbers.

Formats beyond round-to-nearest integers (`format` instead of `bits`):
- `fp8-e4m3`: weight-only float8 e4m3 (`torch.float8_e4m3fn`), one scale per output channel
  (scale = max|w| / 448, e4m3's largest finite value), cast to fp8 and back;
- `nf4`: bitsandbytes' 4-bit NormalFloat: the flattened weight in blocks of `group_size`
  (bitsandbytes' blocksize, default 64), each scaled by its absmax and rounded to the nearest
  of NF4's 16 levels (`bitsandbytes.functional`'s NF4 table), no double quantization (diffusers'
  `BitsAndBytesConfig` default);
- `float16`, `bfloat16`: a cast to that dtype and back, what a 16-bit release stores: exact
  (bit-identical images) on a model already in that dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.overlays import Patch, overlay_error
from pytest_erasure.overlays.grids import fp8_codes, integer_codes
from pytest_erasure.records import Overlay

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

COMPONENTS = ("unet", "text_encoder", "vae")
BITS = (8, 4)
DEFAULT_GROUP = 64


FORMATS = ("fp8-e4m3", "nf4", "float16", "bfloat16")
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
"""bitsandbytes' NF4 code book (the 16 quantiles of N(0, 1) normalised to [-1, 1], with an
exact zero), as `bitsandbytes.functional.get_4bit_type("nf4")` lists it."""

KERNELS = ("auto", "native", "dequantize")
"""`--quantize-kernels`: the real kernel where the device has one (auto), the kernel or a usage
error (native), or quantize-dequantize everywhere (dequantize, what every run did before)."""

NATIVE: dict[str, tuple[str, str]] = {
    "int8": ("int8 weight-only GEMMs (bitsandbytes, torchao)", "cuda"),
    "4bit": ("4-bit group-wise GEMMs (torchao int4 weight-only, GPTQ/AWQ kernels)", "cuda"),
    "fp8-e4m3": ("fp8 GEMMs (compute capability 8.9 or newer)", "cuda"),
    "nf4": ("bitsandbytes' 4-bit kernels", "cuda"),
}
"""Per format: the low-bit kernels users run it with, and the device type users run them on.
Where this torch and the audit's device have none (`kernels.op_for`: NF4 on CPU), or the run
asks for `dequantize`, quantize-dequantize is the honest fallback: the same weights those
kernels multiply by (bitsandbytes' 4-bit matmul itself dequantizes its blocks to 16 bits before
a batched GEMM). Reports say which (`kernel_note`)."""


def form_of(params: dict[str, Any]) -> str:
    """The overlay's format name as `NATIVE` keys it (the integer grids by their bits)."""
    form = params.get("format")
    if form is not None:
        return str(form)
    return "int8" if params.get("bits") == 8 else "4bit"


def kernel_note(params: dict[str, Any], device: str) -> str:
    """What the report says about kernels for this format on `device`: the kernel that ran,
    or why none did."""
    form = form_of(params)
    if form in ("float16", "bfloat16"):
        return f"none needed: {form} weights run as they are"
    what, where = NATIVE[form]
    kind = device.split(":")[0]
    dequantized = ("the weights were quantized and dequantized on the CPU in float32 (the "
                   "numbers those kernels multiply by)")
    if params.get("kernels") == "native":
        from pytest_erasure.overlays.kernels import op_for

        return (f"{op_for(form, device) or what} on {kind}: every Linear layer of "
                f"{', '.join(params.get('components', ['unet']))} the kernel takes ran it; "
                "Conv2d layers (no weight-only low-bit convolution kernels) and Linear layers "
                "it cannot take were quantized and dequantized (counts in the overlay's "
                "applied_layers)")
    op = available_op(form, kind)
    if op is not None:
        return (f"{kind} has {op}, but this audit ran --quantize-kernels dequantize (or the "
                f"format's settings fit no kernel): {dequantized}; it ran no low-bit kernel")
    if kind != where:
        return f"none on {kind}: {what} run on {where} only, so {dequantized}"
    return (f"{kind} may have {what}, but not with this torch; this audit quantized and "
            "dequantized the weights on the CPU in float32 (the numbers those kernels multiply "
            "by), it ran no low-bit kernel")


def available_op(form: str, device: str) -> str | None:
    """The kernel this torch exposes for `form` on `device`, by name (torch imported here)."""
    if form not in NATIVE:
        return None
    from pytest_erasure.overlays.kernels import op_for

    return op_for(form, device)


def choose_kernels(choice: str, params: dict[str, Any], device: str, dtype: str) -> str:
    """`--quantize-kernels` resolved for one format on the audit's device, before any model
    loads: "native" or "dequantize". `native` where no kernel runs is a usage error."""
    if choice not in KERNELS:
        raise ErasureInputError("--quantize-kernels", f"is {choice!r}",
                                f"use one of {', '.join(KERNELS)}")
    form = form_of(params)
    if choice == "dequantize" or form not in NATIVE:
        return "dequantize"  # 16-bit formats need no kernel: nothing to choose
    from pytest_erasure.overlays.kernels import probe

    why = probe(form, int(params.get("group_size", DEFAULT_GROUP)), device, dtype)
    if why is None:
        return "native"
    if choice == "native":
        raise ErasureInputError("--quantize-kernels", f"is 'native' but {why}",
                                "use --quantize-kernels auto (quantize-dequantize where no "
                                "kernel runs) or dequantize, or audit on a device that has it")
    return "dequantize"


def check_computable(overlay: Overlay, torch_module: Any = None) -> None:
    """Refuse a format whose numbers this torch cannot compute (before any model loads): fp8
    needs torch's float8_e4m3fn dtype (torch 2.1 or newer)."""
    if overlay.params.get("format") != "fp8-e4m3":
        return
    if torch_module is None:
        import torch as torch_module
    if not hasattr(torch_module, "float8_e4m3fn"):
        raise overlay_error(overlay, "needs torch's float8_e4m3fn dtype, which this torch "
                            f"({getattr(torch_module, '__version__', '?')}) lacks",
                            "install torch 2.1 or newer, or audit another format")


def quantize(bits: int = 8, group_size: int = DEFAULT_GROUP,
             components: tuple[str, ...] = ("unet",), format: str | None = None,
             kernels: str = "dequantize") -> Overlay:
    """A `quantize` overlay (int8 per-channel, 4-bit group-wise, or a named `format`); checked
    at once. The integer grids keep the parameters they always had (their cache keys); real
    kernels (`kernels="native"`, resolved by `choose_kernels`) add `"kernels": "native"`."""
    params: dict[str, Any]
    if format is not None:
        params = {"format": format, "components": list(components)}
        if format == "nf4":
            params.update(group_size=group_size, scheme="blockwise")
        elif format == "fp8-e4m3":
            params["scheme"] = "per-channel"
    else:
        params = {"bits": bits, "components": list(components),
                  "scheme": "per-channel" if bits == 8 else "group"}
        if bits != 8:
            params["group_size"] = group_size
    if kernels != "dequantize":
        params["kernels"] = kernels
    overlay = Overlay("quantize", params)
    KIND.validate(overlay)
    return overlay


def dequantized(weight: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """`weight` through the overlay's grid and back (float32, CPU), or cast back to the 16-bit
    dtype for the 16-bit formats."""
    import torch

    form = params.get("format")
    if form is None:
        return round_to_nearest(weight, int(params["bits"]),
                                int(params.get("group_size", DEFAULT_GROUP)))
    w = weight.detach().to("cpu", torch.float32)
    if form in ("float16", "bfloat16"):
        return w.to(getattr(torch, form))
    if form == "fp8-e4m3":
        q, scale = fp8_codes(w)
        return (q.to(torch.float32) * scale).reshape(w.shape)
    return nf4(w, int(params.get("group_size", DEFAULT_GROUP)))


def nf4(weight: torch.Tensor, block: int) -> torch.Tensor:
    """bitsandbytes' blockwise NF4 quantize-dequantize of `weight` (float32, CPU): the flattened
    tensor in blocks of `block`, each scaled by its absmax, each value the nearest NF4 level."""
    import torch

    flat = weight.reshape(-1)
    pad = (-len(flat)) % block
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, block)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    levels = torch.tensor(NF4_LEVELS, dtype=torch.float32)
    index = (blocks / absmax).unsqueeze(-1).sub(levels).abs().argmin(dim=-1)
    out = levels[index] * absmax
    return out.reshape(-1)[:len(flat)].reshape(weight.shape)


def round_to_nearest(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """`weight` quantized and dequantized (float32, CPU), per output channel (8 bits) or per
    group of `group_size` inputs of each output channel (4 bits)."""
    import torch

    w = weight.detach().to("cpu", torch.float32)
    q, scale = integer_codes(w, bits, group_size)
    columns = w[0].numel()
    return (q * scale).reshape(w.shape[0], -1)[:, :columns].reshape(w.shape)


class QuantizeKind:
    name = "quantize"

    def components(self, overlay: Overlay) -> tuple[str, ...]:
        return tuple(overlay.params.get("components", ("unet",)))

    def validate(self, overlay: Overlay) -> None:
        params = overlay.params
        bits = params.get("bits")
        form = params.get("format")
        if form is not None and form not in FORMATS:
            raise overlay_error(overlay, f"has format={form!r}",
                                f"use one of {', '.join(FORMATS)}, or bits 8 / 4")
        if form is None and bits not in BITS:
            raise overlay_error(overlay, f"has bits={bits!r}", "use 8 (int8 per-channel) or 4 "
                                "(4-bit group-wise)")
        if bits == 4 or form == "nf4":
            group = params.get("group_size")
            if not isinstance(group, int) or isinstance(group, bool) or group < 1:
                raise overlay_error(overlay, f"has group_size={group!r}",
                                    "give a positive whole number of weights per group (e.g. 64)")
        unknown = [c for c in params.get("components", ()) if c not in COMPONENTS]
        if unknown or not params.get("components"):
            raise overlay_error(overlay, f"names components {params.get('components')!r}",
                                f"name one or more of {', '.join(COMPONENTS)}")
        if params.get("kernels", "native") != "native" or (
                "kernels" in params and form in ("float16", "bfloat16")):
            raise overlay_error(overlay, f"has kernels={params.get('kernels')!r}",
                                "leave it out (quantize-dequantize) or give 'native' for a "
                                "quantized format")
        check_computable(overlay)

    def describe(self, overlay: Overlay) -> dict[str, Any]:
        out = self._describe(overlay)
        if overlay.key in APPLIED:
            out["applied_layers"] = APPLIED[overlay.key]
        return out

    def _describe(self, overlay: Overlay) -> dict[str, Any]:
        params = overlay.params
        where = f"every Linear and Conv2d weight of {', '.join(self.components(overlay))}"
        if params.get("kernels") == "native":
            return {"description": f"{form_of(params)} weights ({self.grid(params)}) of "
                    f"{where}; Linear layers run the real low-bit kernel on packed weights "
                    "(activations in the model's dtype" + (", quantized to e4m3 per row at "
                    "every call" if form_of(params) == "fp8-e4m3" else "") + "); Conv2d "
                    "layers, which no weight-only low-bit kernel takes, and Linear layers the "
                    "kernel cannot take, as quantize-dequantize computed on the CPU in float32 "
                    "(applied_layers counts each)"}
        form = params.get("format")
        if form in ("float16", "bfloat16"):
            return {"description": f"{where} cast to {form} and back: what a {form} file "
                    "stores (exact on a model already in that dtype)"}
        if form == "fp8-e4m3":
            return {"description": "weight-only float8 e4m3 (one scale per output channel, "
                    f"max|w| / 448) of {where}, as quantize-dequantize computed on the CPU in "
                    "float32: the numbers an fp8 weight-only kernel multiplies by, not the "
                    "kernel"}
        if form == "nf4":
            return {"description": "bitsandbytes NF4 (4-bit NormalFloat levels, one absmax "
                    f"per block of {params['group_size']} weights, no double quantization) of "
                    f"{where}, as quantize-dequantize computed on the CPU in float32: the "
                    "numbers bitsandbytes' 4-bit kernels multiply by, not the kernels"}
        grid = ("int8, one scale per output channel" if params["bits"] == 8 else
                f"4-bit, one scale per group of {params['group_size']} weights")
        return {"description": f"weight-only round-to-nearest quantization ({grid}, "
                f"symmetric) of {where}, as quantize-dequantize computed on the "
                "CPU in float32: the rounding a quantized model carries, not low-bit kernels"}

    @staticmethod
    def grid(params: dict[str, Any]) -> str:
        form = form_of(params)
        if form == "int8":
            return "int8, one scale per output channel"
        if form == "4bit":
            return f"4-bit round-to-nearest, one scale per group of {params['group_size']}"
        if form == "fp8-e4m3":
            return "float8 e4m3, one scale per output channel"
        return f"NF4, one absmax per block of {params['group_size']}"

    def apply(self, pipe: StableDiffusionPipeline, overlay: Overlay, patch: Patch) -> None:
        """Each Linear and Conv2d weight quantized, through `patch`: a dequantized Parameter in
        place of the weight, or (kernels) a `KernelLinear` module in place of the Linear. What
        is derived is memoised per layer (`patch.memo`), and so are the counts, which
        `describe` reports (`APPLIED`, in the process that applied it)."""
        import torch

        native = overlay.params.get("kernels") == "native"
        counts: dict[str, Any] = {}
        for component in self.components(overlay):
            module = getattr(pipe, component)
            done = patch.memo.setdefault(component, {})
            tally: dict[str, int] = {}
            for name, layer in list(module.named_modules()):
                if not isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
                    continue
                if name not in done:
                    done[name] = self._derive(layer, overlay.params, native)
                derived = done[name]
                if isinstance(derived, tuple):  # (why no kernel, the dequantized weight)
                    reason, weight = derived
                    patch.parameter(layer, "weight", weight)
                    tally[reason] = tally.get(reason, 0) + 1
                else:
                    parent, _, child = name.rpartition(".")
                    patch.module(module.get_submodule(parent) if parent else module, child,
                                 derived)
                    tally["kernel"] = tally.get("kernel", 0) + 1
            counts[component] = tally
        if native:
            APPLIED[overlay.key] = counts

    @staticmethod
    def _derive(layer: Any, params: dict[str, Any], native: bool) -> Any:
        """A layer's kernel module, or (why not, its dequantized weight)."""
        import torch

        weight = layer.weight
        if native and isinstance(layer, torch.nn.Linear):
            from pytest_erasure.overlays.kernels import pack

            packed = pack(layer, form_of(params), int(params.get("group_size", DEFAULT_GROUP)))
            if not isinstance(packed, str):
                return packed
            reason = f"dequantized: {packed}"
        elif native:
            reason = "dequantized: Conv2d (no weight-only low-bit conv kernel)"
        else:
            reason = "dequantized"
        return reason, dequantized(weight, params).to(weight.device, weight.dtype)


APPLIED: dict[str, dict[str, Any]] = {}
"""overlay key -> per component, how many layers ran the kernel and why the rest did not (the
last application of a kernel overlay in this process; what `describe` reports)."""


KIND = QuantizeKind()
