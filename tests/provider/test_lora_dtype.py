"""Adapters applied in the base model's dtype (the default) or in float32 (PEFT's default).

On CPU the tests' models run in float32, where both are the same; here the base is cast to
bf16: with ``lora_dtype="model"`` the stacked factors and the row mask are bf16 (tensor cores on a
GPU), with ``"float32"`` they stay float32 as PEFT keeps them. Both give the first token's logprobs
of PEFT's own forward pass to bf16 precision, and an adapter row differs from a base row; so does
the adapter merged into the bf16 base weights (``lora_merge``, a batch of its rows alone).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from empersona.provider.engine import Engine, EngineOptions, Request
from empersona.provider.lora import _make_slot_linear_class
from test_provider_engine import lively, load, prompt_ids  # noqa: F401 (lively: a fixture)


def first_token_logprobs(engine: Engine, prompt: tuple[int, ...], adapter: str | None) -> dict[int, float]:
    (completion,) = engine.generate([Request(prompt, 1, temperature=0.0, adapter=adapter, top_logprobs=5)])
    assert completion.logprobs is not None
    return dict(completion.logprobs[0].top)


@pytest.mark.parametrize(
    ("lora_dtype", "factor_dtype", "merge"),
    [("model", torch.bfloat16, False), ("float32", torch.float32, False), ("model", torch.bfloat16, True)],
    ids=["model", "float32", "merged"],
)
def test_adapters_run_in_the_chosen_dtype_and_match_peft(
    lively: tuple[Path, Path, Path], lora_dtype: str, factor_dtype: torch.dtype, merge: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from peft import PeftModel

    from empersona.provider import engine as engine_module

    monkeypatch.setattr(engine_module, "MERGE_MIN_TOKENS", 0)  # merge for this one small batch

    base, adapter, _ = lively
    prompt = prompt_ids(base)[0]
    engine = Engine(load(base).to(torch.bfloat16), EngineOptions(lora_dtype=lora_dtype, lora_merge=merge))
    key = engine.add_adapter(adapter)
    slots = [m for m in engine.model.modules() if isinstance(m, _make_slot_linear_class())]
    assert slots and all(m.a_cat.dtype == m.b_cat.dtype == factor_dtype for m in slots)
    got = first_token_logprobs(engine, prompt, key)
    if merge:
        assert engine.adapters.rows.merged and engine.adapters.merged_key == key
    else:
        assert engine.adapters.rows.mask is not None and engine.adapters.rows.mask.dtype == factor_dtype

    peft = PeftModel.from_pretrained(load(base).to(torch.bfloat16), adapter).eval()
    with torch.no_grad():
        logits = peft(input_ids=torch.tensor([prompt])).logits[0, -1].float()
    expected = torch.log_softmax(logits, dim=-1)
    for token, logprob in got.items():
        assert logprob == pytest.approx(expected[token].item(), abs=0.05)
    assert max(got, key=got.__getitem__) == int(expected.argmax())
    base_row = first_token_logprobs(engine, prompt, None)
    assert base_row != got  # the adapter changes the row it is applied to, and only that row


def test_an_unknown_lora_dtype_is_refused(lively: tuple[Path, Path, Path], tiny_model: Path) -> None:
    from inspect_ai.model import get_model

    from empersona.errors import EmpersonaError

    with pytest.raises(ValueError, match="lora_dtype must be 'model' or 'float32'"):
        Engine(load(lively[0]), EngineOptions(lora_dtype="float16"))
    with pytest.raises(EmpersonaError, match="lora_dtype"):
        get_model(f"empersona/{tiny_model}", memoize=False, lora_dtype="half")
