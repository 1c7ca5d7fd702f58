"""bench/log_read.py end to end on a small log: both readers run, agree and are timed."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("inspect_ai")

REPO = Path(__file__).resolve().parents[2]


def test_a_small_run_times_both_readers_for_both_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))
    bench = importlib.import_module("log_read")
    out = tmp_path / "log_read.json"
    assert bench.main(["--prompts", "3", "--samples", "2", "--answer-words", "30", "--repeats", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["reads"]) == set(bench.READS)
    for result in report["reads"].values():
        assert result["samples"] == 6
        assert all(len(times) == 2 and min(times) > 0 for times in result["seconds"].values())
        assert result["speedup"] == pytest.approx(result["mean_seconds"]["inspect"] / result["mean_seconds"]["empersona"])
    printed = capsys.readouterr().out
    assert "results table (no events, messages)" in printed and "speed-up" in printed
