"""Every erased-model format, written as its method writes it, loaded through `load_models`, and
compared with the same weights applied by hand (UNet noise prediction on a fixed input, text
encoder output on a fixed prompt). Detection is by content, so files get misleading names."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from pytest_erasure.models.formats import detect_format, writers
from pytest_erasure.models.loading import load_models
from pytest_erasure.testing import save_tiny_pipeline, tiny_pipeline

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def standard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("std") / "standard", seed=0)


@pytest.fixture(scope="module")
def donor():
    """Another tiny pipeline: its weights play the erased model's."""
    return tiny_pipeline(seed=1)


@pytest.fixture()
def base():
    return tiny_pipeline(seed=0)


def embed(text_encoder, tokenizer, prompt: str = PROMPT) -> torch.Tensor:
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def eps(unet, text_encoder, tokenizer) -> torch.Tensor:
    """UNet noise prediction on a fixed latent, timestep and prompt."""
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return unet(latents, 500, encoder_hidden_states=embed(text_encoder, tokenizer)).sample


def pipe_eps(pipe) -> torch.Tensor:
    return eps(pipe.unet, pipe.text_encoder, pipe.tokenizer)


def perturbed(unet, keys, seed: int = 3, scale: float = 0.05):
    generator = torch.Generator().manual_seed(seed)
    state = unet.state_dict()
    return {k: state[k] + torch.randn(state[k].shape, generator=generator) * scale for k in keys}


def by_hand(unet, tensors):
    """The standard UNet with `tensors` loaded the way ESD/UCE load them (strict=False)."""
    edited = copy.deepcopy(unet)
    missing, unexpected = edited.load_state_dict(tensors, strict=False)
    assert not unexpected
    return edited


# --- diffusers folder --------------------------------------------------------------------------

def test_diffusers_folder_shares_identical_components(standard_dir, donor, base, tmp_path):
    erased = tiny_pipeline(seed=0)
    erased.unet = donor.unet
    folder = tmp_path / "misleading.safetensors"  # a folder named like a file
    erased.save_pretrained(folder)
    assert detect_format(folder) == "diffusers"
    models = load_models(standard_dir, folder)
    assert models.provenance["erased"]["format"] == "diffusers"
    assert torch.equal(pipe_eps(models.erased), eps(donor.unet, base.text_encoder, base.tokenizer))
    assert torch.equal(pipe_eps(models.standard), pipe_eps(base))
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(models.erased, name) is getattr(models.standard, name)
    assert models.erased.unet is not models.standard.unet
    assert models.provenance["erased"]["components_shared"] == [
        "vae", "text_encoder", "tokenizer", "scheduler"]
    # Only the UNet's files were read (and hashed) from the erased folder.
    assert all("/unet/" in p or p.endswith("model_index.json")
               for p in models.provenance["erased"]["files"])


# --- single file -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_equals_from_single_file(standard_dir, donor, base, tmp_path, suffix):
    from diffusers import StableDiffusionPipeline

    erased = tiny_pipeline(seed=0)
    erased.unet = donor.unet  # only the UNet was retrained, as ESD's full checkpoints are
    path = writers.write_single_file(erased, tmp_path / f"erased{suffix}")
    misleading = tmp_path / "lora_unet_model.bin"  # the name lies
    shutil.copy(path, misleading)
    assert detect_format(misleading) == "single-file"
    models = load_models(standard_dir, misleading)
    assert torch.equal(pipe_eps(models.erased), eps(donor.unet, base.text_encoder, base.tokenizer))
    assert models.erased.vae is models.standard.vae
    assert models.erased.text_encoder is models.standard.text_encoder
    record = models.provenance["erased"]
    assert record["unet"]["tensors_changed"] > 0
    assert record["vae"]["tensors_changed"] == 0
    # Independent path: diffusers' own single-file loader with the same local config gives the
    # same tensors, bit for bit. (Not compared by output: diffusers keeps each tensor where
    # safetensors put it, 4-byte aligned, and on CPUs where MKL runs its SSE kernels a GEMM on
    # an unaligned operand sums in another order, so equal weights can give other last bits.)
    reference = StableDiffusionPipeline.from_single_file(
        str(path), config=str(standard_dir), local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(models.erased, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_single_file_all_components_changed(standard_dir, donor, tmp_path):
    path = writers.write_single_file(donor, tmp_path / "other.safetensors")
    models = load_models(standard_dir, path, erased_format="single-file")
    assert torch.equal(pipe_eps(models.erased), pipe_eps(donor))
    assert models.provenance["erased"]["components_shared"] == ["tokenizer", "scheduler"]
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(models.erased.vae.decode(latents).sample,
                              donor.vae.decode(latents).sample, atol=1e-6)


# --- UNet tensors (ESD, UCE) --------------------------------------------------------------------

UNET_CASES = {
    # name: (selection, file name, key transform)
    "esd-x-safetensors": ("esd-x", "esd-x.safetensors", "diffusers"),
    "esd-u-safetensors": ("esd-u", "esd-u.safetensors", "diffusers"),
    "uce-safetensors": ("uce", "uce.safetensors", "diffusers"),
    "esd-old-full-pt": ("all", "diffusers-airplane.pt", "diffusers"),
    "uce-old-full-pt": ("all", "erased-airplane.pt", "diffusers"),
    "unet-prefix": ("esd-x", "x.safetensors", "unet."),
    "ldm-partial-pt": ("esd-x", "esd-compvis.pt", "ldm"),
    "ldm-full-bin": ("all", "compvis-unet.bin", "ldm"),
}


@pytest.mark.parametrize("case", list(UNET_CASES))
def test_unet_tensors(standard_dir, base, tmp_path, case):
    select, name, layout = UNET_CASES[case]
    keys = list(writers.unet_tensors(base.unet, select))
    edited = perturbed(base.unet, keys)
    if layout == "ldm":
        tensors = writers.unet_to_ldm(edited, base.unet.config)
    elif layout == "unet.":
        tensors = {"unet." + k: v for k, v in edited.items()}
    else:
        tensors = edited
    path = writers.save_tensors(tensors, tmp_path / name)
    misleading = path.rename(tmp_path / ("text_encoder" + path.suffix))
    assert detect_format(misleading) == "unet"
    models = load_models(standard_dir, misleading)
    expected = eps(by_hand(base.unet, edited), base.text_encoder, base.tokenizer)
    assert torch.equal(pipe_eps(models.erased), expected)
    record = models.provenance["erased"]
    total = len(base.unet.state_dict())
    assert record["unet"] == {"tensors_in_file": len(keys), "tensors_replaced": len(keys),
                              "tensors_changed": len(keys), "tensors_total": total}
    assert record["key_layout"] == ("ldm" if layout == "ldm" else "diffusers")
    assert record["components_shared"] == ["vae", "text_encoder", "tokenizer", "scheduler"]
    # Tensors the file did not change are the standard UNet's own tensor objects.
    untouched = [k for k in base.unet.state_dict() if k not in edited]
    erased_params = dict(models.erased.unet.named_parameters())
    standard_params = dict(models.standard.unet.named_parameters())
    for key in untouched:
        if key in standard_params:
            assert erased_params[key] is standard_params[key]
    for key in keys:
        if key in standard_params:
            assert erased_params[key] is not standard_params[key]


def test_unet_folder(standard_dir, donor, base, tmp_path):
    donor.unet.save_pretrained(tmp_path / "unet")
    assert detect_format(tmp_path / "unet") == "unet"
    models = load_models(standard_dir, tmp_path / "unet")
    assert torch.equal(pipe_eps(models.erased), eps(donor.unet, base.text_encoder, base.tokenizer))


# --- Receler ------------------------------------------------------------------------------------

# The published format, written here from Receler's release (jasper0314-huang/Receler:
# `save_eraser_to_diffusers_format`, `inject_eraser`, `AdapterEraser`), not from our loader:
# - eraser_weights.pt: torch.save of {prefix: {"down.weight": [rank, dim], "down.bias": [rank],
#   "up.weight": [dim, rank], "up.bias": [dim]}}, one entry per transformer block, keyed by the
#   diffusers path of the Transformer2DModel that holds it (`diffuser_prefix_name`: three parts
#   for mid_block, four otherwise);
# - eraser_config.json: {"eraser_type": "adapter", "eraser_rank": rank};
# - the block's attn2 output a becomes a + up(GELU(down(a))), GELU exact (erf), nn.Linear layout.
TINY_PREFIXES = ["down_blocks.0.attentions.0", "mid_block.attentions.0",
                 "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
"""The tiny UNet's Transformer2DModels, written out: the keys a Receler release for it holds."""


def published_adapters(unet, rank, seed=0, scale=0.1):
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for prefix in TINY_PREFIXES:
        dim = unet.get_submodule(f"{prefix}.transformer_blocks.0.attn2").to_out[0].out_features
        shapes = {"down.weight": (rank, dim), "down.bias": (rank,), "up.weight": (dim, rank),
                  "up.bias": (dim,)}
        out[prefix] = {k: torch.randn(s, generator=generator) * scale for k, s in shapes.items()}
    return out


def write_published(folder, adapters, rank):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(adapters, folder / "eraser_weights.pt")
    (folder / "eraser_config.json").write_text(json.dumps({"eraser_type": "adapter",
                                                           "eraser_rank": rank}))
    return folder


class ReferenceAttentionWithEraser(torch.nn.Module):
    """Receler's own injection: attn2 replaced by a wrapper returning a + up(GELU(down(a)))."""

    def __init__(self, attn, weights):
        super().__init__()
        self.attn, self.weights = attn, weights

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        a = self.attn(hidden_states, encoder_hidden_states=encoder_hidden_states,
                      attention_mask=attention_mask, **kwargs)
        w = self.weights
        down = torch.nn.functional.linear(a, w["down.weight"], w["down.bias"])
        return a + torch.nn.functional.linear(torch.nn.functional.gelu(down), w["up.weight"],
                                              w["up.bias"])


def receler_by_hand(unet, adapters, rank):
    assert sorted(adapters) == sorted(TINY_PREFIXES)
    edited = copy.deepcopy(unet)
    for prefix, weights in adapters.items():
        block = edited.get_submodule(f"{prefix}.transformer_blocks.0")
        assert weights["down.weight"].shape[0] == rank
        block.attn2 = ReferenceAttentionWithEraser(block.attn2, weights)
    return edited


def test_receler(standard_dir, base, tmp_path):
    rank = 8
    adapters = published_adapters(base.unet, rank)
    folder = write_published(tmp_path / "receler-circle", adapters, rank)
    assert sorted(p.name for p in folder.iterdir()) == ["eraser_config.json",
                                                        "eraser_weights.pt"]
    assert detect_format(folder) == "receler"
    models = load_models(standard_dir, folder)
    expected = eps(receler_by_hand(base.unet, adapters, rank), base.text_encoder, base.tokenizer)
    assert torch.allclose(pipe_eps(models.erased), expected, atol=1e-6)
    assert not torch.allclose(pipe_eps(models.erased), pipe_eps(models.standard), atol=1e-4)
    record = models.provenance["erased"]
    blocks = [n for n, m in base.unet.named_modules()
              if type(m).__name__ == "BasicTransformerBlock"]
    assert record["receler"]["adapters"] == len(adapters) == len(blocks) == 4
    assert record["receler"]["eraser_rank"] == rank
    # Every UNet tensor is shared; the standard UNet has no adapter.
    standard_params = dict(models.standard.unet.named_parameters())
    for key, value in models.erased.unet.named_parameters():
        if "receler_eraser" not in key:
            assert value is standard_params[key]
    assert torch.equal(pipe_eps(models.standard), pipe_eps(base))
    # Attention processors are still reachable by their diffusers names.
    assert all(".attn2." not in k or "receler" not in k
               for k in models.erased.unet.attn_processors)


def test_our_receler_writer_writes_the_published_layout(base, tmp_path):
    """Other tests and benchmarks write Receler models with `writers`: the published keys and
    shapes, checked against the layout above."""
    folder = writers.write_receler(tmp_path / "ours", writers.receler_adapters(base.unet, 4), 4)
    ours = torch.load(folder / "eraser_weights.pt", weights_only=True)
    published = published_adapters(base.unet, 4)
    assert sorted(ours) == sorted(published)
    assert all({k: v.shape for k, v in ours[p].items()} ==
               {k: v.shape for k, v in published[p].items()} for p in published)
    assert json.loads((folder / "eraser_config.json").read_text()) == {
        "eraser_type": "adapter", "eraser_rank": 4}


def test_receler_weights_renamed(standard_dir, base, tmp_path):
    adapters = published_adapters(base.unet, 4)
    folder = write_published(tmp_path / "r", adapters, 4)
    (folder / "eraser_weights.pt").rename(folder / "model.safetensors")  # name lies: a pickle
    (folder / "eraser_config.json").rename(folder / "config.json")
    assert detect_format(folder) == "receler"
    models = load_models(standard_dir, folder)
    expected = eps(receler_by_hand(base.unet, adapters, 4), base.text_encoder, base.tokenizer)
    assert torch.allclose(pipe_eps(models.erased), expected, atol=1e-6)


# --- text encoder (AdvUnlearn) -----------------------------------------------------------------

@pytest.mark.parametrize("form", ["folder", "pt-prefixed", "safetensors-bare"])
def test_text_encoder(standard_dir, donor, base, tmp_path, form):
    if form == "folder":
        path = tmp_path / "advunlearn"
        donor.text_encoder.save_pretrained(path)
    elif form == "pt-prefixed":
        path = writers.save_tensors({"text_encoder." + k: v for k, v in
                                     donor.text_encoder.state_dict().items()},
                                    tmp_path / "TextEncoder-nudity.pt")
    else:
        path = writers.save_tensors(donor.text_encoder.state_dict(), tmp_path / "te.safetensors")
    if path.is_file():
        path = path.rename(tmp_path / "unet_weights.bin")
    assert detect_format(path) == "text-encoder"
    models = load_models(standard_dir, path)
    assert torch.equal(embed(models.erased.text_encoder, models.erased.tokenizer),
                       embed(donor.text_encoder, base.tokenizer))
    assert torch.equal(pipe_eps(models.erased), eps(base.unet, donor.text_encoder, base.tokenizer))
    assert models.provenance["erased"]["components_replaced"] == ["text_encoder"]
    assert models.erased.unet is models.standard.unet


# --- LoRA (SPM) ---------------------------------------------------------------------------------

def lora_by_hand(unet, tensors, multiplier):
    """SPM's SPMLayer at inference: org(x) + up(down(x)) * multiplier * alpha / rank."""
    edited = copy.deepcopy(unet)
    for name in writers.lora_layers(edited):
        key = "lora_unet_" + name.replace(".", "_")
        layer = edited.get_submodule(name)
        down_w, up_w = tensors[key + ".lora_down.weight"], tensors[key + ".lora_up.weight"]
        scale = multiplier * float(tensors[key + ".alpha"]) / down_w.shape[0]
        if isinstance(layer, torch.nn.Conv2d):
            down = torch.nn.Conv2d(down_w.shape[1], down_w.shape[0], layer.kernel_size,
                                   layer.stride, layer.padding, bias=False)
            up = torch.nn.Conv2d(up_w.shape[1], up_w.shape[0], 1, bias=False)
        else:
            down = torch.nn.Linear(down_w.shape[1], down_w.shape[0], bias=False)
            up = torch.nn.Linear(up_w.shape[1], up_w.shape[0], bias=False)
        down.weight.data, up.weight.data = down_w.clone(), up_w.clone()
        layer.register_forward_hook(
            lambda m, a, out, d=down, u=up, s=scale: out + u(d(a[0])) * s)
    return edited


@pytest.mark.parametrize("multiplier", [1.0, 0.5])
def test_lora(standard_dir, base, tmp_path, multiplier):
    tensors = writers.spm_lora(base.unet, rank=1, alpha=1.0)
    path = writers.save_tensors(tensors, tmp_path / "spm.safetensors")
    path = path.rename(tmp_path / "eraser_weights.pt")
    assert detect_format(path) == "lora"
    models = load_models(standard_dir, path, lora_multiplier=multiplier)
    expected = eps(lora_by_hand(base.unet, tensors, multiplier), base.text_encoder,
                   base.tokenizer)
    assert torch.allclose(pipe_eps(models.erased), expected, atol=1e-5)
    record = models.provenance["erased"]
    assert record["lora_multiplier"] == multiplier
    layers = writers.lora_layers(base.unet)
    assert record["lora"]["unet"]["modules_patched"] == len(layers)
    assert record["lora"]["unet"]["ranks"] == [1]
    # Only the patched weights are new tensors.
    patched = {n + ".weight" for n in layers}
    standard_params = dict(models.standard.unet.named_parameters())
    for key, value in models.erased.unet.named_parameters():
        assert (value is standard_params[key]) == (key not in patched)


def test_lora_multiplier_changes_fingerprint(standard_dir, base, tmp_path):
    path = writers.save_tensors(writers.spm_lora(base.unet), tmp_path / "spm.safetensors")
    one = load_models(standard_dir, path, lora_multiplier=1.0).fingerprints
    half = load_models(standard_dir, path, lora_multiplier=0.5).fingerprints
    assert one["standard"] == half["standard"]
    assert one["erased"] != half["erased"]


def test_format_override(standard_dir, base, tmp_path):
    """--erased-format wins over detection (a UNet-only file forced as UNet tensors)."""
    tensors = perturbed(base.unet, list(writers.unet_tensors(base.unet, "uce")))
    path = writers.save_tensors(tensors, tmp_path / "uce.safetensors")
    models = load_models(standard_dir, path, erased_format="unet")
    assert models.provenance["erased"]["format_forced"] is True
    assert models.provenance["erased"]["detected_format"] == "unet"


def test_moved_model_keeps_fingerprint(standard_dir, base, tmp_path):
    tensors = perturbed(base.unet, list(writers.unet_tensors(base.unet, "uce")))
    path = writers.save_tensors(tensors, tmp_path / "a" / "uce.safetensors")
    first = load_models(standard_dir, path).fingerprints
    moved_standard = tmp_path / "elsewhere"
    shutil.copytree(standard_dir, moved_standard)
    moved = tmp_path / "b" / "uce.safetensors"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    assert load_models(moved_standard, moved).fingerprints == first
    json.dumps(load_models(standard_dir, path).provenance)  # JSON-able


def generate(pipe) -> torch.Tensor:
    """A 2-step generation with fixed latents (classifier-free guidance on, batch of 2)."""
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(11))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(PROMPT, num_inference_steps=2, guidance_scale=7.5, latents=latents,
                    output_type="pt").images


def test_generation_equals_by_hand(standard_dir, base, tmp_path):
    """The loaded erased pipelines generate what the by-hand models generate, end to end."""
    from diffusers import StableDiffusionPipeline

    rank = 4
    adapters = published_adapters(base.unet, rank)
    receler = load_models(standard_dir, write_published(tmp_path / "r", adapters, rank))
    hand = StableDiffusionPipeline(**{**base.components,
                                      "unet": receler_by_hand(base.unet, adapters, rank)})
    assert torch.allclose(generate(receler.erased), generate(hand), atol=1e-5)
    edited = perturbed(base.unet, list(writers.unet_tensors(base.unet, "esd-x")))
    esd = load_models(standard_dir, writers.save_tensors(edited, tmp_path / "esd.safetensors"))
    hand = StableDiffusionPipeline(**{**base.components, "unet": by_hand(base.unet, edited)})
    assert torch.equal(generate(esd.erased), generate(hand))
    assert torch.equal(generate(esd.standard), generate(base))
