"""A round whose rows have mostly finished goes on in a smaller batch, with the same tokens.

Answers of one round end at different lengths (here: different ``max_new_tokens`` per row, which
stop rows exactly as an EOS would). Shrinking moves the live rows' KV cache, mask, positions,
sampling settings and adapter rows into a smaller batch; the tokens, logprobs and stop reasons
must equal those of the same engine with shrinking off, on the dynamic (CPU) and the static
(GPU layout, run eagerly) cache, with the base and two adapters mixed in one batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from empersona.provider.engine import Completion, Engine, EngineOptions, Request
from test_provider_engine import lively, load, prompt_ids  # noqa: F401 (lively: a fixture)

LIMITS = (2, 3, 4, 5, 6, 9, 40, 40)  # rows end one after another: the round shrinks more than once
EARLY_FIVE = (2, 2, 2, 2, 2, 40, 40, 40)  # five rows end after two tokens


def mixed_requests(
    engine: Engine, base: Path, adapters: tuple[Path, Path], top_logprobs: int | None, limits: tuple[int, ...] = LIMITS
) -> list[Request]:
    prompts = prompt_ids(base)
    keys = [None, engine.add_adapter(adapters[0]), engine.add_adapter(adapters[1])]
    return [
        Request(prompts[i % len(prompts)], limit, temperature=0.0, adapter=keys[i % 3], top_logprobs=top_logprobs)
        for i, limit in enumerate(limits)
    ]


def run(
    base: Path, adapters: tuple[Path, Path], top_logprobs: int | None, limits: tuple[int, ...] = LIMITS, **options: object
) -> tuple[list[Completion], Engine]:
    engine = Engine(load(base), EngineOptions(min_prefix=8, **options))  # type: ignore[arg-type]
    return engine.generate(mixed_requests(engine, base, adapters, top_logprobs, limits)), engine


@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"row_prefill_tokens": 1},  # prompts prefilled one by one, their caches merged, then shrunk
        {"static_cache": True, "sync_every": 1},
        {"static_cache": True, "sync_every": 4},
        {"compile": True, "compile_backend": "eager", "sync_every": 2, "shrink_at": 0.5},  # off by default
    ],
    ids=["dynamic", "dynamic-row-prefill", "static", "static-sync-4", "compiled"],
)
def test_a_shrunk_round_gives_the_tokens_and_logprobs_of_a_full_one(
    lively: tuple[Path, Path, Path], layout: dict[str, object]
) -> None:
    base, a1, a2 = lively
    full, unshrunk = run(base, (a1, a2), 3, **{**layout, "shrink_at": 0.0})
    shrunk, engine = run(base, (a1, a2), 3, **layout)
    assert unshrunk.stats.shrunk_rounds == 0 and engine.stats.shrunk_rounds >= 1
    assert engine.stats.decode_row_steps < unshrunk.stats.decode_row_steps
    assert [c.tokens for c in shrunk] == [c.tokens for c in full]
    # every row ran to its own limit or to an EOS, not to the round's end nor short of it
    assert all(len(c.tokens) == n or c.stop_reason == "stop" for n, c in zip(LIMITS, shrunk, strict=True))
    assert [c.stop_reason for c in shrunk] == [c.stop_reason for c in full]
    for got, want in zip(shrunk, full, strict=True):
        assert got.logprobs is not None and want.logprobs is not None and len(got.logprobs) == len(want.logprobs)
        for g, w in zip(got.logprobs, want.logprobs, strict=True):
            assert g.token == w.token and [t for t, _ in g.top] == [t for t, _ in w.top]
            assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
    assert len({c.tokens for c in full}) > 1  # the rows differ: a mix-up of rows would show


def test_rows_shrink_to_the_live_count_or_its_bucket(lively: tuple[Path, Path, Path]) -> None:
    base, a1, a2 = lively
    outputs, dynamic = run(base, (a1, a2), None, EARLY_FIVE)
    assert all(len(c.tokens) == 40 for c in outputs[5:])  # no EOS in the long rows: the counts below hold
    # dynamic cache, checked every step: 8 rows for two steps, then the 3 live rows for 38
    assert dynamic.stats.shrunk_rounds == 1
    assert dynamic.stats.decode_row_steps == 2 * 8 + 38 * 3
    _, static = run(base, (a1, a2), None, EARLY_FIVE, static_cache=True, sync_every=1)
    # static cache: the 3 live rows go on in a batch of 4 (a power of two, with one finished copy)
    assert static.stats.shrunk_rounds == 1
    assert static.stats.decode_row_steps == 2 * 8 + 38 * 4
    assert set(static._static_caches) == {(8, 256), (4, 256)}
    _, checked_late = run(base, (a1, a2), None, EARLY_FIVE, static_cache=True, sync_every=4)
    assert checked_late.stats.decode_row_steps == 4 * 8 + 36 * 4  # live rows counted at step 4 only
    # two of eight rows ended: a dynamic cache goes on with six (at most 0.75 of the rows live), a
    # static one keeps its bucket of eight (six rows need eight)
    early_two = (2, 2, 40, 40, 40, 40, 40, 40)
    _, dynamic = run(base, (a1, a2), None, early_two)
    assert dynamic.stats.shrunk_rounds == 1 and dynamic.stats.decode_row_steps == 2 * 8 + 38 * 6
    _, static = run(base, (a1, a2), None, early_two, static_cache=True, sync_every=1)
    assert static.stats.shrunk_rounds == 0 and static.stats.decode_row_steps == 40 * 8


def test_seeded_sampling_in_a_shrinking_round_repeats(lively: tuple[Path, Path, Path]) -> None:
    base, _, _ = lively
    prompts = prompt_ids(base)
    requests = [Request(prompts[i % len(prompts)], n, temperature=1.0, seed=7 + i) for i, n in enumerate(LIMITS)]
    engine = Engine(load(base), EngineOptions())
    first = [c.tokens for c in engine.generate(requests)]
    shrunk = engine.stats.shrunk_rounds
    again = [c.tokens for c in engine.generate(requests)]
    assert shrunk >= 1 and engine.stats.shrunk_rounds == 2 * shrunk
    assert first == again
    assert [len(t) for t in first] == [n if n < 40 else len(t) for n, t in zip(LIMITS, first, strict=True)]


def test_a_round_with_all_rows_equally_long_never_shrinks(lively: tuple[Path, Path, Path]) -> None:
    base, _, _ = lively
    prompts = prompt_ids(base)
    engine = Engine(load(base), EngineOptions(static_cache=True))
    engine.generate([Request(p, 10, temperature=0.0) for p in prompts])
    assert engine.stats.shrunk_rounds == 0
    assert engine.stats.decode_row_steps == 10 * 8  # 5 rows padded to 8, ten choices each


def test_compiled_steps_do_not_shrink_unless_asked(lively: tuple[Path, Path, Path]) -> None:
    base, a1, a2 = lively
    _, compiled = run(base, (a1, a2), None, EARLY_FIVE, compile=True, compile_backend="eager")
    assert compiled.shrink_at == 0 and compiled.stats.shrunk_rounds == 0
    assert compiled.stats.decode_row_steps == 40 * 8


def test_the_provider_takes_shrink_at(tiny_model: Path) -> None:
    from inspect_ai.model import get_model

    from empersona.errors import EmpersonaError
    from empersona.provider.api import release_engines
    from empersona.provider.engine import SHRINK_AT_DYNAMIC

    release_engines()
    assert get_model(f"empersona/{tiny_model}", memoize=False).api.served.engine.shrink_at == SHRINK_AT_DYNAMIC
    release_engines()
    assert get_model(f"empersona/{tiny_model}", memoize=False, shrink_at=0).api.served.engine.shrink_at == 0
    with pytest.raises(EmpersonaError, match="shrink_at"):
        get_model(f"empersona/{tiny_model}", memoize=False, shrink_at=1.5)
    release_engines()
