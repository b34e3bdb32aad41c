"""`benchmarks/gpu_check.py --smoke`: the GPU check's own code paths on the CPU (reduced SD v1.4,
PNDM, CLIP tokenizer, 64 px), so an API change breaks this test here rather than the script on
a GPU machine, where device time is scarce.

Slow: a full smoke run took 35-56 s on this project's shared 2-core machine (about 17-19 s of
CPU time), over the 30 s a default-run test may take.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke",
                           "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    data = json.loads(out.read_text())

    assert [r["batch"] for r in data["raw"]] == [2, 4]
    for raw in data["raw"]:
        assert raw["timesteps"] == data["settings"]["steps"] + 1  # PNDM: N steps, N+1 timesteps
        assert raw["images_per_s"] > 0
    assert data["irece"]["defended_s"] > 0 and data["irece"]["undefended_s"] > 0
    assert 0 < data["irece"]["mask_fraction_last"] <= 1
    ti = data["ti"]  # the sd14 profile: micro-batch 1 x accumulation 4
    assert (ti["batch"], ti["accumulation"], ti["profile_steps"]) == (1, 4, 3000)
    assert ti["steps_per_s"] > 0 and math.isfinite(ti["last_loss"])
    assert data["inversion"]["seconds_per_image"] > 0
    kernels = data["quantize_kernels"]  # this torch's CPU kernels; NF4 has none on a CPU
    for name in ("int8", "4bit"):
        assert kernels[name]["native"] and kernels[name]["applied_layers"]["unet"]["kernel"] > 0
        assert kernels[name]["native"]["seconds"] > 0 and "error" not in kernels[name]
    assert kernels["nf4"] == {"native": False, "reason": kernels["nf4"]["reason"]}
    case = data["text_case"]
    assert case["exit"] in (0, 1) and case["images_per_s"] > 0 and case["ratio_to_raw"] > 0
    projection = data["projection"]
    assert projection["total_hours"] == pytest.approx(
        projection["generation_hours"] + projection["ti_hours"] + projection["inversion_hours"],
        abs=0.02)
    assert all(math.isfinite(n) for n in _numbers(data))
