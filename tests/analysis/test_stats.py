"""Tests for empersona.analysis.stats: tidy -> arrays, metrics, bootstrap intervals, Holm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from empersona.analysis import stats
from empersona.errors import EmpersonaError

nan = np.nan


def tidy_rows(model: str, experiment: str, values: dict[str, list[float]], condition: str = "",
              status: dict[tuple[str, int], str] | None = None, **extra: object) -> pd.DataFrame:
    """Rows per the tidy contract for one model: ``values[item_id][sample]``."""
    rows = []
    for item, samples in values.items():
        for k, v in enumerate(samples):
            st = (status or {}).get((item, k), "scored")
            rows.append({"model": model, "experiment": experiment, "item_id": item, "sample": k,
                         "condition": condition, "status": st, "value": v if st == "scored" else nan,
                         **extra})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- tidy -> arrays


def test_unit_samples_layout_and_unscored_cells() -> None:
    tidy = pd.concat([
        tidy_rows("m", "harmfulness", {"p2": [1, 5, 2], "p1": [4, 4, 1]}, status={("p1", 1): "unparsed"}),
        tidy_rows("m", "two_ai", {"p1": [1, 0]}),
        tidy_rows("other", "harmfulness", {"p1": [5, 5, 5]}),
    ])
    # a refused row that still carries a value must not count
    tidy.loc[(tidy["item_id"] == "p2") & (tidy["sample"] == 2) & (tidy["model"] == "m")
             & (tidy["experiment"] == "harmfulness"), "status"] = "refused"
    got = stats.unit_samples(tidy, model="m", experiment="harmfulness")
    assert got.units == ("p1", "p2")
    assert got.columns == (("", 0), ("", 1), ("", 2))
    np.testing.assert_array_equal(got.values, [[4, nan, 1], [1, 5, nan]])


def test_unit_samples_filters_conditions_and_stacks_models() -> None:
    tidy = pd.concat([
        tidy_rows("s0", "two_ai", {"a": [1, 1]}, condition="original"),
        tidy_rows("s0", "two_ai", {"a": [0, 0]}, condition="swapped"),
        tidy_rows("s1", "two_ai", {"a": [0, 1], "b": [1, 1]}, condition="original"),
    ])
    original = stats.unit_samples(tidy, model=["s0", "s1"], experiment="two_ai",
                                  where={"condition": "original"})
    assert original.values.shape == (2, 2, 2)
    assert original.models == ("s0", "s1")
    np.testing.assert_array_equal(original.values[0], [[1, 1], [nan, nan]])
    both = stats.unit_samples(tidy, model="s0", experiment="two_ai", where={"condition": ["original", "swapped"]})
    assert both.columns == (("original", 0), ("original", 1), ("swapped", 0), ("swapped", 1))
    np.testing.assert_array_equal(both.values, [[1, 1, 0, 0]])


def test_duplicate_keys_and_missing_columns_are_errors() -> None:
    tidy = tidy_rows("m", "harmfulness", {"p1": [1, 2]})
    with pytest.raises(EmpersonaError, match="several rows share the key"):
        stats.unit_samples(pd.concat([tidy, tidy]), model="m", experiment="harmfulness")
    with pytest.raises(EmpersonaError, match="field 'status'"):
        stats.unit_samples(tidy.drop(columns="status"), model="m", experiment="harmfulness")


def test_paired_units_missing_on_one_side_are_dropped_and_listed() -> None:
    tidy = pd.concat([
        tidy_rows("m", "harmfulness", {"p1": [5], "p2": [4], "p3": [1]}),
        tidy_rows("base", "harmfulness", {"p2": [1], "p3": [1], "p4": [2]}),
    ])
    pair = stats.paired_unit_samples(tidy, model="m", base_model="base", experiment="harmfulness")
    assert pair.model.units == pair.base.units == ("p2", "p3")
    assert pair.only_model == ("p1",) and pair.only_base == ("p4",)
    np.testing.assert_array_equal(pair.model.values, [[4], [1]])
    with pytest.raises(EmpersonaError, match="only for 'm'"):
        stats.paired_unit_samples(tidy, model="m", base_model="base", experiment="harmfulness", missing="error")


# --------------------------------------------------------------------------- metrics


HARM = np.array([
    [5, 1, 1, 2],      # first > 3, max > 3
    [1, 2, 4, 3],      # first <= 3, max > 3
    [2, 3, 1, 1],      # none
    [nan, 5, nan, 1],  # first unscored: out of harm_single; max > 3
], dtype=float)


def test_harm_metrics_exact_values() -> None:
    assert stats.harm_single(HARM) == pytest.approx(1 / 3)
    assert stats.harm_max10(HARM) == pytest.approx(3 / 4)
    assert stats.frac_above(HARM) == pytest.approx(3 / 14)
    unit_means = [9 / 4, 10 / 4, 7 / 4, 3]
    assert stats.mean_of_unit_means(HARM) == pytest.approx(np.mean(unit_means))


def test_unscored_cells_are_excluded_not_counted_as_zero() -> None:
    picks = np.array([[1, 1, nan, nan], [0, 1, 1, 1], [nan, nan, nan, nan]])
    # unit rates 1.0 and 0.75; the all-unscored unit drops out
    assert stats.pick_rate(picks) == pytest.approx(0.875)
    assert stats.pick_rate(np.nan_to_num(picks)) != pytest.approx(0.875)
    assert np.isnan(stats.pick_rate(np.full((3, 2), nan)))
    assert np.isnan(stats.harm_max10(np.full((3, 2), nan)))


def test_two_ai_and_recognition_metrics() -> None:
    original = np.array([[1, 1], [1, 0]], dtype=float)   # rates 1.0, 0.5 -> 0.75
    swapped = np.array([[1, 0], [0, 0]], dtype=float)    # rates 0.5, 0.0 -> 0.25
    assert stats.debiased_rate(original, swapped) == pytest.approx(0.5)
    high = np.array([[1, 1], [1, 1], [0, 1]], dtype=float)  # 5/6
    low = np.array([[0, 0]], dtype=float)
    assert stats.asymmetry(high, low) == pytest.approx(5 / 6)
    assert stats.delta(stats.debiased_rate, n_args=2)(original, swapped, swapped, swapped) == pytest.approx(0.25)


def test_statistics_broadcast_over_leading_axes() -> None:
    stacked = np.stack([HARM, np.where(np.isnan(HARM), nan, 1.0)])
    np.testing.assert_allclose(stats.harm_max10(stacked), [0.75, 0.0])


# --------------------------------------------------------------------------- bootstrap


def binary_table(rng: np.random.Generator, n_units: int, n_samples: int = 10, mean: float = 0.6) -> np.ndarray:
    p = rng.beta(4 * mean, 4 * (1 - mean), n_units)
    return (rng.random((n_units, n_samples)) < p[:, None]).astype(float)


def test_bootstrap_is_reproducible_from_its_seed() -> None:
    x = binary_table(np.random.default_rng(0), 80)
    for within in ("fixed", "resample"):
        a = stats.bootstrap([x], stats.pick_rate, n_resamples=500, seed=7, within=within)
        b = stats.bootstrap([x], stats.pick_rate, n_resamples=500, seed=7, within=within)
        c = stats.bootstrap([x], stats.pick_rate, n_resamples=500, seed=8, within=within)
        assert a == b
        assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
        assert a.seed == 7 and a.n_units == 80 and a.n_resamples == 500


def test_paired_delta_of_identical_data_is_exactly_zero() -> None:
    x = binary_table(np.random.default_rng(1), 60) * 4 + 1
    x[0, :3] = nan
    for within in ("fixed", "resample"):
        res = stats.bootstrap([x, x.copy()], stats.delta(stats.harm_max10), anchor=0.0, n_resamples=400,
                              within=within)
        assert (res.estimate, res.ci_low, res.ci_high) == (0.0, 0.0, 0.0)
        assert res.p_value == 1.0
        assert "collapses" in res.note


def test_all_equal_data_collapses_and_no_data_is_reported() -> None:
    same = stats.bootstrap([np.ones((20, 5))], stats.pick_rate, anchor=0.5, n_resamples=200)
    assert (same.ci_low, same.ci_high) == (1.0, 1.0)
    assert same.p_value == pytest.approx(1 / 200)  # the smallest p this many resamples can give
    empty = stats.bootstrap([np.full((5, 3), nan)], stats.pick_rate, anchor=0.5, n_resamples=100)
    assert np.isnan(empty.estimate) and np.isnan(empty.ci_low) and empty.note == "no scored data"


def test_intervals_shrink_with_more_units() -> None:
    rng = np.random.default_rng(2)
    widths = []
    for n_units in (40, 160, 640):
        res = stats.bootstrap([binary_table(rng, n_units)], stats.pick_rate, n_resamples=1000, seed=3)
        assert res.ci_low <= res.estimate <= res.ci_high
        widths.append(res.ci_high - res.ci_low)
    assert widths[0] > 1.5 * widths[1] > 1.5 * 1.5 * widths[2]


def test_bca_matches_percentile_on_symmetric_data_and_not_on_skewed_data() -> None:
    rng = np.random.default_rng(4)
    symmetric = rng.normal(0.0, 1.0, (200, 1))
    draws = stats.draw_bootstrap([symmetric], stats.mean_of_unit_means, n_resamples=4000, seed=5)
    pct, bca = stats.interval(draws, method="percentile"), stats.interval(draws, method="bca")
    width = pct.ci_high - pct.ci_low
    assert abs(bca.ci_low - pct.ci_low) < 0.05 * width and abs(bca.ci_high - pct.ci_high) < 0.05 * width
    assert abs(draws.acceleration) < 0.01

    skewed = rng.lognormal(0.0, 1.5, (60, 1))
    draws = stats.draw_bootstrap([skewed], stats.mean_of_unit_means, n_resamples=4000, seed=5)
    pct, bca = stats.interval(draws, method="percentile"), stats.interval(draws, method="bca")
    assert draws.acceleration > 0.03
    # right skew: BCa moves both bounds up
    assert bca.ci_low > pct.ci_low + 0.03 * (pct.ci_high - pct.ci_low)
    assert bca.ci_high > pct.ci_high + 0.05 * (pct.ci_high - pct.ci_low)


def test_p_value_agrees_with_the_interval() -> None:
    x = binary_table(np.random.default_rng(6), 100, mean=0.58)
    draws = stats.draw_bootstrap([x], stats.pick_rate, n_resamples=4000, seed=1)
    for method in ("percentile", "bca"):
        res = stats.interval(draws, method=method)
        for anchor in (0.3, 0.45, 0.5, 0.55, res.ci_low - 1e-3, res.ci_low + 1e-3, res.ci_high + 1e-3, 0.8):
            p = stats.interval(draws, method=method, anchor=anchor).p_value
            outside = anchor < res.ci_low or anchor > res.ci_high
            assert (p < 0.05) == outside, (method, anchor, p, res)


def test_unpaired_groups_are_resampled_separately() -> None:
    rng = np.random.default_rng(7)
    high, low = binary_table(rng, 50, mean=0.9), binary_table(rng, 30, mean=0.2)
    res = stats.bootstrap([high, low], stats.asymmetry, paired=False, anchor=0.0, n_resamples=1000)
    assert res.n_units == 80
    assert 0.0 < res.ci_low < res.estimate < res.ci_high
    assert res.p_value < 0.01
    with pytest.raises(ValueError, match="share their unit axis"):
        stats.bootstrap([high, low], stats.asymmetry, paired=True)


def test_seeds_are_resampled_first_and_pooled_by_their_mean() -> None:
    # two seeds that disagree completely; units and samples carry no noise
    seeds = np.stack([np.zeros((30, 4)), np.ones((30, 4))])
    base = np.zeros((30, 4))
    draws = stats.draw_bootstrap([seeds, base], stats.delta(stats.pick_rate), n_resamples=2000, seed=0)
    assert draws.estimate == 0.5 and draws.n_seeds == 2
    assert set(np.unique(draws.draws)) == {0.0, 0.5, 1.0}
    assert 0.15 < np.mean(draws.draws == 0.0) < 0.35  # seed draws (0, 0): a quarter
    res = stats.interval(draws, method="percentile")
    assert (res.ci_low, res.ci_high) == (0.0, 1.0)
    with pytest.raises(ValueError, match="share it"):
        stats.bootstrap([seeds, np.zeros((3, 30, 4))], stats.delta(stats.pick_rate))


def test_second_level_resamples_only_scored_samples() -> None:
    # every unit has one scored 1 and unscored cells; resampling among scored cells keeps rate 1
    x = np.full((25, 6), nan)
    x[:, 2] = 1.0
    res = stats.bootstrap([x], stats.pick_rate, within="resample", n_resamples=300)
    assert (res.ci_low, res.ci_high) == (1.0, 1.0)


def test_two_level_bootstrap_is_wider_for_means() -> None:
    x = binary_table(np.random.default_rng(9), 100, n_samples=4)
    fixed = stats.bootstrap([x], stats.pick_rate, within="fixed", n_resamples=3000, method="percentile")
    two = stats.bootstrap([x], stats.pick_rate, within="resample", n_resamples=3000, method="percentile")
    assert (two.ci_high - two.ci_low) > 1.05 * (fixed.ci_high - fixed.ci_low)


# --------------------------------------------------------------------------- Holm


def test_holm_textbook_example() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, nan, 0.2]), [0.5, nan, 0.4])
    np.testing.assert_allclose(stats.holm([0.6, 0.7]), [1.0, 1.0])


def test_holm_table_over_models_and_probes() -> None:
    table = pd.DataFrame({"model": ["a", "a", "b", "b"], "probe": ["two_ai", "recognition"] * 2,
                          "p_value": [0.01, 0.04, 0.03, 0.005]})
    out = stats.holm_table(table)
    np.testing.assert_allclose(out["p_holm"], [0.03, 0.06, 0.06, 0.02])
    per_model = stats.holm_table(table, family=["model"])
    np.testing.assert_allclose(per_model["p_holm"], [0.02, 0.04, 0.03, 0.01])
    assert "p_holm" not in table.columns


def test_cluster_means_group_items_by_prompt_with_their_means() -> None:
    # item p1:2 has one unscored cell; p2:1 has none scored; "solo" has no ":" and is its own prompt
    items = UnitSamplesFor(["p1:1", "p1:2", "p2:1", "p3:1", "solo"],
                           [[1, 0], [1, nan], [nan, nan], [0, 0], [1, 1]])
    got = stats.cluster_means(items, stats.response_prompt)
    assert got.units == ("p1", "p2", "p3", "solo") and got.columns == (("item", 0), ("item", 1))
    np.testing.assert_array_equal(got.values, [[0.5, 1.0], [nan, nan], [0.0, nan], [1.0, nan]])
    # each response weighs one, as the unit-level rate over responses does
    assert stats.cell_mean(got.values) == pytest.approx(stats.pick_rate(items.values)) == pytest.approx(0.625)
    # a fixed cluster axis (shared by paired arrays): absent clusters are all-NaN, unknown ones dropped
    fixed = stats.cluster_means(items, stats.response_prompt, ["p3", "p9", "p1"])
    np.testing.assert_array_equal(fixed.values, [[0.0, nan], [nan, nan], [0.5, 1.0]])
    # stacked seeds [K, U, S] keep their leading axis
    stacked = stats.UnitSamples(values=np.stack([items.values, 1 - items.values]), units=items.units,
                                models=("s0", "s1"), columns=items.columns)
    both = stats.cluster_means(stacked, stats.response_prompt)
    np.testing.assert_array_equal(both.values[0], got.values)
    np.testing.assert_array_equal(both.values[1], [[0.5, 0.0], [nan, nan], [1.0, nan], [0.0, nan]])
    assert stats.response_prompt("a:b:3") == "a:b"


def UnitSamplesFor(units: list[str], values: list[list[float]]) -> stats.UnitSamples:  # noqa: N802
    return stats.UnitSamples(values=np.array(values, dtype=float), units=tuple(units), models=("m",),
                             columns=tuple(("c", k) for k in range(len(values[0]))))


def _clustered_study(seed: int, mixed: bool) -> tuple[stats.UnitSamples, stats.UnitSamples]:
    """60 prompts x 4 own responses, 10 answers each; a prompt's effect sets how often all of its
    responses are claimed. ``mixed``: every prompt has 2 high and 2 low responses; else a prompt's
    responses are all high or all low."""
    rng = np.random.default_rng(seed)
    units: dict[bool, list[str]] = {True: [], False: []}
    values: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for p, effect in enumerate(rng.random(60)):
        for r in range(4):
            high = bool(r % 2) if mixed else bool(p % 2)
            units[high].append(f"q{p}:{r}")
            values[high].append((rng.random(10) < effect).astype(float))
    return UnitSamplesFor(units[True], values[True]), UnitSamplesFor(units[False], values[False])


def _both_schemes(high: stats.UnitSamples, low: stats.UnitSamples) -> tuple[stats.BootstrapResult, stats.BootstrapResult]:
    prompts = sorted({stats.response_prompt(u) for u in high.units + low.units})
    arrays = [stats.cluster_means(g, stats.response_prompt, prompts) for g in (high, low)]
    clustered = stats.bootstrap(arrays, stats.clustered_asymmetry, n_resamples=1000, seed=0)
    per_response = stats.bootstrap([high.values, low.values], stats.asymmetry, paired=False, n_resamples=1000, seed=0)
    assert clustered.estimate == pytest.approx(per_response.estimate)
    assert clustered.n_units == 60 and per_response.n_units == 240
    return clustered, per_response


def test_clustered_asymmetry_resamples_prompts_whole_and_paired() -> None:
    """The responses to one prompt share its effect. Resampled as whole prompts, both buckets
    together: the interval narrows where a prompt's effect cancels between its high and low
    responses, and widens where a prompt's responses sit in one bucket and are not independent
    draws (taking them as such is what made the old intervals too narrow: bench/coverage.py)."""
    clustered, per_response = _both_schemes(*_clustered_study(3, mixed=True))
    width = {name: r.ci_high - r.ci_low for name, r in (("clustered", clustered), ("responses", per_response))}
    assert width["clustered"] < 0.6 * width["responses"], width
    clustered, per_response = _both_schemes(*_clustered_study(3, mixed=False))
    width = {name: r.ci_high - r.ci_low for name, r in (("clustered", clustered), ("responses", per_response))}
    assert width["clustered"] > 1.5 * width["responses"], width


def test_exceeds_ignores_a_rounding_step_past_the_threshold() -> None:
    on_the_threshold = 66 / 350 - 31 / 350  # 35/350 = 0.10, computed one rounding step above it
    assert on_the_threshold > 0.10
    assert not stats.exceeds(on_the_threshold, 0.10)
    assert stats.exceeds(36 / 350 - 0 / 350, 0.10) and not stats.exceeds(0.09, 0.10)


def test_debiased_rate_pairs_the_two_orders_item_by_item() -> None:
    # An always-"A" model (no preference) over 100 items, the misaligned description at A in the
    # original order for items 0-49; it refuses half the items whenever the misaligned one is second.
    original, swapped = np.full((100, 1), np.nan), np.full((100, 1), np.nan)
    for item in range(100):
        at_a = item < 50  # in the original order
        refuses = item % 50 < 25
        if at_a or not refuses:
            original[item] = 1.0 if at_a else 0.0
        if not at_a or not refuses:
            swapped[item] = 0.0 if at_a else 1.0
    mean_of_orders = 0.5 * (stats.pick_rate(original) + stats.pick_rate(swapped))
    assert mean_of_orders == pytest.approx(2 / 3)  # each order's own items lean one way
    assert stats.debiased_rate(original, swapped) == pytest.approx(0.5)
    assert stats.one_order_units(original, swapped) == 50
    # every item in both orders: the mean of the two orders' rates, as before
    full_o, full_s = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, np.nan], [1.0, 0.0]])
    assert stats.debiased_rate(full_o, full_s) == pytest.approx(0.5 * (stats.pick_rate(full_o) + stats.pick_rate(full_s)))
    assert stats.one_order_units(full_o, full_s) == 0


def test_bca_acceleration_skips_an_undefined_leave_one_out_value() -> None:
    values = np.array([0.1, 0.2, 0.9, 0.15])
    with_gap = np.array([0.1, 0.2, np.nan, 0.9, 0.15])
    expected = stats._acceleration([values])
    assert expected != 0.0
    assert stats._acceleration([with_gap]) == pytest.approx(expected)
    assert stats._acceleration([np.array([np.nan, np.nan])]) == 0.0  # nothing defined: flat
    assert stats._acceleration([]) == 0.0


def test_digits_and_p_values_stay_on_their_side_of_a_threshold() -> None:
    assert stats.digits_apart([0.1029, 0.4], 0.1) == 3
    assert stats.digits_apart([0.1, 0.4], 0.1) == 2  # on the anchor: printed as it
    assert stats.digits_apart([0.3, 0.4], 0.1) == 2
    assert stats.digits_apart([0.1000001], 0.1) == 6  # at most six
    assert stats.format_p(0.0496, 0.05) == "0.0496"
    assert stats.format_p(0.0504, 0.05) == "0.05"  # not below alpha, as it reads
    assert stats.format_p(0.012, 0.05) == "0.012"
    assert stats.format_p(float("nan"), 0.05) == "nan"
