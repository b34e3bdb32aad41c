"""A suite's setup checked before a GPU hour (`python -m pytest_erasure.setup_check`) and its
detector measured on a calibration set (`python -m pytest_erasure.detectors.calibration`): real
folders, the shapes world's real detector; nothing is mocked and no diffusion model loads."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pytest_erasure.config import DEFAULT_CONCEPTS, DEFAULT_ERASED, DEFAULT_STANDARD, SHAPES
from pytest_erasure.detectors import calibration
from pytest_erasure.setup_check import SD14_DOWNLOAD, main

REPO = Path(__file__).resolve().parents[2]


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_the_shapes_world_is_ready(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = _lines(capsys)
    assert [line.split()[0] for line in out[:-1]] == ["ok"] * 6, out
    assert out[-1].startswith("0 missing")


def test_every_missing_piece_is_named_at_once_with_its_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a standard model whose download stopped before the UNet's weights
    standard = tmp_path / "sd-v1-4"
    shutil.copytree(DEFAULT_STANDARD, standard)
    for weights in (standard / "unet").glob("*.safetensors"):
        weights.unlink()
    references = tmp_path / "references" / "circle"
    references.mkdir(parents=True)  # declared, but nobody put images there yet
    concepts = tmp_path / "suite.toml"
    concepts.write_text(f'''
threshold = 0.2
[defaults]
detector = "grounding-dino"
detector_path = "{tmp_path / 'weights' / 'grounding-dino-tiny'}"
prompts = ["a {{concept}}"]
[[concept]]
name = "circle"
references = "{references}"
retain = ["square"]
[[concept]]
name = "square"
erased = false
''')
    code = main([f"--standard-model={standard}", f"--erased-model={tmp_path / 'esd.safetensors'}",
                 f"--concepts={concepts}", "--erased-concept=circle", "--erasure-corrected",
                 "--device=cuda", "--junitxml=junit.xml"])  # the audit's other flags: ignored
    out = _lines(capsys)
    assert code == 1
    missing = [line for line in out if line.startswith("MISSING")]
    assert len(missing) == 5 and out[-1].startswith("5 missing"), out
    text = "\n".join(out)
    assert f"{standard / 'unet'}: has no weight file" in text
    assert SD14_DOWNLOAD.format(path=standard) in text
    assert f"--erased-model {tmp_path / 'esd.safetensors'}: does not exist" in text
    assert "detector 'grounding-dino' for circle, square" in text
    assert (f"hf download IDEA-Research/grounding-dino-tiny --local-dir "
            f"{tmp_path / 'weights' / 'grounding-dino-tiny'} --include") in text
    assert f"references for circle: {references}: no images there" in text
    assert "calibration for circle: none declared" in text and "--erasure-corrected" in text
    assert "python -m pytest_erasure.detectors.calibration --concepts=" in text


def test_a_bad_concepts_file_is_named_after_the_models(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main([f"--concepts={DEFAULT_CONCEPTS}", "--erased-concept=square"])
    out = _lines(capsys)
    assert code == 1 and out[0].startswith("ok") and out[1].startswith("ok")
    assert out[2].startswith("MISSING  concepts file: --erased-concept: names 'square'")
    assert "use one of: circle" in out[3]


def test_the_standard_model_command_is_the_guides() -> None:
    guide = (REPO / "audits" / "sd14" / "README.md").read_text(encoding="utf-8")
    block = guide[guide.index("hf download CompVis/stable-diffusion-v1-4"):]
    command = re.sub(r"\\\n\s*", "", block.split("\n\n")[0])
    assert " ".join(command.split()) == SD14_DOWNLOAD.format(path="/models/sd-v1-4")


def test_optional_pieces_are_notes_not_failures(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    concepts = tmp_path / "suite.toml"
    concepts.write_text(f'''
[defaults]
detector = "shapes"
detector_path = "{SHAPES / 'detector'}"
prompts = ["a {{concept}}"]
[[concept]]
name = "circle"
''')
    assert main([f"--concepts={concepts}", f"--erased-model={DEFAULT_ERASED}"]) == 0
    text = "\n".join(_lines(capsys))
    assert "optional references for circle: none declared" in text
    assert "optional calibration for circle: none declared" in text
    # a run without embedding or latent scenarios needs no references
    assert main([f"--concepts={concepts}", "--scenarios=text,baseline"]) == 0
    assert "references" not in "\n".join(_lines(capsys))


def test_the_calibration_command_measures_the_shapes_detector(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert calibration.main([f"--concepts={DEFAULT_CONCEPTS}", "--size", "32"]) == 0
    rows = [line for line in _lines(capsys) if line.startswith("| circle |")]
    assert len(rows) == 1 and rows[0].endswith("| 1.000 | 1.000 | 40/0/240/0 | 0.851 | yes |")


def test_the_calibration_command_fails_a_detector_that_cannot_separate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # squares filed as circles: the real detector says 'no circle' to all of them
    folder = tmp_path / "calibration"
    shutil.copytree(SHAPES / "calibration" / "square", folder / "circle")
    shutil.copytree(SHAPES / "calibration" / "none", folder / "none")
    concepts = tmp_path / "suite.toml"
    concepts.write_text(f'''
[defaults]
detector = "shapes"
detector_path = "{SHAPES / 'detector'}"
detector_options = {{ threshold = 0.5 }}
prompts = ["a {{concept}}"]
calibration = "{folder}"
[[concept]]
name = "circle"
''')
    assert calibration.main([f"--concepts={concepts}", "--size=32"]) == 1
    row = next(line for line in _lines(capsys) if line.startswith("| circle |"))
    assert "| 0.000 | 1.000 | 0/40/40/0 |" in row and row.endswith("| NO |")


def test_the_calibration_command_refuses_a_suite_without_calibration(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        calibration.main([f"--concepts={REPO / 'audits' / 'sd14' / 'cifar10.toml'}"])
    assert exit_.value.code == 2
    assert "declares a calibration folder" in capsys.readouterr().err


def test_the_guides_download_filters_fetch_what_the_audit_loads(tmp_path: Path, capsys) -> None:
    """The SD v1.4-conformant folder (laid out like CompVis/stable-diffusion-v1-4), cut down to
    the files the guide's `--include` filters fetch: the setup check passes it and the audit's
    own loader loads it as the standard model."""
    from fnmatch import fnmatch

    import torch

    from pytest_erasure.models.formats.diffusers_folder import load_standard
    from pytest_erasure.testing.sd14 import save_sd14_folder

    full = save_sd14_folder(tmp_path / "hub", "reduced", safety_checker=False)
    includes = re.findall(r'--include "([^"]+)"', SD14_DOWNLOAD)
    fetched = tmp_path / "sd-v1-4"
    for path in full.rglob("*"):
        name = path.relative_to(full).as_posix()
        if path.is_file() and any(fnmatch(name, pattern) for pattern in includes):
            (fetched / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, fetched / name)
    left = {p.relative_to(full).parts[0] for p in full.rglob("*") if p.is_file()
            and not (fetched / p.relative_to(full)).exists()}
    assert left == {"safety_checker", "feature_extractor"}  # the audit loads neither
    assert main([f"--standard-model={fetched}"]) == 0
    assert _lines(capsys)[0].startswith(f"ok       standard model: {fetched}")
    pipeline, provenance = load_standard(fetched, torch.float32, "cpu")
    assert pipeline.unet is not None and provenance["format"] == "diffusers"
