"""Everything that can be checked before any model loads, so bad input costs a usage error in a
second, not a crash an hour in: the device, the erased model's format, the scenarios asked for,
the defense's settings, every selected scenario's budget, every detector a case will ask for (its
module imports, its factory exists, its folder holds what it needs; no weights are read), and
every reference folder. Output destinations are `outputs.py`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_erasure.context import detector_share_key
from pytest_erasure.detectors.base import DetectorSpec, check_detector
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.references import load_reference_images

if TYPE_CHECKING:
    from pytest_erasure.session import AuditSession


def validate_inputs(session: AuditSession) -> None:
    """Everything that can be checked before any model is loaded, so bad input costs a usage
    error in a second, not a crash an hour in."""
    from pytest_erasure.executors import devices_elsewhere
    from pytest_erasure.models.formats import detect_format
    from pytest_erasure.models.loading import check_device

    config = session.config
    # The dtype always; the device here only where units run here (a Ray cluster's GPUs are
    # counted by the executor's own check, and the driver then needs none).
    check_device("cpu" if devices_elsewhere(config) else config.device, config.dtype)
    if config.erased_format is None:  # a named one is checked by AuditConfig.validate
        detect_format(config.erased_model)
    cases = session.cases()  # unknown --scenarios
    if config.corrected:  # gating a raw rate while the flag says corrected would mislead
        uncalibrated = sorted({c.concept for c in cases if c.kind == "erasure"
                               and session.concepts.concepts[c.concept].calibration is None})
        if uncalibrated:
            raise ErasureInputError(
                "--erasure-corrected", f"asks for corrected CRRs, but concept(s) "
                f"{', '.join(uncalibrated)} declare no calibration folder",
                "add `calibration = \"FOLDER\"` (one subfolder of labelled images per detector "
                "label) to the concepts file, or drop --erasure-corrected")
    from pytest_erasure.executors import check as check_executor

    check_executor(config)  # its extra installed, its cluster reachable and big enough
    config.validate_defenses()  # the defense fits these steps and this model (ran up front too)
    for scenario_id in dict.fromkeys(c.scenario for c in cases if c.kind == "erasure"):
        check = getattr(session.context.scenarios[scenario_id], "validate", None)
        if callable(check):
            check(session.context)  # every budget's range, before the first case needs it
        declared = getattr(session.context.scenarios[scenario_id], "declared_overlays", None)
        if callable(declared):  # an overlay made for another architecture, from its files
            from pytest_erasure.overlays import check_fit

            check_fit(declared(session.context), config.standard_model)
    # Every detector a case will ask for, with the labels it will be asked about: the module
    # imports, the factory exists, its folder holds what it needs (no weights are read).
    judged: dict[str, tuple[DetectorSpec, set[str]]] = {}
    for case in cases:
        for name in (case.concept, case.neighbour):
            if name:
                concept = session.concepts.concepts[name]
                spec, labels = judged.setdefault(detector_share_key(concept), (concept.detector, set()))
                labels.add(concept.label)
    for spec, labels in judged.values():
        check_detector(spec, sorted(labels))
    # The reference images of every concept a selected scenario reads them for (each scenario
    # says whether it does: `Scenario.needs_references`).
    scenarios = session.context.scenarios
    readers = dict.fromkeys(c.concept for c in cases if c.kind == "erasure"
                            and scenarios[c.scenario].needs_references)
    for name in readers:
        concept = session.concepts.concepts[name]
        if concept.references is not None:
            load_reference_images(concept, (8, 8))  # readable, same size; cheap at 8x8
