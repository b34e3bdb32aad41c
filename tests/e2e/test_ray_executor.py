"""The Ray executor on a real local Ray cluster (2 CPU workers): same images, same audit, a killed
worker survived, bad setups refused before anything loads.

Ray starts embedded in this process once for the module (about ten seconds); the audits run as
real pytest subprocesses on the tiny world, each starting its own. CI installs Ray with the dev
extra, so a skip here is a failure there (`.ci/skips.py`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

from pytest_erasure.concepts import load_concepts  # noqa: E402
from pytest_erasure.config import DEFAULT_CONCEPTS  # noqa: E402
from pytest_erasure.context import Context  # noqa: E402
from pytest_erasure.records import GenerationInput  # noqa: E402
from pytest_erasure.session import default_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
KILLER = """
import os, signal, threading, time
from pathlib import Path

def pytest_runtest_call(item):
    # SIGKILL one Ray actor a second into the white-box embedding case (its textual inversion
    # unit): the audit must finish with local's results.
    if "embedding-white" not in item.nodeid or Path("killed").exists():
        return
    from pytest_erasure.plugin import _session
    pids = _session(item.config).context.executor.pids()

    def kill():
        time.sleep(1.0)
        os.kill(pids[0], signal.SIGKILL)
        Path("killed").write_text(str(pids[0]))

    threading.Thread(target=kill, daemon=True).start()
"""


def where(host: Any, advance: Any) -> int:
    """Which worker process ran the unit."""
    return os.getpid()


def _context(executor: str, **options: Any) -> Context:
    config = default_config(cache_dir=None, no_cache=True, executor=executor,
                            scenario_options=options)
    return Context(config, load_concepts(DEFAULT_CONCEPTS))


@pytest.fixture(scope="module")
def on_ray():
    context = _context("ray", **{"ray-workers": 2})
    try:
        yield context
    finally:
        context.close()
        ray.shutdown()


@pytest.fixture(scope="module")
def local():
    return _context("local")


def _sampling(context: Context) -> Any:
    """The sampling the context generates with (as `Context.generate_flagged` builds it)."""
    from pytest_erasure.generate import Sampling

    height, width = context.size()
    config = context.config
    return Sampling(config.steps, config.guidance, height, width, config.device, config.dtype,
                    batch_invariant=config.invariant_layers,
                    sampler=context.model_facts("erased").scheduler_key())


def _inputs(n: int, salt: int = 0) -> list[GenerationInput]:
    return [GenerationInput(seed=salt + i, prompt=("a circle", "a square", "a round dot")[i % 3])
            for i in range(n)]


def test_ray_makes_and_judges_the_images_local_makes_on_both_workers(on_ray, local) -> None:
    inputs = _inputs(12)
    want, want_flags = local.generate_flagged("erased", inputs)
    seen: list[int] = []
    from pytest_erasure.executors.units import generate_images

    unit = on_ray.unit(generate_images, role="erased", inputs=inputs,
                       sampling=_sampling(on_ray), batch_size=4, defense=None, concept=None,
                       config=None, total=len(inputs))
    got, got_flags = on_ray.executor.run(unit, seen.append)
    assert on_ray._models is None, "the driver loaded models the actors hold"
    assert got.dtype == want.dtype and bool((got == want).all()), "not local's bits"
    assert got_flags == want_flags
    assert sum(seen) == len(inputs), "progress did not reach the driver"
    concept = local.concepts.concepts["circle"]
    assert on_ray.detect(got, concept) == local.detect(want, concept)
    assert on_ray.identity.fingerprints == local.identity.fingerprints
    pids = {on_ray.executor.run(on_ray.unit(where), lambda n: None) for _ in range(2)}
    assert len(pids) == 2 and os.getpid() not in pids, "units did not go to both actors"


def meet(host: Any, advance: Any, *, folder: str, me: str, other: str) -> int:
    """Say `me` has started, then wait for `other` to have started too: two of these finish
    only if they run at the same time (each would wait out the other's timeout otherwise)."""
    Path(folder, me).write_text("started")
    deadline = time.monotonic() + 120
    while not Path(folder, other).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} never started while {me} ran")
        time.sleep(0.05)
    return os.getpid()


def test_independent_units_run_side_by_side_on_two_actors(on_ray, local, tmp_path) -> None:
    """`Context.map` (an attack's restarts) hands Ray two units at once, one per actor; the
    local executor runs them one after the other, in order."""
    names = [("a", "b"), ("b", "a")]
    pids = on_ray.map(lambda pair: on_ray.run(on_ray.unit(
        meet, needs_models=False, folder=str(tmp_path), me=pair[0], other=pair[1])), names)
    assert len(set(pids)) == 2 and os.getpid() not in pids, "not one unit per actor"
    order: list[str] = []
    assert local.map(lambda x: order.append(x) or x * 2, [3, 1, 2]) == [6, 2, 4]
    assert order == [3, 1, 2], "local ran the items out of order"


def test_a_worker_killed_mid_unit_is_restarted_and_the_unit_retried(on_ray, local) -> None:
    from pytest_erasure.executors.units import generate_images

    inputs = _inputs(24, salt=100)
    want, _flags = local.generate_flagged("erased", inputs)
    executor = on_ray.executor
    before = executor.pids()
    started = threading.Event()
    done: list[int] = []

    def advance(n: int) -> None:
        done.append(n)
        started.set()

    unit = on_ray.unit(generate_images, role="erased", inputs=inputs,
                       sampling=_sampling(on_ray), batch_size=2, defense=None, concept=None,
                       config=None, total=len(inputs))
    out: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: out.update(result=executor.run(unit, advance)))
    runner.start()
    assert started.wait(120), "the unit never reported progress"
    assert sum(done) < len(inputs) // 2, "the unit was nearly done: the kill proves nothing"
    os.kill(before[0], signal.SIGKILL)
    runner.join(600)
    assert not runner.is_alive()
    got, _flags = out["result"]
    assert bool((got == want).all()), "the retried unit made other images"
    after = executor.pids()
    assert before[0] not in after, "the killed worker was not replaced"


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=900,
                          env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)})


def _usage_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("options, names", [
    (["--ray-address=127.0.0.1:9"], ["--ray-address", "nothing answers at 127.0.0.1:9"]),
    (["--ray-address=no-port-here"], ["--ray-address", "is not an address"]),
    (["--ray-workers=512"], ["--ray-workers", "512 worker(s)", "CPU(s)"]),
])
def test_bad_ray_setups_are_usage_errors_before_anything_loads(tmp_path: Path, options, names
                                                               ) -> None:
    (tmp_path / "test_audit.py").write_text(AUDIT)
    line = _usage_line(_run(["--erasure-executor=ray", *options, "-p", "no:cacheprovider",
                             "--collect-only", "-q"], tmp_path))
    for name in names:
        assert name in line


def test_a_missing_ray_extra_is_a_usage_error_naming_the_install(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    (tmp_path / "test_audit.py").write_text(AUDIT)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--erasure-executor=ray", "-p", "no:cacheprovider",
         "--collect-only", "-q"], cwd=tmp_path, text=True, capture_output=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "shim"), str(ROOT)])})
    line = _usage_line(result)
    assert "Ray is not installed" in line and "'.[ray]'" in line


def _cases(folder: Path) -> dict[str, dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from compare_reports import cases
    finally:
        sys.path.pop(0)
    return cases(folder / "report.json")


def test_a_shapes_world_audit_on_ray_with_a_worker_killed_matches_local_case_for_case(
        tmp_path: Path) -> None:
    """The shapes world's real models (the default audit's, on fewer images and steps): the same
    hits, n and image digests on Ray, with one actor SIGKILLed during textual inversion."""
    (tmp_path / "test_audit.py").write_text(AUDIT)
    common = ["--steps=10", "--batch-size=8", "--samples=8", "--erasure-gate=point",
              "--scenarios=baseline,text,embedding-white", "--ti-steps=5",
              "--ti-batch-size=4", "--attack-restarts=2", "-p", "no:randomly",
              "-p", "no:cacheprovider", "-q"]
    reports = {}
    for executor in ("local", "ray"):
        if executor == "ray":
            (tmp_path / "conftest.py").write_text(KILLER)
        folder = tmp_path / executor
        started = time.monotonic()
        result = _run([*common, f"--erasure-executor={executor}", "--ray-workers=2",
                       f"--erasure-cache={tmp_path / ('cache-' + executor)}",
                       f"--erasure-report={folder}"], tmp_path)
        assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
        reports[executor] = _cases(folder)
        print(executor, f"{time.monotonic() - started:.1f} s")
    assert (tmp_path / "killed").exists(), "no worker was killed: the test proves less"
    assert reports["ray"] == reports["local"]
    assert any(c["image_sha256"] for c in reports["ray"].values()), "no images were compared"
    recorded = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert recorded["config"]["executor"] == "ray"


@pytest.mark.parametrize("device, options, resources, message", [
    ("cuda", {}, {"CPU": 16}, "has 0 GPU(s)"),
    ("cuda", {"ray-workers": 3}, {"CPU": 16, "GPU": 2}, "3 GPU worker(s)"),
    ("cuda:1", {}, {"CPU": 16, "GPU": 2}, "names one GPU"),
    ("mps", {}, {"CPU": 16}, "not a device Ray actors"),
    ("cpu", {"ray-workers": 2, "ray-worker-cpus": 2}, {"CPU": 3}, "has 3 CPU(s)"),
    ("cpu", {"ray-worker-cpus": 0}, {"CPU": 3}, "give 1 or more"),
])
def test_a_cluster_without_the_resources_asked_is_refused(device, options, resources, message
                                                          ) -> None:
    from pytest_erasure.errors import ErasureInputError
    from pytest_erasure.executors.ray import _plan

    config = default_config(executor="ray", device="cpu", scenario_options=options)
    config.device = device
    with pytest.raises(ErasureInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _plan(config, resources)


def test_the_workers_a_cluster_gets_by_default() -> None:
    from pytest_erasure.executors.ray import _plan

    config = default_config(executor="ray")
    assert _plan(config, {"CPU": 2}) == (1, {"num_cpus": 1, "num_gpus": 0})
    config.device = "cuda"
    assert _plan(config, {"CPU": 32, "GPU": 4}) == (4, {"num_cpus": 1, "num_gpus": 1})


def test_an_overlay_travels_to_the_actors_and_leaves_local_bits(on_ray, local) -> None:
    """A quantize overlay on the erased model, run on Ray's actors (split over both): the images
    are local's under the same overlay, and differ from the model without it."""
    from pytest_erasure.overlays.quantize import quantize

    overlay = quantize(bits=4)
    inputs = _inputs(8, salt=300)
    want = local.generate("erased", inputs, overlays=(overlay,))
    got = on_ray.generate("erased", inputs, overlays=(overlay,))
    plain = local.generate("erased", inputs)
    assert bool((got == want).all()), "the overlay ran otherwise on the actors"
    assert not bool((got == plain).all()), "the overlay changed nothing: the test proves nothing"
