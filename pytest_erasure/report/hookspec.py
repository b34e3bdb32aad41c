"""Hooks the audit's reports offer plugins (pytest-benchmark's `hookspec.py` pattern).

`pytest_erasure_report_json` lets a plugin add fields to report.json without forking a writer:
a ticket number, a signer, a second detector's numbers. Its fields go under `extensions`, one
key per plugin, never among ours: the record must still read back (`read_report`) and the
published schema (`report.schema.json`) must still describe every field of ours.

The plugin registers these specs from its `pytest_addhooks`; `install` also registers
`ReportHooks`, which makes the running pytest config known to `report.files.write_reports`
while pytest finishes the session (the only time reports are written), so the writers need no
argument for it and a record re-rendered outside pytest writes what it holds.

Where each setting came from is not an extension: the record holds it (`config.sources`, as
`AuditConfig` resolved it), so a report re-rendered from its JSON shows it too, and there is one
record of it, not two that could disagree.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_erasure.records import AuditRecord

_CONFIG: ContextVar[pytest.Config | None] = ContextVar("erasure_report_config", default=None)


@pytest.hookspec
def pytest_erasure_report_json(record: AuditRecord, config: pytest.Config) -> dict[str, Any] | None:
    """Fields to add to report.json, as {key: JSON-able value}; they are written under
    `extensions` (a key two plugins return keeps the first one's value). Called once per
    report folder, on the pytest process that writes the reports (the controller under xdist).
    Return None to add nothing."""


def install(pluginmanager: pytest.PytestPluginManager) -> None:
    """Register the specs above and the plugin that hands writers the running config."""
    import sys

    pluginmanager.add_hookspecs(sys.modules[__name__])
    if not pluginmanager.has_plugin("erasure-report-hooks"):
        pluginmanager.register(ReportHooks(), "erasure-report-hooks")


class ReportHooks:
    """Makes the config current while the session finishes, when the reports are written."""

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, Any, Any]:
        with current(session.config):
            return (yield)


@contextmanager
def current(config: pytest.Config | None) -> Iterator[None]:
    token = _CONFIG.set(config)
    try:
        yield
    finally:
        _CONFIG.reset(token)


def json_fields(record: AuditRecord, config: pytest.Config | None = None) -> dict[str, Any]:
    """What the plugins of `config` (default: the running session's) add to report.json."""
    config = config if config is not None else _CONFIG.get()
    if config is None:
        return {}
    fields: dict[str, Any] = {}
    for answer in config.hook.pytest_erasure_report_json(record=record, config=config):
        for key, value in (answer or {}).items():
            fields.setdefault(str(key), value)
    return fields
