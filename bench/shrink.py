"""Benchmark: rounds that go on with their live rows only (``shrink_at``) against full rounds.

A harmfulness round samples up to 512 new tokens per row, and its answers end at very different
lengths (a refusal after a few dozen tokens, a compliant answer after hundreds, some at the cap).
Without shrinking, a round decodes every row until its longest answer ends; with it, once at most
half of the rows are still generating, the rest go on in a batch of their size (dynamic cache) or
of their power-of-two bucket (static cache).

Each row here stops at a length drawn from a made-up mixture, seeded and printed: a share
``--short-share`` of rows end after 16-96 tokens, a share ``--cap-share`` run to ``--max-new``, the
others end uniformly in between (greedy decoding of a random model that emits no EOS, the lengths
set per row through ``max_new_tokens``, which stops a row as an EOS would). One engine runs the
same waves with ``shrink_at`` 0 (off) and ``--shrink-at`` (default: the engine's, 0.75 on a
dynamic cache; 0.5 where the engine's is off, as when compiling on a GPU), alternating
``--repeats`` times; each
variant's best wall time is reported with new tokens/s, rows x steps decoded, rounds shrunk, and
whether the tokens equal the unshrunk run's, and each variant's first (warm-up) round, which on a
GPU holds its compiles: the fixed cost to set against the gain.

Run here (CPU): ``.venv/bin/python bench/shrink.py --shape tiny-v152k --device cpu``.
On a GPU: ``python3 bench/shrink.py --shape 1.5b --device cuda --batch 256`` (static cache and
compiled steps: each new row bucket is one more compile). Writes ``bench/results/shrink-<shape>-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import QWEN25_SHAPES, BenchModel, _sync  # noqa: E402


def answer_lengths(rows: int, max_new: int, short_share: float, cap_share: float, seed: int) -> list[int]:
    """Made-up answer lengths of one round: short refusals, answers at the cap, the rest in between."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        draw = rng.random()
        if draw < short_share:
            out.append(rng.randint(16, min(96, max_new)))
        elif draw < short_share + cap_share:
            out.append(max_new)
        else:
            out.append(rng.randint(min(96, max_new), max_new))
    return out


def run_variant(engine: Any, waves: list[list[Any]], shrink_at: float, device: Any) -> dict[str, Any]:
    """Generate every wave with ``shrink_at``; wall time, tokens and the engine's counters."""
    engine.shrink_at = shrink_at
    before = dict(engine.stats.summary())
    _sync(device)
    began = time.perf_counter()
    tokens = [[c.tokens for c in engine.generate(wave)] for wave in waves]
    _sync(device)
    seconds = time.perf_counter() - began
    after = engine.stats.summary()
    return {
        "seconds": seconds,
        "tokens": tokens,
        "decode_row_steps": after["decode_row_steps"] - before["decode_row_steps"],
        "shrunk_rounds": after["shrunk_rounds"] - before["shrunk_rounds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny-v152k", choices=["tiny", *QWEN25_SHAPES])
    parser.add_argument("--device", default="cpu", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=64, help="rows per round")
    parser.add_argument("--waves", type=int, default=2, help="rounds per run, each with its own lengths")
    parser.add_argument("--max-new", type=int, default=256, help="the cap on new tokens (the battery: 512)")
    parser.add_argument("--short-share", type=float, default=0.3, help="share of rows ending after 16-96 tokens")
    parser.add_argument("--cap-share", type=float, default=0.2, help="share of rows running to --max-new")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per variant; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shrink-at", type=float, default=None, help="the shrinking run's shrink_at")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from empersona.provider.engine import SHRINK_AT_STATIC, Engine, EngineOptions, Request

    cuda = args.device == "cuda"
    out = args.out or Path(f"bench/results/shrink-{args.shape}-{args.device}.json")
    with tempfile.TemporaryDirectory() as scratch:
        bench = BenchModel.build(args.shape, args.device, Path(scratch))
        device = bench.device
        model = bench.load()
        engine = Engine(model, EngineOptions(max_batch_size=args.batch))
        ids = bench.prompt_ids(args.batch, args.prompt_tokens, seed=args.seed)
        lengths = [
            answer_lengths(args.batch, args.max_new, args.short_share, args.cap_share, args.seed + wave)
            for wave in range(args.waves)
        ]
        waves = [[Request(p, n, temperature=0.0) for p, n in zip(ids, wave, strict=True)] for wave in lengths]
        new_tokens = sum(sum(wave) for wave in lengths)
        shrink_at = args.shrink_at if args.shrink_at is not None else engine.shrink_at or SHRINK_AT_STATIC
        shrink = f"shrink_at {shrink_at:g}"
        settings = {"full rounds": 0.0, shrink: shrink_at}
        warmup = {}
        for name, value in settings.items():  # warm-up: compiles (CUDA) every row bucket each variant uses
            began = time.perf_counter()
            run_variant(engine, waves[:1], value, device)
            warmup[name] = time.perf_counter() - began
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
        for _ in range(args.repeats):
            for name, shrink_at in settings.items():
                runs[name].append(run_variant(engine, waves, shrink_at, device))
    reference = runs["full rounds"][0]["tokens"]
    variants = {}
    for name, results in runs.items():
        best = min(results, key=lambda r: r["seconds"])
        variants[name] = {
            "seconds": best["seconds"],
            "all_seconds": [r["seconds"] for r in results],
            "new_tokens_per_s": new_tokens / best["seconds"],
            "decode_row_steps": best["decode_row_steps"],
            "shrunk_rounds": best["shrunk_rounds"],
            "warmup_s": warmup[name],  # the first round, with its compiles (CUDA: one per new bucket)
            "same_tokens": all(r["tokens"] == reference for r in results),
        }
    flat = sorted(n for wave in lengths for n in wave)
    report = {
        "shape": args.shape, "device": args.device, "card": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch, "waves": args.waves,
        "max_new": args.max_new, "short_share": args.short_share, "cap_share": args.cap_share, "seed": args.seed,
        "answer_tokens": {"mean": sum(flat) / len(flat), "median": flat[len(flat) // 2], "max": flat[-1]},
        "useful_share_of_full_rounds": new_tokens / (args.waves * args.batch * args.max_new),
        "variants": variants,
        "shrink_at": settings[shrink],
        "speedup": variants["full rounds"]["seconds"] / variants[shrink]["seconds"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    answers = report["answer_tokens"]
    print(
        f"{args.shape} on {report['card'] or args.device}: {args.waves} rounds x {args.batch} rows, answers of "
        f"{flat[0]}-{answers['max']} new tokens (mean {answers['mean']:.0f}; {100 * report['useful_share_of_full_rounds']:.0f}% "
        f"of the rows x steps of full rounds); best of {args.repeats}"
    )
    print(f"  {'variant':<14} {'wall s':>8} {'new tok/s':>10} {'rows x steps':>13} {'shrunk':>7} {'warm-up s':>10}  same tokens")
    for name, row in variants.items():
        print(
            f"  {name:<14} {row['seconds']:8.2f} {row['new_tokens_per_s']:10,.0f} {row['decode_row_steps']:13,d} "
            f"{row['shrunk_rounds']:7d} {row['warmup_s']:10.1f}  {row['same_tokens']}"
        )
    print(f"  {shrink} / full rounds: {report['speedup']:.2f}x tokens/s; written to {out}")
    return 0 if all(row["same_tokens"] for row in variants.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
