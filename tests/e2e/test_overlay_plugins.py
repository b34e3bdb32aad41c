"""A planted overlay through a scenario from outside the package, end to end on the tiny world.

The outside distribution registers a scenario (`pytest_erasure.scenarios`) whose plan runs the
erased model under two overlays: a planted LoRA file (the built-in `lora` kind) and a kind of its
own (`pytest_erasure.overlays`: `brighten` shifts the VAE decoder's output, so the tiny world's
dark erased model draws bright "circles" again). The audit must see the erased model's images
change (the case fails), keep the standard model's bit-identical to a run without the overlay
(the two models share the UNet and text encoder), record the overlays in the report and key the
images by them, in a worker process too (the kind reaches it by its entry point).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
FAST = ["--samples", "4", "--steps", "2", "--batch-size", "4", "-p", "no:randomly",
        "--erasure-gate=point", "--no-erasure-cache"]

PLANTED = '''
import os

from pytest_erasure.overlays.lora import lora
from pytest_erasure.records import Overlay
from pytest_erasure.scenarios.base import Scenario
from pytest_erasure.scenarios.prompts import concept_plan


class Brighten:
    """Shift the VAE decoder's output by `shift` (a planted weight change anyone can see)."""

    name = "brighten"

    def components(self, overlay):
        return ("vae",)

    def validate(self, overlay):
        pass

    def describe(self, overlay):
        return {"description": f"decoder output shifted by {overlay.params['shift']}"}

    def apply(self, pipe, overlay, patch):
        conv = pipe.vae.decoder.conv_out
        patch.parameter(conv, "bias", conv.bias.detach() + overlay.params["shift"])


class Planted(Scenario):
    modality = "planted"

    def plan(self, ctx, concept, target, n):
        plan = concept_plan(ctx, concept, n)
        if target == "erased":
            plan.overlays = (lora(os.environ["PLANTED_LORA"], scale=0.5),
                             Overlay("brighten", {"shift": 1.5}))
        return plan


KIND = Brighten()
SCENARIO = Planted()
'''


def write_package(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "planted_overlay.py").write_text(PLANTED)
    info = root / "planted_overlay-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: planted-overlay\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pytest_erasure.scenarios]\nplanted = planted_overlay:SCENARIO\n\n"
        "[pytest_erasure.overlays]\nbrighten = planted_overlay:KIND\n")
    return root


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_world: dict[str, Path]) -> Path:
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(tiny_world["standard"] / "unet")
    generator = torch.Generator().manual_seed(7)
    weights = {}
    for name, module in unet.named_modules():  # peft's layout, on the attention projections
        if name.endswith(("attn1.to_q", "attn2.to_k", "attn2.to_v", "attn1.to_out.0")):
            weights[f"unet.{name}.lora_A.weight"] = torch.randn(2, module.in_features,
                                                                generator=generator)
            weights[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, 2,
                                                                generator=generator)
    path = tmp_path / "planted-lora.safetensors"
    save_file(weights, str(path))
    package = write_package(tmp_path / "site")
    # The checkout under test first: the subprocess must import this package, not another
    # installed copy.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(package), str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.setenv("PLANTED_LORA", str(path))
    return path


def _audit(pytester: pytest.Pytester, world: dict[str, Path], out: Path, *extra: str
           ) -> dict[str, Any]:
    result = pytester.runpytest_subprocess(
        f"--standard-model={world['standard']}", f"--erased-model={world['erased']}",
        f"--concepts={world['concepts']}", *FAST, f"--erasure-report={out}", *extra)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret in (0, 1), output
    assert "Traceback" not in output, output
    return json.loads((out / "report.json").read_text())


def _case(report: dict[str, Any], scenario: str) -> dict[str, Any]:
    return next(c for c in report["cases"] if c["scenario"] == scenario and c["concept"] == "circle")


def test_a_planted_overlay_changes_the_erased_model_and_not_the_standard_one(
        pytester: pytest.Pytester, tiny_world: dict[str, Path], planted: Path) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    overlaid = _case(_audit(pytester, tiny_world, pytester.path / "planted", "--scenarios",
                            "planted", "--erasure-executor=process"), "planted")
    plain = _case(_audit(pytester, tiny_world, pytester.path / "text", "--scenarios", "text"),
                  "text")
    # The erased model under the overlays draws the concept again; without them it does not.
    assert plain["verdict"] == "pass" and plain["rate"]["hits"] == 0
    assert overlaid["verdict"] == "fail" and overlaid["rate"]["hits"] == overlaid["rate"]["n"]
    assert overlaid["facts"]["image_sha256"] != plain["facts"]["image_sha256"]
    # The standard model's images, made after the overlay was applied to the erased model
    # (which shares its UNet), are the plain run's bit for bit (the same PNG grid).
    [erased_grid, standard_grid] = overlaid["evidence"]
    assert standard_grid["title"] == "standard model"
    assert standard_grid["png_base64"] == plain["evidence"][1]["png_base64"]
    assert erased_grid["png_base64"] != plain["evidence"][0]["png_base64"]
    assert overlaid["standard"] == plain["standard"]
    # Recorded: both overlays, by their content keys, with what each did.
    recorded = overlaid["facts"]["overlays"]
    assert recorded["standard"] == []
    lora_fact, brighten_fact = recorded["erased"]
    assert lora_fact["kind"] == "lora" and lora_fact["params"] == {"scale": 0.5}
    assert lora_fact["path"] == str(planted.resolve()) and len(lora_fact["content"]) == 64
    assert brighten_fact["kind"] == "brighten" and "shifted by 1.5" in brighten_fact["description"]
    assert len({lora_fact["key"], brighten_fact["key"]}) == 2
    assert "overlays" not in plain["facts"]
