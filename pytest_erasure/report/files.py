"""The report files on disk: which ones an audit writes, and how (atomically, readable by all).

The one entry point the plugin calls for `--erasure-report`. It takes only the `AuditRecord`, so
the same files can be rebuilt later from report.json (`report.json.read_report`) without the
models. `write_text` is here rather than beside any one format because every file a report
writes, the standalone JUnit document included, must be written the same way: a reader (a CI job
collecting artifacts, a person reloading the page) never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

from pytest_erasure.cache import atomic_write_bytes
from pytest_erasure.records import AuditRecord
from pytest_erasure.report.html import to_html
from pytest_erasure.report.json import to_json
from pytest_erasure.report.markdown import to_markdown


def write_reports(record: AuditRecord, folder: Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `folder`; each write is atomic."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md",
             "html": folder / "report.html"}
    write_text(paths["json"], to_json(record))
    write_text(paths["markdown"], to_markdown(record))
    write_text(paths["html"], to_html(record))
    return paths


def write_text(path: Path, text: str) -> None:
    """Atomic (temporary file in the same folder, then os.replace), and readable like any file
    the user writes: the temporary file is created 0600, reports are meant to be shared."""
    atomic_write_bytes(path, text.encode("utf-8"))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
