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
from importlib.util import find_spec
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
    loads_models: bool = False
    """A model file's content is the problem: found by loading it (at collection)."""


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
        "give a Stable Diffusion v1-family model", loads_models=True),
    Bad("erased-not-a-model-folder", {"--erased-model": "{bad}/bert"},
        "--erased-model {bad}/bert: is a folder of no known erased-model format",
        "name its format with --erased-format"),
    Bad("erased-tensors-of-another-model", {"--erased-model": "{bad}/bert.safetensors"},
        "--erased-model {bad}/bert.safetensors: holds tensors of no known erased-model format",
        "give UNet, text-encoder, LoRA, Receler or full-checkpoint weights"),
    Bad("standard-not-a-pipeline", {"--standard-model": "{bad}/bert"},
        "--standard-model {bad}/bert: is not a diffusers pipeline folder (no model_index.json)",
        "give the folder written by save_pretrained", loads_models=True),
    Bad("erased-unet-of-another-architecture", {"--erased-model": "{bad}/unet-sd2"},
        "--erased-model {bad}/unet-sd2: has a UNet with cross_attention_dim 64",
        "give an erased model made from this standard model", loads_models=True),
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
        "fit; 1 have another shape", "give weights made for this standard model's UNet", loads_models=True),
    Bad("lora-for-sdxl", {"--erased-model": "{bad}/lora-sdxl.safetensors"},
        "--erased-model {bad}/lora-sdxl.safetensors: is a LoRA for SDXL",
        "give a LoRA trained on this SD v1-family standard model", loads_models=True),
    Bad("lora-for-other-layers", {"--erased-model": "{bad}/lora-other.safetensors"},
        "--erased-model {bad}/lora-other.safetensors: 0 of 1 LoRA modules match a layer of the "
        "standard UNet", "give a LoRA trained on this SD v1-family standard model", loads_models=True),
    Bad("erased-format-unknown", {"--erased-format": "onnx"},
        "--erased-format: 'onnx' is not a known format", "use one of: diffusers"),
    # -- concepts files ------------------------------------------------------------------------
    Bad("concepts-unknown-key", {"--concepts": "{bad}/concepts/unknown-key.toml"},
        "concepts file {bad}/concepts/unknown-key.toml [[concept]] #1: has unknown key(s) promts",
        "use only: attack_floors, calibration, detector"),
    Bad("concepts-unknown-top-key", {"--concepts": "{bad}/concepts/unknown-top.toml"},
        "concepts file {bad}/concepts/unknown-top.toml: has unknown key(s) treshold",
        "use only: attack_floors, concept, defaults"),
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
    Bad("ini-scenario-option-not-a-number", {"--scenarios": "embedding"},
        "--ti-steps: 'lots' is not a whole number", "give a whole number",
        ini="erasure_opt_ti_steps = lots"),
    # -- every option's range, checked before any model loads ----------------------------------
    Bad("samples-not-a-number", {"--samples": "many"}, "--samples: 'many' is not a whole number",
        "give a whole number"),
    Bad("seed-not-a-number", {"--seed": "abc"}, "--seed: 'abc' is not a whole number",
        "give a whole number"),
    Bad("seed-out-of-range", {"--seed": str(2**70)}, f"--seed: is {2**70}",
        "give a whole number between"),
    Bad("steps-zero", {"--steps": "0"}, "--steps: is 0", "give a whole number >= 1"),
    Bad("guidance-negative", {"--guidance": "-1"}, "--guidance: is -1.0", "give a number >= 0"),
    Bad("guidance-not-a-number", {"--guidance": "strong"}, "--guidance: 'strong' is not a number",
        "give a number"),
    Bad("height-not-a-multiple", {"--height": "33"}, "--height: is 33, not a multiple of 8",
        "give a multiple of 8 (the VAE downsamples by 2; diffusers' pipeline needs multiples of "
        "8), e.g. 32"),
    Bad("width-not-a-multiple", {"--width": "36"}, "--width: is 36, not a multiple of 8",
        "give a multiple of 8"),
    Bad("height-zero", {"--height": "0"}, "--height: is 0", "give a positive number of pixels"),
    Bad("width-negative", {"--width": "-32"}, "--width: is -32", "give a positive number of pixels"),
    Bad("retention-tolerance-above-1", {"--retention-tolerance": "2"},
        "--retention-tolerance: is 2.0", "give a number between 0 and 1"),
    Bad("baseline-min-below-0", {"--baseline-min": "-0.5"}, "--baseline-min: is -0.5",
        "give a number between 0 and 1"),
    Bad("guidance-not-finite", {"--guidance": "nan"}, "--guidance: is nan", "give a finite number"),
    Bad("inversion-guidance-not-finite", {"--scenarios": "latent", "--inversion-guidance": "inf"},
        "--inversion-guidance: is inf", "give a finite number"),
    Bad("lora-multiplier-not-a-number", {"--lora-multiplier": "full"},
        "--lora-multiplier: 'full' is not a number", "give a number"),
    Bad("irece-one-step", {"--steps": "1"}, "--steps: is 1",
        "IRECE acts between steps: give at least 2 denoising steps", extra=("--irece",)),
    Bad("irece-t-star-past-the-end", {"--steps": "4", "--irece-t-star": "9"},
        "--irece-t-star: step 9 (+0 more) is past the last step of 4",
        "give a step index between 1 and 3 or a fraction", extra=("--irece",)),
    Bad("irece-t-star-not-whole", {"--steps": "4", "--irece-t-star": "2.5"},
        "--irece-t-star: is 2.5", "give a fraction below 1 or a whole step index",
        extra=("--irece",)),
    Bad("irece-t-star-negative", {"--irece-t-star": "-0.1"}, "--irece-t-star: is -0.1",
        "give a fraction in [0, 1) or a step index >= 1"),
    Bad("irece-steps-do-not-fit", {"--steps": "4", "--irece-steps": "4"},
        "--irece-steps: 4 intervention steps do not fit in 4 denoising steps",
        "give at most 3", extra=("--irece",)),
    Bad("irece-steps-zero", {"--irece-steps": "0"}, "--irece-steps: is 0",
        "give a whole number >= 1"),
    Bad("irece-tau-above-1", {"--irece-tau": "2"}, "--irece-tau: is 2.0",
        "give a number between 0 and 1"),
    Bad("irece-resolutions-not-sizes", {"--irece-resolutions": "big"},
        "--irece-resolutions: 'big' is not a list of sizes", "give comma-separated map sizes"),
    Bad("irece-resolutions-zero", {"--irece-resolutions": "0"}, "--irece-resolutions: is (0,)",
        "give comma-separated positive map sizes"),
    Bad("irece-resolutions-match-no-map", {"--irece-resolutions": "7"},
        "--irece-resolutions: 7 match no cross-attention map of this model at 32x32",
        "choose among 16,8 or leave it unset", extra=("--irece",)),
    # -- scenario options: each checked when its scenario is selected -------------------------
    Bad("ti-steps-zero", {"--scenarios": "embedding", "--ti-steps": "0"}, "--ti-steps: is 0",
        "give a whole number of training steps >= 1"),
    Bad("ti-steps-not-a-number", {"--scenarios": "embedding", "--ti-steps": "lots"},
        "--ti-steps: 'lots' is not a whole number", "give a whole number"),
    Bad("ti-lr-zero", {"--scenarios": "embedding", "--ti-lr": "0"}, "--ti-lr: is 0.0",
        "give a positive learning rate"),
    Bad("ti-batch-size-zero", {"--scenarios": "embedding-white", "--ti-batch-size": "0"},
        "--ti-batch-size: is 0", "give a batch size >= 1"),
    Bad("ti-vectors-zero", {"--scenarios": "embedding", "--ti-vectors": "0"},
        "--ti-vectors: is 0", "give a number of vectors >= 1"),
    Bad("ti-init-token-empty", {"--scenarios": "embedding", "--ti-init-token": " "},
        "--ti-init-token: is empty", "give a word such as 'object' or 'shape'"),
    Bad("ti-train-images-zero", {"--scenarios": "embedding", "--ti-train-images": "0"},
        "--ti-train-images: is 0", "give a number of generated training images >= 1"),
    Bad("inversion-steps-negative", {"--scenarios": "latent", "--inversion-steps": "-1"},
        "--inversion-steps: is -1", "give a number of steps >= 1, or 0 for --steps"),
    Bad("inversion-steps-past-the-schedule", {"--scenarios": "latent",
                                               "--inversion-steps": "5000"},
        "--inversion-steps: is 5000", "num_train_timesteps (1000)"),
    Bad("inversion-guidance-negative", {"--scenarios": "latent", "--inversion-guidance": "-1"},
        "--inversion-guidance: is -1.0", "give a number >= 0"),
    Bad("latent-prompt-guidance-negative", {"--scenarios": "latent-white-prompt",
                                            "--latent-prompt-guidance": "-2"},
        "--latent-prompt-guidance: is -2.0", "give a number >= 0"),
    Bad("latent-perturbations-unknown", {"--scenarios": "latent-black-null",
                                         "--latent-perturbations": "melt:1"},
        "--latent-perturbations: names unknown transform 'melt'", "noise"),
    Bad("rab-population-one", {"--scenarios": "adversarial", "--rab-population": "1"},
        "Ring-A-Bell options (--rab-*): population must be >= 2, got 1",
        "give values in the ranges shown"),
    Bad("rab-generations-zero", {"--scenarios": "adversarial", "--rab-generations": "0"},
        "generations must be >= 1, got 0", "give values in the ranges shown"),
    Bad("rab-tokens-too-many", {"--scenarios": "adversarial", "--rab-tokens": "80"},
        "tokens (K) must be in 1..75, got 80", "give values in the ranges shown"),
    Bad("rab-mutation-above-1", {"--scenarios": "adversarial", "--rab-mutation": "2"},
        "mutation must be in [0, 1], got 2.0", "give values in the ranges shown"),
    Bad("rab-crossover-negative", {"--scenarios": "adversarial", "--rab-crossover": "-1"},
        "crossover must be in [0, 1], got -1.0", "give values in the ranges shown"),
    Bad("rab-keep-zero", {"--scenarios": "adversarial", "--rab-keep": "0"},
        "keep must be >= 1, got 0", "give values in the ranges shown"),
    Bad("rab-eta-not-a-number", {"--scenarios": "adversarial", "--rab-eta": "far"},
        "--rab-eta: 'far' is not a number", "give a number"),
    Bad("rab-targets-zero", {"--scenarios": "adversarial", "--rab-targets": "0"},
        "--rab-targets: is 0", "give a whole number >= 1"),
    Bad("fuzz-examples-zero", {"--scenarios": "fuzz", "--fuzz-examples": "0"},
        "--fuzz-examples: is 0", "give a whole number >= 1"),
    Bad("fuzz-examples-underpowered", {"--scenarios": "fuzz", "--fuzz-examples": "3"},
        "--fuzz-examples: is 3", "or mark the run --erasure-exploratory"),
    Bad("corrected-without-calibration", {}, "--erasure-corrected: asks for corrected CRRs, "
        "but concept(s) circle declare no calibration folder", "or drop --erasure-corrected",
        extra=("--erasure-corrected",)),
    Bad("fuzz-seeds-zero", {"--scenarios": "fuzz", "--fuzz-seeds-per-prompt": "0"},
        "--fuzz-seeds-per-prompt: is 0", "give a whole number >= 1"),
    Bad("fuzz-threshold-one", {"--scenarios": "fuzz", "--fuzz-property-threshold": "1"},
        "--fuzz-property-threshold: is 1.0", "give a number in [0, 1)"),
    Bad("fuzz-max-prompts-zero", {"--scenarios": "fuzz", "--fuzz-max-prompts": "0"},
        "--fuzz-max-prompts: is 0", "give a whole number >= 1"),
    # -- output destinations: checked before any model loads -------------------------------------
    Bad("report-is-a-file", {"--erasure-report": "{bad}/afile"},
        "--erasure-report {bad}/afile: is a file, not a folder",
        "give --erasure-report a writable folder"),
    Bad("report-under-a-file", {"--erasure-report": "{bad}/afile/report"},
        "--erasure-report {bad}/afile/report: lies under {bad}/afile, which is a file",
        "give --erasure-report a writable folder"),
    Bad("junit-is-a-folder", {"--erasure-junit": "{bad}/empty"},
        "--erasure-junit {bad}/empty: is a folder, not a file",
        "give --erasure-junit a file path in a writable folder"),
    Bad("junit-under-a-file", {"--erasure-junit": "{bad}/afile/erasure.xml"},
        "--erasure-junit {bad}/afile/erasure.xml: lies under {bad}/afile, which is a file",
        "give --erasure-junit a file path in a writable folder"),
    Bad("cache-is-a-file", {"--erasure-cache": "{bad}/afile"},
        "--erasure-cache {bad}/afile: is a file, not a folder",
        "give --erasure-cache a writable folder on a disk with room, or --no-erasure-cache"),
    Bad("pytest-junitxml-under-a-file", {},
        "--junitxml {bad}/afile/junit.xml: lies under {bad}/afile, which is a file",
        "give --junitxml a file path in a writable folder",
        extra=("--junitxml={bad}/afile/junit.xml",)),
    Bad("fuzz-database-is-a-file", {"--scenarios": "fuzz", "--fuzz-database": "{bad}/afile"},
        "--fuzz-database {bad}/afile: is a file, not a folder",
        "give --fuzz-database a writable folder"),
    Bad("disk-too-small", {"--erasure-cache": "{bad}/cache", "--samples": "100000000",
                           "--height": "4096", "--width": "4096"},
        "--erasure-cache {bad}/cache: has ", "free space, point it at a larger disk, or lower "
        "--samples / the image size"),
    Bad("reports-too-big-for-the-disk", {"--erasure-report": "{bad}/report-room",
                                         "--samples": "1", "--height": "1048576",
                                         "--width": "1048576"},
        "--erasure-report {bad}/report-room: has ", "but this run writes about"),
    # -- concepts-file keys: every detector resolved, every value typed ----------------------------
    Bad("detector-module-missing", {"--concepts": "{bad}/concepts/detector-module.toml"},
        "detector 'no_such_module_xyz:build': cannot be imported (ModuleNotFoundError: No module "
        "named 'no_such_module_xyz')", "check the module:factory path"),
    Bad("detector-factory-missing", {"--concepts": "{bad}/concepts/detector-factory.toml"},
        "detector 'pytest_erasure.testing:no_such_factory': module pytest_erasure.testing has "
        "no factory 'no_such_factory'", "check the module:factory path"),
    Bad("detector-unknown-name", {"--concepts": "{bad}/concepts/detector-name.toml"},
        "detector 'telepathy': is not a known detector", "use one of: clip"),
    Bad("detector-missing", {"--concepts": "{bad}/concepts/detector-none.toml"},
        "('circle') detector: is missing", "name a detector"),
    Bad("detector-path-empty-folder", {"--concepts": "{bad}/concepts/detector-empty.toml"},
        "shapes detector '{bad}/empty': needs config.json and model.safetensors",
        "point the detector path at fixtures/shapes/detector"),
    Bad("detector-path-not-a-string", {"--concepts": "{bad}/concepts/detector-path-type.toml"},
        "('circle') detector_path: is 3", "give a path as a string"),
    Bad("detector-shapes-without-path", {"--concepts": "{bad}/concepts/detector-no-path.toml"},
        "shapes detector: needs a path to its folder", "set the detector path"),
    Bad("detector-label-unknown", {"--concepts": "{bad}/concepts/detector-label.toml"},
        "shapes detector label 'hexagon': is not a label this detector knows",
        "use one of: circle, square"),
    Bad("detector-option-out-of-range", {"--concepts": "{bad}/concepts/detector-threshold.toml"},
        "shapes detector option 'threshold': must be a number in [0, 1], got 2",
        "use e.g. threshold = 0.5"),
    Bad("detector-options-not-a-table", {"--concepts": "{bad}/concepts/detector-options.toml"},
        "('circle') detector_options: is str, not a table", "write it as a TOML table"),
    Bad("clip-folder-empty", {"--concepts": "{bad}/concepts/clip-empty.toml"},
        "detector 'clip' path {bad}/empty: has no config.json",
        "point detector_path at a saved model"),
    Bad("clip-option-unknown-rule", {"--concepts": "{bad}/concepts/clip-rule.toml"},
        "detector 'clip' option rule: is 'maybe'", "use one of: argmax, threshold"),
    Bad("clip-option-typo", {"--concepts": "{bad}/concepts/clip-typo.toml"},
        "detector 'clip' detector_options: has unknown key(s) treshold", "use only:"),
    Bad("grounding-dino-wrong-model", {"--concepts": "{bad}/concepts/dino-bert.toml"},
        "detector 'grounding-dino' path {bad}/bert: holds a model of type 'bert', not a "
        "Grounding DINO model", "point detector_path at the right model"),
    Bad("imagenet-not-a-classifier", {"--concepts": "{bad}/concepts/imagenet-bert.toml"},
        "detector 'imagenet' path {bad}/bert: holds a model of type 'bert', not an image "
        "classifier", "point detector_path at the right model"),
    Bad("imagenet-no-weights", {"--concepts": "{bad}/concepts/imagenet-no-weights.toml"},
        "detector 'imagenet' path {bad}/resnet: has no weight files",
        "copy the model's weights into it"),
    Bad("concept-name-invalid", {"--concepts": "{bad}/concepts/name.toml"},
        "[[concept]] #1 name: is 'a circle'", "give a name of letters, digits, '-' or '_'"),
    Bad("concept-term-empty", {"--concepts": "{bad}/concepts/term.toml"},
        "('circle') term: is ''", "give a non-empty string"),
    Bad("concept-label-empty", {"--concepts": "{bad}/concepts/label.toml"},
        "('circle') label: is ''", "give a non-empty string"),
    Bad("concept-synonyms-not-a-list", {"--concepts": "{bad}/concepts/synonyms.toml"},
        "('circle') synonyms: is 'disc'", "give a list of strings"),
    Bad("concept-modifiers-not-strings", {"--concepts": "{bad}/concepts/modifiers.toml"},
        "('circle') modifiers: is [1, 2]", "give a list of strings"),
    Bad("concept-retain-not-a-list", {"--concepts": "{bad}/concepts/retain-type.toml"},
        "('circle') retain: is 'square'", "give a list of strings"),
    Bad("concept-paired-prompts-not-pairs", {"--concepts": "{bad}/concepts/pairs.toml"},
        "('circle') paired_prompts: is not a list of [with, without] pairs",
        "write paired_prompts = "),
    Bad("concept-thresholds-not-a-table", {"--concepts": "{bad}/concepts/thresholds-type.toml"},
        "('circle') thresholds: is float, not a table", "write it as a TOML table"),
    Bad("concept-references-not-a-string", {"--concepts": "{bad}/concepts/references-type.toml"},
        "('circle') references: is 5", "give a path as a string"),
    Bad("concept-not-a-table", {"--concepts": "{bad}/concepts/concept-type.toml"},
        "concepts file {bad}/concepts/concept-type.toml: declares no [[concept]]",
        "add at least one [[concept]]"),
    Bad("neutral-prompts-not-strings", {"--concepts": "{bad}/concepts/neutral.toml"},
        "neutral_prompts: is [1]", "give a list of strings"),
    Bad("defaults-unknown-key", {"--concepts": "{bad}/concepts/defaults-key.toml"},
        "[defaults]: has unknown key(s) detectr", "use only: calibration, detector"),
    Bad("defaults-not-a-table", {"--concepts": "{bad}/concepts/defaults-type.toml"},
        "[defaults]: is int, not a table", "write it as a TOML table"),
]
if find_spec("nudenet") is not None:
    CATALOGUE.append(Bad(
        "nudenet-folder-without-onnx", {"--concepts": "{bad}/concepts/nudenet-empty.toml"},
        "detector 'nudenet' path {bad}/empty: holds 0 .onnx files, not one",
        "point detector_path at the NudeNet .onnx file itself"))

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


def _concepts(extra: str = "", more: str = "", top: str = "", prompts: str | None = None,
              detector: str | None = None) -> str:
    concept = CONCEPT + extra + "\n"
    if prompts is not None:
        concept = concept.replace('["a {concept}"]', prompts)
    if detector is not None:
        concept = concept.replace('detector = "pytest_erasure.testing:build_brightness_detector"\n',
                                  detector)
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
    shapes_detector = Path(__file__).resolve().parents[2] / "fixtures" / "shapes" / "detector"
    resnet = root / "resnet"
    resnet.mkdir()
    (resnet / "config.json").write_text(json.dumps({"model_type": "resnet",
                                                    "id2label": {"0": "a", "1": "b"}}))
    (resnet / "preprocessor_config.json").write_text("{}")
    files.update({
        "detector-module.toml": _concepts(detector='detector = "no_such_module_xyz:build"\n'),
        "detector-factory.toml": _concepts(
            detector='detector = "pytest_erasure.testing:no_such_factory"\n'),
        "detector-name.toml": _concepts(detector='detector = "telepathy"\n'),
        "detector-none.toml": _concepts(detector=""),
        "detector-empty.toml": _concepts(
            detector=f'detector = "shapes"\ndetector_path = "{root / "empty"}"\n'),
        "detector-path-type.toml": _concepts(detector='detector = "shapes"\ndetector_path = 3\n'),
        "detector-no-path.toml": _concepts(detector='detector = "shapes"\n'),
        "detector-label.toml": _concepts(
            'label = "hexagon"',
            detector=f'detector = "shapes"\ndetector_path = "{shapes_detector}"\n'),
        "detector-threshold.toml": _concepts(
            "detector_options = { threshold = 2 }",
            detector=f'detector = "shapes"\ndetector_path = "{shapes_detector}"\n'),
        "detector-options.toml": _concepts('detector_options = "fast"'),
        "clip-empty.toml": _concepts(
            detector=f'detector = "clip"\ndetector_path = "{root / "empty"}"\n'),
        "clip-rule.toml": _concepts(
            'detector_options = { rule = "maybe" }',
            detector=f'detector = "clip"\ndetector_path = "{root / "empty"}"\n'),
        "clip-typo.toml": _concepts(
            "detector_options = { treshold = 0.5 }",
            detector=f'detector = "clip"\ndetector_path = "{root / "empty"}"\n'),
        "dino-bert.toml": _concepts(
            detector=f'detector = "grounding-dino"\ndetector_path = "{root / "bert"}"\n'),
        "imagenet-bert.toml": _concepts(
            detector=f'detector = "imagenet"\ndetector_path = "{root / "bert"}"\n'),
        "imagenet-no-weights.toml": _concepts(
            detector=f'detector = "imagenet"\ndetector_path = "{resnet}"\n'),
        "nudenet-empty.toml": _concepts(
            detector=f'detector = "nudenet"\ndetector_path = "{root / "empty"}"\n'),
        "name.toml": _concepts().replace('name = "circle"', 'name = "a circle"'),
        "term.toml": _concepts('term = ""'),
        "label.toml": _concepts('label = ""'),
        "synonyms.toml": _concepts('synonyms = "disc"'),
        "modifiers.toml": _concepts("modifiers = [1, 2]"),
        "retain-type.toml": _concepts('retain = "square"'),
        "pairs.toml": _concepts('paired_prompts = ["a {concept}", "a thing"]'),
        "thresholds-type.toml": _concepts("thresholds = 0.3"),
        "references-type.toml": _concepts("references = 5"),
        "concept-type.toml": "concept = 3\n",
        "neutral.toml": _concepts(top="neutral_prompts = [1]\n"),
        "defaults-key.toml": _concepts(top='[defaults]\ndetectr = "shapes"\n\n'),
        "defaults-type.toml": _concepts(top="defaults = 3\n"),
    })
    for name, text in files.items():
        (concepts / name).write_text(text)
    (concepts / "binary.toml").write_bytes(b"\xff\xfe\x00name = \x9c")
    (root / "afile").write_text("a file where a folder is wanted")
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
    if "--erasure-cache" in bad.options:
        fast.remove("--no-erasure-cache")
    if bad.ini:  # an ini value counts only where the command line leaves the option unset
        from pytest_erasure.config import OPTIONS

        dest = bad.ini.split("=")[0].strip()
        flag = next((o.flag for o in OPTIONS if o.dest == dest), None)
        fast = [a for a in fast if a.split("=")[0] != flag]
    # --flag=value: pytest takes a bare value that follows an option it does not know yet (ours
    # load after the ini file is found) for a path, and would look for the ini file beside it.
    return [f"{k}={v}" for k, v in options.items()] + fast + [
        a.replace("{bad}", str(bad_root)) for a in bad.extra]


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


def record_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What an in-process run loaded: every model load and detector build is recorded (and
    refused), so a case proves its usage error came before anything heavy."""
    import pytest_erasure.context
    import pytest_erasure.models.loading

    loaded: list[str] = []

    def load_models(*args: object, **kwargs: object) -> None:
        loaded.append("models")
        raise AssertionError("a model was loaded before the usage error")

    def build_detector(*args: object, **kwargs: object) -> None:
        loaded.append("detector")
        raise AssertionError("a detector was built before the usage error")

    monkeypatch.setattr(pytest_erasure.models.loading, "load_models", load_models)
    monkeypatch.setattr(pytest_erasure.context, "build_detector", build_detector)
    return loaded


@pytest.mark.parametrize("bad", CATALOGUE, ids=[b.id for b in CATALOGUE])
def test_bad_input_is_one_usage_error_line(bad: Bad, pytester: pytest.Pytester,
                                           tiny_world: dict[str, Path], bad_root: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    loads = [] if bad.loads_models else record_loads(monkeypatch)
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
    assert loads == [], "the usage error came after a model or detector was loaded"
    assert not any(bad_root.rglob("*.safetensors.lock")) and not (bad_root / "cache").exists(), \
        "nothing was cached: the run stopped before its first image"


def test_catalogue_size() -> None:
    assert len(CATALOGUE) >= 130
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
