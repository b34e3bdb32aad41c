"""Tiny Stable-Diffusion-architecture pipelines for tests, built in-process like diffusers' tests.

They have SD v1.4's component classes (AutoencoderKL, UNet2DConditionModel with cross-attention,
CLIPTextModel + CLIPTokenizer, DDIMScheduler with SD v1 betas) at a size that runs in
milliseconds on a CPU, and a tokenizer made from an in-memory vocabulary so nothing is fetched.
Used by our tests and benchmarks; third parties testing their own scenarios may use it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

WORDS = (
    "a", "an", "the", "of", "image", "photo", "picture", "shape", "red", "green", "blue",
    "yellow", "white", "black", "small", "large", "circle", "square", "triangle", "star",
    "cross", "heart", "disc", "box", "plus", "ring", "round", "object", "thing", "drawing",
)


def tiny_tokenizer():
    """A CLIP BPE tokenizer whose every ASCII character and listed word is one token."""
    from transformers import CLIPTokenizer

    alphabet = [chr(c) for c in range(33, 127)]
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>"] + alphabet + [a + "</w>" for a in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        # Merge left to right so each word collapses into one `word</w>` token.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            merge = (current, nxt)
            if merge not in merges:
                merges.append(merge)
            current = current + nxt
            vocab.setdefault(current, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_pipeline(seed: int = 0, cross_attention_dim: int = 32) -> StableDiffusionPipeline:
    """A randomly initialised SD-architecture pipeline with 32x32 images (latent 4x16x16)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=cross_attention_dim,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            layer_norm_eps=1e-5,
        )
    )
    return assemble(vae, text_encoder, tokenizer, unet)


def assemble(vae, text_encoder, tokenizer, unet) -> StableDiffusionPipeline:
    """Components into a pipeline with SD v1's DDIM schedule and no safety checker."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(path: Path, seed: int = 0) -> Path:
    """Write a tiny pipeline to disk so tests exercise the real loading code."""
    tiny_pipeline(seed).save_pretrained(path)
    return path


class BrightnessDetector:
    """A real detector with a rule anyone can check by eye: the concept is 'present' when the
    image's mean intensity exceeds a threshold. Lets plugin tests decide, through a model's own
    weights, whether an erased model 'still draws the concept'."""

    name = "brightness"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def detect(self, images, label: str):
        from pytest_erasure.detectors.base import Detection

        means = images.float().mean(dim=(1, 2, 3)).tolist()
        return Detection(present=[m > self.threshold for m in means], score=means)

    def log_probability(self, images, label: str):
        """A smooth, differentiable reading of the rule (for the guidance probe): log of a
        sigmoid of (mean intensity - threshold) / 0.05."""
        from torch.nn import functional as F

        return F.logsigmoid((images.float().mean(dim=(1, 2, 3)) - self.threshold) / 0.05)

    def describe(self) -> dict:
        return {"name": self.name, "rule": "mean intensity > threshold",
                "threshold": self.threshold}


def build_brightness_detector(spec, device: str) -> BrightnessDetector:
    return BrightnessDetector(float(spec.options.get("threshold", 0.5)))


def _shift_output(pipe: StableDiffusionPipeline, bias: float) -> StableDiffusionPipeline:
    """Push the VAE decoder's output towards white (bias > 0) or black (bias < 0)."""
    import torch

    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.add_(bias)
    return pipe


def tiny_concepts(prompts: tuple[str, ...] = ("a {concept}", "a red {concept}"),
                  neutral: tuple[str, ...] = ("a shape", "")) -> str:
    """The tiny worlds' concepts file: circle erased (square kept), judged by brightness."""
    def toml_list(items: tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"

    return f"""
neutral_prompts = {toml_list(neutral)}
threshold = 0.2

[defaults]
detector = "pytest_erasure.testing:build_brightness_detector"
prompts = {toml_list(prompts)}

[[concept]]
name = "circle"
retain = ["square"]
references = "references/circle"

[[concept]]
name = "square"
erased = false
"""


def write_noise_references(root: Path, n: int = 4, size: int = 32) -> Path:
    """`n` random size x size PNGs in root/references/circle (the concepts file's reference folder)."""
    import numpy as np
    from PIL import Image

    refs = root / "references" / "circle"
    refs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(refs / f"{i}.png")
    return refs


def save_tiny_world(root: Path) -> dict[str, Path]:
    """A standard model that 'draws the concept' (bright images), an erased one that does not
    (dark), a leaky erased one that still does, a concepts file and reference images.

    Everything is written to disk so the plugin's real loading code reads it.
    """
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "standard": root / "standard",
        "erased": root / "erased",
        "leaky": root / "leaky",
        "concepts": root / "concepts.toml",
    }
    _shift_output(tiny_pipeline(0), 0.6).save_pretrained(paths["standard"])
    _shift_output(tiny_pipeline(0), -0.6).save_pretrained(paths["erased"])
    _shift_output(tiny_pipeline(0), 0.5).save_pretrained(paths["leaky"])
    paths["concepts"].write_text(tiny_concepts())
    write_noise_references(root)
    return paths

# SD v1.4 as published (PNDM, CLIP's own tokenizer, every config verbatim) is testing/sd14.py.
