"""RECALL's search is cached (`recall-start`, `recall-round`: one entry per search and step):
a rerun with the same inputs reads it back and generates nothing, a changed input computes
afresh, and under `--irece` the transfer rounds are the undefended search's own entries. On
the held tiny world (standard vs the dark erased model) every search runs every round, so
every round's entries are exercised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_erasure.testing.audits import concept_case

RECALL = ["--steps", "4", "--batch-size", "48", "-p", "no:randomly", "--samples", "4",
          "--scenarios", "image-white", "--recall-timesteps", "3", "--recall-iterations", "2",
          "--recall-step", "0.05"]

pytestmark = pytest.mark.usefixtures("this_checkout")


def _entries(cache: Path, kind: str) -> set[Path]:
    return set((cache / kind).rglob("*.safetensors")) if (cache / kind).is_dir() else set()


def _facts(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["facts"])


def test_a_rerun_reads_the_search_back_and_a_changed_input_misses(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    from pytest_erasure.testing.recall_world import save_recall_world

    world = save_recall_world(tmp_path / "world")
    cache = tmp_path / "cache"

    def audit(erased: str = "erased", *flags: str) -> dict[str, Any]:
        return concept_case(pytester, world, "standard", erased, *RECALL,
                            f"--erasure-cache={cache}", *flags)

    def kinds() -> dict[str, set[Path]]:
        return {kind: _entries(cache, kind) for kind in ("recall-start", "recall-round",
                                                         "image")}

    first = audit()
    assert first["facts"]["best_of_n"]["tries_judged"] == 4 * (1 + 3)  # every round ran
    before = kinds()
    assert before["image"]  # the judged images are cached entries too
    # the same 4 searches start on both models; the standard model's succeed at try 0
    assert len(before["recall-start"]) == 2 * 4 and len(before["recall-round"]) == 4 * 3

    again = audit()
    assert kinds() == before  # nothing optimised, nothing generated: all read back
    assert again["rate"] == first["rate"]
    assert again["facts"]["image_sha256"] == first["facts"]["image_sha256"]

    for changed in (["--recall-step", "0.04"], ["--recall-iterations", "3"], ["--seed", "1"]):
        seen = kinds()
        audit("erased", *changed)
        assert len(kinds()["recall-round"] - seen["recall-round"]) == 4 * 3, changed
    seen = kinds()
    audit("pgd_only")  # another erased model
    assert kinds()["recall-start"] - seen["recall-start"], "a new model's starts"
    assert kinds()["recall-round"] - seen["recall-round"], "a new model's rounds"

    # Under IRECE: the transfer rounds optimise on the undefended model, so they are the
    # first run's entries; only the adaptive rounds are new.
    seen = kinds()
    defended = audit("erased", "--irece")
    assert defended["facts"]["best_of_n"]["tries_judged"] == 4 * (1 + 3 + 3)
    new = kinds()["recall-round"] - seen["recall-round"]
    assert kinds()["recall-start"] == seen["recall-start"]
    assert len(new) == 4 * 3 and all(_facts(p)["adaptive"] for p in new)
    assert not any(_facts(p)["adaptive"] for p in before["recall-round"])
