"""The report files on disk: every registered writer's file, written atomically, readable by all.

The one entry point the plugin calls for `--erasure-report`. Which files there are is the
writers registry's business (`report/writers.py`: built-ins and the `pytest_erasure.reports`
entry points), not this module's. It takes only the `AuditRecord` (and, while pytest runs, the
fields plugins add to report.json), so the same files can be rebuilt later from report.json
(`report.json.read_report`) without the models. `write_text` is here rather than beside any
one format because every file a report writes, the standalone JUnit document included, must
be written the same way: a reader (a CI job collecting artifacts, a person reloading the page)
never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.cache import atomic_write_bytes
from pytest_erasure.records import AuditRecord

if TYPE_CHECKING:
    import pytest


def write_reports(record: AuditRecord, folder: Path, config: pytest.Config | None = None,
                  extensions: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write every registered writer's file into `folder`, each atomically; {writer name: path}
    of those written. `extensions`: fields for report.json; by default what the plugins of
    `config` (default: the pytest session now finishing, if any) add through the
    `pytest_erasure_report_json` hook."""
    from pytest_erasure.report.hookspec import json_fields
    from pytest_erasure.report.writers import registry

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if extensions is None:
        extensions = json_fields(record, config)
    paths: dict[str, Path] = {}
    for name, writer in registry().items():
        content = writer.render(record, extensions)
        if content is None:
            continue
        path = folder / Path(writer.filename).name  # a writer names a file, never a folder
        write_bytes(path, content.encode("utf-8") if isinstance(content, str) else content)
        paths[name] = path
    return paths


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Atomic (temporary file in the same folder, then os.replace), and readable like any file
    the user writes: the temporary file is created 0600, reports are meant to be shared."""
    atomic_write_bytes(path, data)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
