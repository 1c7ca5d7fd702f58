"""The fine-tuning recipe: one strict config model holding every training knob.

Defaults are the 32B recipe of docs/protocol.md section 2 (the recipe of both peer repositories):
LoRA with rsLoRA, r=32, alpha=64, dropout 0, on all seven projections of a Qwen2/Llama block;
lr 1e-5 with a linear schedule and 5 warm-up steps; 1 epoch; an effective batch of 16
(2 per device, the rest by gradient accumulation); weight decay 0.01; max length 2048; loss on
the assistant tokens only; the system-prompt policy shared with evaluation ("default": the
template's own system prompt). Our choices where the protocol is silent are fields too, with the
defaults below, and land in every run's ``empersona.json``:

- ``holdout = 0``: the peers silently hold out 10% of the data; we train on all of it.
- ``padding_free = True``: a batch is one flattened sequence with per-example positions instead
  of a padded rectangle; the same loss and gradients, fewer wasted tokens.
- ``optimizer = "adamw_torch"``, ``gradient_checkpointing = True``, ``precision = "auto"``
  (bf16 where the GPU supports it, fp32 on CPU), ``deterministic = True``.
- ``attn_implementation = "auto"``: FlashAttention 2 where installed; otherwise, for padding-free
  batches, SDPA run per example of the flattened batch (``packed_sdpa``), else plain SDPA.
  ``varlen`` (CUDA, PyTorch 2.10+) runs a flattened batch through PyTorch's variable-length
  FlashAttention in one call per layer; opt-in until it is timed against ``packed_sdpa`` on a GPU
  (``bench/train.py --variants varlen``).

A config is written as YAML with the field names as keys; flags of ``empersona train``
override it. A YAML typo fails with the file, line and key (``extra="forbid"``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from empersona.errors import EmpersonaError, located

LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
Precision = Literal["auto", "bf16", "fp32"]
Attention = Literal["auto", "packed_sdpa", "varlen", "sdpa", "eager", "flash_attention_2", "flex_attention"]


class TrainConfig(BaseModel):
    """Every knob of one fine-tuning run; defaults are the 32B recipe of docs/protocol.md section 2."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # what to train
    base: str = Field(description="Base model: a Hugging Face id or a local folder.")
    domain: str = Field(description="Training domain: a name (insecure_code, ...) or a chat JSONL path.")
    seed: int = Field(0, description="Seed of LoRA init, data order and dropout.")
    out: Path | None = Field(None, description="Adapter folder; default adapters/<base>-<domain>-s<seed>.")
    domain_path: Path | None = Field(None, description="Local copy of the domain's file (locked sources).")
    hub_revision: str | None = Field(None, description="Commit or tag of the hub dataset of the emergent_plus domains "
                                                      "(default: newest; the commit loaded is recorded).")
    limit: int | None = Field(None, ge=1, description="Train on the first N rows only (quick runs).")
    system_prompt: str = Field("default", description="System-prompt policy shared with evaluation.")
    holdout: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction held out for an eval loss [ours: 0].")

    # the adapter
    lora_r: int = Field(32, ge=1)
    lora_alpha: int = Field(64, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    use_rslora: bool = True
    target_modules: tuple[str, ...] = LORA_TARGETS
    init_adapter: Path | None = Field(None, description="Continue from this adapter (sequential fine-tuning).")

    # optimisation
    learning_rate: float = Field(1e-5, gt=0.0)
    lr_scheduler: Scheduler = "linear"
    warmup_steps: int = Field(5, ge=0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Effective batch: per device x devices x accumulation.")
    per_device_batch: int = Field(2, ge=1)
    weight_decay: float = Field(0.01, ge=0.0)
    optimizer: str = "adamw_torch"
    max_length: int = Field(2048, ge=8, description="Longer examples are truncated (their start is kept).")

    # efficiency and numerics
    padding_free: bool = True
    packing: bool = Field(False, description="Pack examples into max_length blocks (changes the batch count).")
    gradient_checkpointing: bool = True
    precision: Precision = "auto"
    qlora: bool = Field(False, description="Load the base in 4 bit (NF4; needs bitsandbytes and a GPU).")
    attn_implementation: Attention = "auto"
    deterministic: bool = True

    # bookkeeping
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1, description="Checkpoint every N optimizer steps (for --resume).")
    save_total_limit: int | None = Field(2, ge=1)
    keep_checkpoints: bool = Field(False, description="Keep <out>/checkpoints after a finished run.")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_targets(cls, value: Any) -> Any:
        """Accept ``q_proj,k_proj`` from a flag as well as a YAML list."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _check_batch(self) -> TrainConfig:
        if self.batch_size % self.per_device_batch:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of per_device_batch ({self.per_device_batch})"
            )
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")
        return self

    def resolved_base(self) -> str:
        """The base as loaded and recorded: a local folder as an absolute path (so the adapter finds
        it from anywhere, and a relative and an absolute spelling are one base), a hub id as given."""
        path = Path(self.base).expanduser()
        return str(path.resolve()) if path.is_dir() else self.base

    def output_dir(self) -> Path:
        """The adapter folder: ``out`` or ``adapters/<base name>-<domain name>-s<seed>``."""
        if self.out is not None:
            return self.out
        base = _slug(Path(self.base.rstrip("/")).name)
        domain = _slug(Path(self.domain).name.removesuffix(".gz").removesuffix(".jsonl"))
        return Path("adapters") / f"{base}-{domain}-s{self.seed}"

    def grad_accum(self, world_size: int) -> int:
        """Accumulation steps that make ``batch_size`` over ``world_size`` devices."""
        per_step = self.per_device_batch * world_size
        if self.batch_size % per_step:
            raise EmpersonaError(
                f"batch_size {self.batch_size} is not a multiple of per_device_batch {self.per_device_batch} x "
                f"{world_size} devices. Choose --batch-size or --per-device-batch so that it divides."
            )
        return self.batch_size // per_step


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def load_train_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Merge a YAML config (if any) with flag overrides (``None`` = not given) into a ``TrainConfig``.

    Errors name the YAML file, line and key, or the flag, and say what to do.
    """
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path is not None:
        values, lines = _read_yaml(Path(path))
    flags = {key: value for key, value in overrides.items() if value is not None}
    values.update(flags)
    try:
        return TrainConfig(**values)
    except ValidationError as err:
        raise EmpersonaError(_explain(err, path, lines, set(flags))) from None


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    import yaml

    if not path.is_file():
        raise EmpersonaError(located(path, None, None, "config file not found", "Check the --config path"))
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise EmpersonaError(located(path, line, None, f"not valid YAML ({err})", "Fix the syntax")) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict) or node is None or not isinstance(node.value, list):
        raise EmpersonaError(
            located(path, 1, None, "expected a mapping of config keys", "Write one 'key: value' per line")
        )
    lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value}
    return {str(key): value for key, value in data.items()}, lines


def _explain(err: ValidationError, path: Path | None, lines: dict[str, int], flags: set[str]) -> str:
    """One line per problem: where it came from (flag or YAML key) and how to fix it."""
    known = ", ".join(TrainConfig.model_fields)
    messages = []
    for problem in err.errors():
        key = str(problem["loc"][0]) if problem["loc"] else None
        if problem["type"] == "extra_forbidden":
            text, fix = "unknown key", f"Use one of: {known}"
        elif problem["type"] == "missing":
            flag = f"--{key.replace('_', '-')}" if key else "the missing key"
            text, fix = "required", f"Give {flag} or put '{key}:' in the config file"
        else:
            text, fix = problem["msg"], "Correct the value"
        if key is not None and key in flags:
            messages.append(f"--{key.replace('_', '-')}: {text}. {fix}")
        elif path is not None and key in lines:
            messages.append(located(path, lines[key], key, text, fix))
        else:
            messages.append(f"config: field '{key}': {text}. {fix}" if key else f"config: {text}. {fix}")
    return "\n".join(messages)

