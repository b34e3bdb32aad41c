"""`detectors.base.built_class`: what a detector's factory says it builds, without building it
(the guidance probe's up-front gradient check reads it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.detectors.base import DetectorSpec, built_class

MODULE = '''
from __future__ import annotations

from pytest_erasure.detectors.base import Detector


class Judge:
    def detect(self, images, label):
        raise AssertionError("never built")


def annotated(spec, device: str) -> Judge:
    raise AssertionError("never built")


def bare(spec, device):
    raise AssertionError("never built")


def protocol(spec, device: str) -> Detector:
    raise AssertionError("never built")


def hidden(spec, device: str) -> NotImportedHere:  # noqa: F821
    raise AssertionError("never built")
'''


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "built_class_factories.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "built_class_factories"


def test_an_annotated_factory_or_a_class_names_what_it_builds(module: str) -> None:
    assert built_class(DetectorSpec(f"{module}:annotated")).__name__ == "Judge"
    assert built_class(DetectorSpec(f"{module}:Judge")).__name__ == "Judge"


def test_a_factory_that_does_not_say_is_unknown_not_refused(module: str) -> None:
    for name in ("bare", "protocol", "hidden"):
        assert built_class(DetectorSpec(f"{module}:{name}")) is None, name


def test_the_built_in_detectors_that_can_guide() -> None:
    guides = {name: callable(getattr(built_class(DetectorSpec(name)), "log_probability", None))
              for name in ("shapes", "clip", "imagenet", "nudenet", "grounding-dino")}
    assert guides == {"shapes": True, "clip": False, "imagenet": False, "nudenet": False,
                      "grounding-dino": False}
