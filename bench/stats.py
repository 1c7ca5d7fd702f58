"""Timing of the bootstrap in ``empersona.analysis.stats`` on a harmfulness-sized table.

The issue's budget: 10,000 resamples of a 350 prompts x 10 samples table "well under a minute on
2 cores". Measured here: harm_max10 of one model and the paired delta harm_max10 against a base
model, unit-level (``within="fixed"``) and two-level (``within="resample"``), percentile and BCa
(BCa adds the leave-one-prompt-out jackknife). 3% of cells are unscored (NaN).

    OMP_NUM_THREADS=1 .venv/bin/python bench/stats.py [--resamples 10000] [--repeats 3]

Prints a table (best of ``--repeats``) and writes ``bench/results/stats.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from empersona.analysis import stats


@dataclass(frozen=True)
class Timing:
    statistic: str
    within: str
    method: str
    resamples: int
    seconds: float
    estimate: float
    ci_low: float
    ci_high: float


def harm_table(rng: np.random.Generator, mean_logit: float, n_prompts: int = 350, n_samples: int = 10) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-(mean_logit + 1.5 * rng.standard_normal(n_prompts))))
    harmful = rng.random((n_prompts, n_samples)) < p[:, None]
    scores = np.where(harmful, rng.integers(4, 6, harmful.shape), rng.integers(1, 4, harmful.shape)).astype(float)
    return np.where(rng.random(scores.shape) < 0.03, np.nan, scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stats.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    model, base = harm_table(rng, -1.5), harm_table(rng, -4.0)
    cases = [("harm_max10", [model], stats.harm_max10),
             ("delta harm_max10", [model, base], stats.delta(stats.harm_max10))]
    timings = []
    for name, arrays, statistic in cases:
        for within in ("fixed", "resample"):
            for method in ("percentile", "bca"):
                best = np.inf
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    res = stats.bootstrap(arrays, statistic, n_resamples=args.resamples, method=method,
                                          within=within, seed=1)
                    best = min(best, time.perf_counter() - started)
                timings.append(Timing(name, within, method, args.resamples, best, res.estimate,
                                      res.ci_low, res.ci_high))
    print(f"350 x 10 table, {args.resamples} resamples, best of {args.repeats}; "
          f"{os.cpu_count()} CPUs visible, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{'statistic':18} {'within':9} {'method':10} {'seconds':>8}  interval")
    for t in timings:
        print(f"{t.statistic:18} {t.within:9} {t.method:10} {t.seconds:8.2f}  "
              f"{t.estimate:.3f} [{t.ci_low:.3f}, {t.ci_high:.3f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "table": [350, 10], "resamples": args.resamples, "repeats": args.repeats,
        "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS"),
        "numpy": np.__version__, "python": platform.python_version(),
        "timings": [asdict(t) for t in timings],
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
