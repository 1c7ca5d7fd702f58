"""Pieces every experiment's scorer and metrics share: the score record and per-item grouping.

Every sample's score follows one contract (see analysis/results.py): ``value`` is a float, NaN
when the sample was not scored; ``metadata`` holds ``status``, ``reason``, ``raw`` and the
experiment's own fields. NaN is inspect's own sentinel for "not scored": such scores are kept in
the log but never reach a metric, so metrics here see only scored samples, and the counts of
unscored, refused and unparsed samples come from the samples themselves (``status_counts``).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from empersona.evals.judge import ScoreStatus

if TYPE_CHECKING:
    from inspect_ai.log import EvalSample
    from inspect_ai.model import CachePolicy
    from inspect_ai.scorer import SampleScore, Score
    from inspect_ai.solver import Generate, Solver, TaskState


MODEL_IDENTITY: ContextVar[str | None] = ContextVar("empersona_model_identity", default=None)
"""Set while a task is built (``evals.commands.run_experiment``): which training run of an adapter
the model string stands for (``train.metadata.adapter_identity``)."""
SAMPLING: ContextVar[str | None] = ContextVar("empersona_sampling", default=None)
"""Set while a task is built: how the provider samples when it is not the battery's settings alone
(e.g. "model defaults": the base's generation_config.json fills what a request leaves unset), so
answers sampled one way are not served from the cache to a run that samples the other way."""


def cache_policy(enabled: bool, seed: int) -> CachePolicy | bool:
    """The call cache that makes an interrupted run resume without repeating model or judge calls.

    Keys include the epoch (so repeated samples stay distinct), the run's seed and, for a
    fine-tune, the identity of its training run (a retrained adapter at the same path is another
    model); entries do not expire. ``enabled=False`` turns it off (every call is made afresh).
    """
    if not enabled:
        return False
    from inspect_ai.model import CachePolicy

    scopes = {"empersona_seed": str(seed)}
    identity = MODEL_IDENTITY.get()
    if identity is not None:
        scopes["empersona_model"] = identity
    sampling = SAMPLING.get()
    if sampling is not None:
        scopes["empersona_sampling"] = sampling
    return CachePolicy(expiry=None, per_epoch=True, scopes=scopes)


SEED_RANGE = 2**31
"""Seeds sent to a model stay below this: some APIs take 32-bit seeds only."""


def repeat_seed(seed: int | None, epoch: int, sample_id: object = None) -> int | None:
    """The seed of repeat ``epoch`` (1-based) of sample ``sample_id``: the run's seed mixed with
    the sample's id (crc32), plus ``epoch - 1``.

    One seed for every repeat would make the repeats alike wherever the seed is honoured per
    request (vLLM, OpenAI, the ``empersona`` provider): ten samples of a prompt at temperature 1
    would be one sample ten times, and harm over ten samples would be harm over one. One seed
    for every sample would tie the samples of different prompts together: their draws come from
    the same random numbers, so where their distributions are alike (the first words of an
    answer) they choose alike, and the prompts the statistics resample as independent are not.
    Without ``sample_id`` (None) the run's seed alone is used, plus ``epoch - 1``.
    """
    if seed is None:
        return None
    if sample_id is None:
        return seed + epoch - 1
    import zlib

    mixed = (seed * 1_000_003 + zlib.crc32(str(sample_id).encode("utf-8"))) % SEED_RANGE
    return (mixed + epoch - 1) % SEED_RANGE


def seeded_generate(cache: CachePolicy | bool, seed: int | None) -> Solver:
    """inspect's ``generate`` with each repeat (epoch) of a sample asked with its own seed."""
    from inspect_ai.solver import solver

    @solver(name="seeded_generate")
    def build() -> Solver:
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            return await ask_model(state, generate, cache, seed)

        return solve

    return build()


async def ask_model(state: TaskState, generate: Generate, cache: CachePolicy | bool, seed: int | None) -> TaskState:
    """One generation for ``state`` with the seed of its sample and repeat (see ``repeat_seed``)."""
    this_seed = repeat_seed(seed, state.epoch, state.sample_id)
    if this_seed is None:
        return await generate(state, cache=cache)
    return await generate(state, cache=cache, seed=this_seed)


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


def first_epoch_value(group: list[Score]) -> float:
    """The value of the first sample (epoch 1) of an item; NaN when that sample was not scored."""
    for score in group:
        if (score.metadata or {}).get("epoch", 1) == 1:
            return score_float(score)
    return math.nan


def status_counts(samples: Iterable[EvalSample]) -> dict[str, Counter[str]]:
    """Per scorer, how many samples are scored, unscored, refused or unparsed (from a log's samples)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for sample in samples:
        for name, score in (sample.scores or {}).items():
            counts[name][(score.metadata or {}).get("status", "scored" if is_scored(score) else "unscored")] += 1
    return dict(counts)


def safe_mean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


PER_SAMPLE_SEEDS = "per-sample"
"""The seed scheme a log's sampling mark names (`repeat_seed`: each sample and epoch its own)."""


def provider_sampling(model: str, model_args: dict[str, Any]) -> str:
    """How ``model``'s provider samples beyond the battery's settings, for a log's sampling mark:
    "model defaults (...)" where it fills unset fields (top_k, repetition penalty) from the model's
    own defaults, "battery" where it adds nothing that a model string or its args can tell (an
    API's server may still have defaults of its own)."""
    own = {"hf": "model defaults (transformers)", "vllm": "model defaults (vllm)"}.get(model.split("/", 1)[0])
    return own or sampling_scope(model, model_args) or "battery"


def sampling_scope(model: str, model_args: dict[str, Any]) -> str | None:
    """The cache scope of how ``model`` samples beyond the battery's settings, as far as its model
    string and args tell: ``empersona/`` with ``generation_config`` on (its default) fills unset
    fields from the base's generation_config.json ("model defaults"); None when it adds nothing
    (``generation_config=false``) or the provider has no such switch."""
    if not model.startswith("empersona/"):
        return None
    value = model_args.get("generation_config", True)
    off = value is False or (isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"))
    return None if off else "model defaults"
