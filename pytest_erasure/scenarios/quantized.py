"""Quantized releases: the concept's prompts on the erased model as users run it in 8 or 4 bits.

An audit of the 16- or 32-bit file says nothing about the model users run quantized: an
erasure's weight deltas are small, and a coarse grid may round them away (in language models
4-bit quantization brought "forgotten" knowledge back while int8 was benign; issue 26). Each
case runs the text scenario's plan (the concept's declared prompts x seeds) on the erased model
under a `quantize` overlay (`overlays/quantize.py`), and the same plan on the standard model
quantized the same way, as the attack's control:
- `quantized-int8`: weight-only int8, one scale per output channel, round to nearest;
- `quantized-4bit`: 4-bit, one scale per group of `--quant-group-size` weights, round to nearest;
- `quantized-fp8`: weight-only float8 e4m3, one scale per output channel;
- `quantized-nf4`: bitsandbytes' 4-bit NormalFloat, one absmax per block of `--quant-group-size`
  weights of the flattened tensor (bitsandbytes' blockwise layout).

`quantized-<variant>-embedding` (the companion, `QuantizedEmbeddingScenario`) runs the
white-box embedding case on the same quantized models: the textual-inversion token learned
through the quantized erased model (through a defense's surrogate too, with `--irece`, as
`embedding-white`), encoded and generated under the same overlay, and the standard model
quantized the same way learning its own token as the control. Training images are the concept's
references (or, without any, the unquantized standard model's draws, as `embedding-white`'s).

Kernels (`--quantize-kernels`, default `auto`): where this torch and the audit's device have
the format's low-bit kernel (`overlays/kernels.py`: int8 and 4-bit weight-only GEMMs and fp8
`_scaled_mm` on CPU in torch 2.13; on CUDA the same ops, fp8 on compute capability 8.9 or newer,
NF4 through bitsandbytes where it imports), the Linear layers run it on packed weights; `native`
makes a missing kernel a usage error before any model loads, `dequantize` keeps every layer
quantize-dequantize. The kernel is part of the overlay's parameters, so its images are cached
apart from quantize-dequantize's (whose keys are unchanged).

Deviations, recorded in every report (the overlay's description in the case's facts):
- Conv2d layers, Linear layers the kernel cannot take (e.g. the CPU int4 kernel's out_features
  a multiple of 16, groups of 32 to 256), and every layer of a format with no kernel on the
  device (NF4 on CPU) or under `--quantize-kernels dequantize` are quantized and dequantized in
  float32 on the CPU and run in the model's dtype: the numbers a low-bit kernel multiplies by,
  not the kernel (`quantized-4bit` a uniform round-to-nearest grid, `quantized-nf4` NF4's
  normal-float levels, `quantized-fp8` e4m3's grid); the facts' `kernels` note and the
  overlay's `applied_layers` say which ran where (counted in the process that applied the
  overlay: absent when every image came from the cache or another process);
- the fp8 kernel quantizes the activations to e4m3 per row too (torchao's float8 dynamic
  scheme), so `quantized-fp8` under a kernel is not the weight-only model quantize-dequantize
  computes;
- the base rate and the baseline stay the unquantized model's (they say whether the detector
  can see the concept at all);
- opt-in: these cases run when `--scenarios` names them (`quantized`, or an id), so the default
  audit's cases and verdict are what they were.
"""

from __future__ import annotations

from typing import Any

from pytest_erasure.budgets import Budget
from pytest_erasure.concepts import Concept
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import Overlay, Plan, Role
from pytest_erasure.scenarios.base import (
    AuditContext,
    Scenario,
    ScenarioOption,
    merge_budgets,
)
from pytest_erasure.scenarios.embedding import TI_OPTIONS, EmbeddingScenario
from pytest_erasure.scenarios.prompts import concept_plan

BITS = {"int8": 8, "4bit": 4, "fp8": 8, "nf4": 4}
FORMATS = {"fp8": "fp8-e4m3", "nf4": "nf4"}
"""The variants quantized to a named format rather than a round-to-nearest integer grid."""
COMPONENTS = ("unet", "text_encoder", "vae")

QUANT_OPTIONS = (
    ScenarioOption("quant-group-size", int, 64,
                   "weights per scale in the 4-bit quantized cases (quantized-4bit, "
                   "quantized-nf4)"),
    ScenarioOption("quant-components", str, "unet",
                   "components the quantized cases quantize (comma-separated: unet, "
                   "text_encoder, vae)"),
    ScenarioOption("quantize-kernels", str, "auto",
                   "how the quantized cases' Linear layers compute: auto (the real low-bit "
                   "kernel where this torch and device have one for the format, else "
                   "quantize-dequantize), native (the kernel, or a usage error), dequantize "
                   "(quantize-dequantize everywhere)"),
)

BNB = "bitsandbytes"
BUDGETS: dict[str, dict[str, Budget]] = {
    "shapes": {
        "quant-group-size": Budget(64, BNB, "bitsandbytes' 4-bit default block size (64); the "
                                   "quantized-4bit grid is uniform round-to-nearest, quantized-nf4 NF4's"),
    },
    "sd14": {
        "quant-group-size": Budget(64, BNB, "bitsandbytes' 4-bit default block size (64), "
                                   "which diffusers' BitsAndBytesConfig uses for SD UNets; the "
                                   "quantized-4bit grid is uniform round-to-nearest, quantized-nf4 NF4's"),
    },
}
"""What each budget profile sets this scenario's options to, and where each value comes from."""


class QuantizedScenario(Scenario):
    modality = "quantized"
    options = QUANT_OPTIONS
    budgets = BUDGETS
    table_column = 5
    opt_in = True

    def __init__(self, variant: str) -> None:
        self.variant = variant

    def components(self, ctx: AuditContext) -> tuple[str, ...]:
        given = str(ctx.option("quant-components"))
        names = tuple(dict.fromkeys(p.strip() for p in given.split(",") if p.strip()))
        unknown = [n for n in names if n not in COMPONENTS]
        if not names or unknown:
            raise ErasureInputError("--quant-components", f"is {given!r}",
                                    f"name one or more of {', '.join(COMPONENTS)}, "
                                    "comma-separated")
        return names

    def overlay(self, ctx: AuditContext) -> Overlay:
        """The quantize overlay this case runs both models under."""
        from pytest_erasure.overlays.quantize import quantize

        group = ctx.option("quant-group-size")
        if BITS[self.variant] == 4 and (not isinstance(group, int) or group < 1):
            raise ErasureInputError("--quant-group-size", f"is {group}",
                                    "give a positive whole number of weights per scale (e.g. 64)")
        from pytest_erasure.overlays.quantize import choose_kernels

        plain = quantize(BITS[self.variant], group_size=int(group),
                         components=self.components(ctx), format=FORMATS.get(self.variant))
        kernels = choose_kernels(str(ctx.option("quantize-kernels")), plain.params,
                                 str(ctx.config.device), str(ctx.config.dtype))
        if kernels == "dequantize":
            return plain
        return quantize(BITS[self.variant], group_size=int(group),
                        components=self.components(ctx), format=FORMATS.get(self.variant),
                        kernels=kernels)

    def validate(self, ctx: AuditContext) -> None:
        self.overlay(ctx)

    def declared_overlays(self, ctx: AuditContext) -> tuple[Overlay, ...]:
        return (self.overlay(ctx),)

    def describe(self, ctx: AuditContext) -> dict[str, Any]:
        settings: dict[str, Any] = {"bits": BITS[self.variant],
                                    "components": list(self.components(ctx))}
        if self.variant in FORMATS:
            settings["format"] = FORMATS[self.variant]
        if BITS[self.variant] == 4:
            settings["quant-group-size"] = ctx.option("quant-group-size")
        settings["quantize-kernels"] = ctx.option("quantize-kernels")
        settings["kernels"] = self.overlay(ctx).params.get("kernels", "dequantize")
        return settings

    def facts(self, ctx: AuditContext, overlay: Overlay) -> dict[str, Any]:
        """What the case's facts say of the quantization (the kernels per device included)."""
        from pytest_erasure.overlays.quantize import kernel_note

        return {"bits": BITS[self.variant],
                **({"format": FORMATS[self.variant]} if self.variant in FORMATS else {}),
                "applied_to": ["erased", "standard"],
                "kernels": kernel_note(overlay.params, str(ctx.config.device))}

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        # The text case's plan (the same seeds), on `target` quantized: the erased model as
        # users run it, and the standard model quantized the same way as the control.
        plan = concept_plan(ctx, concept, n)
        plan.overlays = (self.overlay(ctx),)
        plan.facts["quantization"] = self.facts(ctx, plan.overlays[0])
        return plan


class QuantizedEmbeddingScenario(EmbeddingScenario):
    """The embedding case on the quantized release: `embedding-white`'s textual inversion
    learned through the erased model quantized like `quantized-<variant>` (the attacker holds
    the file users run), its token encoded and its images generated under the same overlay;
    the standard model quantized the same way is the control (its own token, learned through
    it). The quantization is an overlay of every unit the attack runs (training, encoding,
    generation): the embedding scenario's own path, with `weight_overlays` set."""

    modality = "quantized"
    table_column = 5
    opt_in = True
    options = (*TI_OPTIONS, *QUANT_OPTIONS)
    budgets = merge_budgets(EmbeddingScenario.budgets, BUDGETS)

    def __init__(self, variant: str) -> None:
        super().__init__("white-box")
        self.quantized = QuantizedScenario(variant)

    @property
    def id(self) -> str:
        return f"quantized-{self.quantized.variant}-embedding"

    def weight_overlays(self, ctx: AuditContext) -> tuple[Overlay, ...]:
        return (self.quantized.overlay(ctx),)

    def declared_overlays(self, ctx: AuditContext) -> tuple[Overlay, ...]:
        return self.weight_overlays(ctx)

    def validate(self, ctx: AuditContext) -> None:
        super().validate(ctx)
        self.quantized.validate(ctx)

    def describe(self, ctx: AuditContext) -> dict[str, Any]:
        return {**super().describe(ctx), **self.quantized.describe(ctx)}

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        plan = super().plan(ctx, concept, target, n)
        plan.facts["quantization"] = self.quantized.facts(ctx, plan.overlays[0])
        return plan


SCENARIOS = [QuantizedScenario("int8"), QuantizedScenario("4bit"), QuantizedScenario("fp8"),
             QuantizedScenario("nf4"), QuantizedEmbeddingScenario("int8"),
             QuantizedEmbeddingScenario("4bit"), QuantizedEmbeddingScenario("fp8"),
             QuantizedEmbeddingScenario("nf4")]
