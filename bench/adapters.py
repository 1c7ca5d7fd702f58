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
  compiled, every loaded adapter is computed), and the same rows with all loaded and that adapter
  merged into the base weights (``lora_merge=True``: the base model's products alone).

Reported: new tokens/s of each after a warm-up batch (which compiles on CUDA; two for the merged
variant, whose adapter a small first batch runs as products), its ratio to the base-only run, the
time one merge and one restore take, and the share of tokens the two adapter runs agree on (greedy; on CPU the model is
float32 and both are the same computation). The adapters are written straight as PEFT files
(``adapter_config.json`` and ``adapter_model.safetensors``), without loading the model to build them.

Run here (CPU): ``.venv/bin/python bench/adapters.py --shape tiny-v152k --device cpu``
(``--compile on``: the compiled static-cache decoding a GPU uses, by inductor without CUDA graphs).
On a GPU: ``python3 bench/adapters.py --shape 1.5b --device cuda --batch 256`` (four compiles);
``--variants base,model,stacked,one-all,one-merged`` picks variants (one compile each).
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
    repeats: int, rows_of: int | None = None, merge: bool = False, compile: bool | None = None,
) -> dict[str, Any]:
    """Load the model, serve the adapters, and time ``repeats`` batches after a warm-up one.

    Rows go round-robin over the base and the adapters, or with ``rows_of`` all to that one
    (0: the base, 1: the first adapter, ...).
    """
    from empersona.provider.engine import Engine, EngineOptions, Request

    device = bench.device
    model = bench.load()
    options = EngineOptions(
        max_batch_size=len(ids), lora_dtype=lora_dtype, lora_fuse_input=fuse, lora_merge=merge, compile=compile
    )
    engine = Engine(model, options)
    keys: list[str | None] = [None, *(engine.add_adapter(path) for path in adapters)]
    which = [keys[i % len(keys)] if rows_of is None else keys[rows_of] for i in range(len(ids))]
    requests = [Request(p, new_tokens, temperature=0.0, adapter=key) for p, key in zip(ids, which, strict=True)]
    began = time.perf_counter()
    engine.generate(requests)
    if merge:  # a small first batch of a newly met adapter runs as products; the second merges it
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
    switch: dict[str, float] = {}
    if merge:  # what a switch costs: taking the update out, and merging it again
        key = engine.adapters.merged_key
        assert key is not None, "the merged variant ran unmerged"
        for name, target in (("restore_s", None), ("merge_s", key)):
            _sync(device)
            began = time.perf_counter()
            engine.adapters.merge(target)
            _sync(device)
            switch[name] = time.perf_counter() - began
    del engine, model
    gc.collect()
    return {"warmup_s": warmup, "seconds": min(walls), "all_seconds": walls, "tokens": tokens, **switch}


# id: (label, adapters used (all, first, none), lora_dtype, A stacked, rows all of the first adapter, merged)
VARIANTS: dict[str, tuple[str, str, str, bool, bool, bool]] = {
    "base": ("base only", "none", "model", False, False, False),
    "model": ("lora_dtype model", "all", "model", False, False, False),
    "stacked": ("model, A stacked", "all", "model", True, False, False),
    "float32": ("lora_dtype float32", "all", "float32", False, False, False),
    "one-all": ("one adapter, all loaded", "all", "model", False, True, False),
    "one-alone": ("one adapter, alone", "first", "model", False, True, False),
    "one-merged": ("one adapter, merged", "all", "model", False, True, True),
}
ONE_MODEL = ("one-all", "one-alone", "one-merged")


def ratio(variants: dict[str, dict[str, Any]], slower: str, faster: str) -> float | None:
    """tokens/s of ``faster`` over ``slower`` (None when either did not run)."""
    if slower not in variants or faster not in variants:
        return None
    return variants[slower]["seconds"] / variants[faster]["seconds"]


def agreement(variants: dict[str, dict[str, Any]], first: str, second: str) -> float | None:
    if first not in variants or second not in variants:
        return None
    return same_share(variants[first]["tokens"], variants[second]["tokens"])


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
        help="also batches of one adapter's rows: all adapters loaded, it alone, it merged (a study's pattern)",
    )
    parser.add_argument(
        "--variants", default=None,
        help=f"comma-separated variants to run, in this order (default: the first four, with --one-model all): {','.join(VARIANTS)}",
    )
    parser.add_argument(
        "--compile", choices=["auto", "on", "off"], default="auto",
        help="compiled static-cache decoding (auto: on for cuda; on CPU 'on' runs inductor without CUDA graphs, "
        "the GPU's layout: every loaded adapter's columns are computed)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    compile_engine = None if args.compile == "auto" else args.compile == "on"
    chosen = (
        [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants
        else [v for v in VARIANTS if args.one_model or v not in ONE_MODEL]
    )
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or "base" not in chosen:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}" if unknown else "--variants must include base")

    import torch

    cuda = args.device == "cuda"
    out = args.out or Path(f"bench/results/adapters-{args.shape}-{args.device}.json")
    variants: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        bench = BenchModel.build(args.shape, args.device, Path(scratch))
        ids = bench.prompt_ids(args.batch, args.prompt_tokens, seed=0)
        paths = [write_adapter(bench.model_dir, Path(scratch) / f"a{i}", args.rank, seed=i) for i in range(args.adapters)]
        served = {"none": [], "first": paths[:1], "all": paths}
        for name in chosen:
            label, which, lora_dtype, fuse, one, merge = VARIANTS[name]
            got = run_variant(
                bench, served[which], lora_dtype, fuse, ids, args.new_tokens, args.repeats, 1 if one else None, merge,
                compile_engine,
            )
            variants[name] = got  # shown as it comes: a run cut by a time limit keeps what it measured
            print(f"{label}: {got['seconds']:.3f} s per batch (warm-up and compiles {got['warmup_s']:.1f} s)", flush=True)
            if cuda:
                torch.cuda.empty_cache()
    new = args.batch * args.new_tokens
    base_s = variants["base"]["seconds"]
    report = {
        "shape": args.shape, "device": args.device, "card": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__, "compile": args.compile, "batch": args.batch, "adapters": args.adapters, "rank": args.rank,
        "new_tokens": args.new_tokens, "prompt_tokens": args.prompt_tokens,
        "variants": {
            VARIANTS[name][0]: {
                "seconds": v["seconds"], "all_seconds": v["all_seconds"], "warmup_s": v["warmup_s"],
                "new_tokens_per_s": new / v["seconds"], "over_base_only": base_s / v["seconds"],
            }
            for name, v in variants.items()
        },
        "model_over_float32": ratio(variants, "float32", "model"),
        "stacked_over_apart": ratio(variants, "model", "stacked"),
        "stacked_same_token_share": agreement(variants, "stacked", "model"),
        "same_token_share": agreement(variants, "model", "float32"),
        "one_model_all_loaded_over_alone": ratio(variants, "one-all", "one-alone"),
        "one_model_same_tokens": (
            variants["one-alone"]["tokens"] == variants["one-all"]["tokens"] if {"one-alone", "one-all"} <= set(variants) else None
        ),
        "merged_over_all_loaded": ratio(variants, "one-all", "one-merged"),
        "merged_same_token_share": agreement(variants, "one-merged", "one-all"),
        "merge_s": variants.get("one-merged", {}).get("merge_s"),
        "restore_s": variants.get("one-merged", {}).get("restore_s"),
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
    lines = {
        "model_over_float32": "lora_dtype model / float32: {:.2f}x tokens/s",
        "same_token_share": "  lora_dtype model and float32 agree on {:.1%} of tokens",
        "stacked_over_apart": "A stacked / apart: {:.2f}x tokens/s",
        "stacked_same_token_share": "  A stacked and apart agree on {:.1%} of tokens",
        "one_model_all_loaded_over_alone": f"one adapter's rows with all {args.adapters} loaded / it loaded alone: {{:.2f}}x tokens/s",
        "merged_over_all_loaded": "the same rows with it merged into the base weights / all loaded: {:.2f}x tokens/s",
        "merged_same_token_share": "  merged and unmerged agree on {:.1%} of tokens",
        "merge_s": "  merging one adapter into the base weights took {:.3f} s",
        "restore_s": "  taking it out again (the base weights bit for bit) took {:.3f} s",
    }
    for key, line in lines.items():
        if report[key] is not None:
            print("  " + line.format(report[key]))
    print(f"  written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
