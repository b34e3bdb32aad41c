"""Textual inversion: learn new token embedding(s) that make a model draw given images.

Our own loop in the style of diffusers' `textual_inversion` example: new token(s) initialised from
an existing word, epsilon-MSE on VAE latents of the training images at random timesteps, prompts
from a few templates ("a photo of a {token}"), and nothing but the new rows learns.

The standard and erased pipelines share components, so nothing here changes a pipeline, not even
for a moment in a way that outlives a call: the tokenizer is a copy with the token(s) added, and
the new rows live outside the text encoder. They are spliced into the output of its token
embedding by a forward hook that is removed when the call returns. Only the new vectors are
optimised (gradients are taken with `torch.autograd.grad` w.r.t. them alone), which is what the
example's "restore the other rows each step" achieves, without touching the others at all.

The result saves as `learned_embeds.safetensors` ({token: (num_vectors, D)}), the format
`StableDiffusionPipeline.load_textual_inversion(path)` reads; `encode_with_embedding` gives the
same prompt embeddings as a pipeline that loaded that file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pytest_erasure.cache import atomic_write_bytes
from pytest_erasure.errors import ErasureInputError

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a picture of a {}",
    "an image of a {}",
    "a drawing of a {}",
    "a {}",
    "the {}",
    "a small {}",
    "a large {}",
)
"""Training prompts (a subset of diffusers' `imagenet_templates_small`, plus the bare noun)."""

WEIGHTS_NAME = "learned_embeds.safetensors"


class DefenseSurrogate(Protocol):
    """A defense inside the training objective: what an adaptive textual inversion optimises
    through (`defenses.irece.IreceSurrogate` is IRECE's). Without one the loop is exactly the
    undefended one, draw for draw and bit for bit.

    The defense acts during sampling, the objective is a denoising loss on single (x_t, t)
    samples: a surrogate says which samples the defense would have touched and how, and
    rewrites those samples (their timestep, their noisy latent, and the noise the model must
    predict) so that lowering the loss means beating the defense there. Its randomness comes
    from its own generator, so the base draw (images, noise, timesteps, templates) is the same
    with and without it."""

    def reset(self) -> None:
        """Back to its first draw: a run restarted at a smaller micro-batch repeats itself."""
        ...

    def redraw(self, draw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The whole drawn batch (CPU tensors, before it is split into micro-batches) with the
        surrogate's own draws added or applied: every micro-batch size sees the same samples."""
        ...

    def __call__(self, noisy: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor,
                 t: torch.Tensor, draw: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the model's input, the noise consistent with it and with the clean `latents`) for
        one micro-batch; the loss's target is derived from that noise."""
        ...


def token_names(token: str, num_vectors: int) -> list[str]:
    """The tokens diffusers adds for a multi-vector embedding: `t`, `t_1`, `t_2`, ..."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand_prompt(prompt: str, token: str, num_vectors: int) -> str:
    """Write a multi-vector token out as its pieces, as diffusers' `maybe_convert_prompt` does."""
    return prompt.replace(token, " ".join(token_names(token, num_vectors)))


def validate_budget(steps: int, lr: float, batch_size: int, num_vectors: int,
                    accumulation: int = 1) -> None:
    """Budgets a user typed: clear errors instead of a loop that learns nothing."""
    checks = (
        ("--ti-steps", steps, steps >= 1, "give a whole number of training steps >= 1"),
        ("--ti-lr", lr, lr > 0, "give a positive learning rate"),
        ("--ti-batch-size", batch_size, batch_size >= 1, "give a batch size >= 1"),
        ("--ti-vectors", num_vectors, num_vectors >= 1, "give a number of vectors >= 1"),
        ("--ti-accumulation", accumulation, accumulation >= 1,
         "give a number of accumulated micro-batches >= 1"),
    )
    for name, value, ok, fix in checks:
        if not ok:
            raise ErasureInputError(name, f"is {value}", fix)


@dataclass
class LossScaler:
    """Dynamic loss scaling for a float16 model, with torch.amp.GradScaler's rule.

    At SD v1.4's latent size the loss is a mean over 4 x 64 x 64 elements per sample, so the
    gradient reaching the UNet's output is ~1e-4 per element and shrinks on its way back
    through the fp16 UNet and text encoder, far below fp16's smallest normal number (6e-5):
    unscaled, much of it flushes to zero and the token learns little or nothing. The loss is
    multiplied by `scale` before backward and the (float32) gradient divided by it after; a
    step whose gradient holds inf/nan is skipped and the scale halved, and after
    `growth_interval` good steps in a row the scale doubles. bfloat16 has float32's exponent
    range, so it needs no scaling (`for_dtype` returns a disabled scaler); float32 neither.
    A disabled scaler still skips a non-finite step rather than let AdamW spread NaN into the
    learned rows.
    """

    enabled: bool = True
    scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    skipped: int = 0
    _good: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not self.enabled:
            self.scale = 1.0

    @classmethod
    def for_dtype(cls, dtype: torch.dtype) -> LossScaler:
        import torch

        return cls(enabled=dtype == torch.float16)

    def unscale(self, grad: torch.Tensor) -> torch.Tensor | None:
        """The float32 gradient divided by the scale, or None (and the scale backed off) when
        it is not finite: the caller skips that step."""
        import torch

        grad = grad.float() / self.scale
        if not bool(torch.isfinite(grad).all()):
            self.skipped += 1
            self._good = 0
            if self.enabled:
                self.scale *= self.backoff_factor
            return None
        self._good += 1
        if self.enabled and self._good >= self.growth_interval:
            self.scale *= self.growth_factor
            self._good = 0
        return grad

    def describe(self) -> dict[str, Any]:
        """For reports: whether scaling ran, the final scale, how many steps were skipped."""
        return {"loss_scaling": "dynamic" if self.enabled else "none",
                "final_scale": self.scale, "skipped_steps": self.skipped}


class _Splice:
    """A copied tokenizer with the new token(s) and the means to splice their vectors in."""

    def __init__(self, pipe: StableDiffusionPipeline, token: str, num_vectors: int) -> None:
        base = pipe.tokenizer
        names = token_names(token, num_vectors)
        vocab = base.get_vocab()
        # `shape</w>` is the word "shape": a token of that name would hijack it in prompts.
        taken = [n for n in names if n in vocab or f"{n}</w>" in vocab]
        if taken:
            raise ErasureInputError(f"textual-inversion token {taken[0]!r}",
                                    "is already in the tokenizer's vocabulary",
                                    "choose a token that is not a word, e.g. '<my-concept>'")
        self.tokenizer = copy.deepcopy(base)
        self.tokenizer.add_tokens(names)
        self.ids = self.tokenizer.convert_tokens_to_ids(names)
        self.token = token
        self.num_vectors = num_vectors
        self.text_encoder = pipe.text_encoder

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids valid for the unchanged text encoder, index of the new vector at each position
        or -1). New tokens get a stand-in id (0) whose embedding the hook overwrites."""
        import torch

        expanded = [expand_prompt(p, self.token, self.num_vectors) for p in prompts]
        ids = self.tokenizer(expanded, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        which = torch.full_like(ids, -1)
        for k, new_id in enumerate(self.ids):
            which[ids == new_id] = k
        return ids.masked_fill(which >= 0, 0), which

    @contextmanager
    def spliced(self, vectors: torch.Tensor, which: torch.Tensor) -> Iterator[None]:
        """While open, the token embedding's output carries `vectors` where `which` >= 0."""
        import torch

        def hook(module, inputs, output):  # noqa: ARG001 - forward-hook signature
            mask = (which >= 0).to(output.device)
            rows = vectors.to(output.dtype).to(output.device)[which.clamp(min=0).to(output.device)]
            return torch.where(mask[..., None], rows, output)

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def encode(self, prompts: Sequence[str], vectors: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings (B, 77, D) as `pipe.encode_prompt` computes them (no clip skip)."""
        ids, which = self.tokenize(prompts)
        device = self.text_encoder.device
        with self.spliced(vectors, which.to(device)):
            return self.text_encoder(ids.to(device))[0]


def initial_vectors(pipe: StableDiffusionPipeline, init_token: str, num_vectors: int
                    ) -> torch.Tensor:
    """(num_vectors, D) float32 copies of the init word's embedding (mean if it is several)."""
    ids = pipe.tokenizer(init_token, add_special_tokens=False).input_ids
    if not ids:
        raise ErasureInputError("--ti-init-token", f"{init_token!r} tokenizes to nothing",
                                "give an ordinary word such as 'object' or 'shape'")
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    vector = table[ids].float().mean(0).cpu()
    return vector.unsqueeze(0).repeat(num_vectors, 1)


def encode_images(pipe: StableDiffusionPipeline, images: torch.Tensor, batch_size: int = 16
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior of images in [0, 1], already scaled (float32, CPU)."""
    import torch

    vae = pipe.vae
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(vae.device, vae.dtype) * 2 - 1
            dist = vae.encode(x).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
    scale = vae.config.scaling_factor
    return torch.cat(means) * scale, torch.cat(stds) * scale


def train_textual_inversion(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    *,
    token: str = "<concept>",
    init_token: str = "object",
    num_vectors: int = 1,
    steps: int = 100,
    lr: float = 2e-3,
    batch_size: int = 32,
    accumulation: int = 1,
    seed: int = 0,
    templates: Sequence[str] = TEMPLATES,
    progress: Callable[[int], None] | None = None,
    scaler: LossScaler | None = None,
    micro_batch: int | None = None,
    surrogate: DefenseSurrogate | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Learn `num_vectors` embedding rows for `token` from images (N, 3, H, W) in [0, 1].

    Returns (embeds (num_vectors, D) float32 on the CPU, per-step losses). Deterministic for a
    given seed on a given device. AdamW without weight decay (the example decays all rows; with
    only the new rows optimised, decay would merely pull them toward zero).

    Each optimizer step averages the gradients of `accumulation` batches of `batch_size`
    (effective batch = batch_size x accumulation, as diffusers' train_batch_size x
    gradient_accumulation_steps); with accumulation 1 the draws and arithmetic are exactly
    those of the loop before accumulation existed. The learned rows are a float32 master copy
    whatever the model's dtype (cast to it only where they enter the text encoder), and AdamW
    updates them in float32. `scaler` (default: `LossScaler.for_dtype(unet.dtype)`, dynamic
    scaling for float16 only) may be passed to read its skipped steps and scale afterwards;
    a skipped step still records its loss and counts toward `steps`.

    `micro_batch` (default: `batch_size`) splits each drawn batch into UNet passes whose
    gradients are summed, weighted by their share: the same batch, the same loss, less memory.
    Out of GPU memory, the whole run restarts from its first step at half the micro-batch
    (`memory.halving`), so its result is that of a run given that micro-batch.

    `surrogate`: the defense the token must beat, inside the objective (`DefenseSurrogate`;
    the adaptive attack). None: the loop as it always was.
    """
    import torch

    from pytest_erasure.memory import describe, halving

    validate_budget(steps, lr, batch_size, num_vectors, accumulation)
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ErasureInputError("textual-inversion training images",
                                f"have shape {tuple(images.shape)}",
                                "give a non-empty batch (N, 3, H, W) in [0, 1]")
    splice = _Splice(pipe, token, num_vectors)
    mean, std = encode_images(pipe, images)

    def train(micro: int) -> tuple[torch.Tensor, list[float]]:
        step_scaler = scaler if scaler is not None else LossScaler.for_dtype(pipe.unet.dtype)
        vectors = initial_vectors(pipe, init_token, num_vectors).to(pipe.unet.device)
        vectors.requires_grad_(True)
        optimizer = torch.optim.AdamW([vectors], lr=lr, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        if surrogate is not None:
            surrogate.reset()
        losses: list[float] = []
        for _ in range(steps):
            total: torch.Tensor | None = None
            step_loss = 0.0
            for _ in range(accumulation):
                loss, grad = _gradient(pipe, splice, vectors, mean, std, generator, batch_size,
                                       templates, micro, step_scaler, surrogate)
                total = grad if total is None else total + grad
                step_loss += float(loss)
            assert total is not None
            unscaled = step_scaler.unscale(total if accumulation == 1 else total / accumulation)
            if unscaled is not None:
                optimizer.zero_grad(set_to_none=True)
                vectors.grad = unscaled
                optimizer.step()
            losses.append(step_loss if accumulation == 1 else step_loss / accumulation)
            if progress is not None:
                progress(1)
        return vectors.detach().float().cpu(), losses

    h, w = images.shape[-2:]
    return halving("textual inversion micro-batch", min(micro_batch or batch_size, batch_size),
                   train, lambda: describe(pipe, f"training on {h}x{w} images", pipe.unet.dtype))


def _gradient(pipe: StableDiffusionPipeline, splice: _Splice, vectors: torch.Tensor,
              mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator, batch_size: int,
              templates: Sequence[str], micro: int, scaler: LossScaler,
              surrogate: DefenseSurrogate | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, the gradient of the scaled loss w.r.t. vectors) of one drawn batch, in UNet passes
    of `micro` rows. The batch is drawn whole first (and the surrogate's draws made on it
    whole), so every micro-batch size sees the same samples."""
    import torch

    draw = _draw(mean, std, generator, batch_size, len(templates),
                 pipe.scheduler.config.num_train_timesteps)
    if surrogate is not None:
        draw = surrogate.redraw(draw)
    if micro >= batch_size:  # one pass: exactly the loop without splitting
        loss = _batch_loss(pipe, splice, vectors, draw, templates, surrogate)
        (grad,) = torch.autograd.grad(loss * scaler.scale if scaler.enabled else loss, [vectors])
        return loss.detach(), grad
    total, grad = torch.zeros(()), torch.zeros_like(vectors)
    for start in range(0, batch_size, micro):
        part = {k: v[start:start + micro] for k, v in draw.items()}
        share = len(part["t"]) / batch_size
        loss = _batch_loss(pipe, splice, vectors, part, templates, surrogate) * share
        (g,) = torch.autograd.grad(loss * scaler.scale if scaler.enabled else loss, [vectors])
        total, grad = total + loss.detach().cpu(), grad + g
    return total, grad


def _loss(pipe: StableDiffusionPipeline, splice: _Splice, vectors: torch.Tensor,
          mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator, batch_size: int,
          templates: Sequence[str]) -> torch.Tensor:
    """Epsilon (or v) MSE of one batch: random images, latent samples, noise, timesteps and
    templates, all drawn from `generator` on the CPU so a seed gives the same batch anywhere."""
    draw = _draw(mean, std, generator, batch_size, len(templates),
                 pipe.scheduler.config.num_train_timesteps)
    return _batch_loss(pipe, splice, vectors, draw, templates)


def _draw(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator, batch_size: int,
          n_templates: int, n_timesteps: int) -> dict[str, torch.Tensor]:
    import torch

    index = torch.randint(len(mean), (batch_size,), generator=generator)
    latents = mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(n_timesteps, (batch_size,), generator=generator)
    pick = torch.randint(n_templates, (batch_size,), generator=generator)
    return {"latents": latents, "noise": noise, "t": t, "pick": pick}


def _batch_loss(pipe: StableDiffusionPipeline, splice: _Splice, vectors: torch.Tensor,
                draw: dict[str, torch.Tensor], templates: Sequence[str],
                surrogate: DefenseSurrogate | None = None) -> torch.Tensor:
    from torch.nn import functional as F

    unet, scheduler = pipe.unet, pipe.scheduler
    device, dtype = unet.device, unet.dtype
    prompts = [templates[k].format(splice.token) for k in draw["pick"].tolist()]
    latents, noise, t = (draw[k].to(device) for k in ("latents", "noise", "t"))
    a = scheduler.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1)
    noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise).to(dtype)
    if surrogate is not None:
        # The defended sample: its input and the noise consistent with it and the clean latent.
        noisy, noise = surrogate(noisy, latents, noise, t, draw)
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        target = noise
    elif prediction == "v_prediction":
        target = a.sqrt() * noise - (1 - a).sqrt() * latents
    else:
        raise ValueError(f"unsupported prediction_type {prediction!r}")
    cond = splice.encode(prompts, vectors)
    pred = unet(noisy, t, encoder_hidden_states=cond.to(dtype)).sample
    return F.mse_loss(pred.float(), target.float())


def evaluation_loss(pipe: StableDiffusionPipeline, images: torch.Tensor, token: str,
                    embeds: torch.Tensor, *, samples: int = 64, seed: int = 1234,
                    templates: Sequence[str] = TEMPLATES) -> float:
    """The training loss on a fixed draw of `samples` (image, noise, timestep, template):
    comparable between embeddings, unlike the noisy per-step losses."""
    import torch

    splice = _Splice(pipe, token, embeds.shape[0])
    mean, std = encode_images(pipe, images)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return float(_loss(pipe, splice, embeds.to(pipe.unet.device), mean, std, generator,
                           samples, templates))


def encode_with_embedding(pipe: StableDiffusionPipeline, prompt: str, token: str,
                          embeds: torch.Tensor) -> torch.Tensor:
    """`prompt` (containing `token`) encoded by pipe's text encoder with the learned vector(s):
    (1, 77, D), equal to `pipe.encode_prompt` after `pipe.load_textual_inversion`. The pipe is
    left unchanged."""
    import torch

    splice = _Splice(pipe, token, embeds.shape[0])
    with torch.no_grad():
        return splice.encode([prompt], embeds)


def save_learned_embeds(path: Path, token: str, embeds: torch.Tensor) -> Path:
    """Write `learned_embeds.safetensors` ({token: (num_vectors, D)}) into folder `path` (or to
    `path` itself when it ends in .safetensors); returns the file. Atomic: no half-written file."""
    from safetensors.torch import save

    file = path if path.suffix == ".safetensors" else path / WEIGHTS_NAME
    data = save({token: embeds.detach().float().cpu().contiguous()},
                metadata={"format": "diffusers-textual-inversion"})
    atomic_write_bytes(file, data)
    return file
