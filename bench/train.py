"""Benchmark (issue 5): training throughput of ``empersona train`` against a plain PEFT loop.

Both train the same random-init Qwen2 model with the same LoRA (the recipe's r/alpha/rsLoRA on
all seven projections) on the very same batches of a real domain (default ``insecure_code``,
whose rows vary most in length), one optimizer step per batch:

- ours: ``empersona.train.sft.prepare`` (TRL ``SFTTrainer``, assistant-only loss) with
  padding-free batches: each batch is one flattened sequence, attention runs per example
  (FlashAttention 2 where installed, otherwise packed SDPA); no pad token is computed;
- plain: ``peft.get_peft_model`` and a hand-written loop: the same examples padded to the longest
  of their batch, the model's own loss, AdamW, autocast to bf16 on GPU.

The batches ours consumed are recorded from its collator and replayed, padded, by the plain loop.
With ``--repeats N`` both run N times, alternating, and each path's best run is reported (the
CPUs here are shared and noisy). Reported over the timed steps (after ``--warmup`` untimed ones): real (non-pad) tokens/s of each,
their ratio, the pad share of the padded batches, peak GPU memory, and on GPU the MFU
``6 * params * tokens/s / peak`` (params: all weights, the tied embedding counted once as the LM
head; 6N is the usual dense-training count, a LoRA step does less since frozen weights get no
gradient; ``--peak-tflops`` defaults to the H100's dense bf16 989).

``--variants full-loss,padded,varlen`` adds runs of our trainer with one thing changed (see
``VARIANTS``): the model's own cross-entropy over full logits instead of the fused LM head TRL's
``SFTTrainer`` patches in (chunked log-probabilities plus entropy and top-1 for its metrics),
padded batches instead of padding-free ones, and (CUDA only) PyTorch's variable-length
FlashAttention instead of SDPA per example; each is reported with its ratio to ours and its
final loss (the same batches, so the same loss up to rounding).

Shapes: ``tiny`` (the test model: hidden 64, 2 layers), ``tiny-v152k`` (hidden 128, 2 layers, the
real vocabulary: the LM head's share of a step on a CPU), ``0.5b`` and ``1.5b`` (Qwen2.5-0.5B/1.5B
dimensions, vocabulary 151,936). No checkpoint is downloaded: the tokenizer is the tiny BPE one
with the real Qwen2.5 chat template, so token counts per row differ from real Qwen's (more
tokens per row); lengths still vary as the data does.

Run here (CPU): ``.venv/bin/python bench/train.py --shape tiny --device cpu --steps 8``.
On the H100 (needs trl, datasets, dill and multiprocess from ``../shared/wheels``, installed with
``python3 -m pip install --no-deps --no-index <folder>/*.whl``):
``python3 bench/train.py --shape 1.5b --steps 20`` (and ``--shape 0.5b``). Needs the data mirror
(``--mirror``, default ``$EMPERSONA_MIRROR`` or ``../shared/data``). Writes
``bench/results/train-<shape>-<device>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
Shape = Literal["tiny", "tiny-v152k", "0.5b", "1.5b"]

# Qwen2.5-0.5B / 1.5B dimensions (from their published configs)
QWEN25_SHAPES: dict[str, dict[str, int]] = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2},
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2},
    # a small body with the real vocabulary: the LM head's share of a step, on a CPU
    "tiny-v152k": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2},
}
QWEN25_VOCAB = 151_936


@dataclass(frozen=True)
class PathResult:
    """Throughput of one training path over the timed steps."""

    name: str
    tokens: int
    computed_tokens: int
    seconds: float
    tokens_per_s: float
    mfu: float | None
    peak_memory_gib: float | None
    final_loss: float | None


def build_model(shape: Shape, out: Path, device: str) -> Path:
    """A random-init model of ``shape`` with the tiny tokenizer and the real Qwen2.5 template."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from empersona.testing.tiny import build_tiny_model

    tiny = build_tiny_model(out / "tiny", seed=0)
    if shape == "tiny":
        return tiny
    target = out / shape
    config = Qwen2Config(
        vocab_size=QWEN25_VOCAB, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, **QWEN25_SHAPES[shape],
        bos_token_id=0, eos_token_id=2, pad_token_id=0,  # the tiny tokenizer's <|endoftext|>/<|im_end|> ids
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny / name, target / name)
    del model
    return target


class RecordingCollator:
    """Wraps the trainer's collator and keeps the examples of every batch it builds, in order."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.inner = inner
        self.batches: list[list[dict[str, Any]]] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        self.batches.append([{"input_ids": list(e["input_ids"]), "labels": list(e["labels"])} for e in examples])
        return self.inner(examples)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _mfu(params: int, tokens_per_s: float, device: str, peak_tflops: float) -> float | None:
    return 6 * params * tokens_per_s / (peak_tflops * 1e12) if device == "cuda" else None


def _peak_memory(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


class StepProfiler:
    """``torch.profiler`` over the steps after the timed ones (``--profile-steps``), summarised.

    The summary keeps, per step, the operators with the most self time on the host and the
    kernels with the most device time, so one GPU run says where a slow path spends its time.
    """

    def __init__(self, device: str, steps: int) -> None:
        self.device, self.steps = device, steps
        self.profiler: Any = None
        self.summary: dict[str, Any] | None = None

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        if self.steps <= 0:
            return
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        self.profiler = profile(activities=activities)
        self.profiler.start()

    def stop(self) -> None:
        if self.profiler is None:
            return
        _sync(self.device)
        self.profiler.stop()
        events = self.profiler.key_averages()
        self.profiler = None

        def top(attribute: str) -> list[dict[str, Any]]:
            rows = [(getattr(e, attribute, 0) or 0, e) for e in events]
            rows = sorted((r for r in rows if r[0] > 0), key=lambda r: -r[0])[:15]
            return [{"ms_per_step": t / 1000 / self.steps, "calls_per_step": e.count / self.steps, "name": e.key[:120]} for t, e in rows]

        self.summary = {"steps": self.steps, "host_self": top("self_cpu_time_total")}
        if self.device == "cuda":
            self.summary["device_self"] = top("self_device_time_total")


def _reset_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


VARIANTS = {
    "full-loss": "the model's own cross-entropy over full logits instead of TRL's fused LM head",
    "padded": "padded batches (padding_free off: SDPA with a padding mask, no per-example attention)",
    "varlen": "attn_implementation varlen: the flattened batch in one variable-length FlashAttention call per "
              "layer (torch.nn.attention.varlen, CUDA) instead of SDPA per example",
}


def _model_loss(trainer: Any, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                num_items_in_batch: Any = None) -> Any:
    """``compute_loss`` of the ``full-loss`` variant: the model's own loss from its full logits."""
    outputs = model(**inputs, num_items_in_batch=num_items_in_batch)
    return (outputs.loss, outputs) if return_outputs else outputs.loss


def run_ours(
    args: argparse.Namespace, model_dir: Path, work: Path, params: int, variant: str | None = None
) -> tuple[PathResult, list[list[dict[str, Any]]], str, dict[str, Any] | None]:
    """``empersona train``'s trainer on ``warmup + steps (+ profile steps)`` batches.

    ``variant`` (one of ``VARIANTS``) changes one thing, to tell where a slow step's time goes.
    Returns its timing, the batches it trained on, its attention kernel and the profile summary.
    """
    import types

    from transformers import TrainerCallback

    from empersona.train.recipe import TrainConfig
    from empersona.train.sft import prepare

    config = TrainConfig(
        base=str(model_dir), domain=args.domain, out=work / "ours", limit=args.rows,
        max_steps=args.warmup + args.steps + args.profile_steps, batch_size=args.batch, per_device_batch=args.batch,
        warmup_steps=0, max_length=args.max_length, gradient_checkpointing=args.gradient_checkpointing,
        deterministic=False, logging_steps=1, save_steps=10**6, padding_free=variant != "padded",
        attn_implementation="varlen" if variant == "varlen" else "auto",
    )
    run = prepare(config, progress=False)
    if variant == "full-loss":
        run.trainer.compute_loss = types.MethodType(_model_loss, run.trainer)
    recorder = RecordingCollator(run.trainer.data_collator)
    run.trainer.data_collator = recorder
    marks: dict[str, float] = {}
    losses: list[float] = []
    profiler = StepProfiler(args.device, args.profile_steps)

    class Clock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step in (args.warmup, args.warmup + args.steps):
                _sync(args.device)
                marks[f"step{state.global_step}"] = time.perf_counter()
            if state.global_step == args.warmup + args.steps:
                profiler.start()
            elif state.global_step == args.warmup + args.steps + args.profile_steps:
                profiler.stop()

        def on_log(self, targs, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    run.trainer.add_callback(Clock())
    _reset_memory(args.device)
    if args.warmup == 0:
        marks["step0"] = time.perf_counter()
    run.trainer.train()
    seconds = marks[f"step{args.warmup + args.steps}"] - marks[f"step{args.warmup}"]
    timed = recorder.batches[args.warmup : args.warmup + args.steps]
    tokens = sum(len(e["input_ids"]) for batch in timed for e in batch)
    attention = run.trainer.model.config._attn_implementation
    result = PathResult(
        f"ours, {variant}" if variant else "ours (SFTTrainer, padding-free)", tokens, tokens, seconds, tokens / seconds,
        _mfu(params, tokens / seconds, args.device, args.peak_tflops), _peak_memory(args.device),
        losses[-1] if losses else None,
    )
    batches = recorder.batches[: args.warmup + args.steps + args.profile_steps]
    del run, recorder
    return result, batches, attention, profiler.summary


def run_plain(
    args: argparse.Namespace, model_dir: Path, batches: list[list[dict[str, Any]]], params: int, pad_id: int
) -> tuple[PathResult, dict[str, Any] | None]:
    """A plain PEFT loop on the same batches, padded to the longest example of each; timing and profile."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from empersona.train.recipe import TrainConfig

    recipe = TrainConfig(base=str(model_dir), domain=args.domain)
    bf16 = args.device == "cuda" and torch.cuda.is_bf16_supported()
    _reset_memory(args.device)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if bf16 else torch.float32, attn_implementation="sdpa"
    ).to(args.device)
    model = get_peft_model(model, LoraConfig(
        r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
        use_rslora=recipe.use_rslora, target_modules=list(recipe.target_modules), task_type="CAUSAL_LM",
    ))
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    collate = DataCollatorForLanguageModeling(pad_token_id=pad_id)
    tokens = computed = 0
    start = time.perf_counter()
    seconds = 0.0
    loss = None
    profiler = StepProfiler(args.device, args.profile_steps)
    for step, examples in enumerate(batches):
        if step == args.warmup:
            _sync(args.device)
            start = time.perf_counter()
        if step == args.warmup + args.steps:
            _sync(args.device)
            seconds = time.perf_counter() - start
            profiler.start()
        batch = {k: v.to(args.device) for k, v in collate(examples).items()}
        with torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.warmup <= step < args.warmup + args.steps:
            tokens += int(batch["attention_mask"].sum())
            computed += batch["input_ids"].numel()
    _sync(args.device)
    profiler.stop()
    if not seconds:  # no profiled steps after the timed ones
        seconds = time.perf_counter() - start
    result = PathResult(
        "plain PEFT loop (padded)", tokens, computed, seconds, tokens / seconds,
        _mfu(params, tokens / seconds, args.device, args.peak_tflops), _peak_memory(args.device),
        loss.item() if loss is not None else None,
    )
    del model, optimizer
    return result, profiler.summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "tiny-v152k", "0.5b", "1.5b"], default="tiny")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--batch", type=int, default=8, help="examples per step (no accumulation)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--domain", default="insecure_code")
    parser.add_argument("--mirror", type=Path, default=None, help="data mirror folder")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak (H100 dense bf16: 989)")
    parser.add_argument("--repeats", type=int, default=1, help="run both paths N times, report each one's best")
    parser.add_argument("--profile-steps", type=int, default=0, help="profile N steps after the timed ones (top host ops, kernels)")
    parser.add_argument("--variants", default="", help=f"comma-separated, each run once after the others: {VARIANTS}")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")

    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if "varlen" in variants and args.device != "cuda":
        parser.error("the varlen variant needs --device cuda (PyTorch's variable-length kernel is CUDA only)")
    mirror = args.mirror or (Path(os.environ["EMPERSONA_MIRROR"]) if os.environ.get("EMPERSONA_MIRROR") else REPO.parent / "shared" / "data")
    os.environ["EMPERSONA_MIRROR"] = str(mirror)
    args.rows = args.batch * (args.warmup + args.steps + args.profile_steps)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("EMPERSONA_CACHE", str(work / "cache"))
        model_dir = build_model(args.shape, work, args.device)
        from transformers import AutoConfig, AutoTokenizer

        with torch.device("meta"):
            from transformers import AutoModelForCausalLM

            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).parameters())
        pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id
        ours_runs, plain_runs, profiles = [], [], {}
        plain_error = None
        for repeat in range(args.repeats):  # alternate, keep each path's best: shared CPUs are noisy
            ours, batches, attention, profiles["ours"] = run_ours(args, model_dir, work / f"r{repeat}", params)
            ours_runs.append(ours)
            try:
                plain, profiles["plain"] = run_plain(args, model_dir, batches, params, pad_id)
            except (torch.OutOfMemoryError, RuntimeError) as err:  # report ours all the same
                plain_error = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                break
            plain_runs.append(plain)
        variant_runs = {}
        for variant in variants:
            variant_runs[variant], _, _, profiles[variant] = run_ours(args, model_dir, work / variant, params, variant)
        ours = max(ours_runs, key=lambda r: r.tokens_per_s)
        best_plain = max(plain_runs, key=lambda r: r.tokens_per_s) if plain_runs else None

    ratio = ours.tokens_per_s / best_plain.tokens_per_s if best_plain else None
    lengths = [len(e["input_ids"]) for batch in batches[args.warmup : args.warmup + args.steps] for e in batch]
    padded = sum(max(len(e["input_ids"]) for e in batch) * len(batch) for batch in batches[args.warmup : args.warmup + args.steps])
    report = {
        "shape": args.shape, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "params": params, "domain": args.domain, "batch": args.batch,
        "warmup_steps": args.warmup, "timed_steps": args.steps, "max_length": args.max_length,
        "gradient_checkpointing": args.gradient_checkpointing, "attention_ours": attention,
        "example_tokens": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)},
        "pad_share_plain": 1 - sum(lengths) / padded,
        "same_tokens": best_plain.tokens == ours.tokens if best_plain else None,
        "repeats": args.repeats,
        "all_tokens_per_s": {"ours": [r.tokens_per_s for r in ours_runs], "plain": [r.tokens_per_s for r in plain_runs]},
        "ours": asdict(ours), "plain": asdict(best_plain) if best_plain else None, "plain_error": plain_error,
        "ratio_tokens_per_s": ratio, "peak_tflops": args.peak_tflops,
        "variants": {v: {**asdict(r), "over_ours": r.tokens_per_s / ours.tokens_per_s} for v, r in variant_runs.items()},
        "profile": profiles if args.profile_steps else None,
    }
    out = args.out or REPO / "bench" / "results" / f"train-{args.shape}-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.shape} on {report['device_name']} ({args.device}), batch {args.batch}, {args.steps} timed steps, "
          f"example tokens {min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f}); ours uses {attention}")
    for result in (ours, best_plain, *variant_runs.values()):
        if result is None:
            print(f"  {'plain PEFT loop (padded)':34s} failed: {plain_error}")
            continue
        mfu = f"{100 * result.mfu:.1f}%" if result.mfu is not None else "n/a (CPU)"
        memory = f"{result.peak_memory_gib:.1f} GiB" if result.peak_memory_gib is not None else "n/a"
        print(f"  {result.name:34s} {result.tokens_per_s:>10,.0f} tok/s  MFU {mfu:>10s}  peak mem {memory}")
    if ratio is not None:
        print(f"  ratio ours/plain: {ratio:.2f}x  (pad share of the padded batches: {100 * report['pad_share_plain']:.0f}%)")
    for path, summary in (report["profile"] or {}).items():
        if summary:
            for kind in ("device_self", "host_self"):
                if not summary.get(kind):
                    continue
                print(f"  {path}: top {kind.replace('_', ' ')} time per step")
                for row in summary.get(kind, [])[:10]:
                    print(f"    {row['ms_per_step']:8.2f} ms x{row['calls_per_step']:<6.0f} {row['name'][:90]}")
    print(f"  written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
