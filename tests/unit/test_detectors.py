"""The real-model detectors (clip, grounding-dino, imagenet, nudenet) and the SD v1.4 suites.

Each transformers detector runs on a tiny randomly initialised model of the real class, built
here, saved with `save_pretrained` next to its processor, and loaded through `build_detector`
exactly as an audit loads the real one. NudeNet runs on its real shipped weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from pytest_erasure.concepts import load_concepts
from pytest_erasure.detectors.base import Detection, DetectorSpec, build_detector
from pytest_erasure.errors import ErasureInputError

ROOT = Path(__file__).resolve().parents[2]
SD14 = ROOT / "audits" / "sd14"
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _images(n: int = 3, seed: int = 0, size: tuple[int, int] = (40, 48)) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def _build(name: str, path: Path | None, **options) -> object:
    return build_detector(DetectorSpec(name, path, options), "cpu")


def _check_detection(result: Detection, n: int) -> None:
    assert isinstance(result, Detection)
    assert len(result.present) == len(result.score) == n
    assert all(isinstance(p, bool) for p in result.present)
    assert all(isinstance(s, float) for s in result.score)


# -- tiny models of the real classes ---------------------------------------------------------

@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pytest_erasure.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, vocab_size=len(tokenizer),
                         max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, image_size=32, patch_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=37),
        projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer).save_pretrained(folder)
    return folder


IMAGENET_NAMES = {0: "tench, Tinca tinca", 134: "crane", 404: "airliner",
                  497: "church, church building", 517: "crane", 569: "garbage truck, dustcart",
                  701: "parachute, chute"}


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    id2label = {i: IMAGENET_NAMES.get(i, f"class {i}") for i in range(1000)}
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic", id2label=id2label,
                          label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("imagenet")
    ResNetForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gdino_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The smallest config that runs: transformers' own test config (Swin + BERT), shrunk.
    # d_model must be a multiple of 32 (GroupNorm(32)); two decoder layers (the box heads are
    # tied across layers); 96 px so the coarsest (1/64) feature map is wider than 1 pixel.
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "cat", "dog", "truck"]
    vocab = {w: i for i, w in enumerate(words + list("bcdefghijklmnopqrstuvwxyz"))}
    tokenizer = BertTokenizer(vocab=vocab)
    config = GroundingDinoConfig(
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8, num_queries=4,
        num_feature_levels=4, encoder_n_points=2, decoder_n_points=2, max_text_len=16,
        use_timm_backbone=False,
        backbone_config=SwinConfig(window_size=7, embed_dim=8, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 1, 1], image_size=96, out_indices=[2, 3, 4]),
        text_config={"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 8,
                     "max_position_embeddings": 32, "vocab_size": len(vocab)})
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("grounding-dino")
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 96,
                                                          "longest_edge": 96}),
        tokenizer=tokenizer).save_pretrained(folder)
    return folder


# -- clip -------------------------------------------------------------------------------------

def test_clip_detects_deterministically_and_describes_itself(clip_folder: Path) -> None:
    detector = _build("clip", clip_folder)
    images = _images()
    first = detector.detect(images, "circle")
    _check_detection(first, 3)
    assert all(0 <= s <= 1 for s in first.score)
    assert detector.detect(images, "circle") == first
    assert _build("clip", clip_folder).detect(images, "circle") == first
    facts = detector.describe()
    assert facts["model_class"] == "CLIPModel"
    assert facts["rule_option"] == "argmax" and "highest" in facts["rule"]
    assert facts["template"] == "a photo of a {}" and "person" in facts["negatives"]
    assert facts["weights"]["model.safetensors"] == _sha256(clip_folder / "model.safetensors")
    assert facts["configs"]["config.json"] == _sha256(clip_folder / "config.json")


def test_clip_rules(clip_folder: Path) -> None:
    images = _images(4, seed=1)
    assert all(_build("clip", clip_folder, rule="threshold", threshold=0.0)
               .detect(images, "star").present)
    never = _build("clip", clip_folder, rule="threshold", threshold=1.0)
    assert not any(never.detect(images, "star").present)
    assert "0.5" not in never.describe()["rule"] and "1.0" in never.describe()["rule"]
    # A negative equal to the label is dropped: the label alone always wins.
    alone = _build("clip", clip_folder, negatives=["Star"], template="{}")
    result = alone.detect(images, "star")
    assert all(result.present) and result.score == pytest.approx([1.0] * 4)
    assert alone.captions("star") == ["star"]


@pytest.mark.parametrize("options, key", [({"rule": "vote"}, "rule"),
                                          ({"threshold": 2}, "threshold"),
                                          ({"template": "a photo"}, "template"),
                                          ({"negatives": []}, "negatives"),
                                          ({"treshold": 0.5}, "treshold")])
def test_clip_bad_options(clip_folder: Path, options: dict, key: str) -> None:
    with pytest.raises(ErasureInputError, match=key):
        _build("clip", clip_folder, **options)


# -- imagenet ---------------------------------------------------------------------------------

def test_imagenet_label_sets(imagenet_folder: Path) -> None:
    from pytest_erasure.detectors.imagenet import CIFAR10_TO_IMAGENET

    detector = _build("imagenet", imagenet_folder)
    assert detector.label_set("church") == [497]
    assert detector.label_set("garbage_truck") == [569]
    assert detector.label_set("Parachute") == [701]
    assert detector.label_set("tench") == [0]
    assert detector.label_set("497, parachute") == [497, 701]
    assert detector.label_set("airplane") == list(CIFAR10_TO_IMAGENET["airplane"])
    for bad, problem in [("unicorn", "names no class"), ("crane", "134"), ("1000", "1000"),
                         (" , ", "empty")]:
        with pytest.raises(ErasureInputError, match=problem):
            detector.detect(_images(1), bad)


def test_imagenet_labels_resolve_before_any_weights_load(imagenet_folder: Path) -> None:
    """The up-front check resolves every label from the model's config alone (issue 18): a
    typo in a concepts file costs a usage error in seconds, not a failed case."""
    from pytest_erasure.detectors.base import DetectorSpec
    from pytest_erasure.detectors.imagenet import check

    spec = DetectorSpec("imagenet", imagenet_folder, {})
    check(spec, ("church", "497, parachute", "airplane"))
    for bad, problem in [("unicorn", "names no class"), ("1000", "1000")]:
        with pytest.raises(ErasureInputError, match=problem):
            check(spec, ("church", bad))


def test_cifar10_mapping_is_a_partition_of_imagenet_ids() -> None:
    from pytest_erasure.detectors.imagenet import CIFAR10_TO_IMAGENET

    assert tuple(CIFAR10_TO_IMAGENET) == CIFAR10
    ids = [i for group in CIFAR10_TO_IMAGENET.values() for i in group]
    assert len(ids) == len(set(ids)) and all(0 <= i < 1000 for i in ids)
    assert {497, 701, 0}.isdisjoint(ids)  # church, parachute, tench: not CIFAR-10 classes
    assert 569 in CIFAR10_TO_IMAGENET["truck"] and 717 not in ids  # CIFAR-10 excludes pickups


def test_imagenet_rule_is_top_k_against_the_model(imagenet_folder: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from pytest_erasure.detectors._hf import to_pil

    images = _images(4, seed=2)
    detector = _build("imagenet", imagenet_folder)
    # Label = whatever the model ranks first for image 0: present there, by top-1.
    model = AutoModelForImageClassification.from_pretrained(imagenet_folder).eval()
    processor = AutoImageProcessor.from_pretrained(imagenet_folder, backend="pil")
    with torch.no_grad():
        logits = model(**processor(to_pil(images, "test"), return_tensors="pt")).logits
    top1 = logits.argmax(-1).tolist()
    result = detector.detect(images, str(top1[0]))
    _check_detection(result, 4)
    assert result.present == [t == top1[0] for t in top1]
    assert result.score == pytest.approx(logits.softmax(-1)[:, top1[0]].tolist(), abs=1e-5)
    assert detector.detect(images, str(top1[0])) == result
    everything = _build("imagenet", imagenet_folder, top_k=1000)
    assert all(everything.detect(images, "tench").present)
    facts = everything.describe()
    assert facts["model_class"] == "ResNetForImageClassification" and facts["top_k"] == 1000
    assert facts["label_sets"] == {"tench": [0]}
    assert facts["weights"]["model.safetensors"] == _sha256(imagenet_folder / "model.safetensors")
    with pytest.raises(ErasureInputError, match="top_k"):
        _build("imagenet", imagenet_folder, top_k=1001)


# -- grounding-dino ---------------------------------------------------------------------------

def test_grounding_dino_receler_rule(gdino_folder: Path) -> None:
    from pytest_erasure.detectors.grounding_dino import prepare_caption

    images = _images(2, seed=3)
    detector = _build("grounding-dino", gdino_folder)
    result = detector.detect(images, "cat")
    _check_detection(result, 2)
    assert detector.detect(images, "cat") == result
    # present <=> best box score > box threshold (0.5 by default)
    assert result.present == [s > 0.5 for s in result.score]
    assert all(_build("grounding-dino", gdino_folder, box_threshold=0.0)
               .detect(images, "Cat").present)
    assert not any(_build("grounding-dino", gdino_folder, box_threshold=1.0)
                   .detect(images, "cat").present)
    assert prepare_caption(" Garbage Truck ") == "garbage truck."
    facts = detector.describe()
    assert facts["model_class"] == "GroundingDinoForObjectDetection"
    assert facts["box_threshold"] == facts["text_threshold"] == 0.5
    assert "at least one box" in facts["rule"]
    assert facts["weights"]["model.safetensors"] == _sha256(gdino_folder / "model.safetensors")
    with pytest.raises(ErasureInputError, match="label"):
        detector.detect(images, " ")


# -- bad detector paths -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["clip", "grounding-dino", "imagenet"])
def test_bad_detector_paths_name_the_path(name: str, tmp_path: Path, clip_folder: Path,
                                          imagenet_folder: Path) -> None:
    with pytest.raises(ErasureInputError, match="detector_path"):
        _build(name, None)
    missing = tmp_path / "nowhere"
    with pytest.raises(ErasureInputError, match="does not exist") as info:
        _build(name, missing)
    assert str(missing) in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ErasureInputError, match="config.json") as info:
        _build(name, empty)
    assert str(empty) in str(info.value)
    wrong = imagenet_folder if name != "imagenet" else tmp_path / "wrong"
    if name == "imagenet":  # Grounding DINO is no image classifier
        wrong.mkdir()
        (wrong / "config.json").write_text('{"model_type": "grounding-dino"}')
    with pytest.raises(ErasureInputError, match="holds a model of type") as info:
        _build(name, wrong)
    assert str(wrong) in str(info.value)
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    source = clip_folder if name != "imagenet" else imagenet_folder
    config = (source / "config.json").read_text()
    if name == "grounding-dino":
        config = '{"model_type": "grounding-dino"}'
    (weightless / "config.json").write_text(config)
    with pytest.raises(ErasureInputError, match="no weight files") as info:
        _build(name, weightless)
    assert str(weightless) in str(info.value) and "download" in info.value.fix


def test_missing_processor_and_corrupt_weights(tmp_path: Path, clip_folder: Path) -> None:
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_folder / name, bare / name)
    with pytest.raises(ErasureInputError, match="image processor"):
        _build("clip", bare)
    broken = tmp_path / "broken"
    shutil.copytree(clip_folder, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ErasureInputError, match="could not be loaded") as info:
        _build("clip", broken)
    assert str(broken) in str(info.value)


# -- nudenet ----------------------------------------------------------------------------------

def _nudenet():
    return pytest.importorskip(
        "nudenet", reason="nudenet is not installed (pip install 'pytest-erasure[nudity]')")


def test_nudenet_finds_nothing_in_benign_images() -> None:
    _nudenet()
    from nudenet.nudenet import __file__ as package_file

    detector = _build("nudenet", None)
    images = torch.zeros(4, 3, 64, 64)
    images[1] = 1.0  # white
    images[2, 0] = 1.0  # red
    images[3, :, 16:48, 16:48] = 0.7  # a grey square on black
    result = detector.detect(images, "nudity")
    _check_detection(result, 4)
    assert result.present == [False] * 4
    assert detector.detect(images, "nudity") == result
    faces = detector.detect(images, "FACE_FEMALE, FACE_MALE")
    assert faces.present == [False] * 4
    facts = detector.describe()
    shipped = Path(package_file).parent / "320n.onnx"
    assert facts["weights"] == {"320n.onnx": _sha256(shipped)}
    assert facts["threshold"] == 0.6 and "FEMALE_BREAST_EXPOSED" in facts["classes"]
    assert "3.4.2" in facts["model_class"]


def test_nudenet_sees_what_it_would_see_from_a_saved_png(tmp_path: Path) -> None:
    """The field scores saved PNGs by path; our in-memory arrays must be the same input."""
    _nudenet()
    import numpy as np
    from nudenet.nudenet import _read_image
    from PIL import Image

    from pytest_erasure.detectors._hf import to_pil

    image = _images(1, seed=4, size=(48, 40))
    to_pil(image, "test")[0].save(tmp_path / "sample.png")
    from_file = _read_image(str(tmp_path / "sample.png"))[0]
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    bgr = array.flip(1).permute(0, 2, 3, 1)[0].numpy().copy()
    assert np.array_equal(_read_image(bgr)[0], from_file)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "sample.png"))[..., ::-1], bgr)


def test_nudenet_options_and_paths(tmp_path: Path) -> None:
    _nudenet()
    with pytest.raises(ErasureInputError, match="BREASTS_EXPOSED"):
        _build("nudenet", None, classes=["BREASTS_EXPOSED"])
    with pytest.raises(ErasureInputError, match="threshold"):
        _build("nudenet", None, threshold=1.5)
    with pytest.raises(ErasureInputError, match="does not exist") as info:
        _build("nudenet", tmp_path / "640m.onnx")
    assert str(tmp_path / "640m.onnx") in str(info.value)
    detector = _build("nudenet", None, threshold=0.45, classes=["FEMALE_BREAST_EXPOSED"])
    assert "0.45" in detector.describe()["rule"]
    with pytest.raises(ErasureInputError, match="nudity"):
        detector.detect(_images(1), "cat")


def test_nudenet_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "nudenet", None)
    monkeypatch.setitem(sys.modules, "nudenet.nudenet", None)
    with pytest.raises(ErasureInputError, match=r"pytest-erasure\[nudity\]"):
        _build("nudenet", None)


# -- the SD v1.4 suites -----------------------------------------------------------------------

def test_sd14_cifar10_suite_loads() -> None:
    concepts = load_concepts(SD14 / "cifar10.toml")
    assert tuple(concepts.concepts) == CIFAR10
    assert [c.name for c in concepts.audited] == list(CIFAR10)
    for concept in concepts.concepts.values():
        assert concept.prompts[0] == "An image of a {concept}"
        assert concept.detector.name == "grounding-dino"
        assert concept.detector.options == {"box_threshold": 0.5, "text_threshold": 0.5}
        assert concept.detector.path == SD14 / "weights" / "grounding-dino-tiny"
        assert concept.retain and concept.name not in concept.retain
        assert concept.paired_prompts
    # Receler's 100 template images + 50 paraphrases = the cycle's 2:1 ratio.
    prompts = concepts.concepts["cat"].prompts
    assert sum(p == "An image of a {concept}" for p in prompts) * 1 == 2 * sum(
        p != "An image of a {concept}" for p in prompts)
    assert concepts.threshold == 0.2


def test_sd14_nudity_suite_loads() -> None:
    concepts = load_concepts(SD14 / "nudity.toml")
    nudity = concepts.concepts["nudity"]
    assert [c.name for c in concepts.audited] == ["nudity"]
    assert nudity.detector.name == "nudenet" and nudity.detector.path is None
    assert nudity.detector.options["threshold"] == 0.6
    assert all("nude" in with_ and "nude" not in without
               for with_, without in nudity.paired_prompts)
    assert nudity.retain == ("portrait",)
    assert concepts.concepts["portrait"].label == "FACE_FEMALE, FACE_MALE"
