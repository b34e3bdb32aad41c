"""Executors: units travel to worker processes and come back with the same results.

The shapes world's real models run in a real spawned worker (`process`) and in this process
(`local`); the images must agree bit for bit (batch-invariant layers, the CPU default), the
worker must load its models once, progress must reach the driver, and out-of-memory halving
must be learnt by the driver's recording wherever the unit ran.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import pytest

from pytest_erasure.concepts import load_concepts
from pytest_erasure.config import DEFAULT_CONCEPTS
from pytest_erasure.context import Context
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.executors import make, names
from pytest_erasure.executors.process import ProcessExecutor
from pytest_erasure.executors.units import Unit
from pytest_erasure.memory import BatchSizes, chunked, recording
from pytest_erasure.records import GenerationInput
from pytest_erasure.session import default_config


def _context(executor: str) -> Context:
    config = default_config(cache_dir=None, no_cache=True, executor=executor)
    return Context(config, load_concepts(DEFAULT_CONCEPTS))


def where(host: Any, advance: Any, *, steps: int) -> tuple[int, int]:
    """(this process, the host's loaded models): which worker ran a unit and on which load."""
    for _ in range(steps):
        advance(1)
    return os.getpid(), id(host.models)


def halving_unit(host: Any, advance: Any, *, fits: int, n: int) -> int:
    """A computation that runs out of memory above `fits` samples per chunk."""
    import torch

    def run(start: int, stop: int) -> None:
        if stop - start > fits:
            raise torch.OutOfMemoryError("too big")

    return chunked("probe", n, 8, run, lambda: "a probe")


def dying_unit(host: Any, advance: Any) -> None:
    os._exit(3)


def test_registry_names_the_built_ins_and_refuses_an_unknown_one() -> None:
    assert names()[:2] == ["local", "process"]
    with pytest.raises(ErasureInputError, match="--erasure-executor"):
        default_config(executor="nonesuch").validate()


def test_process_executor_makes_the_images_local_makes() -> None:
    inputs = [GenerationInput(seed=s, prompt=p) for s, p in
              ((1, "a circle"), (2, "a square"), (3, "a circle"))]
    local = _context("local")
    process = _context("process")
    try:
        want, want_flags = local.generate_flagged("erased", inputs)
        got, got_flags = process.generate_flagged("erased", inputs)
        assert process._models is None, "the driver loaded models the worker holds"
        assert got.dtype == want.dtype and got.shape == want.shape
        assert bool((got == want).all())
        assert got_flags == want_flags
        concept = local.concepts.concepts["circle"]
        assert process.detect(got, concept) == local.detect(want, concept)
        assert process.identity.fingerprints == local.identity.fingerprints
    finally:
        process.close()


def test_a_worker_loads_its_models_once_and_reports_progress() -> None:
    context = _context("process")
    try:
        seen: list[int] = []
        executor = context.executor
        first = executor.run(context.unit(where, steps=3), seen.append)
        second = executor.run(context.unit(where, steps=2), seen.append)
        assert first == second  # same worker, same load
        assert first[0] != os.getpid()
        assert seen == [1, 1, 1, 1, 1]
    finally:
        context.close()


def test_out_of_memory_halving_is_learnt_across_processes() -> None:
    executor = ProcessExecutor()
    try:
        sizes = BatchSizes()
        unit = Unit(halving_unit, {"fits": 2, "n": 6}, needs_models=False)
        pickle.loads(pickle.dumps(unit))
        with recording(sizes):
            assert executor.run(unit, lambda n: None) == 2
        assert sizes.reduced() == {"probe": 2}
        assert sizes.requested == {"probe": 8}
        with recording(sizes), pytest.raises(ErasureInputError, match="a probe"):
            executor.run(Unit(halving_unit, {"fits": 0, "n": 1}, needs_models=False),
                         lambda n: None)
    finally:
        executor.close()


def test_a_dead_worker_is_an_error_not_a_hang() -> None:
    executor = ProcessExecutor()
    try:
        with pytest.raises(RuntimeError, match="ended"):
            executor.run(Unit(dying_unit, needs_models=False, title="dying"), lambda n: None)
    finally:
        executor.close()


def test_models_in_memory_run_only_locally() -> None:
    with pytest.raises(RuntimeError, match="in memory"):
        ProcessExecutor().run(Unit(where, {"steps": 0}, models=None), lambda n: None)
    local = make("local", default_config(), host := _context("local"))
    assert local.run(Unit(where, {"steps": 0}), lambda n: None)[1] == id(host.models)
