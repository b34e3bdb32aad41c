"""A format from outside the package, added through the `pytest_erasure.formats` entry point,
detected and audited end to end like a built-in one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
FAST = ["--samples", "4", "--steps", "1", "--batch-size", "4", "-p", "no:randomly"]

# A made-up format: a JSON file {"unet_scale": s} that scales the standard UNet's attn2.to_v
# weights by s. It uses nothing of ours but the protocol's shape.
SCALED_UNET = '''
import hashlib
import json


class ScaledUnet:
    name = "scaled-unet"
    applies_to_standard = True
    options = ()

    def detect(self, path):
        if not (path.is_file() and path.suffix == ".json"):
            return 0.0
        try:
            return 1.0 if "unet_scale" in json.loads(path.read_text()) else 0.0
        except ValueError:
            return 0.0

    def load(self, standard, standard_path, path, options):
        import copy

        import torch

        scale = float(json.loads(path.read_text())["unet_scale"])
        unet = copy.deepcopy(standard.unet)
        scaled = 0
        with torch.no_grad():
            for name, weight in unet.named_parameters():
                if name.endswith("attn2.to_v.weight"):
                    weight.mul_(scale)
                    scaled += 1
        files = {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
        return {"unet": unet}, {"files": files, "unet_scale": scale, "tensors_scaled": scaled}

    def describe(self, details):
        return {"scaled_unet": details}


FORMAT = ScaledUnet()
'''


def write_format_package(root: Path) -> Path:
    """An installed-looking distribution: its module and a dist-info with the entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "scaled_unet_format.py").write_text(SCALED_UNET)
    info = root / "scaled_unet_format-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: scaled-unet-format\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pytest_erasure.formats]\nscaled-unet = scaled_unet_format:FORMAT\n")
    return root


@pytest.fixture
def format_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = write_format_package(tmp_path / "site")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(package), os.environ.get("PYTHONPATH", "")) if p))
    return package


def test_registered_name_is_offered_without_importing_it(format_on_path: Path) -> None:
    """The name reaches --erased-format's help and validation; neither the format's module nor
    torch is imported to learn it."""
    code = ("import sys; from pytest_erasure.config import OPTIONS, AuditConfig; "
            "from pytest_erasure.models.formats import names; "
            "help = next(o.help for o in OPTIONS if o.flag == '--erased-format'); "
            "print(json.dumps([names(), help, 'scaled_unet_format' in sys.modules, "
            "'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                         text=True, check=True)
    found, help_text, imported, torch_loaded = json.loads(out.stdout)
    assert found[-1] == "scaled-unet" and found[:2] == ["diffusers", "single-file"]
    assert "scaled-unet" in help_text and "lora" in help_text
    assert not imported and not torch_loaded


def test_audit_runs_with_a_format_from_an_entry_point(pytester: pytest.Pytester, tiny_world,
                                                      format_on_path: Path) -> None:
    erased = pytester.path / "half-values.json"
    erased.write_text(json.dumps({"unet_scale": 0.5}))
    out = pytester.path / "report"
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_subprocess(
        "--standard-model", str(tiny_world["standard"]), "--erased-model", str(erased),
        "--concepts", str(tiny_world["concepts"]), *FAST, "--scenarios", "text",
        f"--erasure-report={out}")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret in (0, 1), output
    assert "Traceback" not in output
    erased_record = json.loads((out / "report.json").read_text())["provenance"]["erased"]
    assert erased_record["format"] == "scaled-unet"
    assert erased_record["detected_format"] == "scaled-unet" and not erased_record["format_forced"]
    assert erased_record["components_replaced"] == ["unet"]
    assert erased_record["scaled_unet"]["unet_scale"] == 0.5
    assert erased_record["scaled_unet"]["tensors_scaled"] > 0
    assert list(erased_record["files"]) == [str(erased)]
