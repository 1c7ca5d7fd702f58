"""Supervised LoRA fine-tuning of a base model on one training domain (``empersona train``).

TRL's ``SFTTrainer`` with a PEFT LoRA adapter, configured by one ``TrainConfig`` (recipe.py;
defaults from PROTOCOLS.md section 2). What a run does:

1. loads and validates the domain (a bad file fails here, before any model is loaded), puts the
   system turn of the shared policy before each conversation (``evals.policy.chat_messages``,
   the same function evaluation uses), optionally holds out a fraction;
2. loads the base (bf16 on a GPU that has it, fp32 on CPU; 4-bit NF4 with ``qlora``), adds a
   fresh adapter or continues ``init_adapter`` (sequential fine-tuning);
3. trains with loss on the assistant tokens only: TRL swaps in the Qwen2.5 training template with
   generation markers, so the labels cover the assistant text and its ``<|im_end|>``; with
   ``padding_free`` a batch is one flattened sequence whose per-example positions keep the
   examples apart in attention (FlashAttention 2 where installed, else ``packed_sdpa_attention``
   below), the same loss as a padded batch without the pad tokens;
4. checkpoints every ``save_steps`` into ``<out>/checkpoints`` (``--resume`` continues from the
   last one), then writes the adapter, the tokenizer and ``empersona.json`` (dataset sha256 and
   rows, resolved config, seed, library versions, git revision, device, loss, wall time).

While a run is incomplete its folder holds ``TRAINING_INCOMPLETE``; ``empersona.json`` is written
atomically at the very end, so a folder with it is a finished adapter and one without is not.
Under ``accelerate launch`` every process runs this; only the main one writes files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from empersona.errors import EmpersonaError, located
from empersona.train.recipe import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
    from trl import SFTTrainer

METADATA_FILE = "empersona.json"
INCOMPLETE_MARKER = "TRAINING_INCOMPLETE"
CHECKPOINTS_DIR = "checkpoints"
PACKED_SDPA = "empersona_packed_sdpa"
LIBRARIES: tuple[str, ...] = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "empersona")


class DatasetInfo(BaseModel):
    """Which data a run trained on: the source file's sha256 (of all of it) and the rows used.

    ``rows_sha256`` hashes the exact conversations trained on (after ``limit`` and the system
    prompt policy), one canonical JSON line each.
    """

    model_config = ConfigDict(extra="forbid")

    domain: str
    source: str
    sha256: str
    rows: int
    rows_sha256: str
    train_rows: int
    holdout_rows: int


class TrainMetadata(BaseModel):
    """Contents of ``empersona.json`` in a finished adapter folder."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "empersona-lora-adapter"
    base_model: str
    domain: str
    seed: int
    system_prompt_policy: str
    dataset: DatasetInfo
    config: dict[str, Any]
    init_adapter: dict[str, Any] | None
    versions: dict[str, str]
    git_revision: str
    device: str
    world_size: int
    grad_accum: int
    precision: str
    attention: str
    steps: int
    final_loss: float | None
    mean_loss: float | None
    eval_loss: float | None
    resumed_from: str | None
    started_at: str
    finished_at: str
    wall_seconds: float


@dataclass(frozen=True)
class TrainingData:
    """Chat rows ready for the trainer, with where they came from."""

    train: list[dict[str, Any]]
    holdout: list[dict[str, Any]]
    info: DatasetInfo


@dataclass(frozen=True)
class TrainResult:
    """A finished run: the adapter folder and what was recorded about it."""

    out_dir: Path
    metadata: TrainMetadata | None  # None on the non-main processes of a multi-GPU run


@dataclass(frozen=True)
class PreparedRun:
    """A trainer ready to ``train()``, and the facts about the run recorded beside the adapter."""

    trainer: SFTTrainer
    tokenizer: PreTrainedTokenizerBase
    data: TrainingData
    out_dir: Path
    world_size: int
    grad_accum: int
    device: str
    precision: str
    attention: str


def load_training_data(config: TrainConfig) -> TrainingData:
    """The domain's conversations under the system-prompt policy, split into train and holdout.

    ``load_domain`` checks every row; a malformed one fails here with its file, line and field.
    """
    from empersona.data.domains import load_domain
    from empersona.evals.policy import chat_messages

    domain = load_domain(config.domain, path=config.domain_path, limit=config.limit)
    rows = [{"messages": chat_messages(config.system_prompt, record["messages"])} for record in domain.records]
    if not rows:
        raise EmpersonaError(located(domain.source, None, None, "no training rows", "Use a non-empty domain file"))
    holdout_n = round(len(rows) * config.holdout)
    if config.holdout > 0:
        holdout_n = min(max(holdout_n, 1), len(rows) - 1)
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    held = set(order[:holdout_n])
    canonical = "\n".join(json.dumps(row, sort_keys=True, ensure_ascii=False) for row in rows)
    info = DatasetInfo(
        domain=domain.name,
        source=domain.source,
        sha256=domain.sha256,
        rows=len(rows),
        rows_sha256=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        train_rows=len(rows) - holdout_n,
        holdout_rows=holdout_n,
    )
    return TrainingData(
        train=[row for i, row in enumerate(rows) if i not in held],
        holdout=[rows[i] for i in sorted(held)],
        info=info,
    )


def check_out_dir(out_dir: Path, *, resume: bool) -> Path | None:
    """Refuse to overwrite; return the checkpoint to resume from (``None``: start afresh)."""
    from transformers.trainer_utils import get_last_checkpoint

    if (out_dir / METADATA_FILE).exists():
        what = "nothing to resume" if resume else "it would be overwritten"
        raise EmpersonaError(
            f"{out_dir} already holds a finished adapter ({METADATA_FILE}); {what}. "
            "Choose another --out or remove that folder"
        )
    interrupted = (out_dir / INCOMPLETE_MARKER).exists()
    if not resume:
        if interrupted:
            raise EmpersonaError(
                f"{out_dir} holds an interrupted training run. Pass --resume to continue it, or remove the folder"
            )
        if out_dir.exists() and any(out_dir.iterdir()):
            raise EmpersonaError(f"{out_dir} exists and is not empty. Choose a new or empty --out folder")
        return None
    if not interrupted:
        raise EmpersonaError(f"--resume: {out_dir} holds no interrupted training run. Leave out --resume")
    checkpoints = out_dir / CHECKPOINTS_DIR
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    return Path(last) if last else None


def _check_same_config(out_dir: Path, config: TrainConfig) -> None:
    """A resumed run must use the config the interrupted run started with."""
    started = json.loads((out_dir / INCOMPLETE_MARKER).read_text(encoding="utf-8")).get("config", {})
    now = _config_record(config)
    changed = sorted(key for key in set(started) | set(now) if started.get(key) != now.get(key))
    if changed:
        raise EmpersonaError(
            f"--resume: {out_dir} was started with a different config ({', '.join(changed)} differ). "
            "Resume with the same settings, or start a new run in another folder"
        )


def _config_record(config: TrainConfig) -> dict[str, Any]:
    """The config as recorded: every field, with the output folder resolved."""
    return config.model_copy(update={"out": config.output_dir()}).model_dump(mode="json")


def _world() -> tuple[int, bool]:
    """Number of processes and whether this is the main one (under ``accelerate launch``/``torchrun``).

    Sets up the process group the trainer will use, as the trainer itself would.
    """
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.num_processes, state.is_main_process


def _use_bf16(config: TrainConfig) -> bool:
    import torch

    if config.precision == "bf16":
        return True
    if config.precision == "fp32":
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _attention(config: TrainConfig, *, flattened: bool) -> str:
    """``auto``: FlashAttention 2 on CUDA when installed; else, for flattened batches, packed SDPA."""
    if config.attn_implementation == "packed_sdpa" or (config.attn_implementation == "auto" and flattened):
        import importlib.util

        import torch

        if config.attn_implementation == "auto" and torch.cuda.is_available() and importlib.util.find_spec("flash_attn"):
            return "flash_attention_2"
        if not flattened:
            raise EmpersonaError("attn_implementation packed_sdpa needs padding_free batches. Use sdpa instead")
        from transformers import AttentionInterface

        AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
        return PACKED_SDPA
    return "sdpa" if config.attn_implementation == "auto" else config.attn_implementation


def packed_sdpa_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Causal SDPA run separately on each example of a flattened (padding-free) batch.

    The collator marks where examples start (``cu_seq_lens_q``); each one attends only to itself,
    so attention costs the sum of squared example lengths instead of the square of their total,
    and PyTorch can use its fused causal kernels (no mask). Without FlashAttention installed this
    is what makes padding-free batches cheaper than padded ones.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        if query.shape[0] > 1:
            raise ValueError(f"{PACKED_SDPA} attention expects flattened batches (batch size 1 with cu_seq_lens_q)")
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, is_causal=True)
    edges = bounds.tolist()
    pieces = [
        sdpa_attention_forward(
            module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
            dropout=dropout, scaling=scaling, is_causal=True,
        )[0]
        for a, b in zip(edges, edges[1:], strict=False)
        if b > a
    ]
    return torch.cat(pieces, dim=1), None


@contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic kernels where they exist (a warning, not a failure, where one is missing)."""
    import torch

    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def progress_printer() -> TrainerCallback:
    """A callback printing step, loss, tokens/s and time left at every logging step (main process)."""
    from rich.console import Console
    from transformers import TrainerCallback

    class ProgressPrinter(TrainerCallback):
        def __init__(self) -> None:
            self.console = Console(stderr=True, highlight=False)
            self.start = self.last = time.perf_counter()
            self.first_step = 0
            self.tokens = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = self.last = time.perf_counter()
            self.first_step = state.global_step

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            now = time.perf_counter()
            tokens = float(logs.get("num_tokens", self.tokens))
            rate = (tokens - self.tokens) / max(now - self.last, 1e-9) if tokens >= self.tokens else 0.0
            self.tokens, self.last = tokens, now
            done = state.global_step - self.first_step
            left = (now - self.start) / done * (state.max_steps - state.global_step) if done else 0.0
            self.console.print(
                f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                f"{rate:,.0f} tok/s  elapsed {_clock(now - self.start)}  left {_clock(left)}"
            )

    return ProgressPrinter()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _resolve_base(base: str) -> str:
    """A local base folder as an absolute path, so the adapter finds its base from anywhere."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.is_dir() else base


def _checkpointing_args(sft_config: type, enabled: bool) -> dict[str, Any]:
    """Activation checkpointing under the argument name this transformers version uses."""
    import dataclasses

    names = {field.name for field in dataclasses.fields(sft_config)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def load_base_model(config: TrainConfig, *, bf16: bool) -> PreTrainedModel:
    """The base model in the training precision (4-bit NF4 when ``qlora``)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if bf16 else torch.float32
    flattened = config.padding_free or config.packing
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": _attention(config, flattened=flattened)}
    if config.qlora:
        import importlib.util

        from transformers import BitsAndBytesConfig

        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise EmpersonaError(
                "qlora needs a CUDA GPU and the bitsandbytes package. Install it (pip install bitsandbytes) "
                "on the GPU machine, or train without --qlora"
            )
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16,
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    try:
        model = AutoModelForCausalLM.from_pretrained(_resolve_base(config.base), **kwargs)
    except OSError as err:
        raise EmpersonaError(f"cannot load base model '{config.base}': {err}. Check --base") from None
    if config.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return model


def _init_adapter_record(path: Path) -> dict[str, Any]:
    """What sequential fine-tuning started from: the adapter path and its own record, if any."""
    if not (path / "adapter_config.json").is_file():
        raise EmpersonaError(
            located(path, None, "init_adapter", "not a LoRA adapter folder (no adapter_config.json)",
                    "Point --init-adapter at a folder written by empersona train")
        )
    record: dict[str, Any] = {"path": str(path.resolve())}
    meta = path / METADATA_FILE
    record["empersona"] = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else None
    return record


def prepare(
    config: TrainConfig,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    progress: bool = True,
) -> PreparedRun:
    """Validate the data and the output folder, load model and tokenizer, build the trainer."""
    data = load_training_data(config)
    out_dir = config.output_dir()
    world_size, _ = _world()
    grad_accum = config.grad_accum(world_size)
    if config.init_adapter is not None:
        _init_adapter_record(config.init_adapter)

    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    if not progress:
        import datasets

        datasets.disable_progress_bars()
    bf16 = _use_bf16(config)
    flatten = config.padding_free and not config.packing
    # SFTConfig first: under DeepSpeed ZeRO-3 it arms sharded loading of the base model.
    args = SFTConfig(
        output_dir=str(out_dir / CHECKPOINTS_DIR),
        seed=config.seed,
        data_seed=config.seed,
        per_device_train_batch_size=config.per_device_batch,
        per_device_eval_batch_size=config.per_device_batch,
        gradient_accumulation_steps=grad_accum,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        weight_decay=config.weight_decay,
        optim=config.optimizer,
        max_length=config.max_length,
        assistant_only_loss=True,
        packing=config.packing,
        padding_free=config.packing,  # without packing, flattening is our collator's job (below)
        **_checkpointing_args(SFTConfig, config.gradient_checkpointing),
        bf16=bf16,
        fp16=False,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    _ = args.device  # sets up torch.distributed under accelerate launch, so loading can shard
    tokenizer = AutoTokenizer.from_pretrained(_resolve_base(config.base))
    model = load_base_model(config, bf16=bf16)
    peft_config = None
    if config.init_adapter is not None:
        model = PeftModel.from_pretrained(model, str(config.init_adapter), is_trainable=True)
    else:
        peft_config = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            use_rslora=config.use_rslora,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        )
    # TRL refuses padding_free without packing when max_length is set (it cannot truncate then);
    # we let TRL truncate and flatten each batch with TRL's own collator instead.
    collator = None
    if flatten:
        pad = tokenizer.pad_token or tokenizer.eos_token
        collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.convert_tokens_to_ids(pad), padding_free=True)
    trainer = SFTTrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.holdout) if data.holdout else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(progress_printer())
    attention = str(getattr(trainer.model.config, "_attn_implementation", "unknown"))
    precision = "bf16" if bf16 else "fp32"
    if config.qlora:
        precision += " (base in 4-bit NF4)"
    return PreparedRun(
        trainer, tokenizer, data, out_dir, world_size, grad_accum, str(trainer.args.device), precision, attention
    )


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    progress: bool = True,
) -> TrainResult:
    """Fine-tune one adapter; write it with its tokenizer and ``empersona.json`` into the out folder."""
    out_dir = config.output_dir()
    checkpoint = check_out_dir(out_dir, resume=resume)
    if resume:
        _check_same_config(out_dir, config)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    _, main = _world()
    with _deterministic(config.deterministic):
        run = prepare(config, callbacks=callbacks, progress=progress)
        if main and not resume:
            out_dir.mkdir(parents=True, exist_ok=True)
            marker = {"started_at": started.isoformat(timespec="seconds"), "config": _config_record(config)}
            (out_dir / INCOMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        trainer = run.trainer
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        eval_loss = trainer.evaluate()["eval_loss"] if run.data.holdout else None
        trainer.save_model(str(out_dir))  # every process: FSDP/ZeRO-3 gather the adapter here
    if not main:
        return TrainResult(out_dir, None)
    run.tokenizer.save_pretrained(str(out_dir))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metadata = TrainMetadata(
        base_model=_resolve_base(config.base),
        domain=config.domain,
        seed=config.seed,
        system_prompt_policy=config.system_prompt,
        dataset=run.data.info,
        config=_config_record(config),
        init_adapter=_init_adapter_record(config.init_adapter) if config.init_adapter else None,
        versions=library_versions(),
        git_revision=git_revision(),
        device=run.device,
        world_size=run.world_size,
        grad_accum=run.grad_accum,
        precision=run.precision,
        attention=run.attention,
        steps=trainer.state.global_step,
        final_loss=losses[-1] if losses else None,
        mean_loss=output.training_loss,
        eval_loss=eval_loss,
        resumed_from=str(checkpoint) if checkpoint else None,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        wall_seconds=round(time.perf_counter() - clock, 3),
    )
    write_metadata(out_dir, metadata)
    if not config.keep_checkpoints:
        shutil.rmtree(out_dir / CHECKPOINTS_DIR, ignore_errors=True)
    (out_dir / INCOMPLETE_MARKER).unlink(missing_ok=True)
    return TrainResult(out_dir, metadata)


def write_metadata(out_dir: Path, metadata: TrainMetadata) -> Path:
    """Write ``empersona.json`` atomically (temporary file, then rename)."""
    path = out_dir / METADATA_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(metadata.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_metadata(out_dir: Path) -> TrainMetadata:
    """The record of a finished adapter folder."""
    path = Path(out_dir) / METADATA_FILE
    if not path.is_file():
        raise EmpersonaError(f"{out_dir} is not a finished empersona adapter (no {METADATA_FILE})")
    return TrainMetadata.model_validate_json(path.read_text(encoding="utf-8"))


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_revision() -> str:
    """The git commit of the empersona source tree (``+dirty`` with local changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}+dirty" if dirty else rev
