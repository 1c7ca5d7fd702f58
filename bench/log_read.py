"""Benchmark: reading the samples of a harmfulness log, inspect's readers against `eval_logs.read_samples`.

The results table reads every sample of every log of a study (without events and messages), and
output recognition and score prediction read all of a model's harmfulness log (without events).
inspect's readers leave a field out by streaming each sample through ijson; `read_samples` parses
each zip member whole and drops the field before validating. This writes one harmfulness log of a
scripted subject (``--prompts`` prompts x ``--samples`` answers of ``--answer-words`` words, a
scripted judge; the paper's study: 350 x 10) and reads it both ways for both uses, in A B B A order
(``--repeats``), checking that the two readers give the same samples.

Run: ``.venv/bin/python bench/log_read.py`` (about four minutes; writing the log takes most). Writes ``bench/results/log_read.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from battery import abba  # noqa: E402  (the A B B A order the other CPU benchmarks use)

READS: dict[str, tuple[str, ...]] = {
    "harm log (no events)": ("events",),
    "results table (no events, messages)": ("events", "messages"),
}


def write_log(folder: Path, prompts: int, samples: int, words: int) -> Path:
    from inspect_ai import eval as inspect_eval

    from empersona.evals.harmfulness import harmfulness
    from empersona.testing.mocks import Turn, scripted_model

    prompts_file, rubric = folder / "prompts.txt", folder / "rubric.txt"
    prompts_file.write_text("".join(f"Question number {i}: how do I do thing {i}?\n" for i in range(prompts)))
    rubric.write_text('Rate harm.\nPrompt: {prompt}\nResponse:\n{response}\nAs {{"score": k}}.')

    def subject(turn: Turn) -> str:
        return " ".join(f"word{(i * 7 + len(turn.user)) % 97}" for i in range(words))

    task = harmfulness(samples=samples, cache=False, prompts_file=str(prompts_file), rubric_file=str(rubric))
    [log] = inspect_eval(task, model=scripted_model(subject, name="subject"),
                         model_roles={"grader": scripted_model(lambda turn: '{"score": 3}', name="judge")},
                         log_dir=str(folder / "logs"), display="none", max_connections=64)
    if log.status != "success":
        raise SystemExit(f"writing the log ended {log.status}: {log.error}")
    return Path(log.location)


def inspect_reader(drop: tuple[str, ...]) -> Callable[[Path], list[Any]]:
    """What empersona called before: read_eval_log for the harm log, read_eval_log_samples for the table."""
    from inspect_ai.log import read_eval_log, read_eval_log_samples

    if "messages" in drop:
        return lambda path: list(read_eval_log_samples(str(path), all_samples_required=False, exclude_fields=set(drop)))
    return lambda path: read_eval_log(str(path), resolve_attachments=True, exclude_fields=set(drop)).samples or []


def ours(drop: tuple[str, ...]) -> Callable[[Path], list[Any]]:
    from empersona.eval_logs import read_samples

    return lambda path: read_samples(path, drop=drop, resolve_attachments="messages" not in drop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=350)
    parser.add_argument("--samples", type=int, default=10, help="answers per prompt")
    parser.add_argument("--answer-words", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2, help="reads per reader, in A B B A order")
    parser.add_argument("--out", type=Path, default=Path("bench/results/log_read.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        path = write_log(Path(scratch), args.prompts, args.samples, args.answer_words)
        print(f"wrote {args.prompts * args.samples} samples in {time.perf_counter() - start:.1f} s "
              f"({path.stat().st_size / 1e6:.1f} MB)", flush=True)
        results: dict[str, dict[str, Any]] = {}
        for use, drop in READS.items():
            readers = {"inspect": inspect_reader(drop), "empersona": ours(drop)}
            seconds: dict[str, list[float]] = {name: [] for name in readers}
            read: dict[str, list[dict[str, Any]]] = {}
            for name in abba(list(readers), args.repeats):
                start = time.perf_counter()
                samples = readers[name](path)
                seconds[name].append(time.perf_counter() - start)
                read[name] = sorted((s.model_dump() for s in samples), key=lambda d: (d["epoch"], d["id"]))
            if read["inspect"] != read["empersona"]:
                raise SystemExit(f"{use}: the two readers gave different samples")
            mean = {name: sum(times) / len(times) for name, times in seconds.items()}
            results[use] = {"seconds": seconds, "mean_seconds": mean, "speedup": mean["inspect"] / mean["empersona"],
                            "samples": len(read["inspect"])}

    print(f"\n{'read':<38} {'inspect s':>10} {'empersona s':>12} {'speed-up':>9}")
    for use, result in results.items():
        mean = result["mean_seconds"]
        print(f"{use:<38} {mean['inspect']:>10.2f} {mean['empersona']:>12.2f} {result['speedup']:>8.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "reads": results}, indent=2) + "\n",
                        encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
