"""The quantized cases (issue 26): the concept's prompts on both models quantized the same way.

On the tiny world: opt-in (the default audit's cases are unchanged), both models run under the
same `quantize` overlay, recorded in the report with what it is (int8 through torch's CPU int8
kernel under the default `--quantize-kernels auto`; 4-bit in groups of 8, which no int4 kernel
takes, as quantize-dequantize), 4-bit moves the erased model's images off the unquantized ones;
bad settings are one usage-error line before any model loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
FAST = ["--samples", "4", "--steps", "2", "--batch-size", "4", "-p", "no:randomly",
        "--erasure-gate=point", "--no-erasure-cache"]


pytestmark = pytest.mark.usefixtures("this_checkout")


def _world(world: dict[str, Path]) -> list[str]:
    return [f"--standard-model={world['standard']}", f"--erased-model={world['erased']}",
            f"--concepts={world['concepts']}", *FAST]


def test_quantized_cases_run_only_when_named(case_ids: Callable[..., list[str]]) -> None:
    assert not any("quantized" in i for i in case_ids())
    named = case_ids(scenarios=("quantized", "text"))
    assert {"circle-quantized-int8", "circle-quantized-4bit", "circle-text"} <= set(named)
    assert [i for i in case_ids(scenarios=("quantized-4bit",)) if "quantized" in i] == \
        ["circle-quantized-4bit"]


def test_both_models_run_quantized_the_same_way(pytester: pytest.Pytester,
                                                tiny_world: dict[str, Path]) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    out = pytester.path / "report"
    result = pytester.runpytest_subprocess(
        *_world(tiny_world), "--scenarios", "text,quantized-int8,quantized-4bit",
        "--quant-group-size", "8",
        f"--erasure-report={out}")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret in (0, 1) and "Traceback" not in output, output
    cases = {c["scenario"]: c for c in json.loads((out / "report.json").read_text())["cases"]
             if c["concept"] == "circle"}
    assert {"text", "quantized-int8", "quantized-4bit"} <= set(cases)
    for scenario, bits in (("quantized-int8", 8), ("quantized-4bit", 4)):
        facts = cases[scenario]["facts"]
        erased, standard = facts["overlays"]["erased"], facts["overlays"]["standard"]
        assert len(erased) == 1 and erased == standard  # the control: the same quantization
        assert erased[0]["kind"] == "quantize" and erased[0]["params"]["bits"] == bits
        assert "quantize-dequantize" in erased[0]["description"]
        assert facts["scenario_settings"]["bits"] == bits
    int8 = cases["quantized-int8"]["facts"]
    assert int8["scenario_settings"]["kernels"] == "native"
    assert int8["quantization"]["kernels"].startswith("torch._weight_int8pack_mm on cpu")
    assert int8["overlays"]["erased"][0]["applied_layers"]["unet"]["kernel"] > 0
    int4 = cases["quantized-4bit"]["facts"]  # groups of 8: no int4 kernel takes them
    assert int4["scenario_settings"]["kernels"] == "dequantize"
    assert "ran no low-bit kernel" in int4["quantization"]["kernels"]
    assert "applied_layers" not in int4["overlays"]["erased"][0]
    assert cases["quantized-4bit"]["facts"]["scenario_settings"]["quant-group-size"] == 8
    # 4 bits, one scale per 8 weights: the erased model's images move off the 32-bit ones.
    assert cases["quantized-4bit"]["facts"]["image_sha256"] != \
        cases["text"]["facts"]["image_sha256"]
    assert cases["quantized-4bit"]["facts"]["prompts"] == cases["text"]["facts"]["prompts"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--quant-group-size", "0"], "--quant-group-size: is 0"),
    (["--quant-components", "unet,safety_checker"], "--quant-components: is 'unet,safety_checker'"),
])
def test_bad_quantization_settings_are_one_usage_error(pytester: pytest.Pytester,
                                                       tiny_world: dict[str, Path],
                                                       flags: list[str], message: str) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_subprocess(*_world(tiny_world), "--scenarios", "quantized-4bit",
                                           *flags)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert len(errors) == 1 and message in errors[0], errors


def test_the_embedding_case_runs_on_the_quantized_models(pytester: pytest.Pytester,
                                                         tiny_world: dict[str, Path]) -> None:
    """quantized-4bit-embedding: the white-box textual inversion learned, encoded and generated
    under the quantize overlay on both models (the control quantized the same way), through the
    embedding scenario's own path: its tokens are not the unquantized case's, its images are
    keyed by the overlay, and the report says quantize-dequantize ran."""
    pytester.makepyfile(test_audit=AUDIT)
    out = pytester.path / "report"
    result = pytester.runpytest_subprocess(
        *_world(tiny_world), "--scenarios", "embedding-white,quantized-4bit-embedding",
        "--quant-group-size", "8", "--ti-steps", "2", "--ti-batch-size", "2",
        "--ti-train-images", "2", "--attack-restarts", "1", f"--erasure-report={out}")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret in (0, 1) and "Traceback" not in output, output
    cases = {c["scenario"]: c for c in json.loads((out / "report.json").read_text())["cases"]
             if c["concept"] == "circle"}
    plain, quantized = cases["embedding-white"], cases["quantized-4bit-embedding"]
    facts = quantized["facts"]
    erased, standard = facts["overlays"]["erased"], facts["overlays"]["standard"]
    assert len(erased) == 1 and erased == standard and erased[0]["params"]["bits"] == 4
    assert "ran no low-bit kernel" in facts["quantization"]["kernels"]  # groups of 8: none fits
    assert facts["threat_model"] == "white-box"
    assert facts["optimised_through"] == "erased"
    assert facts["standard_plan"]["optimised_through"] == "standard"
    # learned through the quantized model: another token file than the plain case's
    assert quantized["artifacts"]["embedding"] != plain["artifacts"]["embedding"]
    assert facts["image_sha256"] != plain["facts"]["image_sha256"]
    assert facts["scenario_settings"]["quant-group-size"] == 8
    assert facts["scenario_settings"]["ti-steps"] == 2


@pytest.mark.parametrize(("scenario", "flags", "message"), [
    ("quantized-nf4", [], "--quantize-kernels: is 'native' but this torch"),
    ("quantized-4bit", ["--quant-group-size", "8"],
     "--quantize-kernels: is 'native' but torch._weight_int4pack_mm_for_cpu takes groups of"),
])
def test_native_kernels_the_device_lacks_are_one_usage_error(
        pytester: pytest.Pytester, tiny_world: dict[str, Path], scenario: str,
        flags: list[str], message: str) -> None:
    """`--quantize-kernels native` where this torch on the CPU has no kernel (NF4) or none takes
    the settings (int4 groups of 8): one usage-error line, before any model loads (exit 4 at
    configuration, as every bad setting)."""
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_subprocess(*_world(tiny_world), "--scenarios", scenario,
                                           "--quantize-kernels", "native", *flags)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert len(errors) == 1 and message in errors[0], errors
