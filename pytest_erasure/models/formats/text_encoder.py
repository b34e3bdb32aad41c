"""A replacement CLIP text encoder (AdvUnlearn): a transformers folder (config.json + weights) or
a bare state dict, with or without a `text_encoder.` (or LDM `cond_stage_model.transformer.`)
prefix. The weights go onto a copy of the standard text encoder that shares unchanged tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.models.formats import BuiltinFormat
from pytest_erasure.models.formats.clip_keys import IGNORED, normalise
from pytest_erasure.models.formats.configs import compare_text_config, peek_json
from pytest_erasure.models.formats.files import hash_files, read_many, tensor_keys, weight_files
from pytest_erasure.models.formats.sharing import override

# CLIP text encoder keys, with transformers 4's `text_model.` level or without (transformers 5).
CLIP_ROOTS = ("embeddings.token_embedding.", "embeddings.position_embedding.",
              "embeddings.position_ids", "encoder.layers.", "final_layer_norm.")


def is_text_encoder(keys: list[str]) -> bool:
    """Every key a CLIP text encoder's, under any prefix checkpoints put before them."""
    bare = [k.split("text_encoder.", 1)[-1].split("cond_stage_model.transformer.", 1)[-1]
            for k in keys]
    return bool(keys) and all(
        k.removeprefix("module.").removeprefix("text_model.").startswith(CLIP_ROOTS) for k in bare)


def load(standard: Any, standard_path: Path, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    what = f"--erased-model {path}"
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ErasureInputError(what, "is a folder without config.json",
                                    "give a CLIP text encoder folder (config.json + weights) or "
                                    "its state dict file")
        compare_text_config(config, standard_path, path)
        files = weight_files(path)
        if not files:
            raise ErasureInputError(what, "holds no weight file", "give the text encoder's "
                                    "model.safetensors or pytorch_model.bin with its config")
        hashed = [config, *files]
    else:
        files, hashed = [path], [path]
    tensors = normalise(read_many(files), standard.text_encoder)
    encoder, stats = override(standard.text_encoder, tensors, what=what, role="text encoder",
                              ignore=IGNORED)
    return {"text_encoder": encoder}, {"files": hash_files(hashed), "text_encoder": stats}


class TextEncoderFormat(BuiltinFormat):
    loader = staticmethod(load)
    name = "text-encoder"
    separable = "a text encoder that replaces the standard one (AdvUnlearn's form)"
    applies_to_standard = True
    options: tuple[str, ...] = ()

    def detect(self, path: Path) -> float:
        """A CLIP config.json, or CLIP key names throughout."""
        if path.is_dir():
            config = peek_json(path / "config.json")
            clip = config.get("model_type") in ("clip_text_model", "clip") or any(
                "CLIPText" in a for a in config.get("architectures", []) or [])
            return 0.6 if clip else 0.0
        return 0.6 if is_text_encoder(tensor_keys(path)) else 0.0


FORMAT = TextEncoderFormat()
