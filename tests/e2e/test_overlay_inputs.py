"""Bad overlays (issue 26): one usage-error line before any model loads.

A scenario from outside the package declares the LoRA file its plans apply
(`Scenario.declared_overlays`); the run reads the file's safetensors header and the standard
model folder's UNet config (the UNet built on torch's meta device: structure only) before it
loads a model, so a LoRA made for another architecture (modules this UNet lacks, or a cross-
attention width it does not have) is refused in a second, with one line. A LoRA that fits runs.
A format whose numbers this torch cannot compute is refused the same way; where the device has
no low-bit kernel the report says the weights were quantized and dequantized instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
FAST = ["--samples", "4", "--steps", "2", "--batch-size", "4", "-p", "no:randomly",
        "--erasure-gate=point", "--no-erasure-cache"]

FOREIGN = '''
import os

from pytest_erasure.overlays.lora import lora
from pytest_erasure.scenarios.base import Scenario
from pytest_erasure.scenarios.prompts import concept_plan


class Foreign(Scenario):
    modality = "foreign"

    def declared_overlays(self, ctx):
        return (lora(os.environ["FOREIGN_LORA"]),)

    def plan(self, ctx, concept, target, n):
        plan = concept_plan(ctx, concept, n)
        if target == "erased":
            plan.overlays = self.declared_overlays(ctx)
        return plan


SCENARIO = Foreign()
'''


def _lora(unet, path: Path, *, widen: int = 0, rename: bool = False) -> Path:
    """A peft LoRA of `unet`'s attn2 key projections: as trained on it, or as trained on a UNet
    whose text conditioning is `widen` wider (SD 2's 1024 against SD 1's 768), or naming a block
    this UNet lacks."""
    from safetensors.torch import save_file

    weights = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k"):
            key = name.replace("down_blocks.0", "down_blocks.7") if rename else name
            weights[f"unet.{key}.lora_A.weight"] = torch.zeros(2, module.in_features + widen)
            weights[f"unet.{key}.lora_B.weight"] = torch.zeros(module.out_features, 2)
    save_file(weights, str(path))
    return path


@pytest.fixture
def foreign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "foreign_overlay.py").write_text(FOREIGN)
    info = site / "foreign_overlay-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: foreign-overlay\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pytest_erasure.scenarios]\nforeign = foreign_overlay:SCENARIO\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    return tmp_path


def _run(pytester: pytest.Pytester, world: dict[str, Path], lora_file: Path,
         monkeypatch: pytest.MonkeyPatch, *extra: str) -> pytest.RunResult:
    monkeypatch.setenv("FOREIGN_LORA", str(lora_file))
    pytester.makepyfile(test_audit=AUDIT)
    return pytester.runpytest_subprocess(
        f"--standard-model={world['standard']}", f"--erased-model={world['erased']}",
        f"--concepts={world['concepts']}", *FAST, "--scenarios", "foreign", *extra)


@pytest.mark.parametrize(("widen", "rename", "message"), [
    (256, False, "does not fit this model's weight"),
    (0, True, "which this model's UNet"),
])
def test_a_lora_for_another_architecture_is_one_usage_error(
        pytester: pytest.Pytester, tiny_world: dict[str, Path], foreign: Path,
        monkeypatch: pytest.MonkeyPatch, widen: int, rename: bool, message: str) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_world["standard"] / "unet")
    path = _lora(unet, foreign / "other.safetensors", widen=widen, rename=rename)
    result = _run(pytester, tiny_world, path, monkeypatch)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    errors = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert len(errors) == 1 and "overlay 'lora'" in errors[0], errors
    assert message in errors[0] and "another architecture" in errors[0], errors


def test_a_lora_that_fits_runs(pytester: pytest.Pytester, tiny_world: dict[str, Path],
                               foreign: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_world["standard"] / "unet")
    path = _lora(unet, foreign / "same.safetensors")
    out = pytester.path / "report"
    result = _run(pytester, tiny_world, path, monkeypatch, f"--erasure-report={out}")
    assert result.ret in (0, 1), result.stdout.str() + result.stderr.str()
    case = next(c for c in json.loads((out / "report.json").read_text())["cases"]
                if c["scenario"] == "foreign")
    assert case["facts"]["overlays"]["erased"][0]["kind"] == "lora"


def test_the_check_reads_headers_and_configs_only(tiny_world: dict[str, Path],
                                                  tmp_path: Path) -> None:
    """No weights are read: the check passes against a UNet folder holding its config alone."""
    from diffusers import UNet2DConditionModel

    from pytest_erasure.errors import ErasureInputError
    from pytest_erasure.overlays import check_fit
    from pytest_erasure.overlays.lora import lora

    unet = UNet2DConditionModel.from_pretrained(tiny_world["standard"] / "unet")
    (tmp_path / "model" / "unet").mkdir(parents=True)
    config = tiny_world["standard"] / "unet" / "config.json"
    (tmp_path / "model" / "unet" / "config.json").write_text(config.read_text())
    check_fit((lora(_lora(unet, tmp_path / "ok.safetensors")),), tmp_path / "model")
    with pytest.raises(ErasureInputError, match="another architecture"):
        check_fit((lora(_lora(unet, tmp_path / "no.safetensors", widen=8)),), tmp_path / "model")


def test_fp8_needs_a_torch_with_float8_and_the_report_says_when_kernels_are_absent() -> None:
    """What "cannot run" means per format: quantize-dequantize computes every format on any
    device, except fp8 on a torch without float8 dtypes (refused); on a device without the
    format's low-bit kernels (CPU, for every one) the report says the weights were quantized
    and dequantized, and on CUDA that no low-bit kernel ran."""
    from pytest_erasure.errors import ErasureInputError
    from pytest_erasure.overlays.quantize import check_computable, kernel_note, quantize

    fp8 = quantize(format="fp8-e4m3")
    check_computable(fp8, torch)
    old_torch = SimpleNamespace(__version__="2.0.1")
    with pytest.raises(ErasureInputError, match="float8_e4m3fn"):
        check_computable(fp8, old_torch)
    check_computable(quantize(format="nf4"), old_torch)  # NF4 needs no float8
    assert kernel_note(quantize(format="nf4").params, "cpu").startswith(
        "none on cpu: bitsandbytes' 4-bit kernels run on cuda only")
    assert "ran no low-bit kernel" in kernel_note(quantize(8).params, "cuda:0")
    assert kernel_note(quantize(format="bfloat16").params, "cpu").startswith("none needed")
