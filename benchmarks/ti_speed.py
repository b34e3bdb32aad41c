"""Textual-inversion steps per second: our loop vs a bare loop of the same model and batch.

The bare loop is the textbook one: a new embedding row in the text encoder, all other rows
frozen by zeroing their gradient, epsilon-MSE on VAE latents of the same reference images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ROOT / "fixtures" / "shapes"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("ours", "bare"), required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES / "standard", local_files_only=True,
                                                   torch_dtype=torch.float32)
    files = sorted((SHAPES / "references" / "circle").glob("*.png"))
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    images = images.permute(0, 3, 1, 2).float() / 255
    start = time.perf_counter()
    if args.mode == "ours":
        from pytest_erasure.attacks.textual_inversion import train_textual_inversion

        train_textual_inversion(pipe, images, token="<c>", init_token="shape", steps=args.steps,
                                batch_size=args.batch, lr=2e-3)
    else:
        bare(pipe, images, args.steps, args.batch)
    seconds = time.perf_counter() - start
    print(json.dumps({"mode": args.mode, "steps": args.steps, "seconds": seconds,
                      "steps_per_second": args.steps / seconds}))


def bare(pipe, images, steps: int, batch: int) -> None:
    import torch
    import torch.nn.functional as F

    tok, te, unet, vae, sched = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler
    tok.add_tokens(["<c>"])
    te.resize_token_embeddings(len(tok))
    new_id = tok.convert_tokens_to_ids("<c>")
    emb = te.get_input_embeddings()
    with torch.no_grad():
        emb.weight[new_id] = emb.weight[tok.convert_tokens_to_ids("shape</w>")]
    for p in [*unet.parameters(), *vae.parameters(), *te.parameters()]:
        p.requires_grad_(False)
    emb.weight.requires_grad_(True)
    opt = torch.optim.AdamW([emb.weight], lr=2e-3, weight_decay=0)
    ids = tok(["a <c>"] * batch, padding="max_length", max_length=77, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        pick = torch.randint(0, len(images), (batch,), generator=g)
        with torch.no_grad():
            latents = vae.encode(images[pick] * 2 - 1).latent_dist.sample(g) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        noisy = sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, te(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        mask = torch.ones(emb.weight.shape[0], dtype=torch.bool)
        mask[new_id] = False
        emb.weight.grad[mask] = 0
        opt.step()
        opt.zero_grad()


if __name__ == "__main__":
    main()
