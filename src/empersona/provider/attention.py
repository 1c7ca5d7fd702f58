"""Decode-step attention for grouped-query models that reads each cached key and value once.

With an attention mask (every batched decode step has one: padding), transformers' SDPA path on
CUDA first repeats the key/value heads to the number of query heads (``repeat_kv``): it passes
grouped heads to SDPA only when there is no mask (expecting the math kernel otherwise). For
Qwen2.5-1.5B (12 query heads, 2 KV heads) that writes and reads six copies of the whole KV cache
at every step, more bytes than the weights at batch 256. Here a one-token query attends to the grouped cache as it is, so each
KV byte is read once: through SDPA with ``enable_gqa`` and the padding mask where PyTorch has it
(2.5 and later; on an H100 with PyTorch 2.11 that fused kernel took 1.66 ms per step for the
1.5B shape at batch 256 over 512 cache slots, against 2.64 ms for the matmul form below and 32 ms
for SDPA on repeated heads: ``bench/profile_engine.py``), else by viewing the query as
``[batch, kv_heads, group, head_dim]`` and multiplying it with the cache. Prompts (more than one
query token) go through transformers' SDPA unchanged.

Registered with transformers' ``AttentionInterface`` under ``ATTENTION_NAME``, with SDPA's mask
builder, and switched on by the engine for models that use SDPA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

ATTENTION_NAME = "empersona_decode"


# Whether decode steps use SDPA's ``enable_gqa``; set once, outside any compiled code (a cached
# function called under torch.compile draws a dynamo warning), by ``use_grouped_decode_attention``.
FUSED_GQA: bool | None = None


def sdpa_has_gqa() -> bool:
    """Whether this PyTorch's SDPA takes grouped key/value heads (``enable_gqa``, PyTorch 2.5+)."""
    import torch

    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 5)


def grouped_decode_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for ``query [B, H, q, d]`` over ``key/value [B, KV, T, d]``; returns ``[B, q, H, d]``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or heads % kv_heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else dim**-0.5
    fused = FUSED_GQA if FUSED_GQA is not None else sdpa_has_gqa()
    if fused and dim == value.shape[-1] <= 256:  # the fused kernels' head sizes
        mask = None if attention_mask is None else attention_mask[:, :, -1:, : key.shape[2]]
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(query.dtype)  # an additive mask must match the query's dtype
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, scale=scale, enable_gqa=True
        )
        return out.transpose(1, 2).contiguous(), None
    return _grouped_matmul_attention(query, key, value, attention_mask, scale)


def _grouped_matmul_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, None]:
    """The one-token grouped attention as two matmuls (PyTorch without SDPA's ``enable_gqa``)."""
    import torch

    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.view(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * scale  # [B, KV, group, T]
    if attention_mask is not None:
        mask = attention_mask[:, :, -1:, : key.shape[2]]  # [B, 1, 1, T]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, KV, group, d]
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_grouped_decode_attention(model: nn.Module) -> bool:
    """Switch an SDPA model to ``grouped_decode_attention``; False (unchanged) for other kernels."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    global FUSED_GQA
    config = model.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION_NAME):
        return False
    if FUSED_GQA is None:
        FUSED_GQA = sdpa_has_gqa()
    AttentionInterface.register(ATTENTION_NAME, grouped_decode_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTENTION_NAME)
    else:
        config._attn_implementation = ATTENTION_NAME
    return True
