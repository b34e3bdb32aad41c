"""Shared parts of the detectors that load a transformers model from a local folder.

Every such detector follows one discipline, so it lives here once:
- the folder is checked before transformers sees it (exists, has a `config.json` of the expected
  model type, has weights), so a wrong path is a one-line `ErasureInputError` naming the path and
  the fix, not a traceback from deep inside transformers;
- loading is local only (`local_files_only=True`, the hub forced offline for the duration, never
  `trust_remote_code`), so an audit never downloads anything behind the user's back;
- every weight file is hashed (sha256) so a report says exactly which detector judged the images;
- images cross as PIL images quantised the way a saved PNG would be, so the model's own image
  processor (PIL backend: no torchvision here, and PIL is the reference implementation) sees what
  it would see when the images are read back from disk.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.cache import file_sha256
from pytest_erasure.detectors.base import DetectorSpec
from pytest_erasure.errors import ErasureInputError

if TYPE_CHECKING:
    import torch
    from PIL import Image

CONFIG_FILE = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx")
# Files that change what the model sees or says; hashed beside the weights.
CONFIG_FILES = (CONFIG_FILE, "preprocessor_config.json", "processor_config.json",
                "tokenizer_config.json", "tokenizer.json", "vocab.json", "vocab.txt",
                "merges.txt", "special_tokens_map.json")


sha256 = file_sha256
"""The package's one file hash (`cache.file_sha256`), under the name detectors use."""


def model_folder(spec: DetectorSpec, model_types: Sequence[str], kind: str,
                 download_hint: str) -> tuple[Path, dict[str, Any]]:
    """Check `spec.path` is a local model folder of one of `model_types`; return it and its config.

    `kind` names what is expected ("a CLIP model"); `download_hint` says where such a folder
    comes from (shown in every error's fix).
    """
    what = f"detector '{spec.name}'"
    if spec.path is None:
        raise ErasureInputError(what, "has no detector_path",
                                f"set detector_path in the concepts file to a local folder "
                                f"({download_hint})")
    folder = Path(spec.path)
    what = f"detector '{spec.name}' path {folder}"
    if not folder.exists():
        raise ErasureInputError(what, "does not exist",
                                f"point detector_path at a local folder ({download_hint})")
    if not folder.is_dir():
        raise ErasureInputError(what, "is not a folder",
                                f"point detector_path at the model's folder ({download_hint})")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ErasureInputError(what, f"has no {CONFIG_FILE}, so it is not a transformers model "
                                "folder", f"point detector_path at a saved model ({download_hint})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ErasureInputError(f"{what} {CONFIG_FILE}", f"is not valid JSON ({exc})",
                                f"re-save the model ({download_hint})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in model_types:
        raise ErasureInputError(
            what, f"holds a model of type {model_type!r}, not {kind}",
            f"point detector_path at the right model ({download_hint})")
    if not weight_files(folder):
        raise ErasureInputError(what, "has no weight files (*.safetensors or *.bin)",
                                f"copy the model's weights into it ({download_hint})")
    return folder, config


def require_file(folder: Path, names: Sequence[str], spec: DetectorSpec, what_for: str,
                 download_hint: str) -> None:
    """The processor files are needed too; `save_pretrained` of the processor writes them."""
    if not any((folder / name).is_file() for name in names):
        raise ErasureInputError(
            f"detector '{spec.name}' path {folder}", f"has no {' or '.join(names)} ({what_for})",
            f"save the model's processor into the same folder ({download_hint})")


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def fingerprint(folder: Path) -> dict[str, dict[str, str]]:
    """sha256 of every weight file and every config/processor file, by file name."""
    return {
        "weights": {p.name: sha256(p) for p in weight_files(folder)},
        "configs": {name: sha256(folder / name) for name in CONFIG_FILES
                    if (folder / name).is_file()},
    }


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Force the hub offline while loading, whatever the caller's environment says."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_failed(spec: DetectorSpec, folder: Path, exc: Exception, download_hint: str) -> \
        ErasureInputError:
    """A folder that passed our checks but transformers still refused (corrupt, mismatched)."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ErasureInputError(f"detector '{spec.name}' path {folder}",
                             f"could not be loaded ({type(exc).__name__}: {first_line})",
                             f"re-save the model and its processor there ({download_hint})")


def load_local(processor_cls: Any, model_cls: Any, spec: DetectorSpec, folder: Path,
               download_hint: str) -> tuple[Any, Any]:
    """A processor and a float32 model from a local folder only: no hub, no remote code."""
    import torch

    try:
        with offline():
            processor = processor_cls.from_pretrained(
                folder, local_files_only=True, trust_remote_code=False, backend="pil")
            model = model_cls.from_pretrained(
                folder, local_files_only=True, trust_remote_code=False, dtype=torch.float32)
    except Exception as exc:  # corrupt or mismatched files raise many types (SafetensorError, ...)
        raise load_failed(spec, folder, exc, download_hint) from None
    return processor, model


class Options:
    """A detector's `detector_options`, read key by key; unknown keys are a usage error."""

    def __init__(self, spec: DetectorSpec) -> None:
        self.spec = spec
        self.raw = dict(spec.options)
        self.used: set[str] = set()

    def _where(self, key: str) -> str:
        return f"detector '{self.spec.name}' option {key}"

    def get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        return self.raw.get(key, default)

    def fraction(self, key: str, default: float) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ErasureInputError(self._where(key), f"is {value!r}",
                                    "give a number between 0 and 1")
        return float(value)

    def count(self, key: str, default: int) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ErasureInputError(self._where(key), f"is {value!r}", "give a whole number >= 1")
        return value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.get(key, default)
        if value not in choices:
            raise ErasureInputError(self._where(key), f"is {value!r}",
                                    f"use one of: {', '.join(choices)}")
        return value

    def text(self, key: str, default: str, must_contain: str | None = None) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or (must_contain and must_contain not in value):
            need = f" containing {must_contain}" if must_contain else ""
            raise ErasureInputError(self._where(key), f"is {value!r}", f"give a string{need}")
        return value

    def strings(self, key: str, default: Sequence[str]) -> list[str]:
        value = self.get(key, list(default))
        if not isinstance(value, list) or not value or not all(
                isinstance(v, str) and v.strip() for v in value):
            raise ErasureInputError(self._where(key), f"is {value!r}",
                                    "give a non-empty list of non-empty strings")
        return list(value)

    def finish(self) -> None:
        """Call after reading every option: a typo must not silently fall back to a default."""
        extra = sorted(set(self.raw) - self.used)
        if extra:
            raise ErasureInputError(f"detector '{self.spec.name}' detector_options",
                                    f"has unknown key(s) {', '.join(extra)}",
                                    f"use only: {', '.join(sorted(self.used))}")


def check_images(images: torch.Tensor, name: str) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> the same on the CPU as uint8 (rounded like a saved PNG)."""
    import torch

    if images.ndim != 4 or images.shape[1] != 3:
        raise ErasureInputError(
            f"detector '{name}' input",
            f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}",
            "pass RGB image batches")
    return (images.detach().float().clamp(0, 1) * 255).round().to("cpu", torch.uint8)


def to_pil(images: torch.Tensor, name: str) -> list[Image.Image]:
    from PIL import Image

    arrays = check_images(images, name).permute(0, 2, 3, 1).contiguous().numpy()
    return [Image.fromarray(a) for a in arrays]


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
