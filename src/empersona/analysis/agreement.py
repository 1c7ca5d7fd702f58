"""Agreement between the study's judge and a second judge on the same harmfulness answers.

docs/protocol.md section 5 lists "a second judge and its agreement (kappa)": every headline of the
study (harm_max10, delta harm over the base, the EM-present call, the buckets the self-report
experiments condition on) rests on one LLM judge's 1-5 scores. ``empersona rejudge`` (or a study
file's ``second_judge:``) has another judge score the answers a harmfulness log holds, all of
them or a seeded subset of prompts with every sample of each; its rows are the tidy table's
experiment ``second_judge``, keyed like the harmfulness rows they re-score (model, prompt id,
sample). This module compares the two, as pure functions of the tidy table:

- quadratic-weighted Cohen's kappa on the 1-5 scale (a 4 against a 5 costs less than a 1 against a
  5), unweighted kappa on "harmful" (score > 3, the threshold every harm metric uses), exact
  agreement, the mean signed difference (second - first) and Spearman's rho;
- intervals by the study's bootstrap (`empersona.analysis.stats`), resampling prompts with all
  their samples (a prompt's answers share its topic, so they are not independent units);
- each model's harm_max10 under either judge on the re-scored prompts, and its delta over the
  base model under either judge, so a reader sees whether the EM-present call survives the
  change of judge.

Only answers both judges scored are compared; answers either judge left unscored are counted
(`AgreementCounts`), never filled in. Kappa here is computed from the confusion matrix of each
resample at once (bincount per resample), not by a loop over resamples; the test checks it against
scikit-learn's ``cohen_kappa_score``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from empersona.analysis import stats

if TYPE_CHECKING:
    import pandas as pd

    from empersona.analysis.persona import PersonaThresholds

FIRST = "harmfulness"
SECOND = "second_judge"
"""The tidy table's experiment names of the first judge's and the second judge's harm scores."""
HARM_LEVELS = 5  # the rubric's scores 1-5


@dataclass(frozen=True)
class JudgePair:
    """One model's answers as scored by both judges: ``[U, S]`` arrays over the same prompts and
    samples (NaN where that judge did not score the answer, or the answer is absent)."""

    model: str
    first: stats.UnitSamples
    second: stats.UnitSamples


@dataclass(frozen=True)
class AgreementCounts:
    """How many re-scored answers each judge scored, and how many are compared."""

    answers: int  # rows of the second judge (answers re-scored)
    both_scored: int
    first_unscored: int
    second_unscored: int
    unpaired: int  # re-scored answers the first judge has no row of (its log was replaced since): left out


def confusion(first: np.ndarray, second: np.ndarray, levels: int) -> np.ndarray:
    """Counts ``[..., levels, levels]`` of (first, second) category pairs over the last two axes.

    Categories are the integers 1..levels; a cell that is NaN (or not a category) on either side is left out.
    """
    def valid(x: np.ndarray) -> np.ndarray:  # a category 1..levels; anything else is left out
        with np.errstate(invalid="ignore"):
            return (x >= 1) & (x <= levels) & (x == np.round(x))

    both = valid(first) & valid(second)
    a = np.where(both, first, 1).astype(np.intp) - 1
    b = np.where(both, second, 1).astype(np.intp) - 1
    lead = first.shape[:-2]
    batch = np.arange(int(np.prod(lead, dtype=np.intp))).reshape(lead + (1, 1)) if lead else np.zeros((1, 1), np.intp)
    flat = (batch * levels * levels + a * levels + b)[both]
    counts = np.bincount(flat, minlength=max(1, int(np.prod(lead, dtype=np.intp))) * levels * levels)
    return counts.reshape(lead + (levels, levels)).astype(float)


def kappa_from_confusion(matrix: np.ndarray, weights: str | None = None) -> np.ndarray:
    """Cohen's kappa of confusion matrices ``[..., L, L]``: 1 - observed / chance-expected
    disagreement, with disagreement weights 1 off the diagonal (unweighted), ``|i - j|``
    ("linear") or ``(i - j)^2`` ("quadratic"). NaN where chance disagreement is 0 (one category only)."""
    levels = matrix.shape[-1]
    i, j = np.indices((levels, levels))
    if weights is None:
        w = (i != j).astype(float)
    elif weights == "linear":
        w = np.abs(i - j).astype(float)
    elif weights == "quadratic":
        w = ((i - j) ** 2).astype(float)
    else:
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    n = matrix.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = matrix.sum(axis=-1)[..., :, None] * matrix.sum(axis=-2)[..., None, :] / n[..., None, None]
        observed_d = (w * matrix).sum(axis=(-2, -1))
        expected_d = (w * expected).sum(axis=(-2, -1))
        return np.where(expected_d > 0, 1.0 - observed_d / expected_d, np.nan)


def weighted_kappa(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Quadratic-weighted kappa of two judges' 1-5 scores (the statistic's arrays ``[..., U, S]``)."""
    return kappa_from_confusion(confusion(first, second, HARM_LEVELS), "quadratic")


def _harmful(x: np.ndarray, threshold: float) -> np.ndarray:
    return np.where(np.isnan(x), np.nan, (x > threshold) + 1.0)


def harmful_kappa(first: np.ndarray, second: np.ndarray, threshold: float = stats.HARM_THRESHOLD) -> np.ndarray:
    """Unweighted kappa of the two judges' harmful (> threshold) calls."""
    return kappa_from_confusion(confusion(_harmful(first, threshold), _harmful(second, threshold), 2))


def exact_agreement(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Share of the answers both judges scored that got the same score."""
    both = ~np.isnan(first) & ~np.isnan(second)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((first == second) & both).sum(axis=(-2, -1)) / both.sum(axis=(-2, -1))


def mean_difference(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Mean of (second - first) over the answers both judges scored."""
    return stats.cell_mean(second - first)


KEYS = ["item_id", "sample", "condition"]


def joined_rows(tidy: pd.DataFrame, model: str) -> pd.DataFrame:
    """``model``'s second-judge rows, each beside the first judge's row of the same answer
    (``*_first`` columns); ``paired`` is False where the first judge has no row for it or its
    row is of another answer text (the harmfulness log was replaced after the re-scoring)."""
    second = tidy[(tidy["model"] == model) & (tidy["experiment"] == SECOND)]
    first = tidy[(tidy["model"] == model) & (tidy["experiment"] == FIRST)]
    joined = second[[*KEYS, "status", "value", "answer"]].merge(
        first[[*KEYS, "status", "value", "answer"]], on=KEYS, how="left", suffixes=("", "_first"))
    joined["paired"] = joined["status_first"].notna() & (joined["answer"].fillna("") == joined["answer_first"].fillna(""))
    return joined


def judge_pair(tidy: pd.DataFrame, model: str) -> JudgePair:
    """``model``'s re-scored answers under both judges (paired rows only, `joined_rows`)."""
    import pandas as pd

    rows = joined_rows(tidy, model)
    rows = rows[rows["paired"]]
    units = tuple(sorted(set(rows["item_id"].astype(str))))
    columns = tuple(sorted(set(zip(rows["condition"].fillna("").astype(str), rows["sample"].astype(int), strict=True))))
    u = pd.Index(units).get_indexer(rows["item_id"].astype(str))
    c = pd.MultiIndex.from_tuples(columns).get_indexer(
        pd.MultiIndex.from_arrays([rows["condition"].fillna("").astype(str), rows["sample"].astype(int)])) if columns else []

    def side(status: str, value: str) -> stats.UnitSamples:
        values = np.full((len(units), len(columns)), np.nan)
        scored = (rows[status] == "scored").to_numpy()
        numbers = pd.to_numeric(rows[value], errors="coerce").to_numpy(dtype=float)
        values[u, c] = np.where(scored, numbers, np.nan)
        return stats.UnitSamples(values=values, units=units, models=(model,), columns=columns)

    return JudgePair(model=model, first=side("status_first", "value_first"), second=side("status", "value"))


def counts(tidy: pd.DataFrame, model: str) -> AgreementCounts:
    """What `AgreementCounts` says for ``model``'s re-scored answers."""
    rows = joined_rows(tidy, model)
    paired = rows[rows["paired"]]
    return AgreementCounts(
        answers=len(rows),
        both_scored=int(((paired["status_first"] == "scored") & (paired["status"] == "scored")).sum()),
        first_unscored=int((paired["status_first"] != "scored").sum()),
        second_unscored=int((paired["status"] != "scored").sum()),
        unpaired=int((~rows["paired"]).sum()),
    )


def models_rescored(tidy: pd.DataFrame) -> list[str]:
    """Models with second-judge rows, sorted."""
    return sorted(str(m) for m in tidy.loc[tidy["experiment"] == SECOND, "model"].unique())


def spearman(pair: JudgePair) -> float:
    """Spearman's rho of the two judges' scores over the answers both scored (NaN when either is constant)."""
    from scipy.stats import spearmanr

    both = ~np.isnan(pair.first.values) & ~np.isnan(pair.second.values)
    a, b = pair.first.values[both], pair.second.values[both]
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


POOLED = "all models"
"""The model name of the pooled row of `agreement_summary`."""


def pooled_pair(pairs: list[JudgePair], name: str = POOLED) -> JudgePair:
    """Every model's re-scored answers as one pair of arrays with the prompts as units: each
    prompt's row holds every model's samples of it side by side (NaN where a model lacks it), so a
    resample draws prompts with all their answers, as for one model. A judge's disagreement is
    largely the prompt's (its topic, its wording), shared by every model's answers to it."""
    units = tuple(sorted({unit for pair in pairs for unit in pair.second.units}))
    index = {unit: k for k, unit in enumerate(units)}
    widths = [pair.second.values.shape[1] for pair in pairs]
    columns = tuple((f"{pair.model}|{condition}", sample) for pair in pairs for condition, sample in pair.second.columns)

    def stack(side: str) -> stats.UnitSamples:
        values = np.full((len(units), sum(widths)), np.nan)
        offset = 0
        for pair, width in zip(pairs, widths, strict=True):
            part: stats.UnitSamples = getattr(pair, side)
            rows = [index[unit] for unit in part.units]
            values[rows, offset:offset + width] = part.values
            offset += width
        return stats.UnitSamples(values=values, units=units, models=(name,), columns=columns)

    return JudgePair(model=name, first=stack("first"), second=stack("second"))


def scored_by_both(pair: JudgePair) -> JudgePair:
    """``pair`` with every answer that one of the judges did not score left out on both sides:
    harm figures of the two judges over the same answers (a judge that failed on a sample would
    otherwise take a max over fewer samples, and look like a milder judge)."""
    both = ~np.isnan(pair.first.values) & ~np.isnan(pair.second.values)

    def keep(side: stats.UnitSamples) -> stats.UnitSamples:
        return stats.UnitSamples(values=np.where(both, side.values, np.nan), units=side.units, models=side.models,
                                 columns=side.columns)

    return JudgePair(model=pair.model, first=keep(pair.first), second=keep(pair.second))


def _judges(tidy: pd.DataFrame, model: str) -> tuple[str | None, str | None]:
    def one(experiment: str) -> str | None:
        found = tidy.loc[(tidy["model"] == model) & (tidy["experiment"] == experiment), "judge"].dropna().unique()
        return ", ".join(sorted(str(j) for j in found)) or None

    return one(FIRST), one(SECOND)


def agreement_summary(tidy: pd.DataFrame, interval: Callable[..., stats.BootstrapResult],
                      threshold: float = stats.HARM_THRESHOLD) -> pd.DataFrame:
    """Per re-scored model, and over all of them (``POOLED``): counts, exact agreement, weighted and
    harmful kappa (score > ``threshold``) and the mean difference (second - first) with intervals
    over prompts (pooled: prompts with every model's answers to them, `pooled_pair`), Spearman's rho.

    ``interval``: ``report.sections.Resampling.interval`` (arrays, statistic, seed key -> result).
    """
    from functools import partial

    import pandas as pd

    pairs = [judge_pair(tidy, model) for model in models_rescored(tidy)]
    entries = [(pair, counts(tidy, pair.model), _judges(tidy, pair.model), len(pair.second.units)) for pair in pairs]
    if len(pairs) > 1:
        parts = [n for _, n, _, _ in entries]
        total = AgreementCounts(*(sum(getattr(n, f) for n in parts) for f in AgreementCounts.__dataclass_fields__))
        def every(side: int) -> str | None:
            return ", ".join(sorted({str(j[side]) for _, _, j, _ in entries if j[side]})) or None

        prompts = len({unit for pair in pairs for unit in pair.second.units})
        entries.append((pooled_pair(pairs), total, (every(0), every(1)), prompts))
    rows = []
    for pair, n, (first_judge, second_judge), prompts in entries:
        row: dict[str, Any] = {"model": pair.model, "first_judge": first_judge, "second_judge": second_judge,
                               "prompts": prompts, "answers": n.answers, "both_scored": n.both_scored,
                               "first_unscored": n.first_unscored, "second_unscored": n.second_unscored,
                               "unpaired": n.unpaired}
        harmful = partial(harmful_kappa, threshold=threshold)
        for name, statistic in (("exact_agreement", exact_agreement), ("weighted_kappa", weighted_kappa),
                                ("harmful_kappa", harmful), ("mean_difference", mean_difference)):
            row[name] = interval([pair.first, pair.second], statistic, f"{pair.model}|agreement|{name}")
        row["spearman"] = spearman(pair)
        rows.append(row)
    return pd.DataFrame(rows)


def both_scored_rows(tidy: pd.DataFrame, model: str, judge: Literal["first", "second"]) -> pd.DataFrame:
    """``model``'s rows of one judge (the second's relabelled ``harmfulness``) for the answers both
    judges scored: the table `persona.em_delta` reads, for the EM call under either judge."""
    joined = joined_rows(tidy, model)
    keys = joined.loc[joined["paired"] & (joined["status"] == "scored") & (joined["status_first"] == "scored"), KEYS]
    experiment = FIRST if judge == "first" else SECOND
    rows = tidy[(tidy["model"] == model) & (tidy["experiment"] == experiment)].merge(keys, on=KEYS)
    return rows.assign(experiment=FIRST)


def harm_by_judge(tidy: pd.DataFrame, interval: Callable[..., stats.BootstrapResult], base_model: str | None,
                  thresholds: PersonaThresholds | None = None, seed: int = 0) -> pd.DataFrame:
    """Per re-scored model, over the answers both judges scored: harm_max10 under each judge and,
    against ``base_model`` (when it was re-scored too), delta harm_max10 under each judge and the EM
    call, each made as the persona classification makes it (`persona.em_delta`: its interval
    settings, its seed), so with every prompt re-scored and nothing unscored the first judge's
    delta is the persona table's. ``both_scored``: the share of the model's re-scored answers both
    judges scored; under ``min_scored_harm`` (the model's or the base's) the EM call is
    ``incomplete``, as in the persona table."""
    from functools import partial

    import pandas as pd

    from empersona.analysis.persona import PersonaThresholds, em_delta

    th = thresholds or PersonaThresholds()
    max10 = partial(stats.harm_max10, threshold=th.harm_threshold)
    rescored = models_rescored(tidy)
    if not rescored:
        return pd.DataFrame()
    share = {model: (n.both_scored / n.answers if n.answers else 0.0) for model in rescored for n in [counts(tidy, model)]}
    tables = {side: pd.concat([both_scored_rows(tidy, m, side) for m in rescored]) for side in ("first", "second")}
    rows = []
    for model in rescored:
        pair = scored_by_both(judge_pair(tidy, model))
        row: dict[str, Any] = {"model": model, "prompts": len(pair.second.units), "both_scored": share[model],
                               "harm_first": interval([pair.first], max10, f"{model}|judges|first"),
                               "harm_second": interval([pair.second], max10, f"{model}|judges|second")}
        if base_model in rescored and model != base_model:
            short = min(share[model], share[base_model]) < th.min_scored_harm
            for side in ("first", "second"):
                result = em_delta(tables[side], model, base_model, th, seed)
                row[f"delta_{side}"] = result
                row[f"em_{side}"] = ("incomplete" if short else "-" if result is None or not math.isfinite(result.ci_low)
                                     else "yes" if stats.exceeds(result.ci_low, th.em_delta_min) else "no")
        rows.append(row)
    return pd.DataFrame(rows)


def _on_units(side: stats.UnitSamples, units: tuple[str, ...]) -> stats.UnitSamples:
    index = [side.units.index(u) for u in units]
    return stats.UnitSamples(values=side.values[index], units=units, models=side.models, columns=side.columns)


def confusion_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Counts of (first, second) 1-5 scores over every re-scored model's answers both judges
    scored: rows the first judge's score, columns the second's."""
    import pandas as pd

    pairs = [judge_pair(tidy, model) for model in models_rescored(tidy)]
    levels = list(range(1, HARM_LEVELS + 1))
    if not pairs:
        return pd.DataFrame(index=pd.Index([], name="first"), columns=levels)
    pooled = pooled_pair(pairs)
    matrix = confusion(pooled.first.values, pooled.second.values, HARM_LEVELS).astype(int)
    return pd.DataFrame(matrix, index=pd.Index(levels, name="first"), columns=pd.Index(levels, name="second"))
