"""Attention over flattened (padding-free) training batches, on CPU.

``packed_sdpa`` reads the example bounds from the device once per forward pass, not once per
layer; ``varlen`` hands the whole flattened batch to PyTorch's variable-length kernel (CUDA only):
its layout, causal and grouped-head arguments are checked here against a reference kernel with
the signature of each PyTorch version, and it gives the loss ``packed_sdpa`` gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from empersona.errors import EmpersonaError
from empersona.train import base_model
from empersona.train.base_model import (
    PACKED_SDPA,
    VARLEN,
    _attention,
    example_edges,
    packed_sdpa_attention,
    varlen_attention,
)
from empersona.train.recipe import TrainConfig


def flattened_batch(lengths: list[int], vocab: int = 200) -> dict[str, Any]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    generator = torch.Generator().manual_seed(0)
    examples = [{"input_ids": torch.randint(3, vocab, (n,), generator=generator).tolist()} for n in lengths]
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)


def per_example_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor,
                          causal: bool, scale: float | None, gqa: bool) -> torch.Tensor:
    """What a variable-length kernel computes, from ``[N, heads, d]`` tensors, in float32."""
    assert query.dim() == key.dim() == 3 and bounds.dtype == torch.int32
    assert query.is_contiguous() and key.is_contiguous() and value.is_contiguous()
    if key.shape[1] != query.shape[1]:
        assert gqa, "grouped key/value heads without enable_gqa"
    edges = bounds.tolist()
    out = []
    for a, b in zip(edges, edges[1:], strict=False):
        q, k, v = (x[a:b].transpose(0, 1).float() for x in (query, key, value))  # [heads, n, d]
        out.append(torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, enable_gqa=k.shape[0] != q.shape[0]
        ).transpose(0, 1))
    return torch.cat(out).to(query.dtype)


def attention_layer(heads: int, kv_heads: int) -> torch.nn.Module:
    """What the attention functions read of a model's attention layer."""
    layer = torch.nn.Module()
    layer.num_key_value_groups = heads // kv_heads
    layer.is_causal = True
    return layer


def kernel_of_torch_2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                         window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    assert torch.equal(cu_seq_q, cu_seq_k) and max_q == max_k == int(cu_seq_q.diff().max())
    assert tuple(window_size) in ((-1, -1), (-1, 0))
    return per_example_reference(query, key, value, cu_seq_q, tuple(window_size) == (-1, 0), scale, enable_gqa)


def kernel_of_torch_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    assert torch.equal(cu_seq_q, cu_seq_k) and max_q == max_k == int(cu_seq_q.diff().max())
    return per_example_reference(query, key, value, cu_seq_q, is_causal, None, False)


def test_example_bounds_cross_from_the_device_once_per_forward_pass(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AttentionInterface, AutoModelForCausalLM

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=PACKED_SDPA)
    assert model.config.num_hidden_layers >= 2
    batch = flattened_batch([5, 9, 3])
    reads: list[int] = []
    original = torch.Tensor.tolist

    def counting_tolist(self: torch.Tensor) -> Any:
        if self is batch["cu_seq_lens_q"]:
            reads.append(1)
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    with torch.no_grad():
        model(**batch, use_cache=False)
    assert len(reads) == 1
    bounds = batch["cu_seq_lens_q"]
    first = example_edges(bounds)
    assert example_edges(bounds) is first == [0, 5, 14, 17]
    assert example_edges(bounds.clone()) == first  # an equal tensor of another batch: read again
    assert len(reads) == 1
    bounds[2] = 10  # changed in place: read again
    assert example_edges(bounds) == [0, 5, 10, 17] and len(reads) == 2


@pytest.mark.parametrize("kernel", [kernel_of_torch_2_13, kernel_of_torch_2_10], ids=["torch-2.13", "torch-2.10"])
@pytest.mark.parametrize("kv_heads", [2, 4])
def test_varlen_attention_equals_attention_per_example(
    kernel: Any, kv_heads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base_model, "varlen_kernel", lambda device=None: kernel)
    generator = torch.Generator().manual_seed(1)
    heads, dim, lengths = 4, 16, [6, 11, 1, 7]
    tokens = sum(lengths)
    query = torch.randn(1, heads, tokens, dim, generator=generator).to(torch.bfloat16)
    key = torch.randn(1, kv_heads, tokens, dim, generator=generator).to(torch.bfloat16)
    value = torch.randn(1, kv_heads, tokens, dim, generator=generator).to(torch.bfloat16)
    bounds = torch.tensor([0, 6, 17, 18, 25], dtype=torch.int32)
    module = attention_layer(heads, kv_heads)
    got, _ = varlen_attention(module, query, key, value, None, scaling=dim**-0.5,
                              cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=11, max_length_k=11)
    expected, _ = packed_sdpa_attention(module, query, key, value, None, scaling=dim**-0.5, cu_seq_lens_q=bounds)
    assert got.shape == expected.shape == (1, tokens, heads, dim)
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
    # a later token of one example does not see the next example: its first token attends to itself only
    first_of_second = got[0, 6].float()
    own_value = value[0, :, 6].float().repeat_interleave(heads // kv_heads, dim=0)
    torch.testing.assert_close(first_of_second, own_value, atol=2e-2, rtol=2e-2)


def test_varlen_falls_back_where_the_kernel_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the kernel must not be called")

    monkeypatch.setattr(base_model, "varlen_kernel", lambda device=None: refuse)
    query = torch.randn(1, 4, 9, 16)  # float32: not a FlashAttention dtype
    key = value = torch.randn(1, 2, 9, 16)
    bounds = torch.tensor([0, 4, 9], dtype=torch.int32)
    module = attention_layer(4, 2)
    got, _ = varlen_attention(module, query, key, value, None, cu_seq_lens_q=bounds, max_length_q=5)
    expected, _ = packed_sdpa_attention(module, query, key, value, None, cu_seq_lens_q=bounds)
    assert torch.equal(got, expected)
    # the real kernel is offered for CUDA tensors only
    monkeypatch.undo()
    assert base_model.varlen_kernel(torch.device("cpu")) is None


def test_varlen_model_loss_equals_packed_sdpa_loss(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AttentionInterface, AutoModelForCausalLM

    monkeypatch.setattr(base_model, "varlen_kernel", lambda device=None: kernel_of_torch_2_13)
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionInterface.register(VARLEN, varlen_attention)
    batch = flattened_batch([12, 30, 7, 21])
    losses = {}
    for name in (PACKED_SDPA, VARLEN):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16, attn_implementation=name)
        with torch.no_grad():
            losses[name] = model(**batch, use_cache=False).loss.item()
    assert losses[VARLEN] == pytest.approx(losses[PACKED_SDPA], rel=1e-2)


def test_varlen_is_refused_with_what_to_do(tiny_model: Path) -> None:
    with pytest.raises(EmpersonaError, match="needs padding_free batches"):
        _attention(TrainConfig(base=str(tiny_model), domain="x", attn_implementation="varlen"), flattened=False)
    if not torch.cuda.is_available():
        with pytest.raises(EmpersonaError, match="needs a CUDA GPU and PyTorch 2.10"):
            _attention(TrainConfig(base=str(tiny_model), domain="x", attn_implementation="varlen"), flattened=True)
