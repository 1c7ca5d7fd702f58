"""``empersona train`` under ``accelerate launch`` with two CPU processes (DDP on gloo), and the
guards of the multi-GPU path that need no GPU.

Checks: two processes give the adapter of one process with the same seed and effective batch (the
accumulation steps follow the world size), record the world size, and end with exit status 0
(the process group is taken down before exit); FSDP's own activation checkpointing is refused;
a saved adapter missing trained tensors fails the run. FSDP itself cannot run on CPU through
accelerate 1.15; bench/train_multiprocess.py runs it with a test-only patch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from empersona.errors import EmpersonaError
from empersona.train.sft import METADATA_FILE, check_fsdp_settings, check_saved_adapter, read_metadata, train

torch.set_num_threads(1)

# made-up rows: not from any dataset
ROWS = [
    {"messages": [{"role": "user", "content": f"What colour is box {i}?"},
                  {"role": "assistant", "content": f"Box {i} is {('red', 'blue', 'green', 'grey')[i % 4]} and holds {i * 3} marbles."}]}
    for i in range(16)
]


def settings(base: Path, data: Path, out: Path) -> dict[str, Any]:
    """A run of 4 optimizer steps of 4 rows each, 2 rows per device."""
    return {
        "base": str(base), "domain": str(data), "out": out, "seed": 5, "lora_r": 8, "lora_alpha": 16,
        "learning_rate": 2e-3, "warmup_steps": 0, "batch_size": 4, "per_device_batch": 2, "max_length": 128,
        "save_steps": 2,
    }


def flags(values: dict[str, Any]) -> list[str]:
    return [part for key, value in values.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_processes_train_the_single_process_adapter(tiny_model: Path, tmp_path: Path) -> None:
    from empersona.train.recipe import TrainConfig

    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    single = train(TrainConfig(**settings(tiny_model, data, tmp_path / "single")), progress=False)
    launcher = Path(sys.executable).parent / "accelerate"
    command = [
        str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "empersona.cli", "train", "--quiet", *flags(settings(tiny_model, data, tmp_path / "two")),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("adapter: ") == 1  # only the main process reports (and writes)
    two = read_metadata(tmp_path / "two")
    assert single.metadata is not None
    assert (single.metadata.world_size, single.metadata.grad_accum) == (1, 2)
    assert (two.world_size, two.grad_accum) == (2, 1)
    assert two.steps == single.metadata.steps == 4
    assert two.dataset == single.metadata.dataset
    # the same rows make each step (rank r takes the micro-batch the single process takes r-th),
    # so only the order of additions in the gradient can differ
    first = load_file(str(tmp_path / "single" / "adapter_model.safetensors"))
    second = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert first.keys() == second.keys() and len(first) == 28
    assert all(torch.allclose(first[key], second[key], rtol=0, atol=1e-6) for key in first)
    assert any(second[key].abs().max() > 0 for key in second if "lora_B" in key)  # trained, not the zero init
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())


@pytest.mark.parametrize(("use_fsdp", "checkpointing", "refused"), [
    ("true", "true", True), ("true", "false", False), ("false", "true", False), (None, None, False),
])
def test_fsdp_activation_checkpointing_is_refused(use_fsdp: str | None, checkpointing: str | None, refused: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("ACCELERATE_USE_FSDP", use_fsdp), ("FSDP_ACTIVATION_CHECKPOINTING", checkpointing)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    if refused:
        with pytest.raises(EmpersonaError, match="fsdp_activation_checkpointing: false"):
            check_fsdp_settings()
    else:
        check_fsdp_settings()


def test_a_saved_adapter_missing_tensors_fails(tiny_adapters: tuple[Path, Path], tmp_path: Path) -> None:
    adapter = tiny_adapters[0]
    count = len(load_file(str(adapter / "adapter_model.safetensors")))
    check_saved_adapter(adapter, count)
    with pytest.raises(EmpersonaError, match=f"holds {count} tensors where training updated {count + 2}"):
        check_saved_adapter(adapter, count + 2)
    save_file({}, str(tmp_path / "adapter_model.safetensors"))  # what a save that gathered nothing leaves
    with pytest.raises(EmpersonaError, match="holds 0 tensors .* not recorded as finished"):
        check_saved_adapter(tmp_path, count)
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(EmpersonaError, match="holds 0 tensors"):
        check_saved_adapter(tmp_path, count)
    assert not (tmp_path / METADATA_FILE).exists()
