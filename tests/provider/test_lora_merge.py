"""``lora_merge``: a batch of one adapter's rows runs with that adapter merged into the base weights.

A study evaluates one model at a time, so a fine-tune's batches hold its rows only. Merged, they
must answer as the per-row adapter products do (float32 on CPU: the same tokens, logprobs equal
up to rounding), a base or mixed batch afterwards must see the base weights restored bit for bit
(the same answers as an engine that never merged), switching adapters must not stack one update
on another, and a weight shared with another module (a tied LM head) or not a plain float matrix
is never merged. A newly met adapter is merged only for a batch large enough to repay it or from
its second batch in a row (the last test); the others merge at once (``merge_at_once``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from empersona.provider import engine as engine_module
from empersona.provider.engine import Engine, EngineOptions, Request
from empersona.provider.lora import Adapter, LoraWeights, _make_slot_linear_class
from test_provider_engine import NEW_TOKENS, lively, load, prompt_ids, run_mixed  # noqa: F401 (lively: a fixture)

Answer = tuple[tuple[int, ...], list[float]]


@pytest.fixture(autouse=True)
def merge_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Merge an adapter for its first batch, however small (the tests' batches are a few rows)."""
    monkeypatch.setattr(engine_module, "MERGE_MIN_TOKENS", 0)


def answers(engine: Engine, prompts: list[tuple[int, ...]], adapter: str | None) -> list[Answer]:
    done = engine.generate([Request(p, NEW_TOKENS, temperature=0.0, adapter=adapter, top_logprobs=1) for p in prompts])
    return [(c.tokens, [lp.logprob for lp in c.logprobs or []]) for c in done]


def assert_close(got: list[Answer], want: list[Answer]) -> None:
    assert [tokens for tokens, _ in got] == [tokens for tokens, _ in want]
    for (_, got_lps), (_, want_lps) in zip(got, want, strict=True):
        assert got_lps == pytest.approx(want_lps, abs=1e-4)


def adapted_weights(engine: Engine) -> dict[str, torch.Tensor]:
    """A copy of the base weight of every adapted layer, by layer name (found wrapped or not)."""
    assert engine.adapters.slots and all(isinstance(m, _make_slot_linear_class()) for m in engine.adapters.slots.values())
    return {name: m.base.weight.detach().clone() for name, m in engine.adapters.slots.items()}


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_merged_batches_answer_as_the_products_and_the_base_weights_come_back(
    lively: tuple[Path, Path, Path], static: bool
) -> None:
    base, first, second = lively
    prompts = prompt_ids(base)
    options = EngineOptions(min_prefix=8, static_cache=static, lora_merge=False)
    plain = Engine(load(base), options)
    plain_keys = [plain.add_adapter(first), plain.add_adapter(second)]
    want = {key: answers(plain, prompts, key) for key in plain_keys}
    want_base = answers(Engine(load(base), options), prompts, None)
    _, want_mixed = run_mixed(base, (first, second), options)

    engine = Engine(load(base), EngineOptions(min_prefix=8, static_cache=static, lora_merge=True))
    keys = [engine.add_adapter(first), engine.add_adapter(second)]
    original = adapted_weights(engine)
    for key, plain_key in zip(keys, plain_keys, strict=True):
        got = answers(engine, prompts, key)
        assert engine.adapters.rows.merged and engine.adapters.merged_key == key
        assert_close(got, want[plain_key])
    assert engine.stats.adapter_merges == 2 and engine.stats.merged_batches == engine.stats.batches
    merged = adapted_weights(engine)
    # the second adapter's update alone: the first was taken out before it went in
    name = "model.layers.0.self_attn.q_proj"
    layer = engine.adapters.adapters[keys[1]].layers[name]
    assert torch.allclose(merged[name], original[name] + layer.scaling * layer.b @ layer.a, atol=1e-6)
    assert not torch.equal(merged[name], original[name])

    # the base model: restored bit for bit, and no adapter product
    assert answers(engine, prompts, None) == want_base
    assert engine.adapters.merged_key is None and engine.adapters.rows.merged
    assert all(torch.equal(weight, original[n]) for n, weight in adapted_weights(engine).items())

    # a mixed batch after a merged one: restored weights and the per-row products
    answers(engine, prompts, keys[0])
    requests = [Request(p, NEW_TOKENS, temperature=0.0, adapter=k) for k in (None, *keys) for p in prompts]
    tokens = [c.tokens for c in engine.generate(requests)]
    assert not engine.adapters.rows.merged and engine.adapters.merged_key is None
    assert engine.stats.adapter_merges == 3 and engine.stats.mixed_batches >= 1
    n = len(prompts)
    assert [tokens[i * n : (i + 1) * n] for i in range(3)] == want_mixed


def test_adding_an_adapter_while_one_is_merged_stacks_the_base_weights(lively: tuple[Path, Path, Path]) -> None:
    """With the A factors stacked under the base weights (``lora_fuse_input``) a new adapter
    restacks them: it must stack the base model's weights, not the merged ones."""
    base, first, second = lively
    options = EngineOptions(min_prefix=8, lora_fuse_input=True, lora_merge=False)
    _, want_mixed = run_mixed(base, (first, second), options)
    engine = Engine(load(base), EngineOptions(min_prefix=8, lora_fuse_input=True, lora_merge=True))
    key = engine.add_adapter(first)
    answers(engine, prompt_ids(base), key)
    assert engine.adapters.merged_key == key
    keys = [None, key, engine.add_adapter(second)]
    assert engine.adapters.merged_key is None
    prompts = prompt_ids(base)
    tokens = [c.tokens for c in engine.generate([Request(p, NEW_TOKENS, temperature=0.0, adapter=k) for k in keys for p in prompts])]
    n = len(prompts)
    assert [tokens[i * n : (i + 1) * n] for i in range(3)] == want_mixed


def test_an_adapter_of_a_tied_weight_runs_unmerged(tiny_model: Path) -> None:
    model = load(tiny_model)
    embedding = model.get_input_embeddings().weight
    assert model.lm_head.weight is embedding  # the fixture ties its LM head to the embeddings
    before = embedding.detach().clone()
    hidden, vocab = embedding.shape[1], embedding.shape[0]
    generator = torch.Generator().manual_seed(0)

    def factors(fan_in: int, fan_out: int) -> LoraWeights:
        return LoraWeights(torch.randn(4, fan_in, generator=generator), torch.randn(fan_out, 4, generator=generator), 0.5)

    def made_up(name: str, layers: dict[str, LoraWeights]) -> Adapter:
        return Adapter(path=tiny_model / name, base_model=str(tiny_model), layers=layers)

    engine = Engine(model, EngineOptions(lora_merge=True))
    head = engine.adapters.add(made_up("head", {"lm_head": factors(hidden, vocab)}))
    query = engine.adapters.add(made_up("query", {"model.layers.0.self_attn.q_proj": factors(hidden, hidden)}))
    assert not engine.adapters.can_merge(head) and engine.adapters.can_merge(query)
    prompts = prompt_ids(tiny_model)[:2]
    answers(engine, prompts, head)
    assert not engine.adapters.rows.merged and engine.adapters.merged_key is None
    assert torch.equal(embedding, before)  # the embeddings were not touched
    answers(engine, prompts, query)
    assert engine.adapters.rows.merged and engine.adapters.merged_key == query
    # a layer whose weight is not a plain float matrix (as a quantised layer's packed integers)
    engine.adapters.merge(None)
    layer = engine.adapters.slots["model.layers.0.self_attn.q_proj"].base
    weight = layer.weight
    layer.weight = torch.nn.Parameter(weight.detach().to(torch.int8), requires_grad=False)
    assert not engine.adapters.can_merge(query)
    # or not laid out row after row (merging and restoring read it as one flat run of values)
    layer.weight = torch.nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=False)
    assert layer.weight.shape == weight.shape and not engine.adapters.can_merge(query)
    layer.weight = weight
    assert engine.adapters.can_merge(query)


def test_compiled_steps_switch_between_merged_and_mixed_batches(lively: tuple[Path, Path, Path]) -> None:
    """Compiled (dynamo's capture, as on a GPU), the merged flag selects the graph: a merged
    batch, a mixed one and a merged one again each decode as the uncompiled engine does."""
    base, first, second = lively
    prompts = prompt_ids(base)
    options = EngineOptions(min_prefix=8, static_cache=True, lora_merge=False)
    plain = Engine(load(base), options)
    plain_keys = [plain.add_adapter(first), plain.add_adapter(second)]
    want = [answers(plain, prompts, plain_keys[0]), answers(plain, prompts, None), answers(plain, prompts, plain_keys[1])]

    torch._dynamo.reset()
    engine = Engine(load(base), EngineOptions(min_prefix=8, compile=True, compile_backend="eager", lora_merge=True))
    keys = [engine.add_adapter(first), engine.add_adapter(second)]
    mixed = [Request(p, NEW_TOKENS, temperature=0.0, adapter=k, top_logprobs=1) for k in (keys[0], None) for p in prompts]
    got_first = answers(engine, prompts, keys[0])
    done = engine.generate(mixed)
    got_mixed = [(c.tokens, [lp.logprob for lp in c.logprobs or []]) for c in done]
    got_second = answers(engine, prompts, keys[1])
    assert_close(got_first, want[0])
    assert_close(got_mixed, want[0] + want[1])
    assert_close(got_second, want[2])


def test_the_provider_takes_lora_merge_as_a_model_arg(tiny_model: Path) -> None:
    from inspect_ai.model import get_model

    from empersona.errors import EmpersonaError

    model = get_model(f"empersona/{tiny_model}", memoize=False, lora_merge=False)
    assert model.api.served.engine.options.lora_merge is False  # type: ignore[attr-defined]
    assert get_model(f"empersona/{tiny_model}", memoize=False).api.served.engine.options.lora_merge is True  # type: ignore[attr-defined]
    with pytest.raises(EmpersonaError, match="lora_merge"):
        get_model(f"empersona/{tiny_model}", memoize=False, lora_merge="sometimes")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_taking_an_update_out_restores_the_weights_bit_for_bit(tiny_model: Path, dtype: torch.dtype) -> None:
    """Merging, switching and restoring ten times leaves every base weight as it was, while the
    positions kept to restore it exactly are a small share of the weights (no copy of them)."""
    model = load(tiny_model).to(dtype)
    engine = Engine(model, EngineOptions(lora_merge=True))
    names = [f"model.layers.{i}.{part}" for i in range(2) for part in ("self_attn.q_proj", "mlp.down_proj")]
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(0)

    def made_up(tag: str, size: float) -> Adapter:
        layers = {}
        for name in names:
            linear = modules[name]
            a = torch.randn(8, linear.in_features, generator=generator) / linear.in_features**0.5
            b = torch.randn(linear.out_features, 8, generator=generator) * size * linear.weight.float().std()
            layers[name] = LoraWeights(a, b, 2.0)
        return Adapter(path=tiny_model / tag, base_model=str(tiny_model), layers=layers)

    keys = [engine.adapters.add(made_up("small", 0.01)), engine.adapters.add(made_up("large", 0.3))]
    original = adapted_weights(engine)
    elements = sum(w.numel() for w in original.values())
    for _ in range(5):
        for key in keys:
            engine.adapters.merge(key)
            kept = sum(where.numel() for where, _ in engine.adapters.fixups.values())
            assert 0 < kept < 0.25 * elements
            assert any(not torch.equal(w, original[n]) for n, w in adapted_weights(engine).items())
        engine.adapters.merge(None)
        assert not engine.adapters.fixups
        assert all(torch.equal(w, original[n]) for n, w in adapted_weights(engine).items())


def test_a_small_batch_of_a_new_adapter_merges_only_when_its_model_goes_on(
    lively: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the size at which one batch repays a merge, a newly met adapter runs as products,
    and is merged from the next batch of its rows alone on; batches alternating between models
    never merge, and a mixed batch prefilled row by row merges nothing."""
    monkeypatch.setattr(engine_module, "MERGE_MIN_TOKENS", 10**6)
    base, first, second = lively
    prompts = prompt_ids(base)
    engine = Engine(load(base), EngineOptions(min_prefix=8))
    keys = [engine.add_adapter(first), engine.add_adapter(second)]
    for key in [keys[0], None, keys[1], None, keys[0], keys[1]]:
        answers(engine, prompts[:2], key)
        assert engine.adapters.merged_key is None and engine.adapters.rows.merged == (key is None)
    assert engine.stats.adapter_merges == 0
    answers(engine, prompts[:2], keys[1])  # the second batch of the same model's rows in a row
    assert engine.adapters.merged_key == keys[1] and engine.stats.adapter_merges == 1
    answers(engine, prompts[:2], keys[1])
    assert engine.stats.adapter_merges == 1 and engine.stats.merged_batches == 2

    row_by_row = Engine(load(base), EngineOptions(min_prefix=8, row_prefill_tokens=1))
    row_keys = [row_by_row.add_adapter(first), row_by_row.add_adapter(second)]
    mixed = [Request(p, 4, temperature=0.0, adapter=k) for k in row_keys for p in prompts[:2]]
    row_by_row.generate(mixed)
    row_by_row.generate(mixed)
    assert row_by_row.stats.adapter_merges == 0 and row_by_row.adapters.merged_key is None

    monkeypatch.setattr(engine_module, "MERGE_MIN_TOKENS", 1)  # the tiny model is 64 wide: any batch
    answers(engine, prompts[:2], keys[0])
    assert engine.adapters.merged_key == keys[0]


def test_merged_batches_reuse_the_base_models_compiled_graphs(lively: tuple[Path, Path, Path]) -> None:
    """A study evaluates the base model first, then each fine-tune. Merged, a fine-tune's batches
    run the base model's own layers, so the decode graphs compiled for the base model serve them
    (on an H100 each is a compile of about 50 s for a 1.5B model); only a mixed batch, which needs
    the adapter products, compiles its own."""
    from torch._dynamo.utils import counters

    base, first, _ = lively
    prompts = prompt_ids(base)
    plain = Engine(load(base), EngineOptions(min_prefix=8, static_cache=True, lora_merge=False))
    want_first = answers(plain, prompts, plain.add_adapter(first))

    torch._dynamo.reset()
    counters.clear()
    engine = Engine(load(base), EngineOptions(min_prefix=8, compile=True, compile_backend="eager"))
    want_base = answers(engine, prompts, None)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    key = engine.add_adapter(first)
    assert_close(answers(engine, prompts, key), want_first)
    assert engine.adapters.merged_key == key and not engine.adapters.wrapped
    assert counters["stats"]["unique_graphs"] == graphs  # the base model's graphs, no new one
    engine.generate([Request(p, 3, temperature=0.0, adapter=k) for k in (None, key) for p in prompts])
    assert engine.adapters.wrapped and counters["stats"]["unique_graphs"] > graphs  # products: their own graph
    assert answers(engine, prompts, None) == want_base  # the base weights back, the base graph again


@pytest.mark.parametrize("merge", [False, True], ids=["products", "merged"])
def test_beyond_max_adapters_the_least_recently_used_is_unloaded_and_comes_back(
    lively: tuple[Path, Path, Path], merge: bool
) -> None:
    """A study with checkpoints asks tens of adapters in turn: with ``max_adapters=1`` each one
    asked unloads the one before, and answers as an engine that keeps them all; a mixed batch
    loads what it needs beyond the limit, and a layer no loaded adapter adapts any more runs as
    the base model's."""
    base, first, second = lively
    prompts = prompt_ids(base)
    keep_all = Engine(load(base), EngineOptions(min_prefix=8, lora_merge=merge))
    want = {path: answers(keep_all, prompts, keep_all.add_adapter(path)) for path in (first, second)}
    want_base = answers(Engine(load(base), EngineOptions(min_prefix=8)), prompts, None)
    _, want_mixed = run_mixed(base, (first, second), EngineOptions(min_prefix=8, lora_merge=merge))

    engine = Engine(load(base), EngineOptions(min_prefix=8, lora_merge=merge, max_adapters=1))
    keys = {path: engine.add_adapter(path) for path in (first, second)}
    assert list(engine.adapters.adapters) == [keys[second]]  # adding the second unloaded the first
    for path in (first, second, first):
        assert_close(answers(engine, prompts, keys[path]), want[path])
        assert list(engine.adapters.adapters) == [keys[path]]
        assert engine.adapters.rows.columns == engine.adapters.adapters[keys[path]].rank
    assert engine.stats.adapter_reloads == 3  # first (again), second, first
    assert answers(engine, prompts, None) == want_base  # the base weights and layers are the base model's
    requests = [Request(p, NEW_TOKENS, temperature=0.0, adapter=k) for k in (None, keys[first], keys[second]) for p in prompts]
    tokens = [c.tokens for c in engine.generate(requests)]
    assert set(engine.adapters.adapters) == {keys[first], keys[second]}  # both needed: over the limit for this batch
    n = len(prompts)
    assert [tokens[i * n : (i + 1) * n] for i in range(3)] == want_mixed
    engine.adapters.remove(keys[first])
    assert engine.adapters.rows.columns == engine.adapters.adapters[keys[second]].rank
    assert_close(answers(engine, prompts, keys[second]), want[second])
    engine.adapters.remove(keys[second])
    slot_linear = _make_slot_linear_class()
    assert engine.adapters.rows.columns == 0 and not engine.adapters.slots
    assert not any(isinstance(m, slot_linear) for m in engine.model.modules())  # the model's own layers again
    assert answers(engine, prompts, None) == want_base
    assert_close(answers(engine, prompts, keys[first]), want[first])  # and it loads again when asked


@pytest.mark.parametrize("fails", ["merge", "restore"])
def test_a_merge_or_restore_cut_short_leaves_no_layer_changed(
    lively: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """An error part-way through merging (out of memory for one layer's float32 update) failed
    only its batch but left the layers done so far merged, unrecorded: every later batch, the
    base's and other adapters', ran on those weights without an error. Now the next batch takes
    them out first, and a restore cut short goes on where it stopped."""
    from empersona.provider import lora

    base, first, _ = lively
    prompts = prompt_ids(base)
    engine = Engine(load(base), EngineOptions(min_prefix=8, lora_merge=True))
    key = engine.add_adapter(first)
    original = adapted_weights(engine)
    want_adapter, want_base = answers(engine, prompts, key), answers(engine, prompts, None)
    if fails == "restore":
        answers(engine, prompts, key)  # merged again: the failing batch below is the base's, which takes it out
    real, calls = lora._update, [0]

    def out_of_memory_at_the_fifth(weights: object, device: object) -> object:
        calls[0] += 1
        if calls[0] == 5:
            raise torch.cuda.OutOfMemoryError("out of memory (injected)")
        return real(weights, device)  # type: ignore[arg-type]

    monkeypatch.setattr(lora, "_update", out_of_memory_at_the_fifth)
    adapter = key if fails == "merge" else None
    failed = engine.generate_each([Request(p, NEW_TOKENS, temperature=0.0, adapter=adapter) for p in prompts])
    assert {type(result).__name__ for result in failed} == {"OutOfMemoryError"}
    monkeypatch.setattr(lora, "_update", real)
    assert answers(engine, prompts, None) == want_base
    assert all(torch.equal(weight, original[n]) for n, weight in adapted_weights(engine).items())
    assert_close(answers(engine, prompts, key), want_adapter)
