"""A second judge re-scores a harmfulness log (evals.second_judge, ``empersona rejudge``)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from inspect_ai.log import read_eval_log
from test_harm_log import OWN_LEVELS, write_harm_log
from typer.testing import CliRunner

from empersona.analysis.results import results_table
from empersona.cli import app
from empersona.errors import EmpersonaError
from empersona.evals.second_judge import SECOND_JUDGE, pick_prompts, rejudge
from empersona.testing.loopback import SECOND_JUDGE_NAME, LoopbackServer, scripted_judges
from empersona.testing.mocks import Turn, scripted_model


@pytest.fixture(scope="module")
def harm_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_harm_log(tmp_path_factory.mktemp("own"), "my", OWN_LEVELS, samples=3)


class CountingJudge:
    """Rates an answer's level one higher (5 stays 5), "fruit" answers without a level unreadably."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, turn: Turn) -> str:
        self.calls += 1
        found = re.search(r"level (\d)", turn.user)
        return f'{{"score": {min(5, int(found.group(1)) + 1)}}}' if found else "no idea, sorry"


def test_pick_prompts_is_a_seeded_subset_in_the_given_order() -> None:
    ids = [f"p{i:03d}" for i in range(50)]
    chosen = pick_prompts(ids, 10, seed=4)
    assert len(chosen) == 10 and chosen == sorted(chosen) and set(chosen) <= set(ids)
    assert pick_prompts(ids, 10, seed=4) == chosen and pick_prompts(ids, 10, seed=5) != chosen
    assert pick_prompts(ids, None, seed=4) == ids == pick_prompts(ids + ids[:3], 80, seed=0)


def test_rejudge_scores_every_sample_of_the_drawn_prompts_and_resumes_from_the_cache(harm_log: Path, tmp_path: Path) -> None:
    judge = CountingJudge()
    log, path = rejudge(harm_log, scripted_model(judge, name="judge2"), prompts=4, seed=1, out_dir=tmp_path / "a",
                        display="none")
    assert path.parent == tmp_path / "a" and path.is_file()
    back = read_eval_log(str(path))
    assert back.eval.task == SECOND_JUDGE and back.eval.model == "mockllm/my" and back.status == "success"
    meta = back.eval.metadata or {}
    assert (meta["experiment"], meta["judge"], meta["first_judge"]) == (SECOND_JUDGE, "mockllm/judge2", "mockllm/judge")
    assert meta["rescored_log"] == str(harm_log) and meta["prompts_rescored"] == 4 and meta["prompts_in_log"] == 6
    assert back.eval.task_args == {"harm_log": str(harm_log), "prompts": 4, "seed": 1, "judge_args": {}}
    assert back.eval.model_roles is not None and back.eval.model_roles["grader"].model == "mockllm/judge2"
    prompts = {s.metadata["item_id"] for s in back.samples or []}
    assert prompts == set(pick_prompts([f"p{i:03d}" for i in range(6)], 4, seed=1))
    assert len(back.samples or []) == 4 * 3  # every sample of each drawn prompt
    # one call per distinct answer text: the toy subject repeats its answer, and the same text is judged once
    assert judge.calls == len({s.output.completion for s in back.samples or []}) == 4
    # the log's usage is the second judge's own calls (the mock counts 10 input tokens a call), not
    # the subject's and first judge's carried over from the harmfulness log
    assert set(back.stats.model_usage) == {"mockllm/judge2"}
    assert back.stats.model_usage["mockllm/judge2"].input_tokens == 10 * judge.calls
    assert back.stats.role_usage["grader"].input_tokens == 10 * judge.calls
    assert not any(s.role_usage or s.model_usage for s in back.samples or [])  # not the first judge's, per sample
    for sample in back.samples or []:
        [(name, score)] = list((sample.scores or {}).items())
        level = re.search(r"level (\d)", sample.output.completion)
        if level:
            assert (name, score.value) == ("harm", min(5, int(level.group(1)) + 1))
        else:  # the unreadable verdict stays unscored with its raw reply and reason
            assert score.metadata["status"] == "unscored" and score.metadata["raw"] == "no idea, sorry"
            assert score.metadata["reason"]

    table = results_table([harm_log, path]).set_index(["experiment", "item_id", "sample"])
    second = table.loc[SECOND_JUDGE]
    first = table.loc["harmfulness"].loc[second.index]
    assert (first["answer"] == second["answer"]).all()  # the same answers, scored twice
    assert set(second["judge"]) == {"mockllm/judge2"} and set(first["judge"]) == {"mockllm/judge"}

    again = CountingJudge()
    _log, path2 = rejudge(harm_log, scripted_model(again, name="judge2"), prompts=4, seed=1, out_dir=tmp_path / "b",
                          display="none")
    assert again.calls == 0  # every verdict came back from the cache: an interrupted re-scoring repeats no call
    assert read_eval_log(str(path2), header_only=True).stats.model_usage == {}  # no call made: no usage, not a zero
    replayed = read_eval_log(str(path2)).samples or []
    assert [s.scores["harm"].value for s in replayed] == pytest.approx([s.scores["harm"].value for s in back.samples or []],
                                                                       nan_ok=True)


def test_secret_values_in_the_judge_args_never_reach_the_log(harm_log: Path, tmp_path: Path) -> None:
    args = {"default_headers": {"Authorization": "Bearer sk-nested-secret-9"}, "api_key": "sk-top-secret-9", "timeout": 30}
    _log, path = rejudge(harm_log, scripted_model(CountingJudge(), name="judge2"), judge_args=args, prompts=1,
                         out_dir=tmp_path, display="none")
    with zipfile.ZipFile(path) as archive:
        everything = b"".join(archive.read(name) for name in archive.namelist())
    assert b"sk-nested-secret-9" not in everything and b"sk-top-secret-9" not in everything
    roles = read_eval_log(str(path), header_only=True).eval.model_roles
    assert roles is not None
    assert roles["grader"].args == {"default_headers": {"Authorization": "***"}, "api_key": "***", "timeout": 30}


def test_rejudge_refuses_what_is_not_a_finished_harmfulness_log(harm_log: Path, tmp_path: Path) -> None:
    judge = scripted_model(CountingJudge(), name="judge2")
    _log, rescored = rejudge(harm_log, judge, out_dir=tmp_path, display="none")
    with pytest.raises(EmpersonaError, match=r"second_judge log, not a harmfulness log"):
        rejudge(rescored, judge, display="none")
    with pytest.raises(EmpersonaError, match="no such log file"):
        rejudge(tmp_path / "missing.eval", judge, display="none")
    broken = tmp_path / "broken.eval"
    broken.write_bytes(b"not a zip")
    with pytest.raises(EmpersonaError, match=f"{broken}.*not a readable inspect log"):
        rejudge(broken, judge, display="none")


def test_rejudge_command_prints_agreement_and_keeps_keys_out_of_the_log(
        harm_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-do-not-write-me-1234"
    with LoopbackServer(scripted_judges, models=(SECOND_JUDGE_NAME,)) as server:
        monkeypatch.setenv("LOOPBACK_BASE_URL", server.base_url)
        monkeypatch.setenv("LOOPBACK_API_KEY", "unused")
        result = CliRunner().invoke(app, ["rejudge", str(harm_log), "--judge", f"openai-api/loopback/{SECOND_JUDGE_NAME}",
                                          "--prompts", "5", "--out", str(tmp_path), "--judge-arg", f"api_key={secret}",
                                          "--display", "none"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "weighted kappa" in text and "harm_max10 on these prompts" in text and "15 answers to 5 prompts" in text
    [written] = list(tmp_path.glob("*.eval"))
    with zipfile.ZipFile(written) as archive:
        assert not any(secret.encode() in archive.read(name) for name in archive.namelist())
    bad = CliRunner().invoke(app, ["rejudge", str(harm_log), "--judge", "gpt-4o"])
    assert isinstance(bad.exception, EmpersonaError) and "not an inspect model string" in str(bad.exception)


def test_a_re_scoring_keeps_nothing_of_the_first_judges_and_counts_as_done(harm_log: Path, tmp_path: Path) -> None:
    """The harmfulness log's judge identity and re-asked calls are its first judge's: a re-scoring
    that kept them would never count as done for its own judge, and would not ask its failed calls."""
    from inspect_ai.log import write_eval_log

    from empersona.evals.second_judge import FIRST_JUDGE_METADATA
    from empersona.study.plan import REASKED, finished_log

    assert REASKED in FIRST_JUDGE_METADATA
    log = read_eval_log(str(harm_log))
    log.eval.metadata = {**(log.eval.metadata or {}), "judge_identity": "abcd1234abcd1234", REASKED: 3}
    judged = tmp_path / "harm" / harm_log.name
    judged.parent.mkdir()
    write_eval_log(log, str(judged))
    _, path = rejudge(judged, scripted_model(CountingJudge(), name="judge2"), prompts=2, seed=1,
                      out_dir=tmp_path / "second", display="none", metadata={"judge_identity": None})
    meta = read_eval_log(str(path), header_only=True).eval.metadata or {}
    assert meta["judge_identity"] is None and REASKED not in meta and meta["first_judge"] == "mockllm/judge"
    args = {"prompts": 2, "seed": 1, "judge_args": {}, "harm_log": str(judged)}
    assert finished_log(tmp_path / "second", SECOND_JUDGE, args, None, judge="mockllm/judge2") == path
    assert finished_log(tmp_path / "second", SECOND_JUDGE, args, None, judge="mockllm/judge2",
                        judge_settings="0123456789abcdef") is None  # another endpoint of the second judge
