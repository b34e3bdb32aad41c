"""A catalogue of bad inputs, each run through the real plugin: exit code 4 (pytest's usage
error), one `ERROR:` line on stderr that names the input and the fix, and no traceback.

Most cases run in-process (`runpytest_inprocess`: the same `main()`, exit code and output, without
paying a new interpreter and a torch import per case); a few run in a subprocess to prove, for
real, that a user's terminal shows no traceback. Every case's files are built once, on disk, from
the tiny world, so the plugin's real loaders read them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
FAST = ("--samples=2", "--steps=1", "--batch-size=2", "-p", "no:randomly",
        "-p", "no:cacheprovider", "--no-erasure-cache")


@dataclass(frozen=True)
class Bad:
    """One bad input: option overrides (`{bad}` / `{world}` are folders), what the error line must
    name (`what`) and the fix it must give (`fix`)."""

    id: str
    options: dict[str, str]
    what: str
    fix: str
    extra: tuple[str, ...] = ()
    ini: str | None = None
    env: tuple[tuple[str, str], ...] = ()


CATALOGUE: list[Bad] = [
    # -- paths: missing, empty, unreadable ---------------------------------------------------
    Bad("erased-missing", {"--erased-model": "{bad}/nowhere"},
        "--erased-model {bad}/nowhere: does not exist", "give the path of a local model"),
    Bad("standard-missing", {"--standard-model": "{bad}/nowhere"},
        "--standard-model {bad}/nowhere: does not exist", "give the path of a local model"),
    Bad("erased-empty-folder", {"--erased-model": "{bad}/empty"},
        "--erased-model {bad}/empty: is an empty folder", "give a folder that holds the model"),
    Bad("erased-empty-file", {"--erased-model": "{bad}/empty.safetensors"},
        "--erased-model {bad}/empty.safetensors: is an empty file", "fetch the file again"),
    Bad("concepts-missing", {"--concepts": "{bad}/nowhere.toml"},
        "concepts file {bad}/nowhere.toml: does not exist", "pass --concepts a TOML"),
    Bad("concepts-is-a-folder", {"--concepts": "{bad}/empty"},
        "concepts file {bad}/empty: does not exist or is not a file", "pass --concepts a TOML"),
    Bad("concepts-empty", {"--concepts": "{bad}/concepts/empty.toml"},
        "concepts file {bad}/concepts/empty.toml: declares no [[concept]]",
        "add at least one [[concept]]"),
    Bad("concepts-not-utf8", {"--concepts": "{bad}/concepts/binary.toml"},
        "concepts file {bad}/concepts/binary.toml: is not valid TOML", "fix the syntax"),
    Bad("concepts-bad-toml", {"--concepts": "{bad}/concepts/syntax.toml"},
        "concepts file {bad}/concepts/syntax.toml: is not valid TOML", "fix the syntax"),
    # -- folders that are not an SD v1 pipeline ----------------------------------------------
    Bad("erased-sdxl-pipeline", {"--erased-model": "{bad}/sdxl"},
        "--erased-model {bad}/sdxl: is a StableDiffusionXLPipeline folder, not a "
        "StableDiffusionPipeline", "give a Stable Diffusion v1-family model"),
    Bad("standard-sdxl-pipeline", {"--standard-model": "{bad}/sdxl"},
        "--standard-model {bad}/sdxl: is a StableDiffusionXLPipeline folder",
        "give a Stable Diffusion v1-family model"),
    Bad("erased-not-a-model-folder", {"--erased-model": "{bad}/bert"},
        "--erased-model {bad}/bert: is a folder of no known erased-model format",
        "name its format with --erased-format"),
    Bad("erased-tensors-of-another-model", {"--erased-model": "{bad}/bert.safetensors"},
        "--erased-model {bad}/bert.safetensors: holds tensors of no known erased-model format",
        "give UNet, text-encoder, LoRA, Receler or full-checkpoint weights"),
    Bad("standard-not-a-pipeline", {"--standard-model": "{bad}/bert"},
        "--standard-model {bad}/bert: is not a diffusers pipeline folder (no model_index.json)",
        "give the folder written by save_pretrained"),
    Bad("erased-unet-of-another-architecture", {"--erased-model": "{bad}/unet-sd2"},
        "--erased-model {bad}/unet-sd2: has a UNet with cross_attention_dim 64",
        "give an erased model made from this standard model"),
    # -- weight files: truncated, corrupt, not fitting --------------------------------------
    Bad("safetensors-truncated", {"--erased-model": "{bad}/truncated.safetensors"},
        "{bad}/truncated.safetensors: is not a valid safetensors file",
        "the file is truncated or corrupt; fetch it again"),
    Bad("safetensors-corrupt-header", {"--erased-model": "{bad}/corrupt.safetensors"},
        "{bad}/corrupt.safetensors: is not a valid safetensors file",
        "the file is truncated or corrupt; fetch it again"),
    Bad("pickle-garbage", {"--erased-model": "{bad}/garbage.pt"},
        "{bad}/garbage.pt: cannot be read as a weight file",
        "the file is truncated or not a PyTorch/safetensors file"),
    Bad("pickle-truncated", {"--erased-model": "{bad}/truncated.pt"},
        "{bad}/truncated.pt: cannot be read as a weight file",
        "the file is truncated or not a PyTorch/safetensors file"),
    Bad("unet-keys-do-not-fit", {"--erased-model": "{bad}/unet-keys.safetensors"},
        "--erased-model {bad}/unet-keys.safetensors: does not fit the standard UNet: 1 of 3 keys "
        "fit; 2 match no tensor", "give weights made for this standard model's UNet"),
    Bad("unet-shapes-do-not-fit", {"--erased-model": "{bad}/unet-shapes.safetensors"},
        "--erased-model {bad}/unet-shapes.safetensors: does not fit the standard UNet: 1 of 2 keys "
        "fit; 1 have another shape", "give weights made for this standard model's UNet"),
    Bad("lora-for-sdxl", {"--erased-model": "{bad}/lora-sdxl.safetensors"},
        "--erased-model {bad}/lora-sdxl.safetensors: is a LoRA for SDXL",
        "give a LoRA trained on this SD v1-family standard model"),
    Bad("lora-for-other-layers", {"--erased-model": "{bad}/lora-other.safetensors"},
        "--erased-model {bad}/lora-other.safetensors: 0 of 1 LoRA modules match a layer of the "
        "standard UNet", "give a LoRA trained on this SD v1-family standard model"),
    Bad("erased-format-unknown", {"--erased-format": "onnx"},
        "--erased-format: 'onnx' is not a known format", "use one of: diffusers"),
    # -- concepts files ------------------------------------------------------------------------
    Bad("concepts-unknown-key", {"--concepts": "{bad}/concepts/unknown-key.toml"},
        "concepts file {bad}/concepts/unknown-key.toml [[concept]] #1: has unknown key(s) promts",
        "use only: calibration, detector"),
    Bad("concepts-unknown-top-key", {"--concepts": "{bad}/concepts/unknown-top.toml"},
        "concepts file {bad}/concepts/unknown-top.toml: has unknown key(s) treshold",
        "use only: concept, defaults"),
    Bad("concepts-prompts-wrong-type", {"--concepts": "{bad}/concepts/prompts-type.toml"},
        "('circle') prompts: is 'a {concept}'", "give a list of strings"),
    Bad("concepts-erased-wrong-type", {"--concepts": "{bad}/concepts/erased-type.toml"},
        "('circle') erased: is 'yes'", "write true or false"),
    Bad("concepts-duplicate", {"--concepts": "{bad}/concepts/duplicate.toml"},
        "concepts file {bad}/concepts/duplicate.toml concept 'circle': is declared twice",
        "keep one [[concept]] per name"),
    Bad("concepts-threshold-above-1", {"--concepts": "{bad}/concepts/threshold-high.toml"},
        "('circle') threshold: is 1.5", "give a number between 0 and 1"),
    Bad("concepts-threshold-below-0", {"--concepts": "{bad}/concepts/threshold-low.toml"},
        "concepts file {bad}/concepts/threshold-low.toml [thresholds].text: is -0.1",
        "give a number between 0 and 1"),
    Bad("concepts-template-without-placeholder", {"--concepts": "{bad}/concepts/template.toml"},
        "('circle') prompt 'a round thing': lacks {concept}",
        "write the concept as {concept} in every template"),
    Bad("concepts-retain-unknown", {"--concepts": "{bad}/concepts/retain.toml"},
        "concept 'circle' retain: names unknown concept 'hexagon'", "declare it as a [[concept]]"),
    Bad("concepts-nothing-erased", {"--concepts": "{bad}/concepts/none-erased.toml"},
        "{bad}/concepts/none-erased.toml: has no concept with erased = true",
        "mark the concept(s) the model erased"),
    # -- reference folders (checked because latent cases are selected) ----------------------
    Bad("references-non-image", {"--concepts": "{bad}/concepts/refs-non-image.toml",
                                 "--scenarios": "latent"},
        "reference folder of concept 'circle': notes.txt: is not an image file",
        "keep only images"),
    Bad("references-unreadable-image", {"--concepts": "{bad}/concepts/refs-broken.toml",
                                        "--scenarios": "latent"},
        "reference folder of concept 'circle': 1.png: cannot be read", "replace or remove the file"),
    Bad("references-mixed-sizes", {"--concepts": "{bad}/concepts/refs-mixed.toml",
                                   "--scenarios": "latent-white-null"},
        "reference folder of concept 'circle' {bad}/refs/mixed: mixes image sizes",
        "give every reference image the same size"),
    Bad("references-empty", {"--concepts": "{bad}/concepts/refs-empty.toml",
                             "--scenarios": "embedding"},
        "reference folder of concept 'circle' {bad}/refs/empty: is empty",
        "add PNG/JPEG reference images"),
    Bad("references-missing", {"--concepts": "{bad}/concepts/refs-missing.toml",
                               "--scenarios": "latent,text"},
        "reference folder of concept 'circle' {bad}/refs/nowhere: does not exist",
        "create it and put the concept's reference images in it"),
    Bad("references-escape-the-tree", {"--concepts": "{bad}/concepts/refs-escape.toml"},
        "('circle') references: '../../../etc' leaves the concepts file's folder tree",
        "use a path inside it, or an absolute path"),
    # -- device, dtype, counts, workers, ini ----------------------------------------------------
    Bad("device-cuda-on-cpu-machine", {"--device": "cuda"},
        "--device: 'cuda' needs CUDA, which is not available here", "use --device cpu"),
    Bad("device-banana", {"--device": "banana"},
        "--device: 'banana' is not a torch device", "use cpu, cuda, cuda:N or mps"),
    Bad("dtype-float8", {"--dtype": "float8"},
        "--dtype: 'float8' is not supported", "use one of: float32, float16, bfloat16"),
    Bad("samples-zero", {"--samples": "0"}, "--samples: is 0", "give a whole number >= 1"),
    Bad("batch-size-zero", {"--batch-size": "0"}, "--batch-size: is 0", "give a whole number >= 1"),
    Bad("crr-threshold-above-1", {"--crr-threshold": "1.5"},
        "--crr-threshold: is 1.5", "give a number between 0 and 1"),
    Bad("scenario-unknown", {"--scenarios": "telepathy"},
        "--scenarios: names unknown scenario(s) telepathy", "use ids or modalities from:"),
    Bad("gate-unknown", {"--erasure-gate": "maybe"},
        "--erasure-gate: 'maybe' is not a gate rule", "use one of: point, upper"),
    Bad("more-workers-than-devices", {"--device": "cuda"},
        "-n 2: asks for more workers than the 1 device(s) in CUDA_VISIBLE_DEVICES=0",
        "use -n 1 or list more devices", extra=("-n", "2"),
        env=(("CUDA_VISIBLE_DEVICES", "0"),)),
    Bad("ini-samples-not-a-number", {}, "--samples: 'many' is not a whole number", "give a whole number",
        ini="erasure_samples = many"),
    Bad("ini-threshold-not-a-number", {}, "--crr-threshold: 'high' is not a number",
        "give a number", ini="erasure_crr_threshold = high"),
    Bad("ini-gate-unknown", {}, "--erasure-gate: 'strict' is not a gate rule",
        "use one of: point, upper", ini="erasure_gate = strict"),
    Bad("budget-unknown", {"--erasure-budget": "huge"},
        "--erasure-budget: 'huge' is not a budget profile", "use one of: shapes, sd14"),
    Bad("ini-budget-unknown", {}, "--erasure-budget: 'sd15' is not a budget profile",
        "use one of: shapes, sd14", ini="erasure_budget = sd15"),
]

# Run in a fresh interpreter: the user's view, imports and all (the rest run in-process).
SUBPROCESS = {"erased-missing", "safetensors-truncated", "unet-keys-do-not-fit",
              "erased-sdxl-pipeline", "concepts-unknown-key", "references-mixed-sizes",
              "device-cuda-on-cpu-machine", "more-workers-than-devices",
              "ini-samples-not-a-number"}

CONCEPT = """
[[concept]]
name = "circle"
detector = "pytest_erasure.testing:build_brightness_detector"
prompts = ["a {concept}"]
"""


def _concepts(extra: str = "", more: str = "", top: str = "", prompts: str | None = None) -> str:
    concept = CONCEPT + extra + "\n"
    if prompts is not None:
        concept = concept.replace('["a {concept}"]', prompts)
    return top + concept + more


def build_bad_inputs(world: dict[str, Path], root: Path) -> Path:
    """Write every bad input of the catalogue under `root`."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file

    (root / "empty").mkdir()
    (root / "empty.safetensors").touch()

    # An SDXL pipeline folder: model_index.json names another pipeline.
    sdxl = root / "sdxl"
    shutil.copytree(world["standard"], sdxl)
    index = json.loads((sdxl / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionXLPipeline",
                 text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                 tokenizer_2=["transformers", "CLIPTokenizer"])
    (sdxl / "model_index.json").write_text(json.dumps(index))
    # A model folder that is no diffusion model at all (a BERT checkpoint's config).
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert",
                                                  "architectures": ["BertModel"]}))
    save_file({"embeddings.word_embeddings.weight": torch.zeros(4, 2),
               "encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2)},
              str(root / "bert.safetensors"))
    # A UNet folder of another architecture (SD 2-like: another cross-attention width).
    unet_sd2 = root / "unet-sd2"
    shutil.copytree(world["standard"] / "unet", unet_sd2)
    config = json.loads((unet_sd2 / "config.json").read_text())
    config["cross_attention_dim"] = 64
    (unet_sd2 / "config.json").write_text(json.dumps(config))

    unet_file = world["standard"] / "unet" / "diffusion_pytorch_model.safetensors"
    data = unet_file.read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "corrupt.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{garbage")
    (root / "garbage.pt").write_bytes(b"hello world\n" * 20)
    torch.save({"conv_in.weight": torch.zeros(64, 4, 3, 3)}, root / "full.pt")
    data = (root / "full.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])

    unet = load_file(str(unet_file))
    conv = "down_blocks.0.resnets.0.conv1.weight"
    save_file({conv: unet[conv], "down_blocks.0.bogus.weight": torch.zeros(3),
               "up_blocks.9.attentions.0.proj_in.weight": torch.zeros(3)},
              str(root / "unet-keys.safetensors"))
    save_file({conv: unet[conv], "conv_in.weight": torch.zeros(7, 4, 3, 3)},
              str(root / "unet-shapes.safetensors"))
    save_file({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
               torch.zeros(1, 32),
               "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight":
               torch.zeros(32, 1)}, str(root / "lora-sdxl.safetensors"))
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(1, 320),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(320, 1)},
              str(root / "lora-other.safetensors"))

    refs = root / "refs"
    for name in ("non-image", "broken", "mixed", "empty"):
        (refs / name).mkdir(parents=True)
    rng = np.random.default_rng(0)

    def png(path: Path, size: int) -> None:
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)

    png(refs / "non-image" / "0.png", 32)
    (refs / "non-image" / "notes.txt").write_text("not an image")
    png(refs / "broken" / "0.png", 32)
    (refs / "broken" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    png(refs / "mixed" / "0.png", 32)
    png(refs / "mixed" / "1.png", 48)

    concepts = root / "concepts"
    (concepts / "nested").mkdir(parents=True)
    files = {
        "empty.toml": "",
        "syntax.toml": "[[concept]\nname = 'circle'\n",
        "unknown-key.toml": _concepts("promts = ['a {concept}']"),
        "unknown-top.toml": _concepts(top="treshold = 0.2\n"),
        "prompts-type.toml": _concepts(prompts='"a {concept}"'),
        "erased-type.toml": _concepts('erased = "yes"'),
        "duplicate.toml": _concepts(more=CONCEPT),
        "threshold-high.toml": _concepts("threshold = 1.5"),
        "threshold-low.toml": _concepts(top="[thresholds]\ntext = -0.1\n"),
        "template.toml": _concepts(prompts='["a {concept}", "a round thing"]'),
        "retain.toml": _concepts('retain = ["hexagon"]'),
        "none-erased.toml": _concepts("erased = false"),
        "refs-non-image.toml": _concepts(f'references = "{refs / "non-image"}"'),
        "refs-broken.toml": _concepts(f'references = "{refs / "broken"}"'),
        "refs-mixed.toml": _concepts(f'references = "{refs / "mixed"}"'),
        "refs-empty.toml": _concepts(f'references = "{refs / "empty"}"'),
        "refs-missing.toml": _concepts(f'references = "{refs / "nowhere"}"'),
        "refs-escape.toml": _concepts('references = "../../../etc"'),
    }
    for name, text in files.items():
        (concepts / name).write_text(text)
    (concepts / "binary.toml").write_bytes(b"\xff\xfe\x00name = \x9c")
    return root


@pytest.fixture(scope="module")
def bad_root(tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bad_inputs(tiny_world, tmp_path_factory.mktemp("bad"))


def _args(world: dict[str, Path], bad: Bad, bad_root: Path) -> list[str]:
    options = {"--standard-model": str(world["standard"]),
               "--erased-model": str(world["erased"]),
               "--concepts": str(world["concepts"]), "--scenarios": "text"}
    options.update({k: v.replace("{bad}", str(bad_root)) for k, v in bad.options.items()})
    fast = [a for a in FAST if a.split("=")[0] not in bad.options]
    if bad.ini:  # an ini value counts only where the command line leaves the option unset
        from pytest_erasure.config import OPTIONS

        dest = bad.ini.split("=")[0].strip()
        flag = next(o.flag for o in OPTIONS if o.dest == dest)
        fast = [a for a in fast if a.split("=")[0] != flag]
    # --flag=value: pytest takes a bare value that follows an option it does not know yet (ours
    # load after the ini file is found) for a path, and would look for the ini file beside it.
    return [f"{k}={v}" for k, v in options.items()] + fast + list(bad.extra)


def assert_usage_error(result: pytest.RunResult, what: str, fix: str) -> None:
    """Exit 4, stderr is one `ERROR:` line naming the input and the fix, no traceback anywhere."""
    out, err = result.stdout.str(), result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, (result.ret, out[-3000:], err[-3000:])
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ERROR: "), err
    line = errors[0]
    assert what in line, f"the error line does not name the input:\n{line}\nwanted: {what}"
    assert fix in line, f"the error line gives no fix:\n{line}\nwanted: {fix}"
    assert "Traceback" not in out + err, out + err


@pytest.mark.parametrize("bad", CATALOGUE, ids=[b.id for b in CATALOGUE])
def test_bad_input_is_one_usage_error_line(bad: Bad, pytester: pytest.Pytester,
                                           tiny_world: dict[str, Path], bad_root: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    if bad.ini:
        pytester.makeini(f"[pytest]\n{bad.ini}\n")
    for name, value in bad.env:
        monkeypatch.setenv(name, value)
    args = _args(tiny_world, bad, bad_root)
    if bad.id in SUBPROCESS:
        result = pytester.runpytest_subprocess(*args)
    else:
        result = pytester.runpytest_inprocess(*args)
    assert_usage_error(result, bad.what.replace("{bad}", str(bad_root)), bad.fix)


def test_catalogue_size() -> None:
    assert len(CATALOGUE) >= 25
    assert len({b.id for b in CATALOGUE}) == len(CATALOGUE)


def test_references_are_checked_only_when_a_scenario_needs_them(
        pytester: pytest.Pytester, tiny_world: dict[str, Path], bad_root: Path) -> None:
    """A broken reference folder does not stop an audit that never reads it (text only)."""
    pytester.makepyfile(test_audit=AUDIT)
    bad = Bad("refs-unused", {"--concepts": "{bad}/concepts/refs-mixed.toml",
                              "--scenarios": "text,baseline"}, "", "")
    result = pytester.runpytest_inprocess(*_args(tiny_world, bad, bad_root), "--co", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    result.stdout.fnmatch_lines(["*[[]circle-baseline[]]", "*[[]circle-text[]]"])


def test_unreadable_concepts_file(pytester: pytest.Pytester, tiny_world: dict[str, Path],
                                  bad_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000; root reads anything, so there the read's PermissionError is simulated."""
    concepts = pytester.path / "secret.toml"
    concepts.write_text((bad_root / "concepts" / "threshold-high.toml").read_text())
    concepts.chmod(0)
    if os.geteuid() == 0:
        real = Path.read_text

        def read_text(self: Path, *args: object, **kwargs: object) -> str:
            if self == concepts:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "read_text", read_text)
    pytester.makepyfile(test_audit=AUDIT)
    bad = Bad("concepts-unreadable", {"--concepts": str(concepts)}, "", "")
    result = pytester.runpytest_inprocess(*_args(tiny_world, bad, bad_root))
    assert_usage_error(result, f"concepts file {concepts}: cannot be read (Permission denied)",
                       "check the file's permissions")
