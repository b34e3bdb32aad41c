"""Attack artifacts (issue 29): exported from one audit, replayed against another model.

The tiny world's erased model is audited with a learned embedding (black-box: learned through
the standard model) and Ring-A-Bell; `--erasure-artifacts` exports what they found. Replayed
against the leaky model with an empty cache, nothing is searched (textual inversion and
Ring-A-Bell are made to raise), and the replayed embedding's images are bit-identical to the
leaky model's own embedding case, which learns the very same embedding file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
BUDGET = {"ti-steps": 4, "ti-batch-size": 4, "ti-lr": 0.01, "ti-train-images": 3,
          "attack-restarts": 1, "rab-generations": 2, "rab-population": 8}
FAST = ["--samples", "8", "--steps", "2", "--batch-size", "4", "-p", "no:randomly",
        "--erasure-gate=point", "--erasure-exploratory",
        *[f"--{k}={v}" for k, v in BUDGET.items()]]


def _args(world: dict[str, Path], erased: str, *extra: str) -> list[str]:
    return ["--standard-model", str(world["standard"]), "--erased-model", str(world[erased]),
            "--concepts", str(world["concepts"]), *FAST, *extra]


@pytest.fixture(scope="module")
def exported(tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    (root / "test_audit.py").write_text(AUDIT)
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}
    folder = root / "artifacts"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *_args(tiny_world, "erased", "--scenarios", "embedding-black,adversarial,latent-black-null",
                f"--erasure-artifacts={folder}", f"--erasure-cache={root / 'cache'}")],
        cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert (folder / "manifest.json").is_file(), done.stdout + done.stderr
    return folder


@pytest.fixture()
def no_search(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_erasure.attacks.inversion as inversion
    import pytest_erasure.attacks.ring_a_bell as rab
    import pytest_erasure.attacks.textual_inversion as ti

    def searched(*args, **kwargs):
        raise AssertionError("an attack searched during a replay")

    monkeypatch.setattr(inversion, "ddim_invert", searched)
    monkeypatch.setattr(ti, "train_textual_inversion", searched)
    monkeypatch.setattr(rab, "ring_a_bell", searched)
    monkeypatch.setattr(rab, "genetic_search", searched)


def test_the_manifest_lists_each_finding_with_its_hash_model_and_settings(exported) -> None:
    from pytest_erasure.cache import file_sha256

    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["schema"] == "pytest-erasure/artifacts" and manifest["token_width"] == 32
    kinds = {a["id"]: a for a in manifest["artifacts"]}
    assert set(kinds) == {"circle-embedding-black/embedding-0", "circle-adversarial-black/prompts",
                          "circle-latent-black-null/latents"}
    embedding = kinds["circle-embedding-black/embedding-0"]
    assert embedding["token"] == "<circle>" and embedding["found_on"]["role"] == "standard"
    assert embedding["found_on"]["model"] == manifest["models"]["standard"]
    assert embedding["settings"]["budget"]["steps"] == 4
    for entry in manifest["artifacts"]:
        assert file_sha256(exported / entry["file"]) == entry["sha256"]
    # diffusers' textual-inversion format: {token: (num_vectors, D)}
    from safetensors.torch import load_file

    tensors = load_file(str(exported / embedding["file"]))
    assert list(tensors) == ["<circle>"] and tuple(tensors["<circle>"].shape) == (1, 32)
    latents = load_file(str(exported / kinds["circle-latent-black-null/latents"]["file"]))
    assert tuple(latents["latents"].shape) == (4, 4, 16, 16)  # the 4 references, inverted
    assert kinds["circle-latent-black-null/latents"]["settings"]["regeneration"]["prompt"] == ""
    prompts = json.loads((exported / kinds["circle-adversarial-black/prompts"]["file"])
                         .read_text())["prompts"]
    assert prompts and all(isinstance(p, str) for p in prompts)


def test_replay_against_another_model_searches_nothing(pytester: pytest.Pytester, tiny_world,
                                                        exported, no_search) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    report = pytester.path / "report"
    result = pytester.runpytest_inprocess(*_args(
        tiny_world, "leaky", "--scenarios", "replay", f"--erasure-replay={exported}",
        f"--erasure-cache={pytester.path / 'empty-cache'}", f"--erasure-report={report}"))
    data = json.loads((report / "report.json").read_text())
    cases = {c["case_id"]: c for c in data["cases"]}
    assert set(cases) == {"circle-replay-embedding-black", "circle-replay-adversarial-black",
                          "circle-replay-latent-black-null"}
    for case in cases.values():
        assert case["error"] is None, case["error"]
        assert case["facts"]["searched"] is False
        # the leaky model still draws the circle: the replayed attacks show it
        assert case["verdict"] == "fail" and case["rate"]["crr"] == 1.0
    assert cases["circle-replay-embedding-black"]["rate"]["n"] == 8
    assert cases["circle-replay-latent-black-null"]["rate"]["n"] == 4  # one per latent
    result.assert_outcomes(failed=3)


def test_the_replayed_embedding_draws_the_embedding_case_s_very_images(
        tiny_world, exported, tmp_path, monkeypatch) -> None:
    from pytest_erasure.artifacts import read_manifest
    from pytest_erasure.cache import file_sha256
    from pytest_erasure.models.loading import load_models
    from pytest_erasure.scenarios.embedding import EmbeddingScenario
    from pytest_erasure.scenarios.replay import build
    from pytest_erasure.session import context_for_pipelines

    models = load_models(tiny_world["standard"], tiny_world["leaky"])

    def context(cache: Path):
        return context_for_pipelines(models.standard, models.erased, tiny_world["concepts"],
                                     cache, steps=2, samples=8, batch_size=4,
                                     scenario_options=BUDGET)

    manifest = read_manifest(exported, tiny_world["standard"])
    (replay,) = [s for s in build(manifest, exported) if s.id == "replay-embedding-black"]
    ctx = context(tmp_path / "replay-cache")
    concept = ctx.concepts.concepts["circle"]
    import pytest_erasure.attacks.textual_inversion as ti

    with monkeypatch.context() as patch:
        patch.setattr(ti, "train_textual_inversion", lambda *a, **k: pytest.fail("searched"))
        replayed = replay.plan(ctx, concept, "erased", 8)
        replayed_images = ctx.generate("erased", replayed.inputs, concept)
    own_ctx = context(tmp_path / "own-cache")
    own = EmbeddingScenario("black-box").plan(own_ctx, concept, "erased", 8)
    # the embedding case learned the same file the replay loaded ...
    entry = next(a for a in manifest["artifacts"] if a["kind"] == "embedding")
    assert file_sha256(Path(own.artifacts["embedding"])) == entry["sha256"]
    # ... and draws the same images, bit for bit
    own_images = own_ctx.generate("erased", own.inputs, concept)
    assert replayed_images.dtype == torch.uint8 and len(replayed_images) == 8
    assert torch.equal(replayed_images, own_images)


def test_embeddings_for_another_token_width_are_refused_before_loading(
        pytester: pytest.Pytester, tiny_world, exported, tmp_path) -> None:
    other = tmp_path / "wide"
    shutil.copytree(exported, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["token_width"] = 768
    (other / "manifest.json").write_text(json.dumps(manifest))
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(*_args(tiny_world, "leaky", "--scenarios", "replay",
                                                 f"--erasure-replay={other}"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--erasure-replay *wide: holds embeddings made for a text "
                                 "encoder of width 768 (circle-embedding-black/embedding-0), "
                                 "but the standard model's is 32*"])


def test_a_file_changed_since_export_is_refused(pytester: pytest.Pytester, tiny_world,
                                                exported, tmp_path) -> None:
    other = tmp_path / "tampered"
    shutil.copytree(exported, other)
    prompts = other / "circle-adversarial-black" / "prompts.json"
    prompts.write_text(json.dumps({"prompts": ["a harmless square"]}))
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(*_args(tiny_world, "leaky", "--scenarios", "replay",
                                                 f"--erasure-replay={other}"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*changed since it was exported*"])


PROBES = ["--samples", "8", "--steps", "4", "--batch-size", "48", "-p", "no:randomly",
          "--noise-etas", "1.0,1.5", "--noise-scales", "1.0", "--inpaint-masks", "16",
          "--scenarios", "noise-probe,completion-probe,inpainting-probe"]


@pytest.fixture(scope="module")
def probes_exported(tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                    ) -> tuple[Path, dict[str, dict]]:
    """The three probes on the leaky model (every search succeeds), exported; with the
    cases of that run, by id."""
    root = tmp_path_factory.mktemp("probes-export")
    (root / "test_audit.py").write_text(AUDIT)
    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}
    folder, report = root / "artifacts", root / "report"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "circle",
         f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['leaky']}",
         f"--concepts={tiny_world['concepts']}", *PROBES, f"--erasure-artifacts={folder}",
         f"--erasure-cache={root / 'cache'}", f"--erasure-report={report}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert (folder / "manifest.json").is_file(), done.stdout + done.stderr
    cases = {c["case_id"]: c for c in json.loads((report / "report.json").read_text())["cases"]
             if c["kind"] == "erasure"}
    return folder, cases


def test_probe_findings_are_exported_as_their_kept_tries(probes_exported) -> None:
    folder, cases = probes_exported
    manifest = json.loads((folder / "manifest.json").read_text())
    probes = {a["scenario"]: a for a in manifest["artifacts"] if a["kind"] == "probe"}
    assert set(probes) == {"noise-probe", "completion-probe", "inpainting-probe"}
    for scenario, entry in probes.items():
        data = json.loads((folder / entry["file"]).read_text())
        assert data["probe"] == scenario and entry["found_on"]["role"] == "erased"
        # every search succeeded on the leaky model: one kept try per search, in order
        assert [t["search"] for t in data["tries"]] == list(range(8))
        if scenario != "inpainting-probe":  # a search's kept try, with its seed and prompt
            kept = cases[f"circle-{scenario}"]["facts"]["searches"]
            assert [(t["seed"], t["prompt"]) for t in data["tries"]] == [
                (s["seed"], s["prompt"]) for s in kept]
    noise = json.loads((folder / probes["noise-probe"]["file"]).read_text())["tries"][0]
    assert noise["steering"] == {"eta": 1.0, "noise_scale": 1.0} and noise["prompt"]
    completion = json.loads((folder / probes["completion-probe"]["file"]).read_text())["tries"]
    assert completion[0]["steering"] == {"start_step": 1} and completion[0]["standard_steps"] == 1
    painted = json.loads((folder / probes["inpainting-probe"]["file"]).read_text())["tries"]
    assert painted[0]["steering"] == {"inpaint_box": [4, 4, 12, 12]}
    assert {t["reference"] for t in painted} == {0, 1, 2, 3} and painted[0]["reference_sha256"]


def test_replayed_probe_findings_redraw_the_kept_images_without_searching(
        pytester: pytest.Pytester, tiny_world, probes_exported,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_erasure.scenarios.completion as completion
    import pytest_erasure.scenarios.noise as noise
    import pytest_erasure.scenarios.searches as searches

    def searched(*args, **kwargs):
        raise AssertionError("a probe searched during a replay")

    for module in (searches, noise, completion):
        monkeypatch.setattr(module, "run_searches", searched)
    folder, cases = probes_exported
    pytester.makepyfile(test_audit=AUDIT)
    report = pytester.path / "report"
    pytester.runpytest_inprocess(
        f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['leaky']}",
        f"--concepts={tiny_world['concepts']}", *PROBES[:-2], "--scenarios", "replay",
        "-k", "circle", f"--erasure-replay={folder}",
        f"--erasure-cache={pytester.path / 'empty-cache'}", f"--erasure-report={report}")
    replayed = {c["case_id"]: c for c in json.loads((report / "report.json").read_text())["cases"]
                if c["kind"] == "erasure"}
    assert set(replayed) == {f"circle-replay-{p}" for p in
                             ("noise-probe", "completion-probe", "inpainting-probe")}
    for case_id, case in replayed.items():
        assert case["error"] is None, case["error"]
        assert case["facts"]["searched"] is False and case["rate"]["hits"] == 8
        # on the model they were found on, the findings redraw the very images the probe kept
        original = cases[case_id.replace("replay-", "")]
        assert case["facts"]["image_sha256"] == original["facts"]["image_sha256"], case_id
