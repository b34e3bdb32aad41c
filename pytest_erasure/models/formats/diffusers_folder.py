"""Full diffusers pipeline folders (`save_pretrained` output): the standard model, and erased
models published whole.

An erased folder usually re-saves the standard VAE, tokenizer and scheduler along with its own
UNet, and a re-save changes bytes without changing meaning (safetensors header order and
metadata, an exact fp16<->fp32 round trip, a tokenizer serialised by another transformers
version). So "the same component" is decided by content, not by file digests:

- files byte-identical to the standard model's: not even loaded, the standard object is used;
- models (UNet, VAE, text encoder): the same class, the same config (parsed, without the
  libraries' bookkeeping: versions, `_name_or_path`, the stored dtype) and the same tensors,
  compared with `torch.equal` after both are cast to the standard model's compute dtype. So a
  folder stored in float16 whose values equal the standard's once both run in float16 counts
  as equal in a float16 audit, and as changed in a float32 one, where the values really differ.
  Equal tensors are shared (`sharing.override`): an unchanged component *is* the standard
  object, a changed one holds only its changed tensors, and the provenance counts them;
- the tokenizer: the same class, vocabulary, merges, added and special tokens, maximum length
  and padding/truncation sides, and the same tokenizers pipeline (normaliser, pre-tokeniser,
  post-processor), compared as loaded, never as JSON bytes;
- the scheduler: the same class and parsed config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.models.formats import BuiltinFormat
from pytest_erasure.models.formats.configs import compare_text_config, compare_unet_config, read_json
from pytest_erasure.models.formats.files import (
    folder_files,
    hash_files,
    refused_global_in,
    require_readable,
    sha256,
)

PIPELINE_CLASS = "StableDiffusionPipeline"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
MODULES = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder"}
# Config entries that record how and by what a component was saved, not what it computes.
BOOKKEEPING = frozenset({"transformers_version", "dtype", "torch_dtype", "architectures"})


def validate_pipeline_folder(path: Path, what: str) -> dict[str, Any]:
    """model_index.json of a Stable Diffusion v1-family pipeline folder, or ErasureInputError."""
    require_readable(path, what)
    if not path.is_dir():
        raise ErasureInputError(f"{what} {path}", "is a file, not a diffusers pipeline folder",
                                "give the folder written by save_pretrained (model_index.json, "
                                "unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ErasureInputError(f"{what} {path}",
                                "is not a diffusers pipeline folder (no model_index.json)",
                                "give the folder written by save_pretrained")
    index = read_json(index_file, what)
    cls = index.get("_class_name")
    if cls != PIPELINE_CLASS:
        raise ErasureInputError(f"{what} {path}",
                                f"is a {cls or 'unnamed'} folder, not a {PIPELINE_CLASS}",
                                "give a Stable Diffusion v1-family model (SD v1.4 architecture)")
    for component in COMPONENTS:
        if not (path / component).is_dir():
            raise ErasureInputError(f"{what} {path}", f"has no {component}/ folder",
                                    "give a complete StableDiffusionPipeline folder")
    unet_config = read_json(path / "unet" / "config.json", what)
    if unet_config.get("_class_name") != "UNet2DConditionModel":
        raise ErasureInputError(f"{what} {path}",
                                f"has a {unet_config.get('_class_name')} UNet, not "
                                "UNet2DConditionModel", "give an SD v1-family model")
    text_config = read_json(path / "text_encoder" / "config.json", what)
    hidden = text_config.get("hidden_size")
    if hidden != unet_config.get("cross_attention_dim"):
        raise ErasureInputError(
            f"{what} {path}", f"has a text encoder of width {hidden} but a UNet with "
            f"cross_attention_dim {unet_config.get('cross_attention_dim')}",
            "give a consistent SD v1-family pipeline folder")
    return index


def load_standard(path: Path, torch_dtype: Any, device: str) -> tuple[Any, dict[str, Any]]:
    """The standard pipeline (offline, safety checker off) and its provenance."""
    from diffusers import StableDiffusionPipeline

    validate_pipeline_folder(path, "--standard-model")
    files = folder_files(path, COMPONENTS)
    hashes = hash_files(files)
    pipeline = _from_pretrained(StableDiffusionPipeline, path, "--standard-model",
                                dtype=torch_dtype)
    pipeline.to(device)
    return pipeline, {"path": str(path), "format": "diffusers", "files": hashes}


def _from_pretrained(cls: Any, path: Path, what: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(path, local_files_only=True, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False,
                                   use_safetensors=None, **kwargs)
    except ErasureInputError:
        raise
    except Exception as error:  # diffusers raises many types for a corrupt folder
        refused = refused_global_in(error)
        if refused:
            raise ErasureInputError(
                f"{what} {path}", f"has a weight file holding Python objects other than tensors "
                f"({refused}), refused for safety: pickles load weights-only, nothing in them runs",
                "use the model's .safetensors files, or re-save its state dicts") from error
        text = str(error).strip().splitlines()
        raise ErasureInputError(f"{what} {path}", "cannot be loaded as a diffusers pipeline ("
                                f"{type(error).__name__}: {text[0][:200] if text else ''})",
                                "check that the folder is complete and its files intact") from error


def component_digest(folder: Path, component: str) -> dict[str, str]:
    root = folder / component
    return {str(p.relative_to(root)): sha256(p) for p in folder_files(folder, [component])
            if p.parent != folder}


def load(standard: Any, standard_path: Path, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from diffusers import StableDiffusionPipeline

    validate_pipeline_folder(path, "--erased-model")
    compare_unet_config(path, standard_path, "--erased-model", path / "unet" / "config.json")
    compare_text_config(path / "text_encoder" / "config.json", standard_path, path)
    identical = [c for c in COMPONENTS
                 if component_digest(path, c) == component_digest(standard_path, c)]
    files = folder_files(path, [c for c in COMPONENTS if c not in identical])
    hashes = hash_files(files)
    dtype = standard.unet.dtype
    pipeline = _from_pretrained(StableDiffusionPipeline, path, "--erased-model", dtype=dtype,
                                **{c: getattr(standard, c) for c in identical})
    what = f"--erased-model {path}"
    overrides: dict[str, Any] = {}
    report: dict[str, Any] = {"files": hashes, "identical_files": identical,
                              "compared_in_dtype": str(dtype).removeprefix("torch.")}
    for component in COMPONENTS:
        if component in identical:
            continue
        ours, theirs = getattr(standard, component), getattr(pipeline, component)
        used, report[component] = same_content(component, ours, theirs, what)
        if used is not ours:
            overrides[component] = used
    return overrides, report


def same_content(component: str, standard: Any, erased: Any, what: str) -> tuple[Any, dict]:
    """(the object the erased pipeline uses, what differs): the standard object itself when the
    erased component means the same, else one that shares every equal tensor with it."""
    from pytest_erasure.models.formats.sharing import override  # imports torch

    differs = config_changes(standard, erased)
    if component not in MODULES:
        if component == "tokenizer":
            differs += tokenizer_changes(standard, erased)
        return (erased, {"differs_in": differs}) if differs else (standard, {"differs_in": []})
    ours, theirs = standard.state_dict(), erased.state_dict()
    if differs or set(ours) != set(theirs) or any(
            ours[k].shape != theirs[k].shape for k in ours):
        # Not the same model with other numbers: used as loaded, nothing shared.
        return erased.to(next(iter(ours.values())).device), {
            "config_changed": differs or ["state dict keys or shapes"],
            "tensors_total": len(theirs)}
    module, stats = override(standard, theirs, what=what, role=MODULES[component],
                             require_all=True)
    return module, {"tensors_changed": stats["tensors_changed"],
                    "tensors_total": stats["tensors_total"]}


def _meaning(config: Any) -> dict[str, Any]:
    import json

    items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    kept = {k: v for k, v in items.items() if not k.startswith("_") and k not in BOOKKEEPING}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))  # tuples == lists


def config_changes(standard: Any, erased: Any) -> list[str]:
    """Which config entries differ (the class counts as one, 'class'), bookkeeping aside."""
    if type(standard) is not type(erased):
        return ["class"]
    if not hasattr(standard, "config"):
        return []
    ours, theirs = _meaning(standard.config), _meaning(erased.config)
    return sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))


def tokenizer_changes(standard: Any, erased: Any) -> list[str]:
    """Which parts of two tokenizers' meaning differ; both as loaded, none as file bytes."""
    ours, theirs = tokenizer_meaning(standard), tokenizer_meaning(erased)
    return sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))


def tokenizer_meaning(tokenizer: Any) -> dict[str, Any]:
    import json

    meaning: dict[str, Any] = {
        "vocabulary": tokenizer.get_vocab(),
        "added_tokens": {i: repr(t) for i, t in tokenizer.added_tokens_decoder.items()},
        "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "model_max_length": tokenizer.model_max_length,
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        model = pipeline.pop("model", {}) or {}
        meaning["merges"] = [list(m) if isinstance(m, list) else m.split(" ")
                             for m in model.pop("merges", None) or []]
        model.pop("vocab", None)  # compared above, with the added tokens
        pipeline.pop("added_tokens", None)
        pipeline.pop("truncation", None)  # runtime state of the backend, not of the files
        pipeline.pop("padding", None)
        pipeline.pop("version", None)
        meaning["bpe_model"] = model
        meaning["pipeline"] = pipeline
    elif hasattr(tokenizer, "bpe_ranks"):  # a pure-Python tokenizer
        meaning["merges"] = sorted(tokenizer.bpe_ranks.items(), key=lambda item: item[1])
    return meaning


class DiffusersFormat(BuiltinFormat):
    loader = staticmethod(load)
    name = "diffusers"
    applies_to_standard = False
    options: tuple[str, ...] = ()

    def detect(self, path: Path) -> float:
        """A pipeline folder declares itself (model_index.json)."""
        return 1.0 if path.is_dir() and (path / "model_index.json").is_file() else 0.0


FORMAT = DiffusersFormat()
