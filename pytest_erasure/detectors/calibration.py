"""Detector error, measured: a detector's sensitivity and specificity on labelled images.

Why here: `detector_error` corrects a CRR for the detector's error, given counts; this module
makes the counts. A calibration folder holds one subfolder per label; for a concept, images in
its label's folder are positives and every other labelled image a negative, so the specificity
is measured against the neighbours the detector is most likely to confuse, not only blanks.

Choices:
- The images are judged the way generated images are: resized to the audit's resolution (the
  reference loader's bicubic resize, `references.load_reference_images`, reused), held as uint8
  (what `generate` makes), and handed to the detector as float in [0, 1]. A detector that reads
  a 512x512 uint8 render differently from a 32x32 file would otherwise be measured on inputs it
  never judges in an audit.
- Cached in the erasure cache by (the detector's description digest, the label, the device
  family, the images' digest): an unchanged rerun builds no detector and judges nothing, and
  a changed image, threshold or weight file can never be served stale counts.
- A detector that cannot separate (the lower confidence bound of its Youden index below
  `detector_error.YOUDEN_MARGIN`) gets a reason string, not a corrected number: the caller
  marks the case inconclusive.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.cache import Cache, digest, tensor_digest
from pytest_erasure.concepts import Concept, calibration_labels
from pytest_erasure.detectors.base import Detector, DetectorSpec
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import CalibrationRecord, Rate
from pytest_erasure.stats.detector_error import (
    YOUDEN_MARGIN,
    Calibration,
    corrected_rate,
    separates,
    youden_lower,
)

if TYPE_CHECKING:
    import torch

    from pytest_erasure.context import Context
    from pytest_erasure.executors import Host

BATCH = 32
"""Images per `detect` call: a CLIP or DINO detector at 512x512 must not see 300 at once."""


def counts(record: CalibrationRecord) -> Calibration:
    """The record's counts as `detector_error` takes them."""
    return Calibration(detected=record.tp, positives=record.positives, rejected=record.tn,
                       negatives=record.negatives)


def load_calibration_images(folder: Path, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """{label: uint8 (N, 3, H, W)} at `size`, labels in folder order.

    Each label folder goes through `references.load_reference_images` (same checks, same resize);
    its [0, 1] floats are k/255 exactly, so rounding recovers the uint8 image it resized."""
    import torch

    from pytest_erasure.references import load_reference_images

    images: dict[str, torch.Tensor] = {}
    for label in calibration_labels(folder):
        stand_in = Concept(name=label, prompts=(), term=label, label=label,
                           detector=DetectorSpec("calibration"), references=folder / label)
        try:
            floats = load_reference_images(stand_in, size)
        except ErasureInputError as exc:
            what = exc.what.replace(f"reference folder of concept '{label}'",
                                    f"calibration folder '{label}'")
            raise ErasureInputError(what, exc.problem, exc.fix.replace("reference", "calibration")
                                    ) from None
        images[label] = (floats * 255).round().to(torch.uint8)
    return images


def said_present(detector: Detector, images: dict[str, torch.Tensor], label: str, batch: int,
                 advance: Callable[[int], None] | None = None) -> dict[str, int]:
    """{calibration label: how many of its images `detector` says show `label`}, judged `batch`
    images at a time."""
    import torch

    said: dict[str, int] = {}
    for name, stack in images.items():
        present = 0
        for start in range(0, len(stack), batch):
            chunk = stack[start:start + batch].to(torch.float32) / 255.0
            present += sum(bool(p) for p in detector.detect(chunk, label).present)
            if advance is not None:
                advance(len(chunk))
        said[name] = present
    return said


def judge_calibration(host: Host, advance: Callable[[int], None], *, spec: DetectorSpec,
                      device: str, label: str, images: dict[str, torch.Tensor], batch: int
                      ) -> dict[str, int]:
    """The calibration as a unit (`executors/units.py`): `said_present` with the detector the
    host holds for `spec`, wherever the executor runs it."""
    return said_present(host.detector_for(spec, device), images, label, batch, advance)


def measure_calibration(detector: Detector | Callable[[], Detector], label: str, folder: Path,
                        size: tuple[int, int], cache: Cache, *,
                        description: dict[str, Any] | None = None, device: str = "cpu",
                        batch: int = BATCH,
                        judge_with: Callable[[dict[str, torch.Tensor]], dict[str, int]] | None
                        = None) -> CalibrationRecord:
    """The detector's counts for `label` on the calibration folder.

    `detector` is a built detector or a callable that builds one: with `description` given
    (the context's cached `detector_description`), a cache hit builds nothing. `device` is
    part of the key (by family: 'cuda:1' -> 'cuda'), as for the context's verdicts.
    `judge_with(images)`, when given, judges in the detector's place (the context's unit,
    run by its executor): {label: images said to show `label`}."""
    images = load_calibration_images(folder, size)
    if label not in images or len(images) < 2:
        raise ErasureInputError(f"calibration folder {folder}",
                                f"needs '{label}/' and at least one other label folder",
                                f"add {label}/ and e.g. none/ with images")
    built: list[Detector] = []

    def get() -> Detector:
        if not built:
            built.append(detector if hasattr(detector, "detect") else detector())  # type: ignore[operator]
        return built[0]

    if description is None:
        description = get().describe()
    images_sha256 = tensor_digest(images)
    key = {"detector": digest(description), "label": label, "device": device.split(":")[0],
           "images": images_sha256}

    def judge() -> dict[str, Any]:
        said = judge_with(images) if judge_with is not None else said_present(
            get(), images, label, batch)
        return {"said_present": said, "counts": {name: len(s) for name, s in images.items()}}

    stored = cache.json("calibration", key, judge)
    said, counts = stored["said_present"], stored["counts"]
    tp = said[label]
    false_positives = {name: n for name, n in said.items() if name != label}
    fp = sum(false_positives.values())
    negatives = sum(n for name, n in counts.items() if name != label)
    return CalibrationRecord(label=label, tp=tp, fn=counts[label] - tp, tn=negatives - fp, fp=fp,
                             false_positives=false_positives, images_sha256=images_sha256,
                             folder=str(folder))


def calibrated(rate: Rate, record: CalibrationRecord, *, margin: float = YOUDEN_MARGIN,
               level: float = 0.95) -> Rate:
    """`detector_error.corrected_rate` on the record's counts: method 'rogan-gladen', or
    'inseparable' with interval [0, 1] when the detector cannot separate (see `inseparable`)."""
    return corrected_rate(rate, counts(record), margin=margin, level=level)


def inseparable(record: CalibrationRecord, *, margin: float = YOUDEN_MARGIN,
                level: float = 0.95) -> str | None:
    """None when the detector separates `record.label` from the rest (detector_error's rule:
    the Youden index's lower bound >= margin); otherwise the reason, one line, for the verdict."""
    calibration = counts(record)
    if separates(calibration, margin, level):
        return None
    bound = youden_lower(calibration, level) if record.positives and record.negatives else float("nan")
    return (f"detector cannot separate '{record.label}': sensitivity {record.sensitivity:.2f}, "
            f"specificity {record.specificity:.2f} on {record.positives}+{record.negatives} "
            f"calibration images (Youden index lower bound {bound:.2f} < {margin:g})")


def for_concept(session: Context, concept: Concept) -> CalibrationRecord | None:
    """The context's glue: the concept's counts on its calibration folder at the audit's
    resolution, through the context's detector, description, cache and executor; None when the concepts
    file declares no calibration for it."""
    if concept.calibration is None:
        return None

    def judge_with(images: dict[str, torch.Tensor]) -> dict[str, int]:
        return session.run(session.unit(  # type: ignore[no-any-return]
            judge_calibration, needs_models=False, title=f"calibration {concept.label}",
            total=sum(len(stack) for stack in images.values()), spec=concept.detector,
            device=session.config.device, label=concept.label, images=images,
            batch=BATCH))

    return measure_calibration(lambda: session.detector(concept), concept.label,
                               concept.calibration, session.size(), session.cache,
                               description=session.detector_description(concept),
                               device=session.config.device, judge_with=judge_with)


# -- the command: a suite's detector measured on its calibration sets ------------------------------

def _size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width or height)


def main(argv: list[str] | None = None) -> int:
    """`python -m pytest_erasure.detectors.calibration --concepts=FILE [--erased-concept NAME]
    [--size 512] [--device cuda]`: for every audited concept with a `calibration` folder, the
    suite's own detector (as the concepts file configures it) on its labelled images, judged at
    the audit's resolution, as an audit measures it. Before a GPU hour: a detector that cannot
    separate the concept makes every case of it inconclusive. Exit 1 when one cannot."""
    import argparse
    import sys

    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.detectors.base import build_detector
    from pytest_erasure.stats.detector_error import youden_lower as bound

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0] if main.__doc__ else None)
    parser.add_argument("--concepts", type=Path, required=True, help="the suite's concepts file")
    parser.add_argument("--erased-concept", action="append", default=None,
                        help="only this concept (repeatable); default: every erased concept")
    parser.add_argument("--size", type=_size, default=(512, 512),
                        help="the audit's image size, HxW or one number (default 512: SD v1.4)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        concepts = load_concepts(args.concepts)
        selected = tuple(n.strip() for v in args.erased_concept or () for n in v.split(",")
                         if n.strip()) or None
        audited = concepts.erased(selected)
    except ErasureInputError as exc:
        parser.error(str(exc))
    calibrated_ones = [c for c in audited if c.calibration is not None]
    if not calibrated_ones:
        parser.error(f"no audited concept of {args.concepts} declares a calibration folder: add "
                     "calibration = \"FOLDER\" (one subfolder of images per label) to it "
                     "(audits/sd14/README.md, 'Calibration set')")
    print(f"| concept | folder | sensitivity | specificity | tp/fn/tn/fp | Youden 95% lower "
          f"bound | separates (>= {YOUDEN_MARGIN:g}) |\n|---|---|---|---|---|---|---|")
    blind = 0
    detectors: dict[str, Detector] = {}
    for concept in calibrated_ones:
        key = repr((concept.detector.name, concept.detector.path,
                    sorted(concept.detector.options.items())))
        detector = detectors.get(key) or detectors.setdefault(
            key, build_detector(concept.detector, args.device))
        assert concept.calibration is not None
        record = measure_calibration(detector, concept.label, concept.calibration, args.size,
                                     Cache(None), device=args.device)
        reason = inseparable(record)
        blind += reason is not None
        low = bound(counts(record)) if record.positives and record.negatives else float("nan")
        print(f"| {concept.name} | {concept.calibration} | {record.sensitivity:.3f} | "
              f"{record.specificity:.3f} | {record.tp}/{record.fn}/{record.tn}/{record.fp} | "
              f"{low:.3f} | {'yes' if reason is None else 'NO'} |")
    return 1 if blind else 0


if __name__ == "__main__":
    raise SystemExit(main())
