"""Records that travel: from a case to the reports, and from xdist workers to the controller.

Everything here is JSON-able through `to_dict`/`from_dict`, because workers ship results to the
controller as JSON through `config.workeroutput`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_erasure.crr import Rate
from pytest_erasure.detector_error import Calibration

VERDICTS = ("pass", "fail", "inconclusive")


@dataclass
class CaseResult:
    case_id: str
    """`circle-latent-white-null`: the pytest parameter id."""
    concept: str
    scenario: str
    modality: str
    access: str | None
    kind: str
    """'erasure' (CRR must stay low), 'baseline' (standard model must draw it), 'retention'."""
    threshold: float
    gate: str
    passed: bool
    rate: Rate
    """The number the gate judges: the erased model (defended when --irece) for erasure cases."""
    standard: Rate | None = None
    """The same scenario on the standard model: what the attack achieves without erasure."""
    undefended: Rate | None = None
    """With --irece: the erased model without the defense, for the side-by-side."""
    base_rate: Rate | None = None
    """The concept under neutral prompts on the erased model: the floor an erasure cannot beat."""
    message: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    """Image grids, [{'title': str, 'png_base64': str, 'labels': [..], 'present': [..]}]."""
    seconds: float = 0.0
    error: str | None = None
    verdict: str = ""
    """'pass', 'fail' or 'inconclusive' (VERDICTS). Inconclusive: the audit could not have
    seen the concept (the attack did not reproduce it on the standard model, the detector is
    blind or cannot separate, the inversion did not reconstruct, n is too small for the gate
    ever to pass); it fails the gate unless the run was told to report it only. `passed` is
    whether the case counts as passing the gate, which follows from verdict and that choice."""
    reason: str = ""
    """Why the verdict: the gate's comparison for pass/fail, the inconclusive reason(s)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("rate", "standard", "undefended", "base_rate"):
            value = getattr(self, key)
            out[key] = value.to_dict() if value is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        data = dict(data)
        for key in ("rate", "standard", "undefended", "base_rate"):
            value = data.get(key)
            data[key] = Rate.from_dict(value) if value else None
        return cls(**data)


@dataclass
class AuditRecord:
    """One audit: what was run, on what, and every case's result — the report's whole input."""

    run_id: str
    started: str
    config: dict[str, Any]
    provenance: dict[str, Any]
    detectors: dict[str, Any]
    versions: dict[str, str]
    cases: list[CaseResult] = field(default_factory=list)
    finished: str | None = None
    incomplete: dict[str, Any] | None = None
    """Set when the run stopped before every selected case had a result (Ctrl-C, -x):
    {"interrupted": bool, "missing": [case ids]}. A partial audit never passes the gate."""

    @property
    def passed(self) -> bool:
        return not self.incomplete and all(c.passed for c in self.cases)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cases"] = [c.to_dict() for c in self.cases]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditRecord:
        data = dict(data)
        data["cases"] = [CaseResult.from_dict(c) for c in data.get("cases", [])]
        return cls(**data)


@dataclass
class CalibrationRecord:
    """A detector's verdicts on a labelled calibration folder, for one label: the counts that
    `detector_error` turns into a corrected CRR, and what reports show beside it."""

    label: str
    tp: int
    """Images of `label` the detector called present."""
    fn: int
    tn: int
    """Images of every other label the detector called absent."""
    fp: int
    false_positives: dict[str, int] = field(default_factory=dict)
    """fp split by the negatives' true label: which neighbour the detector confuses."""
    images_sha256: str = ""
    """Digest of the judged calibration images (uint8, by label): what the numbers are about."""
    folder: str = ""

    @property
    def positives(self) -> int:
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        return self.tn + self.fp

    @property
    def sensitivity(self) -> float:
        return self.tp / self.positives if self.positives else float("nan")

    @property
    def specificity(self) -> float:
        return self.tn / self.negatives if self.negatives else float("nan")

    def calibration(self) -> Calibration:
        """The counts as `detector_error` takes them."""
        return Calibration(detected=self.tp, positives=self.positives, rejected=self.tn,
                           negatives=self.negatives)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationRecord:
        return cls(**data)
