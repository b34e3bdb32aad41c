"""Shared fixtures: a tiny SD-architecture world written to disk once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pytest_erasure.testing import save_tiny_world

    return save_tiny_world(tmp_path_factory.mktemp("tiny-world"))
