"""What an inference-time defense is, and the registry that maps defense names to them.

A defense wraps the erased model's generation (never the standard model's): the audit then
measures the erased model *behind* it, and beside each erasure case the same plan without it
(the side-by-side in every report). `--<name>` enables one; at most one runs at a time, since
two callbacks on one denoising loop would each see the other's latents and the audit could not
say which of them held the concept back.

A defense declares its options as `ScenarioOption` records, the same as a scenario's: the
plugin turns them into flags and ini twins by the same code (`config.all_options`), and their
resolved values live in `AuditConfig.scenario_options` beside the scenarios'. So a defense
adds nothing to `AuditConfig` but its name in `AuditConfig.defense`, and no other module names
its options.

Third parties register defenses under the entry-point group `pytest_erasure.defenses` (value: a
module:attribute that is a `Defense` instance or a list of them). Importing the registry must
not import torch: the plugin builds it when pytest loads, so a defense module imports torch
only inside its functions.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pytest_erasure.concepts import Concept
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.records import GenerationInput
    from pytest_erasure.scenarios.base import AuditContext, ScenarioOption


@runtime_checkable
class Defense(Protocol):
    """An inference-time defense around the erased model's denoising loop."""

    name: str
    """Enabled by `--<name>` (ini twin `erasure_<name>`, with dashes as underscores)."""
    help: str
    options: tuple[ScenarioOption, ...]
    """Its settings: flags `--<option.name>` and ini twins, like a scenario's options."""

    def validate(self, config: AuditConfig) -> None:
        """Check the options (ErasureInputError) before any model loads. Called for every
        registered defense, enabled or not (a bad value the user typed is reported either
        way); what only matters when it runs (fits in --steps, matches the model) is checked
        when `config.defense` is this defense's name."""
        ...

    def describe(self, config: AuditConfig, ctx: AuditContext | None = None,
                 concept: Concept | None = None) -> dict[str, Any]:
        """JSON-able settings. Without a context: what every report shows. With the context
        and the concept being generated: everything the defended images depend on (the cache
        key of each image: its mask prompt, other models it runs, ...)."""
        ...

    def callback_factory(self, ctx: AuditContext, mask_concept: Concept
                         ) -> Callable[[list[GenerationInput]], Any]:
        """For one generation call: a function from a batch's inputs to the diffusers
        `callback_on_step_end` that defends that batch (it must expose `tensor_inputs`, the
        latents it reads and replaces). `mask_concept` is the concept the audit asks about,
        whatever the prompt is (learned tokens, the null prompt)."""
        ...


_BUILTIN_MODULES = ("pytest_erasure.defenses.irece",)
ENTRY_POINT_GROUP = "pytest_erasure.defenses"


def adaptive_form(defense: Defense) -> str | None:
    """How a white-box attack optimises through `defense` (its differentiable surrogate, in
    words for the report), or None when it declares none.

    A defense may carry an `adaptive` attribute: a white-box attacker holds the released weights
    and the defense's code, and attacks both (the evaluation rule for defenses: adaptive attacks,
    with gradients approximated where the defense is not differentiable and its randomness
    averaged). A defense that declares no adaptive form has its white-box cases measured as
    transfer attacks only (optimised on the undefended model, generated through the defense),
    which say nothing about an attacker who knows the defense: under `--erasure-threat=adaptive`
    (the default) such a case never passes. Optional, so defenses written before it still load.

    The form is the words and the means together: `adaptive` (the words) and
    `surrogate(site, mask_concept, role, seed)`, which builds the defense inside an attack's
    objective where the attack runs (`attacks.textual_inversion.DefenseSurrogate`; its
    `sampling()`, where it has one, the defense inside an unrolled sampler for the adaptive
    DDIM inversion, `attacks.inversion.SamplingDefense`), with
    `adaptive_key(config, ctx, concept)`, what the attack's result then depends on (its cache
    key). Words without a surrogate are no form: nothing could run them. A defense whose
    surrogate also runs inside an unrolled sampler (`surrogate(...).sampling()`, for the
    adaptive DDIM inversion) says so with `adaptive_sampling = True`; without it the latent
    cases stay transfer attacks."""
    form = getattr(defense, "adaptive", None)
    if not form or not callable(getattr(defense, "surrogate", None)):
        return None
    return str(form)


def attacked_through(config: AuditConfig, defense: Defense | None) -> Defense | None:
    """The defense a white-box attack on the erased model optimises through: the enabled one
    when it has an adaptive form and the run gates the adaptive attacker
    (`--erasure-threat=adaptive`); None (the attack runs on the undefended model) otherwise.
    Under `--erasure-threat=transfer` the release is gated against an attacker who cannot reach
    the defense, and the attack is the transfer attack that attacker would run."""
    if defense is None or adaptive_form(defense) is None:
        return None
    return defense if getattr(config, "threat", "adaptive") == "adaptive" else None


def registry() -> dict[str, Defense]:
    """Every defense by name: built-in modules first, then entry points (a name already taken
    keeps its first owner)."""
    import importlib

    found: dict[str, Defense] = {}
    for module_name in _BUILTIN_MODULES:
        module = importlib.import_module(module_name)
        for defense in getattr(module, "DEFENSES", ()):
            found.setdefault(defense.name, defense)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()
        for defense in loaded if isinstance(loaded, list | tuple) else [loaded]:
            found.setdefault(defense.name, defense)
    return found


def enable_dest(defense: Defense) -> str:
    """The argparse dest and ini key of `--<name>`: `erasure_irece` (the name it always had)."""
    return "erasure_" + defense.name.replace("-", "_")


def option_value(config: AuditConfig, option: ScenarioOption) -> Any:
    """A defense option's resolved value (given > budget profile > default); the default when
    the config was built without the registered defaults (`AuditConfig.from_values`)."""
    return config.scenario_options.get(option.name, option.default)


def settings_text(description: dict[str, Any] | None) -> str:
    """'defense irece (t_star=0.2, tau=0.4, ...)' from the `config.defense` a report holds."""
    if not description:
        return "no defense"
    settings = description.get("settings") or {}
    inner = ", ".join(f"{k}={v}" for k, v in settings.items())
    return f"defense {description.get('name')}" + (f" ({inner})" if inner else "")
