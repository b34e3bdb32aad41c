"""The report writers: which files `--erasure-report DIR` writes, as a registry.

Each writer renders one file from the `AuditRecord` alone (plus the fields plugins add to
report.json), so a report folder can be rebuilt from report.json later without the models, and
a new format is one more writer, not an edit to config, session, outputs and files. Built-in
writers come first (json, markdown, html, plot); third parties register theirs under the
entry-point group `pytest_erasure.reports` (value: a module:attribute that is a `ReportWriter`
or a list of them), as formats and defenses are registered. A name or a file name already
taken keeps its first owner: a plugin cannot replace report.json. Importing this module
imports no renderer: each is imported when its file is written.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pytest_erasure.records import AuditRecord

ENTRY_POINT_GROUP = "pytest_erasure.reports"


@runtime_checkable
class ReportWriter(Protocol):
    """One file of the report folder."""

    name: str
    """How reports and `write_reports`' answer name it ('json', 'html', ...)."""
    filename: str
    """The file it writes in the report folder ('report.json')."""

    def render(self, record: AuditRecord, extensions: dict[str, Any]) -> str | bytes | None:
        """The file's content (text is written as UTF-8), or None to write nothing for this
        record. `extensions`: the fields plugins added to report.json (hook
        `pytest_erasure_report_json`), for writers that show them."""
        ...


@dataclass(frozen=True)
class BuiltinWriter:
    """A built-in writer: its renderer named as 'module:function(record[, extensions])', so
    listing the registry imports no renderer (the HTML's plot needs matplotlib)."""

    name: str
    filename: str
    renderer: str
    takes_extensions: bool = False

    def render(self, record: AuditRecord, extensions: dict[str, Any]) -> str | bytes | None:
        module, _, function = self.renderer.partition(":")
        render: Callable[..., str | bytes | None] = getattr(importlib.import_module(module),
                                                            function)
        return render(record, extensions) if self.takes_extensions else render(record)


BUILTIN: tuple[ReportWriter, ...] = (
    BuiltinWriter("json", "report.json", "pytest_erasure.report.json:to_json",
                  takes_extensions=True),
    BuiltinWriter("markdown", "report.md", "pytest_erasure.report.markdown:to_markdown"),
    BuiltinWriter("html", "report.html", "pytest_erasure.report.html:to_html"),
    BuiltinWriter("plot", "crr.svg", "pytest_erasure.report.plot:crr_svg_file"),
)


def registry() -> dict[str, ReportWriter]:
    """Every writer by name: built-ins first, then entry points in the order installed."""
    found: dict[str, ReportWriter] = {}
    files: set[str] = set()

    def add(writer: ReportWriter) -> None:
        if writer.name in found or writer.filename in files:
            return
        found[writer.name] = writer
        files.add(writer.filename)

    for writer in BUILTIN:
        add(writer)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()
        for writer in loaded if isinstance(loaded, list | tuple) else [loaded]:
            if not isinstance(writer, ReportWriter):
                raise TypeError(f"entry point {ep.name} = {ep.value} in {ENTRY_POINT_GROUP} is "
                                f"not a ReportWriter (name, filename, render)")
            add(writer)
    return found
