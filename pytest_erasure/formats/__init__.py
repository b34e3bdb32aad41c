"""Erased-model formats: one module per format, each turning a published artifact into the
components that differ from the standard pipeline (`load(...) -> (overrides, provenance)`).

Modules here import torch at import time; `pytest_erasure.models` imports them only when loading.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# --erased-format value -> module holding its `load` function.
FORMATS: dict[str, str] = {
    "diffusers": "pytest_erasure.formats.diffusers_folder",
    "single-file": "pytest_erasure.formats.single_file",
    "unet": "pytest_erasure.formats.unet",
    "receler": "pytest_erasure.formats.receler",
    "text-encoder": "pytest_erasure.formats.text_encoder",
    "lora": "pytest_erasure.formats.lora",
}

# Formats that are applied on top of the standard model (their result depends on it).
OVERRIDES = ("single-file", "unet", "receler", "text-encoder", "lora")


def format_module(name: str) -> ModuleType:
    return importlib.import_module(FORMATS[name])
