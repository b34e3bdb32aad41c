"""The shapes world's detector: a small CNN that names the shape in a 32x32 image (or "none").

The network is defined here, once: the world's build script (fixtures/shapes/build.py) imports it
to train the weights, and the plugin loads them. A shipped detector is a folder with
`config.json` (labels, architecture, training facts) and `model.safetensors`.

Rule: the concept `label` is present in an image when the classifier's most probable label is
`label` and its softmax probability is at least `threshold` (default 0.5).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pytest_erasure.cache import file_sha256
from pytest_erasure.detectors.base import Detection, DetectorSpec
from pytest_erasure.errors import ErasureInputError

INPUT_SIZE = 32
DEFAULT_THRESHOLD = 0.5
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ShapesCNN(nn.Module):
    """Six 3x3 convolutions (BatchNorm, ReLU), three 2x max-pools, global average pool, linear.

    Input: (N, 3, 32, 32) float in [0, 1]. Output: logits (N, num_labels).
    """

    def __init__(self, num_labels: int, channels: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                           nn.ReLU(inplace=True)]
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x * 2 - 1)
        return self.head(h.mean(dim=(2, 3)))


def prepare(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1], any size -> (N, 3, 32, 32) float32 in [0, 1] (area resize)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ErasureInputError(
            "detector input", f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}",
            "pass RGB image batches",
        )
    x = images.float().clamp(0, 1)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
    return x


def load_shapes_classifier(path: str | Path, device: str = "cpu") -> tuple[ShapesCNN, dict]:
    """Load (model in eval mode on `device`, config dict) from a detector folder."""
    from safetensors.torch import load_file

    folder = Path(path)
    config = read_config(folder)
    w_path = folder / WEIGHTS_FILE
    arch = config.get("architecture", {})
    model = ShapesCNN(len(config["labels"]), tuple(arch.get("channels", (32, 64, 128))))
    model.load_state_dict(load_file(str(w_path)))
    return model.to(device).eval(), config


class ShapesDetector:
    name = "shapes"

    def __init__(self, path: str | Path, device: str = "cpu",
                 threshold: float = DEFAULT_THRESHOLD) -> None:
        self.path = Path(path)
        self.device = device
        self.threshold = float(threshold)
        self.model, self.config = load_shapes_classifier(self.path, device)
        self.labels: list[str] = list(self.config["labels"])
        self.sha256 = file_sha256(self.path / WEIGHTS_FILE)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Softmax over the labels, (N, num_labels), on the CPU."""
        x = prepare(images)
        out = [F.softmax(self.model(x[i:i + batch_size].to(self.device)), dim=1).cpu()
               for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(self.labels))

    def log_probability(self, images: torch.Tensor, label: str) -> torch.Tensor:
        """log p(label | image) per image, differentiable in the images (N, 3, H, W) in [0, 1]:
        the classifier guidance of the guidance probe (`samplers.classifier_guide`)."""
        x = prepare(images).to(self.device)
        return F.log_softmax(self.model(x), dim=1)[:, self.labels.index(label)]

    def classify(self, images: torch.Tensor) -> list[str]:
        """The most probable label of each image."""
        return [self.labels[i] for i in self.probabilities(images).argmax(1).tolist()]

    def detect(self, images: torch.Tensor, label: str) -> Detection:
        if label not in self.labels:
            raise ErasureInputError(
                f"shapes detector label '{label}'", "is not a label this detector knows",
                f"use one of: {', '.join(self.labels)}",
            )
        probs = self.probabilities(images)
        k = self.labels.index(label)
        top = probs.argmax(1)
        present = [bool(t == k and p >= self.threshold) for t, p in zip(top.tolist(),
                                                                        probs[:, k].tolist(),
                                                                        strict=True)]
        return Detection(present=present, score=[float(p) for p in probs[:, k]])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rule": "present when the CNN's argmax label is the concept's label and its softmax "
                    "probability >= threshold; images are area-resized to 32x32",
            "threshold": self.threshold,
            "labels": self.labels,
            "weights": str(self.path / WEIGHTS_FILE),
            "sha256": self.sha256,
            "training": self.config.get("training", {}),
        }


REBUILD = ("point the detector path at fixtures/shapes/detector or rebuild the world "
           "(python fixtures/shapes/build.py --only detector)")


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, once config.json and the weights are both there."""
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise ErasureInputError(f"shapes detector '{folder}'",
                                f"needs {CONFIG_FILE} and {WEIGHTS_FILE}", REBUILD)
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ErasureInputError(f"shapes detector '{folder}' {CONFIG_FILE}",
                                f"cannot be read ({exc})", REBUILD) from None
    labels = config.get("labels") if isinstance(config, dict) else None
    if not isinstance(labels, list) or not labels:
        raise ErasureInputError(f"shapes detector '{folder}' {CONFIG_FILE}",
                                "lists no labels", REBUILD)
    return config


def check(spec: DetectorSpec, labels: tuple[str, ...] = ()) -> None:
    """The folder holds config.json (with labels) and the weights, the threshold is valid and
    every concept's label is one the classifier names; no weights are read."""
    _threshold(spec)
    config = read_config(Path(spec.path))  # type: ignore[arg-type]
    for label in labels:
        if label not in config["labels"]:
            raise ErasureInputError(
                f"shapes detector label '{label}'", "is not a label this detector knows",
                f"use one of: {', '.join(config['labels'])}")


def _threshold(spec: DetectorSpec) -> float:
    if spec.path is None:
        raise ErasureInputError(
            "shapes detector", "needs a path to its folder (config.json + model.safetensors)",
            "set the detector path, e.g. fixtures/shapes/detector",
        )
    threshold = spec.options.get("threshold", DEFAULT_THRESHOLD)
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        threshold = -1.0
    if not 0.0 <= threshold <= 1.0:
        raise ErasureInputError(
            "shapes detector option 'threshold'",
            f"must be a number in [0, 1], got {spec.options.get('threshold')!r}",
            "use e.g. threshold = 0.5",
        )
    return threshold


def build(spec: DetectorSpec, device: str) -> ShapesDetector:
    """Factory for the registry: `DetectorSpec("shapes", path, {"threshold": 0.5})`."""
    threshold = _threshold(spec)
    return ShapesDetector(spec.path, device, threshold)  # type: ignore[arg-type]
