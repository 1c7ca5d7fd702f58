"""bench/train.py: a plain loop that fails (out of GPU memory) still leaves our path's figures."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

REPO = Path(__file__).resolve().parents[2]


def load_bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module
    spec.loader.exec_module(module)
    return module


def test_ours_is_reported_and_profiled_when_the_plain_loop_runs_out_of_memory(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.12 GiB.\nmore detail")

    monkeypatch.setattr(bench, "run_plain", out_of_memory)
    monkeypatch.setenv("EMPERSONA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "train.json"
    args = ["--shape", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--profile-steps", "1"]
    assert bench.main([*args, "--mirror", str(shared_data), "--out", str(out)]) == 0  # type: ignore[attr-defined]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["plain"] is None and report["ratio_tokens_per_s"] is None
    assert report["plain_error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 8.12 GiB."
    assert report["ours"]["tokens_per_s"] > 0 and report["ours"]["tokens"] > 0
    hot = report["profile"]["ours"]["host_self"]
    assert hot and all(row["ms_per_step"] > 0 for row in hot)
    assert "failed: OutOfMemoryError" in capsys.readouterr().out
