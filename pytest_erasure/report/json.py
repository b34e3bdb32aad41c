"""report.json: the audit as data, to reproduce it, re-render its reports or compare two audits.

The only report that can be read back: every other one is rendered from the `AuditRecord` this
file holds (`read_report`), so it is the one a safety team archives. Its envelope (schema name and
version, a summary a CI job can test with jq) is kept apart from the record so that the record
round-trips unchanged. This module is named for its format like its siblings; the standard
library's `json`, which it uses, is still what `import json` finds here and anywhere else,
because imports are absolute.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pytest_erasure.records import AuditRecord
from pytest_erasure.report.text import counts, verdict

SCHEMA = "pytest-erasure/report"
SCHEMA_VERSION = 1
_ENVELOPE = ("schema", "schema_version", "summary")
"""Keys report.json adds around `AuditRecord.to_dict()`; `read_report` drops them."""


def to_json(record: AuditRecord) -> str:
    """Strict JSON (NaN/inf become null: jq and most parsers reject them)."""
    c = counts(record)
    body = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "summary": {"verdict": verdict(record), **c}, **record.to_dict()}
    return json.dumps(_finite(body), indent=2, ensure_ascii=False, allow_nan=False,
                      default=_json_default) + "\n"


def read_report(path: Path) -> AuditRecord:
    """The record back from a report.json (to re-render it, or to compare two audits)."""
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
