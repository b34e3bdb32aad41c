"""The audit session: the one state object of a run — which cases, run them, hold results.

One session lives on pytest's config (`config.stash`), built on first need from the options
(`AuditConfig.from_pytest`) and checked before any model loads (`preflight.py`,
`outputs.py`). It owns the context scenarios draw on (`context.py`) and runs each case on it
(`checks.py`). Under pytest-xdist each worker has its own session, which `publish`es its results
at the end; the controller `receive`s them from every worker and writes the reports once
(syrupy's pattern). Collection alone never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.concepts import ConceptSet, load_concepts
from pytest_erasure.config import OPTIONS, AuditConfig
from pytest_erasure.context import Context
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import AuditRecord, Case, CaseResult, Rate
from pytest_erasure.scenarios.base import Scenario
from pytest_erasure.scenarios.prompts import MODALITY as PROMPTS

if TYPE_CHECKING:
    import pytest
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.models.loading import LoadedModels

WORKER_KEY = "erasure_results"
"""Where a worker's results travel to the controller in `config.workeroutput` (JSON)."""


class AuditSession:
    """The configuration, the concepts, the context, and every case's result."""

    def __init__(self, config: AuditConfig, concepts: ConceptSet,
                 models: LoadedModels | None = None,
                 scenarios: dict[str, Scenario] | None = None) -> None:
        self.config = config
        self.concepts = concepts
        self.context = Context(config, concepts, models=models, scenarios=scenarios)
        self.results: dict[str, CaseResult] = {}
        self.received: list[CaseResult] = []
        """Results the controller received from xdist workers."""
        self.received_meta: list[dict[str, Any]] = []
        self.run_id = hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:12]
        self.started = _now()
        self.final: AuditRecord | None = None
        """The whole run's record, once `finish` has built it (the terminal summary's input)."""
        self.output_lines: list[str] = []
        """Where the reports went (or why not where asked), for the terminal summary."""
        self.previous: AuditRecord | None = None
        """The audit `--erasure-compare` names (`report.compare`), read and checked up front."""
        self.comparability: dict[str, Any] | None = None
        self.changes: dict[str, Any] = {}
        """Each case run here against the previous audit (`report.compare.CaseChange`)."""

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> AuditSession:
        """The run's session from pytest's options; ErasureInputError on bad input (the
        caller turns it into a usage error where pytest reports it as one)."""
        # Before transformers is imported: its advisory warnings would bury the audit's output.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from pytest_erasure.outputs import check_outputs
        from pytest_erasure.preflight import validate_inputs

        audit = AuditConfig.from_pytest(config)
        session = cls(audit, load_concepts(audit.concepts_file))
        from pytest_erasure.artifacts import replay_scenarios

        session.context.scenarios.update(replay_scenarios(audit))  # --erasure-replay's cases
        validate_inputs(session)
        check_outputs(session, config)
        session.prepare_comparison()
        workerinput = getattr(config, "workerinput", None)
        if workerinput and "erasure_run_id" in workerinput:
            session.run_id = workerinput["erasure_run_id"]
        if not (workerinput or os.environ.get("CI") or not sys.stderr.isatty()):
            session.context.show_progress(config)  # progress bars only for a person
        return session

    # -- cases -------------------------------------------------------------------------------

    def declared(self) -> list[Case]:
        """Every case the concepts file declares for its erased concepts, whatever --scenarios
        selects: what a complete audit runs (a run that leaves one out is PARTIAL)."""
        return self.cases(every_scenario=True)

    def cases(self, every_scenario: bool = False) -> list[Case]:
        """Every case the configuration selects, in a stable order (concept, then scenario)."""
        wanted = set(self.config.scenarios) if self.config.scenarios and not every_scenario \
            else None
        known = set(self.context.scenarios) | {s.modality for s in self.context.scenarios.values()} | {
            "baseline", "retention"}
        if wanted:
            unknown = sorted(wanted - known)
            if unknown:
                raise ErasureInputError(
                    "--scenarios", f"names unknown scenario(s) {', '.join(unknown)}",
                    f"use ids or modalities from: {', '.join(sorted(known))}")

        named = set(self.config.scenarios or ())

        def selected(*names: str | None) -> bool:
            return wanted is None or any(n in wanted for n in names if n)

        out: list[Case] = []
        for concept in self.concepts.erased(self.config.erased_concept):
            if selected("baseline"):
                out.append(Case(f"{concept.name}-baseline", concept.name, "baseline", "baseline",
                                PROMPTS))
            for scenario in self.context.scenarios.values():
                if scenario.opt_in and not (named & {scenario.id, scenario.modality}):
                    continue  # runs (and is declared) only when --scenarios names it
                if selected(scenario.id, scenario.modality):
                    out.append(Case(f"{concept.name}-{scenario.id}", concept.name, scenario.id,
                                    "erasure", scenario.modality, scenario.access))
            if selected("retention"):
                out.extend(Case(f"{concept.name}-retention-{n}", concept.name, "retention",
                                "retention", PROMPTS, neighbour=n) for n in concept.retain)
        return out


    def run(self, case: Case) -> CaseResult:
        from pytest_erasure.checks import run

        result = run(self.context, case)
        if self.previous is not None:  # the regression gate: it only ever adds a failure
            from pytest_erasure.report.compare import apply_regression_gate, change_of

            before = {c.case_id: c for c in self.previous.cases}.get(case.id)
            change = change_of(before, result)
            apply_regression_gate(result, change, self.config.regression_margin,
                                  self.previous.run_id)
            self.changes[case.id] = change
        self.results[case.id] = result
        return result

    # -- the previous audit --------------------------------------------------------------------

    def prepare_comparison(self) -> None:
        """Read and check `--erasure-compare`'s report before anything loads: an incomparable
        one (another detector, detector option or protocol version) is a usage error now."""
        from pytest_erasure.models.identity import comparability_key
        from pytest_erasure.report.compare import check_comparable, check_margin, read_previous

        check_margin(self.config)
        if self.config.compare_file is None:
            return
        previous = read_previous(self.config.compare_file)
        self.comparability = comparability_key(self.config, self.concepts)
        check_comparable(previous, self.comparability, self.config.compare_file)
        self.previous = previous

    def record_error(self, case: Case, error: str) -> None:
        """A case that raised: recorded as a failure with its error, so reports show it."""
        self.results[case.id] = CaseResult(
            case_id=case.id, concept=case.concept, scenario=case.scenario,
            modality=case.modality, access=case.access, kind=case.kind,
            threshold=float("nan"), gate=self.config.gate, passed=False, rate=Rate(0, 0),
            message=error, error=error, verdict="fail", reason=f"error: {error}")

    # -- the record ----------------------------------------------------------------------------

    def record(self, results: list[CaseResult] | None = None) -> AuditRecord:
        ctx = self.context
        if self.comparability is None:
            from pytest_erasure.models.identity import comparability_key

            self.comparability = comparability_key(self.config, self.concepts)
        return AuditRecord(
            run_id=self.run_id, started=self.started, config=self.config.describe(),
            provenance=ctx.identity.provenance if ctx.identity_known else {},
            detectors=ctx.detector_descriptions(), versions=versions(),
            cases=results if results is not None else list(self.results.values()),
            finished=_now(), comparability=self.comparability)

    # -- pytest-xdist: workers publish, the controller receives ---------------------------------

    def publish(self, workeroutput: dict[str, Any]) -> None:
        """On a worker at its end: what it loaded, for the controller. (Each result travels
        with its case's test report instead: a worker that dies never gets here.)"""
        meta = self.record([]).to_dict()
        workeroutput[WORKER_KEY] = json.dumps({
            "record": {k: meta[k] for k in ("provenance", "detectors")}})

    def receive(self, workeroutput: dict[str, Any]) -> None:
        """On the controller: what one worker loaded (the models, not us)."""
        payload = workeroutput.get(WORKER_KEY)
        if payload:
            data = json.loads(payload)
            self.received.extend(CaseResult.from_dict(r) for r in data.get("results", []))
            self.received_meta.append(data["record"])

    def receive_result(self, payload: str) -> None:
        """On the controller: one case's result, carried by its test report (`plugin`), so a
        result is kept the moment its case ends, also when its xdist worker dies later."""
        result = CaseResult.from_dict(json.loads(payload))
        self.received = [r for r in self.received if r.case_id != result.case_id] + [result]

    def finish(self, selected: list[str], interrupted: bool,
               selection: dict[str, Any] | None = None) -> AuditRecord | None:
        """The whole run's record (None when nothing was selected and nothing ran): every
        result, from workers too; incomplete when a selected case has no result (Ctrl-C, -x, a
        crashed xdist worker), partial when a declared case of an erased concept was not
        selected (`selection`: the run's expressions; this adds the declared cases left out).
        Neither ever passes the gate."""
        results = {r.case_id: r for r in self.received}
        results.update(self.results)
        if not results and not selected:
            return None
        record = self.record(sorted(results.values(), key=lambda r: r.case_id))
        missing = [case_id for case_id in selected if case_id not in results]
        if interrupted or missing:
            record.incomplete = {"interrupted": interrupted, "missing": missing}
        chosen = set(selected) | set(results)
        declared = [c.id for c in self.declared()]
        not_run = [case_id for case_id in declared if case_id not in chosen]
        record.selection = {**(selection or {}), "scenarios": list(self.config.scenarios or []),
                            "selected": sorted(chosen),
                            "deselected": [c for c in declared if c not in chosen],
                            "not_run": not_run, "partial": bool(not_run)}
        for meta in self.received_meta:  # models and detectors were loaded on the workers
            record.provenance = record.provenance or meta.get("provenance", {})
            record.detectors = {**meta.get("detectors", {}), **record.detectors}
        statement = eraser_removal(record)
        if statement:
            record.provenance["eraser_removal"] = statement
        if self.previous is not None and self.config.compare_file is not None:
            from pytest_erasure.report.compare import compare

            record.comparison = compare(self.previous, record, self.config.compare_file,
                                        self.config.regression_margin)
        self.final = record
        return record

    def write_outputs(self) -> list[str]:
        """The standalone JUnit and the reports, each where asked or, when that fails at the
        end of an audit that may have run for an hour (disk full, folder gone or made
        read-only), in a fallback folder; never an exception that would hide the summary and
        pytest's JUnit."""
        from pytest_erasure.outputs import fallback_folder, write_or_fall_back
        from pytest_erasure.report.files import write_reports
        from pytest_erasure.report.junit import write_junit

        record, config = self.final, self.config
        assert record is not None
        fallback = fallback_folder(record.run_id)
        lines = []
        if config.junit_file:
            junit = Path(config.junit_file)
            lines.append(write_or_fall_back("standalone JUnit", junit,
                                            lambda path: write_junit(record, path),
                                            fallback / (junit.name or "erasure-junit.xml")))
        if config.report_dir:
            lines.append(write_or_fall_back("reports", Path(config.report_dir),
                                            lambda path: write_reports(record, path), fallback))
        if config.artifacts_dir:
            from pytest_erasure.artifacts import export

            lines.append(write_or_fall_back("attack artifacts", Path(config.artifacts_dir),
                                            lambda path: export(record, config, path),
                                            fallback / "artifacts"))
        self.output_lines = lines
        return lines


def versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("pytest-erasure", "torch", "diffusers", "transformers", "pytest"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def default_config(**overrides: Any) -> AuditConfig:
    """An AuditConfig with every option at its default, then `overrides` (field names)."""
    from pytest_erasure.config import DEFAULT_CONCEPTS, DEFAULT_ERASED, DEFAULT_STANDARD

    values: dict[str, Any] = {o.dest.removeprefix("erasure_"): o.default for o in OPTIONS}
    values.update(erased_model=DEFAULT_ERASED, standard_model=DEFAULT_STANDARD,
                  concepts_file=DEFAULT_CONCEPTS)
    values = {**values, **overrides}
    return AuditConfig.from_values(values)


def context_for_pipelines(standard: StableDiffusionPipeline, erased: StableDiffusionPipeline,
                          concepts_file: Path, cache_dir: Path | None, **overrides: Any
                          ) -> Context:
    """What a scenario sees, over pipelines already in memory (tests, notebooks)."""
    return session_for_pipelines(standard, erased, concepts_file, cache_dir, **overrides).context


def session_for_pipelines(standard: StableDiffusionPipeline, erased: StableDiffusionPipeline,
                          concepts_file: Path, cache_dir: Path | None, **overrides: Any
                          ) -> AuditSession:
    """A session over pipelines already in memory (tests, notebooks): no loading from disk."""
    from pytest_erasure.models.identity import pipeline_fingerprint
    from pytest_erasure.models.loading import LoadedModels

    fingerprints = {role: pipeline_fingerprint(pipe)
                    for role, pipe in (("standard", standard), ("erased", erased))}
    models = LoadedModels(standard=standard, erased=erased,
                          provenance={"standard": {"format": "in-memory"},
                                      "erased": {"format": "in-memory"}},
                          fingerprints=fingerprints)
    config = default_config(concepts_file=concepts_file, cache_dir=cache_dir, **overrides)
    return AuditSession(config, load_concepts(concepts_file), models=models)


def eraser_removal(record: AuditRecord) -> str | None:
    """The threat model of a plug-in eraser (a format that adds a separable module to the
    standard model, `Format.separable`), stated in every report: whoever holds the weights can
    take the module out, and what that access yields is the standard model, whose CRR of each
    erased concept under its own prompts (the baseline) this run measured. A statement, not a
    gated case. None for an eraser that changes the weights in place."""
    from pytest_erasure.models.formats import separable

    erased = record.provenance.get("erased")
    module = separable(erased.get("format")) if isinstance(erased, dict) else ""
    if not module:
        return None
    rates = [f"{c.concept} {c.rate}" for c in record.cases if c.kind == "baseline"]
    rates = rates or [f"{c.concept} {c.standard}" for c in record.cases
                      if c.kind == "erasure" and c.modality == PROMPTS and c.standard]
    yields = ("; ".join(rates) + " (the standard model under the concepts' prompts)"
              if rates else "not measured in this run (run the baseline cases)")
    return (f"eraser removal: the erased model is the standard model plus {module}; with the "
            "weights the eraser can be removed, which yields the standard model: "
            f"CRR {yields}")

