"""The reports of an audit, one module per format, all rendered from an `AuditRecord` alone.

- `text`: how a case and an audit read as text; every report below words a case the same way.
- `json`: report.json, the record as data (the only report that reads back: `read_report`).
- `markdown`, `html`: report.md to read, report.html to look at and sign (self-contained);
  `plot`: the CRR plot the page inlines and crr.svg (the only module that needs matplotlib).
- `writers`: the registry of report writers (built-ins, then the `pytest_erasure.reports`
  entry points); `files`: `write_reports`, which writes each writer's file, and the atomic
  `write_text`; `hookspec`: the hook through which plugins add fields to report.json.
- `junit`: the standalone JUnit document (`--erasure-junit`) and pytest's own --junitxml
  (failure types, `--erasure-junitxml-valid`); `terminal`: the end-of-run summary.
- `report.schema.json`: report.json's published JSON Schema (package data).
- `images`: evidence grids (the only module that needs numpy and PIL).

This package imports none of them, so loading one (the session loads `images`) costs no more.
"""
