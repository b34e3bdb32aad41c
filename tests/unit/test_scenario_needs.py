"""Scenarios declare their needs; the core reads the declarations and names no scenario.

A scenario from outside the package (a real entry point of a distribution on sys.path) declares
budgets per profile (one of them a profile of its own), that it reads reference images, how many
images a case caches, a folder it writes and its table column: the preflight, the budget
resolution, the disk check and the table must honour each. And no core module may name a
built-in scenario, a modality, or import a built-in scenario's module: every such fact lives on
the scenario (`scenarios/base.py`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.testing import tiny_concepts

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pytest_erasure"
NOT_CORE = ("scenarios/", "attacks/", "testing/", "data/")
"""The scenarios themselves, the attacks' machinery (one module per attack, by design), and the
test worlds; everything else is the core."""

PROBE = '''
from pathlib import Path

from pytest_erasure.budgets import Budget
from pytest_erasure.scenarios.base import Scenario, ScenarioOption, Write
from pytest_erasure.scenarios.prompts import concept_plan


class Probe(Scenario):
    modality = "probe"
    options = (ScenarioOption("probe-rounds", int, 2, "how many probing rounds"),)
    budgets = {
        "shapes": {"probe-rounds": Budget(2, "ours", "the default")},
        "sd14": {"probe-rounds": Budget(7, "Probe et al.", "seven rounds on SD v1.4")},
        "probe-world": {"probe-rounds": Budget(50, "ours", "a profile of its own")},
    }
    needs_references = True
    table_column = -1

    def images_cached(self, ctx, n, erased):
        return 1000 * n

    def writes(self, ctx, cache_on):
        return [Write("--probe-folder", Path(ctx.config.concepts_file).parent / "probes", True,
                      "give a writable probe folder")]

    def plan(self, ctx, concept, target, n):
        return concept_plan(ctx, concept, n)


SCENARIO = Probe()
'''


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "probe_scenario.py").write_text(PROBE)
    info = site / "probe_scenario-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-scenario\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pytest_erasure.scenarios]\nprobe = probe_scenario:SCENARIO\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def _builtin_names() -> tuple[set[str], set[str]]:
    """(ids and modalities of the built-in scenarios, their modules)."""
    import importlib

    from pytest_erasure.scenarios.base import _BUILTIN_MODULES

    names: set[str] = set()
    for module in _BUILTIN_MODULES:
        for scenario in importlib.import_module(module).SCENARIOS:
            names |= {scenario.id, scenario.modality}
    return names, set(_BUILTIN_MODULES)


def test_no_core_module_names_a_built_in_scenario_or_modality() -> None:
    names, modules = _builtin_names()
    assert {"text", "latent", "embedding-white", "fuzz"} <= names
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(NOT_CORE):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{rel}:{node.lineno} names {node.value!r}")
            imported = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                        [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            found += [f"{rel}:{node.lineno} imports {m}" for m in imported if m in modules]
    assert not found, "\n".join(found)


def test_the_scan_sees_what_it_forbids(tmp_path: Path) -> None:
    """The scan above on lines it must flag (so its passing means something)."""
    names, modules = _builtin_names()
    tree = ast.parse('from pytest_erasure.scenarios.text import prompt_plan\n'
                     'x = case.modality == "latent"\n')
    constants = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    imports = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "latent" in names and set(constants) & names
    assert set(imports) & modules


def test_an_outside_scenario_declares_its_budgets(probe: Path) -> None:
    from pytest_erasure.budgets import resolve
    from pytest_erasure.config import budget_profiles
    from pytest_erasure.session import default_config

    profiles = budget_profiles()
    assert profiles["sd14"]["probe-rounds"].value == 7
    assert profiles["sd14"]["ti-steps"].value == 3000  # the built-ins' declarations still there
    values, sources = resolve("probe-world", {}, {"probe-rounds": 2}, profiles=profiles)
    assert values == {"probe-rounds": 50} and "a profile of its own" in sources["probe-rounds"]
    config = default_config(budget="sd14", cache_dir=None)
    assert config.scenario_options["probe-rounds"] == 7
    assert "Probe et al." in config.scenario_sources["probe-rounds"]
    with pytest.raises(ErasureInputError, match="use one of: shapes, sd14, probe-world"):
        default_config(budget="huge")


def _world(tmp_path: Path, tiny_world: dict[str, Path], references: bool) -> Path:
    """The tiny world's concepts file beside a reference folder that is empty (unreadable
    references) unless `references`."""
    import shutil

    root = tmp_path / "world"
    (root / "references" / "circle").mkdir(parents=True)
    if references:
        for image in (tiny_world["concepts"].parent / "references" / "circle").iterdir():
            shutil.copy(image, root / "references" / "circle" / image.name)
    (root / "concepts.toml").write_text(tiny_concepts())
    return root / "concepts.toml"


def _session(concepts: Path, world: dict[str, Path], scenarios: tuple[str, ...]):
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.session import AuditSession, default_config

    config = default_config(concepts_file=concepts, cache_dir=None, scenarios=scenarios,
                            standard_model=world["standard"], erased_model=world["erased"])
    return AuditSession(config, load_concepts(concepts))


def test_the_preflight_reads_references_for_a_scenario_that_declares_it_needs_them(
        probe: Path, tmp_path: Path, tiny_world: dict[str, Path]) -> None:
    from pytest_erasure.preflight import validate_inputs

    concepts = _world(tmp_path, tiny_world, references=False)
    validate_inputs(_session(concepts, tiny_world, ("text",)))  # text reads no references
    with pytest.raises(ErasureInputError, match="reference folder of concept 'circle'.*is empty"):
        validate_inputs(_session(concepts, tiny_world, ("probe",)))


def test_the_disk_check_counts_what_a_scenario_declares_and_checks_where_it_writes(
        probe: Path, tmp_path: Path, tiny_world: dict[str, Path]) -> None:
    from pytest_erasure.outputs import cached_images, destinations

    concepts = _world(tmp_path, tiny_world, references=True)
    text = _session(concepts, tiny_world, ("text",))
    probed = _session(concepts, tiny_world, ("probe",))
    n = probed.config.samples
    # One case each (no baseline or retention selected), plus the concept's base rate.
    assert cached_images(text) == 2 * n + n
    assert cached_images(probed) == 1000 * n + n
    labels = [d.what for d in destinations(probed, (32, 32), None)]
    assert "--probe-folder" in labels
    assert "--probe-folder" not in [d.what for d in destinations(text, (32, 32), None)]


def test_the_table_puts_the_column_where_the_scenario_says(probe: Path) -> None:
    from pytest_erasure.records import Rate
    from pytest_erasure.table import columns, markdown

    order = columns()
    assert order[0] == "probe" and order[1:3] == ["text", "adversarial-black"]
    table = [("standard", {"text": Rate(3, 4), "probe": Rate(1, 4)})]
    assert markdown(table).splitlines()[0] == "| model | probe | text |"
