"""A defense from outside the package, added through the `pytest_erasure.defenses` entry point:
its flag, its option (flag and ini twin), its checks and its description reach an audit end to
end like IRECE's; two defenses at once are one usage error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
FAST = ["--samples", "2", "--steps", "2", "--batch-size", "2", "-p", "no:randomly"]

# A made-up defense: scale the latents by --darken-scale after one denoising step. It uses
# nothing of ours but the protocol's shape and ScenarioOption; each call is logged to the file
# named in DARKEN_LOG, so the test sees it ran (on which images, at which step).
DARKEN = '''
import json
import os

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.scenarios.base import ScenarioOption


class Darken:
    tensor_inputs = ["latents"]

    def __init__(self, scale, step, seeds):
        self.scale, self.step, self.seeds = scale, step, seeds

    def __call__(self, pipe, i, t, kwargs):
        if i == self.step:
            with open(os.environ["DARKEN_LOG"], "a") as log:
                log.write(json.dumps({"step": i, "seeds": self.seeds}) + "\\n")
            return {"latents": kwargs["latents"] * self.scale}
        return {}


class DarkenDefense:
    name = "darken"
    help = "scale the erased model's latents at one step"
    options = (ScenarioOption("darken-scale", float, 0.5, "factor applied to the latents"),)

    def scale(self, config):
        return config.scenario_options.get("darken-scale", 0.5)

    def validate(self, config):
        if not 0 <= self.scale(config) <= 1:
            raise ErasureInputError("--darken-scale", f"is {self.scale(config)}",
                                    "give a factor between 0 and 1")

    def describe(self, config, ctx=None, concept=None):
        return {"scale": self.scale(config), "step": 0}

    def callback_factory(self, ctx, mask_concept):
        scale = self.scale(ctx.config)
        return lambda batch: Darken(scale, 0, [b.seed for b in batch])


DEFENSE = DarkenDefense()
'''


def world(paths: dict[str, Path]) -> list[str]:
    """The tiny world's flags, each `--flag=path`: a bare path argument would move pytest's
    rootdir above the test's own ini file."""
    return [f"--standard-model={paths['standard']}", f"--erased-model={paths['erased']}",
            f"--concepts={paths['concepts']}"]


def write_defense_package(root: Path) -> Path:
    """An installed-looking distribution: its module and a dist-info with the entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "darken_defense.py").write_text(DARKEN)
    info = root / "darken_defense-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: darken-defense\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pytest_erasure.defenses]\ndarken = darken_defense:DEFENSE\n")
    return root


@pytest.fixture
def defense_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = write_defense_package(tmp_path / "site")
    # The checkout under test next: the subprocess must import this package, not another
    # installed copy.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(package), str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.setenv("DARKEN_LOG", str(tmp_path / "darken.log"))
    return tmp_path / "darken.log"


def test_registry_lists_builtins_first_without_importing_torch(defense_on_path: Path) -> None:
    code = ("import json, sys; from pytest_erasure.defenses import registry; "
            "import pytest_erasure.plugin; "
            "print(json.dumps([list(registry()), 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, torch_loaded = json.loads(out.stdout)
    assert names == ["irece", "darken"] and not torch_loaded


def test_audit_runs_behind_a_defense_from_an_entry_point(pytester: pytest.Pytester, tiny_world,
                                                         defense_on_path: Path) -> None:
    out = pytester.path / "report"
    pytester.makepyfile(test_audit=AUDIT)
    pytester.makeini("[pytest]\nerasure_opt_darken_scale = 0.25\n")  # the option's ini twin
    result = pytester.runpytest_subprocess(
        *world(tiny_world), *FAST, "--scenarios", "text", "--darken",
        f"--erasure-report={out}")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret in (0, 1), output
    assert "Traceback" not in output
    assert "defense darken (scale=0.25, step=0)" in output  # the report header
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["defense"] == {"name": "darken", "settings": {"scale": 0.25, "step": 0}}
    assert report["config"]["scenario_options"]["darken-scale"] == 0.25
    erasure = [c for c in report["cases"] if c["kind"] == "erasure"]
    assert erasure and all(c["undefended"] is not None for c in erasure)
    assert "with darken" in erasure[0]["message"]
    calls = [json.loads(line) for line in defense_on_path.read_text().splitlines()]
    assert calls and all(call["step"] == 0 for call in calls)
    assert sum(len(call["seeds"]) for call in calls) == 2  # the defended samples, only them


def test_a_defense_option_out_of_range_is_its_usage_error(pytester: pytest.Pytester, tiny_world,
                                                          defense_on_path: Path) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_subprocess(
        *world(tiny_world), *FAST, "--darken", "--darken-scale", "3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--darken-scale: is 3.0" in result.stderr.str()


def test_two_defenses_at_once_are_one_usage_error(pytester: pytest.Pytester, tiny_world,
                                                  defense_on_path: Path) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_subprocess(
        *world(tiny_world), *FAST, "--irece", "--darken")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.str().splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "--irece --darken: enable more than one defense" in errors[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def _latent_case(report: dict) -> dict:
    return next(c for c in report["cases"] if c["kind"] == "erasure"
                and c["scenario"].startswith("latent-white"))


def test_a_defense_without_an_adaptive_form_never_passes_a_white_box_case(
        pytester: pytest.Pytester, tiny_world, defense_on_path: Path) -> None:
    """Darken declares no adaptive form: its white-box cases are transfer attacks, INCONCLUSIVE
    under the default threat model with that reason, gated as measured under
    --erasure-threat=transfer; a black-box case is not touched; a model that truly leaks still
    FAILs (a transfer attack's evidence is evidence)."""
    pytester.makepyfile(test_audit=AUDIT)
    reports = {}
    for name, model, extra in (("adaptive", "erased", []),
                               ("transfer", "erased", ["--erasure-threat=transfer"]),
                               ("leaky", "leaky", [])):
        out = pytester.path / name
        paths = {**tiny_world, "erased": tiny_world[model]}
        result = pytester.runpytest_subprocess(
            *world(paths), "--samples", "8", "--steps", "2", "--batch-size", "4",
            "-p", "no:randomly", "--erasure-gate=point", "--darken",
            "--scenarios", "text,latent-white-null", f"--erasure-report={out}", *extra)
        output = result.stdout.str() + result.stderr.str()
        assert result.ret in (0, 1), output
        reports[name] = json.loads((out / "report.json").read_text())
    adaptive = _latent_case(reports["adaptive"])
    assert adaptive["facts"]["threat_model"] == "white-box transfer"
    assert adaptive["verdict"] == "inconclusive", adaptive["message"]
    assert "darken declares no adaptive form" in adaptive["reason"]
    assert "threat model white-box transfer" in adaptive["message"]
    transfer = _latent_case(reports["transfer"])
    assert transfer["facts"]["threat_model"] == "white-box transfer"
    assert "adaptive form" not in (transfer["reason"] or "")
    assert transfer["rate"] == adaptive["rate"]  # the same images, gated for another attacker
    text = next(c for c in reports["adaptive"]["cases"] if c["scenario"] == "text")
    assert text["facts"]["threat_model"] == "black-box" and "adaptive" not in (text["reason"] or "")
    leaky = _latent_case(reports["leaky"])
    assert leaky["verdict"] == "fail", leaky["message"]
