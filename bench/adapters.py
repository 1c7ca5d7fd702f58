"""Benchmark: the cost of serving LoRA adapters in one batch, and of their dtype (``lora_dtype``).

The battery's mixed batches hold rows of the base model and of six fine-tunes. This runs one
batch of ``--batch`` rows spread round-robin over the base and ``--adapters`` random LoRA adapters
(rank ``--rank`` on all seven projections, as the recipe trains them) with a fixed answer length,
four ways, each on a freshly loaded model:

- ``base only``: no adapter loaded, every row the base model (the floor);
- ``lora_dtype model``: adapters applied in the model's dtype (the default: bf16 on a GPU), A
  applied in a product of its own (the default);
- ``model, A stacked``: the same with the A factors stacked under each base weight
  (``lora_fuse_input=True``: one matrix product gives a layer's output and the adapters' A x);
- ``lora_dtype float32``: adapters in float32 under a 16-bit base, as PEFT keeps them (A apart:
  the dtypes differ);
- with ``--one-model``, a study's pattern (one model evaluated at a time, every adapter met so far
  loaded): all rows of the first adapter with all adapters loaded, against the same rows with it
  loaded alone (run eagerly, a batch computes only the adapters it holds: the two should match;
  compiled, every loaded adapter is computed).

Reported: new tokens/s of each after a warm-up batch (which compiles on CUDA), its ratio to the
base-only run, and the share of tokens the two adapter runs agree on (greedy; on CPU the model is
float32 and both are the same computation). The adapters are written straight as PEFT files
(``adapter_config.json`` and ``adapter_model.safetensors``), without loading the model to build them.

Run here (CPU): ``.venv/bin/python bench/adapters.py --shape tiny-v152k --device cpu``.
On a GPU: ``python3 bench/adapters.py --shape 1.5b --device cuda --batch 256`` (four compiles).
Writes ``bench/results/adapters-<shape>-<device>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import QWEN25_SHAPES, BenchModel, _sync  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_adapter(model_dir: Path, out: Path, rank: int, seed: int) -> Path:
    """A random LoRA adapter of the model in ``model_dir`` (rsLoRA, alpha 2r), as PEFT saves one."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    shapes = {  # (in, out) of each projection
        "q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
        "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden),
    }
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for layer in range(config.num_hidden_layers):
        for name, (fan_in, fan_out) in shapes.items():
            block = "self_attn" if name in TARGETS[:4] else "mlp"
            key = f"base_model.model.model.layers.{layer}.{block}.{name}"
            state[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
            state[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "adapter_model.safetensors"))
    LoraConfig(
        r=rank, lora_alpha=2 * rank, use_rslora=True, target_modules=list(TARGETS), task_type="CAUSAL_LM",
        base_model_name_or_path=str(model_dir),
    ).save_pretrained(str(out))
    return out


def same_share(first: list[tuple[int, ...]], second: list[tuple[int, ...]]) -> float:
    """The share of token positions two runs over the same prompts agree on."""
    pairs = [(a, b) for x, y in zip(first, second, strict=True) for a, b in zip(x, y, strict=True)]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else 1.0


def run_variant(
    bench: BenchModel, adapters: list[Path], lora_dtype: str, fuse: bool, ids: list[tuple[int, ...]], new_tokens: int,
    repeats: int, rows_of: int | None = None,
) -> dict[str, Any]:
    """Load the model, serve the adapters, and time ``repeats`` batches after a warm-up one.

    Rows go round-robin over the base and the adapters, or with ``rows_of`` all to that one
    (0: the base, 1: the first adapter, ...).
    """
    from empersona.provider.engine import Engine, EngineOptions, Request

    device = bench.device
    model = bench.load()
    engine = Engine(model, EngineOptions(max_batch_size=len(ids), lora_dtype=lora_dtype, lora_fuse_input=fuse))
    keys: list[str | None] = [None, *(engine.add_adapter(path) for path in adapters)]
    which = [keys[i % len(keys)] if rows_of is None else keys[rows_of] for i in range(len(ids))]
    requests = [Request(p, new_tokens, temperature=0.0, adapter=key) for p, key in zip(ids, which, strict=True)]
    began = time.perf_counter()
    engine.generate(requests)
    _sync(device)
    warmup = time.perf_counter() - began
    walls = []
    tokens: list[tuple[int, ...]] = []
    for _ in range(repeats):
        _sync(device)
        began = time.perf_counter()
        tokens = [c.tokens for c in engine.generate(requests)]
        _sync(device)
        walls.append(time.perf_counter() - began)
    del engine, model
    gc.collect()
    return {"warmup_s": warmup, "seconds": min(walls), "all_seconds": walls, "tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny-v152k", choices=["tiny", *QWEN25_SHAPES])
    parser.add_argument("--device", default="cpu", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=6)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed batches per variant; the best is kept")
    parser.add_argument(
        "--one-model", action="store_true",
        help="also batches of one adapter's rows with all adapters loaded against it loaded alone (a study's pattern)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    cuda = args.device == "cuda"
    out = args.out or Path(f"bench/results/adapters-{args.shape}-{args.device}.json")
    variants: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        bench = BenchModel.build(args.shape, args.device, Path(scratch))
        ids = bench.prompt_ids(args.batch, args.prompt_tokens, seed=0)
        paths = [write_adapter(bench.model_dir, Path(scratch) / f"a{i}", args.rank, seed=i) for i in range(args.adapters)]
        plan = {
            "base only": ([], "model", False),
            "lora_dtype model": (paths, "model", False),
            "model, A stacked": (paths, "model", True),
            "lora_dtype float32": (paths, "float32", False),
        }
        one_model = {"one adapter, all loaded": (paths, 1), "one adapter, alone": (paths[:1], 1)} if args.one_model else {}
        for name, (adapters, lora_dtype, fuse) in plan.items():
            variants[name] = run_variant(bench, adapters, lora_dtype, fuse, ids, args.new_tokens, args.repeats)
            got = variants[name]  # shown as it comes: a run cut by a time limit keeps what it measured
            print(f"{name}: {got['seconds']:.3f} s per batch (warm-up and compiles {got['warmup_s']:.1f} s)", flush=True)
            if cuda:
                torch.cuda.empty_cache()
        for name, (adapters, rows_of) in one_model.items():
            variants[name] = run_variant(bench, adapters, "model", False, ids, args.new_tokens, args.repeats, rows_of)
            print(f"{name}: {variants[name]['seconds']:.3f} s per batch", flush=True)
            if cuda:
                torch.cuda.empty_cache()
    new = args.batch * args.new_tokens
    base_s = variants["base only"]["seconds"]
    model_tokens, fp32_tokens = variants["lora_dtype model"]["tokens"], variants["lora_dtype float32"]["tokens"]
    report = {
        "shape": args.shape, "device": args.device, "card": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__, "batch": args.batch, "adapters": args.adapters, "rank": args.rank,
        "new_tokens": args.new_tokens, "prompt_tokens": args.prompt_tokens,
        "variants": {
            name: {
                "seconds": v["seconds"], "all_seconds": v["all_seconds"], "warmup_s": v["warmup_s"],
                "new_tokens_per_s": new / v["seconds"], "over_base_only": base_s / v["seconds"],
            }
            for name, v in variants.items()
        },
        "model_over_float32": variants["lora_dtype float32"]["seconds"] / variants["lora_dtype model"]["seconds"],
        "stacked_over_apart": variants["lora_dtype model"]["seconds"] / variants["model, A stacked"]["seconds"],
        "stacked_same_token_share": same_share(variants["model, A stacked"]["tokens"], model_tokens),
        "same_token_share": same_share(model_tokens, fp32_tokens),
        "one_model_all_loaded_over_alone": (
            variants["one adapter, alone"]["seconds"] / variants["one adapter, all loaded"]["seconds"] if one_model else None
        ),
        "one_model_same_tokens": (
            variants["one adapter, alone"]["tokens"] == variants["one adapter, all loaded"]["tokens"] if one_model else None
        ),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(
        f"{args.shape} on {report['card'] or args.device}: {args.batch} rows over the base and {args.adapters} "
        f"adapters (r={args.rank}), {args.new_tokens} new tokens each; best of {args.repeats}"
    )
    print(f"  {'variant':<24} {'wall s':>8} {'new tok/s':>10} {'vs base only':>13} {'warm-up s':>10}")
    for name, row in report["variants"].items():
        print(f"  {name:<24} {row['seconds']:8.3f} {row['new_tokens_per_s']:10,.0f} {row['over_base_only']:12.2f}x {row['warmup_s']:10.1f}")
    print(
        f"  lora_dtype model / float32: {report['model_over_float32']:.2f}x tokens/s; the two agree on "
        f"{100 * report['same_token_share']:.1f}% of tokens; A stacked / apart: {report['stacked_over_apart']:.2f}x "
        f"tokens/s, agreeing on {100 * report['stacked_same_token_share']:.1f}% of tokens; written to {out}"
    )
    if report["one_model_all_loaded_over_alone"] is not None:
        print(
            f"  one adapter's rows with all {args.adapters} loaded: {report['one_model_all_loaded_over_alone']:.2f}x the "
            "tokens/s of the same rows with it loaded alone"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
