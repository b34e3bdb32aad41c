"""Attack budget profiles (`--erasure-budget`): values, sources, precedence, reports, --help."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.budgets import help_note, profile, resolve, settings
from pytest_erasure.config import budget_profiles
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.scenarios.base import iter_options, registry

DEFAULTS = {o.name: o.default for o in iter_options(registry())}
PROFILES = budget_profiles()  # what the scenarios declare (`Scenario.budgets`)


def test_shapes_profile_is_todays_defaults_and_every_name_is_an_option():
    for name, budgets in PROFILES.items():
        assert set(budgets) <= set(DEFAULTS), (name, set(budgets) - set(DEFAULTS))
        assert all(b.source and b.detail for b in budgets.values()), name
    assert {k: b.value for k, b in PROFILES["shapes"].items()} == \
        {k: DEFAULTS[k] for k in PROFILES["shapes"]}
    # Without --erasure-budget every option resolves to its default: today's audit.
    values, _ = resolve("shapes", {}, DEFAULTS, profiles=PROFILES)
    assert values == DEFAULTS
    assert set(PROFILES["sd14"]) == set(PROFILES["shapes"])


def test_sd14_profile_is_what_the_published_attacks_used():
    sd14 = profile("sd14", PROFILES)
    assert {k: sd14[k].value for k in ("ti-steps", "ti-batch-size", "ti-accumulation",
                                       "ti-init-token", "ti-train-images")} == \
        {"ti-steps": 3000, "ti-batch-size": 1, "ti-accumulation": 4, "ti-init-token": "object",
         "ti-train-images": 25}
    assert sd14["ti-lr"].value == pytest.approx(5e-4 * 1 * 4)  # "5e-4 scaled" by batch x accum
    assert sd14["ti-steps"].source == "When Are Concepts Erased"
    assert sd14["ti-train-images"].source == "Concept Inversion"
    assert {k: sd14[f"rab-{k}"].value for k in ("population", "generations", "tokens", "eta",
                                                "mutation", "crossover")} == \
        {"population": 200, "generations": 3000, "tokens": 16, "eta": 3.0, "mutation": 0.25,
         "crossover": 0.5}
    assert all(sd14[f"rab-{k}"].source == "Ring-A-Bell" for k in ("population", "tokens"))
    assert (sd14["inversion-steps"].value, sd14["inversion-prompt"].value) == (50, "concept")
    assert sd14["inversion-steps"].source == "Memories of Forgotten Concepts"
    # Where nothing was published the profile says so.
    assert sd14["fuzz-examples"].source == "ours" and "no published" in sd14["fuzz-examples"].detail


def test_help_names_each_profiles_value_and_source():
    assert help_note("ti-steps", 100, PROFILES) == \
        "(shapes: 100, ours; sd14: 3000, When Are Concepts Erased; chosen by --erasure-budget)"
    assert help_note("rab-keep", 4, PROFILES) == "(default: 4)"


def test_unknown_profile_is_a_usage_error_naming_the_choices():
    with pytest.raises(ErasureInputError, match="use one of: shapes, sd14"):
        profile("huge", PROFILES)


def test_precedence_given_then_profile_then_default():
    from pytest_erasure.session import default_config

    config = default_config(budget="sd14", scenario_options={"ti-steps": 7})
    assert config.scenario_options["ti-steps"] == 7
    assert config.scenario_sources["ti-steps"] == "set by the user (flag or ini)"
    assert config.scenario_options["rab-population"] == 200
    assert config.scenario_sources["rab-population"].startswith("profile sd14, Ring-A-Bell")
    described = config.describe()
    assert described["budget_profile"]["name"] == "sd14"
    assert described["scenario_options"]["ti-accumulation"] == 4
    assert "When Are Concepts Erased" in described["budget_profile"]["sources"]["ti-accumulation"]
    import json

    json.dumps(described)  # the JSON report's config
    assert default_config().scenario_options["ti-steps"] == 100  # the shapes profile


def test_scenario_settings_show_resolved_values(tiny_world: dict[str, Path]):
    """What the scenarios read (and record in their facts and cache keys) is the profile's."""
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.session import AuditSession, default_config

    world = tiny_world

    config = default_config(budget="sd14", concepts_file=world["concepts"],
                            scenario_options={"rab-generations": 10})
    ctx = AuditSession(config, load_concepts(world["concepts"])).context
    scenarios = registry()
    budget = scenarios["embedding-white"].budget(ctx)
    assert budget == {"steps": 3000, "lr": pytest.approx(2e-3), "batch_size": 1,
                      "init_token": "object", "num_vectors": 1, "accumulation": 4}
    settings = scenarios["adversarial-black"].describe(ctx)
    assert (settings["rab-population"], settings["rab-generations"], settings["rab-tokens"]) == \
        (200, 10, 16)
    circle = ctx.concepts.concepts["circle"]
    inversion = scenarios["latent-white-null"].inversion_settings(ctx, circle)
    assert inversion == {"prompt": circle.texts()[0], "steps": 50, "guidance": 1.0}
    # The shapes profile leaves accumulation out of the budget: cache keys as before.
    shapes = AuditSession(default_config(concepts_file=world["concepts"]),
                          load_concepts(world["concepts"])).context
    assert "accumulation" not in scenarios["embedding-white"].budget(shapes)


def test_plugin_resolves_flags_ini_and_profile(pytester: pytest.Pytester, tiny_world: dict[str, Path]):
    from pytest_erasure.config import AuditConfig

    paths = [f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['erased']}",
             f"--concepts={tiny_world['concepts']}", "-p", "no:cacheprovider"]
    pytester.makeini("[pytest]\nerasure_budget = sd14\nerasure_opt_rab_population = 50\n")
    audit = AuditConfig.from_pytest(pytester.parseconfig(*paths, "--ti-steps=5"))
    assert audit.budget == "sd14"
    options, sources = audit.scenario_options, audit.scenario_sources
    assert (options["ti-steps"], options["rab-population"], options["ti-accumulation"],
            options["rab-keep"]) == (5, 50, 4, DEFAULTS["rab-keep"])
    assert sources["ti-steps"] == "command line"
    assert sources["rab-population"] == "ini file (erasure_opt_rab_population)"
    assert "When Are Concepts Erased" in sources["ti-accumulation"]
    assert sources["rab-keep"].startswith("option default")
    # The flag wins over the ini file.
    config = pytester.parseconfig(*paths, "--erasure-budget=shapes")
    assert AuditConfig.from_pytest(config).scenario_options["ti-accumulation"] == 1


def test_help_text_shows_profile_values(pytester: pytest.Pytester):
    result = pytester.runpytest_inprocess("--help")
    text = " ".join(result.stdout.str().split())
    assert "--erasure-budget" in text
    assert "(shapes: 100, ours; sd14: 3000, When Are Concepts Erased;" in text
    assert "sd14: 200, Ring-A-Bell" in text


def test_sd14_readme_commands_use_the_profile_and_its_table_matches():
    import re

    text = (Path(__file__).resolve().parents[2] / "audits" / "sd14" / "README.md").read_text()
    assert "--erasure-budget=sd14" in text.split("COMMON=", 1)[1].split("```", 1)[0]
    sd14 = {**profile("sd14", PROFILES), **settings("sd14", PROFILES)}
    rows = re.findall(r"^\| `--([a-z0-9-]+)` \| ([^|]+?) \|", text, flags=re.M)
    assert len(rows) >= 4
    for name, value in rows:
        expected = sd14[name].value
        shown = value.split()[0].strip("`")
        assert (float(shown) == float(expected) if isinstance(expected, int | float)
                else shown == expected), (name, value, expected)
