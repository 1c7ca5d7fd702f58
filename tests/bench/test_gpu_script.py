"""bench/gpu.sh, the prepared GPU run, dry-run on CPU: a GPU session has minutes, not time to debug it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def dry_run(out: Path, shapes: str, timeout: int, **settings: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """bench/gpu.sh on the CPU with ``GPU_CHECK_<NAME>`` settings; its result and its log."""
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_SHAPES": shapes,
        **{f"GPU_CHECK_{name.upper()}": value for name, value in settings.items()},
    }
    done = subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return done, (out / "gpu.log").read_text(encoding="utf-8")


def test_gpu_script_dry_run_measures_every_step(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # compile off: the compiled path has its own test (test_provider_engine)
    done, log = dry_run(out, "tiny", 280, compile="off", mirror=str(shared_data))
    assert done.returncode == 0, done.stderr + log
    assert all(f"end {name}-tiny: rc 0" in log for name in ("generate", "profile", "train", "kv", "shrink", "adapters")), log
    assert "end sampler: rc 0" in log, log
    sampled = json.loads((out / "sampler.json").read_text(encoding="utf-8"))
    assert {r["top_logprobs"] for r in sampled["results"]} == {0, 1, 5}
    assert all(r["ms_per_step"] > 0 for r in sampled["results"])
    assert sampled["checks"]["uniform draws equal the CPU's"] is True  # on a GPU: int64 products wrap as on the CPU
    generated = json.loads((out / "generate-tiny.json").read_text(encoding="utf-8"))
    assert generated["complete"] is True
    measured = {(r["method"], r["batch"]) for r in generated["results"]}
    # inspect-ai is installed here, so the dry run also measures inspect's hf/ and our empersona/
    assert measured == {(m, b) for m in ("plain", "engine", "hf", "empersona") for b in (8, 1)}
    assert all(r["tokens_per_s"] > 0 for r in generated["results"])
    profiled = json.loads((out / "profile-tiny.json").read_text(encoding="utf-8"))
    phases = profiled["phases_ms_per_new_token"]
    assert phases["generate"] > 0 and phases["decode step"] > 0 and phases["sampler"] > 0
    assert profiled["filled_length"] <= profiled["cache_length"]
    assert all(ms > 0 for ms in profiled["attention_ms_per_step"].values())
    trained = json.loads((out / "train-tiny.json").read_text(encoding="utf-8"))
    assert trained["shape"] == "tiny" and trained["timed_steps"] == 2
    assert trained["same_tokens"] is True  # both paths trained on the very same tokens
    assert trained["ratio_tokens_per_s"] > 0
    assert set(trained["variants"]) == {"full-loss", "padded"}  # the last shape's where-does-time-go runs
    assert all(v["tokens"] == trained["ours"]["tokens"] for v in trained["variants"].values())
    # the full-logit loss is the same loss as TRL's fused head: same training, same final loss
    assert trained["variants"]["full-loss"]["final_loss"] == pytest.approx(trained["ours"]["final_loss"], rel=1e-4)
    budget = json.loads((out / "kv-tiny.json").read_text(encoding="utf-8"))
    assert all(v["same_tokens"] for v in budget["variants"].values())
    # one round: the short wave reuses the first cache, the long one drops it
    assert budget["variants"]["one cache"]["caches_dropped"] == 1 and budget["variants"]["unlimited"]["caches_dropped"] == 0
    shrunk = json.loads((out / "shrink-tiny.json").read_text(encoding="utf-8"))
    assert all(v["same_tokens"] for v in shrunk["variants"].values())
    assert shrunk["variants"]["full rounds"]["shrunk_rounds"] == 0
    assert shrunk["variants"][f"shrink_at {shrunk['shrink_at']:g}"]["decode_row_steps"] < shrunk["variants"]["full rounds"]["decode_row_steps"]
    served = json.loads((out / "adapters-tiny.json").read_text(encoding="utf-8"))
    assert set(served["variants"]) == {
        "base only", "lora_dtype model", "model, A stacked", "lora_dtype float32", "one adapter, all loaded", "one adapter, alone",
        "one adapter, merged",
    }
    assert served["one_model_same_tokens"] is True  # the other adapters loaded beside it change nothing
    assert served["stacked_same_token_share"] == 1.0  # stacking A under W changes no token here
    assert served["same_token_share"] == 1.0  # float32 on CPU: the same computation either way
    # merged in float32: the same answers up to rounding (an argmax may flip on a near tie)
    assert served["merged_same_token_share"] >= 0.95


def test_gpu_script_reports_a_step_that_fails_and_goes_on(tmp_path: Path) -> None:
    """A step that breaks is logged with its exit status; the later steps still run."""
    done, log = dry_run(tmp_path / "out", "no-such-shape", 120, mirror=str(tmp_path / "no-mirror"))
    assert done.returncode == 0
    assert log.index("start generate") < log.index("start profile") < log.index("start train")
    assert "end generate-no-such-shape: rc 2" in log  # argparse rejects the shape
    assert "end profile-no-such-shape: rc 2" in log
    assert "start train-no-such-shape" in log and "end train-no-such-shape: rc 2" in log
    assert "done; files:" in log


def test_gpu_script_runs_the_steps_it_is_asked_for_in_that_order(tmp_path: Path) -> None:
    done, log = dry_run(tmp_path / "out", "no-such-shape", 120, steps="train profile nonsense")
    assert done.returncode == 0
    assert "start generate" not in log
    assert log.index("start train") < log.index("start profile")
    assert "unknown step 'nonsense'" in log
