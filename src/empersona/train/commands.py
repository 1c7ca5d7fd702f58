"""``empersona train``: fine-tune a LoRA adapter on one domain.

Every field of ``TrainConfig`` (recipe.py) is a flag; flags override a ``--config`` YAML file,
which overrides the recipe's defaults. Heavy libraries load only once training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from empersona.train.recipe import TrainConfig, load_train_config

_LORA = "LoRA"
_OPT = "Optimisation"
_EFF = "Efficiency"
_RUN = "Run"


def _opt(help_text: str, panel: str = _RUN, *names: str) -> Any:
    return typer.Option(*names, help=help_text, rich_help_panel=panel, show_default=False)


def train(
    base: Annotated[str | None, _opt("Base model: Hugging Face id or local folder.")] = None,
    domain: Annotated[str | None, _opt("Domain name (insecure_code, ...) or a chat .jsonl path.")] = None,
    seed: Annotated[int | None, _opt("Seed (LoRA init, data order) (default 0).")] = None,
    out: Annotated[Path | None, _opt("Adapter folder (default adapters/<base>-<domain>-s<seed>).")] = None,
    config: Annotated[Path | None, _opt("YAML file with any of these settings (flags win).")] = None,
    resume: Annotated[bool, _opt("Continue an interrupted run from its last checkpoint in --out.", _RUN, "--resume")] = False,
    quiet: Annotated[bool, _opt("No progress lines.", _RUN, "--quiet")] = False,
    init_adapter: Annotated[Path | None, _opt("Continue training this adapter (sequential fine-tuning).")] = None,
    domain_path: Annotated[Path | None, _opt("Local copy of the domain's file (password-locked sources).")] = None,
    hub_revision: Annotated[str | None, _opt("Commit or tag of the emergent_plus hub dataset (default newest; recorded).")] = None,
    limit: Annotated[int | None, _opt("Train on the first N rows only.")] = None,
    system_prompt: Annotated[str | None, _opt("System-prompt policy: default (the template's own), none, or a text.")] = None,
    holdout: Annotated[float | None, _opt("Fraction held out for an eval loss (default 0).")] = None,
    lora_r: Annotated[int | None, _opt("LoRA rank (default 32).", _LORA)] = None,
    lora_alpha: Annotated[int | None, _opt("LoRA alpha (default 64).", _LORA)] = None,
    lora_dropout: Annotated[float | None, _opt("LoRA dropout (default 0).", _LORA)] = None,
    use_rslora: Annotated[bool | None, _opt("Rank-stabilised LoRA (default on).", _LORA, "--rslora/--no-rslora")] = None,
    target_modules: Annotated[str | None, _opt("Comma-separated modules (default all 7 projections).", _LORA)] = None,
    learning_rate: Annotated[float | None, _opt("Peak learning rate (default 1e-5).", _OPT, "--lr", "--learning-rate")] = None,
    lr_scheduler: Annotated[str | None, _opt("linear | cosine | constant | constant_with_warmup.", _OPT)] = None,
    warmup_steps: Annotated[int | None, _opt("Warm-up steps (default 5).", _OPT)] = None,
    epochs: Annotated[float | None, _opt("Epochs (default 1).", _OPT)] = None,
    max_steps: Annotated[int | None, _opt("Stop after N optimizer steps.", _OPT)] = None,
    batch_size: Annotated[int | None, _opt("Effective batch over all devices (default 16).", _OPT)] = None,
    per_device_batch: Annotated[int | None, _opt("Examples per device per step (default 2).", _OPT)] = None,
    weight_decay: Annotated[float | None, _opt("Weight decay (default 0.01).", _OPT)] = None,
    optimizer: Annotated[str | None, _opt("transformers optimizer name (default adamw_torch).", _OPT)] = None,
    max_length: Annotated[int | None, _opt("Truncate examples to N tokens (default 2048).", _OPT)] = None,
    padding_free: Annotated[bool | None, _opt("Flatten batches, no pad tokens (default on).", _EFF, "--padding-free/--no-padding-free")] = None,
    packing: Annotated[bool | None, _opt("Pack examples into max-length blocks (default off).", _EFF, "--packing/--no-packing")] = None,
    gradient_checkpointing: Annotated[bool | None, _opt("Recompute activations (default on).", _EFF, "--gradient-checkpointing/--no-gradient-checkpointing")] = None,
    precision: Annotated[str | None, _opt("auto | bf16 | fp32 (default auto).", _EFF)] = None,
    qlora: Annotated[bool | None, _opt("4-bit NF4 base (one GPU; needs bitsandbytes).", _EFF, "--qlora/--no-qlora")] = None,
    attn_implementation: Annotated[str | None, _opt("auto | packed_sdpa | varlen | sdpa | eager | flash_attention_2 | flex_attention.", _EFF)] = None,
    deterministic: Annotated[bool | None, _opt("Deterministic kernels (default on).", _EFF, "--deterministic/--no-deterministic")] = None,
    logging_steps: Annotated[int | None, _opt("Progress line every N steps (default 1).")] = None,
    save_steps: Annotated[int | None, _opt("Checkpoint every N steps (default 50).")] = None,
    save_total_limit: Annotated[int | None, _opt("Checkpoints kept (default 2).")] = None,
    keep_checkpoints: Annotated[bool | None, _opt("Keep checkpoints after finishing.", _RUN, "--keep-checkpoints/--no-keep-checkpoints")] = None,
) -> None:
    """Fine-tune a LoRA adapter on one domain (defaults: the 32B recipe of docs/protocol.md)."""
    given = dict(locals())
    overrides = {key: value for key, value in given.items() if key in TrainConfig.model_fields}
    settings = load_train_config(config, overrides)

    from empersona.train.sft import end_distributed
    from empersona.train.sft import train as run_training

    result = run_training(settings, resume=resume, progress=not quiet)
    end_distributed()
    if result.metadata is None:  # a non-main process of a multi-GPU run
        return
    meta = result.metadata
    loss = f"{meta.final_loss:.4f}" if meta.final_loss is not None else "n/a"
    typer.echo(
        f"adapter: {result.out_dir} ({meta.steps} steps, final loss {loss}, {meta.wall_seconds:.0f} s)\n"
        f"evaluate it as: hf/{result.out_dir.resolve()}"
    )
