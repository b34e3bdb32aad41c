"""Settings as a user gives them, through the real plugin: list options that refuse an empty
value, and where each setting's value comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bad_input import AUDIT, FAST, assert_usage_error, record_loads

from pytest_erasure.config import OPTIONS


def _world_args(world: dict[str, Path], **options: str) -> list[str]:
    given = {"--standard-model": str(world["standard"]), "--erased-model": str(world["erased"]),
             "--concepts": str(world["concepts"]), **options}
    return [f"{k}={v}" for k, v in given.items()] + list(FAST)


LIST_OPTIONS = [o.flag for o in OPTIONS if o.many]


def test_the_list_options_are_the_comma_separated_ones() -> None:
    """Every option whose help promises a comma-separated value is marked as a list, so none
    escapes the empty-value check below."""
    promised = {o.flag for o in OPTIONS if "comma" in o.help}
    assert "--scenarios" in promised
    assert promised <= set(LIST_OPTIONS)


@pytest.mark.parametrize("flag", LIST_OPTIONS)
@pytest.mark.parametrize("value", ["", ",", " , "])
def test_an_empty_list_option_is_a_usage_error(flag: str, value: str, pytester: pytest.Pytester,
                                               tiny_world: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`--scenarios=` once ran the whole audit (113 s on the shapes world, hours on SD v1.4)."""
    pytester.makepyfile(test_audit=AUDIT)
    loads = record_loads(monkeypatch)
    result = pytester.runpytest_inprocess(*_world_args(tiny_world, **{flag: value}))
    assert_usage_error(result, f"{flag}: is empty", "name at least one item")
    assert loads == []


def test_an_empty_list_from_the_api_is_refused_too() -> None:
    from pytest_erasure.errors import ErasureInputError
    from pytest_erasure.session import default_config

    with pytest.raises(ErasureInputError, match="--scenarios"):
        default_config(scenarios=[])
    assert default_config(scenarios="text, latent").scenarios == ("text", "latent")


# -- one precedence rule: command line (or ini) > concepts file > budget profile > default ------

def _concepts_with_threshold(world: dict[str, Path], folder: Path, threshold: float) -> Path:
    text = world["concepts"].read_text()
    assert "threshold = 0.2" in text
    path = folder / "concepts.toml"
    path.write_text(text.replace("threshold = 0.2", f"threshold = {threshold}").replace(
        'references = "references/circle"', f'references = "{world["concepts"].parent}'
        '/references/circle"'))
    return path


def _report(pytester: pytest.Pytester, world: dict[str, Path], *extra: str,
            **options: str) -> dict:
    import json

    pytester.makepyfile(test_audit=AUDIT)
    report = pytester.path / "report"
    result = pytester.runpytest_inprocess(
        *_world_args(world, **{"--scenarios": "text", "--erasure-report": str(report), **options}),
        *extra)
    assert result.ret in (0, 1), result.stdout.str()[-3000:] + result.stderr.str()[-3000:]
    return json.loads((report / "report.json").read_text())


def test_crr_threshold_on_the_command_line_wins_over_the_concepts_file(
        pytester: pytest.Pytester, tiny_world: dict[str, Path]) -> None:
    """The shipped suites all set a file-wide `threshold`; the flag used to be ignored beside
    them while the report showed the flag's value."""
    concepts = _concepts_with_threshold(tiny_world, pytester.path, 0.3)
    data = _report(pytester, tiny_world, **{"--concepts": str(concepts), "--crr-threshold": "0.1"})
    assert data["config"]["crr_threshold"] == 0.1
    assert data["config"]["sources"]["crr_threshold"] == "command line"
    (case,) = [c for c in data["cases"] if c["case_id"] == "circle-text"]
    assert case["threshold"] == 0.1


def test_the_concepts_file_wins_over_the_default_and_says_so(
        pytester: pytest.Pytester, tiny_world: dict[str, Path]) -> None:
    concepts = _concepts_with_threshold(tiny_world, pytester.path, 0.3)
    data = _report(pytester, tiny_world, **{"--concepts": str(concepts)})
    assert data["config"]["crr_threshold"] == 0.3
    assert data["config"]["sources"]["crr_threshold"] == f"concepts file {concepts} (threshold)"
    (case,) = [c for c in data["cases"] if c["case_id"] == "circle-text"]
    assert case["threshold"] == 0.3
    assert data["config"]["sources"]["samples"] == "command line"
    assert data["config"]["sources"]["guidance"] == "default"


def test_the_ini_twin_counts_as_given_and_the_flag_beats_it(
        pytester: pytest.Pytester, tiny_world: dict[str, Path]) -> None:
    from pytest_erasure.config import AuditConfig

    concepts = _concepts_with_threshold(tiny_world, pytester.path, 0.3)
    pytester.makeini("[pytest]\nerasure_crr_threshold = 0.15\nerasure_budget = sd14\n")
    paths = [f"--standard-model={tiny_world['standard']}",
             f"--erased-model={tiny_world['erased']}", f"--concepts={concepts}",
             "-p", "no:cacheprovider"]
    audit = AuditConfig.from_pytest(pytester.parseconfig(*paths))
    assert (audit.crr_threshold, audit.sources["crr_threshold"]) == \
        (0.15, "ini file (erasure_crr_threshold)")
    # The profile sets --steps (50, the DDIM inversion's count) where nobody gave it ...
    assert audit.steps == 50 and audit.sources["steps"].startswith("profile sd14, ")
    assert audit.sources["budget"] == "ini file (erasure_budget)"
    # ... and the command line wins over the ini file and the profile alike.
    audit = AuditConfig.from_pytest(pytester.parseconfig(*paths, "--crr-threshold=0.05",
                                                         "--steps=7"))
    assert (audit.crr_threshold, audit.sources["crr_threshold"]) == (0.05, "command line")
    assert (audit.steps, audit.sources["steps"]) == (7, "command line")


def test_every_option_has_a_source() -> None:
    from pytest_erasure.session import default_config

    described = default_config().describe()
    assert set(described["sources"]) == {o.field for o in OPTIONS}
    assert described["sources"]["steps"].startswith("profile shapes, ")


# -- --erased-concept: audit one concept of a suite that declares several ----------------------

def _two_erased(world: dict[str, Path], folder: Path) -> Path:
    """The tiny world's file with square erased too (retaining circle), as cifar10.toml marks
    all ten classes erased."""
    text = _concepts_with_threshold(world, folder, 0.2).read_text()
    path = folder / "two.toml"
    path.write_text(text.replace('name = "square"\nerased = false',
                                 'name = "square"\nretain = ["circle"]'))
    return path


def _collected(result: pytest.RunResult) -> list[str]:
    return sorted(line.split("[", 1)[1].rstrip("]") for line in result.stdout.lines
                  if "::test_erasure[" in line)


def test_erased_concept_selects_its_cases_and_its_neighbours_retention(
        pytester: pytest.Pytester, tiny_world: dict[str, Path]) -> None:
    concepts = _two_erased(tiny_world, pytester.path)
    pytester.makepyfile(test_audit=AUDIT)
    options = {"--concepts": str(concepts), "--scenarios": "text,baseline,retention"}
    everything = _collected(pytester.runpytest_inprocess(
        *_world_args(tiny_world, **options), "--co", "-q"))
    assert everything == ["circle-baseline", "circle-retention-square", "circle-text",
                          "square-baseline", "square-retention-circle", "square-text"]
    square = _collected(pytester.runpytest_inprocess(
        *_world_args(tiny_world, **options, **{"--erased-concept": "square"}), "--co", "-q"))
    assert square == ["square-baseline", "square-retention-circle", "square-text"]
    # Repeated, or a comma list: both.
    both = pytester.runpytest_inprocess(*_world_args(tiny_world, **options),
                                        "--erased-concept=square", "--erased-concept=circle",
                                        "--co", "-q")
    assert _collected(both) == everything
    pytester.makeini("[pytest]\nerasure_erased_concept = circle\n")
    circle = _collected(pytester.runpytest_inprocess(*_world_args(tiny_world, **options),
                                                     "--co", "-q"))
    assert circle == ["circle-baseline", "circle-retention-square", "circle-text"]


def test_an_unknown_erased_concept_is_a_usage_error_listing_the_known_ones(
        pytester: pytest.Pytester, tiny_world: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    concepts = _two_erased(tiny_world, pytester.path)
    pytester.makepyfile(test_audit=AUDIT)
    loads = record_loads(monkeypatch)
    result = pytester.runpytest_inprocess(*_world_args(
        tiny_world, **{"--concepts": str(concepts), "--erased-concept": "airplane"}))
    assert_usage_error(result, "--erased-concept: names 'airplane', not a concept the concepts "
                       f"file {concepts} marks erased", "use one of: circle, square")
    # A neighbour (erased = false) has no erasure cases: it cannot be selected either.
    result = pytester.runpytest_inprocess(*_world_args(tiny_world, **{"--erased-concept": "square"}))
    assert_usage_error(result, "--erased-concept: names 'square'", "use one of: circle")
    assert loads == []


def test_the_selection_is_recorded_with_its_source(pytester: pytest.Pytester,
                                                   tiny_world: dict[str, Path]) -> None:
    concepts = _two_erased(tiny_world, pytester.path)
    data = _report(pytester, tiny_world, **{"--concepts": str(concepts),
                                            "--erased-concept": "circle"})
    assert data["config"]["erased_concept"] == ["circle"]
    assert data["config"]["sources"]["erased_concept"] == "command line"
    assert {c["concept"] for c in data["cases"]} == {"circle"}
    assert "incomplete" not in data or not data["incomplete"]
