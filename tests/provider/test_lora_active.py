"""Run eagerly, a batch computes only the adapter columns its rows use.

A study evaluates one model at a time, so its batches hold one adapter's rows (or base rows
only) while every adapter met so far stays loaded. The columns of adapters absent from a batch
must not be computed at all: here they are filled with NaN, which any product over them (even
masked by zeros: NaN x 0 is NaN) would spread into the answers. (With ``lora_merge``, the
default, such batches run merged instead: these tests turn it off to check the products.)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from empersona.provider.engine import Engine, EngineOptions, Request
from empersona.provider.lora import _make_slot_linear_class
from test_provider_engine import NEW_TOKENS, lively, load, prompt_ids  # noqa: F401 (lively: a fixture)


def poison(engine: Engine, key: str) -> None:
    """Fill the rank columns of adapter ``key`` with NaN in every adapted layer."""
    start, stop = engine.adapters.block(key)
    with torch.no_grad():
        for module in engine.model.modules():
            if isinstance(module, _make_slot_linear_class()):
                module.a_cat[start:stop] = math.nan
                module.b_cat[:, start:stop] = math.nan


def answers(engine: Engine, prompts: list[tuple[int, ...]], adapter: str | None) -> list[tuple[tuple[int, ...], float]]:
    done = engine.generate([Request(p, NEW_TOKENS, temperature=0.0, adapter=adapter, top_logprobs=1) for p in prompts])
    assert all(c.logprobs is not None for c in done)
    return [(c.tokens, c.logprobs[0].logprob) for c in done if c.logprobs is not None]


def test_a_batch_computes_only_the_adapters_it_holds(lively: tuple[Path, Path, Path]) -> None:
    base, first, second = lively
    prompts = prompt_ids(base)

    alone = Engine(load(base), EngineOptions(min_prefix=8, lora_merge=False))
    expected_first = answers(alone, prompts, alone.add_adapter(first))
    expected_base = answers(Engine(load(base), EngineOptions(min_prefix=8, lora_merge=False)), prompts, None)

    engine = Engine(load(base), EngineOptions(min_prefix=8, lora_merge=False))
    key_first, key_second = engine.add_adapter(first), engine.add_adapter(second)
    poison(engine, key_second)
    got_first = answers(engine, prompts, key_first)
    assert engine.adapters.rows.active == engine.adapters.block(key_first)
    assert got_first == expected_first
    poison(engine, key_first)
    got_base = answers(engine, prompts, None)
    assert engine.adapters.rows.active is None
    assert got_base == expected_base
    assert all(math.isfinite(lp) for _, lp in got_first + got_base)


def test_compiled_steps_compute_every_column_with_one_graph_for_all_adapters(lively: tuple[Path, Path, Path]) -> None:
    """Compiled (dynamo's capture, as on a GPU) the span is not narrowed: batches of one adapter,
    of another and of the base model share the decode graph instead of one graph each."""
    from torch._dynamo.utils import counters

    base, first, second = lively
    prompts = prompt_ids(base)
    torch._dynamo.reset()
    counters.clear()
    engine = Engine(load(base), EngineOptions(min_prefix=8, compile=True, compile_backend="eager", lora_merge=False))
    keys = [engine.add_adapter(first), engine.add_adapter(second), None]
    engine.generate([Request(p, 3, temperature=0.0, adapter=keys[0]) for p in prompts])
    graphs = counters["stats"]["unique_graphs"]
    for key in keys[1:]:
        engine.generate([Request(p, 3, temperature=0.0, adapter=key) for p in prompts])
    assert counters["stats"]["unique_graphs"] == graphs
