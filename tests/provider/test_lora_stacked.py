"""Adapters' A factors stacked under the base weight (``lora_fuse_input``): one product, same answers.

The stacked layout must decode exactly as the two-product layout (greedy, base and two adapters
in one batch), keep the base weights once (the base layer's weight a view of the stacked matrix,
values unchanged, also after a second adapter restacks them) and leave a weight that is tied to
another module as it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from empersona.provider.engine import EngineOptions
from empersona.provider.lora import Adapter, AdapterSet, LoraWeights, _make_slot_linear_class
from test_provider_engine import lively, load, run_mixed  # noqa: F401 (lively: a fixture)


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_stacked_factors_decode_as_two_products_with_the_base_weights_held_once(
    lively: tuple[Path, Path, Path], static: bool
) -> None:
    base, first, second = lively
    _, apart = run_mixed(base, (first, second), EngineOptions(min_prefix=8, static_cache=static))
    engine, stacked = run_mixed(base, (first, second), EngineOptions(min_prefix=8, static_cache=static, lora_fuse_input=True))
    assert stacked == apart
    assert len({tokens for per_model in stacked for tokens in per_model}) > 3  # varied answers, not one repeat

    original = dict(load(base).named_parameters())
    assert param_bytes(engine.model) == sum(p.numel() * p.element_size() for p in original.values())
    slots = {name: m for name, m in engine.model.named_modules() if isinstance(m, _make_slot_linear_class())}
    assert slots
    for name, module in slots.items():
        assert module.w_cat is not None and module.w_cat.shape[0] == module.base.out_features + engine.adapters.rows.columns
        # the base weight is the top of the stacked matrix (the same memory) with its values unchanged
        assert module.base.weight.data_ptr() == module.w_cat.data_ptr()
        assert module.a_cat.data_ptr() == module.w_cat[module.base.out_features :].data_ptr()
        assert torch.equal(module.base.weight, original[f"{name}.weight"])


def test_a_weight_tied_to_another_module_is_left_unstacked(tiny_model: Path) -> None:
    model = load(tiny_model)
    embedding = model.get_input_embeddings().weight
    assert model.lm_head.weight is embedding  # the fixture ties its LM head to the embeddings
    hidden, vocab = embedding.shape[1], embedding.shape[0]
    generator = torch.Generator().manual_seed(0)

    def factors(fan_in: int, fan_out: int) -> LoraWeights:
        return LoraWeights(torch.randn(4, fan_in, generator=generator), torch.randn(fan_out, 4, generator=generator), 0.5)

    adapters = AdapterSet(model, fuse_input=True)
    adapters.add(
        Adapter(
            path=tiny_model / "made-up-adapter",
            base_model=str(tiny_model),
            layers={"lm_head": factors(hidden, vocab), "model.layers.0.self_attn.q_proj": factors(hidden, hidden)},
        )
    )
    head, query = model.lm_head, model.model.layers[0].self_attn.q_proj
    assert head.w_cat is None and head.base.weight is model.get_input_embeddings().weight  # still tied
    assert query.w_cat is not None and query.base.weight.data_ptr() == query.w_cat.data_ptr()
