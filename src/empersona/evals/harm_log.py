"""A harmfulness log read back as per-response records, for the experiments built on it.

Output recognition (docs/protocol.md 3.4) and score prediction (3.5) work on a model's own answers
to the harm prompts and the judge's 1-5 scores of them, as the ``harmfulness`` task logged them.
``read_harm_log`` turns such a log into ``LoggedResponse`` records, one per (prompt, sample):
the prompt id (``p000``), the sample number (inspect's epoch, 1-based), the prompt and response
texts, the judge's score (None when the judge reply could not be read) and its bucket (low 1-2,
moderate 3, high 4-5). Nothing is dropped here: unscored responses keep ``score=None`` and the
experiments decide what to do with them (and count them).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from empersona.errors import EmpersonaError, located
from empersona.evals.judge import HarmBucket, ScoreStatus, harm_bucket

if TYPE_CHECKING:
    from inspect_ai.log import EvalSample

HARM_TASK = "harmfulness"
HARM_SCORER = "harm"


@dataclass(frozen=True)
class LoggedResponse:
    """One logged answer to a harm prompt and its judge score (None when unscored)."""

    prompt_id: str
    epoch: int  # inspect's sample number within the prompt, 1-based
    line: int  # line of the prompt in the prompts file (orders the prompts)
    prompt: str
    response: str
    score: float | None
    status: ScoreStatus
    reason: str | None = None

    @property
    def bucket(self) -> HarmBucket | None:
        """low (1-2), moderate (3) or high (4-5); None when unscored."""
        return harm_bucket(self.score) if self.score is not None else None

    @property
    def unit_id(self) -> str:
        """``<prompt id>:<sample>``, the item id of experiments that use single responses."""
        return f"{self.prompt_id}:{self.epoch}"


@dataclass(frozen=True)
class HarmLog:
    """A harmfulness run: which model and settings, and every logged response in prompt order."""

    path: str
    model: str
    status: str
    system_prompt_policy: str | None
    judge: str | None
    responses: tuple[LoggedResponse, ...]

    def by_prompt(self) -> dict[str, list[LoggedResponse]]:
        """Responses grouped by prompt id, prompts in file order, each group in sample order."""
        groups: dict[str, list[LoggedResponse]] = defaultdict(list)
        for response in self.responses:
            groups[response.prompt_id].append(response)
        return {pid: sorted(group, key=lambda r: r.epoch) for pid, group in groups.items()}

    def first(self, responses: int | None) -> list[LoggedResponse]:
        """The first ``responses`` logged samples of each prompt (all when None), in prompt order."""
        return [r for group in self.by_prompt().values() for r in (group if responses is None else group[:responses])]


def _judge_of(log_metadata: dict[str, object] | None, roles: dict[str, object] | None) -> str | None:
    """The judge model of a run: the CLI's ``judge`` metadata, else the grader role's model."""
    judge = (log_metadata or {}).get("judge")
    if judge:
        return str(judge)
    grader = (roles or {}).get("grader")
    model = getattr(grader, "model", None)
    return str(model) if model else None


def _record(sample: EvalSample, path: Path) -> LoggedResponse:
    meta = sample.metadata or {}
    prompt = meta.get("prompt")
    line = int(meta.get("line") or 0)
    if not isinstance(prompt, str):
        raise EmpersonaError(
            f"{path}: sample {sample.id} (epoch {sample.epoch}), field metadata.prompt: missing. "
            "Pass a log written by 'empersona eval harmfulness'"
        )
    score = (sample.scores or {}).get(HARM_SCORER)
    response = sample.output.completion if sample.output else ""
    if score is None:
        reason = f"sample has no '{HARM_SCORER}' score" + (f" (error: {sample.error.message})" if sample.error else "")
        return LoggedResponse(str(sample.id), sample.epoch, line, prompt, response, None, "unscored", reason)
    meta_score = score.metadata or {}
    value = score.value
    status = meta_score.get("status", "scored")
    usable = status == "scored" and isinstance(value, int | float) and not math.isnan(value)
    return LoggedResponse(
        prompt_id=str(sample.id),
        epoch=sample.epoch,
        line=line,
        prompt=prompt,
        response=response,
        score=float(value) if usable else None,  # type: ignore[arg-type]
        status="scored" if usable else (status if status != "scored" else "unscored"),
        reason=None if usable else (meta_score.get("reason") or "no usable judge score"),
    )


def read_harm_log(path: str | Path) -> HarmLog:
    """Read a ``harmfulness`` log (``.eval`` or ``.json``) into per-response records."""
    from inspect_ai.log import read_eval_log

    from empersona.eval_logs import read_samples

    file = Path(path)
    if not file.is_file():
        raise EmpersonaError(f"{file}: harmfulness log not found. Pass the .eval file that 'empersona eval harmfulness' wrote")
    try:
        log = read_eval_log(str(file), header_only=True)
        samples = read_samples(file, drop={"events"}, resolve_attachments=True)
    except Exception as err:  # inspect raises various errors for files that are not logs
        raise EmpersonaError(f"{file}: not a readable inspect log ({err}). Pass an .eval log of the harmfulness task") from err
    if log.eval.task.split("/")[-1] != HARM_TASK:
        raise EmpersonaError(
            f"{file}: field eval.task is {log.eval.task!r}, not {HARM_TASK!r}. Pass a log of 'empersona eval harmfulness'"
        )
    if log.status != "success":  # its readers would count the prompts it reached as the whole set
        raise EmpersonaError(located(file, None, "status", f"the harmfulness run did not finish ({log.status}, "
                                     f"{len(samples)} samples)", "Finish it first (run the same command again: "
                                     "the answers that came back are reused from the cache), then pass its log"))
    if not samples:
        raise EmpersonaError(f"{file}: the log holds no samples (status {log.status}). Run the harmfulness experiment to the end first")
    metadata = dict(log.eval.metadata or {})
    task_args = dict(log.eval.task_args or {})
    roles = dict(log.eval.model_roles or {})
    records = [_record(sample, file) for sample in samples]
    responses = tuple(sorted(records, key=lambda r: (r.line, r.prompt_id, r.epoch)))
    return HarmLog(
        path=str(file),
        model=log.eval.model,
        status=log.status,
        system_prompt_policy=task_args.get("system_prompt", metadata.get("system_prompt_policy")),
        judge=_judge_of(metadata, roles),
        responses=responses,
    )
