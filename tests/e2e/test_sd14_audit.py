"""The whole audit on SD v1.4 as published (PNDM with skip_prk_steps, CLIP's 49,408-token BPE,
the published configs), reduced sizes, end to end through a real pytest subprocess.

`tests/e2e/test_sd14_architecture.py` runs one case of each scenario type on the full-size
architecture (minutes, `-m slow`); this test runs every scenario, IRECE included, on the
`reduced` variant that `save_sd14_world` writes to disk, so the default run catches anything
that breaks on the published layout (a scheduler other than DDIM, a real tokenizer) rather than
only on the shapes world's tiny DDIM model. Budgets are the smallest that still run every code
path (2 steps, 2 samples, 64x64, one TI step, a 4-individual Ring-A-Bell generation, 2 fuzz
prompts): random weights decide nothing about erasure, so only what ran is asserted, not what
it found.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from pytest_erasure.testing.sd14 import tokenizer_files

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"

SCENARIOS = ("baseline", "text", "retention", "adversarial-black", "fuzz", "embedding-white",
             "embedding-black", "latent-white-null", "latent-white-prompt", "latent-black-null",
             "latent-black-prompt")
CLIP_VOCAB = 49408

BUDGETS = [
    "--steps", "2", "--samples", "2", "--height", "64", "--width", "64", "--batch-size", "2",
    "--ti-steps", "1", "--ti-batch-size", "1",
    "--rab-population", "4", "--rab-generations", "1", "--rab-keep", "1",
    "--fuzz-examples", "1", "--fuzz-seeds-per-prompt", "1", "--fuzz-max-prompts", "2",
    "--fuzz-confirm-seeds", "4", "--erasure-exploratory",
    "--inversion-steps", "2",
]


@pytest.fixture(scope="module")
def sd14_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pytest_erasure.testing.sd14 import save_sd14_world

    return save_sd14_world(tmp_path_factory.mktemp("sd14-reduced"))


def test_every_scenario_with_irece_runs_on_the_published_sd14_layout(
        pytester: pytest.Pytester, sd14_world: dict[str, Path]) -> None:
    index = json.loads((sd14_world["standard"] / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    scheduler = json.loads((sd14_world["standard"] / "scheduler" /
                            "scheduler_config.json").read_text())
    assert scheduler["skip_prk_steps"] is True
    vocab = json.loads((sd14_world["standard"] / "tokenizer" / "vocab.json").read_text())
    assert len(vocab) == CLIP_VOCAB
    started = time.perf_counter()

    pytester.makepyfile(test_audit=AUDIT)
    report = pytester.path / "report"
    result = pytester.runpytest_subprocess(
        "--standard-model", str(sd14_world["standard"]),
        "--erased-model", str(sd14_world["erased"]), "--concepts", str(sd14_world["concepts"]),
        "--scenarios", ",".join(SCENARIOS), *BUDGETS, "--irece",
        f"--erasure-report={report}", "-p", "no:randomly", "-p", "no:cacheprovider",
        timeout=600)
    output = result.stdout.str() + result.stderr.str()
    print(f"\naudit of every scenario with --irece on reduced SD v1.4: "
          f"{time.perf_counter() - started:.0f} s")
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), output
    assert "Traceback" not in output, output
    outcomes = result.parseoutcomes()
    assert not outcomes.get("errors") and not outcomes.get("error"), output

    data = json.loads((report / "report.json").read_text())
    by_id = {c["case_id"]: c for c in data["cases"]}
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == len(by_id), output
    assert {c["scenario"] for c in data["cases"]} == set(SCENARIOS)
    assert not data["incomplete"]
    for case in by_id.values():
        assert case["error"] is None and isinstance(case["passed"], bool), case["case_id"]
        assert case["rate"]["n"] >= 1, case["case_id"]
    assert data["config"]["defense"]["name"] == "irece"
    erasure = [c for c in by_id.values() if c["kind"] == "erasure"]
    assert erasure
    for case in erasure:
        assert case["undefended"] is not None and case["undefended"]["n"] >= 1, case["case_id"]

    # PNDM as shipped, on both models (IRECE wraps the erased one's sampler).
    provenance = data["provenance"]
    for role in ("standard", "erased"):
        sampler = provenance[role]["sampler"]
        assert sampler["class"] == "PNDMScheduler", role
        assert sampler["config"]["skip_prk_steps"] is True, role
    # The audited tokenizer is CLIP's BPE: the report's hash of each tokenizer file is that of
    # the 49,408-token files rebuilt from OpenAI's vocabulary.
    files = provenance["standard"]["files"]
    clip = tokenizer_files()
    assert len(json.loads(clip["vocab.json"])) == CLIP_VOCAB
    for name, text in clip.items():
        recorded = files[str(sd14_world["standard"] / "tokenizer" / name)]
        assert recorded == hashlib.sha256(text.encode()).hexdigest(), name
