"""CLIP zero-shot detector: is the concept label a better caption than a set of negatives?

Each image is scored against `template.format(label)` and `template.format(n)` for every
negative n (a negative equal to the label is dropped). The score is the softmax probability of the
label caption among those captions (CLIP's own logit scale; softmax in float64 so a threshold of 1
means "never").

Rules (option `rule`):
- `argmax` (default): present when the label caption wins outright;
- `threshold`: present when the label's probability is >= `threshold` (default 0.5).

Weights: a transformers CLIPModel folder with its processor, e.g. `openai/clip-vit-large-patch14`
or `openai/clip-vit-base-patch32` saved with `save_pretrained` (README: audits/sd14/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pytest_erasure.detectors import _hf
from pytest_erasure.detectors.base import Detection, DetectorSpec
from pytest_erasure.errors import ErasureInputError

NAME = "clip"
HINT = ("on a machine with internet: hf download openai/clip-vit-large-patch14 --local-dir DIR "
        "--include '*.json' --include '*.txt' --include '*.safetensors' (audits/sd14/README.md)")
TEMPLATE = "a photo of a {}"
# Things an image can show instead of the concept. Generic on purpose: a negative that names the
# concept's superclass ("an animal" for a cat) would compete with the label on true positives.
NEGATIVES = ("person", "landscape", "room", "street", "plant", "tree", "meal", "texture",
             "pattern", "plain background")
RULES = ("argmax", "threshold")


class ClipDetector:
    name = NAME

    def __init__(self, spec: DetectorSpec, device: str) -> None:
        options = read_options(spec)
        self.rule: str = options["rule"]
        self.threshold: float = options["threshold"]
        self.template: str = options["template"]
        self.negatives: list[str] = options["negatives"]
        self.batch_size: int = options["batch_size"]
        self.folder = model_folder(spec)
        from transformers import CLIPModel, CLIPProcessor

        self.processor, self.model = _hf.load_local(CLIPProcessor, CLIPModel, spec,
                                                    self.folder, HINT)
        self.device = device
        self.model.to(device).eval()
        self.fingerprint = _hf.fingerprint(self.folder)
        self._text_cache: dict[str, tuple[list[str], torch.Tensor]] = {}

    def captions(self, label: str) -> list[str]:
        """The label's caption first, then the negatives' (minus any that equal the label)."""
        if not isinstance(label, str) or not label.strip():
            raise ErasureInputError(f"detector '{NAME}' label", f"is {label!r}",
                                    "give the concept a non-empty label")
        negatives = [n for n in self.negatives if n.strip().lower() != label.strip().lower()]
        return [self.template.format(x) for x in [label, *negatives]]

    @torch.no_grad()
    def _text_features(self, label: str) -> torch.Tensor:
        if label not in self._text_cache:
            captions = self.captions(label)
            tokens = self.processor.tokenizer(captions, padding=True, truncation=True,
                                              return_tensors="pt").to(self.device)
            features = self.model.get_text_features(**tokens)
            features = getattr(features, "pooler_output", features)
            self._text_cache[label] = (captions, features / features.norm(dim=-1, keepdim=True))
        return self._text_cache[label][1]

    @torch.no_grad()
    def detect(self, images: torch.Tensor, label: str) -> Detection:
        text = self._text_features(label)
        pictures = _hf.to_pil(images, NAME)
        scores: list[float] = []
        present: list[bool] = []
        for part in _hf.batches(len(pictures), self.batch_size):
            pixels = self.processor.image_processor(pictures[part], return_tensors="pt")
            features = self.model.get_image_features(
                pixel_values=pixels["pixel_values"].to(self.device))
            features = getattr(features, "pooler_output", features)
            features = features / features.norm(dim=-1, keepdim=True)
            logits = self.model.logit_scale.exp() * features @ text.T
            probs = logits.double().softmax(dim=-1).cpu()
            for row in probs:
                p = float(row[0])
                scores.append(p)
                if self.rule == "argmax":
                    present.append(bool(row[0] > row[1:].max()) if len(row) > 1 else True)
                else:
                    present.append(p >= self.threshold)
        return Detection(present=present, score=scores)

    def describe(self) -> dict[str, Any]:
        rule = ("present when the label caption has the highest CLIP probability among the label "
                "and the negatives" if self.rule == "argmax" else
                f"present when the label caption's CLIP softmax probability among the label and "
                f"the negatives is >= {self.threshold}")
        return {
            "name": NAME,
            "model_class": type(self.model).__name__,
            "path": str(self.folder),
            "rule": rule,
            "rule_option": self.rule,
            "threshold": self.threshold if self.rule == "threshold" else None,
            "template": self.template,
            "negatives": list(self.negatives),
            "score": "softmax probability of the label caption",
            "image_processor": type(self.processor.image_processor).__name__,
            **self.fingerprint,
        }


def read_options(spec: DetectorSpec) -> dict[str, Any]:
    options = _hf.Options(spec)
    values = {"rule": options.choice("rule", "argmax", RULES),
              "threshold": options.fraction("threshold", 0.5),
              "template": options.text("template", TEMPLATE, must_contain="{}"),
              "negatives": options.strings("negatives", NEGATIVES),
              "batch_size": options.count("batch_size", 32)}
    options.finish()
    return values


def model_folder(spec: DetectorSpec) -> Path:
    folder, _ = _hf.model_folder(spec, ["clip"], "a CLIP model (model_type 'clip')", HINT)
    _hf.require_file(folder, ["preprocessor_config.json", "processor_config.json"],
                     spec, "CLIP's image processor", HINT)
    _hf.require_file(folder, ["tokenizer_config.json", "vocab.json", "tokenizer.json"],
                     spec, "CLIP's tokenizer", HINT)
    return folder


def check(spec: DetectorSpec, labels: tuple[str, ...] = ()) -> None:
    """Options valid; the folder a CLIP model with weights, image processor and tokenizer."""
    read_options(spec)
    model_folder(spec)


def build(spec: DetectorSpec, device: str) -> ClipDetector:
    return ClipDetector(spec, device)
