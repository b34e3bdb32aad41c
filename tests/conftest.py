"""Shared fixtures: a tiny SD-architecture world written to disk once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pytest_erasure.testing import save_tiny_world

    return save_tiny_world(tmp_path_factory.mktemp("tiny-world"))


def pytest_configure(config: pytest.Config) -> None:
    # Tiny models gain nothing from a second thread, and on a shared 2-core machine two
    # OpenMP threads per process make every forward pass wait on the other jobs.
    import os

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the audits tests run in subprocesses
