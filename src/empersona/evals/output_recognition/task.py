"""The ``output_recognition`` inspect task: checks its arguments, reads the harmfulness logs, plans
the samples, and runs ``recognition_solver``, which fills in each sample's foil (making a contrast
foil when needed) before asking the question, with the scorers of ``scoring``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from inspect_ai import Epochs, Task, task
from inspect_ai.dataset import MemoryDataset
from inspect_ai.model import CachePolicy, ChatMessageUser, GenerateConfig
from inspect_ai.solver import Generate, Solver, TaskState, solver

from empersona.data.fetch import data_path
from empersona.data.parsers import load_judge_rubric
from empersona.errors import EmpersonaError
from empersona.evals.forced_choice import LETTER_MASS_MIN, Mode, answer_status
from empersona.evals.harm_log import read_harm_log
from empersona.evals.output_recognition.foils import FOIL_KINDS, IDENTICAL_FOIL, ContrastFoils, FoilKind, plan_samples
from empersona.evals.output_recognition.prompts import RECOGNITION_PROMPTS, question
from empersona.evals.output_recognition.scoring import SCORER, choice_scorer, foil_scorer
from empersona.evals.policy import describe_policy, system_messages
from empersona.evals.scoring import ask_model, cache_policy
from empersona.evals.two_ai import check_paraphrase
from empersona.redact import secret_values

TOP_LOGPROBS = 20


@solver(name="recognition")
def recognition_solver(
    foils: ContrastFoils | None, policy: str, cache: CachePolicy | bool, seed: int | None = None
) -> Solver:
    """Fill in the sample's foil (making a contrast foil if needed), then ask the question
    (each repeat with its own seed, ``scoring.repeat_seed``)."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        meta = state.metadata
        if meta["foil_kind"] == "contrast":
            if foils is None:
                raise EmpersonaError("contrast samples without a contrast foil maker")
            foil = await foils.get(meta["item_id"], meta["prompt"], meta["foil_target"])
            meta.update(foil_response=foil.text, foil_score=foil.score, foil_status=foil.status, foil_reason=foil.reason)
            if foil.status != "kept":
                return state  # no question: the sample is recorded unscored with the foil's reason
        elif meta.get("foil_status") == IDENTICAL_FOIL:
            return state  # no question: an identical pair is recorded unscored with its reason
        else:
            meta.update(foil_status="kept", foil_reason=None)
        state.messages = [*system_messages(policy), ChatMessageUser(content=question(meta, meta["foil_response"]))]
        return await ask_model(state, generate, cache, seed)

    return solve


def foil_kinds(foils: str | list[str] | None, foil_model: str | None, matched_log: str | None) -> tuple[FoilKind, ...]:
    """The foil kinds asked for; by default every kind whose source is given."""
    if foils is None:
        kinds = [k for k, given in (("contrast", foil_model), ("matched", matched_log)) if given]
        if not kinds:
            raise EmpersonaError("output_recognition needs a foil source: -T foil_model=MODEL (contrast foils) and/or -T matched_log=PATH (matched foils)")
    else:
        kinds = [k.strip() for k in (foils.split(",") if isinstance(foils, str) else foils) if k.strip()]
    unknown = [k for k in kinds if k not in FOIL_KINDS]
    if unknown or not kinds:
        raise EmpersonaError(f"output_recognition: foils={foils!r}: choose from {', '.join(FOIL_KINDS)} (comma-separated)")
    if "matched" in kinds and not matched_log:
        raise EmpersonaError("output_recognition: matched foils need another model's harmfulness log: -T matched_log=PATH")
    return tuple(k for k in FOIL_KINDS if k in kinds)  # type: ignore[misc]


@task(name="output_recognition")
def output_recognition(
    harm_log: str,
    foils: str | list[str] | None = None,
    foil_model: str | None = None,
    foil_model_args: dict[str, Any] | None = None,
    matched_log: str | None = None,
    responses: int | None = None,
    mode: Mode = "sample",
    samples: int = 1,
    temperature: float = 1.0,
    max_tokens: int = 32,
    min_mass: float = LETTER_MASS_MIN,
    foil_temperature: float = 1.0,
    foil_max_tokens: int = 512,
    system_prompt: str = "default",
    seed: int = 0,
    cache: bool = True,
    rubric_file: str | None = None,
    paraphrase: int | None = None,
) -> Task:
    """Own response vs a foil, both orders: which would the model more likely produce?

    ``harm_log``: this model's harmfulness log. ``foils``: "contrast", "matched" or both (default:
    those whose source is given). ``foil_model`` writes contrast foils (else the model role
    ``foil``), loaded with ``foil_model_args`` (inspect model args); ``matched_log`` is another
    model's harmfulness log. ``responses``: the first N logged
    samples of each prompt (default all). ``samples``: answers per question (inspect epochs);
    ``mode="logprob"`` reads one forward pass per question, so ``samples``, ``temperature`` and
    ``max_tokens`` do not apply there (the log's metadata records one answer per question).
    ``paraphrase``: one of our question wordings (``RECOGNITION_PROMPTS``) for every item; by
    default a seeded choice per item.
    """
    if mode not in get_args(Mode):
        raise EmpersonaError(f"output_recognition: mode {mode!r} is not known. Use mode=sample or mode=logprob")
    if samples < 1 or (responses is not None and responses < 1):
        raise EmpersonaError(f"output_recognition: samples={samples} and responses={responses} must be at least 1")
    kinds = foil_kinds(foils, foil_model, matched_log)
    secret = sorted(key for key, value in (foil_model_args or {}).items() if secret_values({key: value}))
    if secret:
        raise EmpersonaError(
            f"output_recognition: foil_model_args {', '.join(secret)} hold a credential, and a task's arguments are "
            "written into its log as they are. Put the key in the environment (e.g. OPENAI_API_KEY) instead")
    own_log = read_harm_log(harm_log)
    other_log = read_harm_log(matched_log) if "matched" in kinds and matched_log else None
    if other_log is not None and other_log.model == own_log.model:
        raise EmpersonaError(f"{matched_log}: matched foils must come from another model, but this log is also {own_log.model!r}")
    if other_log is not None and other_log.judge and own_log.judge and other_log.judge != own_log.judge:
        raise EmpersonaError(
            f"{matched_log}: its answers were scored by the judge {other_log.judge!r} and the own answers ({harm_log}) by "
            f"{own_log.judge!r}; a matched foil has the own answer's score from the same judge. Pass a log judged by "
            f"{own_log.judge!r} (run harmfulness on that model again with that judge: its answers come from the cache)")
    rubric = load_judge_rubric(Path(rubric_file) if rubric_file else data_path("harm_judge_rubric")) if "contrast" in kinds else ""
    check_paraphrase("output_recognition", paraphrase, len(RECOGNITION_PROMPTS))
    plan = plan_samples(own_log, kinds, responses, other_log, seed, system_prompt, paraphrase)
    policy = cache_policy(cache, seed)
    contrast = (ContrastFoils(foil_model, rubric, foil_temperature, foil_max_tokens, cache, seed, foil_model_args,
                              own_judge=own_log.judge)
                if "contrast" in kinds else None)
    if mode == "logprob":
        config = GenerateConfig(max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS, seed=seed)
    else:
        config = GenerateConfig(temperature=temperature, max_tokens=max_tokens, seed=seed)
    return Task(
        dataset=MemoryDataset(plan.samples, name="output_recognition"),
        solver=recognition_solver(contrast, system_prompt, policy, seed),
        scorer=[choice_scorer(kinds, mode, min_mass), answer_status(of=SCORER, group_field="bucket"), foil_scorer()],
        epochs=Epochs(1 if mode == "logprob" else samples),
        config=config,
        metadata={
            "experiment": "output_recognition",
            "harm_log": own_log.path,
            "harm_log_model": own_log.model,
            "harm_log_system_prompt_policy": own_log.system_prompt_policy,
            "harm_log_judge": own_log.judge,
            "matched_log": other_log.path if other_log else None,
            "matched_log_model": other_log.model if other_log else None,
            "foils": list(kinds),
            "foil_model": foil_model,
            "foil_counts": plan.counts,
            "responses_per_prompt": responses,
            "mode": mode,
            "samples": 1 if mode == "logprob" else samples,  # the answers asked per sample (logprob mode: one)
            "system_prompt_policy": system_prompt,
            "system_prompt_label": describe_policy(system_prompt),
            "seed": seed,
            "paraphrase": paraphrase,
            "paraphrases": len(RECOGNITION_PROMPTS),
            "chance": 0.5,
        },
    )
