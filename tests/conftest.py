"""Shared fixtures: a tiny SD-architecture world written to disk once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pytest_erasure.testing import save_tiny_world

    return save_tiny_world(tmp_path_factory.mktemp("tiny-world"))


@pytest.fixture
def this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocesses import this checkout's package, not another installed copy (use with
    `pytestmark = pytest.mark.usefixtures("this_checkout")`)."""
    import os

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))


@pytest.fixture
def case_ids(tiny_world: dict[str, Path]) -> Callable[..., list[str]]:
    """`ids(**overrides)`: the case ids an audit of the tiny world declares with those config
    overrides (e.g. scenarios=("finetune",)), no model loaded: how opt-in cases are checked."""
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.session import AuditSession, default_config

    def ids(**overrides: object) -> list[str]:
        config = default_config(concepts_file=tiny_world["concepts"], cache_dir=None,
                                **overrides)
        return [c.id for c in AuditSession(config, load_concepts(config.concepts_file)).cases()]

    return ids


def pytest_configure(config: pytest.Config) -> None:
    # Tiny models gain nothing from a second thread, and on a shared 2-core machine two
    # OpenMP threads per process make every forward pass wait on the other jobs.
    import os

    import torch

    torch.set_num_threads(1)
    # The environment of the audits tests run in subprocesses: one thread, and fresh pytest
    # runs rather than xdist workers. Under `pytest tests/ -n 2` they would inherit xdist's
    # worker variables (our plugin reads `config.workerinput`, never these), and
    # pytest-benchmark, seeing one, prints a warning on stderr that the one-line usage-error
    # tests count as a second line.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        os.environ.pop(name, None)


# -- every report.json a test writes is valid against the published schema -------------------------

def check_report_jsons(folders: list[Path]) -> int:
    """Validate every report.json under `folders` against the schema the package ships
    (pytest_erasure/report/report.schema.json); the number checked. A document that does not
    match fails the test that wrote it, naming the file and each field that is wrong."""
    import json

    import jsonschema

    from pytest_erasure.report.json import schema

    validator = jsonschema.Draft202012Validator(schema())
    checked = 0
    for folder in folders:
        for path in Path(folder).rglob("report.json"):
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("schema") != "pytest-erasure/report":
                continue  # a test's own deliberately foreign document
            errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
            assert not errors, f"{path} does not match report.schema.json:\n" + "\n".join(
                f"  {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:200]}"
                for e in errors[:10])
            checked += 1
    return checked


@pytest.fixture(autouse=True)
def _report_jsons_written_by_the_test_are_schema_valid(request: pytest.FixtureRequest):
    """After each test, the report.json files in its own folders (tmp_path, pytester's)."""
    yield
    funcargs = getattr(request.node, "funcargs", {})
    folders = [funcargs["tmp_path"]] if "tmp_path" in funcargs else []
    if "pytester" in funcargs:
        folders.append(funcargs["pytester"].path)
    if folders:
        check_report_jsons(folders)


@pytest.fixture(scope="session", autouse=True)
def _every_report_json_is_schema_valid(tmp_path_factory: pytest.TempPathFactory):
    """At the end of the session, every report.json under the session's temporary folders,
    those written by module- and session-scoped fixtures and subprocess audits included."""
    yield
    check_report_jsons([tmp_path_factory.getbasetemp()])
