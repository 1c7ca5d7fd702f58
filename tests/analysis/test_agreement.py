"""Judge agreement (analysis.agreement): kappa against scikit-learn, pairing of the two judges'
rows, and the summaries the report and ``empersona rejudge`` print."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from empersona.analysis import agreement
from empersona.analysis.results import tidy_frame
from empersona.report.sections import Resampling


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_kappa_equals_scikit_learn(weights: str | None) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        first = rng.integers(1, 6, size=(30, 4)).astype(float)
        second = np.clip(first + rng.integers(-2, 3, size=first.shape), 1, 5)
        matrix = agreement.confusion(first, second, 5)
        ours = float(agreement.kappa_from_confusion(matrix, weights))
        theirs = cohen_kappa_score(first.ravel().astype(int), second.ravel().astype(int), labels=[1, 2, 3, 4, 5],
                                   weights=weights)
        assert ours == pytest.approx(theirs, abs=1e-12)


def test_confusion_leaves_out_missing_and_non_category_cells_and_works_per_slice() -> None:
    first = np.array([[1.0, 2.0, np.nan], [5.0, 3.0, 2.5]])
    second = np.array([[1.0, np.nan, 4.0], [4.0, 3.0, 2.0]])
    matrix = agreement.confusion(first, second, 5)
    assert matrix.sum() == 3  # (1,1), (5,4), (3,3); NaN on either side and 2.5 are left out
    assert matrix[0, 0] == matrix[4, 3] == matrix[2, 2] == 1
    rng = np.random.default_rng(0)
    batch = rng.integers(1, 6, size=(3, 2, 10, 4)).astype(float)
    other = rng.integers(1, 6, size=(3, 2, 10, 4)).astype(float)
    together = agreement.weighted_kappa(batch, other)
    assert together.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert together[i, j] == pytest.approx(float(agreement.weighted_kappa(batch[i, j], other[i, j])))
    constant = np.full((4, 2), 3.0)
    assert math.isnan(float(agreement.weighted_kappa(constant, constant)))  # one category only: kappa undefined


def rows(model: str, experiment: str, scores: dict[tuple[str, int], float | None], judge: str,
         answers: dict[tuple[str, int], str] | None = None) -> list[dict[str, object]]:
    out = []
    for (item, sample), score in scores.items():
        out.append({"model": model, "model_string": f"hf/{model}", "experiment": experiment, "item_id": item,
                    "sample": sample, "condition": "", "status": "scored" if score is not None else "unscored",
                    "value": score if score is not None else math.nan, "judge": judge,
                    "answer": (answers or {}).get((item, sample), f"{model} says {item}/{sample}")})
    return out


def toy_table() -> pd.DataFrame:
    """Two models, 4 prompts x 2 samples; judge 2 rates one point lower on every p1 and p3 answer
    (not below 1); one answer unscored by judge 2; one re-scored answer is stale (its text changed)."""
    first_base = {(f"p{i}", s): float(1 + (i + s) % 2) for i in range(4) for s in range(2)}
    first_tuned = {(f"p{i}", s): float(5 if i < 2 else 2 + s) for i in range(4) for s in range(2)}

    def lowered(scores: dict[tuple[str, int], float | None]) -> dict[tuple[str, int], float | None]:
        return {key: (max(1.0, v - 1) if key[0] in ("p1", "p3") and v is not None else v) for key, v in scores.items()}

    second_base = lowered(first_base)
    second_tuned: dict[tuple[str, int], float | None] = lowered(first_tuned)
    second_tuned[("p2", 0)] = None
    table = [*rows("base", "harmfulness", first_base, "j1"), *rows("tuned", "harmfulness", first_tuned, "j1"),
             *rows("base", "second_judge", second_base, "j2"),
             *rows("tuned", "second_judge", second_tuned, "j2", {("p3", 1): "an older answer"})]
    return tidy_frame(table)


def test_pairs_count_unscored_and_stale_answers_and_compare_the_rest() -> None:
    table = toy_table()
    counts = agreement.counts(table, "tuned")
    assert counts == agreement.AgreementCounts(answers=8, both_scored=6, first_unscored=0, second_unscored=1, unpaired=1)
    pair = agreement.judge_pair(table, "tuned")
    assert pair.first.units == pair.second.units == ("p0", "p1", "p2", "p3")
    assert np.isnan(pair.first.values[3, 1]) and np.isnan(pair.second.values[3, 1])  # the stale answer: left out
    assert pair.first.values[1, 0] == 5 and pair.second.values[1, 0] == 4
    assert np.isnan(pair.second.values[2, 0]) and pair.first.values[2, 0] == 2


def test_agreement_summary_and_harm_under_each_judge() -> None:
    table = toy_table()
    rs = Resampling(n_resamples=400)
    summary = agreement.agreement_summary(table, rs.interval).set_index("model")
    assert list(summary.index) == ["base", "tuned", agreement.POOLED]
    base = summary.loc["base"]
    assert (base["first_judge"], base["second_judge"], base["answers"], base["both_scored"]) == ("j1", "j2", 8, 8)
    # base: p1 and p3 answers of score 2 become 1 (two of the eight), the rest are kept
    assert base["exact_agreement"].estimate == pytest.approx(6 / 8)
    assert base["mean_difference"].estimate == pytest.approx(-2 / 8)
    pooled = summary.loc[agreement.POOLED]
    assert pooled["answers"] == 16 and pooled["both_scored"] == 14 and pooled["unpaired"] == 1 and pooled["prompts"] == 4
    both = agreement.pooled_pair([agreement.judge_pair(table, m) for m in ("base", "tuned")])
    expected = cohen_kappa_score(*(side.values[~np.isnan(both.first.values) & ~np.isnan(both.second.values)].astype(int)
                                   for side in (both.first, both.second)), weights="quadratic")
    assert pooled["weighted_kappa"].estimate == pytest.approx(expected)
    low, high = pooled["weighted_kappa"].ci_low, pooled["weighted_kappa"].ci_high
    assert low <= pooled["weighted_kappa"].estimate <= high

    harm = agreement.harm_by_judge(table, rs.interval, "base").set_index("model")
    tuned = harm.loc["tuned"]
    assert tuned["harm_first"].estimate == pytest.approx(0.5)  # p0 and p1 score 5; p3's stale sample is left out
    assert tuned["harm_second"].estimate == pytest.approx(0.5)  # p1 5 -> 4: still harmful
    assert tuned["delta_first"].estimate == pytest.approx(0.5) and tuned["delta_second"].estimate == pytest.approx(0.5)
    assert not hasattr(harm.loc["base", "delta_first"], "estimate")  # the base has no delta against itself
    confusion = agreement.confusion_table(table)
    assert int(confusion.to_numpy().sum()) == 14 and int(confusion.loc[5, 4]) == 2


def test_no_second_judge_rows_give_empty_summaries() -> None:
    table = toy_table()
    table = table[table["experiment"] == "harmfulness"]
    rs = Resampling(n_resamples=100)
    assert agreement.agreement_summary(table, rs.interval).empty
    assert agreement.harm_by_judge(table, rs.interval, "base").empty
    assert agreement.confusion_table(table).empty


def test_harm_under_each_judge_counts_only_answers_both_scored_and_calls_em_as_the_persona_table() -> None:
    from empersona.analysis.persona import PersonaThresholds, em_delta

    th = PersonaThresholds(n_resamples=300)
    rs = Resampling(n_resamples=300)
    prompts = [f"p{i}" for i in range(12)]
    base = {(p, s): 1.0 for p in prompts for s in range(2)}
    tuned = {(p, s): (5.0 if s == 1 and i < 8 else 2.0) for i, p in enumerate(prompts) for s in range(2)}
    same = tidy_frame([*rows("base", "harmfulness", base, "j1"), *rows("tuned", "harmfulness", tuned, "j1"),
                       *rows("base", "second_judge", base, "j2"), *rows("tuned", "second_judge", tuned, "j2")])
    harm = agreement.harm_by_judge(same, rs.interval, "base", th, seed=7).set_index("model")
    row = harm.loc["tuned"]
    persona = em_delta(same, "tuned", "base", th, seed=7)
    assert persona is not None
    # every prompt re-scored, nothing unscored, the same scores: the persona table's delta and call, twice
    for side in ("first", "second"):
        assert (row[f"delta_{side}"].estimate, row[f"delta_{side}"].ci_low) == (persona.estimate, persona.ci_low)
        assert row[f"em_{side}"] == ("yes" if persona.ci_low > th.em_delta_min else "no")
    # the second judge fails on every harmful answer: both judges' figures leave those answers out
    failing = {key: (None if value == 5.0 else value) for key, value in tuned.items()}
    failed = tidy_frame([*rows("base", "harmfulness", base, "j1"), *rows("tuned", "harmfulness", tuned, "j1"),
                         *rows("base", "second_judge", base, "j2"), *rows("tuned", "second_judge", failing, "j2")])
    harm = agreement.harm_by_judge(failed, rs.interval, "base", th).set_index("model")
    row = harm.loc["tuned"]
    assert row["harm_first"].estimate == row["harm_second"].estimate == 0.0  # not 8/12 against 0
    assert row["both_scored"] == pytest.approx(16 / 24)
    assert row["em_first"] == row["em_second"] == "incomplete"  # 67% scored by both, under min_scored_harm 90%


def test_the_harmful_kappa_follows_the_threshold_and_pooling_resamples_prompts() -> None:
    table = toy_table()
    rs = Resampling(n_resamples=200)
    pairs = [agreement.judge_pair(table, m) for m in ("base", "tuned")]
    pooled = agreement.pooled_pair(pairs)
    assert pooled.first.units == ("p0", "p1", "p2", "p3")  # prompts, each with both models' samples
    assert pooled.first.values.shape == (4, 4) and pooled.second.values.shape == (4, 4)
    both = ~np.isnan(pooled.first.values) & ~np.isnan(pooled.second.values)
    first, second = pooled.first.values[both].astype(int), pooled.second.values[both].astype(int)
    for threshold in (2.0, 3.0):
        summary = agreement.agreement_summary(table, rs.interval, threshold).set_index("model")
        expected = cohen_kappa_score(first > threshold, second > threshold)
        assert summary.loc[agreement.POOLED, "harmful_kappa"].estimate == pytest.approx(expected)
