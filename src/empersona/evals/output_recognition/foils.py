"""The foils of output recognition and the plan of its samples: which bucket a contrast foil must
reach, matched foils picked from another model's harmfulness log, ``plan_samples`` (every own
response x foil kind x order, with counts of what was left out), and ``ContrastFoils``, which has
the foil model write and the judge score one contrast foil per own response during the run.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal, get_args

from inspect_ai.dataset import Sample
from inspect_ai.model import CachePolicy, ChatMessageUser, GenerateConfig, get_model

from empersona.errors import EmpersonaError
from empersona.evals.harm_log import HarmLog, LoggedResponse
from empersona.evals.judge import HarmBucket, harm_bucket, judge_harm, judge_model
from empersona.evals.output_recognition.prompts import CONTRAST_FOIL_PROMPTS, FOIL_PENDING, RECOGNITION_PROMPTS, question
from empersona.evals.policy import system_messages
from empersona.evals.scoring import sampling_scope
from empersona.evals.two_ai import paraphrase_index

FoilKind = Literal["contrast", "matched"]
Order = Literal["own_first", "own_second"]
FoilStatus = Literal["kept", "dropped", "unjudged", "failed"]
FOIL_KINDS: tuple[FoilKind, ...] = get_args(FoilKind)
ORDERS: tuple[Order, ...] = get_args(Order)
FOIL_ROLE = "foil"


def contrast_target(own_score: float) -> HarmBucket | None:
    """The bucket a contrast foil must reach: high for an own score 1-2, low for 4-5, none for 3."""
    bucket = harm_bucket(own_score)
    return {"low": "high", "high": "low"}.get(bucket)  # type: ignore[return-value]


def same_text(a: str, b: str) -> bool:
    """Whether two responses read the same, up to case and spacing."""
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def matched_foil(own: LoggedResponse, candidates: dict[str, list[LoggedResponse]], seed: int) -> tuple[LoggedResponse | None, bool]:
    """A scored response to the same prompt text with the same score, chosen with ``seed``, and
    whether it reads the same as the own response (up to case and spacing). One that reads
    otherwise is taken where there is one: the two orders of an identical pair (both models' canned
    refusal) average to exactly 0.5, whatever the model recognises. None: no same-score answer."""
    same = [c for c in candidates.get(own.prompt.strip(), []) if c.score is not None and c.score == own.score]
    other = [c for c in same if not same_text(c.response, own.response)]
    pool = other or same
    return (random.Random(f"{seed}:match:{own.unit_id}").choice(pool) if pool else None), bool(same) and not other


IDENTICAL_FOIL = "identical"
"""A matched sample's foil status when the foil reads the same as the own response: not asked,
recorded unscored with `IDENTICAL_REASON`."""
IDENTICAL_REASON = "the matched answer reads the same as the own response: an identical pair shows no recognition"
FOIL_LOSS_REASONS: tuple[str, ...] = (
    "no foil", "foil model error", "empty foil", "foil not scored by the judge", "contrast foil missed its level",
    IDENTICAL_REASON,
)
"""How the reason of a sample that was never asked begins, its foil being unusable (`ContrastFoils`,
an identical matched pair): not the model's answer, so not counted against how much of it was scored."""


def lost_foil(reason: object) -> bool:
    """Whether an unscored sample's reason says its foil was unusable (`FOIL_LOSS_REASONS`)."""
    return isinstance(reason, str) and reason.startswith(FOIL_LOSS_REASONS)


@dataclass(frozen=True)
class FoilPlan:
    """The samples to run and the counts of own responses and foils that were not possible."""

    samples: list[Sample]
    counts: dict[str, dict[str, int]]


def plan_samples(
    own_log: HarmLog,
    kinds: tuple[FoilKind, ...],
    responses: int | None,
    matched_log: HarmLog | None,
    seed: int,
    policy: str,
    paraphrase: int | None = None,
) -> FoilPlan:
    """Every (own response, foil kind, order) sample, with counts of what was left out and why."""
    candidates: dict[str, list[LoggedResponse]] = defaultdict(list)
    for response in matched_log.responses if matched_log else ():
        candidates[response.prompt.strip()].append(response)
    counts: dict[str, dict[str, int]] = {"own": defaultdict(int), **{k: defaultdict(int) for k in kinds}}
    samples: list[Sample] = []
    for own in own_log.first(responses):
        if own.score is None:
            counts["own"]["unscored"] += 1
            continue
        counts["own"]["scored"] += 1
        bucket = harm_bucket(own.score)
        wording = paraphrase_index(seed, own.unit_id, len(RECOGNITION_PROMPTS), paraphrase)
        for kind in kinds:
            foil: dict[str, object] = {"foil_target": None, "foil_response": None, "foil_score": None, "foil_source": None}
            if kind == "contrast":
                target = contrast_target(own.score)
                if target is None:
                    counts[kind][f"not_applicable/{bucket}"] += 1
                    continue
                foil["foil_target"] = target
            else:
                match, identical = matched_foil(own, candidates, seed)
                if match is None:
                    counts[kind][f"unavailable/{bucket}"] += 1
                    continue
                foil.update(foil_response=match.response, foil_score=match.score, foil_source=f"{matched_log.model if matched_log else ''} {match.unit_id}")
                if identical:  # kept in the log, unscored and not asked (`recognition_solver`)
                    foil.update(foil_status=IDENTICAL_FOIL, foil_reason=IDENTICAL_REASON)
            counts[kind][f"{IDENTICAL_FOIL if foil.get('foil_status') == IDENTICAL_FOIL else 'planned'}/{bucket}"] += 1
            for order in ORDERS:
                meta = {
                    "item_id": own.unit_id,
                    "condition": f"{kind}:{order}",
                    "prompt_id": own.prompt_id,
                    "response_sample": own.epoch,
                    "prompt": own.prompt,
                    "own_response": own.response,
                    "own_score": own.score,
                    "bucket": bucket,
                    "foil_kind": kind,
                    "order": order,
                    "own_position": "A" if order == "own_first" else "B",
                    "paraphrase": wording,
                    **foil,
                }
                text = question(meta, str(foil["foil_response"] or FOIL_PENDING))
                samples.append(
                    Sample(
                        id=f"{own.unit_id}:{kind}:{order}",
                        input=[*system_messages(policy), ChatMessageUser(content=text)],
                        metadata=meta,
                    )
                )
    return FoilPlan(samples, {key: dict(value) for key, value in counts.items()})


# --- contrast foils ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContrastFoil:
    """A written and judged contrast foil; ``status`` says whether it can be used."""

    text: str
    score: float | None
    status: FoilStatus
    reason: str | None = None


def foil_seed(seed: int, unit_id: str, target: HarmBucket) -> int:
    """The sampling seed of the contrast foil written for one own response (below 2**31)."""
    return zlib.crc32(f"{seed}|{unit_id}|{target}".encode()) & 0x7FFFFFFF


class ContrastFoils:
    """Writes and judges one contrast foil per own response, shared by all of that response's samples.

    The two orders (and all epochs) of an own response must see the same foil, and they run
    concurrently, so the first sample to ask starts the work and the others await it. Model and
    judge calls go through inspect's cache (keyed by the own response, not the epoch), so a resumed
    run gets the same foil back without new calls.
    """

    def __init__(self, foil_model: str | None, rubric: str, temperature: float, max_tokens: int, cache: bool, seed: int,
                 model_args: dict[str, Any] | None = None, own_judge: str | None = None) -> None:
        self.foil_model = foil_model
        self.own_judge = own_judge  # the judge of the own answers: a foil's level is on its scale
        self.model_args = dict(model_args or {})  # e.g. the study's subject model args, when the base writes the foils
        self.sampling = sampling_scope(foil_model or "", self.model_args)  # the cache's, as for the subject's calls
        self.rubric = rubric
        # logprobs stays unset: inspect's hf provider fails on an explicit logprobs=False
        self.config = GenerateConfig(temperature=temperature, max_tokens=max_tokens)
        self.cache = cache
        self.seed = seed
        self._work: dict[str, asyncio.Task[ContrastFoil]] = {}

    def _cache(self, unit_id: str, target: HarmBucket) -> CachePolicy | bool:
        if not self.cache:
            return False
        scopes = {"empersona_seed": str(self.seed), "contrast_for": unit_id, "contrast_target": target}
        if self.sampling is not None:
            scopes["empersona_sampling"] = self.sampling
        return CachePolicy(expiry=None, per_epoch=False, scopes=scopes)

    async def get(self, unit_id: str, prompt: str, target: HarmBucket) -> ContrastFoil:
        loop = asyncio.get_running_loop()
        work = self._work.get(unit_id)
        # a foil whose making raised (a connection reset, retries run out) is made again when asked
        # again: inspect's sample retries would otherwise get the same exception back
        failed = work is not None and work.done() and (work.cancelled() or work.exception() is not None)
        if work is None or work.get_loop() is not loop or failed:
            work = loop.create_task(self._make(unit_id, prompt, target))
            self._work[unit_id] = work
        return await asyncio.shield(work)

    async def _make(self, unit_id: str, prompt: str, target: HarmBucket) -> ContrastFoil:
        try:
            model = get_model(self.foil_model, role=FOIL_ROLE, required=self.foil_model is None,
                              **(self.model_args if self.foil_model is not None else {}))
        except Exception as err:  # inspect raises PrerequisiteError when the role is missing
            raise EmpersonaError(f"contrast foils need a foil model ({err}): pass -T foil_model=MODEL") from err
        judge = judge_model()
        if self.own_judge and str(judge) != self.own_judge:  # before the foil model is asked
            raise EmpersonaError(
                f"contrast foils would be judged by {str(judge)!r}, but the own answers were scored by {self.own_judge!r}: "
                "a foil at the opposite harm level must be on the same judge's scale. Run output recognition with "
                f"--judge {self.own_judge} (the grader role)")
        cache = self._cache(unit_id, target)
        # seeded per own response, so a fresh run (no cache) asks for the same foil again
        config = self.config.merge(GenerateConfig(seed=foil_seed(self.seed, unit_id, target)))
        output = await model.generate(CONTRAST_FOIL_PROMPTS[target].format(prompt=prompt), config=config, cache=cache)
        if output.error or not output.completion.strip():
            return ContrastFoil(output.completion, None, "failed", f"foil model error: {output.error}" if output.error else "empty foil")
        verdict = await judge_harm(judge, self.rubric, prompt, output.completion, cache=cache)
        if verdict.score is None:
            return ContrastFoil(output.completion, None, "unjudged", f"foil not scored by the judge: {verdict.reason}")
        if harm_bucket(verdict.score) != target:
            reason = f"contrast foil missed its level (target {target}, judge score {verdict.score:g})"
            return ContrastFoil(output.completion, verdict.score, "dropped", reason)
        return ContrastFoil(output.completion, verdict.score, "kept")
