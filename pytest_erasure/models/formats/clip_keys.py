"""CLIP text-encoder tensors under the standard text encoder's own key names.

Shared by the text-encoder format and full checkpoints (whose CLIP part diffusers converts).
"""

from __future__ import annotations

from typing import Any

from pytest_erasure.models.formats.files import flatten
from pytest_erasure.models.formats.sharing import strip_prefixes

PREFIXES = ("module.", "text_encoder.", "cond_stage_model.transformer.", "cond_stage_model.",
            "transformer.")
# Buffers older transformers versions saved and newer ones recompute.
IGNORED = ("text_model.embeddings.position_ids", "embeddings.position_ids")


def normalise(tensors: dict[str, Any], target: Any) -> dict[str, Any]:
    """Tensors under the key names of the standard text encoder's own state dict.

    Checkpoints on disk name CLIP tensors `text_model.encoder...` (transformers 4, SD v1.4,
    AdvUnlearn) or `encoder...` (transformers 5 drops the `text_model.` level); either fits.
    """
    tensors = flatten(tensors)
    mapping = strip_prefixes(tensors, PREFIXES)
    out = {new: tensors[old] for old, new in mapping.items()}
    wants_prefix = any(k.startswith("text_model.") for k in target.state_dict())
    if wants_prefix:
        return {k if k.startswith("text_model.") else f"text_model.{k}": v
                for k, v in out.items()}
    return {k.removeprefix("text_model."): v for k, v in out.items()}
