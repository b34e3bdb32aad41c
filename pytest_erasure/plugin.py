"""pytest hooks and fixtures: options and ini twins, markers, parametrization, summary, reports.

Hooks and fixtures only; the work is in `session.py` (the one state object), `config.py`
(options) and `report/`. Importing this module must not import torch or diffusers: pytest loads
it on every run, also runs that audit nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from pytest_erasure.errors import ErasureInputError

if TYPE_CHECKING:
    from pytest_erasure.records import CaseResult
    from pytest_erasure.session import AuditSession

CASE_FIXTURE = "erasure_case"
SESSION = pytest.StashKey["AuditSession"]()
ERROR = pytest.StashKey[ErasureInputError]()
COLLECTED = pytest.StashKey[dict[str, str]]()
"""Node id -> case id of every case collected (by the workers, under xdist), after -k/-m."""
RESULT_FIELD = "erasure_result"
"""The attribute of a case's call-phase test report that carries its result (JSON)."""
EXIT_INCONCLUSIVE_REPORTED = 6
"""Exit code of a run that passed except for inconclusive cases it reported without gating."""
EXIT_INCOMPLETE = 7
"""Exit code of a run where a selected case has no result and pytest saw no failure."""


def _session(config: pytest.Config) -> AuditSession:
    """The run's session, built on first need (its ErasureInputError is the caller's)."""
    if SESSION not in config.stash:
        from pytest_erasure.session import AuditSession

        config.stash[SESSION] = AuditSession.from_pytest(config)
    return config.stash[SESSION]


def _usage_error(exc: ErasureInputError) -> pytest.UsageError:
    return pytest.UsageError(str(exc))


# -- options -----------------------------------------------------------------------------------

def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Our own hooks (report/hookspec.py): plugins add fields to report.json."""
    from pytest_erasure.report.hookspec import install

    install(pluginmanager)


def pytest_addoption(parser: pytest.Parser) -> None:
    """The declarations `declarations.declare` makes, replayed from the last run's record while
    nothing they came from changed: a run that audits nothing imports no more of ours."""
    from pytest_erasure.declarations import calls, replay

    recorded = calls()
    replay(recorded, parser)
    _DECLARED[:] = recorded


_DECLARED: list[list[Any]] = []
"""This process's last declarations (pytest declares once per run; `_requested` reads them)."""


def _requested(config: pytest.Config) -> bool:
    """Did the user set any erasure option (a table flag, a defense, a scenario option)? Then
    bad input is reported before collection (`config.requested`, from the declarations)."""
    from pytest_erasure.declarations import dests

    return any(config.getoption(dest) not in (None, False) for dest in dests(_DECLARED))


def pytest_configure(config: pytest.Config) -> None:
    for marker in ("concept(name): the concept a case audits",
                   "modality(name): how the concept is fed (text, embedding, latent, ...)",
                   "access(name): white-box, black-box or none",
                   "erasure: a concept-erasure audit case"):
        config.addinivalue_line("markers", marker)
    device = str(config.getoption("erasure_device") or config.getini("erasure_device") or "cpu")
    try:
        if hasattr(config, "workerinput"):
            from pytest_erasure.devices import pin_worker

            pin_worker(config.workerinput["workerid"], device)  # type: ignore[attr-defined]
        else:
            from pytest_erasure.devices import check_worker_count

            workers = getattr(config.option, "numprocesses", None)
            check_worker_count(workers if isinstance(workers, int) else 0, device)
            if _requested(config):
                _session(config)  # bad input: a usage error before collection
    except ErasureInputError as exc:
        raise _usage_error(exc) from None
    if getattr(config.option, "xmlpath", None):  # FailureTypes acts on pytest's --junitxml only
        from pytest_erasure.report.junit import FailureTypes

        config.pluginmanager.register(FailureTypes(config), "erasure-junit-failure-types")
    config.pluginmanager.register(ResultReceiver(config), "erasure-result-receiver")
    config.stash[COLLECTED] = {}


# -- collection ----------------------------------------------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if CASE_FIXTURE not in metafunc.fixturenames:
        return
    try:
        cases = _session(metafunc.config).cases()
    except ErasureInputError as exc:
        metafunc.config.stash[ERROR] = exc  # raised as a usage error once collection ends
        cases = []
    metafunc.parametrize(CASE_FIXTURE, [pytest.param(case, id=case.id, marks=[
        pytest.mark.erasure, pytest.mark.concept(case.concept),
        pytest.mark.modality(case.modality), pytest.mark.access(case.access or "none"),
        # with --dist loadgroup one worker takes a concept: its attacks and caches
        pytest.mark.xdist_group(case.concept)]) for case in cases])


def _case_of(item: Any) -> Any:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get(CASE_FIXTURE)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    if ERROR in config.stash:
        raise _usage_error(config.stash[ERROR])
    audit = config.stash.get(SESSION, None)
    if audit is not None and not config.option.collectonly and any(
            CASE_FIXTURE in getattr(i, "fixturenames", ()) for i in items):
        try:
            # Identify the models now: a bad model is one usage error, not a failure per case.
            # That loads them, unless a successful load of these very files is on record in
            # the cache (then they load on the first cache miss, if any).
            _ = audit.context.identity
        except ErasureInputError as exc:
            raise _usage_error(exc) from None


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def erasure_session(pytestconfig: pytest.Config) -> AuditSession:
    """The audit session: configuration, concepts, the context (models, cache), results."""
    try:
        return _session(pytestconfig)
    except ErasureInputError as exc:
        raise _usage_error(exc) from None


@pytest.fixture(scope="session")
def standard_model(erasure_session: AuditSession) -> Any:
    """The standard (un-erased) StableDiffusionPipeline."""
    return erasure_session.context.pipeline("standard")


@pytest.fixture(scope="session")
def erased_model(erasure_session: AuditSession) -> Any:
    """The erased StableDiffusionPipeline under audit (not wrapped by the defense)."""
    return erasure_session.context.pipeline("erased")


@pytest.fixture
def erasure_check(erasure_session: AuditSession, request: pytest.FixtureRequest
                  ) -> Callable[[Any], CaseResult]:
    """Run a case, record its numbers as JUnit properties, and fail the test unless it passes
    the gate (an inconclusive case fails with its own message, unless reported only)."""
    from pytest_erasure.report.junit import case_properties, fail_message

    def check(case: Any) -> CaseResult:
        try:
            result = erasure_session.run(case)
        except ErasureInputError as exc:
            erasure_session.record_error(case, str(exc))
            pytest.fail(f"usage error: {exc}", pytrace=False)
        except Exception as exc:
            erasure_session.record_error(case, f"{type(exc).__name__}: {exc}")
            raise
        # the case against a previous audit (`--erasure-compare`); a session a conftest
        # stands in with may have none
        change = getattr(erasure_session, "changes", {}).get(getattr(case, "id", None))
        request.node.user_properties.extend(case_properties(result, change).items())
        if not result.passed:
            pytest.fail(fail_message(result), pytrace=False)
        if result.verdict != "pass":  # inconclusive, reported only: shown apart, never a pass
            from pytest_erasure.report.text import reason_of, verdict_label

            pytest.skip(f"{verdict_label(result)}: {reason_of(result)}")
        return result

    return check


# -- reporting -----------------------------------------------------------------------------------

def pytest_report_header(config: pytest.Config) -> list[str] | None:
    audit = config.stash.get(SESSION, None)
    if audit is None:
        return None
    from pytest_erasure.defenses import settings_text

    c = audit.config
    return [f"erasure: erased={c.erased_model} standard={c.standard_model} concepts="
            f"{c.concepts_file} gate={c.gate} samples={c.samples} device={c.device}/{c.dtype}"
            + (f" {settings_text(c.describe()['defense'])}" if c.defense else "")]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Any:
    """A case's result rides on its call-phase report: under xdist the controller receives it
    the moment the case ends (`pytest_runtest_logreport`), so the results of a worker that
    crashes later are not lost with it."""
    report = yield
    case = _case_of(item)
    audit = item.config.stash.get(SESSION, None)
    if call.when == "call" and case is not None and audit is not None:
        result = audit.results.get(case.id)
        if result is not None:
            import json

            setattr(report, RESULT_FIELD, json.dumps(result.to_dict()))
    return report


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[COLLECTED].update(
        {item.nodeid: case.id for item in session.items if (case := _case_of(item)) is not None})


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    audit = session.config.stash.get(SESSION, None)
    if audit is None or session.config.option.collectonly:  # nothing ran, nothing to report
        return
    config = session.config
    if hasattr(config, "workerinput"):
        audit.publish(config.workeroutput)  # type: ignore[attr-defined]
        return
    collected = config.stash.get(COLLECTED, {})
    record = audit.finish(list(dict.fromkeys(collected.values())),
                          exitstatus == pytest.ExitCode.INTERRUPTED, _selection(config))
    if record is not None:
        from _pytest.junitxml import xml_key

        from pytest_erasure.report.junit import add_pytest_suite_properties
        from pytest_erasure.report.text import counts, verdict

        xml = config.stash.get(xml_key, None)
        add_pytest_suite_properties(xml, record, audit.write_outputs())
        if session.exitstatus == pytest.ExitCode.OK:
            if verdict(record) == "INCOMPLETE":
                session.exitstatus = EXIT_INCOMPLETE
            elif counts(record)["inconclusive"]:
                session.exitstatus = EXIT_INCONCLUSIVE_REPORTED


def _selection(config: pytest.Config) -> dict[str, Any]:
    """What narrowed the run, as given: recorded in every report beside the cases left out."""
    option = config.option
    return {"expressions": {k: v for k, v in (
        ("-k", getattr(option, "keyword", "")), ("-m", getattr(option, "markexpr", "")),
        ("--lf", bool(getattr(option, "lf", False))),
        ("--deselect", list(getattr(option, "deselect", None) or [])),
        ("args", [str(a) for a in config.args])) if v}}


class ResultReceiver:
    """Hands the results that reports carry to this run's session (`pytest_runtest_logreport`
    gets no config, so the hook lives on an object that holds it)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = getattr(report, RESULT_FIELD, None)
        audit = self.config.stash.get(SESSION, None)
        if payload and audit is not None and not hasattr(self.config, "workerinput"):
            audit.receive_result(payload)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    audit = config.stash.get(SESSION, None)
    if audit is None or audit.final is None:
        return
    from rich.console import Console

    from pytest_erasure.report.terminal import render_summary

    tw = terminalreporter._tw
    console = Console(file=tw._file, force_terminal=tw.hasmarkup, no_color=not tw.hasmarkup,
                      width=max(80, tw.fullwidth), highlight=False)
    terminalreporter.section("concept erasure audit")
    render_summary(audit.final, console)
    for line in audit.output_lines:
        terminalreporter.write_line(line, red="instead" in line or "NOT WRITTEN" in line)


# -- pytest-xdist (controller side) ---------------------------------------------------------------

@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """The controller collects nothing: the selected cases are what the workers collected,
    known by their node ids (the parameter id in brackets is the case id; `--dist loadgroup`
    appends '@group' after it)."""
    audit = node.config.stash.get(SESSION, None)
    if audit is None:
        return
    known = {case.id for case in audit.cases()}
    collected = node.config.stash[COLLECTED]
    for nodeid in ids:
        start, end = nodeid.find("["), nodeid.rfind("]")
        param = nodeid[start + 1:end] if 0 <= start < end else ""
        if param in known:
            collected[nodeid] = param


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    with contextlib.suppress(ErasureInputError):  # reported by the worker's collection
        node.workerinput["erasure_run_id"] = _session(node.config).run_id


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    audit = node.config.stash.get(SESSION, None)
    if audit is not None:
        audit.receive(getattr(node, "workeroutput", {}))

