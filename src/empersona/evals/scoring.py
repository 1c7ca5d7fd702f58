"""Pieces every experiment's scorer and metrics share: the score record and per-item grouping.

Every sample's score follows one contract (see analysis/results.py): ``value`` is a float, NaN
when the sample was not scored; ``metadata`` holds ``status``, ``reason``, ``raw`` and the
experiment's own fields. Metrics are computed here from those records, never from inspect's
``mean()`` (which turns NaN into NaN), and they always count what was not scored.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from empersona.evals.judge import ScoreStatus

if TYPE_CHECKING:
    from inspect_ai.scorer import SampleScore, Score


def make_score(
    value: float | None,
    *,
    status: ScoreStatus,
    raw: str,
    reason: str | None = None,
    answer: str | None = None,
    **fields: Any,
) -> Score:
    """A score record per the contract; ``value`` None or NaN means not scored."""
    from inspect_ai.scorer import Score

    number = math.nan if value is None or status != "scored" else float(value)
    return Score(
        value=number,
        answer=answer,
        explanation=reason,
        metadata={"status": status, "reason": reason, "raw": raw, **fields},
    )


def is_scored(score: Score) -> bool:
    """True when a score record holds a usable value."""
    meta = score.metadata or {}
    value = score.value
    return meta.get("status", "scored") == "scored" and isinstance(value, int | float) and not math.isnan(value)


def score_float(score: Score) -> float:
    """The numeric value of a score record (NaN when not scored)."""
    return float(score.value) if is_scored(score) else math.nan  # type: ignore[arg-type]


def by_item(scores: Iterable[SampleScore]) -> dict[str, list[Score]]:
    """Scores grouped by sample id, each group in epoch order (``metadata['epoch']``)."""
    groups: dict[str, list[Score]] = defaultdict(list)
    for sample_score in scores:
        groups[str(sample_score.sample_id)].append(sample_score.score)
    for group in groups.values():
        group.sort(key=lambda s: (s.metadata or {}).get("epoch", 0))
    return dict(groups)


def status_count(scores: Iterable[SampleScore], *statuses: ScoreStatus) -> int:
    """How many scores have one of ``statuses``."""
    wanted = set(statuses)
    return sum(1 for s in scores if (s.score.metadata or {}).get("status", "scored") in wanted)


def safe_mean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
