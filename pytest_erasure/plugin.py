"""pytest hooks: options and ini twins, markers, parametrization, summary, reports.

Only hooks live here; the work is in `session.py` and `report/`. Importing this module must not
import torch or diffusers: pytest loads it on every run, also runs that audit nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_erasure.budgets import help_note
from pytest_erasure.config import DEFAULT_CONCEPTS, DEFAULT_ERASED, DEFAULT_STANDARD, OPTIONS, AuditConfig
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.results import CaseResult
from pytest_erasure.scenarios.base import ScenarioOption, iter_options, registry

CASE_FIXTURE = "erasure_case"
WORKER_KEY = "erasure_results"


def _scenario_dest(option: ScenarioOption) -> str:
    return "erasure_opt_" + option.name.replace("-", "_")


class ErasureState:
    """Per-run state on `config.stash`: the session (built on first need) and merged results."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._session: Any = None
        self.error: ErasureInputError | None = None
        self.worker_results: list[CaseResult] = []
        self.worker_meta: list[dict[str, Any]] = []
        self.record: Any = None
        self.output_lines: list[str] = []
        """Where the reports went (or why not where asked), for the terminal summary."""

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def audit_config(self) -> AuditConfig:
        values: dict[str, Any] = {}
        for option in OPTIONS:
            value = self.config.getoption(option.dest)
            if value is None:
                ini = self.config.getini(option.dest)
                value = ini if ini not in (None, "", []) else option.default
            values[option.field] = value
        root = Path(self.config.rootpath)
        values["erased_model"] = _rooted(values["erased_model"], root) or DEFAULT_ERASED
        values["standard_model"] = _rooted(values["standard_model"], root) or DEFAULT_STANDARD
        values["concepts_file"] = _rooted(values["concepts_file"], root) or DEFAULT_CONCEPTS
        if values["cache_dir"] is None and not values["no_cache"]:
            values["cache_dir"] = self._default_cache(root)
        # What the user gave (flag, else ini); AuditConfig fills the rest from the budget
        # profile, then from the options' defaults (pytest_erasure/budgets.py).
        given: dict[str, Any] = {}
        defaults: dict[str, Any] = {}
        for option in iter_options(registry()):
            defaults[option.name] = option.default
            value = self.config.getoption(_scenario_dest(option))
            if value is None:
                ini = self.config.getini(_scenario_dest(option))
                if ini in (None, "", []):
                    continue
                value = ini
            given[option.name] = _scenario_value(option, value)
        values["scenario_options"] = given
        values["scenario_defaults"] = defaults
        config = AuditConfig.from_values(values)
        config.validate()
        return config

    def _default_cache(self, root: Path) -> Path:
        """.pytest_cache/d/erasure, created now: a folder pytest cannot create is the user's
        to fix (or to avoid with --erasure-cache / --no-erasure-cache), not a traceback."""
        cache = getattr(self.config, "cache", None)
        try:
            return Path(cache.mkdir("erasure")) if cache is not None else root / ".erasure_cache"
        except OSError as exc:
            raise ErasureInputError(
                "default erasure cache folder (.pytest_cache/d/erasure)",
                f"cannot be created ({exc.strerror or exc})",
                "pass --erasure-cache=DIR on a writable disk, or --no-erasure-cache") from None

    def session(self) -> Any:
        """The audit session; ErasureInputError on bad input (the caller turns it into a usage
        error at a point where pytest reports it as one)."""
        if self._session is None:
            # Before transformers is imported: its advisory warnings would bury the audit's output.
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            from pytest_erasure.concepts import load_concepts
            from pytest_erasure.session import AuditSession, validate_inputs

            audit_config = self.audit_config()
            concepts = load_concepts(audit_config.concepts_file)
            session = AuditSession(audit_config, concepts)
            validate_inputs(session)
            self._check_outputs(session)
            workerinput = getattr(self.config, "workerinput", None)
            if workerinput and "erasure_run_id" in workerinput:
                session.run_id = workerinput["erasure_run_id"]
            self._setup_output(session)
            self._session = session
        return self._session

    def _check_outputs(self, session: Any) -> None:
        """Every place the run writes is writable and has room, before any model loads."""
        from pytest_erasure.config import model_geometry
        from pytest_erasure.outputs import check_destinations, destinations

        config = session.config
        native = model_geometry(config.standard_model).native_size or 512
        size = (config.height or native, config.width or native)
        xmlpath = getattr(self.config.option, "xmlpath", None)
        junitxml = Path(os.path.abspath(xmlpath)) if xmlpath and not self.is_worker else None
        check_destinations(destinations(session, size, junitxml))

    def _setup_output(self, session: Any) -> None:
        if self.is_worker or os.environ.get("CI") or not sys.stderr.isatty():
            return  # progress bars only for a person at a terminal
        from rich.console import Console

        session.console = Console(stderr=True)
        capman = self.config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            session.uncaptured = capman.global_and_fixture_disabled


STATE = pytest.StashKey[ErasureState]()


def _rooted(value: Any, root: Path) -> Path | None:
    if value in (None, ""):
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path)


def _scenario_value(option: ScenarioOption, value: Any) -> Any:
    """A scenario option from the command line or ini (text) as its type; bad text is a usage
    error naming the option, not argparse's multi-line complaint or a ValueError."""
    if value is None or option.type is str or isinstance(value, option.type):
        return value
    if option.type is bool:
        return str(value).strip().lower() in ("1", "true", "yes", "on")
    kind = {int: "whole number", float: "number"}.get(option.type, option.type.__name__)
    try:
        converted = option.type(value)
    except (TypeError, ValueError):
        raise ErasureInputError(f"--{option.name}", f"'{value}' is not a {kind}",
                                f"give a {kind}") from None
    if isinstance(converted, float) and not math.isfinite(converted):
        raise ErasureInputError(f"--{option.name}", f"is {value}", "give a finite number")
    return converted


def _explicit(config: pytest.Config) -> bool:
    """Did the user set any erasure option? Then bad input is reported before collection."""
    return any(config.getoption(o.dest) not in (None, False) for o in OPTIONS) or any(
        config.getoption(_scenario_dest(o)) is not None for o in iter_options(registry()))


# -- options -----------------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("erasure", "concept-erasure audit (pytest-erasure)")
    for option in OPTIONS:
        # argparse %-formats help strings.
        kwargs: dict[str, Any] = {"dest": option.dest, "default": None,
                                  "help": option.help.replace("%", "%%")}
        if option.action:
            kwargs["action"] = option.action
        # Values stay text here and are converted in AuditConfig.from_values: a bad number is
        # then one usage-error line naming the option, as for every other bad input.
        group.addoption(option.flag, **kwargs)
        parser.addini(option.dest, f"{option.help} (ini twin of {option.flag})", default=None)
    for option in iter_options(registry()):
        group.addoption(f"--{option.name}", dest=_scenario_dest(option), default=None,
                        help=f"{option.help} {help_note(option.name, option.default)}"
                        .replace("%", "%%"))
        parser.addini(_scenario_dest(option), f"{option.help} (ini twin of --{option.name})",
                      default=None)


def pytest_configure(config: pytest.Config) -> None:
    for marker in ("concept(name): the concept a case audits",
                   "modality(name): how the concept is fed (text, embedding, latent, ...)",
                   "access(name): white-box, black-box or none",
                   "erasure: a concept-erasure audit case"):
        config.addinivalue_line("markers", marker)
    state = ErasureState(config)
    config.stash[STATE] = state
    allow_hub = config.getoption("erasure_allow_hub") or str(
        config.getini("erasure_allow_hub")).lower() in ("1", "true", "yes")
    if not allow_hub:
        # Never reach a model hub unless the user opts in: weights come from local paths only.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    device = config.getoption("erasure_device") or config.getini("erasure_device") or "cpu"
    try:
        if state.is_worker:
            from pytest_erasure.devices import pin_worker

            pin_worker(config.workerinput["workerid"], str(device))  # type: ignore[attr-defined]
        else:
            from pytest_erasure.devices import check_worker_count

            workers = getattr(config.option, "numprocesses", None)
            check_worker_count(workers if isinstance(workers, int) else 0, str(device))
            if _explicit(config):
                state.session()
    except ErasureInputError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(state), "erasure-xdist")
    config.pluginmanager.register(JunitFailureTypes(config), "erasure-junit-types")


# -- collection ----------------------------------------------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if CASE_FIXTURE not in metafunc.fixturenames:
        return
    state = metafunc.config.stash[STATE]
    try:
        cases = state.session().cases()
    except ErasureInputError as exc:
        state.error = exc  # raised as a usage error once collection ends
        cases = []
    params = []
    for case in cases:
        marks = [pytest.mark.erasure, pytest.mark.concept(case.concept),
                 pytest.mark.modality(case.modality), pytest.mark.access(case.access or "none"),
                 # with --dist loadgroup one worker takes a concept: its attacks and caches
                 pytest.mark.xdist_group(case.concept)]
        params.append(pytest.param(case, id=case.id, marks=marks))
    metafunc.parametrize(CASE_FIXTURE, params)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    state = config.stash[STATE]
    if state.error is not None:
        raise pytest.UsageError(str(state.error))
    erasure_items = [i for i in items if CASE_FIXTURE in getattr(i, "fixturenames", ())]
    if erasure_items and not config.option.collectonly and state._session is not None:
        try:
            # Identify the models now: a bad model is one usage error, not a failure per case.
            # That loads them, unless a successful load of these very files is on record in
            # the cache (then they load on the first cache miss, if any).
            _ = state.session().identity
        except ErasureInputError as exc:
            raise pytest.UsageError(str(exc)) from None


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def erasure_session(pytestconfig: pytest.Config) -> Any:
    """The audit session: configuration, concepts, models, cache, results."""
    try:
        return pytestconfig.stash[STATE].session()
    except ErasureInputError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def standard_model(erasure_session: Any) -> Any:
    """The standard (un-erased) StableDiffusionPipeline."""
    return erasure_session.pipeline("standard")


@pytest.fixture(scope="session")
def erased_model(erasure_session: Any) -> Any:
    """The erased StableDiffusionPipeline under audit (not wrapped by IRECE)."""
    return erasure_session.pipeline("erased")


@pytest.fixture
def erasure_check(erasure_session: Any, request: pytest.FixtureRequest) -> Callable[[Any], CaseResult]:
    """Run a case, record its numbers as JUnit properties, and fail the test if the gate fails."""

    def check(case: Any) -> CaseResult:
        try:
            result = erasure_session.run(case)
        except ErasureInputError as exc:
            _record_error(erasure_session, case, str(exc))
            pytest.fail(f"usage error: {exc}", pytrace=False)
        except Exception as exc:
            _record_error(erasure_session, case, f"{type(exc).__name__}: {exc}")
            raise
        for key, value in _properties(result).items():
            request.node.user_properties.append((key, value))
        if not result.passed:
            pytest.fail(_fail_message(result), pytrace=False)
        return result

    return check


def _record_error(session: Any, case: Any, error: str) -> None:
    from pytest_erasure.crr import Rate

    session.results[case.id] = CaseResult(
        case_id=case.id, concept=case.concept, scenario=case.scenario, modality=case.modality,
        access=case.access, kind=case.kind, threshold=float("nan"), gate=session.config.gate,
        passed=False, rate=Rate(0, 0), message=error, error=error)


def _fail_message(result: CaseResult) -> str:
    """An inconclusive case fails as 'INCONCLUSIVE: <reason>' (the gate's numbers decide nothing
    there), so no CI reader takes it for a measured regression; a failed one with its message."""
    from pytest_erasure.report.text import reason_of, verdict_of

    if verdict_of(result) == "inconclusive":
        return f"INCONCLUSIVE: {reason_of(result)}"
    return result.message or f"FAIL: {reason_of(result)}"


class JunitFailureTypes:
    """Gives the <failure> pytest's --junitxml writes for an erasure case a type that says which
    verdict failed it: `erasure.Inconclusive` or `erasure.CRRGate`. LogXML writes only a message
    (pytest 9, `_NodeReporter.append_failure`), so this runs after it (trylast) on the same call
    report and sets the attribute on the node it just appended. A case is recognised by its
    `verdict` property (`_properties`); other failures (usage errors, exceptions) keep pytest's
    plain <failure>."""

    TYPES = {"inconclusive": "erasure.Inconclusive", "fail": "erasure.CRRGate"}

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from _pytest.junitxml import xml_key

        xml = self.config.stash.get(xml_key, None)
        verdict = dict(report.user_properties).get("verdict")
        if xml is None or report.when != "call" or not report.failed or verdict not in self.TYPES:
            return
        if (report.nodeid, getattr(report, "node", None)) not in xml.node_reporters:
            return
        failures = [n for n in xml.node_reporter(report).nodes if n.tag == "failure"]
        if failures:
            failures[-1].set("type", self.TYPES[str(verdict)])


def _properties(result: CaseResult) -> dict[str, Any]:
    from pytest_erasure.report.text import reason_of, verdict_of

    low, high = result.rate.interval
    props: dict[str, Any] = {
        "verdict": verdict_of(result), "reason": reason_of(result),
        "concept": result.concept, "scenario": result.scenario, "kind": result.kind,
        "crr": round(result.rate.crr, 6), "ci_low": round(low, 6), "ci_high": round(high, 6),
        "n": result.rate.n, "threshold": result.threshold, "gate": result.gate,
        "degenerate": result.rate.degenerate,
    }
    for name in ("standard", "undefended", "base_rate"):
        rate = getattr(result, name)
        if rate is not None:
            props[f"{name}_crr"] = round(rate.crr, 6)
    return props


# -- reporting -----------------------------------------------------------------------------------

def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(STATE, None)
    if state is None or state._session is None:
        return None
    c = state._session.config
    return [f"erasure: erased={c.erased_model} standard={c.standard_model} concepts="
            f"{c.concepts_file} gate={c.gate} samples={c.samples} device={c.device}/{c.dtype}"
            + (f" irece(t*={c.irece_t_star}, tau={c.irece_tau})" if c.irece else "")]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None or state._session is None:
        return
    audit = state._session
    if state.is_worker:
        session.config.workeroutput[WORKER_KEY] = json.dumps({  # type: ignore[attr-defined]
            "results": [r.to_dict() for r in audit.results.values()],
            "record": _meta(audit.record([]).to_dict()),
        })
        return
    results = {r.case_id: r for r in state.worker_results}
    results.update(audit.results)
    if not results:
        return
    record = audit.record(sorted(results.values(), key=lambda r: r.case_id))
    # Ctrl-C or -x: the finished cases are reported, and the report says it is partial.
    selected = [item.callspec.params[CASE_FIXTURE].id for item in session.items
                if CASE_FIXTURE in getattr(getattr(item, "callspec", None), "params", {})]
    missing = [case_id for case_id in selected if case_id not in results]
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    if interrupted or missing:
        record.incomplete = {"interrupted": interrupted, "missing": missing}
    for meta in state.worker_meta:  # models and detectors were loaded on the workers
        record.provenance = record.provenance or meta.get("provenance", {})
        record.detectors = {**meta.get("detectors", {}), **record.detectors}
    state.record = record
    _junit_suite_properties(session.config, record)
    state.output_lines = _write_outputs(record, audit.config)
    if any(line.endswith(" instead") or "NOT WRITTEN" in line for line in state.output_lines):
        from _pytest.junitxml import xml_key

        xml = session.config.stash.get(xml_key, None)
        if xml is not None:  # CI reads where the reports went from pytest's own JUnit too
            xml.add_global_property("erasure_outputs", " | ".join(state.output_lines))


def _write_outputs(record: Any, config: AuditConfig) -> list[str]:
    """The standalone JUnit and the reports, each where asked or, when that fails at the end
    of an audit that may have run for an hour (disk full, folder gone or made read-only), in
    a fallback folder; never an exception that would hide the summary and pytest's JUnit."""
    from pytest_erasure.outputs import fallback_folder, write_or_fall_back
    from pytest_erasure.report.files import write_reports
    from pytest_erasure.report.junit import write_junit

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
    return lines


def _meta(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("provenance", "detectors")}


def _junit_suite_properties(config: pytest.Config, record: Any) -> None:
    """Suite facts in pytest's own --junitxml, written once, from the controller."""
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    if xml is None:
        return
    xml.add_global_property("erasure_run_id", record.run_id)
    xml.add_global_property("erasure_verdict", "passed" if record.passed else "failed")
    for role, info in sorted(record.provenance.items()):
        if isinstance(info, dict):
            xml.add_global_property(f"erasure_{role}_model",
                                    json.dumps(info, sort_keys=True, default=str))
    for name, value in sorted(record.versions.items()):
        xml.add_global_property(f"version_{name}", value)
    xml.add_global_property("erasure_config", json.dumps(record.config, sort_keys=True, default=str))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or state.record is None:
        return
    from rich.console import Console

    from pytest_erasure.report.terminal import render_summary

    tw = terminalreporter._tw
    console = Console(file=tw._file, force_terminal=tw.hasmarkup, no_color=not tw.hasmarkup,
                      width=max(80, tw.fullwidth), highlight=False)
    terminalreporter.section("concept erasure audit")
    render_summary(state.record, console)
    for line in state.output_lines:
        terminalreporter.write_line(line, red="instead" in line or "NOT WRITTEN" in line)


class XdistHooks:
    """Controller side of pytest-xdist: push the run id, pull workers' results."""

    def __init__(self, state: ErasureState) -> None:
        self.state = state

    def pytest_configure_node(self, node: Any) -> None:
        with contextlib.suppress(ErasureInputError):  # reported by the worker's collection
            node.workerinput["erasure_run_id"] = self.state.session().run_id

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        payload = getattr(node, "workeroutput", {}).get(WORKER_KEY)
        if payload:
            data = json.loads(payload)
            self.state.worker_results.extend(CaseResult.from_dict(r) for r in data["results"])
            self.state.worker_meta.append(data["record"])
