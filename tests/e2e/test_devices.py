"""Multi-GPU pinning: each xdist worker takes one device from the caller's list, never outside."""

from __future__ import annotations

import pytest

from pytest_erasure.devices import check_worker_count, worker_device
from pytest_erasure.errors import ErasureInputError


def test_workers_take_devices_from_the_callers_list_by_index() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "3,5"}
    assert worker_device("gw0", env) == "3"
    assert worker_device("gw1", env) == "5"
    with pytest.raises(ErasureInputError, match="has no device"):
        worker_device("gw2", env)


def test_unrestricted_machine_pins_nothing() -> None:
    assert worker_device("gw0", {}) is None


def test_more_workers_than_devices_is_refused() -> None:
    with pytest.raises(ErasureInputError, match="-n 3: asks for more workers than the 2 device"):
        check_worker_count(3, "cuda", {"CUDA_VISIBLE_DEVICES": "0,1"})
    check_worker_count(2, "cuda", {"CUDA_VISIBLE_DEVICES": "0,1"})
    check_worker_count(8, "cpu", {"CUDA_VISIBLE_DEVICES": "0"})  # CPU workers need no device


def test_worker_count_error_is_a_usage_error(pytester: pytest.Pytester, monkeypatch) -> None:
    pytest.importorskip("xdist")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "--device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "-n 2: asks for more workers than the 1 device(s)" in result.stderr.str()
