"""bench/gpu.sh, the prepared GPU run, dry-run on CPU: a GPU session has minutes, not time to debug it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_script_dry_run_measures_every_step(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_SHAPES": "tiny",
        "GPU_CHECK_COMPILE": "off",  # the compiled path has its own test (test_provider_engine)
        "GPU_CHECK_MIRROR": str(shared_data),
    }
    done = subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    log = (out / "gpu.log").read_text(encoding="utf-8")
    assert done.returncode == 0, done.stderr + log
    assert "end generate-tiny: rc 0" in log and "end train-tiny: rc 0" in log, log
    generated = json.loads((out / "generate-tiny.json").read_text(encoding="utf-8"))
    assert generated["complete"] is True
    measured = {(r["method"], r["batch"]) for r in generated["results"]}
    assert measured == {(m, b) for m in ("plain", "engine") for b in (8, 1)}
    assert all(r["tokens_per_s"] > 0 for r in generated["results"])
    trained = json.loads((out / "train-tiny.json").read_text(encoding="utf-8"))
    assert trained["shape"] == "tiny" and trained["timed_steps"] == 2
    assert trained["same_tokens"] is True  # both paths trained on the very same tokens
    assert trained["ratio_tokens_per_s"] > 0


def test_gpu_script_reports_a_step_that_fails_and_goes_on(tmp_path: Path) -> None:
    """A step that breaks is logged with its exit status; the later steps still run."""
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_SHAPES": "no-such-shape",
        "GPU_CHECK_MIRROR": str(tmp_path / "no-mirror"),
    }
    done = subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    log = (out / "gpu.log").read_text(encoding="utf-8")
    assert done.returncode == 0
    assert "end generate-no-such-shape: rc 2" in log  # argparse rejects the shape
    assert "start train-no-such-shape" in log and "end train-no-such-shape: rc 2" in log
    assert "done; files:" in log
