"""Benchmark 3 (issue 7): what the paper's battery costs for one model, and how fast it runs locally.

Counts (always printed), per experiment and part, for ONE model:
- samples: generate calls (dataset samples, both orders included, times epochs);
- generated tokens: an UPPER BOUND, samples x max_tokens of the task (answers that stop early
  cost less; a forced-choice answer usually stops after a few tokens); a logprob pass is 1 token;
- forward passes: sequence forward passes, one per generated token (the prompt pass yields the
  first token), so equal to the token bound; a logprob pass is exactly 1;
- judge calls (model role ``grader``) and other model calls (contrast foils of output recognition).
The forced-choice probes (two-AI identification, output recognition) are counted in sample mode
and in logprob mode, and the battery is totalled both ways.

Item counts come from the experiments' own tasks built on the data files (``$EMPERSONA_MIRROR``,
default ``../shared/data`` when present): harmfulness, two-AI and self-assessment are built and
their datasets counted. Without the data the documented counts are used (350 harm prompts,
150 two-AI items, 100 released self-assessment lines). Output recognition and score prediction
read a harmfulness log, so they are counted from the harm count and their task defaults (every
logged response; both foils, which is an upper bound: contrast foils exist only for responses
scored 1-2 or 4-5, matched foils only where another model's response has the same score).

``--measure`` runs a small battery end to end on the tiny test model through inspect's
``hf/`` provider and through ``empersona/``, with the same tasks, limits and a scripted judge
(``empersona.testing.mocks``): harmfulness, two-AI (sample and logprob mode), self-assessment
(decision, numerical, Likert) and score prediction (on that run's own harmfulness log);
``--repeats`` batteries per provider (2 by default) in A B B A order, as these machines drift by
10-20% within minutes. Mean wall seconds per experiment, the end-to-end speed-up of the means and
each repeat's own are reported; the first experiment of each provider's first battery includes
loading the model (later batteries find it loaded, as a study's later tasks do). Each provider runs with its own default concurrency (hf: 32
requests, which is also its batch size; empersona: 512, two batches of 256) unless ``--max-connections`` sets both, and
both without inspect's live sample buffer (``log_realtime``), as a study runs unless its
``live_view`` is on (``--live-view`` measures with it: more inspect work per call, the same for
both providers).
The batches ``empersona/`` ran, by rows and cache length, give the number of decode graphs a GPU
would compile for them (one per padded shape; about 50 s each for a 1.5B model on an H100) with
batches padded to powers of two from 1 row and from 32 rows (the CUDA default). Needs the data files.

Free answers are cut at ``--max-tokens`` (16; 8 for the short ones), which leaves inspect's own work
per sample most of the time; ``--max-tokens task`` runs each task's own defaults, as a study does
(harmfulness 512, self-assessment 128, score prediction 64, two-AI 32). The tiny random model
rarely ends an answer early, so there every answer runs to its cap (a real model's are shorter;
self-assessment then logs 20 top logprobs for each of 128 tokens, where a real model's one-word
answer has a few).

Run: ``.venv/bin/python bench/battery.py`` (counts, seconds) and
``.venv/bin/python bench/battery.py --measure`` (about four minutes on CPU; ``--max-tokens task``
about ten).
Writes ``bench/results/battery.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect as pyinspect
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

Mode = Literal["sample", "logprob"]
REPO = Path(__file__).resolve().parents[1]
DOCUMENTED = {"harm_prompts": 350, "two_ai_items": 150, "self_assessment_lines": 100}


@dataclass(frozen=True)
class Part:
    """One experiment part as run for one model."""

    experiment: str
    part: str
    mode: Mode
    samples: int
    max_tokens: int
    judge_calls: int
    other_model_calls: int = 0
    other_tokens: int = 0
    note: str = ""

    @property
    def tokens(self) -> int:
        return self.samples * self.max_tokens

    @property
    def forward_passes(self) -> int:
        return self.samples * self.max_tokens


def _default(function: Any, name: str) -> Any:
    return pyinspect.signature(function).parameters[name].default


def count_parts(source: str) -> list[Part]:
    """Every part of the battery; ``source`` says where the item counts come from."""
    from empersona.evals.harmfulness import harmfulness
    from empersona.evals.output_recognition import output_recognition
    from empersona.evals.score_prediction import score_prediction
    from empersona.evals.self_assessment import self_assessment
    from empersona.evals.two_ai import two_ai

    parts: list[Part] = []
    if source == "data files":
        harm = harmfulness(cache=False)
        prompts, harm_epochs, harm_tokens = len(harm.dataset), _epochs(harm), int(harm.config.max_tokens or 0)
        sa = self_assessment(cache=False)
        by_format = Counter(str((s.metadata or {})["format"]) for s in sa.dataset)
        two = {mode: two_ai(mode=mode, cache=False) for mode in ("sample", "logprob")}
        two_counts = {mode: (len(t.dataset), _epochs(t), int(t.config.max_tokens or 0)) for mode, t in two.items()}
    else:
        prompts, harm_epochs, harm_tokens = DOCUMENTED["harm_prompts"], _default(harmfulness, "samples"), _default(harmfulness, "max_tokens")
        sa = self_assessment(formats="numerical,likert,language", cache=False)
        by_format = Counter(str((s.metadata or {})["format"]) for s in sa.dataset)
        by_format["decision"] = 2 * DOCUMENTED["self_assessment_lines"]
        items = 2 * DOCUMENTED["two_ai_items"]
        two_counts = {"sample": (items, _default(two_ai, "samples"), _default(two_ai, "max_tokens")), "logprob": (items, 1, 1)}
    sa_epochs, sa_tokens = _epochs(sa), int(sa.config.max_tokens or 0)

    parts.append(Part("harmfulness", "answers", "sample", prompts * harm_epochs, harm_tokens, prompts * harm_epochs))
    for fmt, n in sorted(by_format.items()):
        parts.append(Part("self_assessment", fmt, "sample", n * sa_epochs, sa_tokens, 0, note="local language detector"))
    for mode, (n, epochs, tokens) in two_counts.items():
        parts.append(Part("two_ai", "both orders", mode, n * epochs, tokens, 0))  # type: ignore[arg-type]

    own = prompts * harm_epochs  # every logged response (task default responses=None)
    foil_tokens = _default(output_recognition, "foil_max_tokens")
    or_samples = _default(output_recognition, "samples")
    for mode in ("sample", "logprob"):
        tokens = _default(output_recognition, "max_tokens") if mode == "sample" else 1
        epochs = or_samples if mode == "sample" else 1
        parts.append(
            Part(
                "output_recognition", "contrast foil, both orders", mode, own * 2 * epochs, tokens, own,  # type: ignore[arg-type]
                other_model_calls=own, other_tokens=own * foil_tokens,
                note="upper bound: a foil per response scored 1-2 or 4-5, each written and judged once",
            )
        )
        parts.append(
            Part("output_recognition", "matched foil, both orders", mode, own * 2 * epochs, tokens, 0,  # type: ignore[arg-type]
                 note="upper bound: only responses with a same-score match")
        )
    sp_tokens, sp_epochs = _default(score_prediction, "max_tokens"), _default(score_prediction, "samples")
    for condition, n in (("blind", prompts), ("shown", own), ("shown_other", own)):
        parts.append(Part("score_prediction", condition, "sample", n * sp_epochs, sp_tokens, 0))
    return parts


def _epochs(task: Any) -> int:
    epochs = task.epochs
    return int(epochs if isinstance(epochs, int) else getattr(epochs, "epochs", 1) or 1)


def totals(parts: list[Part], forced: Mode) -> dict[str, int]:
    """The battery with the forced-choice probes in ``forced`` mode."""
    forced_choice = {"two_ai", "output_recognition"}
    chosen = [p for p in parts if p.experiment not in forced_choice or p.mode == forced]
    return {
        "samples": sum(p.samples for p in chosen),
        "generated_tokens_upper_bound": sum(p.tokens for p in chosen) + sum(p.other_tokens for p in chosen),
        "forward_passes_upper_bound": sum(p.forward_passes for p in chosen) + sum(p.other_tokens for p in chosen),
        "judge_calls": sum(p.judge_calls for p in chosen),
        "other_model_calls": sum(p.other_model_calls for p in chosen),
    }


def print_counts(parts: list[Part], source: str) -> None:
    print(f"Battery cost for one model (item counts from {source}; tokens and passes are upper bounds: samples x max_tokens)")
    print(f"{'experiment':<19} {'part':<28} {'mode':<8} {'samples':>8} {'max tok':>7} {'tokens<=':>10} {'passes<=':>10} {'judge':>6} {'other':>6}")
    for p in parts:
        other = f"{p.other_model_calls}" if p.other_model_calls else "-"
        print(f"{p.experiment:<19} {p.part:<28} {p.mode:<8} {p.samples:>8} {p.max_tokens:>7} {p.tokens:>10} {p.forward_passes:>10} {p.judge_calls:>6} {other:>6}")
    for mode in ("sample", "logprob"):
        t = totals(parts, mode)  # type: ignore[arg-type]
        print(
            f"battery, forced choice in {mode} mode: {t['samples']} samples, <= {t['generated_tokens_upper_bound']} tokens, "
            f"<= {t['forward_passes_upper_bound']} forward passes, {t['judge_calls']} judge calls, "
            f"{t['other_model_calls']} foil-model calls (foil tokens included)"
        )


# ---------------------------------------------------------------------- --measure
def judge_reply(turn: Any) -> str:
    """Scripted grader: a fixed 1-5 score per answer (hash of the rendered rubric)."""
    digest = hashlib.sha256(turn.user.encode("utf-8")).digest()
    return json.dumps({"score": digest[0] % 5 + 1})


def eval_settings(provider: str, model_dir: Path, log_dir: Path, limit: int) -> dict[str, Any]:
    """inspect ``eval`` arguments the CPU measurements share: the tiny model through ``provider``
    on the CPU, the scripted judge as the grader, ``limit`` items, no display."""
    from empersona.testing.mocks import scripted_model

    return {"model": f"{provider}/{model_dir}", "model_args": {"device": "cpu"},
            "model_roles": {"grader": scripted_model(judge_reply, name="judge")}, "limit": limit,
            "log_dir": str(log_dir), "display": "none", "fail_on_error": False}


def timed_eval(task: Any, what: str, **settings: Any) -> tuple[float, Any]:
    """Wall seconds of one inspect ``eval`` of ``task`` with ``settings``, and its log; a run that
    does not succeed raises, naming ``what``."""
    from inspect_ai import eval as inspect_eval

    start = time.perf_counter()
    (log,) = inspect_eval(task, **settings)
    seconds = time.perf_counter() - start
    if log.status != "success":
        raise RuntimeError(f"{what} ended {log.status}: {log.error}")
    return seconds, log


def abba(settings: list[T], repeats: int) -> Iterator[T]:
    """``settings`` in turn ``repeats`` times, every other pass reversed (A B B A ...): a drift of
    the machine during the runs favours none of them."""
    for repeat in range(repeats):
        yield from settings if repeat % 2 == 0 else settings[::-1]


def measure(
    provider: str, model_dir: Path, log_dir: Path, limit: int, harm_samples: int, max_tokens: int | None, connections: int | None,
    live_view: bool = False,
) -> dict[str, float]:
    """Run the small battery through ``provider``; wall seconds per experiment. ``live_view``: inspect's
    ``log_realtime`` (off, as a study runs by default)."""
    from empersona.evals.harmfulness import harmfulness
    from empersona.evals.score_prediction import score_prediction
    from empersona.evals.self_assessment import self_assessment
    from empersona.evals.two_ai import two_ai

    common = {**eval_settings(provider, model_dir, log_dir / provider, limit), "log_realtime": live_view}
    if connections is not None:
        common["max_connections"] = connections
    times: dict[str, float] = {}

    def timed(name: str, task: Any) -> Any:
        times[name], log = timed_eval(task, f"{provider}: {name}", **common)
        return log

    # max_tokens None: each task's own default, as a study runs it (free answers 512 and 128 tokens)
    free = {} if max_tokens is None else {"max_tokens": max_tokens}
    short = {} if max_tokens is None else {"max_tokens": 8}
    harm = timed("harmfulness", harmfulness(samples=harm_samples, cache=False, **free))
    timed("two_ai (sample)", two_ai(mode="sample", samples=2, cache=False, **short))
    timed("two_ai (logprob)", two_ai(mode="logprob", cache=False))
    timed("self_assessment", self_assessment(formats="decision,numerical,likert", cache=False, **free))
    timed("score_prediction", score_prediction(harm_log=harm.location, conditions="blind,shown", cache=False, **short))
    return times


def mean_times(runs: list[dict[str, float]]) -> dict[str, float]:
    """Mean wall seconds per experiment over ``runs`` (each experiment -> seconds, the same keys)."""
    return {name: sum(run[name] for run in runs) / len(runs) for name in runs[0]}


def compiled_shapes(shapes: Counter[tuple[int, int]], max_batch_size: int) -> dict[str, int]:
    """Distinct (rows bucket, cache length) pairs of the batches run: the decode graphs a GPU
    compiles, with batches padded to powers of two from 1 row and from ``GPU_MIN_ROWS`` rows."""
    from empersona.provider.engine import GPU_MIN_ROWS, bucket_rows

    return {
        f"min rows {min_rows}": len({(bucket_rows(rows, min_rows, max_batch_size), length) for rows, length in shapes})
        for min_rows in (1, GPU_MIN_ROWS)
    }


def _max_tokens(text: str) -> int | None:
    if text == "task":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--max-tokens {text}: a whole number, at least 1, or 'task'")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="also run a small battery through hf/ and empersona/")
    parser.add_argument("--limit", type=int, default=96, help="--measure: items per experiment")
    parser.add_argument("--harm-samples", type=int, default=4, help="--measure: harmfulness samples per prompt")
    parser.add_argument(
        "--max-tokens", type=_max_tokens, default=16,
        help="--measure: max new tokens of free answers (8 for the short ones); 'task': each task's own default, "
             "as a study runs it (harmfulness 512, self-assessment 128, score prediction 64, two-AI 32)",
    )
    parser.add_argument(
        "--max-connections", type=int, default=None,
        help="--measure: inspect max_connections for both providers (default: each provider's own, hf 32, empersona 512)",
    )
    parser.add_argument("--live-view", action="store_true",
                        help="--measure: with inspect's live sample buffer (log_realtime), as a study with live_view: true")
    parser.add_argument("--repeats", type=int, default=2,
                        help="--measure: batteries per provider, in A B B A order (hf/ empersona/ empersona/ hf/ ...)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/battery.json"), help="JSON report path")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: at least 1")

    mirror = REPO.parent / "shared" / "data"
    if "EMPERSONA_MIRROR" not in os.environ and mirror.is_dir():
        os.environ["EMPERSONA_MIRROR"] = str(mirror)
    os.environ.setdefault("INSPECT_DISPLAY", "none")

    from empersona.errors import EmpersonaError

    try:
        parts, source = count_parts("data files"), "data files"
    except EmpersonaError as exc:
        print(f"(data files not available: {exc}; using documented counts)")
        parts, source = count_parts("documented counts"), "documented counts"
    print_counts(parts, source)
    report: dict[str, Any] = {
        "count_source": source,
        "parts": [asdict(p) | {"tokens": p.tokens, "forward_passes": p.forward_passes} for p in parts],
        "totals": {mode: totals(parts, mode) for mode in ("sample", "logprob")},  # type: ignore[arg-type]
    }

    if args.measure:
        if source != "data files":
            raise SystemExit("--measure needs the data files (set EMPERSONA_MIRROR)")
        import empersona.provider.api  # noqa: F401  (registers empersona/ also without the entry point)
        from empersona.testing.tiny import build_tiny_model

        repeats: dict[str, list[dict[str, float]]] = {"hf": [], "empersona": []}
        with tempfile.TemporaryDirectory() as scratch:
            model_dir = build_tiny_model(Path(scratch) / "tiny", seed=0)
            for provider in abba(["hf", "empersona"], args.repeats):
                logs = Path(scratch) / "logs" / str(len(repeats[provider]))
                repeats[provider].append(measure(provider, model_dir, logs, args.limit, args.harm_samples, args.max_tokens,
                                                 args.max_connections, args.live_view))
                print(f"{provider}/ battery {len(repeats[provider])}: {sum(repeats[provider][-1].values()):.2f} s", flush=True)
                if provider == "empersona" and len(repeats[provider]) == 1:
                    from empersona.provider.api import _SERVED

                    (served,) = _SERVED.values()
                    shapes = Counter(served.engine.stats.shapes)  # one battery's batches (later ones add the same)
                    graphs = compiled_shapes(shapes, served.engine.options.max_batch_size)
        runs = {provider: mean_times(times) for provider, times in repeats.items()}
        ratios = [sum(hf.values()) / sum(ours.values()) for hf, ours in zip(repeats["hf"], repeats["empersona"])]
        print(
            f"\nEnd to end on the tiny model (CPU, limit {args.limit} items, harm samples {args.harm_samples}, "
            f"max_tokens {args.max_tokens or 'of each task'}, max_connections {args.max_connections or 'provider default'}, "
            f"live view {'on' if args.live_view else 'off'}, scripted judge); mean wall seconds of {args.repeats} "
            "batteries each (A B B A order; each provider's first experiment of its first battery loads the model)"
        )
        print(f"{'experiment':<20} {'hf/':>8} {'empersona/':>11} {'speed-up':>9}")
        for name in runs["hf"]:
            hf_s, ours_s = runs["hf"][name], runs["empersona"][name]
            print(f"{name:<20} {hf_s:>8.2f} {ours_s:>11.2f} {hf_s / ours_s:>8.1f}x")
        hf_total, ours_total = sum(runs["hf"].values()), sum(runs["empersona"].values())
        print(f"{'battery':<20} {hf_total:>8.2f} {ours_total:>11.2f} {hf_total / ours_total:>8.1f}x")
        if args.repeats > 1:
            print("battery speed-up by repeat (hf/ run i against empersona/ run i): "
                  + ", ".join(f"{ratio:.1f}x" for ratio in ratios))
        print(
            f"empersona/ ran {sum(shapes.values())} batches of {len(shapes)} (rows, cache length) shapes; on a GPU "
            f"that is {graphs['min rows 1']} compiled decode graphs with batches padded to powers of two, "
            f"{graphs['min rows 32']} with at least 32 rows (the default)"
        )
        report["measure"] = {
            "settings": {k: getattr(args, k) for k in ("limit", "harm_samples", "max_tokens", "max_connections", "live_view", "repeats")},
            "seconds": runs,
            "seconds_by_repeat": repeats,
            "speedup": hf_total / ours_total,
            "speedup_by_repeat": ratios,
            "batch_shapes": sorted([rows, length, n] for (rows, length), n in shapes.items()),
            "compiled_graphs": graphs,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
