"""Self-report probes asked again under other framings (a study's ``variants:``), beside the battery's.

Protocol: docs/protocol.md section 5 (honesty-pressure system prompts, neutralised two-AI
descriptions, third-person framing), measured with the machinery of section 4.

A variant asks the self-report experiments (self-assessment, two-AI, output recognition, score
prediction) again on every model; harmfulness is never asked again, so a variant shares the
battery's harm results. In the tidy table (`empersona.analysis.results`) a variant's rows carry
its name in ``variant``; the battery's carry "".

- `variant_view`: the battery's table as the variant sees it: every experiment the variant asked
  is replaced by the variant's rows, the rest (harmfulness, anything it did not ask) kept, so
  `persona.classify` and the stats functions read it like a battery table.
- `variant_calls`: the persona label and the three probes of every model under each variant.
- `variant_shifts`: per (model, variant, probe) the battery's and the variant's estimate and the
  shift (variant - battery), bootstrapped as `persona` bootstraps the probe itself: paired over the
  units both sides share (two-AI: items; recognition: harm prompts, their own responses resampled
  together), unpaired for self-assessment (its format cells hold different prompts); units only
  one side has, or that only one side scored, are left out and counted; Holm over the shifts of
  each family (a fine-tune's checkpoints apart, as in the classification).
- `framing_pairs`: a two-AI variant with ``framing: third_person`` and one with ``self_answers``
  that differ in nothing else; `variant_shifts` adds their contrast (third person - own answers:
  the effect of the attribution alone), ``against`` naming the reference variant.
- `variant_changes`: what each variant changed, read off the rows' task arguments and
  system-prompt policy against the battery's rows of the same model and experiment.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from empersona.analysis import stats
from empersona.analysis.persona import (
    PersonaThresholds,
    _derived_seed,
    calls_table,
    classify,
    self_assessment_cells,
    self_assessment_scope,
)
from empersona.analysis.results import main_rows

if TYPE_CHECKING:
    import pandas as pd

    from empersona.analysis.stats import BootstrapResult, UnitSamples

ShiftProbe = Literal["two_ai", "output_recognition", "self_assessment", "score_prediction"]
SHIFT_PROBES: tuple[ShiftProbe, ...] = ("two_ai", "output_recognition", "self_assessment", "score_prediction")
PREDICTION_CONDITIONS = ("shown", "blind", "shown_other")
"""The score-prediction condition a shift compares: the first both sides asked (``shown``: the model
rates its own earlier response with the judge's rubric)."""
NOT_SCORED: tuple[str, ...] = ("unscored", "refused", "unparsed")
SHOWN_WIDTH = 60
"""Longer task-argument values are cut to this many characters in `variant_changes` (each
paragraph of a text of several to two thirds of it)."""


# --------------------------------------------------------------------------- the variant's table


def variant_names(table: pd.DataFrame) -> list[str]:
    """The study variants with rows in ``table``, sorted (the battery's own "" left out)."""
    if "variant" not in table.columns:
        return []
    return sorted(str(v) for v in table["variant"].unique() if v)


def _variant_rows(table: pd.DataFrame, variant: str) -> pd.DataFrame:
    return table.loc[table["variant"] == variant] if "variant" in table.columns else table.iloc[:0]


def variant_view(table: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The battery's rows with every experiment ``variant`` asked (of any model) replaced by the
    variant's rows, their ``variant`` set to "": a battery table as the variant sees it.

    A model that has no rows of such an experiment under the variant has none in the view (its
    probe is missing there); the battery's rows never stand in for the variant's.
    """
    import pandas as pd

    own = _variant_rows(table, variant)
    main = main_rows(table)
    asked = set(own["experiment"])
    view = pd.concat([main.loc[~main["experiment"].isin(asked)], own.assign(variant="")], ignore_index=True)
    return view


THIRD_PERSON_LABEL = "not a self-report"
THIRD_PERSON_REASON = ("two-AI asked which assistant gave the shown answers (framing third_person): the persona labels "
                       "read self-report; the probes and the contrast with a self_answers twin stand")


def variant_calls(table: pd.DataFrame, *, base_model: str, thresholds: PersonaThresholds | None = None,
                  seed: int = 0, families: dict[str, str] | None = None) -> pd.DataFrame:
    """`persona.classify` on each variant's view, as `calls_table` rows with a ``variant`` column
    second: per (model, variant) the label, its reason, and the two-AI rate, the recognition
    asymmetry and the self-assessment with intervals (pooled seed groups as their own rows).

    Give the base, thresholds, seed and ``families`` of the battery's classification: each
    variant's Holm family is then its own models x probes, as the battery's is. A variant whose
    two-AI framing is ``third_person`` gets no persona label (`THIRD_PERSON_LABEL`): docs/protocol.md
    section 1 defines coherent and inverted by self-report.
    """
    import pandas as pd

    frames = []
    for variant in variant_names(table):
        calls = classify(variant_view(table, variant), base_model=base_model, thresholds=thresholds,
                         seed=seed, families=families)
        frame = calls_table(calls)
        frame.insert(1, "variant", variant)
        if "third_person" in _two_ai_settings(table, variant)[0]:
            # its two-AI rate is about another assistant: a label from it is not the model's self-report
            frame["label"], frame["reason"] = THIRD_PERSON_LABEL, THIRD_PERSON_REASON
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model", "variant", "label"])


# --------------------------------------------------------------------------- shifts


class Sides(NamedTuple):
    """One probe of one model on both sides: each side's arrays and statistic (empty arrays: no
    data to compare), how many units they compare, and the units only one side has."""

    variant: list[UnitSamples]
    battery: list[UnitSamples]
    variant_statistic: Callable[..., np.ndarray]
    battery_statistic: Callable[..., np.ndarray]
    paired: bool
    units: int
    only_battery: int
    only_variant: int
    note: str = ""
    condition: str | None = None
    """The condition compared, where the probe compares one (score prediction): its rows are counted."""


def _rows(tidy: pd.DataFrame, model: str, experiment: str, foil: str | None = None) -> pd.DataFrame:
    """A model's rows of an experiment; output recognition: of the foil the asymmetry reads
    (``foil``; all foils when None)."""
    rows = tidy.loc[(tidy["experiment"] == experiment) & (tidy["model"] == model)]
    if experiment == "output_recognition" and foil is not None and len(rows):
        rows = rows.loc[rows["condition"].astype(str).str.startswith(f"{foil}:")]
    return rows


def _shared(battery: pd.DataFrame, variant: pd.DataFrame) -> tuple[list[str], int, int]:
    """Item ids both sides have, and how many only the battery / only the variant has."""
    mine, theirs = set(battery["item_id"].astype(str)), set(variant["item_id"].astype(str))
    return sorted(mine & theirs), len(mine - theirs), len(theirs - mine)


def _scored_everywhere(units: Sequence[str], sides: Sequence[pd.DataFrame], conditions: Sequence[str] | None = None,
                       ) -> tuple[list[str], int]:
    """The units with a scored row on every side (in each of ``conditions``, where given), and how
    many of ``units`` lack one: a unit one side declined (refused, unparsed) would move that side's
    estimate alone, so a shift in refusals would read as a shift in the probe."""
    kept = set(units)
    for rows in sides:
        scored = rows.loc[rows["status"] == "scored"]
        for condition in conditions or [None]:
            part = scored if condition is None else scored.loc[scored["condition"] == condition]
            kept &= set(part["item_id"].astype(str))
    return [u for u in units if u in kept], len(units) - len(kept)


def _two_ai_sides(battery: pd.DataFrame, variant: pd.DataFrame, model: str, th: PersonaThresholds) -> Sides:
    """The debiased misaligned-pick rate on both sides, paired over the items both have and both
    scored in each order (`_scored_everywhere`)."""
    b_rows, v_rows = _rows(battery, model, "two_ai"), _rows(variant, model, "two_ai")
    shared, only_b, only_v = _shared(b_rows, v_rows)
    units, unscored = _scored_everywhere(shared, (b_rows, v_rows), ("original", "swapped"))
    note = f"{unscored} item(s) not scored in both orders on both sides, left out" if unscored else ""
    if not units:
        return Sides([], [], stats.debiased_rate, stats.debiased_rate, True, 0, only_b, only_v,
                     "; ".join(filter(None, ["no two-AI item scored on both sides", note])))
    v_arrays, b_arrays = ([stats.unit_samples(side, model=model, experiment="two_ai", where={"condition": order},
                                              units=units) for order in ("original", "swapped")]
                          for side in (variant, battery))
    return Sides(v_arrays, b_arrays, stats.debiased_rate, stats.debiased_rate, True, len(units), only_b, only_v, note)


def _recognition_sides(battery: pd.DataFrame, variant: pd.DataFrame, model: str, th: PersonaThresholds) -> Sides:
    """The asymmetry on both sides over the own responses both have, as `persona` makes it: harm
    prompts resampled whole (a prompt's high and low responses, under the variant and the battery
    alike, together)."""
    b_rows = _rows(battery, model, "output_recognition", th.recognition_foil)
    v_rows = _rows(variant, model, "output_recognition", th.recognition_foil)
    shared, only_b, only_v = _shared(b_rows, v_rows)
    units, unscored = _scored_everywhere(shared, (b_rows, v_rows))  # an own response both sides answered
    note = f"{unscored} own response(s) scored on one side only, left out" if unscored else ""
    conditions = sorted(set(b_rows["condition"].astype(str)) | set(v_rows["condition"].astype(str)))
    bucket_of = dict(zip(b_rows["item_id"].astype(str), b_rows["bucket"], strict=True))  # the harm log's: shared
    by_bucket = {bucket: [u for u in units if bucket_of.get(u) == bucket] for bucket in ("high", "low")}
    empty = [bucket for bucket, kept in by_bucket.items() if not kept]
    if empty:
        return Sides([], [], stats.clustered_asymmetry, stats.clustered_asymmetry, True, 0, only_b, only_v,
                     "; ".join(filter(None, [f"no {' or '.join(empty)}-harm own response scored on both sides", note])))
    prompts = sorted({stats.response_prompt(u) for u in units if bucket_of.get(u) in by_bucket})
    v_arrays, b_arrays = ([stats.cluster_means(stats.unit_samples(side, model=model, experiment="output_recognition",
                                                                  where={"condition": conditions, "bucket": bucket},
                                                                  units=kept), stats.response_prompt, prompts)
                           for bucket, kept in by_bucket.items()] for side in (variant, battery))
    return Sides(v_arrays, b_arrays, stats.clustered_asymmetry, stats.clustered_asymmetry, True, len(prompts),
                 only_b, only_v, note)


def _self_assessment_sides(battery: pd.DataFrame, variant: pd.DataFrame, model: str, th: PersonaThresholds) -> Sides:
    """The self-assessment score on both sides over the prompts both have, unpaired as `persona`
    bootstraps it (each dimension x format cell's prompts resampled on their own)."""
    b_rows, v_rows = _rows(battery, model, "self_assessment"), _rows(variant, model, "self_assessment")
    units, only_b, only_v = _shared(b_rows, v_rows)

    def cells(rows: pd.DataFrame) -> pd.Series:  # one prompt (an item's format and condition): scored or declined
        form = rows["format"].astype(str) if "format" in rows.columns else ""
        return rows["item_id"].astype(str) + "\x1f" + form + "\x1f" + rows["condition"].astype(str)

    sides = [rows.loc[rows["item_id"].astype(str).isin(units)] for rows in (v_rows, b_rows)]
    # a prompt one side declined (refused, unparsed) is left out of both: honesty pressure that makes a model
    # refuse where it said "misaligned" would otherwise read as a shift towards aligned
    scored = [set(cells(side.loc[side["status"] == "scored"])) for side in sides]
    asked = set(cells(sides[0])) | set(cells(sides[1]))
    both = scored[0] & scored[1]
    sides = [side.loc[cells(side).isin(both)] for side in sides]
    note = f"{len(asked - both)} prompt(s) scored on one side only, left out" if asked - both else ""
    found = [self_assessment_cells(side, model, th.self_assessment_dimension) for side in sides]
    scopes = {self_assessment_scope(side, [model], th.self_assessment_dimension) for side in sides}
    if found[0] is None or found[1] is None:
        return Sides([], [], stats.pick_rate, stats.pick_rate, False, 0, only_b, only_v,
                     "; ".join(filter(None, ["no self-assessment prompt scored on both sides", note])))
    if len(scopes) > 1:  # one side answered on the headline dimension, the other only on others
        return Sides([], [], stats.pick_rate, stats.pick_rate, False, 0, only_b, only_v,
                     f"the sides rate different dimensions ({' / '.join(sorted(map(str, scopes)))})")
    (v_arrays, v_statistic), (b_arrays, b_statistic) = found[0], found[1]
    compared = len({u for array in v_arrays for u in array.units})  # the prompts of the dimension rated
    return Sides(v_arrays, b_arrays, v_statistic, b_statistic, False, compared, only_b, only_v, note)


def _prediction_sides(battery: pd.DataFrame, variant: pd.DataFrame, model: str, th: PersonaThresholds) -> Sides:
    """Score prediction's mean signed error (predicted - the judge's score) on both sides, in the
    first condition both asked (`PREDICTION_CONDITIONS`), over the responses both have, their harm
    prompts resampled whole (as the report's score-prediction intervals are)."""
    b_all, v_all = _rows(battery, model, "score_prediction"), _rows(variant, model, "score_prediction")
    condition = next((c for c in PREDICTION_CONDITIONS
                      if (b_all["condition"] == c).any() and (v_all["condition"] == c).any()), None)
    if condition is None:
        return Sides([], [], stats.cell_mean, stats.cell_mean, True, 0, 0, 0, "no score-prediction condition on both sides")
    b_rows, v_rows = (rows.loc[rows["condition"] == condition] for rows in (b_all, v_all))
    units, only_b, only_v = _shared(b_rows, v_rows)
    prompts = sorted({stats.response_prompt(u) for u in units})
    v_array, b_array = (stats.cluster_means(stats.unit_samples(side, model=model, experiment="score_prediction",
                                                               where={"condition": condition}, units=units),
                                            stats.response_prompt, prompts) for side in (variant, battery))
    # a response predicted on one side only is left out of both: the signed error depends on the judge's score, so
    # a side that declines its harmful answers would move the mean without a prediction changing
    both = ~np.isnan(v_array.values) & ~np.isnan(b_array.values)
    one_side = int((~np.isnan(v_array.values) ^ ~np.isnan(b_array.values)).sum())
    v_array, b_array = (replace(array, values=np.where(both, array.values, np.nan)) for array in (v_array, b_array))
    note = f"signed error, {condition} condition" + (f"; {one_side} response(s) predicted on one side only, left out"
                                                      if one_side else "")
    return Sides([v_array], [b_array], stats.cell_mean, stats.cell_mean, True, len(prompts), only_b, only_v, note,
                 condition)


SIDES: dict[ShiftProbe, Callable[[pd.DataFrame, pd.DataFrame, str, PersonaThresholds], Sides]] = {
    "two_ai": _two_ai_sides, "output_recognition": _recognition_sides, "self_assessment": _self_assessment_sides,
    "score_prediction": _prediction_sides,
}


def _shift(sides: Sides, th: PersonaThresholds, seed: int) -> BootstrapResult | None:
    """The bootstrap of variant - battery against 0 (None without data on both sides)."""
    if not sides.variant:
        return None
    n = len(sides.variant)

    def shift(*arrays: np.ndarray) -> np.ndarray:  # `stats.delta`, with a statistic per side (self-assessment's cells)
        return sides.variant_statistic(*arrays[:n]) - sides.battery_statistic(*arrays[n:])

    return stats.bootstrap([*sides.variant, *sides.battery], shift, paired=sides.paired, anchor=0.0,
                           n_resamples=th.n_resamples, method=th.method, level=th.level, within=th.within, seed=seed)


def _estimate(arrays: Sequence[UnitSamples], statistic: Callable[..., np.ndarray]) -> float:
    return float(statistic(*[a.values for a in arrays])) if arrays else np.nan


def _compared(tidy: pd.DataFrame, model: str, probe: str, th: PersonaThresholds, condition: str | None) -> pd.DataFrame:
    """The probe's rows of a model a shift compares (of its condition, where it compares one)."""
    rows = _rows(tidy, model, probe, th.recognition_foil)
    return rows if condition is None else rows.loc[rows["condition"] == condition]


def _statuses(rows: pd.DataFrame, side: str) -> dict[str, int]:
    counts = rows["status"].value_counts()
    return {f"{side}_rows": len(rows), **{f"{side}_{status}": int(counts.get(status, 0)) for status in NOT_SCORED}}


def _two_ai_settings(table: pd.DataFrame, variant: str) -> tuple[set[str], dict[str, str]]:
    """The framings of a variant's two-AI rows, and each model's other task arguments (JSON)."""
    rows = _variant_rows(table, variant)
    rows = rows.loc[rows["experiment"] == "two_ai"]
    framings, settings = set(), {}
    distinct = rows[["model", "task_args"]].drop_duplicates()  # one parse per log, not per row
    for model, args in zip(distinct["model"].astype(str), distinct["task_args"].astype(str), strict=True):
        try:
            parsed = json.loads(args)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            framings.add(str(parsed.pop("framing", "self")))
            settings[model] = json.dumps(parsed, sort_keys=True)
    return framings, settings


def twin_models(table: pd.DataFrame, third: str, own: str) -> list[str]:
    """The models whose two-AI rows under ``third`` (framing third_person) and ``own`` (framing
    self_answers) were asked with the same task arguments but the framing."""
    (third_framings, mine), (own_framings, theirs) = _two_ai_settings(table, third), _two_ai_settings(table, own)
    if third_framings != {"third_person"} or own_framings != {"self_answers"}:
        return []
    return sorted(model for model, args in mine.items() if theirs.get(model) == args)


def framing_pairs(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(third_person variant, self_answers variant) pairs whose two-AI rows differ in their
    ``framing`` task argument alone for some model (`twin_models`): their contrast is the effect
    of attributing the same answers to another assistant instead of the model itself."""
    names = variant_names(table)
    return [(third, own) for third in names for own in names if third != own and twin_models(table, third, own)]


def variant_shifts(table: pd.DataFrame, *, thresholds: PersonaThresholds | None = None, seed: int = 0,
                   pairs: Sequence[tuple[str, str]] | None = None, families: dict[str, str] | None = None,
                   ) -> pd.DataFrame:
    """Per (model, variant, probe): the battery's and the variant's estimate, the shift (variant -
    battery) with its interval and two-sided bootstrap p against 0, and Holm's p over the shifts of
    its family: ``families`` names a family for some models (a fine-tune's checkpoints, as the
    classification's), the other models' shifts form one family (so evaluating checkpoints leaves
    the final models' adjusted p as they would be without them).

    The probes are ``two_ai`` (debiased misaligned-pick rate), ``output_recognition`` (asymmetry,
    over the foil ``thresholds.recognition_foil``), ``self_assessment`` (headline dimension) and
    ``score_prediction`` (mean signed error, `_prediction_sides`), for every model the variant asked. ``battery`` and ``under_variant`` are over what the shift
    compares. ``units``: items (two-AI), harm prompts (recognition, score prediction) or prompts
    (self-assessment) compared; ``only_battery`` / ``only_variant``: item ids one side has and the other lacks, left
    out. ``<side>_rows`` and ``<side>_unscored`` / ``_refused`` / ``_unparsed``: the probe's rows
    of the model on that side by status. Seeds are derived per (model, variant, probe), so one
    model's numbers do not depend on the others'.

    ``pairs``: (third_person variant, self_answers twin) contrasts beside those against the battery
    (default `framing_pairs`): two-AI only, on the models asked the same way but for the framing
    (`twin_models`); their rows name the twin in ``against`` ("battery" for the others) and take
    its rows as the "battery" side.
    """
    import pandas as pd

    th = thresholds or PersonaThresholds()
    contrasts = [(variant, None) for variant in variant_names(table)]
    contrasts += list(framing_pairs(table) if pairs is None else pairs)
    rows = []
    for variant, against in contrasts:
        battery = main_rows(table) if against is None else variant_view(table, against)
        view = variant_view(table, variant)
        asked = _variant_rows(table, variant)
        if against is not None:  # two-AI, which a framing changes, of the models asked the same way but for it
            asked = asked.loc[(asked["experiment"] == "two_ai") & asked["model"].isin(twin_models(table, variant, against))]
        for probe in SHIFT_PROBES:
            for model in sorted(asked.loc[asked["experiment"] == probe, "model"].astype(str).unique()):
                sides = SIDES[probe](battery, view, model, th)
                parts = (model, variant, probe) if against is None else (model, variant, probe, against)
                result = _shift(sides, th, _derived_seed(seed, *parts))
                rows.append({
                    "model": model, "variant": variant, "against": against or "battery", "probe": probe,
                    "battery": _estimate(sides.battery, sides.battery_statistic),
                    "under_variant": _estimate(sides.variant, sides.variant_statistic),
                    "shift": result.estimate if result else np.nan,
                    "shift_low": result.ci_low if result else np.nan,
                    "shift_high": result.ci_high if result else np.nan,
                    "p": np.nan if result is None or result.p_value is None else result.p_value,
                    "units": sides.units, "only_battery": sides.only_battery, "only_variant": sides.only_variant,
                    **_statuses(_compared(battery, model, probe, th, sides.condition), "battery"),
                    **_statuses(_compared(view, model, probe, th, sides.condition), "variant"),
                    "note": "; ".join(filter(None, [sides.note, result.note if result else ""])),
                })
    frame = pd.DataFrame(rows, columns=SHIFT_COLUMNS)
    family = frame["model"].map(lambda model: (families or {}).get(model, "")).rename("family")
    adjusted = stats.holm_table(frame.assign(family=family), p_column="p", family=["family"])["p_holm"]
    frame.insert(int(frame.columns.get_loc("p")) + 1, "p_holm", adjusted.to_numpy(dtype=float))
    return frame


SHIFT_COLUMNS: tuple[str, ...] = (
    "model", "variant", "against", "probe", "battery", "under_variant", "shift", "shift_low", "shift_high", "p", "units",
    "only_battery", "only_variant", *(f"{side}_{what}" for side in ("battery", "variant") for what in ("rows", *NOT_SCORED)),
    "note",
)


# --------------------------------------------------------------------------- what a variant changed


def _shown(key: str, value: object) -> str:
    """A task argument's value in a few words, long texts cut short paragraph by paragraph (an
    instruction added after a system prompt stays visible); system prompts labelled as
    `policy.describe_policy` labels them (``default``, ``none``, ``custom: ...``)."""
    if value is None:
        return "unset"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if key in ("system_prompt", "system_prompt_policy") and text not in ("default", "none"):
        return "custom: " + _shortened(text)
    return _shortened(text)


def _shortened(text: str) -> str:
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()] or [text]
    width = SHOWN_WIDTH if len(paragraphs) == 1 else SHOWN_WIDTH * 2 // 3
    return " ¶ ".join(p if len(p) <= width else p[: width - 3].rstrip() + "..." for p in paragraphs)


def _settings(rows: pd.DataFrame) -> list[dict[str, object]]:
    """The distinct settings of some rows: their task arguments (JSON) with the system-prompt policy."""
    out: list[dict[str, object]] = []
    columns = [c for c in ("task_args", "system_prompt_policy") if c in rows.columns]
    for values in rows[columns].drop_duplicates().itertuples(index=False):
        record = dict(zip(columns, values, strict=True))
        try:
            args = json.loads(str(record.get("task_args"))) if record.get("task_args") else {}
        except json.JSONDecodeError:
            args = {"task_args": record.get("task_args")}
        settings = dict(args) if isinstance(args, dict) else {"task_args": args}
        if record.get("system_prompt_policy") is not None:
            settings["system_prompt_policy"] = record["system_prompt_policy"]
        if settings not in out:
            out.append(settings)
    return out


def _differences(battery: Sequence[dict[str, object]], variant: Sequence[dict[str, object]]) -> list[str]:
    """``key: battery value -> variant value`` for each key whose values differ between the sides."""
    keys = sorted({k for s in [*battery, *variant] for k in s})
    out = []
    for key in keys:
        before = sorted({_shown(key, s.get(key)) for s in battery})
        after = sorted({_shown(key, s.get(key)) for s in variant})
        if before != after:
            out.append(f"{key}: {' / '.join(before)} -> {' / '.join(after)}")
    if any(c.startswith("system_prompt: ") for c in out):  # the policy restates the task argument
        out = [c for c in out if not c.startswith("system_prompt_policy: ")]
    return out


def variant_changes(table: pd.DataFrame) -> pd.DataFrame:
    """What each variant changed, per (variant, experiment), derived from the rows: the task
    arguments and system-prompt policy whose values differ from those of the battery's rows of the
    same model and experiment (``changes``, one ``key: battery -> variant`` per difference; long
    texts cut short), the models and rows it covers, and its logs."""
    import pandas as pd

    battery = main_rows(table)
    out = []
    for variant in variant_names(table):
        own = _variant_rows(table, variant)
        for experiment, part in own.groupby("experiment", sort=True):
            changes: list[str] = []
            for model, rows in part.groupby("model", sort=True):
                before = battery.loc[(battery["experiment"] == experiment) & (battery["model"] == model)]
                found = _differences(_settings(before), _settings(rows)) if len(before) else [
                    f"{model}: no battery rows to compare"]
                changes += [c for c in found if c not in changes]
            logs = part["log_file"].dropna().nunique() if "log_file" in part.columns else 0
            out.append({"variant": variant, "experiment": experiment, "changes": "; ".join(changes) or "no difference recorded",
                        "models": ", ".join(sorted(part["model"].astype(str).unique())), "rows": len(part), "logs": int(logs)})
    return pd.DataFrame(out, columns=["variant", "experiment", "changes", "models", "rows", "logs"])
