"""The scaffold writes a starter suite into another project: files that load and run, never
an overwritten team file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.concepts import load_concepts
from pytest_erasure.scaffold import SUITES, main, scaffold


@pytest.mark.parametrize("suite", SUITES)
def test_each_suite_scaffolds_a_loadable_concepts_file(tmp_path: Path, suite: str) -> None:
    folder = tmp_path / "project" / "audits"
    written = scaffold(folder, suite)
    names = sorted(p.name for p in written)
    concepts = "shapes.toml" if suite == "shapes" else f"{suite}.toml"
    assert names == sorted(["README.md", "test_erasure.py", concepts])
    assert "def test_erasure(erasure_case, erasure_check):" in (folder / "test_erasure.py").read_text()
    loaded = load_concepts(folder / concepts)
    readme = (folder / "README.md").read_text()
    assert f"--concepts={folder.as_posix()}/{concepts}" in readme
    if suite == "shapes":
        # Every path of the shapes suite points at the installed world and exists.
        circle = loaded.concepts["circle"]
        assert circle.references is not None and circle.references.is_dir()
        assert circle.detector.path is not None and (circle.detector.path / "config.json").is_file()
        assert circle.calibration is not None and circle.calibration.is_dir()
    else:
        assert "--erased-concept=" in readme and "--erasure-budget=sd14" in readme
        if suite == "cifar10":  # the new suite's own weights/ folder, as the guide says
            detector = loaded.concepts["airplane"].detector.path
            assert detector == (folder / "weights" / "grounding-dino-tiny").resolve()


def test_existing_files_are_kept_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "audits"
    folder.mkdir()
    (folder / "shapes.toml").write_text("# ours\n")
    assert main([str(folder), "--suite", "shapes"]) == 2
    assert "would overwrite" in capsys.readouterr().err
    assert (folder / "shapes.toml").read_text() == "# ours\n"
    assert not (folder / "test_erasure.py").exists()
    assert main([str(folder), "--suite", "shapes", "--force"]) == 0
    assert (folder / "shapes.toml").read_text() != "# ours\n"
