"""The static KV caches stay within the engine's byte budget, and decoding does not change for it.

The static (GPU) layout runs eagerly on CPU (``static_cache=True``), so the budget's bookkeeping,
the dropping of least recently used caches and the splitting of batches too large for the budget
are checked here against an engine without a budget, token for token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from empersona.errors import EmpersonaError
from empersona.provider.engine import Engine, EngineOptions, Request, auto_kv_budget
from test_provider_engine import lively, load, prompt_ids, reference  # noqa: F401 (lively: a fixture)


@pytest.fixture(scope="module")
def lively_model(lively: tuple[Path, Path, Path]) -> Path:
    """The tiny model scaled so greedy outputs vary with the prompt (``lively`` of the engine tests)."""
    return lively[0]


def engine(model_dir: Path, **options: Any) -> Engine:
    # rounds do not shrink here: the caches these tests count are the planned batches' only
    return Engine(load(model_dir), EngineOptions(static_cache=True, **{"shrink_at": 0.0, **options}))


def tokens(engine: Engine, requests: list[Request]) -> list[tuple[int, ...]]:
    return [c.tokens for c in engine.generate(requests)]


def test_the_cache_size_is_what_transformers_allocates(lively_model: Path) -> None:
    free = engine(lively_model)
    prompts = prompt_ids(lively_model)
    tokens(free, [Request(p, 5, temperature=0.0) for p in prompts])
    ((rows, length), cache), = free._static_caches.items()
    allocated = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert (rows, length) == (8, 256)  # 5 rows padded to 8, prompt + 5 new tokens rounded up to 256
    assert free.cache_bytes(rows, length) == allocated == free.kept_cache_bytes()
    assert free.kv_cache_budget is None  # no limit by default on CPU


def test_least_recently_used_caches_are_dropped_to_stay_in_budget(lively_model: Path) -> None:
    prompts = prompt_ids(lively_model)
    short = [Request(p, 12, temperature=0.0) for p in prompts]  # cache length 256
    long = [Request(p, 300, temperature=0.0) for p in prompts]  # cache length 512
    free = engine(lively_model)
    expected = [tokens(free, short), tokens(free, long)]
    assert expected[0] == reference(load(lively_model), prompts, 12, free.eos_ids)
    budget = free.cache_bytes(8, 512)  # room for the long batch's cache alone, not for both
    assert free.kept_cache_bytes() > budget

    tight = engine(lively_model, kv_cache_bytes=budget)
    for round_ in range(2):
        assert tokens(tight, short) == expected[0]
        assert tight.kept_cache_bytes() <= budget
        assert tokens(tight, long) == expected[1]
        assert tight.kept_cache_bytes() <= budget
        assert list(tight._static_caches) == [(8, 512)]
    assert tight.stats.static_caches_dropped == 3  # every allocation after the first dropped the other
    assert tight.stats.split_batches == 0 and tight.stats.batches == 4

    roomy = engine(lively_model, kv_cache_bytes=budget + free.cache_bytes(8, 256))
    for _ in range(2):
        assert tokens(roomy, short) == expected[0] and tokens(roomy, long) == expected[1]
    assert roomy.stats.static_caches_dropped == 0  # both fit: kept and reused
    assert len(roomy._static_caches) == 2


def test_a_batch_too_large_for_the_budget_runs_in_parts(lively: tuple[Path, Path, Path]) -> None:
    lively_model, adapter, _ = lively
    prompts = prompt_ids(lively_model)

    def requests(engine: Engine) -> list[Request]:
        key = engine.add_adapter(adapter)
        return [Request(p, 12, temperature=0.0, adapter=a) for a in (None, key) for p in prompts]

    free = engine(lively_model)
    expected = tokens(free, requests(free))
    assert free.stats.batches == 1  # 10 rows in one bucket of 16
    budget = free.cache_bytes(3, 256)  # three rows fit: parts of two rows (a power of two)
    split = engine(lively_model, kv_cache_bytes=budget)
    assert tokens(split, requests(split)) == expected
    assert split.stats.split_batches == 1 and split.stats.batches == 5
    assert list(split._static_caches) == [(2, 256)] and split.kept_cache_bytes() <= budget


def test_a_row_larger_than_the_budget_is_refused_with_what_to_change(lively_model: Path) -> None:
    probe = engine(lively_model)
    small = engine(lively_model, kv_cache_bytes=probe.cache_bytes(1, 256) - 1)
    with pytest.raises(ValueError, match=r"one row of this batch needs .* GiB of KV cache .*kv_cache_gib"):
        small.generate([Request(prompt_ids(lively_model)[0], 5, temperature=0.0)])
    assert small.kept_cache_bytes() == 0


def test_dropping_a_cache_does_not_recompile_the_decode_step(lively_model: Path) -> None:
    """TorchDynamo's capture (the ``eager`` backend) of the step serves a reallocated cache as is."""
    from torch._dynamo.utils import counters

    prompts = prompt_ids(lively_model)
    short = [Request(p, 12, temperature=0.0) for p in prompts]
    free = engine(lively_model)
    expected = tokens(free, short)
    torch._dynamo.reset()
    counters.clear()
    compiled = Engine(
        load(lively_model),
        EngineOptions(compile=True, compile_backend="eager", kv_cache_bytes=free.cache_bytes(8, 512), shrink_at=0.0),
    )
    assert tokens(compiled, short) == expected
    tokens(compiled, [Request(p, 300, temperature=0.0) for p in prompts])  # drops the short batch's cache
    assert compiled.stats.static_caches_dropped == 1
    graphs = counters["stats"]["unique_graphs"]  # one per cache length
    assert tokens(compiled, short) == expected  # a new cache for the short batch: same step, same tokens
    assert compiled.stats.static_caches_dropped == 2
    assert counters["stats"]["unique_graphs"] == graphs  # no new graph for the new cache's tensors


def test_the_default_budget_is_a_share_of_free_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from empersona.provider import engine as engine_module

    assert auto_kv_budget(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 12 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 8 * 2**30)
    # free on the device, plus the 4 GiB this process's allocator holds without using them
    assert auto_kv_budget(torch.device("cuda")) == int(engine_module.KV_CACHE_SHARE * 44 * 2**30)


def test_the_provider_takes_the_budget_in_gib_and_the_smallest_bucket(tiny_model: Path) -> None:
    from inspect_ai.model import get_model

    from empersona.provider.api import release_engines

    release_engines()
    model = get_model(f"empersona/{tiny_model}", memoize=False, kv_cache_gib=0.5, min_batch_bucket=4)
    assert model.api.served.engine.kv_cache_budget == 2**29
    assert model.api.served.engine.min_rows == 4
    with pytest.raises(EmpersonaError, match="kv_cache_gib"):
        get_model(f"empersona/{tiny_model}", memoize=False, kv_cache_gib=0)
    with pytest.raises(EmpersonaError, match="min_batch_bucket"):
        get_model(f"empersona/{tiny_model}", memoize=False, min_batch_bucket=0)
    release_engines()


def test_small_batches_share_one_padded_size(lively_model: Path) -> None:
    """With ``min_batch_bucket`` 8, batches of 1, 3 and 5 rows run as 8 rows: one compiled graph, same tokens."""
    from torch._dynamo.utils import counters

    prompts = prompt_ids(lively_model)
    free = engine(lively_model)
    sizes = (1, 3, 5)
    expected = [tokens(free, [Request(p, 6, temperature=0.0) for p in prompts[:n]]) for n in sizes]
    assert sorted(rows for rows, _length in free._static_caches) == [1, 4, 8]  # a bucket per power of two

    def graphs(min_rows: int) -> tuple[int, list[int]]:
        torch._dynamo.reset()
        counters.clear()
        compiled = Engine(load(lively_model), EngineOptions(compile=True, compile_backend="eager", min_batch_bucket=min_rows))
        for n, want in zip(sizes, expected, strict=True):
            assert tokens(compiled, [Request(p, 6, temperature=0.0) for p in prompts[:n]]) == want
        return counters["stats"]["unique_graphs"], sorted(rows for rows, _length in compiled._static_caches)

    padded, buckets = graphs(8)
    assert buckets == [8]
    unpadded, buckets = graphs(1)
    assert buckets == [1, 4, 8] and unpadded > padded


def test_padding_to_the_smallest_bucket_stays_in_budget(lively_model: Path) -> None:
    probe = engine(lively_model)
    tight = engine(lively_model, min_batch_bucket=8, kv_cache_bytes=probe.cache_bytes(2, 256))
    assert tight._bucket_rows(1, tight._rows_in_budget([Request((1,) * 20, 5)])) == 1  # 8 would not fit; 1 does
    assert tight._bucket_rows(1) == 8  # no budget question asked: the smallest bucket
    done = tight.generate([Request(prompt_ids(lively_model)[0], 5, temperature=0.0)])
    assert done[0].tokens == tokens(probe, [Request(prompt_ids(lively_model)[0], 5, temperature=0.0)])[0]
    assert list(tight._static_caches) == [(1, 256)]


def test_on_a_gpu_small_batches_pad_to_32_rows_by_default(lively_model: Path) -> None:
    from empersona.provider.engine import GPU_MIN_ROWS, default_min_rows

    assert GPU_MIN_ROWS == 32
    assert default_min_rows(True, torch.device("cuda")) == 32  # compiled CUDA graphs: one graph for small batches
    assert default_min_rows(False, torch.device("cuda")) == 1  # eager: padding rows would only cost
    assert default_min_rows(True, torch.device("cpu")) == 1
    assert Engine(load(lively_model), EngineOptions(compile=True, compile_backend="eager")).min_rows == 1
    assert Engine(load(lively_model), EngineOptions(static_cache=True, min_batch_bucket=4)).min_rows == 4
