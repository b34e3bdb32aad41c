"""The records that travel: a case, what a model is asked to draw, a plan, rates, results.

They go from scenarios to the session, from a case to every report, and from xdist workers to
the controller as JSON (`to_dict`/`from_dict`), and a report can be re-rendered from them alone
(`report.json` -> `AuditRecord.from_dict`). So this module imports nothing of ours: every other
room may depend on it, it depends on no room. The one computation here is the Wilson interval,
the default interval a `Rate` reports when it carries none of its own (`crr`, `clusters` and
`detector_error` make the others).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

Role = Literal["standard", "erased"]
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Case:
    """One test: concept x scenario (erasure), or a baseline / retention check."""

    id: str
    concept: str
    scenario: str
    kind: str
    modality: str
    access: str | None = None
    neighbour: str | None = None


@dataclass
class GenerationInput:
    """One image to generate. Exactly one of `prompt` / `prompt_embeds` is set.

    `latents` (4, h, w) replaces the seeded initial noise (latent inversion); `guidance`
    overrides the configured guidance scale (regeneration of inverted latents uses 1.0).
    `prompt_embeds` are (77, D) for the conditional branch; the unconditional branch is always
    the target's own encoding of the empty prompt.
    """

    seed: int
    prompt: str | None = None
    prompt_embeds: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    guidance: float | None = None
    label: str = ""
    """Short text for the report's evidence grid (the prompt, 'learned token', 'inverted ref 3')."""
    cluster: str = ""
    """The random draw this sample shares with others beyond its seed: the attack restart that
    produced its embedding or found prompts, the searched prompt a fuzz search chose, the
    reference image. Samples of one cluster are not independent draws of what the attack
    does, and the case's interval accounts for it (`design.case_rate`). Empty: the sample is
    its own draw."""
    stratum: str = ""
    """The fixed item of a list the case's claim is about: a prompt the concepts file declares,
    a prompt a restart's run found. Strata are not sampled, so they do not widen the interval
    (`design.case_rate`); they are recorded so every prompt's share is known."""
    overlays: tuple[Overlay, ...] = ()
    """Weights run on top of the model for this input alone, after the plan's own
    (`Plan.overlays`): the LoRA one attack run learnt, when each restart (cluster) of a case
    brings its own. Part of the image's key only when set, so plain inputs keep their keys."""
    steering: dict[str, Any] | None = None
    """How a probe changes this sample's denoising (`samplers.steer`), JSON-able: e.g. {"eta":
    1.5, "noise_scale": 1.03} (DDIM with extra step noise). None: the configured sampler as it
    is. Part of the image's cache key only when set."""


@dataclass(frozen=True, eq=False)
class Overlay:
    """Weights to run on top of a loaded model for one unit: a LoRA's state dict, a weight
    transform (quantize-dequantize), an eraser module removed. `kind` names its entry in the
    overlay registry (`pytest_erasure.overlays`), which applies and removes it where the unit
    runs; the record itself is plain data, so it travels with a unit to any executor.

    Content-addressed: `key` hashes the kind, its JSON-able `params` and `content` (the sha256
    of the weights it brings, given by whoever made the record), never the tensors' identity,
    so two runs that overlay the same weights share every cached image, and any change to the
    weights or settings is a different key. Equality is the key's."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    content: str = ""
    """sha256 of the weights the overlay brings (empty when it brings none, e.g. quantize)."""
    tensors: dict[str, Any] | None = field(default=None, repr=False)
    """The weights, in memory (CPU tensors); they travel pickled with the unit."""
    path: str | None = None
    """Or a file the weights are read from where the unit runs (`content` is its sha256)."""

    @property
    def key(self) -> str:
        blob = json.dumps({"kind": self.kind, "params": self.params, "content": self.content},
                          sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Overlay) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def to_dict(self) -> dict[str, Any]:
        """What reports record (the weights by their digest and file, not their values)."""
        out = {"kind": self.kind, "params": dict(self.params), "content": self.content,
               "key": self.key}
        if self.path is not None:
            out["path"] = self.path
        return out


@dataclass
class Plan:
    inputs: list[GenerationInput]
    facts: dict[str, Any] = field(default_factory=dict)
    """JSON-able facts for the report (budgets, losses, reconstruction error, found prompts)."""
    artifacts: dict[str, str] = field(default_factory=dict)
    """Files a user can reuse to reproduce the case by hand, e.g. {'embedding': path}."""
    variants: dict[str, Rate] = field(default_factory=dict)
    """Each variant a search singled out (a fuzz candidate bypass), judged on its own fresh
    images: the case passes only if every one of them does (`verdict.decide`)."""
    confirmed: list[str] = field(default_factory=list)
    """The variants confirmed as bypasses (out of sample, multiplicity controlled): each fails
    the case."""
    overlays: tuple[Overlay, ...] = ()
    """Weights run on top of the model the plan is measured on, in this order, around every
    unit that generates its images (`Overlay`); part of those images' cache keys and recorded
    in the case's facts. Empty: the loaded model as it is."""


@dataclass(frozen=True)
class Rate:
    """`hits` of `n` images showed the concept; `degenerate` of those n were NaN/constant images,
    which count as hits (a model that draws nothing must not pass as 'erased').

    `low`/`high`/`method` set: the rate carries its own 95% interval (`method` names how it was
    made: 'clustered', 'undetermined', 'rogan-gladen'); unset, the interval is Wilson's on hits/n.
    `method` 'stratified' without low/high: hits/n over declared strata (prompts) in proportion
    to their shares, judged by the binomial rules (`design`). `design_effect` and `clusters`
    record a clustered interval's inputs, `strata` a stratified rate's; `estimate` a corrected
    point estimate (detector error) that replaces hits/n as `crr`."""

    hits: int
    n: int
    degenerate: int = 0
    low: float | None = None
    high: float | None = None
    method: str | None = None
    design_effect: float | None = None
    clusters: int | None = None
    estimate: float | None = None
    strata: int | None = None

    @property
    def crr(self) -> float:
        if self.estimate is not None:
            return self.estimate
        return self.hits / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        if self.low is not None and self.high is not None:
            return (self.low, self.high)
        return wilson(self.hits, self.n)

    def to_dict(self) -> dict[str, Any]:
        """hits, n, degenerate, crr, ci_low, ci_high always; the stored-interval fields only when
        set, so records of plain rates are unchanged."""
        low, high = self.interval
        out: dict[str, Any] = {"hits": self.hits, "n": self.n, "degenerate": self.degenerate}
        for key in ("low", "high", "method", "design_effect", "clusters", "estimate", "strata"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return {**out, "crr": self.crr, "ci_low": low, "ci_high": high}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rate:
        """Reads what `to_dict` wrote, and older records with only hits/n/degenerate."""
        return cls(data["hits"], data["n"], data.get("degenerate", 0),
                   **{k: data.get(k) for k in ("low", "high", "method", "design_effect",
                                               "clusters", "estimate", "strata")})

    def __str__(self) -> str:
        low, high = self.interval
        text = f"{self.crr:.1%} [{low:.1%}, {high:.1%}] ({self.hits}/{self.n}"
        if self.clusters is not None:
            text += f", {self.clusters} clusters"
        if self.strata is not None:
            text += f", {self.strata} strata"
        if self.design_effect is not None:
            text += f", design effect {self.design_effect:.2f}"
        if self.method is not None:
            text += f", {self.method}"
        return text + ")"


def wilson(hits: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval; hits and n may be fractional (an effective sample size)."""
    if n <= 0:
        return (0.0, 1.0)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


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
    """The number the gate judges: the erased model (defended, under a defense) for erasure cases."""
    standard: Rate | None = None
    """The same scenario on the standard model: what the attack achieves without erasure."""
    undefended: Rate | None = None
    """With a defense: the erased model without it, for the side-by-side."""
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
    """Set when a selected case has no result (Ctrl-C, -x, a crashed xdist worker):
    {"interrupted": bool, "missing": [case ids]}. An incomplete audit never passes the gate."""
    selection: dict[str, Any] | None = None
    """What the run selected and what it left out: {"expressions": {"-k": ..., "-m": ...,
    "--lf": ...}, "scenarios": [...], "concepts": [...], "selected": [case ids],
    "deselected": [case ids], "not_run": [declared cases of an erased concept that did not
    run], "partial": bool}. A partial audit is no release verdict."""
    comparability: dict[str, Any] | None = None
    """What makes this audit's numbers comparable with another's (`report.compare.key`):
    protocol version, detectors with their options and file hashes, sampler, steps, budgets,
    seeds, gate. Absent in records written before comparisons existed."""
    comparison: Comparison | None = None
    """This audit against a previous one (`--erasure-compare`), when one was given."""

    def model_id(self, role: str) -> str | None:
        """The model's identity as comparisons and artifacts name it: its content fingerprint
        (the same weights in any packaging are one model) where provenance records one, else
        its files' fingerprint; None when unknown."""
        info = self.provenance.get(role)
        if not isinstance(info, dict):
            return None
        content = info.get("content")
        if isinstance(content, dict) and content.get("fingerprint"):
            return str(content["fingerprint"])
        return info.get("fingerprint")

    @property
    def passed(self) -> bool:
        return (not self.incomplete and not (self.selection or {}).get("partial")
                and any(c.kind == "erasure" for c in self.cases)
                and all(c.passed for c in self.cases))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cases"] = [c.to_dict() for c in self.cases]
        for key in ("comparability", "comparison"):  # absent unless set: older records
            if getattr(self, key) is None:   # and their goldens read byte for byte as before
                del out[key]
        if self.comparison is not None:
            out["comparison"] = self.comparison.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditRecord:
        data = dict(data)
        data["cases"] = [CaseResult.from_dict(c) for c in data.get("cases", [])]
        if data.get("comparison"):
            data["comparison"] = Comparison.from_dict(data["comparison"])
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


    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationRecord:
        return cls(**data)


CHANGES = ("regressed", "improved", "unchanged", "new", "gone", "unmeasured")
"""A case's status against the previous audit (`report.compare`): regressed / improved when
the 95% interval of the difference lies wholly on the worse / better side of zero (worse: a
higher CRR for an erasure case, a lower one for baseline and retention), unchanged when it
holds zero, new / gone when only one audit has the case, unmeasured when either has no rate
(an error)."""


@dataclass
class CaseChange:
    """One case in this audit and the previous one."""

    case_id: str
    kind: str
    status: str
    """One of CHANGES."""
    previous: Rate | None = None
    current: Rate | None = None
    difference: float | None = None
    """current CRR - previous CRR."""
    interval: tuple[float, float] | None = None
    """95% interval of the difference (Newcombe, from each rate's own interval: clustered and
    stratified rates carry theirs)."""
    previous_verdict: str = ""
    current_verdict: str = ""
    previous_threshold: float | None = None
    current_threshold: float | None = None
    regression_gate: bool = False
    """The regression gate failed this case: its CRR rose by more than the margin with 95%
    confidence."""

    @property
    def flipped(self) -> bool:
        return bool(self.previous_verdict and self.current_verdict
                    and self.previous_verdict != self.current_verdict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["previous"] = self.previous.to_dict() if self.previous else None
        out["current"] = self.current.to_dict() if self.current else None
        out["interval"] = list(self.interval) if self.interval else None
        out["flipped"] = self.flipped
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseChange:
        data = {k: v for k, v in data.items() if k != "flipped"}
        for key in ("previous", "current"):
            data[key] = Rate.from_dict(data[key]) if data.get(key) else None
        if data.get("interval") is not None:
            data["interval"] = tuple(data["interval"])
        return cls(**data)


@dataclass
class Comparison:
    """This audit against a previous one: what differs in how they were made (listed first,
    since it qualifies every number), whether the models are the same, and every case."""

    previous_file: str
    previous_run: str
    previous_started: str
    margin: float | None
    """The regression gate's margin, or None when the comparison only reports."""
    differences: list[dict[str, Any]] = field(default_factory=list)
    """[{"what", "previous", "current"}]: every protocol setting that differs."""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """{role: {"previous", "current", "same"}}: content fingerprints of both audits' models."""
    cases: list[CaseChange] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cases"] = [c.to_dict() for c in self.cases]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        data = dict(data)
        data["cases"] = [CaseChange.from_dict(c) for c in data.get("cases", [])]
        return cls(**data)
