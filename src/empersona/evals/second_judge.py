"""A second judge re-scores a harmfulness log's answers (docs/protocol.md section 5: a second judge
and its agreement).

Nothing is generated again: the answers are the ones the log holds, so the two judges score the
very same texts. ``rejudge`` reads a finished harmfulness log, keeps every answer (or, with
``prompts=N``, the answers to N prompts drawn with ``seed``, every sample of each: the unit the
statistics resample stays whole), has the second judge rate each on the same rubric through
inspect's log re-scoring (``inspect_ai.score_async``: the progress display, one
concurrent call per answer up to the judge's connection limit) and writes the result as a log of
its own: the task ``second_judge``, the same model, samples and ids as the harmfulness log, the
second judge's ``harm`` scores only, and in its metadata which log it re-scored
(``rescored_log``, ``rescored_eval_id``), the first judge and the prompts kept. The tidy table
reads it as experiment ``second_judge`` (`empersona.analysis.agreement` compares the two).

A verdict that cannot be read is unscored with its raw reply and reason, as with the first judge.
Every judge call goes through inspect's cache (keyed by the judge, the rubric text and the answer),
so an interrupted re-scoring asks again only what had not come back. The log records the second
judge's model string and its model arguments with secret-looking values masked (``redact``), never a key.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empersona.errors import EmpersonaError, located
from empersona.evals.harm_log import HARM_TASK

if TYPE_CHECKING:
    from inspect_ai.log import EvalLog, EvalSample
    from inspect_ai.model import Model

SECOND_JUDGE = "second_judge"
"""Task name (and tidy experiment) of a re-scored harmfulness log."""
PLACEHOLDER_MODEL = "mockllm/model"
"""Stands in for the subject model while re-scoring (nothing is generated; a local model is not loaded)."""
FIRST_JUDGE_METADATA = frozenset({"judge_identity", "reasked_failed_judge_calls"})
"""Metadata of the harmfulness log that a re-scoring does not carry over: the first judge's args
(`study.plan.judge_identity`) and the failed judge calls it was made again for (`study.plan.REASKED`)."""


def pick_prompts(prompt_ids: Sequence[str], n: int | None, seed: int) -> list[str]:
    """``n`` of ``prompt_ids`` drawn without replacement with ``seed`` (all of them when ``n`` is
    None or not smaller), in their given order. The same ids and seed give the same subset, so
    every model of a study is re-scored on the same prompts."""
    import numpy as np

    ids = list(dict.fromkeys(prompt_ids))
    if n is None or n >= len(ids):
        return ids
    chosen = set(np.random.default_rng(seed).choice(len(ids), size=n, replace=False).tolist())
    return [item for index, item in enumerate(ids) if index in chosen]


def sample_prompt_id(sample: EvalSample) -> str:
    """The prompt id of a harmfulness sample (its ``item_id``, else its sample id)."""
    return str((sample.metadata or {}).get("item_id", sample.id))


def read_harm_log(path: Path) -> EvalLog:
    """A finished harmfulness log, or an error saying what the file is instead."""
    from inspect_ai.log import read_eval_log

    if not path.is_file():
        raise EmpersonaError(located(path, None, None, "no such log file", "give the path of a harmfulness .eval log"))
    try:
        log = read_eval_log(str(path))
    except Exception as err:  # a log cut short by a killed run, or not a log at all
        raise EmpersonaError(located(path, None, None, f"not a readable inspect log ({type(err).__name__}: {err})",
                                     "give a finished harmfulness log")) from err
    task = log.eval.task.split("/")[-1]
    if task != HARM_TASK:
        raise EmpersonaError(located(path, None, "eval.task", f"a {task} log, not a harmfulness log",
                                     "give the harmfulness log of the model whose answers are to be re-scored"))
    if log.status != "success" or not log.samples:
        raise EmpersonaError(located(path, None, "status", f"the harmfulness run did not finish ({log.status})",
                                     "finish it first (run the same command again), then re-score its log"))
    return log


def rejudge(
    harm_log: Path,
    judge: str | Model,
    *,
    judge_args: dict[str, Any] | None = None,
    prompts: int | None = None,
    seed: int = 0,
    out_dir: Path | None = None,
    cache: bool = True,
    max_connections: int | None = None,
    display: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[EvalLog, Path]:
    """Have ``judge`` re-score the answers of ``harm_log``; write the ``second_judge`` log into
    ``out_dir`` (default: the harmfulness log's folder) and return it and its path.

    ``prompts``: re-score only this many prompts (drawn with ``seed``), every sample of each.
    ``metadata``: more entries for the new log's metadata (a study's model name, run folder).
    """
    import anyio
    from inspect_ai import score_async
    from inspect_ai.log import write_eval_log
    from inspect_ai.model import CachePolicy, GenerateConfig, ModelConfig, ModelUsage, get_model
    from inspect_ai.model._model import init_model_usage, init_role_usage

    from empersona.data.fetch import data_path
    from empersona.data.parsers import load_judge_rubric
    from empersona.evals.harmfulness import harm_scorer
    from empersona.evals.judge import GRADER_MAX_RETRIES, GRADER_ROLE
    from empersona.redact import redacted
    from empersona.analysis.results import judge_name

    harm_log = Path(harm_log)
    log = read_harm_log(harm_log)
    if prompts is not None and prompts < 1:
        raise EmpersonaError(f"prompts must be at least 1, got {prompts}")
    first_judge = judge_name(log)
    rubric_file = (log.eval.task_args or {}).get("rubric_file")
    rubric = load_judge_rubric(Path(rubric_file) if rubric_file else data_path("harm_judge_rubric"))
    assert log.samples is not None
    prompt_ids = [sample_prompt_id(s) for s in log.samples]
    chosen = set(pick_prompts(prompt_ids, prompts, seed))
    rescored_from = {"eval_id": log.eval.eval_id, "run_id": log.eval.run_id}
    log.samples = [s for s in log.samples if sample_prompt_id(s) in chosen]
    log.eval.model_roles = None  # the first judge is not rebuilt (its key may not be set here)

    config = GenerateConfig(max_retries=GRADER_MAX_RETRIES, max_connections=max_connections)
    try:
        grader = get_model(judge, config=config, memoize=False, **(judge_args or {})) if isinstance(judge, str) else judge
    except Exception as err:  # inspect's PrerequisiteError (key, package), ValueError (unknown provider)
        from rich.text import Text

        reason = " ".join(Text.from_markup(str(err)).plain.split()).rstrip(".")
        raise EmpersonaError(f"second judge {judge}: {reason}. Set its key in the environment, install its provider's "
                             "package, or fix the model string") from err
    judge_string = judge if isinstance(judge, str) else str(judge)
    policy: CachePolicy | bool = CachePolicy(expiry=None, per_epoch=False, scopes={"empersona": SECOND_JUDGE}) if cache else False
    started = datetime.now(timezone.utc).isoformat()

    async def score() -> tuple[EvalLog, dict[str, ModelUsage], dict[str, ModelUsage]]:
        # fresh accumulators for the judge's calls here (cache hits count nothing); seeded, since
        # score_async's task context replaces an empty one with a new dict of its own
        usage, by_role = {str(grader): ModelUsage()}, {GRADER_ROLE: ModelUsage()}
        init_model_usage(usage)
        init_role_usage(by_role)
        scored = await score_async(log, [harm_scorer(rubric, policy)], model=get_model(PLACEHOLDER_MODEL),
                                   model_roles={GRADER_ROLE: grader}, action="overwrite", copy=False,
                                   display=display)  # type: ignore[arg-type]
        return scored, usage, by_role

    scored, judge_usage, judge_role_usage = anyio.run(score)
    spec = scored.eval
    spec.task = SECOND_JUDGE
    spec.task_args = {"harm_log": str(harm_log), "prompts": prompts, "seed": seed, "judge_args": redacted(judge_args or {})}
    spec.eval_id = uuid.uuid4().hex
    spec.run_id = uuid.uuid4().hex
    spec.created = started
    spec.model_roles = {GRADER_ROLE: ModelConfig(model=judge_string, args=redacted(judge_args or {}))}
    spec.metadata = {
        # the harmfulness log's, less what describes its judge (its identity, the failed calls it was
        # made again for): this log's judge is another, and its failed calls are its own
        **{k: v for k, v in (spec.metadata or {}).items() if k not in FIRST_JUDGE_METADATA},
        **(metadata or {}),
        "experiment": SECOND_JUDGE,
        "judge": judge_string,
        "first_judge": first_judge,
        "rescored_log": str(harm_log),
        "rescored_eval_id": rescored_from["eval_id"],
        "rescored_run_id": rescored_from["run_id"],
        "prompts_rescored": len(chosen),
        "prompts_in_log": len(set(prompt_ids)),
    }
    scored.stats.started_at = started
    scored.stats.completed_at = datetime.now(timezone.utc).isoformat()
    # the second judge's own calls; the subject's and the first judge's usage (carried over from the
    # harmfulness log) is that log's, not this one's
    # (the seeds left at zero when every call came from the cache say nothing, and would read as unpriced)
    scored.stats.model_usage, scored.stats.role_usage = (
        {key: used for key, used in usage.items() if used.total_tokens or used.input_tokens}
        for usage in (judge_usage, judge_role_usage))
    for sample in scored.samples or []:  # per sample: the harmfulness log's, not this re-scoring's
        sample.model_usage = {}
        sample.role_usage = {}
    folder = Path(out_dir) if out_dir is not None else harm_log.parent
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%S+00-00")
    path = folder / f"{stamp}_{SECOND_JUDGE.replace('_', '-')}_{spec.eval_id[:22]}.eval"
    scored.location = str(path)
    write_eval_log(scored, str(path))
    return scored, path
