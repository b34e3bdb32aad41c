"""Attack budget profiles: the value of every attack option in a named world, with its source.

A weak attacker finds nothing, and a case whose attack found nothing passes: an SD v1.4 audit
run at budgets sized for the shapes world (100 textual-inversion steps, a Ring-A-Bell search of
~1.5% of the published evaluations) would pass models that the published attacks break.
`--erasure-budget sd14` sets every attack option to what the published attack on SD v1.4 used,
and each value carries the paper or repository it comes from (`docs/methods.md`
lists them), or "ours" where nothing was published; the profile, the resolved values and their
sources go into every report.

Precedence, per option: a value the user gave (flag or ini) > the profile's > the
`ScenarioOption` default. The shapes profile holds the options' defaults, so an audit without
`--erasure-budget` is the audit it was before profiles existed (a test holds the two equal).

Options no profile names (rab-targets, rab-keep, fuzz-property-threshold, ...) are settings
rather than budgets, or have nothing published to follow; they keep their defaults.

Each scenario declares its own options' values per profile (`Scenario.budgets`, gathered by
`scenarios.base.budget_profiles`), so this module names no scenario: it holds the profiles'
names, the audit settings each sets (`SETTINGS`), the sources' names, and the rules. A scenario
from outside the package declares its budgets the same way, and may name a profile of its own.

Memory of the sd14 textual-inversion budget (micro-batch 1 x accumulation 4 at 512x512, fp16
on one 80 GB GPU) — counted on the CPU, not measured on a GPU (this project has none): the
bytes autograd saves for backward in one TI step of one sample on the full-size SD v1.4
architecture (`pytest_erasure.testing.sd14.sd14_pipeline()`, random weights, float32), counted with
`torch.autograd.graph.saved_tensors_hooks`, each storage once, weights and buffers excluded:
133 MiB at 128 px, 395 MiB at 256 px, 1444 MiB at 512 px (one step at 512 px ran on the CPU;
the count is linear in pixels, since scaled-dot-product attention saves no probability
matrix: 128 and 256 px predict 1444). In fp16 that is ~0.72 GB per micro-batch sample, beside
~2.1 GB of fp16 weights (UNet ~860M, CLIP ViT-L ~123M, VAE ~84M parameters); AdamW's state
for one 768-vector is nothing. So the sd14 budget needs ~3 GB plus the backward's transient
buffers and allocator slack (not counted), and even a micro-batch of 16 (Concept Inversion's
4 x 4 without accumulation) would need ~14 GB: accumulation is there for smaller GPUs and
larger budgets, not because 80 GB are short. Gradient accumulation does not change the peak
(micro-batches run one after another; only the 768-float gradient is summed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_erasure.errors import ErasureInputError

DEFAULT_PROFILE = "shapes"


@dataclass(frozen=True)
class Budget:
    """One option's value in a profile and where that value comes from."""

    value: Any
    source: str
    """Short name of the source for `--help`: a paper, or 'ours' when nothing was published."""
    detail: str = ""
    """What exactly the source says, or why we chose the value (reports carry it)."""


WACE = "When Are Concepts Erased"
WACE_REPO = "kevinlu4588/WhenAreConceptsErased"
CI = "Concept Inversion"
RAB = "Ring-A-Bell"
RAB_REPO = "chiayi-hsu/Ring-A-Bell (Tsai et al., ICLR 2024)"
MOFC = "Memories of Forgotten Concepts"
MOFC_REPO = "matanr/Memories_of_Forgotten_Concepts"
SHAPES_WORLD = "sized for the shapes world (CPU minutes)"

SETTINGS: dict[str, dict[str, Budget]] = {
    "shapes": {
        "steps": Budget(25, "ours", "the shapes world's denoising steps (the --steps default)"),
    },
    "sd14": {
        "steps": Budget(50, MOFC, f"{MOFC_REPO}: DDIM inversion over 50 steps; generation at "
                        "the same 50 steps makes the latent round trip exact (and 50 is SD "
                        "v1.4's own PNDM default)"),
    },
}
"""What each profile sets of the audit options (`AuditConfig` fields, keyed by field name),
beside the scenario options the scenarios declare (`Scenario.budgets`): every step count a
profile's attacks depend on is set by the profile, so `--erasure-budget=sd14` alone gives an
exact DDIM round trip. Resolved with the same rule as every setting
(`AuditConfig.from_values`): command line > concepts file > profile > default."""


Profiles = dict[str, dict[str, Budget]]
"""{profile name: {option name: Budget}}: what every scenario declares (`Scenario.budgets`)."""


def names(profiles: Profiles) -> list[str]:
    """Every profile's name: the built-in worlds', then those scenarios add."""
    return list(dict.fromkeys([*SETTINGS, *profiles]))


def profile(name: str, profiles: Profiles) -> dict[str, Budget]:
    """The profile called `name`; a usage error naming the choices for any other name."""
    key = str(name).strip().lower()
    if key not in names(profiles):
        raise ErasureInputError("--erasure-budget", f"'{name}' is not a budget profile",
                                f"use one of: {', '.join(names(profiles))}")
    return dict(profiles.get(key, {}))


def help_note(option: str, default: Any, profiles: Profiles) -> str:
    """The `--help` suffix: each profile's value and source, e.g. '(shapes: 100, ours; sd14:
    3000, When Are Concepts Erased)', or the plain default for an option no profile sets."""
    parts = [f"{name}: {budgets[option].value}, {budgets[option].source}"
             for name, budgets in profiles.items() if option in budgets]
    if not parts:
        return f"(default: {default})"
    return "(" + "; ".join(parts) + "; chosen by --erasure-budget)"


def settings(name: str, profiles: Profiles | None = None) -> dict[str, Budget]:
    """The audit options (AuditConfig fields) profile `name` sets (a name checked against
    `profiles` when given; a profile a scenario adds sets none)."""
    if profiles is not None:
        profile(name, profiles)
    return SETTINGS.get(str(name).strip().lower(), {})


def resolve(name: str, given: dict[str, Any], defaults: dict[str, Any] | None = None,
            given_sources: dict[str, str] | None = None, profiles: Profiles | None = None
            ) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, sources) of every option in `given`, the profile or `defaults`: what the user
    gave wins over the profile, which wins over the default. Sources say which (`given_sources`
    names where each given value was given: the command line or the ini file), and for a
    profile value, the paper or repository it comes from."""
    budgets = profile(name, profiles or {})
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option, value in (defaults or {}).items():
        values[option], sources[option] = value, "option default (no profile sets it)"
    for option, budget in budgets.items():
        if defaults is None or option in defaults:
            values[option] = budget.value
            detail = f": {budget.detail}" if budget.detail else ""
            sources[option] = f"profile {name}, {budget.source}{detail}"
    for option, value in given.items():
        values[option] = value
        sources[option] = (given_sources or {}).get(option, "set by the user (flag or ini)")
    return values, sources
