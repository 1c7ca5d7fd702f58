"""The batcher in front of the engine: a cancelled request strands no one, and an error stays
with the batch it happened in."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from empersona.provider.batcher import Batcher
from empersona.provider.engine import Completion, Engine, EngineOptions, Request


class SlowEngine:
    """Answers each request with its prompt after ``delay`` seconds; counts its rounds."""

    def __init__(self, delay: float) -> None:
        self.delay, self.calls, self.lock = delay, [], threading.Lock()

    def generate_each(self, requests: Sequence[Request]) -> list[Completion | Exception]:
        with self.lock:  # as the real engine: one round at a time
            self.calls.append(len(requests))
            time.sleep(self.delay)
            return [Completion(tokens=r.prompt, stop_reason="stop", prompt_tokens=len(r.prompt)) for r in requests]


def request(token: int) -> Request:
    return Request(prompt=(token,), max_new_tokens=1, temperature=0.0)


def test_a_cancelled_leader_leaves_its_round_to_finish_for_the_others() -> None:
    async def main() -> tuple[list[tuple[int, ...]], list[int], bool]:
        engine = SlowEngine(0.5)
        batcher = Batcher(engine)  # type: ignore[arg-type]
        tasks = [asyncio.create_task(batcher.submit(request(i))) for i in range(3)]
        await asyncio.sleep(0.2)  # the round of all three is in the engine now
        tasks[0].cancel()  # the leader (first to find the engine idle)
        others = await asyncio.wait_for(asyncio.gather(*tasks[1:]), timeout=5)
        later = await asyncio.wait_for(batcher.submit(request(9)), timeout=5)
        assert tasks[0].cancelled()
        return [c.tokens for c in [*others, later]], engine.calls, batcher.busy

    tokens, calls, busy = asyncio.run(main())
    assert tokens == [(1,), (2,), (9,)]
    assert calls == [3, 1] and not busy  # no empty rounds, no round run twice


def test_a_request_cancelled_while_it_waits_is_not_run() -> None:
    async def main() -> list[int]:
        engine = SlowEngine(0.3)
        batcher = Batcher(engine)  # type: ignore[arg-type]
        first = asyncio.create_task(batcher.submit(request(0)))
        await asyncio.sleep(0.1)  # the engine is busy with the first round
        waiting = [asyncio.create_task(batcher.submit(request(i))) for i in (1, 2)]
        await asyncio.sleep(0.05)
        waiting[0].cancel()
        await first
        assert (await waiting[1]).tokens == (2,)
        return engine.calls

    assert asyncio.run(main()) == [1, 1]


def test_an_error_fails_only_the_requests_of_its_batch(tiny_model: Path) -> None:
    """A row whose KV cache exceeds the budget fails alone; the round's other rows (the same
    planned batch and another) get their answers, and the engine serves the next round."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    engine = Engine(model, EngineOptions(static_cache=True, kv_cache_bytes=engine_budget(model, 512)))
    short = Request(prompt=tuple(range(5, 40)), max_new_tokens=4, temperature=0.0)
    longer = Request(prompt=tuple(range(5, 150)), max_new_tokens=4, temperature=0.0)  # another planned batch
    too_big = Request(prompt=tuple(range(5, 40)), max_new_tokens=2000, temperature=0.0)

    async def main() -> tuple[list[object], list[object]]:
        batcher = Batcher(engine)
        mixed = await asyncio.gather(*(batcher.submit(r) for r in (short, longer, too_big)), return_exceptions=True)
        alone = await asyncio.gather(*(batcher.submit(r) for r in (short, longer)), return_exceptions=True)
        return mixed, alone

    mixed, alone = asyncio.run(main())
    assert isinstance(mixed[2], ValueError) and "KV cache" in str(mixed[2])
    assert [type(x) for x in mixed[:2]] == [Completion, Completion]
    assert [c.tokens for c in mixed[:2]] == [c.tokens for c in alone]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="KV cache"):
        engine.generate([short, too_big])  # the list API still raises the first error


def engine_budget(model: object, slots: int) -> int:
    """Bytes of KV cache for one row of ``slots`` token slots of ``model``."""
    config = model.config  # type: ignore[attr-defined]
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4 * slots


def test_a_leader_cancelled_before_its_thread_starts_hands_the_round_back() -> None:
    """Cancelled at any point of its round's start (while gathering, at the thread call's own
    checkpoint, or with the job queued for a worker): the others are still answered."""

    async def trial(yields: int) -> tuple[bool, list[int]]:
        engine = SlowEngine(0.01)
        batcher = Batcher(engine)  # type: ignore[arg-type]
        tasks = [asyncio.create_task(batcher.submit(request(i))) for i in range(3)]
        for _ in range(yields):
            await asyncio.sleep(0)
        tasks[0].cancel()
        answered = await asyncio.wait_for(asyncio.gather(*tasks[1:]), timeout=5)
        return [c.tokens for c in answered] == [(1,), (2,)] and not batcher.busy, engine.calls

    async def main() -> list[tuple[bool, list[int]]]:
        return [await trial(n) for n in range(12)]

    outcomes = asyncio.run(main())
    assert all(ok for ok, _calls in outcomes), outcomes
    assert all(sum(calls) <= 3 for _ok, calls in outcomes)  # nobody's request ran twice


def test_a_round_takes_the_oldest_requests_up_to_max_round_and_leaves_the_rest_for_the_next() -> None:
    """More calls pending than a batch holds: each round is one batch of the oldest, so the next
    round's requests are waiting when one ends, and every request is answered once."""

    async def main() -> tuple[list[int], list[tuple[int, ...]], list[list[int]]]:
        engine = SlowEngine(0.05)
        seen: list[list[int]] = []
        run = engine.generate_each

        def recording(requests: Sequence[Request]) -> list[Completion | Exception]:
            seen.append([r.prompt[0] for r in requests])
            return run(requests)

        engine.generate_each = recording  # type: ignore[method-assign]
        batcher = Batcher(engine, max_round=2)  # type: ignore[arg-type]
        answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit(request(i)) for i in range(5))), timeout=5)
        return engine.calls, [a.tokens for a in answers], seen

    calls, tokens, seen = asyncio.run(main())
    assert calls == [2, 2, 1]
    assert seen == [[0, 1], [2, 3], [4]]  # oldest first
    assert tokens == [(i,) for i in range(5)]


def test_the_provider_keeps_two_batches_of_calls_in_flight_and_runs_one_batch_a_round(tiny_model: Path) -> None:
    from inspect_ai.model import get_model

    model = get_model(f"empersona/{tiny_model}", memoize=False, device="cpu", max_batch_size=8)
    assert model.api.max_connections() == 16 and model.config.max_connections == 16
    assert model.api.served.batcher.max_round == 8  # type: ignore[attr-defined]
    own = get_model(f"empersona/{tiny_model}", memoize=False, device="cpu", max_batch_size=8, max_connections=5)
    assert own.api.max_connections() == 5


def test_a_cancelled_request_takes_out_its_own_place_not_an_equal_ones() -> None:
    """Two callers may send equal requests (an unseeded prompt asked twice): the one cancelled
    while it waits leaves, the other is answered."""

    async def main() -> tuple[tuple[int, ...], list[int]]:
        engine = SlowEngine(0.2)
        batcher = Batcher(engine)  # type: ignore[arg-type]
        first = asyncio.create_task(batcher.submit(request(0)))
        await asyncio.sleep(0.05)  # the engine is busy with the first round
        twins = [asyncio.create_task(batcher.submit(request(7))) for _ in range(2)]
        await asyncio.sleep(0.02)
        twins[1].cancel()
        await first
        answered = await asyncio.wait_for(twins[0], timeout=5)
        return answered.tokens, engine.calls

    tokens, calls = asyncio.run(main())
    assert tokens == (7,) and calls == [1, 1]


def test_a_round_size_below_one_is_refused(tiny_model: Path) -> None:
    from inspect_ai.model import get_model

    from empersona.errors import EmpersonaError

    with pytest.raises(ValueError, match="max_round 0"):
        Batcher(SlowEngine(0.0), max_round=0)  # type: ignore[arg-type]
    for arg in ("max_batch_size", "max_connections"):
        with pytest.raises(EmpersonaError, match=arg):
            get_model(f"empersona/{tiny_model}", memoize=False, device="cpu", **{arg: 0})


def test_a_round_left_running_by_an_ended_event_loop_strands_no_request_of_the_next() -> None:
    """An evaluation that fails cancels its samples and its event loop ends while a round still
    runs in its thread (a study then goes on to the next evaluation in the same process): the next
    loop's requests waited on the old loop's round event, which no one would set."""
    engine = SlowEngine(1.0)
    batcher = Batcher(engine)  # type: ignore[arg-type]

    async def first() -> None:
        task = asyncio.create_task(batcher.submit(request(0)))
        await asyncio.sleep(0.2)  # its round is in the engine now
        task.cancel()  # the sample is cancelled; the loop then ends with the round still running

    asyncio.run(first())
    assert batcher.busy

    async def second() -> tuple[int, ...]:
        return (await asyncio.wait_for(batcher.submit(request(7)), timeout=10)).tokens

    assert asyncio.run(second()) == (7,)
    assert engine.calls == [1, 1] and not batcher.busy
