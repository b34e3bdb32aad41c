"""The concepts file: the shipped ones load; every malformed one is a one-line input error."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.concepts import load_concepts
from pytest_erasure.errors import ErasureInputError

REPO = Path(__file__).resolve().parents[2]

GOOD = """
threshold = 0.2
[defaults]
detector = "shapes"
prompts = ["a {concept}"]
[[concept]]
name = "circle"
retain = ["square"]
thresholds = { latent = 0.5, "latent-white-null" = 0.9 }
[[concept]]
name = "square"
erased = false
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "concepts.toml"
    path.write_text(text)
    return path


def test_shipped_shapes_file_loads() -> None:
    concepts = load_concepts(REPO / "audits" / "shapes.toml")
    assert [c.name for c in concepts.audited] == ["circle"]
    circle = concepts.concepts["circle"]
    assert circle.texts()[0] == "a circle"
    assert set(circle.retain) == {"square", "triangle", "star", "cross", "heart"}
    assert circle.references == (REPO / "fixtures" / "shapes" / "references" / "circle")


def test_thresholds_most_specific_wins(tmp_path: Path) -> None:
    concepts = load_concepts(_write(tmp_path, GOOD))
    circle = concepts.concepts["circle"]
    assert concepts.threshold_for(circle, "latent-white-null", "latent", 0.1) == 0.9
    assert concepts.threshold_for(circle, "latent-black-null", "latent", 0.1) == 0.5
    # Nothing more specific: the audit-wide threshold AuditConfig resolved (the flag, else the
    # file's top-level `threshold`, else 0.2), never the file's over the flag's.
    assert concepts.threshold_for(circle, "text", "text", 0.1) == 0.1
    assert concepts.threshold == 0.2


@pytest.mark.parametrize("text, needle", [
    ("[[concept]]\nname = 'circle'\nprompts=['a {concept}']\ndetector='shapes'\ncolour = 1\n",
     "unknown key(s) colour"),
    ("[[concept]]\nname = 'circle'\nprompts='a {concept}'\ndetector='shapes'\n",
     "prompts: is 'a {concept}'; give a list of strings"),
    ("[[concept]]\nname = 'circle'\nprompts=['a circle']\ndetector='shapes'\n",
     "lacks {concept}"),
    ("[[concept]]\nname = 'circle'\nprompts=['a {concept}']\ndetector='shapes'\nthreshold = 1.5\n",
     "threshold: is 1.5; give a number between 0 and 1"),
    ("[[concept]]\nname = 'circle'\nprompts=['a {concept}']\ndetector='shapes'\n"
     "[[concept]]\nname = 'circle'\nprompts=['a {concept}']\ndetector='shapes'\n",
     "concept 'circle': is declared twice"),
    ("[[concept]]\nname = 'circle'\nprompts=['a {concept}']\ndetector='shapes'\nretain=['x']\n",
     "names unknown concept 'x'"),
    ("[[concept]]\nname = 'circle'\nprompts=['a {concept}']\n", "detector: is missing"),
    ("[[concept]]\nname = 'circle'\nprompts=['a {concept}']\ndetector='shapes'\n"
     "references='../../../etc'\n", "leaves the concepts file's folder tree"),
    ("name = 'circle'\n", "unknown key(s) name"),
    ("threshold = 0.2\n", "declares no [[concept]]"),
    ("[[concept]]\nname = 'c'\nprompts=['a {concept}']\ndetector='shapes'\nerased=false\n",
     "has no concept with erased = true"),
    ("[[concept\nname=", "is not valid TOML"),
])
def test_malformed_files_name_the_input_and_the_fix(tmp_path: Path, text: str, needle: str) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    with pytest.raises(ErasureInputError) as info:
        load_concepts(_write(nested, text))
    message = str(info.value)
    assert needle in message
    assert "concepts file" in message and "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ErasureInputError, match="does not exist"):
        load_concepts(tmp_path / "nope.toml")
