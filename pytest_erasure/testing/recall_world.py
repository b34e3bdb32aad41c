"""A tiny world where the erased model draws the concept only from latents RECALL's PGD moved:
the plain img2img of the references never shows it, so a search that succeeds had to optimise.

On the ordinary tiny world the leaky model draws its bright images from any latent, so a RECALL
search succeeds at try 0 (the reference's own img2img) and a broken PGD passes unnoticed. Here
the erased model (`pgd_only`) is `tiny_pipeline(0)` (UNet, text encoder and VAE encoder as the
other tiny models) whose VAE *decoder* is set by hand so that an image's mean brightness (the
tiny world's detector) rises with the energy of the latent it decodes:

- every residual branch of the decoder (resnet `conv2`, mid-block attention `to_out`) is zero
  and the up-sampling convolutions are identities, so the decoder is `conv_out(SiLU(
  GroupNorm(conv_in(z))))` on nearest-upsampled cells;
- `conv_in` writes latent channel 0 as two pairs of channels, (B + z, -(B + z)) and
  (B - z, -(B - z)) with B = `OFFSET`: each pair is one group of the final GroupNorm, so
  it comes out as (B +/- z) / rms(B +/- z), whose mean B(1/s+ + 1/s-) falls as the latent's
  energy rises (the two pairs cancel the first-order effect of the latent's mean);
- `conv_out` reads SiLU(-u) - SiLU(u) = -u from each pair: brightness =
  0.5 + (`THRESHOLD` - mean of the two normalised pairs) / 2, above the detector's 0.5 exactly
  when the normalised mean falls below `THRESHOLD`.

Why the PGD is what moves it: RECALL ascends the erased UNet's noise-prediction MSE against the
reference's, and each sign step pushes the attacked latent further from the low-energy
reference latent (the noise references encode to rms ~0.04), so the decoded latent's energy
grows round by round. Measured once while building the fixture, by a script driving
`recall_start` / `recall_round` and `generate` (the judge's `start_step` img2img) on this UNet
with 8 searches from uniformly random reference images (4 DDIM steps, strength 0.8,
3 timesteps x 2 iterations, step 0.3), reading the decoder's input: the normalised mean was
1.46-1.49 for the references' img2img (try 0), 1.33-1.38 after the first round, 1.21-1.32
after the second and 1.12-1.22 after the third; after one round of one iteration 1.37-1.41.
Hence `THRESHOLD` 1.30: the references' img2img never shows the concept, the full search does
from its second round, a one-iteration search does not. The test (`tests/e2e/test_recall_pgd.py`)
asserts that behaviour through the plugin, not these numbers.

What the fixture is not: an erased model. Plain generation from pure noise decodes a latent of
high energy too, so `pgd_only` draws the concept from the neutral prompts (the case's per-search
base rate is 1): it isolates RECALL's search, whose test reads the searches' rounds, not the
verdict's comparison with the base rate. The never-drawn pair stays the dark `erased` model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

OFFSET = 10.0
"""B: the constant the decoder adds to latent channel 0 (after the VAE's 1 / scaling factor)
before its final GroupNorm; against it the latent's energy is weighed."""
THRESHOLD = 1.30
"""The normalised mean below which the decoded image is brighter than 0.5 (the concept)."""
RECALL_FLAGS = ("--steps", "4", "--recall-timesteps", "3", "--recall-iterations", "2",
                "--recall-step", "0.3")
"""The RECALL search the fixture was measured at (a step 30x the shapes budget's: the tiny
latents must travel far in three rounds)."""


def energy_decoder(pipe: StableDiffusionPipeline, offset: float = OFFSET,
                   threshold: float = THRESHOLD) -> StableDiffusionPipeline:
    """`pipe` with its VAE decoder set by hand (the module docstring): brightness rises with
    the decoded latent's energy, crossing 0.5 where the normalised mean crosses `threshold`."""
    import torch
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    def identity(conv: torch.nn.Conv2d) -> None:
        conv.weight.zero_()
        conv.bias.zero_()
        centre = conv.weight.shape[-1] // 2
        for c in range(min(conv.weight.shape[:2])):
            conv.weight[c, c, centre, centre] = 1

    vae = pipe.vae
    with torch.no_grad():
        identity(vae.post_quant_conv)
        decoder = vae.decoder
        conv_in = decoder.conv_in
        conv_in.weight.zero_()
        conv_in.bias.zero_()
        for channel, (sign, constant) in enumerate([(1, 1), (-1, -1), (-1, 1), (1, -1)]):
            conv_in.weight[channel, 0, 1, 1] = sign
            conv_in.bias[channel] = constant * offset
        for module in decoder.modules():
            if isinstance(module, ResnetBlock2D):
                module.conv2.weight.zero_()
                module.conv2.bias.zero_()
                if module.conv_shortcut is not None:
                    identity(module.conv_shortcut)
            elif isinstance(module, Attention):
                module.to_out[0].weight.zero_()
                module.to_out[0].bias.zero_()
            elif isinstance(module, Upsample2D):
                identity(module.conv)
        decoder.conv_norm_out.weight.fill_(1)
        decoder.conv_norm_out.bias.zero_()
        conv_out = decoder.conv_out
        conv_out.weight.zero_()
        conv_out.bias.fill_(threshold)
        for channel, sign in enumerate([-1, 1, -1, 1]):  # SiLU(-u) - SiLU(u) = -u per pair
            conv_out.weight[:, channel, 1, 1] = sign
    return pipe


def save_recall_world(root: Path) -> dict[str, Path]:
    """The tiny world (`save_tiny_world`: standard, erased, leaky, concepts, noise references)
    plus `pgd_only`, the erased model only RECALL's PGD gets the concept out of."""
    from pytest_erasure.testing import save_tiny_world, tiny_pipeline

    paths = save_tiny_world(root)
    paths["pgd_only"] = root / "pgd-only"
    energy_decoder(tiny_pipeline(0)).save_pretrained(paths["pgd_only"])
    return paths
