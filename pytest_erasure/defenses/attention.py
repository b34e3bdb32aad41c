"""Capture of cross-attention probabilities for chosen tokens in a UNet's attn2 layers.

diffusers' default `AttnProcessor2_0` never materialises attention probabilities (it calls
`scaled_dot_product_attention`). `CrossAttentionCapture` swaps every attn2 processor for a
wrapper, for the duration of a `with` block only, then puts the original processors back. The
wrapper lets the original processor compute the layer's output (so the UNet's output is
bit-identical to an uncaptured forward, whatever processor was installed) and *additionally*
recomputes softmax(QK^T * scale) for the layer in chunks over the query dimension, keeping only
the chosen tokens' columns averaged over heads and tokens. A 64x64 latent at batch 8 therefore
never holds a full (B, heads, 4096, 77) probability tensor, and nothing is kept outside the
`with` block. attn1 (self-attention) keeps its processor throughout.

Maps are (B, h, w) float32 per layer. A transformer block only sees a flat query sequence of
length h*w, so the map's height and width come from the latent's (H, W): each UNet down-sample
halves a side rounding up (stride-2 conv with padding 1), so the level k map is
(ceil(H/2^k), ceil(W/2^k)). For SD v1.4 at 512x512 that is 64x64/32x32/16x16/8x8 (query
lengths 4096/1024/256/64); any aspect ratio works.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEFAULT_CHUNK_ELEMENTS = 1 << 22
"""Probability entries (float32) held at once per chunk: 16 MiB. SD v1.4 at batch 8, 8 heads,
77 tokens gets ~850 queries per chunk, i.e. 5 chunks for a 4096-query layer."""


def map_size(query_len: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of an attention map with `query_len` queries in a UNet fed a latent (H, W)."""
    height, width = latent_hw
    level = 0
    while True:
        h, w = math.ceil(height / 2**level), math.ceil(width / 2**level)
        if h * w == query_len:
            return h, w
        if h * w < query_len or (h == 1 and w == 1):
            raise ValueError(
                f"an attention layer has {query_len} queries, which is no down-sampling level "
                f"of a {height}x{width} latent"
            )
        level += 1


def cross_attention_layers(unet: Any) -> list[str]:
    """Names (module paths) of the UNet's cross-attention (attn2) layers, in forward order."""
    return [name.removesuffix(".processor") for name in unet.attn_processors
            if name.removesuffix(".processor").endswith("attn2")]


def _resolution_of(hw: tuple[int, int]) -> int:
    return max(hw)


class _CapturingProcessor:
    """Wraps one attn2 layer's processor; records that layer's token map as a side effect."""

    def __init__(self, inner: Any, name: str, capture: CrossAttentionCapture) -> None:
        self.inner = inner
        self.name = name
        self.capture = capture

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        self.capture._record(self.name, attn, hidden_states, encoder_hidden_states,
                             attention_mask, temb)
        if temb is not None:
            kwargs["temb"] = temb
        # Positional extras are diffusers' deprecated `scale`; processors ignore them.
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, **kwargs)


class CrossAttentionCapture:
    """Context manager recording chosen tokens' cross-attention maps during UNet forwards.

    >>> with CrossAttentionCapture(unet, [2], latent_hw=(64, 64)) as capture:
    ...     unet(latents, t, encoder_hidden_states=embeds)
    >>> capture.maps  # {'down_blocks.0.attentions.0.transformer_blocks.0.attn2': (B, 64, 64), ...}

    `token_indices` index the 77-token text sequence (encoder_hidden_states' dim 1).
    `resolutions`, when given, keeps only layers whose map's longer side is one of them
    (64/32/16/8 for SD v1.4 at 512x512); other attn2 layers run untouched, computing nothing
    extra. Each map is the mean over heads and chosen tokens of the softmax probabilities, in
    float32 on the UNet's device. A layer run twice inside one `with` block keeps its last map.
    """

    def __init__(
        self,
        unet: Any,
        token_indices: Sequence[int],
        latent_hw: tuple[int, int],
        *,
        resolutions: Iterable[int] | None = None,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        if not token_indices:
            raise ValueError("token_indices is empty: name at least one token to capture")
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
        self.unet = unet
        self.token_indices = [int(i) for i in token_indices]
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self.resolutions = None if resolutions is None else frozenset(int(r) for r in resolutions)
        self.chunk_elements = chunk_elements
        self.maps: dict[str, torch.Tensor] = {}
        self._original: dict[str, Any] | None = None

    def __enter__(self) -> CrossAttentionCapture:
        if self._original is not None:
            raise RuntimeError("CrossAttentionCapture is not re-entrant")
        self.maps = {}
        original = dict(self.unet.attn_processors)
        swapped: dict[str, Any] = {}
        for key, processor in original.items():
            name = key.removesuffix(".processor")
            swapped[key] = (_CapturingProcessor(processor, name, self)
                            if name.endswith("attn2") else processor)
        # set_attn_processor pops from the dict it is given: hand it a copy.
        self.unet.set_attn_processor(dict(swapped))
        self._original = original
        return self

    def __exit__(self, *exc_info: object) -> None:
        original, self._original = self._original, None
        if original is not None:
            self.unet.set_attn_processor(dict(original))

    def _record(
        self,
        name: str,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> None:
        import torch

        if hidden_states.ndim == 4:
            query_len = hidden_states.shape[2] * hidden_states.shape[3]
        else:
            query_len = hidden_states.shape[1]
        hw = map_size(query_len, self.latent_hw)
        if self.resolutions is not None and _resolution_of(hw) not in self.resolutions:
            return
        with torch.no_grad():
            query, key, mask = _query_key(attn, hidden_states, encoder_hidden_states,
                                          attention_mask, temb)
            batch, heads, n_query, _ = query.shape
            n_key = key.shape[2]
            bad = [i for i in self.token_indices if not -n_key <= i < n_key]
            if bad:
                raise ValueError(f"token indices {bad} are outside the {n_key}-token text sequence")
            columns = torch.tensor(self.token_indices, device=query.device)
            chunk = max(1, self.chunk_elements // (batch * heads * n_key))
            key_t = key.transpose(-1, -2)
            parts = []
            for start in range(0, n_query, chunk):
                scores = torch.matmul(query[:, :, start:start + chunk], key_t) * attn.scale
                if mask is not None:
                    rows = mask if mask.shape[2] == 1 else mask[:, :, start:start + chunk]
                    scores = scores + rows.float()
                probs = scores.softmax(dim=-1).index_select(-1, columns)
                parts.append(probs.mean(dim=(1, 3)))
            self.maps[name] = torch.cat(parts, dim=1).reshape(batch, *hw)


def _query_key(
    attn: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    temb: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Query (B, heads, N, d), key (B, heads, S, d), additive mask, as AttnProcessor2_0 has,
    but in float32 whatever the UNet's dtype.

    The maps are a statistic beside the forward, not part of it, so they need not share its
    precision: the hidden states, the text context and the to_q/to_k weights are upcast and
    the projections, scores and softmax all run in float32. Upcasting only the softmax (as
    diffusers' upcast_softmax does) left the q/k projections in half precision, whose
    rounding moved IRECE's thresholded masks between a bf16 and a float32 UNet.
    """
    from torch.nn import functional as F

    hidden_states = hidden_states.float()
    if encoder_hidden_states is not None:
        encoder_hidden_states = encoder_hidden_states.float()
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    batch = hidden_states.shape[0]
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = _float_module(attn.group_norm, hidden_states.transpose(1, 2)
                                      ).transpose(1, 2)
    query = _linear32(attn.to_q, hidden_states, F)
    if encoder_hidden_states is not None and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context.to(attn.to_k.weight.dtype)).float()
    key = _linear32(attn.to_k, context, F)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if getattr(attn, "norm_q", None) is not None:
        query = _float_module(attn.norm_q, query)
    if getattr(attn, "norm_k", None) is not None:
        key = _float_module(attn.norm_k, key)
    return query, key, mask


def _linear32(layer: Any, x: torch.Tensor, F: Any) -> torch.Tensor:
    """`layer` (an nn.Linear, possibly LoRA-wrapped) applied in float32. A plain Linear uses
    its upcast weight directly; anything else (a LoRA layer of an SPM model) runs as is on
    input in its own dtype and is upcast after, which keeps its extra terms."""
    from torch import nn

    if type(layer) is nn.Linear:
        bias = None if layer.bias is None else layer.bias.float()
        return F.linear(x.float(), layer.weight.float(), bias)
    return layer(x.to(layer.weight.dtype)).float()


def _float_module(module: Any, x: torch.Tensor) -> torch.Tensor:
    """A norm layer applied in float32: a float32 copy of it when its parameters are in half
    precision (norms hold few parameters; SD v1.4's attn2 has none of these norms)."""
    import copy

    import torch

    if all(p.dtype == torch.float32 for p in module.parameters()):
        return module(x.float())
    return copy.deepcopy(module).float()(x.float())
