"""ImageNet classifier detector: is one of the label's classes among the top-k predictions?

How ESD and UCE (torchvision ResNet-50, top-1) and UnlearnDiffAtk (`microsoft/resnet-50`, argmax
against fixed ImageNet ids) judge objects. Any transformers image classifier folder works
(`AutoModelForImageClassification`: ResNetForImageClassification, ViT, ConvNeXt, ...); the model's
own image processor prepares the images (for microsoft/resnet-50: resize 256, centre crop 224,
ImageNet mean/std, as torchvision's ResNet-50 weights expect).

Rule: present when any of the `top_k` (default 1) most probable classes is in the label set.
Score: the summed softmax probability of the label set.

The label set comes from the concept's `label`:
- a comma list of class ids and/or class names, e.g. `"497"`, `"church"`, `"garbage_truck"`,
  `"parachute"`, `"tench"`, `"404, 895"`. A name matches a class when it equals one of the
  comma-separated synonyms of the model's `config.id2label` entry (case, `_` and `-` ignored):
  church -> 497 ("church, church building"), garbage_truck -> 569 ("garbage truck, dustcart"),
  parachute -> 701 ("parachute, chute"), tench -> 0 ("tench, Tinca tinca"). A name matching
  several classes ("crane": 134 the bird, 517 the machine) is refused: give the ids.
- a CIFAR-10 class name (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck) on
  a 1000-class model: the ImageNet-1k ids in `CIFAR10_TO_IMAGENET` below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pytest_erasure.detectors import _hf
from pytest_erasure.detectors.base import Detection, DetectorSpec
from pytest_erasure.errors import ErasureInputError

NAME = "imagenet"
HINT = ("on a machine with internet: hf download microsoft/resnet-50 --local-dir DIR "
        "--include '*.json' --include '*.safetensors' (audits/sd14/README.md)")


def _span(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


# CIFAR-10 class -> ImageNet-1k class ids (0-based, the order of the standard ILSVRC-2012 class
# index that microsoft/resnet-50's config.id2label and torchvision's weights use).
# Source: built by hand for this project from that class index, taking the ImageNet-1k classes
# that are WordNet hyponyms of the CIFAR-10 class, restricted by CIFAR-10's own class definitions
# (Krizhevsky 2009: "automobile" is sedans, SUVs and the like; "truck" is big trucks only; pickup
# trucks are in neither). The spans for dogs (151-268), cats (281-285) and frogs (30-32) are
# those of MadryLab's robustness library (RestrictedImageNet); its bird span (80-100) is widened
# here to every bird class (7-24, 80-100, 127-146). ImageNet-1k has no deer class: `deer` maps to
# the deer-like antelopes (hartebeest, impala, gazelle) and is a weak proxy - prefer the
# grounding-dino detector for deer. Car parts that only cars have (car wheel 479, grille 581)
# count for `automobile` because ImageNet classifiers often name a car close-up by them.
CIFAR10_TO_IMAGENET: dict[str, tuple[int, ...]] = {
    "airplane": (404, 895, 908),  # airliner, warplane, wing
    "automobile": (436, 468, 479, 511, 581, 609, 627, 656, 661, 751, 817),
    # beach wagon, cab, car wheel, convertible, grille, jeep, limousine, minivan, Model T,
    # racer, sports car
    "bird": _span(7, 24) + _span(80, 100) + _span(127, 146),
    "cat": _span(281, 285),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "deer": (351, 352, 353),  # hartebeest, impala, gazelle (no deer in ImageNet-1k)
    "dog": _span(151, 268),
    "frog": _span(30, 32),  # bullfrog, tree frog, tailed frog
    "horse": (339, 603),  # sorrel, horse cart
    "ship": (403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 913, 914),
    # aircraft carrier, canoe, catamaran, container ship, fireboat, gondola, lifeboat, liner,
    # pirate ship, schooner, speedboat, submarine, trimaran, wreck, yawl
    "truck": (555, 569, 675, 864, 867),
    # fire engine, garbage truck, moving van, tow truck, trailer truck
}
CIFAR10_SOURCE = ("hand-built from the ILSVRC-2012 class index by WordNet hyponymy and CIFAR-10's "
                  "class definitions (pytest_erasure/detectors/imagenet.py)")


def _norm(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


class ImagenetDetector:
    name = NAME

    def __init__(self, spec: DetectorSpec, device: str) -> None:
        options = read_options(spec)
        self.top_k: int = options["top_k"]
        self.batch_size: int = options["batch_size"]
        self.folder, _ = model_folder(spec)
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.processor, self.model = _hf.load_local(AutoImageProcessor, AutoModelForImageClassification, spec,
                                                    self.folder, HINT)
        self.device = device
        self.model.to(device).eval()
        self.id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        self.num_labels = len(self.id2label)
        if self.top_k > self.num_labels:
            raise ErasureInputError(f"detector '{NAME}' option top_k", f"is {self.top_k}",
                                    f"give at most the model's {self.num_labels} classes")
        self.fingerprint = _hf.fingerprint(self.folder)
        self.resolved: dict[str, list[int]] = {}

    def label_set(self, label: str) -> list[int]:
        """The class ids `label` stands for (see the module docstring); unknown -> usage error."""
        if label not in self.resolved:
            self.resolved[label] = label_ids(label, self.id2label)
        return self.resolved[label]

    @torch.no_grad()
    def detect(self, images: torch.Tensor, label: str) -> Detection:
        wanted = self.label_set(label)
        wanted_t = torch.tensor(wanted)
        pictures = _hf.to_pil(images, NAME)
        present: list[bool] = []
        scores: list[float] = []
        for part in _hf.batches(len(pictures), self.batch_size):
            pixels = self.processor(pictures[part], return_tensors="pt")["pixel_values"]
            logits = self.model(pixel_values=pixels.to(self.device)).logits.float().cpu()
            probs = logits.softmax(dim=-1)
            top = logits.topk(self.top_k, dim=-1).indices
            present += torch.isin(top, wanted_t).any(dim=-1).tolist()
            scores += probs[:, wanted_t].sum(dim=-1).tolist()
        return Detection(present=present, score=scores)

    def describe(self) -> dict[str, Any]:
        return {
            "name": NAME,
            "model_class": type(self.model).__name__,
            "path": str(self.folder),
            "rule": f"present when any of the top-{self.top_k} classes is in the label set",
            "top_k": self.top_k,
            "score": "summed softmax probability of the label set",
            "label_sets": {label: ids for label, ids in self.resolved.items()},
            "cifar10_mapping_source": CIFAR10_SOURCE,
            "num_labels": self.num_labels,
            "image_processor": type(self.processor).__name__,
            **self.fingerprint,
        }


def read_options(spec: DetectorSpec) -> dict[str, Any]:
    options = _hf.Options(spec)
    values = {"top_k": options.count("top_k", 1), "batch_size": options.count("batch_size", 32)}
    options.finish()
    return values


def model_folder(spec: DetectorSpec) -> tuple[Path, dict[str, Any]]:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    )

    folder, config = _hf.model_folder(
        spec, sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES),
        "an image classifier (AutoModelForImageClassification)", HINT)
    _hf.require_file(folder, ["preprocessor_config.json"], spec,
                     "the classifier's image processor", HINT)
    return folder, config


def label_ids(label: str, id2label: dict[int, str]) -> list[int]:
    """The class ids a concept's `label` stands for on a model with this `id2label` (ids, class
    names, or a CIFAR-10 class on a 1000-class model); an unknown one is a usage error. A
    function of the config alone, so labels resolve before any weights load (`check`)."""
    where = f"detector '{NAME}' label {label!r}"
    items = [item.strip() for item in str(label).split(",") if item.strip()]
    if not items:
        raise ErasureInputError(where, "is empty", "give class ids or names")
    ids: set[int] = set()
    for item in items:
        ids.update(_resolve(item, id2label, where))
    return sorted(ids)


def _resolve(item: str, id2label: dict[int, str], where: str) -> list[int]:
    if item.lstrip("-").isdigit():
        index = int(item)
        if index not in id2label:
            raise ErasureInputError(where, f"class id {index} is not one of the model's "
                                    f"{len(id2label)} classes",
                                    f"give ids from 0 to {len(id2label) - 1}")
        return [index]
    name = _norm(item)
    if name in CIFAR10_TO_IMAGENET and len(id2label) == 1000:
        return list(CIFAR10_TO_IMAGENET[name])
    matches = [i for i, text in id2label.items() if name in {_norm(x) for x in text.split(",")}]
    if not matches:
        raise ErasureInputError(where, f"'{item}' names no class of the model (config.id2label)",
                                "give class ids (e.g. label = \"497\") or a class name from "
                                "the model's id2label")
    if len(matches) > 1:
        names = ", ".join(f"{i} ({id2label[i]})" for i in matches)
        raise ErasureInputError(where, f"'{item}' names several classes: {names}",
                                "give the class id(s) you mean")
    return matches


def check(spec: DetectorSpec, labels: tuple[str, ...] = ()) -> None:
    """Options valid; the folder an image classifier with weights and image processor, with at
    least top_k classes in its config; every label resolves against the model's id2label, read
    from its config (no weights load)."""
    options = read_options(spec)
    _, config = model_folder(spec)
    classes = len(config.get("id2label") or {}) or int(config.get("num_labels") or 0)
    if classes and options["top_k"] > classes:
        raise ErasureInputError(f"detector '{NAME}' option top_k", f"is {options['top_k']}",
                                f"give at most the model's {classes} classes")
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    if id2label:
        for label in labels:
            label_ids(label, id2label)


def build(spec: DetectorSpec, device: str) -> ImagenetDetector:
    return ImagenetDetector(spec, device)
