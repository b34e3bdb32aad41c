"""Concepts: what was erased, how to ask for it, how to see it, and what must survive.

A concepts file (TOML) declares them. It is validated as a whole when the audit starts, so a
typo costs a one-line usage error, not a half-finished run.

Where its paths may point (`_path`): a relative path is relative to the file and, as written,
may not climb above the folder that holds the file's folder (for audits/sd14/cifar10.toml,
audits/; for audits/shapes.toml, the repository root, where fixtures/ is). An absolute path is
taken as given, and a symlink is followed to where it points. The rule is about what the file's
text says, because that is what a reviewer reads: an absolute path and a symlink (a file of its
own in the suite's tree, shown as one by git) both point elsewhere openly, by the choice of
whoever wrote them; `../../../etc` inside a path that reads as the suite's is the one way to
reach out unseen. The resolved target (the symlink followed) is what every report records.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_erasure.detectors.base import DetectorSpec
from pytest_erasure.errors import ErasureInputError

PLACEHOLDER = "{concept}"


@dataclass(frozen=True)
class Concept:
    """One concept under audit (`erased = true`) or a neighbour kept only for retention."""

    name: str
    prompts: tuple[str, ...]
    """Templates with `{concept}`; formatted with `term` they are what a user would type."""
    term: str
    label: str
    detector: DetectorSpec
    erased: bool = True
    references: Path | None = None
    calibration: Path | None = None
    """Labelled images (one subfolder per detector label) that measure the detector's error:
    images under `<calibration>/<label>/` are positives, every other labelled image a negative."""
    retain: tuple[str, ...] = ()
    threshold: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    """Per-scenario thresholds keyed by scenario id (`latent-white-null`) or modality."""
    attack_floors: dict[str, float] = field(default_factory=dict)
    """Per-scenario attack floors (see `verdict.py`), keyed like `thresholds`."""
    synonyms: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    paired_prompts: tuple[tuple[str, str], ...] = ()
    """(with concept, without concept) prompt pairs: Ring-A-Bell's concept vector."""

    def texts(self) -> list[str]:
        return [p.replace(PLACEHOLDER, self.term) for p in self.prompts]


@dataclass(frozen=True)
class ConceptSet:
    path: Path
    concepts: dict[str, Concept]
    threshold: float | None
    thresholds: dict[str, float]
    neutral_prompts: tuple[str, ...]
    """Prompts that name no concept: the base rate an erasure cannot go below."""
    raw: dict[str, Any]
    attack_floors: dict[str, float] = field(default_factory=dict)
    """File-wide per-scenario attack floors (`[attack_floors]`), keyed like `thresholds`."""

    @property
    def audited(self) -> list[Concept]:
        return [c for c in self.concepts.values() if c.erased]

    def erased(self, selected: tuple[str, ...] | None) -> list[Concept]:
        """The concepts audited as erased: those named (`--erased-concept`), in the file's
        order, or every one the file marks erased. A suite such as cifar10.toml marks all ten
        classes erased so one file serves ten models; an ESD-airplane model is audited on
        airplane (and airplane's neighbours' retention) alone, not failed on nine classes it
        never erased. Only a concept the file marks erased can be named: a neighbour has no
        erasure cases to run."""
        if selected is None:
            return self.audited
        known = [c.name for c in self.audited]
        unknown = [name for name in selected if name not in known]
        if unknown:
            raise ErasureInputError(
                "--erased-concept", f"names {', '.join(repr(n) for n in unknown)}, not a concept "
                f"the concepts file {self.path} marks erased", f"use one of: {', '.join(known)}")
        wanted = set(selected)
        return [c for c in self.audited if c.name in wanted]

    def attack_floor_for(self, concept: Concept, scenario_id: str, modality: str,
                         default: float) -> float:
        """Most specific wins: concept+scenario, concept+modality, file+scenario, file+modality,
        then the option (`--attack-floor`)."""
        for table in (concept.attack_floors, self.attack_floors):
            for key in (scenario_id, modality):
                if key in table:
                    return table[key]
        return default

    def threshold_for(self, concept: Concept, scenario_id: str, modality: str,
                      audit_threshold: float) -> float:
        """Most specific wins: concept+scenario, concept+modality, concept, file+scenario,
        file+modality, then the audit-wide threshold. That last one is one setting with two
        spellings, `--crr-threshold` and the file's top-level `threshold`, and AuditConfig
        resolves it once (command line > concepts file > default, `AuditConfig.sources`), so
        it is passed in rather than looked up here: here the file would silently beat the
        flag."""
        for table in (concept.thresholds, self.thresholds):
            for key in (scenario_id, modality):
                if key in table:
                    return table[key]
            if table is concept.thresholds and concept.threshold is not None:
                return concept.threshold
        return audit_threshold


_CONCEPT_KEYS = {
    "name", "term", "label", "prompts", "detector", "detector_path", "detector_options",
    "erased", "references", "retain", "threshold", "thresholds", "synonyms", "modifiers",
    "attack_floors",
    "paired_prompts", "calibration",
}
_TOP_KEYS = {"defaults", "concept", "neutral_prompts", "threshold", "thresholds",
             "attack_floors"}
_DEFAULT_KEYS = {"detector", "detector_path", "detector_options", "prompts", "threshold",
                 "thresholds", "paired_prompts", "calibration"}


AUDIT_SETTINGS = {"threshold": "crr_threshold"}
"""Top-level keys of a concepts file that set an audit-wide option (its `AuditConfig` field):
the same setting as the flag, resolved with it by one rule (`AuditConfig.from_values`)."""


def audit_settings(path: Path) -> dict[str, tuple[Any, str]]:
    """{AuditConfig field: (value, where)} for what the concepts file at `path` sets of the
    audit-wide options. A file that cannot be read or whose value is bad gives nothing here:
    `load_concepts` reports it, in the order every other problem of the file is reported."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return {field: (_fraction(raw[key], key), f"concepts file {path} ({key})")
                for key, field in AUDIT_SETTINGS.items() if raw.get(key) is not None}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ErasureInputError, TypeError):
        return {}


def load_concepts(path: Path) -> ConceptSet:
    """Read and validate a concepts file; every problem names the file, the key and the fix."""
    where = f"concepts file {path}"
    if not path.is_file():
        raise ErasureInputError(where, "does not exist or is not a file",
                                "pass --concepts a TOML concepts file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ErasureInputError(where, f"is not valid TOML ({exc})", "fix the syntax") from None
    except OSError as exc:
        raise ErasureInputError(where, f"cannot be read ({exc.strerror})",
                                "check the file's permissions") from None
    _unknown(raw, _TOP_KEYS, where)
    defaults = _table(raw.get("defaults", {}), f"{where} [defaults]")
    _unknown(defaults, _DEFAULT_KEYS, f"{where} [defaults]")
    entries = raw.get("concept", [])
    if not isinstance(entries, list) or not entries:
        raise ErasureInputError(where, "declares no [[concept]]",
                                "add at least one [[concept]] table with a name")
    concepts: dict[str, Concept] = {}
    for index, entry in enumerate(entries):
        concept = _concept(_table(entry, f"{where} [[concept]] #{index + 1}"), defaults, path,
                           f"{where} [[concept]] #{index + 1}")
        if concept.name in concepts:
            raise ErasureInputError(f"{where} concept '{concept.name}'", "is declared twice",
                                    "keep one [[concept]] per name")
        concepts[concept.name] = concept
    for concept in concepts.values():
        for name in concept.retain:
            if name not in concepts:
                raise ErasureInputError(
                    f"{where} concept '{concept.name}' retain", f"names unknown concept '{name}'",
                    "declare it as a [[concept]] (erased = false for a neighbour)")
    if not any(c.erased for c in concepts.values()):
        raise ErasureInputError(where, "has no concept with erased = true",
                                "mark the concept(s) the model erased")
    neutral = raw.get("neutral_prompts", ["", "a picture"])
    return ConceptSet(
        path=path,
        concepts=concepts,
        threshold=_fraction(raw.get("threshold"), f"{where} threshold"),
        thresholds=_thresholds(raw.get("thresholds", {}), f"{where} [thresholds]"),
        attack_floors=_thresholds(raw.get("attack_floors", {}), f"{where} [attack_floors]"),
        neutral_prompts=tuple(_strings(neutral, f"{where} neutral_prompts")),
        raw=raw,
    )


def _concept(entry: dict[str, Any], defaults: dict[str, Any], path: Path, where: str) -> Concept:
    _unknown(entry, _CONCEPT_KEYS, where)
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip() or not name.replace("-", "").replace(
            "_", "").isalnum():
        raise ErasureInputError(f"{where} name", f"is {name!r}",
                                "give a name of letters, digits, '-' or '_'")
    where = f"{where} ('{name}')"
    prompts = _strings(entry.get("prompts", defaults.get("prompts")), f"{where} prompts")
    if not prompts:
        raise ErasureInputError(f"{where} prompts", "is empty",
                                f"give prompt templates containing {PLACEHOLDER}")
    for prompt in prompts:
        if PLACEHOLDER not in prompt:
            raise ErasureInputError(f"{where} prompt {prompt!r}", f"lacks {PLACEHOLDER}",
                                    f"write the concept as {PLACEHOLDER} in every template")
    detector_name = entry.get("detector", defaults.get("detector"))
    if not isinstance(detector_name, str):
        raise ErasureInputError(f"{where} detector", "is missing",
                                "name a detector (e.g. detector = \"shapes\")")
    detector_path = entry.get("detector_path", defaults.get("detector_path"))
    options = entry.get("detector_options", defaults.get("detector_options", {}))
    detector = DetectorSpec(
        detector_name,
        _path(detector_path, path, f"{where} detector_path") if detector_path else None,
        dict(_table(options, f"{where} detector_options")),
    )
    references = entry.get("references")
    calibration = entry.get("calibration", defaults.get("calibration"))
    pairs = entry.get("paired_prompts", defaults.get("paired_prompts", []))
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
            for p in pairs):
        raise ErasureInputError(f"{where} paired_prompts", "is not a list of [with, without] pairs",
                                "write paired_prompts = [[\"a {concept}\", \"a thing\"], ...]")
    erased = entry.get("erased", True)
    if not isinstance(erased, bool):
        raise ErasureInputError(f"{where} erased", f"is {erased!r}", "write true or false")
    term = entry.get("term", name)
    label = entry.get("label", name)
    for key, value in (("term", term), ("label", label)):
        if not isinstance(value, str) or not value:
            raise ErasureInputError(f"{where} {key}", f"is {value!r}", "give a non-empty string")
    if calibration is not None:
        calibration = _path(calibration, path, f"{where} calibration")
        _check_calibration(calibration, label, f"{where} calibration")
    return Concept(
        name=name,
        prompts=tuple(prompts),
        term=term,
        label=label,
        detector=detector,
        erased=erased,
        references=_path(references, path, f"{where} references") if references else None,
        calibration=calibration,
        retain=tuple(_strings(entry.get("retain", []), f"{where} retain")),
        threshold=_fraction(entry.get("threshold"), f"{where} threshold"),
        thresholds=_thresholds(entry.get("thresholds", {}), f"{where} thresholds"),
        attack_floors=_thresholds(entry.get("attack_floors", {}), f"{where} attack_floors"),
        synonyms=tuple(_strings(entry.get("synonyms", []), f"{where} synonyms")),
        modifiers=tuple(_strings(entry.get("modifiers", []), f"{where} modifiers")),
        paired_prompts=tuple(
            (a.replace(PLACEHOLDER, term), b.replace(PLACEHOLDER, term)) for a, b in pairs),
    )


def _unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise ErasureInputError(where, f"has unknown key(s) {', '.join(extra)}",
                                f"use only: {', '.join(sorted(known))}")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ErasureInputError(where, f"is {type(value).__name__}, not a table",
                                "write it as a TOML table")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ErasureInputError(where, f"is {value!r}", "give a list of strings")
    return value


def _fraction(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ErasureInputError(where, f"is {value!r}", "give a number between 0 and 1")
    return float(value)


def _thresholds(value: Any, where: str) -> dict[str, float]:
    table = _table(value, where)
    return {key: _fraction(v, f"{where}.{key}") for key, v in table.items()}  # type: ignore[misc]


def _path(value: Any, concepts_file: Path, where: str) -> Path:
    """A declared path: absolute as given; relative against the file, and then, as written
    (`..` collapsed without following symlinks), inside the folder above the file's folder.
    Symlinks are followed after that check (the module docstring says why)."""
    if not isinstance(value, str) or not value:
        raise ErasureInputError(where, f"is {value!r}", "give a path as a string")
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return candidate
    base = concepts_file.resolve().parent
    # A shipped suite may point one level up to the shared fixtures; more is refused.
    root = base.parent
    if not Path(os.path.normpath(base / candidate)).is_relative_to(root):
        raise ErasureInputError(where, f"'{value}' leaves the concepts file's folder tree",
                                "use a path inside it, or an absolute path, or a symlink "
                                f"placed inside it (the tree: {root})")
    return (base / candidate).resolve()


def calibration_labels(folder: Path) -> dict[str, list[Path]]:
    """The labelled images of a calibration folder: {label: its image files, sorted}. Hidden
    entries (`.DS_Store`, `.ipynb_checkpoints`) are skipped; anything else that is not a label
    folder of image files raises, naming the entry."""
    from pytest_erasure.references import IMAGE_SUFFIXES

    where = f"calibration folder {folder}"
    if not folder.is_dir():
        raise ErasureInputError(where, "does not exist or is not a folder",
                                "create it with one subfolder of images per label (circle/, none/, ...)")
    labels: dict[str, list[Path]] = {}
    for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if not entry.is_dir():
            raise ErasureInputError(f"{where}: {entry.name}", "is not a label folder",
                                    "put every image in the subfolder named for its label")
        files = sorted(p for p in entry.iterdir() if not p.name.startswith("."))
        if not files:
            raise ErasureInputError(f"{where}: {entry.name}/", "is empty",
                                    "add PNG/JPEG images of that label, or remove the folder")
        for file in files:
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                raise ErasureInputError(f"{where}: {entry.name}/{file.name}", "is not an image file",
                                        f"keep only images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        labels[entry.name] = files
    return labels


def _check_calibration(folder: Path, label: str, where: str) -> None:
    """Up front, what can be checked without decoding an image: a wrong label or a missing
    negative class would otherwise surface only when the first case measures the detector."""
    try:
        labels = calibration_labels(folder)
    except ErasureInputError as exc:
        raise ErasureInputError(f"{where}: {exc.what}", exc.problem, exc.fix) from None
    if label not in labels:
        raise ErasureInputError(f"{where} {folder}", f"has no folder '{label}/' for label '{label}'",
                                f"add {label}/ with images of it (found: {', '.join(labels) or 'none'})")
    if len(labels) < 2:
        raise ErasureInputError(f"{where} {folder}", f"has no negatives (only '{label}/')",
                                "add folders of images of other labels (e.g. none/)")
