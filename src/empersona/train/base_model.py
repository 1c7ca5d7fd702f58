"""The base model as loaded for training: precision, attention implementation, 4-bit NF4 (``qlora``).

``auto`` attention picks FlashAttention 2 on CUDA where installed; otherwise flattened
(padding-free) batches use ``packed_sdpa_attention``, registered with transformers under
``PACKED_SDPA``: causal SDPA run on each example of the flattened batch separately.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empersona.errors import EmpersonaError
from empersona.train.recipe import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PACKED_SDPA = "empersona_packed_sdpa"


def _attention(config: TrainConfig, *, flattened: bool) -> str:
    """``auto``: FlashAttention 2 on CUDA when installed; else, for flattened batches, packed SDPA."""
    if config.attn_implementation == "packed_sdpa" or (config.attn_implementation == "auto" and flattened):
        import importlib.util

        import torch

        if config.attn_implementation == "auto" and torch.cuda.is_available() and importlib.util.find_spec("flash_attn"):
            return "flash_attention_2"
        if not flattened:
            raise EmpersonaError("attn_implementation packed_sdpa needs padding_free batches. Use sdpa instead")
        from transformers import AttentionInterface

        AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
        return PACKED_SDPA
    return "sdpa" if config.attn_implementation == "auto" else config.attn_implementation


def packed_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal SDPA run separately on each example of a flattened (padding-free) batch.

    The collator marks where examples start (``cu_seq_lens_q``); each one attends only to itself,
    so attention costs the sum of squared example lengths instead of the square of their total,
    and PyTorch can use its fused causal kernels (no mask). Without FlashAttention installed this
    is what makes padding-free batches cheaper than padded ones.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        if query.shape[0] > 1:
            raise ValueError(f"{PACKED_SDPA} attention expects flattened batches (batch size 1 with cu_seq_lens_q)")
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, is_causal=True)
    edges = bounds.tolist()
    pieces = [
        sdpa_attention_forward(
            module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
            dropout=dropout, scaling=scaling, is_causal=True,
        )[0]
        for a, b in zip(edges, edges[1:], strict=False)
        if b > a
    ]
    return torch.cat(pieces, dim=1), None


def _resolve_base(base: str) -> str:
    """A local base folder as an absolute path, so the adapter finds its base from anywhere."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.is_dir() else base


def load_base_model(config: TrainConfig, *, bf16: bool) -> PreTrainedModel:
    """The base model in the training precision (4-bit NF4 when ``qlora``)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    flattened = config.padding_free or config.packing
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": _attention(config, flattened=flattened)}
    if config.qlora:
        import importlib.util

        from transformers import BitsAndBytesConfig

        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise EmpersonaError(
                "qlora needs a CUDA GPU and the bitsandbytes package. Install it (pip install bitsandbytes) "
                "on the GPU machine, or train without --qlora"
            )
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    try:
        model = AutoModelForCausalLM.from_pretrained(_resolve_base(config.base), **kwargs)
    except OSError as err:
        raise EmpersonaError(f"cannot load base model '{config.base}': {err}. Check --base") from None
    if config.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return model
