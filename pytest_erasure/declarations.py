"""The plugin's flags and ini keys as pytest is told them, remembered between runs.

pytest loads the plugin on every run, also the runs of projects that audit nothing, and
declaring our options means reading the options table, every scenario's and every defense's
options and the budget profiles: importing some thirty modules of ours (compiled afresh where
bytecode is not written) and scanning every installed package's entry points, several times.
That is most of what the plugin costs a run that never audits. So the declarations (the exact
`addoption` / `addini` calls, recorded once) are kept in a JSON file under the user's cache
folder, and replayed from it while nothing they came from has changed:

- the key: Python's version, `sys.path`, this package's folder (two checkouts never share a
  record), and every installed distribution's entry-point file (its size and mtime; a package
  installed, removed or re-registered changes it);
- checked on reading: the size and mtime of every source file that took part (the options
  table, the scenario, defense and format modules, ours and third parties').

Anything else (no cache folder, a file that cannot be written or read) falls back to declaring
from the modules, as before. The options are the same either way: the replay makes the very
calls the modules made.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

VERSION = 1
ENTRY_POINT_GROUPS = ("pytest_erasure.scenarios", "pytest_erasure.defenses",
                      "pytest_erasure.formats", "pytest_erasure.executors")
GROUP = ("erasure", "concept-erasure audit (pytest-erasure)")
Calls = list[list[Any]]
"""[["addoption", [flag], {dest, default, help, action?}] | ["addini", [name, help], {default}]]"""


class _Recorder:
    """Stands in for pytest's parser and its option group, writing down every call."""

    def __init__(self) -> None:
        self.calls: Calls = []

    def getgroup(self, *_args: Any) -> _Recorder:
        return self

    def addoption(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(["addoption", list(args), kwargs])

    def addini(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(["addini", list(args), kwargs])


def declare(parser: Any) -> None:
    """Every erasure option on `parser` (pytest's, or a recorder): the table's flags, a flag per
    defense, then every scenario and defense option, each with its ini twin."""
    from pytest_erasure.budgets import help_note
    from pytest_erasure.config import OPTIONS, all_options, budget_profiles, scenario_dest
    from pytest_erasure.defenses import enable_dest
    from pytest_erasure.defenses import registry as defenses

    group = parser.getgroup(*GROUP)
    for option in OPTIONS:
        # Values stay text (no argparse type) and are converted in AuditConfig.from_values: a
        # bad number is then one usage-error line naming the option. argparse %-formats help.
        group.addoption(option.flag, dest=option.dest, default=None,
                        help=option.help.replace("%", "%%"),
                        **({"action": option.action} if option.action else {}))
        parser.addini(option.dest, f"{option.help} (ini twin of {option.flag})", default=None)
    for defense in defenses().values():
        flag = f"--{defense.name}"
        group.addoption(flag, dest=enable_dest(defense), default=None, action="store_true",
                        help=f"{defense.help} (one defense at a time)".replace("%", "%%"))
        parser.addini(enable_dest(defense), f"{defense.help} (ini twin of {flag})", default=None)
    profiles = budget_profiles()
    for option in all_options():
        group.addoption(f"--{option.name}", dest=scenario_dest(option), default=None,
                        help=f"{option.help} {help_note(option.name, option.default, profiles)}"
                        .replace("%", "%%"))
        parser.addini(scenario_dest(option), f"{option.help} (ini twin of --{option.name})",
                      default=None)


def replay(calls: Calls, parser: Any) -> None:
    group = parser.getgroup(*GROUP)
    for kind, args, kwargs in calls:
        if kind == "addoption":
            group.addoption(*args, **kwargs)
        else:
            parser.addini(*args, **kwargs)


def dests(calls: Calls) -> list[str]:
    """The argparse dest of every flag: the run audits when any of them was given."""
    return [kwargs["dest"] for kind, _args, kwargs in calls if kind == "addoption"]


def calls() -> Calls:
    """The recorded declarations: from the cache file while it is valid, else recorded now
    (and stored for the next run)."""
    path = _path()
    if path is not None:
        try:
            stored = json.loads(path.read_text())
            if stored.get("version") == VERSION and _unchanged(stored["files"]):
                return stored["calls"]  # type: ignore[no-any-return]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    recorder = _Recorder()
    declare(recorder)
    if path is not None:
        _store(path, {"version": VERSION, "calls": recorder.calls, "files": _sources()})
    return recorder.calls


def _folder() -> Path | None:
    try:
        base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    except RuntimeError:  # no home directory to find
        return None
    return Path(base) / "pytest-erasure" / "declarations"


def _path() -> Path | None:
    folder = _folder()
    return None if folder is None else folder / f"{_key()}.json"


def _key() -> str:
    """Python, sys.path and every distribution's entry points, as one digest."""
    dists = []
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as found:
                names = sorted(e.name for e in found
                               if e.name.endswith((".dist-info", ".egg-info")))
        except OSError:
            continue
        for name in names:
            dists.append([entry, name, _stat(os.path.join(entry or ".", name,
                                                          "entry_points.txt"))])
    # This package's own folder too: with sys.path[0] == '' (python -c, an embedded
    # interpreter) two checkouts of the plugin share every other part of the key, and each
    # would be served the other's declarations.
    here = os.path.dirname(os.path.abspath(__file__))
    blob = json.dumps([VERSION, sys.version, sys.path, here, dists])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _sources() -> dict[str, list[int] | None]:
    """Every source file loaded while declaring: ours, and the modules entry points named."""
    from importlib.metadata import entry_points

    targets = {ep.value.partition(":")[0].strip() for group in ENTRY_POINT_GROUPS
               for ep in entry_points(group=group)}

    def took_part(name: str) -> bool:
        return name.startswith("pytest_erasure") or any(
            name == t or t.startswith(name + ".") or name.startswith(t + ".") for t in targets)

    files = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and took_part(getattr(module, "__name__", "")):
            files[file] = _stat(file)
    return files


def _unchanged(files: dict[str, list[int] | None]) -> bool:
    return bool(files) and all(_stat(file) == stat for file, stat in files.items())


def _store(path: Path, data: dict[str, Any]) -> None:
    """Written whole or not at all (two runs may store at once)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except OSError:
        pass
