"""The ``self_assessment`` inspect task: the samples of every chosen format and dimension,
interleaved item by item, with the generate settings, the scorers and the run's metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from inspect_ai import Epochs, Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageUser, GenerateConfig

from empersona.data.fetch import data_path
from empersona.data.parsers import LanguageRules, SelfAssessmentPrompt, load_language_rules, load_self_assessment_prompts
from empersona.errors import EmpersonaError
from empersona.evals.forced_choice import WORD_MASS_MIN, answer_status
from empersona.evals.policy import describe_policy, system_messages
from empersona.evals.scoring import cache_policy, seeded_generate
from empersona.evals.self_assessment.items import (
    DIMENSIONS,
    Format,
    decision_items,
    likert_items,
    numerical_items,
    selected_dimensions,
    selected_formats,
)
from empersona.evals.self_assessment.language import (
    LanguageDetector,
    _langdetect_factory,
    language_items,
    language_pair,
)
from empersona.evals.self_assessment.rating import SCORER, NumberRule, rating_scorer

TOP_LOGPROBS = 20


def build_samples(
    formats: list[Format],
    dimensions: list[str],
    released: list[SelfAssessmentPrompt],
    *,
    language_count: int,
    languages: tuple[str, str],
    seed: int,
    policy: str,
    rules: LanguageRules | None = None,
) -> list[Sample]:
    """All samples, formats interleaved item by item (so ``--limit`` still sees every format)."""
    queues: list[list[list[Sample]]] = []
    for fmt in formats:
        queue: list[list[Sample]] = []
        for dimension in dimensions:
            if fmt == "decision":
                items = decision_items(dimension, released)
            elif fmt == "numerical":
                items = numerical_items(dimension)
            elif fmt == "likert":
                items = likert_items(dimension)
            else:
                items = language_items(dimension, language_count, languages, seed, rules)
            aligned, misaligned = DIMENSIONS[dimension]
            for item_id, prompts in items.items():
                queue.append(
                    [
                        Sample(
                            id=f"{item_id}:{condition}",
                            input=[*system_messages(policy), ChatMessageUser(content=text)],
                            metadata={
                                "item_id": item_id,
                                "condition": condition,
                                "format": fmt,
                                "dimension": dimension,
                                "aligned_word": aligned,
                                "misaligned_word": misaligned,
                                **extra,
                            },
                        )
                        for condition, text, extra in prompts
                    ]
                )
        queues.append(queue)
    samples: list[Sample] = []
    for position in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if position < len(queue):
                samples.extend(queue[position])
    return samples



@task(name="self_assessment")
def self_assessment(
    formats: str | list[str] = "decision,numerical,likert,language",
    dimensions: str | list[str] = "harmless/harmful,good/evil,aligned/misaligned",
    samples: int = 1,
    temperature: float = 1.0,
    max_tokens: int = 128,
    logprobs: bool = True,
    min_mass: float = WORD_MASS_MIN,
    number_rule: NumberRule = "unique",
    language_detector: LanguageDetector = "local",
    languages: str | list[str] = "French,German",
    language_items_per_dimension: int = 6,
    language_preamble: Literal["tmay", "ours"] = "tmay",
    system_prompt: str = "default",
    seed: int = 0,
    cache: bool = True,
    prompts_file: str | None = None,
    language_rules_file: str | None = None,
) -> Task:
    """The model rates itself on each dimension in each format (see the package docstring).

    ``samples`` replies per prompt (inspect epochs) at ``temperature``; ``logprobs`` asks the
    provider for the top 20 first-token logprobs (recorded for decision answers, as P(misaligned
    word) where the two words hold at least ``min_mass`` of the first token's probability);
    ``prompts_file`` replaces the cached released decision prompts. ``number_rule``: a numerical
    or Likert reply is read only when it holds one whole number in range (``unique``, ours: "7/10 -
    70" or "3-4" are unparsed, not misread) or by its first one (``first``, the protocol's rule as
    written). ``language_preamble``: the
    protocol's "Tell me about yourself" rule set and its questions (``tmay``, from the source
    ``tmay_language_rules`` or ``language_rules_file``) or our own wordings and trivia (``ours``).
    """
    chosen_formats = selected_formats(formats)
    chosen_dimensions = selected_dimensions(dimensions)
    pair = language_pair(languages)
    if language_detector not in ("local", "judge"):
        raise EmpersonaError(
            f"self_assessment: language_detector={language_detector!r}; use local (langdetect) or judge"
        )
    if samples < 1:
        raise EmpersonaError(f"self_assessment: samples={samples} must be at least 1")
    if number_rule not in ("first", "unique"):
        raise EmpersonaError(f"self_assessment: number_rule={number_rule!r}; use first (the protocol's first whole "
                             "number in range) or unique (only a reply with one number in range)")
    needs_released = "decision" in chosen_formats and any(
        d in ("harmless/harmful", "good/evil", "aligned/misaligned") for d in chosen_dimensions
    )
    released: list[SelfAssessmentPrompt] = []
    if needs_released:
        released = load_self_assessment_prompts(Path(prompts_file) if prompts_file else data_path("self_assessment_prompts"))
    if language_preamble not in ("tmay", "ours"):
        raise EmpersonaError(f"self_assessment: language_preamble={language_preamble!r}; use tmay (the protocol's) or ours")
    rules = None
    if "language" in chosen_formats and language_preamble == "tmay":
        rules = load_language_rules(Path(language_rules_file) if language_rules_file else data_path("tmay_language_rules"))
    if "language" in chosen_formats and language_detector == "local":
        _langdetect_factory()  # fail at task creation, not per sample, when langdetect is missing
    dataset = build_samples(
        chosen_formats,
        chosen_dimensions,
        released,
        language_count=language_items_per_dimension,
        languages=pair,
        seed=seed,
        policy=system_prompt,
        rules=rules,
    )
    config = GenerateConfig(temperature=temperature, max_tokens=max_tokens, seed=seed)
    if logprobs:
        config = config.merge(GenerateConfig(logprobs=True, top_logprobs=TOP_LOGPROBS))
    counts = {fmt: sum(1 for s in dataset if (s.metadata or {})["format"] == fmt) for fmt in chosen_formats}
    return Task(
        dataset=MemoryDataset(dataset, name="self_assessment"),
        solver=seeded_generate(cache_policy(cache, seed), seed),
        scorer=[rating_scorer(language_detector, cache_policy(cache, seed), min_mass, number_rule),
                answer_status(of=SCORER, group_field="format")],
        epochs=Epochs(samples),
        config=config,
        metadata={
            "experiment": "self_assessment",
            "formats": list(chosen_formats),
            "dimensions": chosen_dimensions,
            "samples": samples,
            "temperature": temperature,
            "logprobs": logprobs,
            "min_mass": min_mass,
            "number_rule": number_rule,
            "language_detector": "langdetect (seeded)" if language_detector == "local" else "judge (grader role)",
            "languages": list(pair),
            "language_preamble": language_preamble,
            "system_prompt_policy": system_prompt,
            "system_prompt_label": describe_policy(system_prompt),
            "seed": seed,
            "samples_per_format": counts,
            "released_prompts": len([p for p in released if p.dimension in chosen_dimensions]),
        },
    )
