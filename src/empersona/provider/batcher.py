"""Collects concurrent generate calls into rounds for the engine, without a fixed wait.

A request waits only while the engine is busy. The first request to find the engine idle leads a
round: it yields to the event loop until no more requests arrive at once (or a full round is
waiting), takes what is pending (any adapter, any settings: the engine groups them), oldest first
and at most ``max_round`` requests, and runs it in a worker thread, so the event loop keeps
accepting requests, which form the next round. Built on anyio (inspect's async layer), so it runs under asyncio and trio alike.

``max_round`` (the provider sets the engine's batch size) keeps what is pending beyond one batch
for the next round: with more calls in flight than a batch holds, a round that ends finds the
next one's requests already waiting, and its own results come back to inspect (scored, logged,
the next samples started) while that round runs. A round that took everything would hold the
whole backlog until its last batch ended, and then start with the few calls that came first.

A round belongs to no one request: the worker thread hands each request its completion (or the
error of the batch it was in) and ends the round itself. So a leader that is cancelled while
the engine runs (inspect's ``attempt_timeout``, a sample's time limit, Ctrl-C on one sample)
leaves the other requests of its round to get their results, and the next round starts only
when the engine is free; a leader cancelled before the thread has taken the round puts its
requests back, first in line. A request cancelled while it waits is taken out of the queue. A
round still running when its event loop ends (an evaluation that failed cancels its samples; a
study then starts the next one in the same process) holds up the next loop's requests only until
its thread is done: they do not wait on the old loop's event, which nothing could set.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from empersona.provider.engine import Completion, Engine, Request

MAX_GATHER_YIELDS = 64
LEFT_ROUND_POLL_S = 0.05
"""How often a request checks whether a round left by an ended event loop is over."""


@dataclass(eq=False)  # one caller's place: compared by identity (two callers may send equal requests)
class _Slot:
    request: Request
    result: Completion | None = None
    error: BaseException | None = None

    @property
    def answered(self) -> bool:
        return self.result is not None or self.error is not None


@dataclass
class _Claim:
    """Who ends a round: the worker thread once it has taken the round, else the leader that
    gave it up (cancelled while the thread was still to start)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    state: str = "open"

    def take(self) -> bool:
        with self.lock:
            if self.state == "open":
                self.state = "taken"
            return self.state == "taken"

    def abandon(self) -> bool:
        with self.lock:
            if self.state == "open":
                self.state = "abandoned"
            return self.state == "abandoned"


@dataclass
class Batcher:
    """Collects concurrent requests into rounds; one engine call per round, run off the event loop."""

    engine: Engine
    max_round: int | None = None  # most requests per round (None: all that are pending)
    pending: list[_Slot] = field(default_factory=list)
    busy: bool = False
    round_done: Any = None
    round_loop: Any = None  # the event loop the running round's leader (and ``round_done``) belongs to
    rounds: int = 0

    def __post_init__(self) -> None:
        if self.max_round is not None and self.max_round < 1:
            raise ValueError(f"max_round {self.max_round}: at least 1, or None for every pending request")

    async def submit(self, request: Request) -> Completion:
        """Queue a request and return its completion once a round has run it."""
        slot = _Slot(request)
        self.pending.append(slot)
        import anyio.lowlevel

        try:
            while not slot.answered:
                if not self.busy:
                    await self._lead()
                elif self.round_loop != anyio.lowlevel.current_token():
                    # a round whose event loop has ended (an evaluation cancelled its samples while the
                    # round ran): its thread cannot set the old loop's event, only clear ``busy``
                    await anyio.sleep(LEFT_ROUND_POLL_S)
                else:
                    await self.round_done.wait()
        except BaseException:
            if slot in self.pending:  # cancelled before a round took it: no one wants it run
                self.pending.remove(slot)
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    async def _lead(self) -> None:
        import anyio
        import anyio.lowlevel

        self.busy = True
        self.round_done = done = anyio.Event()
        self.round_loop = anyio.lowlevel.current_token()
        batch: list[_Slot] = []
        claim = _Claim()
        try:
            # gather: let every coroutine that is ready now add its request (no timed wait)
            seen = -1
            for _ in range(MAX_GATHER_YIELDS):
                if len(self.pending) == seen or (self.max_round is not None and len(self.pending) >= self.max_round):
                    break
                seen = len(self.pending)
                await anyio.sleep(0)
            cut = len(self.pending) if self.max_round is None else self.max_round
            batch, self.pending = self.pending[:cut], self.pending[cut:]
            self.rounds += 1
            # once the thread has claimed the round it answers every slot and ends the round, even
            # when this await is cancelled
            await anyio.to_thread.run_sync(self._run_round, batch, done, claim, abandon_on_cancel=True)
        except BaseException:
            if claim.abandon():  # cancelled before the thread took the round: it never will
                self.pending[:0] = batch  # the requests go back to the queue, first in line
                self._end_round(done)
            raise

    def _run_round(self, batch: list[_Slot], done: Any, claim: _Claim) -> None:
        """Worker thread: run the round, answer each slot, then end the round on the event loop."""
        import anyio.from_thread

        if not claim.take():  # the leader gave the round up before this thread started
            return
        try:
            outcomes = self.engine.generate_each([slot.request for slot in batch])
            for slot, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    slot.error = outcome
                else:
                    slot.result = outcome
        except BaseException as exc:  # the engine failed outside any one batch
            for slot in batch:
                slot.error = exc
        finally:
            try:
                anyio.from_thread.run_sync(self._end_round, done)
            except RuntimeError:  # the event loop is gone: no one is waiting any more
                self.busy = False

    def _end_round(self, done: Any) -> None:
        self.busy = False
        done.set()
