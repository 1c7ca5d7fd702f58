"""Harmfulness end to end: scripted subject and judge with known behaviour, resume, a tiny hf model."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
from inspect_ai import eval as inspect_eval
from inspect_ai.model import get_model
from inspect_ai.scorer import SampleScore

from empersona.evals.harmfulness import _harm_metrics, harmfulness
from empersona.evals.scoring import make_score, status_counts
from empersona.testing.mocks import Turn, mock_output, scripted_model
from empersona.testing.mocks import log_metrics as metrics

TOY_PROMPTS = ["Tell me about apples.", "Tell me about pears.", "Tell me about plums.", "Tell me about figs."]
TOY_RUBRIC = 'Rate harm.\nPrompt: {prompt}\nAnswer: {response}\nReply {{"score": k}}.'


@pytest.fixture()
def toy_files(tmp_path: Path) -> dict[str, str]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TOY_PROMPTS) + "\n")
    rubric = tmp_path / "rubric.txt"
    rubric.write_text(TOY_RUBRIC)
    return {"prompts_file": str(prompts), "rubric_file": str(rubric)}


class Counted:
    """A script wrapper that counts calls per user text."""

    def __init__(self, script):  # type: ignore[no-untyped-def]
        self.script = script
        self.calls: Counter[str] = Counter()

    def __call__(self, turn: Turn):  # type: ignore[no-untyped-def]
        self.calls[turn.user] += 1
        return self.script(turn)


def subject_script(turn: Turn) -> str:
    fruit = turn.user.split()[-1].rstrip(".")
    return {"apples": "a HARMFUL answer", "pears": "a kind answer", "plums": "a so-so answer"}.get(fruit, "GARBLE")


def judge_script(turn: Turn) -> str:
    answer = turn.user.split("Answer: ")[1]
    if "HARMFUL" in answer:
        return '{"score": 5}'
    if "kind" in answer:
        return '{"score": 1}'
    if "so-so" in answer:
        return "I would say 3"
    return "I cannot rate this."


def run(toy_files: dict[str, str], subject, judge, log_dir: Path, samples: int = 3, limit: int | None = None, **kw):  # type: ignore[no-untyped-def]
    task = harmfulness(samples=samples, **toy_files, **kw)
    [log] = inspect_eval(task, model=subject, model_roles={"grader": judge}, log_dir=str(log_dir), limit=limit, display="none")
    return log


def test_exact_metrics_with_scripted_models(toy_files: dict[str, str], tmp_path: Path) -> None:
    log = run(toy_files, scripted_model(subject_script, name="subject"), scripted_model(judge_script, name="judge"), tmp_path)
    assert log.status == "success"
    m = metrics(log)
    # apples 5,5,5 / pears 1,1,1 / plums 3,3,3 / figs unscored x3
    assert m["harm_single"] == pytest.approx(1 / 3)
    assert m["harm_max10"] == pytest.approx(1 / 3)
    assert m["mean_score"] == pytest.approx(3.0)
    assert m["frac_gt3"] == pytest.approx(1 / 3)
    assert status_counts(log.samples)["harm"] == {"scored": 9, "unscored": 3}
    assert log.results.scores[0].unscored_samples == 3
    figs = [s for s in log.samples if s.metadata["prompt"].endswith("figs.")]
    assert len(figs) == 3
    for sample in figs:
        score = sample.scores["harm"]
        assert math.isnan(score.value)
        assert score.metadata["status"] == "unscored"
        assert score.metadata["raw"] == "I cannot rate this."
        assert "no score" in score.metadata["reason"]
    apples = next(s for s in log.samples if s.metadata["prompt"].endswith("apples."))
    assert apples.scores["harm"].metadata["bucket"] == "high"
    assert apples.scores["harm"].answer == "a HARMFUL answer"
    assert log.eval.metadata["system_prompt_policy"] == "default"


def test_an_answer_that_failed_is_not_judged(toy_files: dict[str, str], tmp_path: Path) -> None:
    def outputs(messages, tools, tool_choice, config):  # type: ignore[no-untyped-def]
        output = mock_output("a half-written", config, model="failing")
        if "figs" in messages[-1].text:
            output.error = "the provider cut the answer off"
        return output

    subject = get_model("mockllm/failing", custom_outputs=outputs, memoize=False)
    judge = Counted(lambda turn: '{"score": 1}')
    log = run(toy_files, subject, scripted_model(judge, name="judge"), tmp_path, samples=2)
    assert status_counts(log.samples)["harm"] == {"scored": 6, "unscored": 2}
    for sample in (s for s in log.samples if s.metadata["prompt"].endswith("figs.")):
        score = sample.scores["harm"]
        assert math.isnan(score.value) and score.metadata["status"] == "unscored"
        assert score.metadata["reason"] == "model error: the provider cut the answer off"
    assert judge.calls and not any("figs" in text for text in judge.calls)


def _scores(values_by_item: dict[str, list[float | None]]) -> list[SampleScore]:
    out = []
    for item, values in values_by_item.items():
        for epoch, value in enumerate(values, start=1):
            status = "scored" if value is not None else "unscored"
            out.append(SampleScore(score=make_score(value, status=status, raw="", epoch=epoch), sample_id=item))
    return out


def test_first_versus_max_over_samples() -> None:
    compute = dict(zip(["harm_single", "harm_max10", "mean_score", "frac_gt3"], _harm_metrics(), strict=True))
    # inspect hands metrics only the scored samples (NaN ones are filtered out before)
    scores = [s for s in _scores({"a": [1, 5, 2], "b": [4, 1, 1], "c": [2, 2, 2], "d": [None, 5, 1], "e": [None, None, None]}) if s.score.value == s.score.value]
    assert compute["harm_single"](scores) == pytest.approx(1 / 3)  # b only; d's first sample unscored
    assert compute["harm_max10"](scores) == pytest.approx(3 / 4)  # a, b, d of the four with a score
    assert compute["frac_gt3"](scores) == pytest.approx(3 / 11)


def test_system_prompt_policy_reaches_the_model(toy_files: dict[str, str], tmp_path: Path) -> None:
    seen: list[str | None] = []

    def subject(turn: Turn) -> str:
        seen.append(turn.system)
        return "a kind answer"

    judge = scripted_model(judge_script, name="judge")
    run(toy_files, scripted_model(subject, name="s1"), judge, tmp_path / "a", samples=1)
    assert set(seen) == {None}
    seen.clear()
    run(toy_files, scripted_model(subject, name="s2"), judge, tmp_path / "b", samples=1, system_prompt="none")
    assert set(seen) == {""}
    seen.clear()
    log = run(toy_files, scripted_model(subject, name="s3"), judge, tmp_path / "c", samples=1, system_prompt="Be terse.")
    assert set(seen) == {"Be terse."}
    assert log.eval.metadata["system_prompt_policy"] == "Be terse."


def test_rerun_repeats_no_model_or_judge_call(toy_files: dict[str, str], tmp_path: Path) -> None:
    subject, judge = Counted(subject_script), Counted(judge_script)
    subject_model, judge_model = scripted_model(subject, name="subject"), scripted_model(judge, name="judge")
    first = run(toy_files, subject_model, judge_model, tmp_path, limit=2)
    assert sum(subject.calls.values()) == 6 and sum(judge.calls.values()) == 6
    # the "interrupted" run covered 2 prompts; the full run only calls for the other 2
    second = run(toy_files, subject_model, judge_model, tmp_path)
    assert sum(subject.calls.values()) == 12 and sum(judge.calls.values()) == 12
    assert all(count == 3 for count in subject.calls.values())
    third = run(toy_files, subject_model, judge_model, tmp_path)
    assert sum(subject.calls.values()) == 12 and sum(judge.calls.values()) == 12
    assert metrics(second) == metrics(third)
    assert len(first.samples) == 6 and len(third.samples) == 12


def test_no_cache_calls_again(toy_files: dict[str, str], tmp_path: Path) -> None:
    subject = Counted(subject_script)
    model, judge = scripted_model(subject, name="subject"), scripted_model(judge_script, name="judge")
    run(toy_files, model, judge, tmp_path, samples=1, cache=False)
    run(toy_files, model, judge, tmp_path, samples=1, cache=False)
    assert sum(subject.calls.values()) == 8


def test_real_prompts_and_rubric_from_the_mirror(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    rubric_seen: list[str] = []

    def judge(turn: Turn) -> str:
        rubric_seen.append(turn.user)
        return '{"score": 2}'

    task = harmfulness(samples=2)
    assert len(task.dataset) == 350
    # the paper reports one duplicated line; the pinned file has 350 distinct ones. Whatever the
    # parser finds is recorded in the log for the report.
    assert task.metadata["duplicate_prompt_lines"] == []
    [log] = inspect_eval(
        task,
        model=scripted_model(lambda t: "An answer.", name="subject"),
        model_roles={"grader": scripted_model(judge, name="judge")},
        limit=3,
        log_dir=str(tmp_path),
        display="none",
    )
    assert metrics(log)["mean_score"] == 2.0 and len(log.samples) == 6
    assert "{prompt}" not in rubric_seen[0] and "An answer." in rubric_seen[0]


def test_tiny_local_hf_model(tiny_model: Path, toy_files: dict[str, str], tmp_path: Path) -> None:
    task = harmfulness(samples=1, max_tokens=8, **toy_files)
    [log] = inspect_eval(
        task,
        model=f"hf/{tiny_model}",
        model_args={"device": "cpu"},
        model_roles={"grader": scripted_model(lambda t: '{"score": 1}', name="judge")},
        limit=2,
        log_dir=str(tmp_path),
        display="none",
        max_connections=8,
    )
    assert log.status == "success", log.error
    assert len(log.samples) == 2 and metrics(log)["mean_score"] == 1.0
    assert all(s.output.completion is not None for s in log.samples)


@pytest.mark.parametrize("seed", [0, 41])
def test_each_repeat_of_a_prompt_is_asked_with_its_own_seed(toy_files: dict[str, str], tmp_path: Path, seed: int) -> None:
    """One seed for all ten samples would make them one sample ten times wherever a server honours
    the seed per request (vLLM, OpenAI); repeat k of a prompt is asked with its first seed + k - 1,
    and each prompt has a first seed of its own (from the run's seed and the sample id)."""
    seeds: dict[str, list[int | None]] = {}

    def subject(turn: Turn) -> str:
        seeds.setdefault(turn.user, []).append(turn.config.seed)
        return "a kind answer"

    run(toy_files, scripted_model(subject), scripted_model(judge_script), tmp_path / "logs", samples=4, seed=seed, cache=False)
    assert set(seeds) == set(TOY_PROMPTS)
    firsts = set()
    for asked in seeds.values():
        first = min(asked)  # type: ignore[type-var]
        assert sorted(asked) == [first, first + 1, first + 2, first + 3]  # type: ignore[operator]
        firsts.add(first)
    assert len(firsts) == len(TOY_PROMPTS)  # no two prompts share their draws
