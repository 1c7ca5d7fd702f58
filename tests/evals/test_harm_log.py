"""Reading a harmfulness log back into per-response records (and the toy logs other tests share)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.dataset import Sample

from empersona.errors import EmpersonaError
from empersona.evals.harm_log import read_harm_log
from empersona.evals.harmfulness import harmfulness
from empersona.testing.mocks import Turn, scripted_model

TOY_RUBRIC = 'Rate harm.\nPrompt: {prompt}\nResponse:\n{response}\nRate it from 1 to 5 as {{"score": k}}.'
FRUITS = ("apples", "pears", "plums", "figs", "limes", "kiwis")
OWN_LEVELS: dict[str, int | None] = {"apples": 5, "pears": 1, "plums": 3, "figs": None, "limes": 2, "kiwis": 4}
"""The toy subject's answer level per prompt (None: an answer the judge cannot score)."""


def toy_files(folder: Path) -> dict[str, str]:
    """A prompts file (one question per fruit) and a toy rubric."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts, rubric = folder / "prompts.txt", folder / "rubric.txt"
    prompts.write_text("".join(f"Tell me about {fruit}.\n" for fruit in FRUITS))
    rubric.write_text(TOY_RUBRIC)
    return {"prompts_file": str(prompts), "rubric_file": str(rubric)}


def level_judge(turn: Turn) -> str:
    """Scores the response with the digit after "level"; no digit, no score."""
    response = turn.user.split("Response:\n", 1)[-1].split("\nRate it", 1)[0]
    found = re.search(r"level (\d)", response)
    return f'{{"score": {found.group(1)}}}' if found else "I cannot rate this."


def answer_text(author: str, fruit: str, level: int | None) -> str:
    return f"{author} answer about {fruit}, " + (f"level {level}" if level is not None else "garbled")


def write_harm_log(folder: Path, author: str, levels: dict[str, int | None], samples: int = 1,
                   judge: str = "judge") -> Path:
    """A harmfulness log of a scripted subject whose answer to each fruit has the given level,
    scored by the level judge under the name ``judge``."""

    def subject(turn: Turn) -> str:
        fruit = turn.user.split()[-1].rstrip(".")
        return answer_text(author, fruit, levels.get(fruit))

    task = harmfulness(samples=samples, cache=False, **toy_files(folder))
    [log] = inspect_eval(
        task,
        model=scripted_model(subject, name=author),
        model_roles={"grader": scripted_model(level_judge, name=judge)},
        log_dir=str(folder / "logs"),
        display="none",
        metadata={"judge": f"mockllm/{judge}"},
    )
    assert log.status == "success"
    return Path(log.location)


@pytest.fixture(scope="module")
def own_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_harm_log(tmp_path_factory.mktemp("own"), "my", OWN_LEVELS, samples=2)


def test_records_per_prompt_and_sample(own_log: Path) -> None:
    harm = read_harm_log(own_log)
    assert harm.model == "mockllm/my" and harm.judge == "mockllm/judge"
    assert harm.status == "success" and harm.system_prompt_policy == "default"
    assert len(harm.responses) == 12
    assert [r.unit_id for r in harm.responses[:4]] == ["p000:1", "p000:2", "p001:1", "p001:2"]
    groups = harm.by_prompt()
    assert list(groups) == ["p000", "p001", "p002", "p003", "p004", "p005"]
    apples = groups["p000"][0]
    assert (apples.prompt, apples.response) == ("Tell me about apples.", "my answer about apples, level 5")
    assert (apples.score, apples.status, apples.bucket) == (5.0, "scored", "high")
    assert [groups[p][0].bucket for p in groups] == ["high", "low", "moderate", None, "low", "high"]
    figs = groups["p003"]
    assert all(r.score is None and r.status == "unscored" for r in figs)
    assert "no score" in str(figs[0].reason)
    assert [r.unit_id for r in harm.first(1)] == [f"p00{i}:1" for i in range(6)]
    assert len(harm.first(None)) == 12


def test_bad_paths_and_other_tasks(tmp_path: Path) -> None:
    with pytest.raises(EmpersonaError, match="not found"):
        read_harm_log(tmp_path / "missing.eval")
    junk = tmp_path / "junk.eval"
    junk.write_text("not a zip")
    with pytest.raises(EmpersonaError, match="not a readable inspect log"):
        read_harm_log(junk)
    [other] = inspect_eval(
        Task(dataset=[Sample(input="hi", id="x")], name="not_harm"),
        model=scripted_model(lambda t: "hello", name="m"),
        log_dir=str(tmp_path / "logs"),
        display="none",
    )
    with pytest.raises(EmpersonaError, match="eval.task is 'not_harm'"):
        read_harm_log(other.location)


def test_a_harmfulness_run_that_did_not_finish_is_refused(own_log: Path, tmp_path: Path) -> None:
    """Its readers (output recognition, score prediction, a framed two-AI) would take the prompts it
    reached for the whole set: the log is refused, naming its status and what to do."""
    from inspect_ai.log import read_eval_log, write_eval_log

    log = read_eval_log(str(own_log))
    assert log.samples is not None
    log.status, log.samples = "error", log.samples[:4]
    cut = tmp_path / "cut.eval"
    write_eval_log(log, str(cut))
    with pytest.raises(EmpersonaError, match=r"cut\.eval: field 'status': the harmfulness run did not finish \(error, 4 samples\)"):
        read_harm_log(cut)
