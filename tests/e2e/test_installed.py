"""The package as a user installs it, not as a clone: the wheel, built from the sources, installed
into a fresh venv, scaffolds a suite in an empty project and runs its audit on the shapes world
the wheel carries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                 ".pytest_cache", ".ruff_cache", ".hypothesis", "weights",
                                 ".erasure_cache", ".venv", "venv")


def _run(*args: str | Path, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_a_built_wheel_scaffolds_and_audits_in_an_empty_project(tmp_path: Path) -> None:
    # Built from a copy, so the build's own files (build/, *.egg-info) stay out of the sources;
    # the copy keeps pytest_erasure/data's symlinks, which the build follows into copies.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=IGNORED)
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-q", "-w", tmp_path / "dist", source, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("pytest_erasure-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = "pytest_erasure/data/"
    for needed in ("audits/shapes.toml", "audits/test_erasure.py", "audits/sd14/cifar10.toml",
                   "fixtures/shapes/standard/model_index.json",
                   "fixtures/shapes/erased/uce-circle/model_index.json",
                   "fixtures/shapes/detector/model.safetensors"):
        assert data + needed in names, needed
    assert not any("/weights/" in n or n.endswith(".pyc") for n in names)

    # A fresh venv over this machine's packages (torch, diffusers: no network here); the
    # wheel's pytest_erasure shadows the clone's editable install.
    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", "--system-site-packages", venv,
                cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    installed = _run(python, "-m", "pip", "install", "--no-deps", "-q", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]

    project = tmp_path / "project"
    project.mkdir()
    where = _run(python, "-c", "import pytest_erasure; print(pytest_erasure.__file__)", cwd=project)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    made = _run(venv / "bin" / "pytest-erasure-scaffold", "audits", "--suite", "shapes",
                cwd=project)
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in (project / "audits").iterdir()) == \
        ["README.md", "shapes.toml", "test_erasure.py"]

    audit = _run(python, "-m", "pytest", "audits/", "--concepts=audits/shapes.toml",
                 "--scenarios=text,baseline", "--samples=8", "-p", "no:cacheprovider",
                 "--no-erasure-cache", "--erasure-report=report", cwd=project)
    report = json.loads((project / "report" / "report.json").read_text())
    verdicts = {c["case_id"]: c["verdict"] for c in report["cases"]}
    assert set(verdicts) == {"circle-baseline", "circle-text"}, audit.stdout[-3000:]
    assert verdicts["circle-baseline"] == "pass"  # the standard model draws circles
    # any non-pass verdict (fail, or inconclusive: gated by default) fails the run
    assert audit.returncode == (0 if set(verdicts.values()) == {"pass"} else 1), \
        audit.stdout[-3000:]
    # The models, detector and references came from the installed wheel, not a clone.
    site = str(venv)
    assert report["config"]["erased_model"].startswith(site)
    assert report["config"]["standard_model"].startswith(site)
    assert site in (project / "audits" / "shapes.toml").read_text()
