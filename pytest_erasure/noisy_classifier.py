"""The network of noisy latents the guidance probe steers with, its weights file and gradient.

Its training is an attack's (`attacks.latent_classifier`); what the sampler needs at every
guided step (`samplers.classifier_guide`) lives here, on the ground floor, so the sampler reads
the classifier without importing an attack: the paper's `LatentClassifierT` (kevinlu4588/
WhenAreConceptsErased, classifier_guidance/create_latent_classifier.py), the weights left by
their sha256 in `FOLDER` for the generation unit to read wherever it runs (the steering that
names them stays JSON), and d log p(concept | x_t) / d x_t.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

FOLDER = Path(tempfile.gettempdir()) / "pytest-erasure-latent-classifiers"
"""Where trained weights are left by their sha256 for the sampler to read."""


class FixedTimestepEncoding(nn.Module):
    """(sqrt(a_t), sqrt(1 - a_t)) of the scheduler the classifier was trained under."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().float().clone())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.alphas_cumprod[t]
        return torch.stack([alpha_bar.sqrt(), (1 - alpha_bar).sqrt()], dim=-1)


class LatentClassifierT(nn.Module):
    """The paper's classifier, its layers as theirs are named (so their checkpoints load)."""

    def __init__(self, flat_dim: int, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.t_embed = FixedTimestepEncoding(alphas_cumprod)
        self.fc_t = nn.Linear(2, 1024)
        self.fc_x = nn.Linear(flat_dim, 1024)
        self.net = nn.Sequential(nn.SiLU(), nn.Dropout(0.3), nn.Linear(1024, 512), nn.SiLU(),
                                 nn.Dropout(0.3), nn.Linear(512, 1))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc_x(z.flatten(start_dim=1)) + self.fc_t(self.t_embed(t)))


def from_state(state: dict[str, torch.Tensor]) -> LatentClassifierT:
    """The classifier of a state dict (its input size read from `fc_x`), in eval mode."""
    model = LatentClassifierT(int(state["fc_x.weight"].shape[1]), state["t_embed.alphas_cumprod"])
    model.load_state_dict(state)
    return model.eval()


def weights_file(sha256: str) -> Path:
    return FOLDER / f"{sha256}.safetensors"


def leave(state: dict[str, torch.Tensor], sha256: str) -> Path:
    """Write the weights where the sampler reads them (once per content)."""
    from safetensors.torch import save_file

    path = weights_file(sha256)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{id(state)}.partial")
        save_file({k: v.contiguous() for k, v in state.items()}, str(partial))
        partial.replace(path)
    return path


@functools.lru_cache(maxsize=8)
def load(sha256: str, device: str) -> LatentClassifierT:
    """The classifier the steering names by its weights' sha256, checked against it."""
    from safetensors.torch import load_file

    from pytest_erasure.cache import tensor_digest

    path = weights_file(sha256)
    if not path.is_file():
        raise FileNotFoundError(f"latent classifier {sha256[:12]} is not at {path}: the "
                                "generation ran where the audit did not leave it")
    state = load_file(str(path))
    if tensor_digest(state) != sha256:
        raise ValueError(f"latent classifier at {path} does not match its sha256 {sha256}")
    return from_state(state).to(device)


def log_probability_gradient(model: LatentClassifierT, x: torch.Tensor, t: Any) -> torch.Tensor:
    """d log p(concept | x_t) / d x_t per sample: their -BCE(logit, 1) = log sigmoid(logit),
    summed over the batch so each sample gets its own gradient (theirs ran one at a time)."""
    with torch.enable_grad():
        z = x.detach().float().requires_grad_(True)
        steps = torch.full((len(z),), int(t), dtype=torch.long, device=z.device)
        log_p = F.logsigmoid(model(z, steps).squeeze(-1)).sum()
        return torch.autograd.grad(log_p, z)[0]


def unpack(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Leave every classifier a file of tensors carries (`classifier.<sha256>.<parameter>`, as
    the guidance probe exports them beside its latents) where the sampler reads it; their
    sha256s. The sha256 is checked when the sampler loads them (`load`)."""
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.startswith("classifier."):
            sha, name = key[len("classifier."):].split(".", 1)
            states.setdefault(sha, {})[name] = tensor
    for sha, state in states.items():
        leave(state, sha)
    return sorted(states)
