"""The guidance probe's detector, checked before any model loads: with
`--guidance-classifier detector` the probe guides with the detector's gradient, so a concept
judged by a detector without `log_probability` is one usage error line (exit 4) when
guidance-probe is selected, and nothing at all when it is not; with the default latent
classifier the detector only labels and judges, so the same concepts file is collected.

The detector without a gradient is a real one written beside the test (a factory whose return
annotation names its class, as every built-in factory's does); model loads and detector
builds are recorded and refused, so the error is proved to come before anything heavy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
FAST = ("--samples=2", "--steps=1", "--batch-size=2", "-p", "no:randomly",
        "-p", "no:cacheprovider", "--no-erasure-cache")
FLAT = '''
from pytest_erasure.detectors.base import Detection


class FlatDetector:
    """Says every image shows nothing: it judges, but has no gradient to guide with."""

    name = "flat"

    def detect(self, images, label):
        return Detection(present=[False] * len(images), score=[0.0] * len(images))

    def describe(self):
        return {"name": self.name, "rule": "never present"}


def build(spec, device: str) -> FlatDetector:
    return FlatDetector()
'''
BRIGHTNESS = 'detector = "pytest_erasure.testing:build_brightness_detector"'


def _args(world: dict[str, Path], concepts: Path, scenarios: str) -> list[str]:
    return [f"--standard-model={world['standard']}", f"--erased-model={world['erased']}",
            f"--concepts={concepts}", f"--scenarios={scenarios}", *FAST]


def _flat_world(pytester: pytest.Pytester, world: dict[str, Path]) -> Path:
    """The tiny world's concepts, judged by the flat detector (its references kept)."""
    pytester.makepyfile(test_audit=AUDIT, guidance_flat_detector=FLAT)
    pytester.syspathinsert()
    text = world["concepts"].read_text()
    assert BRIGHTNESS in text
    concepts = world["concepts"].parent / "flat-concepts.toml"
    concepts.write_text(text.replace(BRIGHTNESS, 'detector = "guidance_flat_detector:build"'))
    return concepts


def _refuse_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import pytest_erasure.context
    import pytest_erasure.models.loading

    loaded: list[str] = []

    def load_models(*args: object, **kwargs: object) -> None:
        loaded.append("models")
        raise AssertionError("a model was loaded before the usage error")

    def build_detector(*args: object, **kwargs: object) -> None:
        loaded.append("detector")
        raise AssertionError("a detector was built before the usage error")

    monkeypatch.setattr(pytest_erasure.models.loading, "load_models", load_models)
    monkeypatch.setattr(pytest_erasure.context, "build_detector", build_detector)
    return loaded


def test_guidance_probe_with_a_detector_without_gradient_is_one_usage_error(
        pytester: pytest.Pytester, tiny_world: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    concepts = _flat_world(pytester, tiny_world)
    loads = _refuse_loads(monkeypatch)
    result = pytester.runpytest_inprocess(*_args(tiny_world, concepts, "text,guidance-probe"),
                                          "--guidance-classifier=detector")
    out, err = result.stdout.str(), result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, (result.ret, out[-3000:], err[-3000:])
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ERROR: "), err
    line = errors[0]
    assert "--scenarios guidance-probe: concept 'circle' is judged by detector " \
           "'guidance_flat_detector:build' (FlatDetector)" in line, line
    assert "no differentiable log_probability(images, label)" in line, line
    assert "guide with --guidance-classifier latent" in line, line
    assert "judge the concept with a detector that has one" in line, line
    assert "or leave guidance-probe out of --scenarios" in line, line
    assert "Traceback" not in out + err
    assert loads == [], "the usage error came after a model or detector was loaded"


def test_the_same_detector_without_guidance_probe_is_unaffected(
        pytester: pytest.Pytester, tiny_world: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    concepts = _flat_world(pytester, tiny_world)
    loads = _refuse_loads(monkeypatch)
    result = pytester.runpytest_inprocess(*_args(tiny_world, concepts, "text,baseline"),
                                          "--co", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    result.stdout.fnmatch_lines(["*[[]circle-baseline[]]", "*[[]circle-text[]]"])
    assert "guidance" not in result.stdout.str()
    assert loads == []


def test_guidance_probe_with_a_detector_that_has_a_gradient_is_collected(
        pytester: pytest.Pytester, tiny_world: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check refuses only what cannot guide: the tiny world's brightness detector can."""
    pytester.makepyfile(test_audit=AUDIT)
    loads = _refuse_loads(monkeypatch)
    result = pytester.runpytest_inprocess(
        *_args(tiny_world, tiny_world["concepts"], "guidance-probe"), "--co", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    result.stdout.fnmatch_lines(["*[[]circle-guidance-probe[]]"])
    assert loads == []


def test_a_detector_without_gradient_is_collected_with_the_latent_classifier(
        pytester: pytest.Pytester, tiny_world: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The default guide is the latent classifier: the flat detector only labels its training
    images and judges, so nothing is refused (and nothing loads at collection)."""
    concepts = _flat_world(pytester, tiny_world)
    loads = _refuse_loads(monkeypatch)
    result = pytester.runpytest_inprocess(*_args(tiny_world, concepts, "guidance-probe"),
                                          "--co", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    result.stdout.fnmatch_lines(["*[[]circle-guidance-probe[]]"])
    assert loads == []


@pytest.mark.parametrize(("flags", "message"), [
    (["--guidance-classifier=clip"], "--guidance-classifier: is 'clip'"),
    (["--guidance-classifier-images=1"], "--guidance-classifier-images: is 1"),
    (["--guidance-classifier-steps=0"], "--guidance-classifier-steps: is 0"),
])
def test_a_bad_guidance_classifier_setting_is_one_usage_error(
        pytester: pytest.Pytester, tiny_world: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch, flags: list[str], message: str) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    loads = _refuse_loads(monkeypatch)
    result = pytester.runpytest_inprocess(
        *_args(tiny_world, tiny_world["concepts"], "guidance-probe"), *flags)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()[-2000:]
    errors = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert len(errors) == 1 and message in errors[0], errors
    assert loads == []
