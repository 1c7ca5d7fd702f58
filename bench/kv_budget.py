"""Benchmark: what keeping the static KV caches within a byte budget costs the ``empersona/`` engine.

A battery alternates short answers (forced choices, scores) with long ones (harmfulness answers),
so the engine's static caches come in several lengths. This runs waves of ``--batch`` greedy rows
that alternate between two answer lengths (two cache lengths), on one engine, twice side by side:

- ``unlimited``: no budget, both caches kept and reused (the engine before the budget);
- ``one cache``: a budget with room for the longer cache only, so every wave drops the other
  cache and allocates its own anew (on CUDA, CUDA graph trees re-record the compiled step's graph
  for the new addresses; nothing is recompiled).

Reported per variant: wall seconds and new tokens/s over the timed waves, caches dropped, bytes of
the caches kept at the end, peak GPU memory (CUDA), and whether every wave's tokens equal the
unlimited run's. The same engine serves both variants (its compiled graphs are shared; a warm-up
wave of each length compiles first).

Run here (CPU, the tiny model, static cache run eagerly):
``.venv/bin/python bench/kv_budget.py --shape tiny --device cpu --batch 8``.
On the H100: ``python3 bench/kv_budget.py --shape 0.5b`` (two compiles of about 30 s, then seconds).
Writes ``bench/results/kv-budget-<shape>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import BenchModel, _sync  # noqa: E402


def run_waves(engine: Any, waves: list[list[Any]], device: Any) -> tuple[float, list[list[tuple[int, ...]]]]:
    """Generate each wave in turn; wall seconds and every wave's tokens."""
    _sync(device)
    start = time.perf_counter()
    out = [[c.tokens for c in engine.generate(wave)] for wave in waves]
    _sync(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="0.5b", choices=["tiny", "0.5b", "1.5b"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--short", type=int, default=8, help="new tokens of the short waves")
    parser.add_argument("--long", type=int, default=256, help="new tokens of the long waves")
    parser.add_argument("--rounds", type=int, default=3, help="timed (short, long) pairs of waves")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from empersona.provider.engine import Engine, EngineOptions, Request

    cuda = args.device == "cuda"
    out = args.out or Path(f"bench/results/kv-budget-{args.shape}-{args.device}.json")
    report: dict[str, Any] = {
        "shape": args.shape, "device": args.device, "card": torch.cuda.get_device_name(0) if cuda else None,
        "batch": args.batch, "prompt_tokens": args.prompt_tokens, "short": args.short, "long": args.long,
        "rounds": args.rounds, "torch": torch.__version__, "variants": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        bench = BenchModel.build(args.shape, args.device, Path(scratch))
        device = bench.device
        engine = Engine(bench.load(), EngineOptions(max_batch_size=args.batch, static_cache=True))
        ids = bench.prompt_ids(args.batch, args.prompt_tokens, seed=args.batch)
        short = [Request(p, args.short, temperature=0.0) for p in ids]
        long = [Request(p, args.long, temperature=0.0) for p in ids]
        waves = [short, long] * args.rounds
        new_tokens = args.rounds * args.batch * (args.short + args.long)

        engine.kv_cache_budget = None
        began = time.perf_counter()
        run_waves(engine, [short, long], device)  # compiles (CUDA) both cache lengths
        report["warmup_s"] = time.perf_counter() - began
        lengths = sorted(length for _rows, length in engine._static_caches)
        report["cache_lengths"] = lengths
        budgets = {"unlimited": None, "one cache": engine.cache_bytes(engine._bucket_rows(args.batch), lengths[-1])}
        reference = None
        for name, budget in budgets.items():
            engine.kv_cache_budget = budget
            engine._static_caches.clear()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            dropped = engine.stats.static_caches_dropped
            run_waves(engine, [short], device)  # allocate the first cache untimed, as in a warm engine
            seconds, tokens = run_waves(engine, waves, device)
            reference = reference or tokens
            report["variants"][name] = {
                "budget_bytes": budget,
                "seconds": seconds,
                "new_tokens_per_s": new_tokens / seconds,
                "caches_dropped": engine.stats.static_caches_dropped - dropped,
                "kept_cache_bytes": engine.kept_cache_bytes(),
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                "same_tokens": tokens == reference,
            }
    base = report["variants"]["unlimited"]["new_tokens_per_s"]
    report["one_cache_over_unlimited"] = report["variants"]["one cache"]["new_tokens_per_s"] / base
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(
        f"{args.shape} on {report['card'] or args.device}: {args.rounds} x (wave of {args.batch} rows x {args.short} "
        f"new tokens, wave x {args.long}); cache lengths {lengths}; warm-up {report['warmup_s']:.1f} s"
    )
    print(f"  {'variant':<10} {'wall s':>8} {'new tok/s':>11} {'dropped':>8} {'kept GiB':>9} {'peak GiB':>9}  same tokens")
    for name, row in report["variants"].items():
        peak = f"{row['peak_gpu_gib']:.2f}" if row["peak_gpu_gib"] is not None else "n/a"
        print(
            f"  {name:<10} {row['seconds']:8.2f} {row['new_tokens_per_s']:11,.0f} {row['caches_dropped']:8d} "
            f"{row['kept_cache_bytes'] / 2**30:9.3f} {peak:>9}  {row['same_tokens']}"
        )
    print(f"  one cache / unlimited: {report['one_cache_over_unlimited']:.3f}x tokens/s; written to {out}")
    return 0 if all(row["same_tokens"] for row in report["variants"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
