"""bench/judge.py: what its accounting of the retries' waits counts, and a short run end to end."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("inspect_ai")

REPO = Path(__file__).resolve().parents[2]


def load_bench() -> Any:
    """bench/judge.py as the module ``judge``, importable by name: its server runs in a spawned
    process, which imports the module again (spawn passes this process's ``sys.path`` on)."""
    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))
    return importlib.import_module("judge")


def config(bench: Any, **changes: Any) -> Any:
    fields = {
        "latency_s": 1.0, "latency_jitter_s": 0.0, "connections": 4, "requests": 8, "fault_rate": 0.1,
        "faults": ("429", "500", "timeout", "malformed"), "client_timeout_s": 2.0, "timeout_fault_s": 4.0,
        "sdk_retries": 2, "inspect_retries": 1, "inspect_timeout_s": 60, "seed": 0,
    }
    return bench.BenchConfig(**(fields | changes))


def test_backoff_counts_the_sleep_after_each_retried_fault_from_its_end() -> None:
    bench = load_bench()
    calls = [
        {"key": "a", "started_s": 0.0, "outcome": "429"},  # rejected at once, retried 0.4 s later
        {"key": "a", "started_s": 0.4, "outcome": "500"},  # 500 after the 1 s latency, retried 0.9 s after it
        {"key": "a", "started_s": 2.3, "outcome": "ok"},
        {"key": "b", "started_s": 0.1, "outcome": "timeout"},  # client gives up at 2 s, retries 0.5 s later
        {"key": "b", "started_s": 2.6, "outcome": "ok"},
        {"key": "c", "started_s": 0.2, "outcome": "malformed"},  # asked again by ask_judge: not counted
        {"key": "c", "started_s": 5.0, "outcome": "ok"},
        {"key": "d", "started_s": 0.3, "outcome": "ok"},
    ]
    assert bench.retry_backoff_s(calls, config(bench)) == pytest.approx(0.4 + 0.9 + 0.5)
    assert bench.retry_backoff_s(list(reversed(calls)), config(bench)) == pytest.approx(1.8)  # order of the log


def test_a_short_run_accounts_for_every_request(tmp_path: Path) -> None:
    bench = load_bench()
    # a client timeout well above the latency: on a loaded machine a slow reply is not a fault
    result = bench.run_once(config(bench, latency_s=0.2, latency_jitter_s=0.0, requests=40, fault_rate=0.3,
                                   client_timeout_s=2.0, timeout_fault_s=3.0, seed=3))
    assert result.lost == 0 and result.duplicated == 0 and result.server_repeats == 0
    assert result.faults_injected > 0 and result.server_calls >= 40 + result.faults_injected
    # the SDK's retries sleep (0.5 s doubling, jittered) inside the connection: some backoff is seen,
    # and the floor with it held is below the one without
    assert result.backoff_slot_s > 0
    assert result.backoff_floor_rps < result.fault_floor_rps <= result.bound_rps
