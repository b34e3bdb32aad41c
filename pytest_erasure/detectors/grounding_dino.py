"""Grounding DINO detector: Receler's CIFAR-10 judge.

Receler (jasper0314-huang/Receler) asks Grounding DINO SwinT-OGC for boxes with caption = the
class name, box threshold 0.5 and text threshold 0.5, and counts the concept present when at least
one box survives. Here the same model runs through transformers
(`AutoModelForZeroShotObjectDetection`; the public port is `IDEA-Research/grounding-dino-tiny`,
which is SwinT-OGC) and the same rule through the processor's
`post_process_grounded_object_detection`:

- caption: `caption.format(label)` (default `{}`: the label itself), lower-cased, stripped and
  ended with "." exactly as GroundingDINO's own `predict` prepares it;
- a box survives when its best token score (sigmoid) is > `box_threshold` (default 0.5);
  `text_threshold` (default 0.5) only decides which caption words name a box, as in Receler's
  code it does not change the verdict;
- present when at least one box survives. Score: the best box score in the image.

The image processor in the folder decides the resolution (the public one: shortest edge 800,
longest 1333, as GroundingDINO's own transform).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pytest_erasure.detectors import _hf
from pytest_erasure.detectors.base import Detection, DetectorSpec
from pytest_erasure.errors import ErasureInputError

NAME = "grounding-dino"
MODEL_TYPES = ("grounding-dino", "mm-grounding-dino")
HINT = ("on a machine with internet: hf download IDEA-Research/grounding-dino-tiny --local-dir "
        "DIR --include '*.json' --include '*.txt' --include '*.safetensors' "
        "(audits/sd14/README.md)")


def prepare_caption(text: str) -> str:
    """GroundingDINO's `preprocess_caption`: lower case, stripped, ending with '.'."""
    caption = text.lower().strip()
    return caption if caption.endswith(".") else caption + "."


class GroundingDinoDetector:
    name = NAME

    def __init__(self, spec: DetectorSpec, device: str) -> None:
        options = read_options(spec)
        self.box_threshold: float = options["box_threshold"]
        self.text_threshold: float = options["text_threshold"]
        self.caption: str = options["caption"]
        self.batch_size: int = options["batch_size"]
        self.folder = model_folder(spec)
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.processor, self.model = _hf.load_local(AutoProcessor, AutoModelForZeroShotObjectDetection, spec,
                                                    self.folder, HINT)
        if not hasattr(self.processor, "post_process_grounded_object_detection"):
            raise ErasureInputError(
                f"detector '{NAME}' path {self.folder}",
                f"has a {type(self.processor).__name__}, not a Grounding DINO processor",
                f"save the model's own processor there ({HINT})")
        self.device = device
        self.model.to(device).eval()
        self.fingerprint = _hf.fingerprint(self.folder)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, label: str) -> Detection:
        if not isinstance(label, str) or not label.strip():
            raise ErasureInputError(f"detector '{NAME}' label", f"is {label!r}",
                                    "give the concept a non-empty label (the caption)")
        caption = prepare_caption(self.caption.format(label))
        pictures = _hf.to_pil(images, NAME)
        present: list[bool] = []
        scores: list[float] = []
        for part in _hf.batches(len(pictures), self.batch_size):
            chunk = pictures[part]
            inputs = self.processor(images=chunk, text=[caption] * len(chunk),
                                    return_tensors="pt").to(self.device)
            outputs = self.model(**inputs)
            results = self.processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=self.box_threshold,
                text_threshold=self.text_threshold,
                target_sizes=[(p.height, p.width) for p in chunk])
            # The best box score, whether or not it survives: how close the image came.
            best = outputs.logits.sigmoid().amax(dim=(1, 2)).float().cpu()
            for result, score in zip(results, best, strict=True):
                present.append(len(result["scores"]) > 0)
                scores.append(float(score))
        return Detection(present=present, score=scores)

    def describe(self) -> dict[str, Any]:
        return {
            "name": NAME,
            "model_class": type(self.model).__name__,
            "path": str(self.folder),
            "rule": (f"present when at least one box has score > {self.box_threshold} "
                     f"(caption = label, lower-cased, ending with '.'); Receler's CIFAR-10 rule"),
            "box_threshold": self.box_threshold,
            "text_threshold": self.text_threshold,
            "caption": self.caption,
            "score": "best box score (max sigmoid over queries and caption tokens)",
            "image_processor": type(self.processor.image_processor).__name__,
            **self.fingerprint,
        }


def read_options(spec: DetectorSpec) -> dict[str, Any]:
    options = _hf.Options(spec)
    values = {"box_threshold": options.fraction("box_threshold", 0.5),
              "text_threshold": options.fraction("text_threshold", 0.5),
              "caption": options.text("caption", "{}", must_contain="{}"),
              "batch_size": options.count("batch_size", 4)}
    options.finish()
    return values


def model_folder(spec: DetectorSpec) -> Path:
    folder, _ = _hf.model_folder(
        spec, MODEL_TYPES, "a Grounding DINO model (model_type 'grounding-dino')", HINT)
    _hf.require_file(folder, ["preprocessor_config.json", "processor_config.json"],
                     spec, "Grounding DINO's image processor", HINT)
    _hf.require_file(folder, ["tokenizer_config.json", "vocab.txt", "tokenizer.json"],
                     spec, "Grounding DINO's text tokenizer", HINT)
    return folder


def check(spec: DetectorSpec, labels: tuple[str, ...] = ()) -> None:
    """Options valid; the folder a Grounding DINO model with weights, processor, tokenizer."""
    read_options(spec)
    model_folder(spec)


def build(spec: DetectorSpec, device: str) -> GroundingDinoDetector:
    return GroundingDinoDetector(spec, device)
