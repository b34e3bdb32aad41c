"""What the package promises about where it runs: the Python versions, the install lines, and
CI installing exactly what README tells a user to install."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _lower_bound(spec: str) -> Version:
    """The lowest version a `>=X` specifier admits (the only form pinned packages use)."""
    bounds = [Version(s.version) for s in SpecifierSet(spec) if s.operator == ">="]
    assert bounds, f"no lower bound in {spec!r}"
    return max(bounds)


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = {}
    for line in lines:
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pins[requirement.name] = str(requirement.specifier)
    return pins


def test_requires_python_is_what_the_pinned_packages_need() -> None:
    """The floor is the highest floor among the pinned packages installed here (numpy, scipy,
    diffusers and transformers need 3.11), not a hope: a 3.10 user gets pip's refusal up
    front instead of a resolver failure or a missing `tomllib`."""
    ours = _lower_bound(PYPROJECT["project"]["requires-python"])
    floors = {}
    for name in _pins():
        try:
            needed = metadata.metadata(name).get("Requires-Python")
        except metadata.PackageNotFoundError:
            continue
        if needed and any(s.operator == ">=" for s in SpecifierSet(needed)):
            floors[name] = _lower_bound(needed)
    assert floors, "no pinned package installed: cannot check the floor"
    assert ours == max(floors.values()), {k: str(v) for k, v in floors.items()}
    assert Version(".".join(map(str, sys.version_info[:2]))) >= ours
    target = PYPROJECT["tool"]["ruff"]["target-version"]
    assert target == f"py{ours.major}{ours.minor}"


def _readme_install_lines() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines()
            if line.startswith("    pip install -c constraints.txt")]


def test_readme_states_a_cpu_line_and_a_cuda_line() -> None:
    """The CPU build comes only from PyTorch's CPU index (PyPI's Linux wheel is the CUDA
    build), so the CPU line names that index and the CUDA line does not."""
    lines = _readme_install_lines()
    assert len(lines) == 2, lines
    cpu, cuda = lines
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu
    assert "--index-url" not in cuda and "torch==2.13.0" in cuda
    torch_pin = next(p for p in PYPROJECT["project"]["dependencies"] if p.startswith("torch"))
    assert torch_pin in cpu and torch_pin in cuda
    assert f"torch{_pins()['torch']}" == torch_pin
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    floor = _lower_bound(PYPROJECT["project"]["requires-python"])
    assert f"Python {floor.major}.{floor.minor} or newer" in readme


def test_ci_installs_exactly_the_readme_cpu_line() -> None:
    run = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    installs = [line for line in run.splitlines() if re.search(r"\bpip install\b", line)]
    assert len(installs) == 1, installs
    as_readme = installs[0].replace("python -m pip", "pip").replace(" --quiet", "")
    assert as_readme == _readme_install_lines()[0]


def test_ci_fails_on_a_skip_that_is_not_a_fact_of_its_machine(tmp_path: Path) -> None:
    """.ci/skips.py, on a JUnit file with one skip it allows (no GPU here) and one it must not
    (a dev package missing)."""
    import subprocess

    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.unit.test_models" name="test_devices[cuda]">'
        '<skipped type="pytest.skip" message="this machine has the device"/></testcase>'
        '<testcase classname="tests.unit.test_reports" name="test_schema">'
        '<skipped type="pytest.skip" message="could not import \'xmlschema\'"/></testcase>'
        "</testsuite></testsuites>")
    script = REPO / ".ci" / "skips.py"
    result = subprocess.run([sys.executable, script, junit], capture_output=True, text=True)
    assert result.returncode == 1
    assert "test_schema: could not import 'xmlschema'" in result.stderr
    assert "test_devices" not in result.stderr
    junit.write_text(junit.read_text().replace("could not import 'xmlschema'",
                                               "this machine has mps"))
    assert subprocess.run([sys.executable, script, junit]).returncode == 0
