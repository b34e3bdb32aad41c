"""Is a suite ready to run? Every missing piece at once, each with the command that provides it.

The audit itself checks its inputs before any model loads (`preflight.py`), but it stops at the
first problem: one `ERROR:` line, fix it, run again, meet the next. On a GPU machine with a fresh
copy of `/models` that is a loop of round trips. This reads the same flags as the audit command
(anything else on the line is ignored, so the audit command can be reused as it is), checks the
standard model, the erased model, every detector folder, the references and the calibration
folders of the concepts the run would audit, and prints them all, loading no model and no
detector:

    python -m pytest_erasure.setup_check --standard-model=/models/sd-v1-4 \\
        --erased-model=/models/esd/esd-airplane.safetensors \\
        --concepts=audits/sd14/cifar10.toml --erased-concept=airplane

Exit 0 when everything the run needs is there, 1 when something is missing. References and
calibration are optional for an audit (the embedding and latent scenarios then start from the
standard model's own images; without calibration the detector's error is not measured): they
are listed as notes, and count as missing only where the run needs them (a declared folder
that is not there, `--erasure-corrected` without calibration).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_erasure.errors import ErasureInputError

if TYPE_CHECKING:
    from pytest_erasure.detectors.base import DetectorSpec

SD14_DOWNLOAD = (
    'hf download CompVis/stable-diffusion-v1-4 --local-dir {path} '
    '--include "model_index.json" --include "scheduler/*" --include "tokenizer/*" '
    '--include "text_encoder/config.json" --include "text_encoder/model.safetensors" '
    '--include "unet/config.json" --include "unet/diffusion_pytorch_model.safetensors" '
    '--include "vae/config.json" --include "vae/diffusion_pytorch_model.safetensors"')
"""audits/sd14/README.md step 1's command for the standard model (a test holds the two equal)."""

WEIGHT_SUFFIXES = (".safetensors", ".bin")
GUIDE = "audits/sd14/README.md"


@dataclass(frozen=True)
class Item:
    """One piece of the setup: `status` 'ok', 'missing' (the run cannot do without it) or
    'note' (optional, and absent), what it is, and the command or step that provides it."""

    status: str
    what: str
    detail: str
    fix: str = ""


def _checked(what: str, check: Callable[[], str], fix: str | None = None) -> Item:
    """`check()` returns what was found; an ErasureInputError is the missing piece, with the
    error's own fix unless `fix` names a better command."""
    try:
        return Item("ok", what, check())
    except ErasureInputError as exc:
        return Item("missing", what, f"{exc.what}: {exc.problem}", fix or exc.fix)


def _standard(path: Path) -> str:
    from pytest_erasure.models.formats.diffusers_folder import validate_pipeline_folder

    if not path.exists():
        raise ErasureInputError(f"--standard-model {path}", "does not exist", "")
    validate_pipeline_folder(path, "--standard-model")
    # The configs can be there while an interrupted download left a component's weights out.
    for component in ("unet", "vae", "text_encoder"):
        folder = path / component
        if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
            raise ErasureInputError(f"--standard-model {folder}", "has no weight file", "")
    return f"{path} (diffusers pipeline folder, weights present)"


def _erased(path: Path, forced: str | None) -> str:
    from pytest_erasure.models.formats import detect_format

    if not path.exists():
        raise ErasureInputError(f"--erased-model {path}", "does not exist",
                                "copy the erased checkpoint you audit there")
    return f"{path} ({forced or detect_format(path)} format)"


def _detector(spec: DetectorSpec, labels: list[str]) -> str:
    """The detector's own up-front check (`detectors.base.check_detector`: its module, options,
    labels and folder; no weights read)."""
    from pytest_erasure.detectors.base import check_detector

    check_detector(spec, labels)
    return str(spec.path or "no folder needed")


def _detector_fix(fix: str, path: Path | None) -> str:
    return fix.replace("--local-dir DIR", f"--local-dir {path}") if path is not None else fix


def check(standard: Path, erased: Path, concepts_file: Path,
          selected: tuple[str, ...] | None = None, scenarios: tuple[str, ...] | None = None,
          corrected: bool = False, erased_format: str | None = None) -> list[Item]:
    """Every piece the run would need, in the order a person sets them up."""
    from pytest_erasure.concepts import calibration_labels, load_concepts
    from pytest_erasure.references import IMAGE_SUFFIXES

    items = [
        _checked("standard model", lambda: _standard(standard),
                 f"on a machine with internet: {SD14_DOWNLOAD.format(path=standard)} "
                 f"({GUIDE}, step 1); any SD v1-family diffusers folder works"),
        _checked("erased model", lambda: _erased(erased, erased_format)),
    ]
    try:
        concepts = load_concepts(concepts_file)
        audited = concepts.erased(selected)
    except ErasureInputError as exc:
        items.append(Item("missing", "concepts file", f"{exc.what}: {exc.problem}", exc.fix))
        return items
    items.append(Item("ok", "concepts file",
                      f"{concepts_file} (audited as erased: "
                      f"{', '.join(c.name for c in audited) or 'none'})"))
    judged = {c.name: c for c in audited}
    for concept in audited:
        for name in concept.retain:
            judged.setdefault(name, concepts.concepts[name])
    by_detector: dict[tuple[str, str, str], list[str]] = {}
    for concept in judged.values():
        spec = concept.detector
        by_detector.setdefault((spec.name, str(spec.path), repr(sorted(spec.options.items()))),
                               []).append(concept.name)
    for names in by_detector.values():
        spec = judged[names[0]].detector
        labels = sorted({judged[n].label for n in names})
        what = f"detector '{spec.name}' for {', '.join(names)}"
        item = _checked(what, partial(_detector, spec, labels))
        items.append(Item(item.status, item.what, item.detail,
                          _detector_fix(item.fix, spec.path)))
    from pytest_erasure.scenarios.base import registry

    wanted = set(scenarios or ())
    readers = [s for s in registry().values() if s.needs_references
               and (not wanted or s.id in wanted or s.modality in wanted)]
    uses_references = bool(readers)
    for concept in audited:
        what = f"references for {concept.name}"
        if concept.references is None:
            if uses_references:
                items.append(Item(
                    "note", what, "none declared: the scenarios that read references ("
                    f"{', '.join(s.id for s in readers)}) start from the standard model's own "
                    "images of it",
                    f"add references = \"FOLDER\" to its [[concept]] in {concepts_file}, a folder "
                    f"of PNG/JPEG photos of {concept.term} ({GUIDE}, 'References')"))
            continue
        folder = concept.references
        images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES] \
            if folder.is_dir() else []
        if images:
            items.append(Item("ok", what, f"{folder} ({len(images)} images)"))
        else:
            items.append(Item("missing", what, f"{folder}: no images there",
                              f"put PNG/JPEG photos of {concept.term} in {folder}"))
    for concept in audited:
        what = f"calibration for {concept.name}"
        if concept.calibration is None:
            items.append(Item(
                "missing" if corrected else "note", what,
                "none declared: the detector's error is not measured"
                + (", and --erasure-corrected needs it" if corrected else ""),
                f"build a calibration set ({GUIDE}, 'Calibration set'), name it with "
                f"calibration = \"FOLDER\", then measure it: python -m "
                f"pytest_erasure.detectors.calibration --concepts={concepts_file}"))
            continue
        labels = calibration_labels(concept.calibration)  # checked when the file loaded
        items.append(Item("ok", what, f"{concept.calibration} ("
                          + ", ".join(f"{k}: {len(v)}" for k, v in labels.items()) + ")"))
    return items


def report(items: list[Item]) -> str:
    marks = {"ok": "ok      ", "missing": "MISSING ", "note": "optional"}
    lines = []
    for item in items:
        lines.append(f"{marks[item.status]} {item.what}: {item.detail}")
        if item.status != "ok" and item.fix:
            lines.append(f"         -> {item.fix}")
    missing = sum(item.status == "missing" for item in items)
    lines.append(f"{missing} missing: " + ("the audit cannot run yet" if missing else
                                           "everything the audit needs is in place"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pytest_erasure.config import DEFAULT_CONCEPTS, DEFAULT_ERASED, DEFAULT_STANDARD

    parser = argparse.ArgumentParser(
        description="Check an audit's setup (models, detector weights, references, "
                    "calibration) without loading anything; the audit command's other flags "
                    "are ignored.")
    parser.add_argument("--standard-model", type=Path, default=DEFAULT_STANDARD)
    parser.add_argument("--erased-model", type=Path, default=DEFAULT_ERASED)
    parser.add_argument("--erased-format", default=None)
    parser.add_argument("--concepts", type=Path, default=DEFAULT_CONCEPTS)
    parser.add_argument("--erased-concept", action="append", default=None)
    parser.add_argument("--scenarios", default=None)
    parser.add_argument("--erasure-corrected", action="store_true")
    args, _ignored = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    selected = None
    if args.erased_concept:
        selected = tuple(n.strip() for v in args.erased_concept for n in v.split(",") if n.strip())
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip()) \
        if args.scenarios else None
    items = check(args.standard_model.expanduser(), args.erased_model.expanduser(),
                  args.concepts.expanduser(), selected, scenarios, args.erasure_corrected,
                  args.erased_format)
    print(report(items))
    return 1 if any(item.status == "missing" for item in items) else 0


if __name__ == "__main__":
    raise SystemExit(main())
