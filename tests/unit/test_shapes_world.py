"""The shipped shapes world: every artefact loads through its real loading path and still shows
the numbers fixtures/shapes/README.md reports (on a small sample, so CI stays fast)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORLD = ROOT / "fixtures" / "shapes"
for p in (str(WORLD), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from render import SHAPES  # noqa: E402  (fixtures/shapes/render.py: the world's one list)

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

SHIPPED = ["standard", "detector", "references", "calibration", "erased", "README.md",
           "measurements.json"]
MAX_BYTES = 40 * 1024 * 1024
N_CRR = 16

# The world is tracked in git: a missing one fails every test here (each opens its files),
# rather than a skip that would let CI pass without checking it.


@pytest.fixture(scope="module")
def measure():
    """measure.py's numbers were taken with 2 threads; the count is restored after the module,
    so no later test runs with a thread count it did not choose."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    import measure as m

    try:
        yield m
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detector(measure):
    from pytest_erasure.detectors.base import DetectorSpec, build_detector

    return build_detector(DetectorSpec("shapes", WORLD / "detector"), "cpu")


@pytest.fixture(scope="module")
def standard(measure):
    return measure.load_pipeline(WORLD / "standard")


def test_shipped_total_is_at_most_40_mb():
    total = 0
    for name in SHIPPED:
        path = WORLD / name
        assert path.exists(), f"missing shipped artefact {path}"
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        total += sum(f.stat().st_size for f in files)
    assert total <= MAX_BYTES, f"shipped {total / 2**20:.1f} MB > 40 MB"


def test_no_build_machine_path_ships():
    """build.py strips diffusers' `_name_or_path`: a rebuild from any work folder writes the
    same configs, and no path of the machine that built the world is shipped."""
    leaks = [str(f.relative_to(WORLD)) for f in WORLD.rglob("*.json")
             if "_name_or_path" in json.loads(f.read_text())]
    assert leaks == []


def test_references_are_16_pngs_of_32px_per_concept():
    from PIL import Image
    from render import SHAPES

    for shape in SHAPES:
        pngs = sorted((WORLD / "references" / shape).glob("*.png"))
        assert [p.name for p in pngs] == [f"{i:02d}.png" for i in range(16)], shape
        for p in pngs:
            with Image.open(p) as im:
                assert im.size == (32, 32) and im.mode == "RGB"


def test_detector_config_and_description(detector):
    cfg = json.loads((WORLD / "detector" / "config.json").read_text())
    assert cfg["labels"] == ["circle", "square", "triangle", "star", "cross", "heart", "none"]
    d = detector.describe()
    assert d["threshold"] == 0.5 and len(d["sha256"]) == 64 and d["labels"] == cfg["labels"]


def test_detector_unknown_label_is_an_input_error(detector):
    from pytest_erasure.errors import ErasureInputError

    with pytest.raises(ErasureInputError, match="hexagon.*circle"):
        detector.detect(torch.zeros(1, 3, 32, 32), "hexagon")


def test_detector_on_fresh_heldout_renders(detector):
    from render import LABELS, render_class

    for k, label in enumerate(LABELS):
        imgs = torch.from_numpy(render_class(label, 40, 4242 + k)).permute(0, 3, 1, 2) / 255
        if label != "none":
            # any input size is accepted: a 64x64 upsample must be judged like the 32x32 image
            imgs = torch.nn.functional.interpolate(imgs, scale_factor=2, mode="nearest")
            acc = sum(detector.detect(imgs, label).present) / len(imgs)
        else:
            acc = sum(p == "none" for p in detector.classify(imgs)) / len(imgs)
        assert acc >= 0.95, f"{label}: {acc:.0%} on held-out renders"


def test_standard_pipeline_loads_offline(measure, standard):
    assert type(standard).__name__ == "StableDiffusionPipeline"
    assert standard.unet.dtype == torch.float32
    assert measure.generate(standard, "a circle", range(2)).shape == (2, 3, 32, 32)


FOLDERS = ["standard", "erased/uce-circle", "erased/esd-x-circle"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_shipped_folder_loads_as_any_diffusers_folder(folder):
    """No dtype argument, as a user who knows nothing of fp16 storage would load it: transformers
    takes the text encoder's dtype from its config, diffusers loads float32 (build.py's
    `load_as_float32`); an fp16 text encoder beside an fp32 UNet failed at the first step."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(WORLD / folder)
    pipe.set_progress_bar_config(disable=True)
    assert {getattr(pipe, c).dtype for c in ("unet", "vae", "text_encoder")} == {torch.float32}
    image = pipe("a circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images
    assert image.shape == (1, 32, 32, 3) and bool((image >= 0).all() and (image <= 1).all())
    assert float(image.std()) > 0  # a picture, not a constant (NaNs would fail the range check)


@pytest.mark.parametrize("folder", FOLDERS)
def test_save_pipeline_rewrites_the_shipped_folder(measure, tmp_path, folder):
    """A rebuild writes what ships, configs and weights byte for byte: build.py's save_pipeline
    on the loaded (float32) pipeline reproduces the folder's files. An erased folder's tokenizer
    is the exception: its tokenizer.json keeps the padding and truncation of the erasure's
    tokenizer calls, which a reload turns into tokenizer_config.json entries (a rebuild re-runs
    the erasure, not a reload)."""
    from build import save_pipeline

    shipped, again = WORLD / folder, tmp_path / "again"
    save_pipeline(measure.load_pipeline(shipped), again)
    skip = () if folder == "standard" else ("tokenizer",)
    files = sorted(f.relative_to(shipped) for f in shipped.rglob("*")
                   if f.is_file() and f.relative_to(shipped).parts[0] not in skip)
    assert [f for f in files if not (again / f).is_file()] == []
    assert [str(f) for f in files if (shipped / f).read_bytes() != (again / f).read_bytes()] == []


@pytest.fixture(scope="module")
def standard_crr(measure, standard, detector) -> dict[str, float]:
    """The standard model's CRR of each concept's own prompt on the fixed seeds 0..15."""
    return {shape: measure.crr(detector, measure.generate(standard, f"a {shape}", range(N_CRR)),
                               shape) for shape in SHAPES}


@pytest.mark.parametrize("shape", SHAPES)
def test_standard_model_draws_each_concept(standard_crr, shape):
    """The issue's bar is >= 90% on 64 samples (measure.py); on 16 fixed seeds we allow for
    sampling noise: a model at 90% shows >= 13/16 in all but ~7% of seed sets, and these seeds
    are fixed, so the check is exact and repeatable."""
    assert standard_crr[shape] >= 13 / 16


@pytest.mark.parametrize("name", ["uce-circle", "esd-x-circle"])
def test_erased_models_keep_the_other_concepts(measure, standard_crr, detector, name):
    """Retention: each other concept keeps most of what the standard model draws (>= 80% of the
    standard's rate on 64 samples in measure.py; here on the fixed 16 seeds)."""
    pipe = measure.load_pipeline(WORLD / "erased" / name)
    for shape in SHAPES:
        if shape == measure.ERASED_CONCEPT:
            continue
        erased = measure.crr(detector, measure.generate(pipe, f"a {shape}", range(N_CRR)), shape)
        base = standard_crr[shape]
        assert erased >= 0.75 * base, f"{name} {shape}: {erased:.0%} vs standard {base:.0%}"


@pytest.mark.parametrize("name", ["uce-circle", "esd-x-circle"])
def test_erased_folder_loads_and_circle_is_erased(measure, detector, name):
    pipe = measure.load_pipeline(WORLD / "erased" / name)
    imgs = measure.generate(pipe, "a circle", range(N_CRR))
    assert measure.crr(detector, imgs, "circle") <= 0.35


@pytest.mark.parametrize("name,expected", [("uce-circle", "attn2.to_k|attn2.to_v"),
                                           ("esd-x-circle", "attn2.")])
def test_erased_tensors_load_onto_standard_unet(measure, detector, name, expected):
    from safetensors.torch import load_file

    tensors = load_file(str(WORLD / "erased" / f"{name}.safetensors"))
    assert all(any(e in k for e in expected.split("|")) for k in tensors), name
    pipe = measure.load_pipeline(WORLD / "standard")
    n_attn2 = sum(1 for k in pipe.unet.state_dict() if ".attn2." in k)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items() if k in tensors}
    missing, unexpected = pipe.unet.load_state_dict(
        {k: v.float() for k, v in tensors.items()}, strict=False)
    assert not unexpected
    replaced = len(pipe.unet.state_dict()) - len(missing)
    assert replaced == len(tensors) > 0
    if name.startswith("uce"):
        assert len(tensors) == 2 * n_attn2 // 5  # to_q, to_k, to_v, to_out.0.w/b per attn2
    else:
        assert len(tensors) == n_attn2
    assert any(not torch.equal(before[k], pipe.unet.state_dict()[k]) for k in tensors)
    imgs = measure.generate(pipe, "a circle", range(N_CRR))
    assert measure.crr(detector, imgs, "circle") <= 0.35


def test_measurements_recorded():
    r = json.loads((WORLD / "measurements.json").read_text())
    assert r["protocol"]["samples_per_concept"] == 64
    assert set(r["text_crr"]) >= {"standard", "uce-circle", "esd-x-circle",
                                  "uce-circle.safetensors", "esd-x-circle.safetensors"}


def test_recorded_measurements_meet_the_issues_bars(measure):
    """The issue's bars, on measure.py's 64 samples per concept as shipped in measurements.json
    (the tests above re-check the files themselves on 16 seeds): standard >= 90% per concept,
    each erased form <= 20% on the erased concept and >= 80% of the standard's rate elsewhere,
    detector >= 98% per class."""
    r = json.loads((WORLD / "measurements.json").read_text())
    crr = r["text_crr"]
    assert {s: v for s, v in crr["standard"].items() if v < 0.9} == {}
    for name, row in crr.items():
        if name == "standard":
            continue
        assert row[measure.ERASED_CONCEPT] <= 0.2, name
        low = {s: v for s, v in r["retention_ratio"][name].items() if v < 0.8}
        assert low == {}, f"{name} keeps less than 80% of the standard's rate: {low}"
    assert {k: v for k, v in r["detector_heldout_accuracy"].items() if v < 0.98} == {}
