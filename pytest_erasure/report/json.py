"""report.json: the audit as data, to reproduce it, re-render its reports or compare two audits.

The only report that can be read back: every other one is rendered from the `AuditRecord` this
file holds (`read_report`), so it is the one a safety team archives. Its envelope (schema name and
version, a summary a CI job can test with jq) is kept apart from the record so that the record
round-trips unchanged. This module is named for its format like its siblings; the standard
library's `json`, which it uses, is still what `import json` finds here and anywhere else,
because imports are absolute.

Version 2 (issue #19): every case carries `verdict` (pass, fail, inconclusive) and a non-empty
`reason`, derived as `report.text` derives them for records written before verdicts existed (an
error fails with the error as its reason), and the summary counts inconclusive cases beside
passed, failed and error, so `jq '.summary.inconclusive'` answers without reading the cases.
Version 1 documents (no verdicts) still read back; their cases get `verdict == ""`, which every
report derives again.

The document's shape is published as a JSON Schema, `report.schema.json` beside this module and
shipped in the wheel (`schema()` loads it; docs/report.md explains each field), so a consumer can
check a file without reading our code. Plugins add their own fields under `extensions` (the
`pytest_erasure_report_json` hook, `report/hookspec.py`); `read_report` leaves them out of the
record, since they are not ours to read back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pytest_erasure.records import AuditRecord
from pytest_erasure.report.text import counts, reason_of, verdict, verdict_of

SCHEMA = "pytest-erasure/report"
SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")
"""The JSON Schema (draft 2020-12) every report.json this version writes is valid against."""
_ENVELOPE = ("schema", "schema_version", "summary", "extensions")
"""Keys report.json adds around `AuditRecord.to_dict()`; `read_report` drops them."""


def schema() -> dict[str, Any]:
    """The published JSON Schema of report.json, as shipped in the package."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def to_json(record: AuditRecord, extensions: dict[str, Any] | None = None) -> str:
    """Strict JSON (NaN/inf become null: jq and most parsers reject them). `extensions`:
    plugins' fields (`hookspec.pytest_erasure_report_json`), written only when there are any,
    so a report without plugins is byte for byte what it was."""
    c = counts(record)
    data = record.to_dict()
    for case, written in zip(record.cases, data["cases"], strict=True):
        written["verdict"], written["reason"] = verdict_of(case), reason_of(case)
    body = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "summary": {"verdict": verdict(record), **c}, **data}
    if extensions:
        body["extensions"] = extensions
    return json.dumps(_finite(body), indent=2, ensure_ascii=False, allow_nan=False,
                      default=_json_default) + "\n"


def read_report(path: Path) -> AuditRecord:
    """The record back from a report.json (to re-render it, or to compare two audits); any
    version up to ours."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA or data.get("schema_version", 0) > SCHEMA_VERSION:
        raise ValueError(f"{path}: not a {SCHEMA} v{SCHEMA_VERSION} document")
    return AuditRecord.from_dict({k: v for k, v in data.items() if k not in _ENVELOPE})


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _finite(item())
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return _finite(tolist())
    return str(value)
