"""Collects concurrent generate calls into rounds for the engine, without a fixed wait.

A request waits only while the engine is busy. The first request to find the engine idle leads a
round: it yields to the event loop until no more requests arrive at once, takes everything that
is pending (any adapter, any settings: the engine groups them) and runs it in a worker thread,
so the event loop keeps accepting requests, which form the next round. Built on anyio (inspect's
async layer), so it runs under asyncio and trio alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from empersona.provider.engine import Completion, Engine, Request

MAX_GATHER_YIELDS = 64


@dataclass
class _Slot:
    request: Request
    result: Completion | None = None
    error: BaseException | None = None


@dataclass
class Batcher:
    """Collects concurrent requests into rounds; one engine call per round, run off the event loop."""

    engine: Engine
    pending: list[_Slot] = field(default_factory=list)
    busy: bool = False
    round_done: Any = None
    rounds: int = 0

    async def submit(self, request: Request) -> Completion:
        """Queue a request and return its completion once a round has run it."""
        slot = _Slot(request)
        self.pending.append(slot)
        while slot.result is None and slot.error is None:
            if not self.busy:
                await self._lead()
            else:
                await self.round_done.wait()
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    async def _lead(self) -> None:
        import anyio

        self.busy = True
        self.round_done = anyio.Event()
        try:
            # gather: let every coroutine that is ready now add its request (no timed wait)
            seen = -1
            for _ in range(MAX_GATHER_YIELDS):
                if len(self.pending) == seen:
                    break
                seen = len(self.pending)
                await anyio.sleep(0)
            batch, self.pending = self.pending, []
            self.rounds += 1
            try:
                results = await anyio.to_thread.run_sync(self.engine.generate, [s.request for s in batch])
            except Exception as exc:  # every request of the round sees the engine's error
                for slot in batch:
                    slot.error = exc
            else:
                for slot, result in zip(batch, results, strict=True):
                    slot.result = result
        finally:
            self.busy = False
            self.round_done.set()
