"""Load the standard and the erased pipeline, from every format erased models are published in.

The standard model is a diffusers folder. The erased model is a full pipeline (folder or single
file) or an override applied to the standard model (UNet tensors, Receler adapters, a text
encoder, a LoRA; see `pytest_erasure.models.formats`). Either way the erased pipeline shares every
component object that is identical with the standard pipeline (`erased.vae is standard.vae`),
and overridden components share every unchanged tensor, so memory grows only by what differs.

Nothing is fetched: loads are local-only with the hub forced offline, pickles are read with
`weights_only=True`, and remote code is never trusted. Every file read is hashed (sha256) into the
provenance; fingerprints derive from those hashes and key the cache.

This module imports torch and diffusers only inside functions (the plugin must import fast).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.devices import DTYPES
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.models.formats.diffusers_folder import COMPONENTS

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline


@dataclass
class LoadedModels:
    standard: StableDiffusionPipeline
    erased: StableDiffusionPipeline
    provenance: dict[str, Any]
    fingerprints: dict[str, str]


def check_device(device: str, dtype: str) -> None:
    """Refuse a device this machine lacks, or a dtype it cannot run.

    cpu runs float32, bfloat16 and float16 (float16 works on CPU in torch 2.x but is slow and
    only worth it to reproduce a GPU run's numerics); cuda[:i] needs CUDA and device i, and
    bfloat16 needs a GPU that supports it; mps needs Apple's backend.
    """
    import torch

    if dtype not in DTYPES:
        raise ErasureInputError("--dtype", f"'{dtype}' is not supported",
                                f"use one of: {', '.join(DTYPES)}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ErasureInputError("--device", f"'{device}' is not a torch device",
                                "use cpu, cuda, cuda:N or mps") from error
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ErasureInputError("--device", f"'{device}' needs CUDA, which is not available "
                                    "here", "use --device cpu, or run on a machine with a GPU")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ErasureInputError("--device", f"'{device}' does not exist ({count} CUDA "
                                    f"device{'s' if count != 1 else ''} visible)",
                                    f"use cuda:0 .. cuda:{count - 1}")
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ErasureInputError("--dtype", f"bfloat16 is not supported on {device}",
                                    "use --dtype float16 or float32")
        return
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ErasureInputError("--device", "'mps' is not available here",
                                    "use --device cpu (mps needs Apple silicon with macOS 12.3+)")
        return
    raise ErasureInputError("--device", f"'{device}' is not supported",
                            "use cpu, cuda, cuda:N or mps")


def force_offline() -> None:
    """No hub access from here on (local_files_only is passed as well, belt and braces)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["DIFFUSERS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as constants

        constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        pass


def _digest(record: dict[str, Any]) -> str:
    """The hash a model's fingerprint is (kept as first written: fingerprints key every cache)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _relative(files: dict[str, str], root: Path) -> dict[str, str]:
    """{path relative to the model: sha256}, so moving a model keeps its fingerprint."""
    base = root if root.is_dir() else root.parent
    return {str(Path(p).relative_to(base)) if Path(p).is_relative_to(base) else Path(p).name: h
            for p, h in files.items()}


def load_models(standard_path: Path, erased_path: Path, *, erased_format: str | None = None,
                device: str = "cpu", dtype: str = "float32",
                lora_multiplier: float = 1.0, allow_hub: bool = False) -> LoadedModels:
    """Both pipelines, on `device` in `dtype`, with provenance and cache fingerprints. The hub
    is switched off here, where models load (not for every pytest run), unless `allow_hub`;
    loads are local-only either way."""
    from pytest_erasure.models.formats import get
    from pytest_erasure.models.formats.files import forget, require_readable

    standard_path, erased_path = Path(standard_path), Path(erased_path)
    if erased_format is not None:
        get(erased_format)  # an unknown name is a usage error before anything loads
    if not math.isfinite(lora_multiplier):
        raise ErasureInputError("--lora-multiplier", f"is {lora_multiplier}",
                                "give a finite number (1.0 applies the LoRA as trained)")
    check_device(device, dtype)
    if not allow_hub:
        force_offline()
    require_readable(standard_path, "--standard-model")
    require_readable(erased_path, "--erased-model")
    try:
        models = _load(standard_path, erased_path, erased_format, device, dtype, lora_multiplier)
    finally:
        forget()
    settle_heap()
    return models


def settle_heap() -> None:
    """Collect what is garbage now, then exempt every object still alive from later cyclic
    collections (`gc.freeze`).

    Why: after the models load, the process holds ~0.5 million long-lived objects (torch,
    diffusers and transformers modules, the two pipelines), and every full collection walks
    them all: pytest alone runs five at the end of each session (to surface exceptions raised
    in `__del__`), 1.4 s on the shapes world, 3-4% of a text case, which a plain diffusers
    loop never pays. Collecting first keeps pytest's purpose intact (garbage that exists now is
    finalised, its exceptions reported); what is frozen is what was alive, and what later
    becomes garbage is still freed by reference counting. The cost: a frozen object that later
    becomes part of a reference cycle is not reclaimed before the process ends."""
    import gc

    gc.collect()
    gc.freeze()


def quiet_libraries() -> None:
    """Loading bars and the libraries' advisory warnings would bury the audit's own output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def _load(standard_path: Path, erased_path: Path, erased_format: str | None, device: str,
          dtype: str, lora_multiplier: float) -> LoadedModels:
    quiet_libraries()
    import torch
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.models.formats import detect_format, get
    from pytest_erasure.models.formats.diffusers_folder import load_standard, validate_pipeline_folder
    from pytest_erasure.models.identity import content_identity

    validate_pipeline_folder(standard_path, "--standard-model")
    try:
        detected: str | None = detect_format(erased_path)
    except ErasureInputError:
        if erased_format is None:
            raise
        detected = None  # the user named the format; their choice is what we load
    name = erased_format or detected
    assert name is not None
    fmt = get(name)
    settings = {"lora_multiplier": lora_multiplier}
    unknown = [o for o in fmt.options if o not in settings]
    if unknown:
        raise ValueError(f"format '{name}' reads options no loading setting provides: "
                         f"{', '.join(unknown)} (known: {', '.join(settings)})")
    options = {o: settings[o] for o in fmt.options}
    standard, standard_record = load_standard(standard_path, getattr(torch, dtype), device)
    with torch.no_grad():
        overrides, details = fmt.load(standard, standard_path, erased_path, options)
    components = {**standard.components, **overrides}
    erased = StableDiffusionPipeline(**{**components, "requires_safety_checker": False})
    for module in (erased.unet, erased.vae, erased.text_encoder):
        module.eval()
    shared = [c for c in COMPONENTS if getattr(erased, c) is getattr(standard, c)]
    standard_fp = _digest({"format": "diffusers",
                           "files": _relative(standard_record["files"], standard_path)})
    erased_files = details.pop("files")
    erased_key: dict[str, Any] = {"format": name, "files": _relative(erased_files, erased_path),
                                  **options}
    if fmt.applies_to_standard:
        erased_key["standard"] = standard_fp  # an override's result depends on its base
    erased_record: dict[str, Any] = {
        "path": str(erased_path),
        "format": name,
        "detected_format": detected,
        "format_forced": erased_format is not None,
        "files": erased_files,
        "components_shared": shared,
        "components_replaced": [c for c in COMPONENTS if c not in shared],
        **fmt.describe(details),
        **options,
    }
    # What the erased model computes, whatever packaging it came in (`content_identity`).
    erased_record["content"] = content_identity(standard, erased, standard_fp)
    fingerprints = {"standard": standard_fp, "erased": _digest(erased_key)}
    standard_record["fingerprint"] = fingerprints["standard"]
    erased_record["fingerprint"] = fingerprints["erased"]
    provenance = {"standard": standard_record, "erased": erased_record, "device": device,
                  "dtype": dtype, "offline": True, "safety_checker": None}
    return LoadedModels(standard=standard, erased=erased, provenance=provenance,
                        fingerprints=fingerprints)
