"""The base model as loaded for training: precision, attention implementation, 4-bit NF4 (``qlora``).

``auto`` attention picks FlashAttention 2 on CUDA where installed; otherwise flattened
(padding-free) batches use ``packed_sdpa_attention``, registered with transformers under
``PACKED_SDPA``: causal SDPA run on each example of the flattened batch separately.
``varlen`` (opt-in, CUDA) runs the whole flattened batch through PyTorch's variable-length
FlashAttention (``torch.nn.attention.varlen``, PyTorch 2.10 and later, no extra package): one
kernel per layer and no host synchronisation, where ``packed_sdpa`` launches one SDPA per example.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empersona.errors import EmpersonaError
from empersona.train.recipe import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

BASE_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "chat_template.jinja")
"""Files of a local base whose contents are part of its identity (architecture, sampling
defaults, chat template)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def add_base_files(digest: Any, folder: Path, names: tuple[str, ...] = BASE_FILES) -> None:
    """Feed a local base folder's identity into ``digest`` (a hashlib object): the contents of
    ``names`` and the names and sizes of its weight files (reading the weights themselves
    would take minutes on a large model)."""
    import hashlib

    for name in names:
        if (folder / name).is_file():
            digest.update(f"{name}:".encode() + hashlib.sha256((folder / name).read_bytes()).digest())
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES):
            digest.update(f"{path.name}:{path.stat().st_size}\n".encode())


def base_fingerprint(base: str) -> str | None:
    """A local base folder's files as training reads them (`add_base_files` without
    ``generation_config.json``, which training does not read), wherever it lies; None for a hub id
    or a folder not there. Recorded with each adapter (``empersona.json``): an adapter trained on a
    base since replaced in place is not the study's fine-tune of the base it has now."""
    import hashlib

    folder = Path(base).expanduser()
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    add_base_files(digest, folder, tuple(name for name in BASE_FILES if name != "generation_config.json"))
    return digest.hexdigest()[:16]


PACKED_SDPA = "empersona_packed_sdpa"
VARLEN = "empersona_varlen"


def _attention(config: TrainConfig, *, flattened: bool) -> str:
    """``auto``: FlashAttention 2 on CUDA when installed; else, for flattened batches, packed SDPA."""
    if config.attn_implementation == "varlen":
        if not flattened:
            raise EmpersonaError("attn_implementation varlen needs padding_free batches. Use sdpa instead")
        import torch

        if varlen_kernel() is None or not torch.cuda.is_available():
            raise EmpersonaError(
                "attn_implementation varlen needs a CUDA GPU and PyTorch 2.10 or later "
                f"(torch.nn.attention.varlen; this is torch {torch.__version__}). Use attn_implementation auto"
            )
        from transformers import AttentionInterface

        AttentionInterface.register(VARLEN, varlen_attention)
        return VARLEN
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
    edges = example_edges(bounds)
    pieces = [
        sdpa_attention_forward(
            module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
            dropout=dropout, scaling=scaling, is_causal=True,
        )[0]
        for a, b in zip(edges, edges[1:], strict=False)
        if b > a
    ]
    return torch.cat(pieces, dim=1), None


# The bounds tensor of the batch in flight and its host copy: every layer gets the same tensor, so
# its values cross from the GPU once per forward pass (a synchronisation) instead of once per layer.
_EDGES: tuple[Any, int, list[int]] | None = None


def example_edges(bounds: Any) -> list[int]:
    """``bounds`` (``cu_seq_lens_q``) as a list of ints, read from the device once per tensor."""
    global _EDGES
    if _EDGES is not None and _EDGES[0] is bounds and _EDGES[1] == bounds._version:
        return _EDGES[2]
    edges = [int(x) for x in bounds.tolist()]
    _EDGES = (bounds, bounds._version, edges)
    return edges


def varlen_kernel(device: Any = None) -> Any:
    """PyTorch's ``varlen_attn`` (for tensors on ``device``: CUDA only); None where it cannot run."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if device is None or device.type == "cuda" else None


@functools.lru_cache(maxsize=4)
def _parameters(kernel: Any) -> frozenset[str]:
    """The argument names of a kernel (read once: the attention runs in every layer)."""
    return frozenset(inspect.signature(kernel).parameters)


def varlen_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal attention over a flattened batch in one variable-length FlashAttention call.

    ``query [1, H, N, d]`` and ``key/value [1, KV, N, d]`` hold the examples one after another;
    ``cu_seq_lens_q`` marks where each starts and ``max_length_q`` (an int, from the collator) is
    the longest, so no value has to come back from the GPU. Where the kernel cannot run (no CUDA,
    fp32, dropout, a head size over 256) this falls back to ``packed_sdpa_attention``.
    PyTorch 2.10 spells causal ``is_causal=True``, later versions ``window_size=(-1, 0)``; grouped
    key/value heads are passed as they are where the kernel takes ``enable_gqa``, else repeated.
    """
    import torch

    kernel = varlen_kernel(query.device)
    bounds, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    batch, heads, tokens, dim = query.shape
    if bounds is None:
        bounds = torch.tensor([0, tokens], dtype=torch.int32, device=query.device)
        longest = tokens
    usable = (
        kernel is not None and batch == 1 and not dropout and longest is not None
        and query.dtype in (torch.float16, torch.bfloat16) and dim <= 256
    )
    if not usable:
        return packed_sdpa_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    params = _parameters(kernel)
    options: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    scale = scaling if scaling is not None else dim**-0.5
    if "scale" in params:
        options["scale"] = scale
    elif abs(scale - dim**-0.5) > 1e-12:  # a kernel without a scale argument uses 1/sqrt(d)
        return packed_sdpa_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    q = query[0].transpose(0, 1)  # [N, H, d]
    k, v = key[0].transpose(0, 1), value[0].transpose(0, 1)  # [N, KV, d]
    if k.shape[1] != heads:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            group = heads // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    bounds = bounds.to(device=query.device, dtype=torch.int32)
    out = kernel(q.contiguous(), k.contiguous(), v.contiguous(), bounds, bounds, int(longest), int(longest), **options)
    return out.unsqueeze(0), None  # [1, N, H, d], as transformers' attention functions return


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
        model = AutoModelForCausalLM.from_pretrained(config.resolved_base(), **kwargs)
    except OSError as err:
        raise EmpersonaError(f"cannot load base model '{config.base}': {err}. Check --base") from None
    if config.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return model
