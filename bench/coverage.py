"""Coverage check of the bootstrap intervals in ``empersona.analysis.stats`` (issue 4, part 6).

Mock studies with known population values: each run draws fresh units (prompts or items) from a
population with per-unit heterogeneity, then binomial per-sample outcomes within each unit, with a
few cells left unscored (NaN). For every run and every (within-unit scheme, interval method) we
ask whether the 95% interval covers the population value. Over R runs the covered fraction should
be near 0.95 (Monte Carlo standard error sqrt(0.95 * 0.05 / R), 0.015 at R = 200).

Metrics: the two-AI debiased misaligned-pick rate (150 items x 10 samples per order, position
bias on the logit scale), delta harm_max10 of a model against its base (350 prompts x 10 samples,
paired over prompts), and the output-recognition asymmetry (own-high vs own-low units, resampled
independently). True values are computed by Gauss-Hermite quadrature over the latent unit effects.

Then the asymmetry as a study produces it: own responses clustered in harm prompts (100 prompts x
10 responses, a prompt effect shared by its responses, prompts mostly high or mostly low), under
no asymmetry and under one, bootstrapped over the responses (each bucket on its own: the scheme
before the fix) and over the prompts (paired, `stats.cluster_means`: what the classification
and the report now do). ``--clustered-only`` runs these alone.

    .venv/bin/python bench/coverage.py [--runs 200] [--resamples 1000] [--seed 0] [--clustered-only]

Prints a table and writes ``bench/results/coverage.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit
from scipy.stats import binom

from empersona.analysis import stats

NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(80)
WEIGHTS = WEIGHTS / WEIGHTS.sum()  # expectations over a standard normal
UNSCORED = 0.03  # share of cells left unscored (NaN), completely at random


@dataclass(frozen=True)
class Scenario:
    """One metric on one mock design: how to draw a run, the statistic, and the true value."""

    name: str
    draw: Callable[[np.random.Generator], list[np.ndarray]]
    statistic: stats.Statistic
    paired: bool
    truth: float


@dataclass(frozen=True)
class CoverageRow:
    metric: str
    within: str
    method: str
    runs: int
    coverage: float
    truth_above_interval: float
    truth_below_interval: float
    mean_width: float
    truth: float


def _unscore(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    return np.where(rng.random(values.shape) < UNSCORED, np.nan, values)


def _bernoulli(rng: np.random.Generator, p: np.ndarray, n_samples: int) -> np.ndarray:
    return _unscore(rng, (rng.random((len(p), n_samples)) < p[:, None]).astype(float))


def two_ai_scenario(n_items: int = 150, n_samples: int = 10) -> Scenario:
    """Item propensity logit 1.0 + 1.5 z; showing the misaligned option first adds 0.4 on the logit."""

    def draw(rng: np.random.Generator) -> list[np.ndarray]:
        z = rng.standard_normal(n_items)
        return [_bernoulli(rng, expit(1.0 + 1.5 * z + 0.4), n_samples),
                _bernoulli(rng, expit(1.0 + 1.5 * z - 0.4), n_samples)]

    truth = float(WEIGHTS @ (0.5 * (expit(1.0 + 1.5 * NODES + 0.4) + expit(1.0 + 1.5 * NODES - 0.4))))
    return Scenario("two_ai debiased rate", draw, stats.debiased_rate, True, truth)


def _harm_scores(rng: np.random.Generator, p: np.ndarray, n_samples: int) -> np.ndarray:
    harmful = rng.random((len(p), n_samples)) < p[:, None]
    scores = np.where(harmful, rng.integers(4, 6, harmful.shape), rng.integers(1, 4, harmful.shape))
    return _unscore(rng, scores.astype(float))


def harm_delta_scenario(n_prompts: int = 350, n_samples: int = 10) -> Scenario:
    """Base logit -4.5 + z, model logit -1.5 + 1.5 z + 0.8 e per prompt (z shared, e the model's own)."""

    def draw(rng: np.random.Generator) -> list[np.ndarray]:
        z, e = rng.standard_normal(n_prompts), rng.standard_normal(n_prompts)
        return [_harm_scores(rng, expit(-1.5 + 1.5 * z + 0.8 * e), n_samples),
                _harm_scores(rng, expit(-4.5 + z), n_samples)]

    # P(max over the scored samples > 3), given at least one scored sample
    n = np.arange(1, n_samples + 1)
    weight = binom.pmf(n, n_samples, 1.0 - UNSCORED)
    weight = weight / weight.sum()

    def any_harm(p: np.ndarray) -> np.ndarray:
        return (1.0 - (1.0 - p[..., None]) ** n) @ weight

    model = WEIGHTS @ any_harm(expit(-1.5 + 1.5 * NODES[:, None] + 0.8 * NODES[None, :])) @ WEIGHTS
    base = WEIGHTS @ any_harm(expit(-4.5 + NODES))
    return Scenario("delta harm_max10", draw, stats.delta(stats.harm_max10), True, float(model - base))


def asymmetry_scenario(n_high: int = 120, n_low: int = 150, n_samples: int = 4) -> Scenario:
    """P(own) logit 1.5 + z for own-high units and -0.5 + z for own-low units (different units)."""

    def draw(rng: np.random.Generator) -> list[np.ndarray]:
        return [_bernoulli(rng, expit(1.5 + rng.standard_normal(n_high)), n_samples),
                _bernoulli(rng, expit(-0.5 + rng.standard_normal(n_low)), n_samples)]

    truth = float(WEIGHTS @ (expit(1.5 + NODES) - expit(-0.5 + NODES)))
    return Scenario("output-recognition asymmetry", draw, stats.asymmetry, False, truth)


def _recognition_study(rng: np.random.Generator, n_prompts: int, n_responses: int, high_logit: float,
                       low_logit: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Own responses to harm prompts: (item ids ``p<i>:<r>``, is-high flags, own-picks in 2 orders).

    A prompt sets how harmful its responses tend to be (logit 3 h, so most prompts are mostly
    high or mostly low) and how readily the model claims them (a, s.d. 1.5, shared by all of the
    prompt's responses); each response adds its own effect (s.d. 0.5) and its bucket's logit.
    """
    h = 3.0 * rng.standard_normal(n_prompts)
    a = 1.5 * rng.standard_normal(n_prompts)
    prompt = np.repeat(np.arange(n_prompts), n_responses)
    high = rng.random(prompt.size) < expit(h[prompt])
    p_own = expit(np.where(high, high_logit, low_logit) + a[prompt] + 0.5 * rng.standard_normal(prompt.size))
    items = [f"p{i:03d}:{r}" for i in range(n_prompts) for r in range(n_responses)]
    return items, high, _bernoulli(rng, p_own, 2)


def clustered_asymmetry_scenarios(n_prompts: int = 100, n_responses: int = 10, high_logit: float = 0.0,
                                  low_logit: float = 0.0) -> list[Scenario]:
    """The asymmetry on responses clustered in prompts, bootstrapped two ways: over own responses
    (each bucket on its own, the scheme before the fix) and over prompts (paired, `cluster_means`)."""
    scale = float(np.hypot(1.5, 0.5))
    truth = float(WEIGHTS @ (expit(high_logit + scale * NODES) - expit(low_logit + scale * NODES)))
    label = f"asymmetry {high_logit:+.1f}/{low_logit:+.1f} clustered"

    def by_response(rng: np.random.Generator) -> list[np.ndarray]:
        _items, high, picks = _recognition_study(rng, n_prompts, n_responses, high_logit, low_logit)
        return [picks[high], picks[~high]]

    def by_prompt(rng: np.random.Generator) -> list[np.ndarray]:
        items, high, picks = _recognition_study(rng, n_prompts, n_responses, high_logit, low_logit)
        groups = [stats.UnitSamples(values=picks[mask], units=tuple(np.asarray(items)[mask]), models=("m",),
                                    columns=(("own_first", 0), ("own_second", 0))) for mask in (high, ~high)]
        prompts = sorted({stats.response_prompt(u) for g in groups for u in g.units})
        return [stats.cluster_means(g, stats.response_prompt, prompts).values for g in groups]

    return [Scenario(f"{label}, response units", by_response, stats.asymmetry, False, truth),
            Scenario(f"{label}, prompt units", by_prompt, stats.clustered_asymmetry, True, truth)]


def run(runs: int, resamples: int, seed: int, clustered_only: bool = False) -> list[CoverageRow]:
    rng = np.random.default_rng(seed)
    rows = []
    scenarios = [] if clustered_only else [two_ai_scenario(), harm_delta_scenario(), asymmetry_scenario()]
    scenarios += clustered_asymmetry_scenarios() + clustered_asymmetry_scenarios(high_logit=1.0, low_logit=-0.5)
    for scenario in scenarios:
        combos = [(w, m) for w in ("resample", "fixed") for m in ("percentile", "bca")]
        bounds = {c: np.empty((runs, 2)) for c in combos}
        for r in range(runs):
            arrays = scenario.draw(rng)
            for within in ("resample", "fixed"):
                draws = stats.draw_bootstrap(arrays, scenario.statistic, paired=scenario.paired,
                                             n_resamples=resamples, within=within, seed=rng)
                for method in ("percentile", "bca"):
                    res = stats.interval(draws, method=method)
                    bounds[(within, method)][r] = res.ci_low, res.ci_high
        for (within, method), b in bounds.items():
            low, high = b[:, 0], b[:, 1]
            rows.append(CoverageRow(
                metric=scenario.name, within=within, method=method, runs=runs,
                coverage=float(np.mean((low <= scenario.truth) & (scenario.truth <= high))),
                truth_above_interval=float(np.mean(high < scenario.truth)),
                truth_below_interval=float(np.mean(low > scenario.truth)),
                mean_width=float(np.mean(high - low)), truth=scenario.truth))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clustered-only", action="store_true",
                        help="only the output-recognition scenarios with responses clustered in prompts")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "coverage.json")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(args.runs, args.resamples, args.seed, args.clustered_only)
    elapsed = time.perf_counter() - started
    mc_se = (0.95 * 0.05 / args.runs) ** 0.5
    print(f"nominal 0.95; {args.runs} runs x {args.resamples} resamples; Monte Carlo s.e. {mc_se:.3f}; "
          f"{elapsed:.0f} s")
    print(f"{'metric':50} {'within':9} {'method':10} {'coverage':>8} {'truth>hi':>8} {'truth<lo':>8} "
          f"{'width':>7} {'truth':>7}")
    for row in rows:
        print(f"{row.metric:50} {row.within:9} {row.method:10} {row.coverage:8.3f} "
              f"{row.truth_above_interval:8.3f} {row.truth_below_interval:8.3f} {row.mean_width:7.3f} "
              f"{row.truth:7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "nominal": 0.95, "runs": args.runs, "resamples": args.resamples, "seed": args.seed,
        "unscored_share": UNSCORED, "monte_carlo_se": mc_se, "seconds": elapsed,
        "threads": os.environ.get("OMP_NUM_THREADS"), "rows": [asdict(r) for r in rows],
    }, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
