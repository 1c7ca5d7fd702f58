"""Benchmark: ``empersona/`` with one batch's worth of concurrent calls against two, side by side.

The provider runs the oldest pending calls, up to one batch's worth, per round. With
``max_connections`` equal to the batch size, every call is in the round that runs, and when it
ends the next samples' calls reach the provider one by one (inspect sets each sample up in turn
on its event loop, among the scoring and logging of the samples just answered): the next round
starts with the few that came first and runs as many decode steps as a full one. With twice the
batch size (the default), the next round's calls are already waiting.

This runs the harmfulness experiment on the tiny test model (scripted judge, CPU, inspect's live
sample buffer off as a study runs, unless ``--live-view``) through ``empersona/`` with
``max_connections`` at the batch size and at twice it, in turn (A B B A ...: a drift of the
machine favours neither), after an untimed warm-up, and reports the wall seconds of each, the
ratio of their means, and the batches the engine ran (how many, and their mean rows). How much
the trickle costs depends on how long inspect takes to start the next samples against a round's
length: on this project's 2-core CPU 1.08x for 384 answers of 512 tokens, 0.96x (noise) for 960
of 64, 1.14x for those with ``--live-view``.

Run: ``EMPERSONA_MIRROR=../shared/data .venv/bin/python bench/connections.py`` (about three
minutes). Writes ``bench/results/connections.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each setting")
    parser.add_argument("--limit", type=int, default=96, help="harm prompts")
    parser.add_argument("--samples", type=int, default=10, help="answers per prompt (the paper's 10)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256, help="the provider's max_batch_size")
    parser.add_argument("--live-view", action="store_true",
                        help="with inspect's live sample buffer (log_realtime): more inspect work per sample")
    parser.add_argument("--out", type=Path, default=Path("bench/results/connections.json"))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).parent))
    from battery import abba, eval_settings, timed_eval

    import empersona.provider.api  # noqa: F401  (registers empersona/ also without the entry point)
    from empersona.evals.harmfulness import harmfulness
    from empersona.provider.api import _SERVED
    from empersona.testing.tiny import build_tiny_model

    settings = {"one batch": args.batch, "two batches": 2 * args.batch}
    walls: dict[str, list[float]] = {name: [] for name in settings}
    batches: dict[str, list[list[int]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_tiny_model(Path(scratch) / "tiny", seed=0)
        common: dict[str, Any] = eval_settings("empersona", model_dir, Path(scratch) / "logs", args.limit)
        common["model_args"] = {**common["model_args"], "max_batch_size": args.batch}
        common["log_realtime"] = args.live_view  # off unless asked, as a study runs

        def shapes() -> Counter[tuple[int, int]]:
            return Counter({k: v for served in _SERVED.values() for k, v in served.engine.stats.shapes.items()})

        def run(connections: int) -> tuple[float, list[int]]:
            task = harmfulness(samples=args.samples, max_tokens=args.max_tokens, cache=False)
            before = shapes()
            wall, _ = timed_eval(task, "harmfulness", max_connections=connections, **common)
            ran = shapes() - before
            return wall, sorted((rows for (rows, _length), n in ran.items() for _ in range(n)), reverse=True)

        run(2 * args.batch)  # warm-up: loads the model
        for name in abba(list(settings), args.repeats):
            wall, rows = run(settings[name])
            walls[name].append(wall)
            batches[name].append(rows)
            print(f"{name} ({settings[name]} connections): {wall:.2f} s, batches of {rows} rows", flush=True)

    means = {name: statistics.mean(values) for name, values in walls.items()}
    ratio = means["one batch"] / means["two batches"]
    print(f"\nharmfulness, {args.limit} prompts x {args.samples} answers, max_tokens {args.max_tokens}, batch {args.batch}, "
          f"live view {'on' if args.live_view else 'off'}; mean of {args.repeats}")
    print(f"{'max_connections':<26} {'mean s':>8} {'batches':>8} {'mean rows':>10}")
    for name, connections in settings.items():
        runs = batches[name]
        count = statistics.mean(len(r) for r in runs)
        rows = statistics.mean(statistics.mean(r) for r in runs)
        print(f"{name + f' ({connections})':<26} {means[name]:>8.2f} {count:>8.1f} {rows:>10.1f}")
    print(f"two batches in flight: {ratio:.2f}x as fast")
    report = {
        "benchmark": "empersona/ max_connections: one batch against two (harmfulness, tiny model, CPU)",
        "settings": {"limit": args.limit, "samples": args.samples, "max_tokens": args.max_tokens, "batch": args.batch,
                     "repeats": args.repeats, "live_view": args.live_view, "connections": settings},
        "walls_s": walls,
        "batch_rows": batches,
        "mean_s": means,
        "speedup_two_batches": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
