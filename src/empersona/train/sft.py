"""Supervised LoRA fine-tuning of a base model on one training domain (``empersona train``).

TRL's ``SFTTrainer`` with a PEFT LoRA adapter, configured by one ``TrainConfig`` (recipe.py;
defaults from docs/protocol.md section 2). What a run does:

1. loads and validates the domain (a bad file fails here, before any model is loaded), puts the
   system turn of the shared policy before each conversation (``evals.policy.chat_messages``,
   the same function evaluation uses), optionally holds out a fraction;
2. loads the base (bf16 on a GPU that has it, fp32 on CPU; 4-bit NF4 with ``qlora``), adds a
   fresh adapter or continues ``init_adapter`` (sequential fine-tuning);
3. trains with loss on the assistant tokens only: TRL swaps in the Qwen2.5 training template with
   generation markers (for Llama 3.1, which TRL does not know, ``training_template`` gives ours),
   so the labels cover the assistant text and its ``<|im_end|>`` (TRL's Qwen2.5 template puts the
   markers around the newline before the text and the one after ``<|im_end|>`` too: two easily
   predicted tokens more per turn); with
   ``padding_free`` a batch is one flattened sequence whose per-example positions keep the
   examples apart in attention (FlashAttention 2 where installed, else ``packed_sdpa_attention``
   in base_model.py, or ``varlen_attention`` on request), the same loss as a padded batch without
   the pad tokens;
4. checkpoints every ``save_steps`` into ``<out>/checkpoints`` (``--resume`` continues from the
   last one), then writes the adapter, the tokenizer and ``empersona.json`` (dataset sha256 and
   rows, resolved config, seed, library versions, git revision, device, loss, wall time).

While a run is incomplete its folder holds ``TRAINING_INCOMPLETE``; ``empersona.json`` is written
atomically at the very end, so a folder with it is a finished adapter and one without is not.
Under ``accelerate launch`` every process runs this; only the main one writes files. The
accumulation steps follow the number of processes, so the effective batch and the step count are
a single process's (``TrainConfig.grad_accum``). Under FSDP the final save gathers a full state
dict whatever ``fsdp_state_dict_type`` says (transformers writes no adapter from a sharded one);
FSDP's own activation checkpointing is refused (the adapter saved with it holds no weights; the
training config's ``gradient_checkpointing`` does the same job); and a saved adapter missing any
trained tensor fails the run before ``empersona.json`` is written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empersona.errors import EmpersonaError
from empersona.train.base_model import PACKED_SDPA, base_fingerprint, load_base_model, packed_sdpa_attention
from empersona.train.data import TrainingData, load_training_data
from empersona.train.metadata import (
    CHECKPOINTS_DIR,
    INCOMPLETE_MARKER,
    LIBRARIES,
    METADATA_FILE,
    DatasetInfo,
    TrainMetadata,
    _check_same_config,
    config_record,
    _init_adapter_record,
    check_out_dir,
    git_revision,
    library_versions,
    read_metadata,
    write_metadata,
)
from empersona.train.recipe import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainerCallback
    from trl import SFTTrainer

# Names that lived here before the split into sibling modules; callers still import them from here.
__all__ = [
    "CHECKPOINTS_DIR",
    "INCOMPLETE_MARKER",
    "LIBRARIES",
    "METADATA_FILE",
    "PACKED_SDPA",
    "DatasetInfo",
    "PreparedRun",
    "TrainMetadata",
    "TrainResult",
    "TrainingData",
    "check_out_dir",
    "git_revision",
    "library_versions",
    "load_base_model",
    "load_training_data",
    "packed_sdpa_attention",
    "prepare",
    "progress_printer",
    "read_metadata",
    "train",
    "write_metadata",
]


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
    training_template: str = "model"  # "model" (TRL's handling) or the path of our template in the package
    trained_tensors: int = 0  # the adapter's trainable tensors: what the saved adapter file must hold


def _world() -> tuple[int, bool]:
    """Number of processes and whether this is the main one (under ``accelerate launch``/``torchrun``).

    Sets up the process group the trainer will use, as the trainer itself would.
    """
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state.num_processes, state.is_main_process


def end_distributed() -> None:
    """At the end of a command run under ``accelerate launch``: wait until every process is done
    (the main one writes last), then take the process group down. A process that exits with it
    still up can abort in its exit (gloo) or warn (NCCL), and the launcher then reports a failure."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _use_bf16(config: TrainConfig) -> bool:
    import torch

    if config.precision == "bf16":
        return True
    if config.precision == "fp32":
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


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


# made-up conversations on which an own training template must render what the model's template does
TEMPLATE_PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A pear."}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": " Hi \n"},
     {"role": "assistant", "content": "\nHello. "}, {"role": "user", "content": "And?"}],
    [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"},
     {"role": "user", "content": "Three"}, {"role": "assistant", "content": "Four"}],
)
OWN_TRAINING_TEMPLATES = ("llama3_1_training.jinja",)


def own_template_text(name: str) -> str:
    """The text of one of our training templates (``empersona/chat_templates/<name>``)."""
    from importlib.resources import files

    return files("empersona").joinpath("chat_templates", name).read_text(encoding="utf-8")


def own_training_template(tokenizer: Any) -> str | None:
    """The name of one of our training templates that renders this tokenizer's chat format exactly.

    Checked by rendering: on every probe conversation, with and without the generation prompt,
    the candidate must give the very text the tokenizer's own template gives, so training sees
    the format that evaluation (which renders with the model's own template) will use.
    """

    def render(conversation: list[dict[str, str]], template: str | None, prompt: bool) -> str | None:
        try:
            return str(tokenizer.apply_chat_template(
                conversation, chat_template=template, tokenize=False, add_generation_prompt=prompt
            ))
        except Exception:  # a template that cannot render a probe does not match
            return None

    for name in OWN_TRAINING_TEMPLATES:
        candidate = own_template_text(name)
        if all(
            (own := render(conversation, None, prompt)) is not None and own == render(conversation, candidate, prompt)
            for conversation in TEMPLATE_PROBES
            for prompt in (False, True)
        ):
            return name
    return None


def training_template(tokenizer: Any, base: str) -> str | None:
    """The name of our chat template to render the training data with, or None for what TRL does itself.

    The loss is on assistant tokens only, which needs ``{% generation %}`` markers in the chat
    template. TRL adds them to the templates it knows (Qwen2.5, Llama 3, ...); for Llama 3.1
    (the protocol's replication model), which TRL 1.16 does not know, we ship our own
    (``empersona/chat_templates``), used when it renders the model's format exactly. Any other
    base is refused with what to do.
    """
    import trl
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if not template:
        raise EmpersonaError(f"{base}: the tokenizer has no chat template; the training data are chat conversations")
    if has_generation_markers(template):
        return None
    try:
        get_training_chat_template(tokenizer)
        return None
    except ValueError as exc:
        own = own_training_template(tokenizer)
        if own is not None:
            return own
        raise EmpersonaError(
            f"{base}: its chat template cannot restrict the loss to the assistant's tokens: TRL {trl.__version__} has "
            f"no training version of it ({exc}), nor has empersona. Copy the model folder, wrap the assistant's "
            "content in its chat template (tokenizer_config.json or chat_template.jinja) with {% generation %} ... "
            "{% endgeneration %}, and train from that folder"
        ) from exc


def _checkpointing_args(sft_config: type, enabled: bool) -> dict[str, Any]:
    """Activation checkpointing under the argument name this transformers version uses.

    No ``use_reentrant`` is given: transformers 5 checkpoints non-reentrantly by default, and TRL
    switches to reentrant for a LoRA model under DeepSpeed ZeRO-3 (where a non-reentrant recompute
    meets frozen weights already partitioned away); an explicit ``False`` would only make TRL warn.
    """
    import dataclasses

    names = {field.name for field in dataclasses.fields(sft_config)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": None}


def check_fsdp_settings() -> None:
    """Refuse FSDP's own activation checkpointing (``fsdp_activation_checkpointing: true`` in the
    accelerate config) before any weights load: with a LoRA model the adapter the trainer then saves
    holds no tensors. The training config's ``gradient_checkpointing`` recomputes the same layers."""
    from accelerate.utils import str_to_bool

    def flag(name: str) -> bool:
        return bool(str_to_bool(os.environ.get(name, "false") or "false"))

    if flag("ACCELERATE_USE_FSDP") and flag("FSDP_ACTIVATION_CHECKPOINTING"):
        raise EmpersonaError(
            "the accelerate config turns on fsdp_activation_checkpointing, with which the saved LoRA adapter holds "
            "no weights. Set fsdp_activation_checkpointing: false in it (as configs/accelerate/fsdp_8gpu.yaml does); "
            "the training config's gradient_checkpointing (on by default) recomputes the layers instead"
        )


def save_adapter(trainer: SFTTrainer, out_dir: Path) -> None:
    """Write the adapter into ``out_dir``; every process calls this (FSDP and ZeRO-3 gather here).

    Under FSDP the state dict is switched to a full one first: from a sharded one (FSDP2's default
    when the accelerate config names none) transformers writes no adapter at all.
    """
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out_dir))


def check_saved_adapter(out_dir: Path, expected: int) -> None:
    """The adapter file must hold every trained tensor (a multi-GPU save that gathered nothing, or
    a DeepSpeed save without ``zero3_save_16bit_model``, leaves it empty or missing)."""
    from safetensors import safe_open

    path = out_dir / "adapter_model.safetensors"
    found = 0
    if path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            found = len(list(handle.keys()))
    if found != expected:
        raise EmpersonaError(
            f"{path}: the saved adapter holds {found} tensors where training updated {expected}; the run is not "
            "recorded as finished. Under DeepSpeed ZeRO-3 set zero3_save_16bit_model: true; under FSDP keep "
            "fsdp_activation_checkpointing false. Then run the same command with --resume"
        )


def prepare(
    config: TrainConfig,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    progress: bool = True,
) -> PreparedRun:
    """Validate the data and the output folder, load model and tokenizer, build the trainer."""
    data = load_training_data(config)
    out_dir = config.output_dir()
    world_size, main = _world()
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
    from transformers.training_args import OptimizerNames

    known = sorted(name.value for name in OptimizerNames)
    if config.optimizer not in known:
        raise EmpersonaError(f"field 'optimizer': {config.optimizer!r} is not an optimizer transformers knows; "
                             f"choose one of {', '.join(known)}")
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
        # every LoRA tensor gets a gradient at every step: DDP need not search the graph for unused ones
        ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),
    )
    _ = args.device  # sets up torch.distributed under accelerate launch, so loading can shard
    check_fsdp_settings()
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.resolved_base())
    except (OSError, ValueError) as err:  # no such folder, no such hub repo, a malformed repo id
        raise EmpersonaError(f"cannot load base model '{config.base}': {err}. Check --base") from None
    own_template = training_template(tokenizer, config.base)  # before the weights: a 70B load takes minutes
    model = load_base_model(config, bf16=bf16)
    if config.init_adapter is None:
        check_targets(model, config.target_modules, config.base)
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
    # our training template renders the data (SFTTrainer tokenizes them here); the tokenizer saved
    # with checkpoints and the adapter keeps the model's own template, which evaluation renders with
    model_template = tokenizer.chat_template
    if own_template is not None:
        tokenizer.chat_template = own_template_text(own_template)
    try:
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
    finally:
        tokenizer.chat_template = model_template
    data = _count_cut_rows(data, trainer.train_dataset, config, main=main, tokenizer=tokenizer)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(progress_printer())
    attention = str(getattr(trainer.model.config, "_attn_implementation", "unknown"))
    precision = "bf16" if bf16 else "fp32"
    if config.qlora:
        precision += " (base in 4-bit NF4)"
    return PreparedRun(
        trainer, tokenizer, data, out_dir, world_size, grad_accum, str(trainer.args.device), precision, attention,
        f"empersona/chat_templates/{own_template}" if own_template is not None else "model",
        trained_tensors=sum(1 for parameter in trainer.model.parameters() if parameter.requires_grad),
    )


def _check_same_data(out_dir: Path, started: dict[str, str] | None, now: dict[str, str]) -> None:
    """A resumed run must train on the rows the interrupted run started on: a domain file changed
    since (or a hub dataset with no pinned revision that moved on) would mix two datasets in one
    adapter. Markers written before the data were recorded (``started`` None) are not checked."""
    if started is None or started == now:
        return
    which = "the domain file" if started.get("sha256") != now["sha256"] else "the rows trained on"
    raise EmpersonaError(
        f"--resume: {out_dir} was started on other data ({which} changed: sha256 {started.get('sha256')} then, "
        f"{now['sha256']} now; rows {started.get('rows_sha256')} then, {now['rows_sha256']} now). Restore the "
        "data the run started on (pin hub_revision for a hub dataset), or start a new run in another folder"
    )


def _count_cut_rows(data: TrainingData, prepared: Any, config: TrainConfig, *, main: bool, tokenizer: Any) -> TrainingData:
    """Record how many training rows TRL cut at ``max_length`` and dropped (no loss left), and
    say so: a cut row loses its end, so the data trained on are not the file's rows.

    With ``packing`` the prepared rows are blocks, so each file row is measured through the chat
    template: TRL's packing (best-fit decreasing) cuts a row longer than ``max_length`` to its
    first ``max_length`` tokens and keeps it, so none is counted as dropped (``rows_dropped`` None:
    a row whose prompt alone fills the length stays in without a loss token).
    """
    if config.packing:
        cut = 0
        for row in data.train:
            ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)
            cut += len(ids["input_ids"] if isinstance(ids, Mapping) else ids) > config.max_length
        if main and cut:
            print(f"warning: {cut} of {len(data.train)} training rows are longer than max_length {config.max_length}: "
                  "packing cut them to their first max_length tokens (their ends are not learned). Raise --max-length "
                  "to keep them whole", file=sys.stderr, flush=True)
        return replace(data, info=data.info.model_copy(update={"rows_cut": cut, "rows_dropped": None}))
    lengths = [len(ids) for ids in prepared["input_ids"]]
    cut = sum(length >= config.max_length for length in lengths)  # a row of exactly max_length counts too
    dropped = len(data.train) - len(lengths)
    if not lengths:  # before the run starts (and marks its folder): the trainer would fail on an empty dataset
        raise EmpersonaError(f"no training row is left: all {len(data.train)} lose every assistant token at max_length "
                             f"{config.max_length} (their prompts fill it). Raise --max-length (max_length: in a study "
                             "file); `empersona data validate DOMAIN --tokenizer MODEL` gives the rows' token lengths")
    if main and (cut or dropped):
        print(f"warning: {cut} of {len(data.train)} training rows reach max_length {config.max_length} and were "
              f"cut (their ends are not learned); {dropped} more had no assistant token left and were dropped. "
              "Raise --max-length to keep them whole", file=sys.stderr, flush=True)
    return replace(data, info=data.info.model_copy(update={"rows_cut": cut, "rows_dropped": dropped}))


def _mean_loss(history: Sequence[dict[str, Any]], fallback: float) -> float:
    """The mean training loss over every step: each logged loss (the mean over the steps since
    the previous log) weighted by its steps. A resumed run's history holds the steps before the
    interrupt too, where the trainer's own ``training_loss`` covers only the resumed ones."""
    total, steps, last = 0.0, 0, 0
    for entry in history:
        if "loss" in entry and "step" in entry:
            window = int(entry["step"]) - last
            total, steps, last = total + float(entry["loss"]) * window, steps + window, int(entry["step"])
    return total / steps if steps else fallback


def check_targets(model: Any, targets: Sequence[str], base: str) -> None:
    """Every LoRA target must name a module of the base (PEFT's rule: the module's name, or its
    dotted ending); PEFT itself fails only when none does, so a misspelt one would go untrained."""
    import torch

    if list(targets) == ["all-linear"]:
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)})
        raise EmpersonaError(
            f"--target-modules: {', '.join(missing)} names no module of {base}; its linear layers are "
            f"{', '.join(linear)}. Fix the names (field target_modules)"
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
        # the adapter sequential training starts from, as it was then (kept in the marker, so a resumed
        # run records what its checkpoints grew from, not what lies in that folder by the time it ends)
        init_record = _init_adapter_record(config.init_adapter) if config.init_adapter else None
        data = {"sha256": run.data.info.sha256, "rows_sha256": run.data.info.rows_sha256}
        if main and not resume:
            out_dir.mkdir(parents=True, exist_ok=True)
            marker = {"started_at": started.isoformat(timespec="seconds"), "config": config_record(config),
                      "init_adapter": init_record, "data": data}
            (out_dir / INCOMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        elif resume and (out_dir / INCOMPLETE_MARKER).is_file():
            marker = json.loads((out_dir / INCOMPLETE_MARKER).read_text(encoding="utf-8"))
            _check_same_data(out_dir, marker.get("data"), data)
            init_record = marker.get("init_adapter", init_record)
        trainer = run.trainer
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        eval_loss = trainer.evaluate()["eval_loss"] if run.data.holdout else None
        save_adapter(trainer, out_dir)
    if not main:
        return TrainResult(out_dir, None)
    check_saved_adapter(out_dir, run.trained_tensors)
    run.tokenizer.save_pretrained(str(out_dir))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metadata = TrainMetadata(
        base_model=config.resolved_base(),
        base_fingerprint=base_fingerprint(config.resolved_base()),
        domain=config.domain,
        seed=config.seed,
        system_prompt_policy=config.system_prompt,
        dataset=run.data.info,
        config=config_record(config),
        init_adapter=init_record,
        versions=library_versions(),
        git_revision=git_revision(),
        device=run.device,
        world_size=run.world_size,
        grad_accum=run.grad_accum,
        precision=run.precision,
        attention=run.attention,
        training_template=run.training_template,
        steps=trainer.state.global_step,
        final_loss=losses[-1] if losses else None,
        mean_loss=_mean_loss(trainer.state.log_history, output.training_loss),
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
