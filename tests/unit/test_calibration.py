"""Detector calibration: the concepts-file key is validated up front, the counts are exact on a
labelled folder whose truth is known by construction, cached, and a blind detector is flagged."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.cache import Cache
from pytest_erasure.concepts import load_concepts
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import CalibrationRecord, Rate
from pytest_erasure.testing import BrightnessDetector

pytest.importorskip("torch")
np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")

from pytest_erasure.detectors.calibration import (  # noqa: E402
    calibrated,
    inseparable,
    load_calibration_images,
    measure_calibration,
)

REPO = Path(__file__).resolve().parents[2]

CONCEPTS = """
[defaults]
detector = "pytest_erasure.testing:build_brightness_detector"
prompts = ["a {{concept}}"]
{defaults}
[[concept]]
name = "circle"
{circle}
[[concept]]
name = "square"
erased = false
"""


def _png(path: Path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def _folder(root: Path, brightness: dict[str, list[int]]) -> Path:
    """root/calibration/<label>/NN.png, each image flat at the given grey level."""
    folder = root / "calibration"
    for label, values in brightness.items():
        for i, value in enumerate(values):
            _png(folder / label / f"{i:02d}.png", value)
    return folder


def _concepts(root: Path, defaults: str = "", circle: str = "") -> Path:
    path = root / "concepts.toml"
    path.write_text(CONCEPTS.format(defaults=defaults, circle=circle))
    return path


# -- the concepts-file key ------------------------------------------------------------------


def test_defaults_calibration_reaches_every_concept(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"circle": [250], "square": [10], "none": [0]})
    concepts = load_concepts(_concepts(tmp_path, defaults='calibration = "calibration"'))
    assert {c.calibration for c in concepts.concepts.values()} == {folder.resolve()}


def test_shipped_shapes_file_declares_its_calibration_set() -> None:
    concepts = load_concepts(REPO / "audits" / "shapes.toml")
    expected = REPO / "fixtures" / "shapes" / "calibration"
    assert all(c.calibration == expected for c in concepts.concepts.values())
    assert sorted(p.name for p in expected.iterdir()) == sorted(
        ["circle", "square", "triangle", "star", "cross", "heart", "none"])


@pytest.mark.parametrize("setup, circle, needle", [
    (None, 'calibration = "missing"', "calibration: calibration folder"),
    (None, 'calibration = "../../elsewhere"', "leaves the concepts file's folder tree"),
    (None, "calibration = 3", "calibration: is 3; give a path as a string"),
    ("empty-label", 'calibration = "calibration"', "square/: is empty"),
    ("stray-file", 'calibration = "calibration"', "notes.txt: is not a label folder"),
    ("non-image", 'calibration = "calibration"', "circle/readme.md: is not an image file"),
    ("no-positives", 'calibration = "calibration"', "has no folder 'circle/' for label 'circle'"),
    ("no-negatives", 'calibration = "calibration"', "has no negatives (only 'circle/')"),
    (None, 'calibraton = "calibration"', "unknown key(s) calibraton"),
])
def test_bad_calibration_is_one_line_input_error(tmp_path: Path, setup: str | None, circle: str,
                                                 needle: str) -> None:
    root = tmp_path / "suite" / "audits"
    root.mkdir(parents=True)
    if setup is not None:
        labels = {"circle": [250], "square": [10]}
        if setup == "no-positives":
            labels = {"square": [10], "none": [0]}
        if setup == "no-negatives":
            labels = {"circle": [250]}
        folder = _folder(root, labels)
        if setup == "empty-label":
            for file in (folder / "square").iterdir():
                file.unlink()
        if setup == "stray-file":
            (folder / "notes.txt").write_text("x")
        if setup == "non-image":
            (folder / "circle" / "readme.md").write_text("x")
    with pytest.raises(ErasureInputError) as info:
        load_concepts(_concepts(root, circle=circle))
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert "calibrat" in message  # names the key


def test_unreadable_image_is_named_when_loaded(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"circle": [250], "none": [0]})
    (folder / "none" / "01.png").write_bytes(b"not a png")
    with pytest.raises(ErasureInputError, match=r"calibration folder 'none'.*01\.png: cannot be read"):
        load_calibration_images(folder, (8, 8))


# -- the counts -----------------------------------------------------------------------------


class CountingDetector(BrightnessDetector):
    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__(threshold)
        self.images = 0

    def detect(self, images, label: str):
        self.images += len(images)
        return super().detect(images, label)


# circle: 5 images, 3 bright (> 0.5 of 255 = 127.5); square: 4, 1 bright; none: 3, 0 bright.
LEVELS = {"circle": [200, 255, 130, 100, 20], "square": [10, 240, 60, 127], "none": [0, 5, 127]}


def test_counts_are_exact_on_known_brightness(tmp_path: Path) -> None:
    folder = _folder(tmp_path, LEVELS)
    record = measure_calibration(CountingDetector(), "circle", folder, (16, 16), Cache(None),
                                 batch=2)
    assert (record.tp, record.fn, record.tn, record.fp) == (3, 2, 6, 1)
    assert record.false_positives == {"none": 0, "square": 1}
    assert record.sensitivity == pytest.approx(3 / 5) and record.specificity == pytest.approx(6 / 7)
    again = measure_calibration(CountingDetector(), "square", folder, (16, 16), Cache(None))
    assert (again.tp, again.fn, again.tn, again.fp) == (1, 3, 5, 3)  # the label decides
    assert CalibrationRecord.from_dict(record.to_dict()) == record


def test_images_reach_the_detector_as_uint8_at_the_audit_size(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"circle": [128], "none": [127]})  # 128/255 > 0.5 > 127/255
    images = load_calibration_images(folder, (24, 12))
    assert images["circle"].dtype.is_floating_point is False
    assert tuple(images["circle"].shape) == (1, 3, 24, 12)
    record = measure_calibration(BrightnessDetector(), "circle", folder, (24, 12), Cache(None))
    assert (record.tp, record.tn) == (1, 1)


def test_second_call_builds_and_judges_nothing(tmp_path: Path) -> None:
    folder = _folder(tmp_path, LEVELS)
    cache = Cache(tmp_path / "cache")
    built: list[CountingDetector] = []

    def build() -> CountingDetector:
        built.append(CountingDetector())
        return built[-1]

    description = BrightnessDetector().describe()
    first = measure_calibration(build, "circle", folder, (8, 8), cache, description=description)
    assert len(built) == 1 and built[0].images == 12
    second = measure_calibration(build, "circle", folder, (8, 8), cache, description=description)
    assert second == first and len(built) == 1 and built[0].images == 12
    # A changed image, label or threshold is a new key: measured afresh.
    _png(folder / "none" / "00.png", 255)
    third = measure_calibration(build, "circle", folder, (8, 8), cache, description=description)
    assert len(built) == 2 and third.fp == first.fp + 1
    measure_calibration(build, "circle", folder, (8, 8), cache,
                        description=BrightnessDetector(0.9).describe())
    assert len(built) == 3


def test_separating_detector_corrects_the_rate(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"circle": [255] * 40, "none": [0] * 200})
    record = measure_calibration(BrightnessDetector(), "circle", folder, (8, 8), Cache(None))
    assert inseparable(record) is None
    rate = calibrated(Rate(hits=10, n=100), record)
    assert rate.method == "rogan-gladen" and rate.crr == pytest.approx(0.10)
    assert rate.interval[0] < 0.10 < rate.interval[1]


def test_blind_detector_cannot_separate(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"circle": [255] * 40, "none": [0] * 200})
    blind = BrightnessDetector(threshold=-1.0)  # says present for everything
    record = measure_calibration(blind, "circle", folder, (8, 8), Cache(None))
    assert (record.tp, record.fn, record.tn, record.fp) == (40, 0, 0, 200)
    reason = inseparable(record)
    assert reason is not None and reason.startswith(
        "detector cannot separate 'circle': sensitivity 1.00, specificity 0.00 on 40+200 "
        "calibration images")
    rate = calibrated(Rate(hits=10, n=100), record)
    assert rate.method == "inseparable" and rate.interval == (0.0, 1.0)


def test_session_glue_measures_through_the_session(tmp_path: Path) -> None:
    """`for_concept`: the concept's calibration, at the session's resolution, through its
    detector and cache; a concept without calibration gets None."""
    from pytest_erasure.detectors.calibration import for_concept
    from pytest_erasure.session import context_for_pipelines
    from pytest_erasure.testing import tiny_concepts, tiny_pipeline

    _folder(tmp_path, LEVELS)
    path = tmp_path / "concepts.toml"
    path.write_text(tiny_concepts().replace('name = "circle"',
                                            'name = "circle"\ncalibration = "calibration"'))
    pipe = tiny_pipeline(0)
    session = context_for_pipelines(pipe, pipe, path, tmp_path / "cache")
    record = for_concept(session, session.concepts.concepts["circle"])
    assert record is not None and (record.tp, record.fn, record.tn, record.fp) == (3, 2, 6, 1)
    assert for_concept(session, session.concepts.concepts["square"]) is None
    misses = session.cache.misses
    assert for_concept(session, session.concepts.concepts["circle"]) == record
    assert session.cache.misses == misses
