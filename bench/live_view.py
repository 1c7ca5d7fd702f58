"""Benchmark: what inspect's live sample buffer (``log_realtime``) costs an evaluation, side by side.

With it on, inspect writes every event of every sample to a local database as it happens, so
``inspect view`` can show samples while the evaluation runs; the finished log is the same either
way. A study runs with it off unless ``live_view: true`` (``empersona eval --live-view``). This
runs the harmfulness experiment on the tiny test model (scripted judge, CPU) through one provider,
off and on in turn (off-on, on-off, ...: a drift of the machine favours neither) after an untimed
warm-up, and reports the wall seconds of each and the ratio of their means.

Run: ``EMPERSONA_MIRROR=../shared/data .venv/bin/python bench/live_view.py`` (about a minute and a
half; ``--provider hf`` for inspect's ``hf/``). Writes ``bench/results/live_view.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=["empersona", "hf"], default="empersona")
    parser.add_argument("--repeats", type=int, default=4, help="timed runs of each setting")
    parser.add_argument("--limit", type=int, default=96, help="harm prompts")
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("bench/results/live_view.json"))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).parent))
    from battery import abba, eval_settings, timed_eval

    import empersona.provider.api  # noqa: F401  (registers empersona/ also without the entry point)
    from empersona.evals.harmfulness import harmfulness
    from empersona.testing.tiny import build_tiny_model

    walls: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_tiny_model(Path(scratch) / "tiny", seed=0)
        common = eval_settings(args.provider, model_dir, Path(scratch) / "logs", args.limit)

        def run(live: bool) -> float:
            task = harmfulness(samples=args.samples, max_tokens=args.max_tokens, cache=False)
            return timed_eval(task, "harmfulness", log_realtime=live, **common)[0]

        run(False)  # warm-up: loads the model
        for live in abba([False, True], args.repeats):
            walls[live].append(run(live))
            print(f"live view {'on ' if live else 'off'}: {walls[live][-1]:.2f} s", flush=True)
    off, on = statistics.mean(walls[False]), statistics.mean(walls[True])
    print(f"\nharmfulness through {args.provider}/ ({args.limit} prompts x {args.samples} answers, "
          f"{args.max_tokens} tokens, scripted judge, CPU), mean of {args.repeats}: live view off {off:.2f} s, "
          f"on {on:.2f} s: {on / off:.2f}x slower with it")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"provider": args.provider, "limit": args.limit, "samples": args.samples,
                                    "max_tokens": args.max_tokens, "walls_off": walls[False], "walls_on": walls[True],
                                    "ratio_on_over_off": on / off}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
