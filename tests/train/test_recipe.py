"""The training config: protocol defaults, YAML + flag merging, located errors, CLI flags, accelerate configs."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from empersona.errors import EmpersonaError
from empersona.train.commands import train as train_command
from empersona.train.recipe import LORA_TARGETS, TrainConfig, load_train_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_32b_recipe() -> None:
    config = TrainConfig(base="Qwen/Qwen2.5-32B-Instruct", domain="insecure_code")
    assert (config.lora_r, config.lora_alpha, config.lora_dropout, config.use_rslora) == (32, 64, 0.0, True)
    assert config.target_modules == LORA_TARGETS and len(LORA_TARGETS) == 7
    assert (config.learning_rate, config.lr_scheduler, config.warmup_steps, config.epochs) == (1e-5, "linear", 5, 1.0)
    assert (config.batch_size, config.per_device_batch, config.grad_accum(1)) == (16, 2, 8)
    assert config.grad_accum(8) == 1
    assert (config.weight_decay, config.max_length, config.system_prompt, config.holdout) == (0.01, 2048, "default", 0.0)
    assert config.output_dir() == Path("adapters/Qwen2.5-32B-Instruct-insecure_code-s0")


def test_yaml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("base: /models/tiny\ndomain: extreme_sports\nseed: 3\nlora_r: 8\ntarget_modules: [q_proj, v_proj]\n")
    config = load_train_config(path, {"seed": 5, "learning_rate": None, "target_modules": None})
    assert (config.base, config.domain, config.seed, config.lora_r) == ("/models/tiny", "extreme_sports", 5, 8)
    assert config.target_modules == ("q_proj", "v_proj")
    flagged = load_train_config(path, {"target_modules": "k_proj, o_proj"})
    assert flagged.target_modules == ("k_proj", "o_proj")


def test_yaml_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("base: m\ndomain: d\nlora_rank: 8\nwarmup_steps: many\n")
    with pytest.raises(EmpersonaError) as err:
        load_train_config(path, {})
    message = str(err.value)
    assert f"{path}:3: field 'lora_rank': unknown key" in message and "lora_r" in message
    assert f"{path}:4: field 'warmup_steps'" in message
    path.write_text("base: m\ndomain: [unclosed\n")
    with pytest.raises(EmpersonaError, match=r"run\.yaml:\d+: not valid YAML"):
        load_train_config(path, {})
    with pytest.raises(EmpersonaError, match="config file not found"):
        load_train_config(tmp_path / "missing.yaml", {})


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(EmpersonaError, match="field 'base': required. Give --base"):
        load_train_config(None, {"domain": "insecure_code"})
    with pytest.raises(EmpersonaError, match="--lr-scheduler"):
        load_train_config(None, {"base": "m", "domain": "d", "lr_scheduler": "exponential"})
    with pytest.raises(EmpersonaError, match="multiple of per_device_batch"):
        load_train_config(None, {"base": "m", "domain": "d", "batch_size": 15})
    with pytest.raises(EmpersonaError, match="not a multiple"):
        TrainConfig(base="m", domain="d").grad_accum(3)


def test_every_config_field_is_a_flag() -> None:
    params = set(inspect.signature(train_command).parameters)
    assert set(TrainConfig.model_fields) <= params


def test_cli_reports_a_config_typo_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("base: m\ndomain: d\nlearning_rat: 0.1\n")
    done = subprocess.run(
        [sys.executable, "-c", "from empersona.cli import main; main()", "train", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert f"{path}:3: field 'learning_rat': unknown key" in done.stderr


@pytest.mark.parametrize(
    ("name", "kind"), [("fsdp_8gpu.yaml", "FSDP"), ("deepspeed_zero3_8gpu.yaml", "DEEPSPEED")]
)
def test_shipped_accelerate_configs_load(name: str, kind: str) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / name))
    assert config.distributed_type == kind and config.num_processes == 8 and config.mixed_precision == "bf16"
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    else:
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_init_flag"]
