"""Warm reruns: an audit whose results are all cached loads no model and builds no detector.

Real audits in subprocesses (a fresh interpreter is the only honest place to ask whether
diffusers was imported) on a copy of the tiny world, every scenario at a tiny budget. A probe
conftest counts `load_models` and `build_detector` calls and records which libraries the run
imported. What must hold:
- the warm rerun loads nothing, builds no detector, imports neither diffusers nor transformers
  (every verdict is cached too), and reports exactly what the cold run reported (case results,
  JUnit properties, provenance, detectors);
- a weight file written again (same bytes, same mtime: only its ctime moves) is loaded and
  fingerprinted again;
- a deleted cached image loads the models and recomputes that image alone, to the same verdicts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
PROBE = '''
import json, sys
import pytest_erasure.models.loading as models
import pytest_erasure.context as context

CALLS = {"loads": 0, "detectors": 0}


def counted(module, name, what):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        CALLS[what] += 1
        return real(*args, **kwargs)

    setattr(module, name, wrapper)


counted(models, "load_models", "loads")
counted(context, "build_detector", "detectors")


def pytest_unconfigure(config):
    with open("probe.json", "w") as f:
        json.dump({**CALLS, "diffusers": "diffusers" in sys.modules,
                   "transformers": "transformers" in sys.modules}, f)
'''
# Every scenario, each at the smallest budget that still runs its real code.
BUDGET = ("--samples=4", "--steps=2", "--batch-size=4", "--ti-steps=2", "--ti-batch-size=2",
          "--rab-population=4", "--rab-generations=1", "--rab-keep=1", "--fuzz-examples=2",
          "--fuzz-seeds-per-prompt=1", "--fuzz-max-prompts=3", "--fuzz-confirm-seeds=4",
          "--erasure-exploratory")
WEIGHTS = Path("erased") / "unet" / "diffusion_pytorch_model.safetensors"


def _world_copy(tiny_world: dict[str, Path], root: Path) -> Path:
    """A world of our own: its files' stat identity is ours to change."""
    shutil.copytree(tiny_world["concepts"].parent, root, ignore=shutil.ignore_patterns("leaky"))
    return root


def _audit(folder: Path, world: Path, cache: Path, name: str) -> dict[str, Any]:
    """Run the audit in `folder`; return the probe, the report and the JUnit properties."""
    report, junit = folder / f"report-{name}", folder / f"junit-{name}.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
               f"--standard-model={world / 'standard'}", f"--erased-model={world / 'erased'}",
               f"--concepts={world / 'concepts.toml'}", f"--erasure-cache={cache}",
               f"--erasure-report={report}", f"--junitxml={junit}", *BUDGET]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    # The cache folder differs between runs (each test copies the cold one); files in it are
    # named by content, so naming the folder alike leaves what must be the same.
    data = json.loads((report / "report.json").read_text().replace(str(cache), "<cache>"))
    for case in data["cases"]:
        case.pop("seconds")  # wall time, the one thing a rerun may change
    return {"probe": json.loads((folder / "probe.json").read_text()),
            "cases": data["cases"], "provenance": data["provenance"],
            "detectors": data["detectors"], "junit": _properties(junit)}


def _properties(junit: Path) -> dict[str, list[tuple[str, str]]]:
    cases = ET.parse(junit).getroot().iter("testcase")
    return {c.get("name"): [(p.get("name"), p.get("value")) for p in c.iter("property")]
            for c in cases}


def _same_results(a: dict[str, Any], b: dict[str, Any]) -> None:
    for part in ("cases", "provenance", "detectors", "junit"):
        assert a[part] == b[part], f"{part} differ between the runs"


def _images(cache: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (cache / "image").rglob("*.safetensors")}


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory,
         tiny_world: dict[str, Path]) -> dict[str, Any]:
    """One cold audit, its cache kept as a template each test copies."""
    folder = tmp_path_factory.mktemp("warm")
    (folder / "test_audit.py").write_text(AUDIT)
    (folder / "conftest.py").write_text(PROBE)
    world = _world_copy(tiny_world, folder / "world")
    cache = folder / "cache-cold"
    result = _audit(folder, world, cache, "cold")
    assert result["probe"] == {"loads": 1, "detectors": 1, "diffusers": True,
                               "transformers": True}
    assert {c["scenario"] for c in result["cases"]} >= {
        "baseline", "text", "retention", "embedding-white", "latent-black-prompt",
        "adversarial-black", "fuzz"}, "every kind of plan is exercised"
    return {"folder": folder, "world": world, "cache": cache, "result": result}


def _cache_copy(cold: dict[str, Any], name: str) -> Path:
    copy = cold["folder"] / f"cache-{name}"
    shutil.copytree(cold["cache"], copy)
    return copy


def test_a_warm_rerun_loads_nothing_and_reports_the_same(cold: dict[str, Any]) -> None:
    cache = _cache_copy(cold, "warm")
    before = _images(cache)
    warm = _audit(cold["folder"], cold["world"], cache, "warm")
    assert warm["probe"] == {"loads": 0, "detectors": 0, "diffusers": False,
                             "transformers": False}
    _same_results(cold["result"], warm)
    assert _images(cache) == before, "a warm rerun writes no image"


def test_a_rewritten_weight_file_is_loaded_and_fingerprinted_again(
        cold: dict[str, Any], tiny_world: dict[str, Path]) -> None:
    folder = cold["folder"]
    world = _world_copy(tiny_world, folder / "world-rewritten")
    cache = _cache_copy(cold, "rewritten")
    # A new path is a new identity; its second run is warm.
    assert _audit(folder, world, cache, "first")["probe"]["loads"] == 1
    assert _audit(folder, world, cache, "second")["probe"]["loads"] == 0
    # The same bytes written in place, the old mtime put back: only the ctime moves.
    weights = world / WEIGHTS
    stat = weights.stat()
    weights.write_bytes(weights.read_bytes())
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = weights.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == \
        (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    rewritten = _audit(folder, world, cache, "rewritten")
    assert rewritten["probe"]["loads"] == 1, "a written weight file must be fingerprinted again"
    assert rewritten["provenance"]["erased"]["fingerprint"] == \
        cold["result"]["provenance"]["erased"]["fingerprint"], "same bytes, same fingerprint"
    assert _audit(folder, world, cache, "again")["probe"]["loads"] == 0, "the new record holds"


def test_a_deleted_image_loads_the_models_and_is_recomputed_alone(cold: dict[str, Any]) -> None:
    cache = _cache_copy(cold, "deleted")
    before = _images(cache)
    deleted = sorted(before)[len(before) // 2]
    deleted.unlink()
    result = _audit(cold["folder"], cold["world"], cache, "deleted")
    assert result["probe"]["loads"] == 1 and result["probe"]["diffusers"]
    after = _images(cache)
    assert set(after) == set(before), "the deleted image is back, and nothing else is new"
    assert [p for p in after if after[p] != before[p]] == [deleted], "only it was written"
    # Drawn alone now, in a batch of four before: CPU kernels may round it one uint8 level
    # apart (see test_determinism), so the verdicts must agree, not every pixel.
    assert result["junit"] == cold["result"]["junit"]
