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


def _session(config: pytest.Config) -> AuditSession:
    """The run's session, built on first need (its ErasureInputError is the caller's)."""
    if SESSION not in config.stash:
        from pytest_erasure.session import AuditSession

        config.stash[SESSION] = AuditSession.from_pytest(config)
    return config.stash[SESSION]


def _usage_error(exc: ErasureInputError) -> pytest.UsageError:
    return pytest.UsageError(str(exc))


# -- options -----------------------------------------------------------------------------------

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
        request.node.user_properties.extend(case_properties(result).items())
        if not result.passed:
            pytest.fail(fail_message(result), pytrace=False)
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


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    audit = session.config.stash.get(SESSION, None)
    if audit is None:
        return
    if hasattr(session.config, "workerinput"):
        audit.publish(session.config.workeroutput)  # type: ignore[attr-defined]
        return
    selected = [item.callspec.params[CASE_FIXTURE].id for item in session.items
                if CASE_FIXTURE in getattr(getattr(item, "callspec", None), "params", {})]
    record = audit.finish(selected, exitstatus == pytest.ExitCode.INTERRUPTED)
    if record is not None:
        from _pytest.junitxml import xml_key

        from pytest_erasure.report.junit import add_pytest_suite_properties

        xml = session.config.stash.get(xml_key, None)
        add_pytest_suite_properties(xml, record, audit.write_outputs())


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
def pytest_configure_node(node: Any) -> None:
    with contextlib.suppress(ErasureInputError):  # reported by the worker's collection
        node.workerinput["erasure_run_id"] = _session(node.config).run_id


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    audit = node.config.stash.get(SESSION, None)
    if audit is not None:
        audit.receive(getattr(node, "workeroutput", {}))

