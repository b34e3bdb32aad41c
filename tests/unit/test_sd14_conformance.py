"""The SD v1.4 test model is SD v1.4 as published: configs, tokenizer, scheduler, folder layout.

What a stock CompVis/stable-diffusion-v1-4 folder holds is recorded in testing/sd14.py with the
source of every file; these tests check the builder and the folder it writes against that record,
and that the folder loads the way a user's SD v1.4 folder loads (diffusers alone, and our loader).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_erasure.testing import sd14
from pytest_erasure.testing.sd14 import (
    PUBLISHED_BYTES,
    PUBLISHED_ROUNDED,
    REDUCED,
    SD14_CONFIGS,
    save_sd14_world,
    sd14_configs,
    sd14_tokenizer,
)

# CLIP token ids asserted by public tests of CLIP tokenizers (other languages' ports checked
# against OpenAI's simple_tokenizer / transformers): the canonical "a photo of a cat", a port's
# real-fixture cases (tree 2677, punctuation, apostrophes, digits), MindSpore's ClipTokenizer test
# ("hello world?"), a C# port ("Hello world!", unicode normalisation of "café").
KNOWN_IDS = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "a photo of a dog": [49406, 320, 1125, 539, 320, 1929, 49407],
    "a photo of a tree": [49406, 320, 1125, 539, 320, 2677, 49407],
    "A Photo of a TREE!": [49406, 320, 1125, 539, 320, 2677, 256, 49407],
    "it's a cat's toy, running   fast": [49406, 585, 568, 320, 2368, 568, 5988, 267, 2761, 1953,
                                         49407],
    "2 dogs and 3 cats": [49406, 273, 3255, 537, 274, 3989, 49407],
    "hello world?": [49406, 3306, 1002, 286, 49407],
    "Hello world!": [49406, 3306, 1002, 256, 49407],
    "a diagram": [49406, 320, 22697, 49407],
    "caf\u00e9": [49406, 15304, 49407],
    "": [49406, 49407],
}


@pytest.fixture(scope="module")
def tokenizer():
    return sd14_tokenizer()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_sd14_world(tmp_path_factory.mktemp("sd14-world"))


# ------------------------------------------------------------------ tokenizer


@pytest.mark.parametrize("prompt", list(KNOWN_IDS))
def test_tokenizer_reproduces_clip_token_ids(tokenizer, prompt: str) -> None:
    assert tokenizer(prompt).input_ids == KNOWN_IDS[prompt]


def test_tokenizer_is_clip_vit_l14s(tokenizer) -> None:
    assert len(tokenizer) == sd14.VOCAB_SIZE == 49408
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|startoftext|>", 49406)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|endoftext|>", 49407)
    assert tokenizer.pad_token_id == 49407 and tokenizer.model_max_length == 77
    ids = tokenizer("cat " * 200, truncation=True, max_length=77, padding="max_length").input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
    vocab, merges = sd14.clip_vocabulary()
    assert len(merges) == 48894 and vocab["a</w>"] == 320 and vocab["!"] == 0


def test_tokenizer_files_load_back_with_the_same_ids(tmp_path: Path, tokenizer) -> None:
    from transformers import CLIPTokenizer

    for name, text in sd14.tokenizer_files().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    for name, (low, high) in PUBLISHED_ROUNDED.items():
        size = (tmp_path / Path(name).name).stat().st_size
        assert low <= size <= high, f"{name}: {size} B, the Hub lists it as {low:.0f}-{high:.0f}"
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == 49408
    for prompt, ids in KNOWN_IDS.items():
        assert loaded(prompt).input_ids == ids, prompt


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", list(PUBLISHED_BYTES))
def test_recorded_configs_have_the_published_files_byte_sizes(name: str) -> None:
    """A dropped key, an added one or a changed value changes the size of the file."""
    assert len(sd14._json(SD14_CONFIGS[name]).encode()) == PUBLISHED_BYTES[name]


def test_every_recorded_config_names_its_source() -> None:
    for name in SD14_CONFIGS:
        key = "tokenizer/vocab.json + merges.txt" if name.endswith(("vocab.json", "merges.txt")) \
            else name
        assert key in sd14.PROVENANCE, name


def test_reduced_variant_changes_sizes_only() -> None:
    reduced = sd14_configs("reduced")
    for name, published in SD14_CONFIGS.items():
        changed = {k for k in published if reduced[name][k] != published[k]}
        assert changed == set(REDUCED.get(name, {})), name
        assert list(reduced[name]) == list(published), f"{name}: same keys in the same order"
    assert reduced["unet/config.json"]["cross_attention_dim"] == \
        reduced["text_encoder/config.json"]["hidden_size"]
    with pytest.raises(ValueError, match="variant"):
        sd14_configs("tiny")


def test_full_variant_configs_build_the_published_parameter_counts() -> None:
    """UNet 859,520,964, VAE 83,653,863, CLIP ViT-L/14 text encoder 123,060,480 parameters."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = sd14_configs("full")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(sd14._model_config(configs["unet/config.json"]))
        vae = AutoencoderKL.from_config(sd14._model_config(configs["vae/config.json"]))
        text = CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder/config.json"]))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(text)) == (859_520_964, 83_653_863, 123_060_480)
    assert text.config.hidden_act == "quick_gelu" and vae.config.scaling_factor == 0.18215
    assert vae.config.norm_num_groups == 32


def test_full_variant_files_are_written_verbatim(tmp_path: Path) -> None:
    sd14.write_published_configs(tmp_path, "full")
    for name, size in PUBLISHED_BYTES.items():
        assert (tmp_path / name).stat().st_size == size, name
        assert json.loads((tmp_path / name).read_text()) == SD14_CONFIGS[name], name
    assert sorted(p.name for p in (tmp_path / "tokenizer").iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]


# ------------------------------------------------------------------ scheduler


@pytest.mark.parametrize("steps", [3, 10, 50])
def test_scheduler_is_pndm_with_plms_steps_only(tmp_path: Path, steps: int) -> None:
    from diffusers import PNDMScheduler, SchedulerMixin

    folder = tmp_path / "scheduler"
    folder.mkdir()
    (folder / "scheduler_config.json").write_text(
        sd14._json(SD14_CONFIGS["scheduler/scheduler_config.json"]))
    scheduler = PNDMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert isinstance(scheduler, SchedulerMixin) and type(scheduler) is PNDMScheduler
    assert scheduler.config.skip_prk_steps and scheduler.config.steps_offset == 1
    assert not scheduler.config.set_alpha_to_one and scheduler.config.beta_schedule == "scaled_linear"
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.tolist()
    # PLMS without Runge-Kutta warm-up: N+1 model calls, the second timestep repeated.
    assert len(timesteps) == steps + 1 and timesteps[1] == timesteps[2]
    assert timesteps[-1] == 1 and timesteps[0] == 1 + (steps - 1) * (1000 // steps)


# ------------------------------------------------------------------ the folder on disk


def test_reduced_folder_is_laid_out_like_the_published_one(world: dict[str, Path]) -> None:
    folder = world["standard"]
    top = sorted(p.name for p in folder.iterdir())
    assert top == ["feature_extractor", "model_index.json", "safety_checker", "scheduler",
                   "text_encoder", "tokenizer", "unet", "vae"]
    reduced = sd14_configs("reduced")
    for name, config in reduced.items():
        assert json.loads((folder / name).read_text()) == config, name
    for weights in ("unet/diffusion_pytorch_model.safetensors",
                    "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                    "safety_checker/model.safetensors"):
        assert (folder / weights).is_file(), weights
    assert not list(folder.rglob("*.bin")), "safetensors only"


def test_reduced_folder_loads_with_diffusers_alone_and_generates(world: dict[str, Path]) -> None:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline.from_pretrained(world["standard"])
    assert type(pipe.scheduler) is PNDMScheduler
    assert isinstance(pipe.tokenizer, CLIPTokenizer) and len(pipe.tokenizer) == 49408
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert pipe.text_encoder.config.hidden_act == "quick_gelu"
    assert type(pipe.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    assert pipe.feature_extractor is not None and pipe.vae.config.scaling_factor == 0.18215
    assert list(pipe.unet.config.block_out_channels) == \
        REDUCED["unet/config.json"]["block_out_channels"]
    out = pipe("a photo of a cat", height=64, width=64, num_inference_steps=3,
               generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()
    assert out.nsfw_content_detected == [False]
    assert float(out.images.std()) > 0.01, "an image, not a constant"


def test_world_loads_through_our_loader(world: dict[str, Path]) -> None:
    import torch
    from diffusers import PNDMScheduler

    from pytest_erasure.models.loading import load_models

    models = load_models(world["standard"], world["erased"])
    assert type(models.standard.scheduler) is PNDMScheduler
    assert models.standard.safety_checker is None and models.erased.safety_checker is None
    record = models.provenance["erased"]
    assert record["format"] == "unet" and record["components_replaced"] == ["unet"]
    # 16 cross-attention blocks as in SD v1.4, each one attn2 to_k and to_v.
    assert record["unet"]["tensors_replaced"] == record["unet"]["tensors_changed"] == 32
    with torch.no_grad():
        image = models.erased("a photo of a circle", height=64, width=64, num_inference_steps=2,
                              generator=torch.Generator().manual_seed(0),
                              output_type="pt").images
    assert image.shape == (1, 3, 64, 64)
    concepts = world["concepts"].read_text()
    assert "pytest_erasure.testing:build_brightness_detector" in concepts
    refs = sorted((world["concepts"].parent / "references" / "circle").glob("*.png"))
    assert len(refs) == 4
