"""The plugin's option declarations, replayed from the cache file exactly as the modules make them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_erasure import declarations


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "pytest-erasure" / "declarations"


def fresh() -> declarations.Calls:
    recorder = declarations._Recorder()
    declarations.declare(recorder)
    return recorder.calls


def test_the_replay_is_the_modules_own_declaration(cache_home: Path) -> None:
    first = declarations.calls()
    [stored] = list(cache_home.glob("*.json"))
    assert json.loads(stored.read_text())["calls"] == first
    assert declarations.calls() == first == json.loads(json.dumps(fresh()))
    flags = [args[0] for kind, args, _kw in first if kind == "addoption"]
    assert "--erasure-executor" in flags and "--ti-steps" in flags and "--irece" in flags
    assert "erasure_opt_ti_steps" in declarations.dests(first)


def test_a_changed_source_file_is_declared_afresh(cache_home: Path) -> None:
    declarations.calls()
    [stored] = list(cache_home.glob("*.json"))
    data = json.loads(stored.read_text())
    data["calls"] = [["addoption", ["--stale"], {"dest": "stale"}]]
    stored.write_text(json.dumps(data))
    assert declarations.calls() == data["calls"]  # valid: replayed as stored
    source = next(iter(data["files"]))
    data["files"][source] = [0, 0]  # as if the file had been edited since
    stored.write_text(json.dumps(data))
    assert declarations.calls() == json.loads(json.dumps(fresh()))


def test_an_unwritable_cache_still_declares(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file: no folder can be made in it
    assert declarations.calls() == json.loads(json.dumps(fresh()))
    assert not os.path.isdir(blocker)


def test_two_checkouts_never_share_a_record(monkeypatch) -> None:
    """With sys.path[0] == '' (python -c) two checkouts share every other part of the key: the
    package's folder keeps their records apart (one served the other's options before)."""
    from pytest_erasure import declarations

    here = declarations._key()
    monkeypatch.setattr(declarations, "__file__", "/elsewhere/pytest_erasure/declarations.py")
    assert declarations._key() != here
