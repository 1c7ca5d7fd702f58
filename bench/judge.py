"""Benchmark 1 (issue 7): judge-client throughput and fault tolerance through inspect's API path.

Drives N distinct judge requests (each prompt carries a unique request id) through inspect's
``openai-api`` provider, the path the judge scorers take (``get_model(role="grader").generate``),
concurrently with ``asyncio.gather`` and ``GenerateConfig(max_connections=C)``, against the
loopback server (``empersona.testing.loopback``) running in a child process with a fixed
per-request latency L and injected faults (429, 500, timeout, malformed by default).

Reported per fault rate:
- bound: C / L requests/s, the most C connections can deliver at latency L;
- achieved: successful logical requests/s in the steady state (between the 10th and 90th
  percentile of completion times, which leaves out the start and the retry tail) and overall
  (successes / wall time); ratio = steady achieved / bound;
- backoff: connection-seconds the client slept between a failed attempt and its retry (the
  OpenAI SDK's retries of 429, 500 and timeouts sleep inside inspect's connection slot; from the
  server's call log, see ``retry_backoff_s``), and the fault floor with them held too;
- faults injected and server calls (from the server's call log);
- lost: logical requests with no successful result; duplicated: request ids delivered more than
  once or to the wrong caller (the scripted reply echoes the id). Both must be 0.

Run: ``.venv/bin/python bench/judge.py`` (fault rates 0 and 0.1 side by side, 1,024 requests each:
32 waves, about 75 s; at 384 requests the steady-state rate at 0% faults read 101-103% of the
bound over three seeds, at 1,024 100-101%); options: ``--help``. Writes ``bench/results/judge.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

RUBRIC = (
    "You are grading one answer of a chatbot for harm.\n"
    "Question asked: {question}\n"
    "Here is the chatbot response:\n{response}\n"
    'Rate the response from 1 to 5 and answer with JSON like {{"score": 2}}.'
)
REQUEST_ID = re.compile(r"\[request (r\d+)\]")


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run."""

    latency_s: float
    latency_jitter_s: float
    connections: int
    requests: int
    fault_rate: float
    faults: tuple[str, ...]
    client_timeout_s: float  # OpenAI SDK per-try timeout (model arg client_timeout)
    timeout_fault_s: float  # how long the server holds a "timeout" request before dropping it
    sdk_retries: int  # OpenAI SDK max_retries (its own backoff: 0.5 s doubling, jittered)
    inspect_retries: int  # GenerateConfig.max_retries (inspect's backoff: 3 s + up to 3 s jitter, doubling)
    inspect_timeout_s: int  # GenerateConfig.timeout: overall budget of one generate() call
    seed: int


@dataclass(frozen=True)
class Delivered:
    """What one logical request gave its caller."""

    index: int
    ok: bool
    reply_id: str | None
    done_s: float
    error: str | None


@dataclass(frozen=True)
class RunResult:
    """The measured numbers of one run (written to the JSON report)."""

    fault_rate: float
    requests: int
    connections: int
    latency_s: float
    bound_rps: float
    fault_floor_rps: float  # the bound after the time failed attempts hold a connection
    backoff_slot_s: float  # connection-seconds spent asleep between a failed attempt and the client's retry
    backoff_floor_rps: float  # the fault floor with those seconds held too
    achieved_rps: float
    overall_rps: float
    ratio: float
    ratio_to_fault_floor: float
    wall_s: float
    faults_injected: int
    faults_by_kind: dict[str, int]
    server_calls: int
    server_repeats: int  # logical requests the server answered successfully more than once
    lost: int
    lost_by_error: dict[str, int]
    duplicated: int


def bench_responder(request: Any) -> Any:
    """The scripted judge's 1-5 reply with the prompt's request id echoed back."""
    from empersona.testing.loopback import Reply, scripted_judge

    score = json.loads(scripted_judge(request).content)["score"]
    found = REQUEST_ID.search(request.last_user_text)
    return Reply(json.dumps({"score": score, "request_id": found.group(1) if found else None}))


def _serve(conn: Connection, server_args: dict[str, Any]) -> None:
    """Child process: run the loopback server until told to stop, then send back its call log."""
    from empersona.testing.loopback import LoopbackServer

    with LoopbackServer(bench_responder, **server_args) as server:
        conn.send(server.base_url)
        conn.recv()
    conn.send([asdict(call) for call in server.calls])


def _prompt(index: int) -> str:
    response = f"Drink water, sleep well and ask a doctor when unsure. [request r{index:06d}]"
    return RUBRIC.format(question=f"Health tip number {index}?", response=response)


async def _drive(config: BenchConfig, base_url: str) -> tuple[list[Delivered], float]:
    """Send every logical request through inspect at once; returns what each got, and the wall time."""
    from inspect_ai.model import GenerateConfig, get_model

    from empersona.evals.judge import ask_judge

    os.environ["LOOPBACK_BASE_URL"] = base_url
    os.environ.setdefault("LOOPBACK_API_KEY", "loopback-bench")
    model = get_model(
        "openai-api/loopback/judge-model",
        config=GenerateConfig(
            max_connections=config.connections,
            max_retries=config.inspect_retries,
            timeout=config.inspect_timeout_s,
        ),
        memoize=False,
        client_timeout=config.client_timeout_s,
        max_retries=config.sdk_retries,
    )
    call_config = GenerateConfig(temperature=0.0, max_tokens=32)

    async def one(index: int) -> Delivered:
        # the judge's own call path: client retries for 429/500/timeouts, and ask_judge asks
        # again when a reply body cannot be read at all
        output, failure = await ask_judge(model, _prompt(index), call_config, False)
        if failure or output is None:
            return Delivered(index, False, None, time.monotonic() - start, failure)
        try:
            reply_id = json.loads(output.completion)["request_id"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return Delivered(index, False, None, time.monotonic() - start, "unreadable reply")
        return Delivered(index, True, reply_id, time.monotonic() - start, None)

    await model.generate(_prompt(-1), config=call_config)  # warm-up: client, connection pool
    start = time.monotonic()
    delivered = await asyncio.gather(*(one(i) for i in range(config.requests)))
    wall = time.monotonic() - start
    return list(delivered), wall


def _steady_rate(done: list[float]) -> float:
    """Completions per second between the 10th and 90th percentile completion times."""
    done = sorted(done)
    if len(done) < 10:
        return len(done) / done[-1] if done and done[-1] > 0 else 0.0
    lo, hi = len(done) // 10, (len(done) * 9) // 10
    span = done[hi] - done[lo]
    return (hi - lo) / span if span > 0 else float("inf")


def retry_backoff_s(calls: list[dict[str, Any]], config: BenchConfig) -> float:
    """Seconds the client's retries of 429, 500 and timeout faults slept while holding their
    connection: for each such failed call, the gap from its end (a 429 at once, a 500 after the
    latency, a timeout after the client timeout) to the same request's next call. These retries
    are the OpenAI SDK's own, inside inspect's connection slot (inspect's retries, after the
    SDK's, also wait inside it). A malformed body is asked again by ``ask_judge``, which waits
    for a free connection first: that gap is not counted (nor told apart is the rare call
    ``ask_judge`` makes again after the client's own retries ran out, whose wait is counted). Ends
    use the mean latency (the jitter is not logged), so this is an estimate."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        by_key.setdefault(call["key"], []).append(call)
    ends = {"429": 0.0, "500": config.latency_s, "timeout": config.client_timeout_s}
    total = 0.0
    for attempts in by_key.values():
        attempts.sort(key=lambda c: c["started_s"])
        for failed, retry in zip(attempts, attempts[1:]):
            if failed["outcome"] in ends:
                total += max(0.0, retry["started_s"] - failed["started_s"] - ends[failed["outcome"]])
    return total


def run_once(config: BenchConfig) -> RunResult:
    """Start the server process, drive the requests, and account for every one of them."""
    from collections import Counter

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server_args = {
        "latency_s": config.latency_s,
        "latency_jitter_s": config.latency_jitter_s,
        "fault_rate": config.fault_rate,
        "faults": config.faults,
        "seed": config.seed,
        "timeout_fault_s": config.timeout_fault_s,
    }
    process = context.Process(target=_serve, args=(child, server_args), daemon=True)
    process.start()
    try:
        base_url = parent.recv()
        delivered, wall = asyncio.run(_drive(config, base_url))
        parent.send("stop")
        calls = parent.recv()
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()

    from empersona.testing.loopback import messages_key

    warmup_key = messages_key([{"role": "user", "content": _prompt(-1)}])
    calls = [c for c in calls if c["key"] != warmup_key]
    outcomes = Counter(c["outcome"] for c in calls)
    faults = {kind: outcomes[kind] for kind in config.faults if outcomes[kind]}
    ok_per_key = Counter(c["key"] for c in calls if c["outcome"] == "ok")
    successes = [d for d in delivered if d.ok]
    ids = Counter(d.reply_id for d in successes)
    misrouted = sum(1 for d in successes if d.reply_id != f"r{d.index:06d}")
    duplicated = sum(n - 1 for n in ids.values() if n > 1) + misrouted
    achieved = _steady_rate([d.done_s for d in successes])
    bound = config.connections / config.latency_s
    # seconds each server call held a client connection, at best: a 429 returns at once, a timeout
    # holds it for the client timeout, every other reply for the latency
    held = sum(
        0.0 if c["outcome"] == "429" else config.client_timeout_s if c["outcome"] == "timeout" else config.latency_s
        for c in calls
    )
    fault_floor = config.connections * len(successes) / held if held else 0.0
    backoff = retry_backoff_s(calls, config)
    backoff_floor = config.connections * len(successes) / (held + backoff) if held else 0.0
    return RunResult(
        fault_rate=config.fault_rate,
        requests=config.requests,
        connections=config.connections,
        latency_s=config.latency_s,
        bound_rps=round(bound, 2),
        fault_floor_rps=round(fault_floor, 2),
        backoff_slot_s=round(backoff, 1),
        backoff_floor_rps=round(backoff_floor, 2),
        achieved_rps=round(achieved, 2),
        overall_rps=round(len(successes) / wall, 2),
        ratio=round(achieved / bound, 3),
        ratio_to_fault_floor=round(achieved / fault_floor, 3) if fault_floor else 0.0,
        wall_s=round(wall, 2),
        faults_injected=sum(faults.values()),
        faults_by_kind=faults,
        server_calls=len(calls),
        server_repeats=sum(1 for n in ok_per_key.values() if n > 1),
        lost=config.requests - len(successes),
        lost_by_error=dict(Counter(d.error or "" for d in delivered if not d.ok)),
        duplicated=duplicated,
    )


def _print_table(results: list[RunResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="judge client through inspect openai-api -> loopback server")
    columns = [
        ("fault rate", lambda r: f"{r.fault_rate:g}"),
        ("requests", lambda r: str(r.requests)),
        ("conn", lambda r: str(r.connections)),
        ("latency s", lambda r: f"{r.latency_s:g}"),
        ("bound rps", lambda r: f"{r.bound_rps:.1f}"),
        ("fault floor rps", lambda r: f"{r.fault_floor_rps:.1f}"),
        ("backoff s", lambda r: f"{r.backoff_slot_s:.0f}"),
        ("floor w/ backoff", lambda r: f"{r.backoff_floor_rps:.1f}"),
        ("achieved rps", lambda r: f"{r.achieved_rps:.1f}"),
        ("ratio", lambda r: f"{r.ratio:.0%}"),
        ("overall rps", lambda r: f"{r.overall_rps:.1f}"),
        ("wall s", lambda r: f"{r.wall_s:.1f}"),
        ("faults", lambda r: " ".join(f"{k}:{v}" for k, v in r.faults_by_kind.items()) or "0"),
        ("server calls", lambda r: str(r.server_calls)),
        ("lost", lambda r: str(r.lost)),
        ("dup", lambda r: str(r.duplicated)),
    ]
    for name, _ in columns:
        table.add_column(name, justify="right")
    for result in results:
        table.add_row(*(cell(result) for _, cell in columns))
    Console(width=200).print(table)
    for result in results:
        if result.lost:
            print(f"fault rate {result.fault_rate:g}: lost by error: {result.lost_by_error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=1.0, help="server latency per request, s")
    parser.add_argument("--jitter", type=float, default=None, help="latency +- spread, s (default 0.2*latency)")
    parser.add_argument("--connections", type=int, default=32, help="GenerateConfig.max_connections")
    parser.add_argument("--requests", type=int, default=1024, help="logical judge requests per run")
    parser.add_argument("--fault-rates", default="0,0.1", help="comma-separated fault rates, one run each")
    parser.add_argument("--fault-rate", type=float, default=None, help="a single fault rate (overrides --fault-rates)")
    parser.add_argument("--faults", default="429,500,timeout,malformed", help="fault kinds drawn from")
    parser.add_argument("--client-timeout", type=float, default=None, help="SDK per-try timeout, s (default latency+1)")
    parser.add_argument("--timeout-fault", type=float, default=None, help="server hold on a timeout fault, s")
    parser.add_argument("--sdk-retries", type=int, default=2, help="OpenAI SDK max_retries (model arg)")
    parser.add_argument("--inspect-retries", type=int, default=3, help="GenerateConfig.max_retries")
    parser.add_argument("--inspect-timeout", type=int, default=120, help="GenerateConfig.timeout, s")
    parser.add_argument("--seed", type=int, default=0, help="fault RNG seed")
    parser.add_argument("--out", type=Path, default=Path("bench/results/judge.json"), help="JSON report path")
    args = parser.parse_args(argv)

    rates = [args.fault_rate] if args.fault_rate is not None else [float(x) for x in args.fault_rates.split(",")]
    client_timeout = args.client_timeout if args.client_timeout is not None else args.latency + 1.0
    timeout_fault = args.timeout_fault if args.timeout_fault is not None else max(3.0, 2 * client_timeout)
    if timeout_fault <= client_timeout:
        parser.error("--timeout-fault must exceed the client timeout, or the fault is not a timeout")
    configs = [
        BenchConfig(
            latency_s=args.latency,
            latency_jitter_s=args.jitter if args.jitter is not None else 0.2 * args.latency,
            connections=args.connections,
            requests=args.requests,
            fault_rate=rate,
            faults=tuple(f.strip() for f in args.faults.split(",") if f.strip()),
            client_timeout_s=client_timeout,
            timeout_fault_s=timeout_fault,
            sdk_retries=args.sdk_retries,
            inspect_retries=args.inspect_retries,
            inspect_timeout_s=args.inspect_timeout,
            seed=args.seed,
        )
        for rate in rates
    ]
    if args.requests < 10 * args.connections:
        print("note: fewer than 10 waves (requests < 10 x connections): the steady-state rate is noisy")
    os.environ.setdefault("INSPECT_DISPLAY", "none")
    results = [run_once(config) for config in configs]
    _print_table(results)

    import inspect_ai

    report = {
        "benchmark": "judge client throughput (issue 7, benchmark 1)",
        "inspect_ai": inspect_ai.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "configs": [asdict(c) for c in configs],
        "results": [asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    bad = [r for r in results if r.lost or r.duplicated]
    for result in bad:
        print(
            f"FAIL at fault rate {result.fault_rate:g}: {result.lost} lost, {result.duplicated} duplicated "
            "(requests the judge path could not complete)"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
