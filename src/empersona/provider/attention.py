"""Decode-step attention for grouped-query models that reads each cached key and value once.

With an attention mask (every batched decode step has one: padding), transformers' SDPA path on
CUDA first repeats the key/value heads to the number of query heads (``repeat_kv``), because
PyTorch's masked SDPA kernels do not take grouped heads. For Qwen2.5-1.5B (12 query heads, 2 KV
heads) that writes and reads six copies of the whole KV cache at every step, more bytes than
the weights at batch 256. Here a one-token query is instead viewed as ``[batch, kv_heads, group,
head_dim]`` and multiplied with the cache as it is, so each KV byte is read once; prompts (more
than one query token) go through transformers' SDPA unchanged.

Registered with transformers' ``AttentionInterface`` under ``ATTENTION_NAME``, with SDPA's mask
builder, and switched on by the engine for models that use SDPA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

ATTENTION_NAME = "empersona_decode"


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

    config = model.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION_NAME):
        return False
    AttentionInterface.register(ATTENTION_NAME, grouped_decode_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTENTION_NAME)
    else:
        config._attn_implementation = ATTENTION_NAME
    return True
