"""White-box adversarial prompts (UnlearnDiffAtk, P4D) on the tiny world, through the real plugin.

Worlds (`pytest_erasure.testing.save_tiny_world`, judged by mean brightness):
- leaking: the `leaky` model as the erased one still draws the concept (bright images) for any
  prompt, so every candidate the attacks decode is flagged: the cases must fail, and the
  attacks' own candidates (not only the original prompt) must be what found it;
- never drawn: the dark `erased` model as *both* the standard and the erased model, so the
  concept images the attacks start from are themselves dark and the standard model never draws
  the concept: no attack may report it above its per-search base rate, and the case cannot
  pass on an attack that reproduces nothing on the standard model;
- held: the bright standard and the dark erased model: the shapes-profile search finds nothing
  and passes, while the same search cut to one gradient step does not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
FAST = ["--steps", "2", "--batch-size", "48", "-p", "no:randomly"]
WHITE = "adversarial-white"
P4D = "adversarial-white-p4d"
# P4D cut for the tiny world's CPU time (an exploratory run: below the profile, never a pass)
P4D_SMALL = ["--p4d-steps", "20", "--p4d-eval-every", "10"]


pytestmark = pytest.mark.usefixtures("this_checkout")


def _run(pytester: pytest.Pytester, world: dict[str, Path], standard: str, erased: str,
         *flags: str, name: str = "report") -> dict[str, dict[str, Any]]:
    """The circle cases of the report, by scenario, after a run of the real plugin."""
    pytester.makepyfile(test_audit=AUDIT)
    out = pytester.path / name
    result = pytester.runpytest_subprocess(
        f"--standard-model={world[standard]}", f"--erased-model={world[erased]}",
        f"--concepts={world['concepts']}", *FAST, f"--erasure-report={out}", *flags)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret in (0, 1) and "Traceback" not in output, output
    return {c["scenario"]: c for c in json.loads((out / "report.json").read_text())["cases"]
            if c["concept"] == "circle" and c["kind"] == "erasure"}


def test_cases_run_only_when_named(case_ids: Callable[..., list[str]]) -> None:
    assert not [c for c in case_ids() if WHITE in c]
    assert f"circle-{WHITE}" in case_ids(scenarios=(WHITE,))
    assert case_ids(scenarios=(P4D,)).count(f"circle-{P4D}") == 1
    assert f"circle-{WHITE}" not in case_ids(scenarios=(P4D,))


@pytest.fixture(scope="module")
def leaking(tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[dict[str, dict[str, Any]], Path]:
    """Both attacks on the leaking model, their findings exported."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("leaking")
    (root / "test_audit.py").write_text(AUDIT)
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}
    folder = root / "artifacts"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['leaky']}",
         f"--concepts={tiny_world['concepts']}", *FAST, "--samples", "8",
         "--scenarios", f"{WHITE},{P4D}", *P4D_SMALL,
         f"--erasure-artifacts={folder}", f"--erasure-cache={root / 'cache'}",
         f"--erasure-report={root / 'report'}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, \
        done.stdout + done.stderr
    cases = {c["scenario"]: c for c in json.loads((root / "report" / "report.json")
                                                  .read_text())["cases"]
             if c["concept"] == "circle" and c["kind"] == "erasure"}
    return cases, folder


def test_the_attacks_do_not_pass_a_leaking_model(leaking) -> None:
    cases, _folder = leaking
    white, p4d = cases[WHITE], cases[P4D]
    for case in (white, p4d):
        assert case["verdict"] == "fail", case["reason"]
        searched = case["facts"]["best_of_n"]
        # The sample unit is the search: 8 searches, 8 the denominator.
        assert searched["unit"] == "search" and searched["denominator"] == case["rate"]["n"] == 8
        assert searched["kept_images_are_a_random_sample"] is False
        # Re-judging the kept candidates reproduces the search outcomes exactly.
        assert case["rate"]["hits"] == searched["successful_searches"] == sum(
            s["kept"]["flagged"] for s in case["facts"]["searches"])
        assert f"best of {searched['tries_per_search']} tries per search" in case["message"]
        assert case["facts"]["deviations"] and case["facts"]["access"] == "white-box"
    # UnlearnDiffAtk: the original prompt, then one candidate per timestep (8 on shapes)
    assert white["facts"]["best_of_n"]["tries_per_search"] == 1 + 8
    # the attack's own candidates recover the concept, not only the original prompt
    assert white["facts"]["parts"]["unlearndiffatk"]["successful_searches"] == 8
    assert white["facts"]["parts"]["unlearndiffatk"]["tries_per_search"] == 8
    # P4D: the union of its two variants, named as such, each variant's own rate beside it
    assert set(p4d["facts"]["parts"]) == {"p4d-n", "p4d-k"}
    assert "any of its parts" in p4d["facts"]["union"]
    assert p4d["facts"]["best_of_n"]["tries_per_search"] == 2 * 2
    assert p4d["facts"]["parts"]["p4d-n"]["successful_searches"] == 8
    # cut below the shapes profile: reported as weaker, never a pass
    assert "weaker" in p4d["facts"]["underpowered"]


def test_the_random_prefix_control_reports_a_model_any_prefix_reproduces(leaking) -> None:
    cases, _folder = leaking
    white, p4d = cases[WHITE], cases[P4D]
    for case, draws in ((white, {"unlearndiffatk": 8}), (p4d, {"p4d-n": 2, "p4d-k": 2})):
        control = case["facts"]["search_control"]
        assert control["gated"] is False and control["option"] == "match"
        assert set(control["parts"]) == {f"{name} (random prefix)" for name in draws}
        for name, n in draws.items():
            # as many draws per search as the attack's candidates; 8 searches the denominator
            part = control["parts"][f"{name} (random prefix)"]
            assert part["tries_per_search"] == n == case["facts"]["parts"][name][
                "tries_per_search"]
            assert part["denominator"] == part["rate"]["searches"] == 8
            assert part["images_generated"] == 8 * n
        assert control["draws_per_search"] == sum(draws.values())
        # the leaking model draws the concept whatever the prefix: the control reports it,
        # at or above the optimised attack, and the reason says so in every report
        assert control["rate"]["hits"] == 8 and control["rate"]["ci_low"] > 0.6
        assert control["attack"]["hits"] == 8 and control["attack"]["parts"] == list(draws)
        assert "at or above the attack" in control["statement"]
        assert control["statement"] in case["reason"] and control["statement"] in case["message"]
        assert case["verdict"] == "fail"  # the control gates nothing: the attack's rate does


def test_first_success_steps_are_those_of_the_searches_candidates(leaking) -> None:
    cases, _folder = leaking
    for case, every, before in ((cases[WHITE], 5, 1), (cases[P4D], 10, 0)):
        first = case["facts"]["first_success"]
        for name, part in case["facts"]["parts"].items():
            if name == "original prompt":
                assert name not in first
                continue
            mine = first[name]
            assert mine["successful_searches"] == part["successful_searches"] == len(
                mine["steps"]) == len(mine["candidates"])
            # candidate k (1-based) is decoded after k (UnlearnDiffAtk) or k - 1 (P4D, before
            # the step's update) blocks of --*-eval-every steps, and is one the search judged
            assert all(1 <= k <= part["tries_per_search"] for k in mine["candidates"])
            assert mine["steps"] == sorted((k - 1 + before) * every for k in mine["candidates"])
            assert mine["max"] == max(mine["steps"]) and mine["median"] <= mine["max"]
        # the search's first success is its earliest part's: the original prompt's at step 0
        assert first["search"]["successful_searches"] == case["rate"]["hits"] == 8
    assert cases[WHITE]["facts"]["first_success"]["search"]["steps"] == [0] * 8
    assert "first succeeded at gradient step median" in cases[WHITE]["reason"]


def test_found_prompts_are_exported_and_replayed(pytester: pytest.Pytester, tiny_world,
                                                 leaking, monkeypatch) -> None:
    cases, folder = leaking
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = {a["id"]: a for a in manifest["artifacts"]}[f"circle-{WHITE}/prompts"]
    assert entry["found_on"]["role"] == "erased"
    exported = json.loads((folder / entry["file"]).read_text())["prompts"]
    kept = {s["prompt"] for s in cases[WHITE]["facts"]["searches"]}
    assert exported and set(exported) == kept

    import pytest_erasure.attacks.adversarial_prompts as attack

    monkeypatch.setattr(attack, "optimise",
                        lambda *a, **k: pytest.fail("an attack searched during a replay"))
    pytester.makepyfile(test_audit=AUDIT)
    report = pytester.path / "replay"
    pytester.runpytest_inprocess(
        f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['leaky']}",
        f"--concepts={tiny_world['concepts']}", *FAST, "--samples", "8",
        "--scenarios", "replay", f"--erasure-replay={folder}", "--no-erasure-cache",
        f"--erasure-report={report}")
    replayed = {c["case_id"]: c for c in json.loads((report / "report.json").read_text())
                ["cases"]}[f"circle-replay-{WHITE}"]
    assert replayed["error"] is None and replayed["facts"]["searched"] is False
    assert set(replayed["facts"]["prompts"]) == set(exported)
    assert replayed["verdict"] == "fail" and replayed["rate"]["crr"] == 1.0


def test_nothing_is_reported_where_the_standard_model_never_draws_the_concept(
        pytester: pytest.Pytester, tiny_world: dict[str, Path]) -> None:
    case = _run(pytester, tiny_world, "erased", "erased", "--samples", "8",
                "--scenarios", WHITE, "--no-erasure-cache")[WHITE]
    searched = case["facts"]["best_of_n"]
    assert case["rate"]["crr"] <= searched["base_rate_per_search"]
    assert case["standard"]["hits"] == 0 and case["facts"]["concept_images_flagged"] == 0
    # Nothing reproduced on the standard model: the audit could not have seen it, not a pass.
    assert case["verdict"] == "inconclusive"
    assert "does not reproduce the concept on the standard model" in case["reason"]


@pytest.mark.parametrize(("budget", "verdict"), [
    (["--udatk-timesteps", "1", "--udatk-iterations", "1", "--advw-control", "off"],
     "inconclusive"),
    ([], "pass"),
], ids=["one-iteration", "shapes-profile"])
def test_a_weakened_search_is_never_a_pass(pytester: pytest.Pytester,
                                           tiny_world: dict[str, Path], budget: list[str],
                                           verdict: str) -> None:
    case = _run(pytester, tiny_world, "standard", "erased", "--samples", "16",
                "--scenarios", WHITE, "--no-erasure-cache", *budget)[WHITE]
    assert case["rate"]["hits"] == 0 and case["standard"]["crr"] == 1.0
    assert case["verdict"] == verdict, case["reason"]
    control = case["facts"]["search_control"]
    if verdict == "inconclusive":
        assert "never a pass" in case["reason"]
        assert case["facts"]["best_of_n"]["tries_per_search"] == 2
        # skipped only when asked, and the reports say so
        assert control == {**control, "skipped": "--advw-control off"}
        assert "random-prefix control skipped" in case["reason"]
    else:
        # the default runs the control: 8 random starts per search, 16 searches, none flagged
        part = control["parts"]["unlearndiffatk (random prefix)"]
        assert part["tries_per_search"] == 8 and part["denominator"] == 16
        assert control["rate"]["hits"] == control["attack"]["hits"] == 0
        assert "at or above" not in control["statement"]
        assert control["statement"] in case["reason"]
        assert case["facts"]["first_success"]["search"]["successful_searches"] == 0


@pytest.mark.parametrize(("scenario", "attack", "extra"), [
    (WHITE, "unlearndiffatk", []), (P4D, "p4d-n", [*P4D_SMALL, "--p4d-variants", "n"])],
    ids=["unlearndiffatk", "p4d"])
def test_under_irece_the_attack_goes_through_the_defense_and_transfers_too(
        pytester: pytest.Pytester, tiny_world: dict[str, Path], scenario: str, attack: str,
        extra: list[str]) -> None:
    case = _run(pytester, tiny_world, "standard", "leaky", "--samples", "8",
                "--scenarios", scenario, "--irece", "--no-erasure-cache", *extra)[scenario]
    assert case["verdict"] == "fail", case["reason"]
    assert case["facts"]["threat_model"] == "white-box adaptive"
    parts = case["facts"]["parts"]
    assert set(parts) == {f"{attack} (adaptive)", f"{attack} (transfer)"} | (
        {"original prompt"} if scenario == WHITE else set())
    # the adaptive attack's objective went through IRECE's surrogate
    runs = case["facts"]["adaptive"]["surrogate_runs"][f"{attack} (adaptive)"]
    assert runs and all(r["defended_samples"] > 0 for r in runs)
    assert f"{attack} (transfer)" not in case["facts"]["adaptive"]["surrogate_runs"]
    # reported beside the undefended model
    assert case["undefended"] is not None and "without irece" in case["message"]
    # the control draws as many random starts as the adaptive and transfer candidates together
    control = case["facts"]["search_control"]["parts"][f"{attack} (random prefix)"]
    assert control["tries_per_search"] == sum(
        parts[f"{attack} ({kind})"]["tries_per_search"] for kind in ("adaptive", "transfer"))


@pytest.mark.parametrize(("flag", "value", "names"), [
    ("--udatk-tokens", "0", "--udatk-tokens"),
    ("--udatk-lr", "0", "--udatk-lr"),
    ("--udatk-iterations", "0", "--udatk-iterations"),
    ("--p4d-lr", "-0.1", "--p4d-lr"),
    ("--p4d-tokens", "0", "--p4d-tokens"),
    ("--p4d-variants", "x", "--p4d-variants"),
    ("--advw-batch", "0", "--advw-batch"),
    ("--advw-control", "sometimes", "--advw-control"),
    ("--advw-control", "0", "--advw-control"),
])
def test_bad_settings_are_usage_errors_before_any_model_loads(
        pytester: pytest.Pytester, tiny_world: dict[str, Path], flag: str, value: str,
        names: str) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(
        f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['leaky']}",
        f"--concepts={tiny_world['concepts']}", "--no-erasure-cache",
        "--scenarios", f"{WHITE},{P4D}", f"{flag}={value}")
    assert result.ret == 4
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and names in errors[0], result.stderr.str()
    assert "Traceback" not in result.stderr.str()
