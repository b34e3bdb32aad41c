"""Stable Diffusion v1.4 as CompVis publishes it, with random weights, built in-process.

Nothing can be downloaded here, so the test model is rebuilt from what the public
`CompVis/stable-diffusion-v1-4` diffusers folder says about itself: every config file is kept
below as the JSON dict the folder ships (same keys, same values, same key order), the tokenizer is
OpenAI CLIP's own BPE (49,408 tokens, rebuilt from `bpe_simple_vocab_16e6.txt.gz` exactly as
OpenAI's `simple_tokenizer.py` builds it), and `save_sd14_folder` writes a folder laid out like
the published one (model_index.json with its safety_checker and feature_extractor entries, the
PNDM scheduler with skip_prk_steps, the tokenizer's four files, safetensors weights).

Two variants: `full` is the published architecture (UNet 860M, VAE 84M, CLIP ViT-L/14 text
encoder 123M parameters); `reduced` changes only sizes (channels, widths, layer counts) so an
audit runs in seconds on a CPU, and keeps every other value (scheduler, tokenizer and vocabulary,
activations, scaling factor, block types, model_index entries) identical.

Provenance (`PROVENANCE`): the files were read from public copies of the folder (huggingface.co
pages of CompVis/stable-diffusion-v1-4 and byte-identical duplicates of it). As a cross-check the
JSON written here (indent 2, trailing newline, as diffusers and transformers write it) has exactly
the byte size the Hub lists for each published file; the sizes are recorded and tested.

Longer than most modules because it holds the published config files verbatim, with their
provenance: data, not logic.
"""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

REPO = "https://huggingface.co/CompVis/stable-diffusion-v1-4"
VARIANTS = ("full", "reduced")

# ------------------------------------------------------------------ the published configs

_TOKEN = {"lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def _added_token(content: str) -> dict[str, Any]:
    return {"__type": "AddedToken", "content": content, **_TOKEN}


SD14_CONFIGS: dict[str, dict[str, Any]] = {
    "model_index.json": {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.2.2",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    # Key order as published: clip_sample was appended last when the config was made DDIM-compatible.
    "scheduler/scheduler_config.json": {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.7.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
    },
    "unet/config.json": {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.2.2",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                           "CrossAttnUpBlock2D"],
    },
    # The published VAE config has no norm_num_groups (diffusers' default, 32, applies).
    "vae/config.json": {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.2.2",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "out_channels": 3,
        "sample_size": 512,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
    "text_encoder/config.json": {
        "_name_or_path": "openai/clip-vit-large-patch14",
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "torch_dtype": "float32",
        "transformers_version": "4.21.0.dev0",
        "vocab_size": 49408,
    },
    "tokenizer/tokenizer_config.json": {
        "add_prefix_space": False,
        "bos_token": _added_token("<|startoftext|>"),
        "do_lower_case": True,
        "eos_token": _added_token("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": "<|endoftext|>",
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added_token("<|endoftext|>"),
    },
    "tokenizer/special_tokens_map.json": {
        "bos_token": {"content": "<|startoftext|>", **_TOKEN},
        "eos_token": {"content": "<|endoftext|>", **_TOKEN},
        "pad_token": "<|endoftext|>",
        "unk_token": {"content": "<|endoftext|>", **_TOKEN},
    },
    "feature_extractor/preprocessor_config.json": {
        "crop_size": 224,
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": 224,
    },
}

# The safety checker's architecture (CLIP ViT-L/14 vision tower + projection 768). The published
# safety_checker/config.json is a long transformers-4.22 dump (text_config_dict/vision_config_dict
# with every default spelled out) that no public copy we could read reproduces verbatim, so these
# are the values transformers keeps when it re-saves that file (copies below); the folder's
# safety_checker/config.json is what transformers writes from them, not the published bytes.
SAFETY_CHECKER_ARCHITECTURE: dict[str, Any] = {
    "projection_dim": 768,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                      "num_hidden_layers": 24, "patch_size": 14},
}

# Byte sizes the Hub lists for the published files; json.dumps(config, indent=2) + "\n" of the
# dicts above has exactly these sizes (tested), which a dropped key or changed value would break.
PUBLISHED_BYTES: dict[str, int] = {
    "model_index.json": 541,
    "scheduler/scheduler_config.json": 313,
    "unet/config.json": 743,
    "vae/config.json": 551,
    "text_encoder/config.json": 592,
    "tokenizer/tokenizer_config.json": 806,
    "tokenizer/special_tokens_map.json": 472,
    "feature_extractor/preprocessor_config.json": 342,
}
# The Hub lists these rounded: vocab.json 1.06 MB, merges.txt 525 kB.
PUBLISHED_ROUNDED: dict[str, tuple[float, float]] = {
    "tokenizer/vocab.json": (1.055e6, 1.065e6), "tokenizer/merges.txt": (524.5e3, 525.5e3)}

PROVENANCE: dict[str, str] = {
    "model_index.json":
        "_diffusers_version 0.2.2 (the 'add weights' file) with feature_extractor renamed "
        "CLIPFeatureExtractor -> CLIPImageProcessor (the rename HF made across SD repos; 543 -> 541 B, "
        "e.g. huggingface.co/keogh/stable-diffusion-compvis-v1-4 commit fed1434). Verbatim 541 B "
        "copies: huggingface.co/cuongdz01/cat_gen/blob/main/model_index.json, "
        "huggingface.co/spaces/Vchitect/SEINE pre-trained/stable-diffusion-v1-4/model_index.json. "
        f"The fp16 upload ({REPO}/blob/2880f2ca379f41b0226444936bb7a6766a227587/model_index.json) "
        "says 0.2.3 and CLIPFeatureExtractor.",
    "scheduler/scheduler_config.json":
        f"{REPO}/blob/refs%2Fpr%2F221/scheduler/scheduler_config.json (313 B, commit c47dae7 "
        "'Make sure the scheduler compatible with DDIM'); same bytes in "
        "huggingface.co/Narsil/stable-diffusion-v1-4 and spaces/ChenyangSi/FreeU copies.",
    "unet/config.json":
        f"{REPO}/tree/a1cda716e22733055b75af17d67e914e8e2d53f5/unet lists config.json 743 B from "
        "'add weights' (4d5006d); content as in huggingface.co/osanseviero/compvis_fix unet/config.json "
        "(_diffusers_version 0.2.2, key set of diffusers 0.2) without its local _name_or_path.",
    "vae/config.json":
        f"{REPO}/tree/7bc2e3cdad3399d8acfa5be0059243a425bf7946/vae: 'correct vae config' (Feb 2023) "
        "took the 522 B 'add weights' file to 551 B by adding scaling_factor 0.18215; content as "
        "in huggingface.co/spaces/Vchitect/SEINE pre-trained/stable-diffusion-v1-4/vae config.",
    "text_encoder/config.json":
        "592 B 'add weights' file (huggingface.co/keogh/stable-diffusion-compvis-v1-4 tree listing, a "
        "copy of the folder); content as in huggingface.co/spaces/ChenyangSi/FreeU "
        "stable-diffusion-v1-4/text_encoder/config.json (transformers 4.21.0.dev0, no projection_dim).",
    "tokenizer/tokenizer_config.json":
        f"{REPO}/tree/refs%2Fpr%2F260/tokenizer lists 806 B from 'add weights'; content as in "
        "huggingface.co/Narsil/stable-diffusion-v1-4/blob/742af49/tokenizer/tokenizer_config.json "
        "(name_or_path openai/clip-vit-large-patch14). A 917 B variant with a local name_or_path "
        f"({REPO}/blob/0050854a4556632fe275ed384d277830d86b3bb6/...) is not on the current tree.",
    "tokenizer/special_tokens_map.json":
        "472 B; huggingface.co/keogh/stable-diffusion-compvis-v1-4/blob/refs%2Fpr%2F2/tokenizer/"
        "special_tokens_map.json.",
    "feature_extractor/preprocessor_config.json":
        "342 B; huggingface.co/sd-research/stable-diffusion-v1-4/blob/main/feature_extractor/"
        "preprocessor_config.json ('Duplicate from CompVis/stable-diffusion-v1-4').",
    "tokenizer/vocab.json + merges.txt":
        "OpenAI CLIP bpe_simple_vocab_16e6.txt.gz (sha256 below) from the PyPI package "
        "openai-clip==1.0.1, turned into vocab/merges as github.com/openai/CLIP clip/"
        "simple_tokenizer.py does; written as transformers' CLIPTokenizer saves them.",
    "safety_checker":
        "architecture only (see SAFETY_CHECKER_ARCHITECTURE): huggingface.co/DaichiT/path-to-save-model "
        "and mlpc-lab/TokenCompose_SD14_B safety_checker/config.json, re-saves of "
        "CompVis--stable-diffusion-v1-4 snapshot 133a221b.",
}

# Sizes only; every other value of the published configs is kept in the reduced variant.
REDUCED: dict[str, dict[str, Any]] = {
    "unet/config.json": {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 96},
    "vae/config.json": {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1},
    "text_encoder/config.json": {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 2},
}
REDUCED_SAFETY_CHECKER: dict[str, Any] = {
    "projection_dim": 32,
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                    "num_hidden_layers": 1},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                      "num_hidden_layers": 1, "patch_size": 14},
}

# ------------------------------------------------------------------ the tokenizer

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BPE_PACKAGE = "clip"  # installed by openai-clip==1.0.1 (pyproject.toml)
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
VOCAB_SIZE = 49408
MERGES = 49152 - 256 - 2  # OpenAI: lines[1 : 49152-256-2+1]


def bpe_path() -> Path:
    """Where the openai-clip package put OpenAI's BPE file, found without importing the package
    (its __init__ imports torchvision, which we neither need nor install)."""
    from pytest_erasure.errors import ErasureInputError

    spec = importlib.util.find_spec(BPE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / BPE_FILE
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != BPE_SHA256:
                raise ErasureInputError(str(path), f"has sha256 {digest}, not OpenAI's {BPE_SHA256}",
                                        "reinstall openai-clip==1.0.1")
            return path
    raise ErasureInputError("the SD v1.4 test tokenizer", f"needs CLIP's {BPE_FILE}",
                            "pip install openai-clip==1.0.1 (it ships the file; no torchvision)")


def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's byte -> printable-character table (simple_tokenizer.py), in its order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges) exactly as OpenAI's SimpleTokenizer builds its encoder."""
    vocab, merges = _clip_vocabulary()
    return dict(vocab), list(merges)


@functools.lru_cache(maxsize=1)
def _clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.decompress(bpe_path().read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:MERGES + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def tokenizer_files() -> dict[str, str]:
    """The tokenizer folder's four files, as text (vocab/merges in transformers' save format)."""
    vocab, merges = clip_vocabulary()
    return {
        "vocab.json": json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": _json(SD14_CONFIGS["tokenizer/tokenizer_config.json"]),
        "special_tokens_map.json": _json(SD14_CONFIGS["tokenizer/special_tokens_map.json"]),
    }


def sd14_tokenizer() -> CLIPTokenizer:
    """SD v1.4's tokenizer: CLIP ViT-L/14's 49,408-token BPE, 77 tokens, pad = <|endoftext|>."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


# ------------------------------------------------------------------ configs per variant


def _json(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2) + "\n"


def sd14_configs(variant: str = "reduced") -> dict[str, dict[str, Any]]:
    """The published configs, with the reduced variant's sizes swapped in (deep copies)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    configs = copy.deepcopy(SD14_CONFIGS)
    if variant == "reduced":
        for name, sizes in REDUCED.items():
            configs[name].update(copy.deepcopy(sizes))
    return configs


def _model_config(config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers config without the file's bookkeeping keys."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def sd14_components(variant: str = "reduced", seed: int = 0, *,
                    safety_checker: bool = True) -> dict[str, Any]:
    """Every component of the SD v1.4 pipeline, random weights (torch.manual_seed(seed))."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    configs = sd14_configs(variant)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_model_config(configs["unet/config.json"]))
    vae = AutoencoderKL.from_config(_model_config(configs["vae/config.json"]))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder/config.json"]))
    components: dict[str, Any] = {
        "unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
        "tokenizer": sd14_tokenizer(),
        "scheduler": PNDMScheduler.from_config(_model_config(
            configs["scheduler/scheduler_config.json"])),
        "safety_checker": None,
        "feature_extractor": CLIPImageProcessor.from_dict(
            configs["feature_extractor/preprocessor_config.json"]),
    }
    if safety_checker:
        arch = SAFETY_CHECKER_ARCHITECTURE if variant == "full" else REDUCED_SAFETY_CHECKER
        components["safety_checker"] = StableDiffusionSafetyChecker(CLIPConfig(
            text_config=arch["text_config"], vision_config=arch["vision_config"],
            projection_dim=arch["projection_dim"])).eval()
    return components


def sd14_pipeline(variant: str = "reduced", seed: int = 0, *,
                  safety_checker: bool = False) -> StableDiffusionPipeline:
    """An SD v1.4 pipeline in memory. Without a safety checker by default, as our loader
    builds it (the audit must see what the model draws, not a blacked-out image)."""
    from diffusers import StableDiffusionPipeline

    components = sd14_components(variant, seed, safety_checker=safety_checker)
    return StableDiffusionPipeline(**components, requires_safety_checker=safety_checker)


# ------------------------------------------------------------------ on disk


def write_published_configs(folder: Path, variant: str = "reduced") -> None:
    """Overwrite what save_pretrained wrote with the files as published (plus reduced sizes):
    diffusers and transformers add keys of their own versions, which a stock SD v1.4 folder
    does not have, and loaders must cope with the stock files."""
    for name, config in sd14_configs(variant).items():
        if name.startswith("tokenizer/"):
            continue
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(_json(config))
    tokenizer = folder / "tokenizer"
    if tokenizer.exists():
        for extra in tokenizer.iterdir():
            extra.unlink()
    tokenizer.mkdir(parents=True, exist_ok=True)
    for name, text in tokenizer_files().items():
        (tokenizer / name).write_text(text, encoding="utf-8")


def save_sd14_folder(path: Path, variant: str = "reduced", seed: int = 0, *,
                     safety_checker: bool = True, dtype: str = "float32",
                     pipeline: StableDiffusionPipeline | None = None) -> Path:
    """A diffusers folder laid out like CompVis/stable-diffusion-v1-4, safetensors weights.

    safety_checker=False writes its config but no weights (the full-size checker is 1.2 GB and
    our loader never loads it); such a folder loads with from_pretrained(..., safety_checker=None).
    `pipeline` saves a given pipeline of this variant (e.g. with altered weights) instead; it is
    cast to `dtype` in place. Without a safety checker it is saved like safety_checker=False.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    if pipeline is None:
        pipeline = StableDiffusionPipeline(
            **sd14_components(variant, seed, safety_checker=safety_checker),
            requires_safety_checker=safety_checker)
    pipeline.to(getattr(torch, dtype))
    pipeline.save_pretrained(path, safe_serialization=True)
    write_published_configs(path, variant)
    if pipeline.safety_checker is None:
        arch = SAFETY_CHECKER_ARCHITECTURE if variant == "full" else REDUCED_SAFETY_CHECKER
        from transformers import CLIPConfig

        config = CLIPConfig(text_config=arch["text_config"], vision_config=arch["vision_config"],
                            projection_dim=arch["projection_dim"])
        config.architectures = ["StableDiffusionSafetyChecker"]
        config.save_pretrained(path / "safety_checker")
    return path


# ------------------------------------------------------------------ an audit world


def save_sd14_world(root: Path, seed: int = 0) -> dict[str, Path]:
    """A reduced SD v1.4 standard folder, a UCE-format erased model (the 32 attn2 to_k/to_v
    weights, perturbed), a concepts file judged by `BrightnessDetector` and 64x64 references.

    The standard model's VAE output is shifted bright so 'circle' is drawn (present) by it; the
    UCE file replaces cross-attention weights only, so whether the erased model still draws it
    is what an audit measures. A plumbing world for running the whole plugin on the published
    layout (PNDM, real tokenizer), not a statement about any real erasure method.
    """
    import torch

    from pytest_erasure.models.formats.writers import save_tensors, unet_tensors
    from pytest_erasure.testing import tiny_concepts, write_noise_references

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"standard": root / "standard", "erased": root / "uce-circle.safetensors",
             "concepts": root / "concepts.toml"}
    pipe = sd14_pipeline("reduced", seed, safety_checker=True)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.add_(0.6)
    save_sd14_folder(paths["standard"], "reduced", seed, pipeline=pipe)
    generator = torch.Generator().manual_seed(seed + 1)
    uce = {k: v + 0.5 * torch.randn(v.shape, generator=generator)
           for k, v in unet_tensors(pipe.unet, "uce").items()}
    save_tensors(uce, paths["erased"])
    paths["concepts"].write_text(tiny_concepts(prompts=("a photo of a {concept}",),
                                               neutral=("a photo",)))
    write_noise_references(root, size=64)
    return paths
