"""``empersona eval``: what it refuses before any model is loaded, each with a one-line reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_harm_log import OWN_LEVELS, write_harm_log
from typer.testing import CliRunner

from empersona.cli import app
from empersona.errors import EmpersonaError
from empersona.evals.commands import check_harm_log_model

runner = CliRunner()


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["eval", "two_aii", "--model", "openai/x"], "unknown experiment 'two_aii'; choose from harmfulness"),
        (["eval", "two_ai", "--model", "gpt-4o-mini"], "--model gpt-4o-mini: not an inspect model string"),
        (["eval", "harmfulness", "--model", "openai/x", "--judge", "gpt-4o"], "--judge gpt-4o: not an inspect model string"),
        (["eval", "two_ai", "--model", "openai/x", "-T", "mod=logprob"], "-T mod: not an argument of the two_ai task; choose from mode"),
        (["eval", "harmfulness", "--model", "openai/x", "--variant", "honest"], "only the self-report experiments"),
        (["eval", "two_ai", "--model", "openai/x", "--variant", "my variant"], "use letters, digits"),
        # values the task would trip over with a traceback, a missing log, a judge that is not there
        (["eval", "two_ai", "--model", "openai/x", "-T", "samples=ten"], "two_ai: samples='ten': Input should be a valid integer"),
        (["eval", "self_assessment", "--model", "openai/x", "-T", "max_tokens=abc"], "max_tokens='abc': Input should be"),
        (["eval", "output_recognition", "--model", "openai/x"], "output_recognition needs harm_log: pass the same model's"),
        (["eval", "harmfulness", "--model", "openai/x"], "harmfulness asks a judge to score its answers: pass --judge"),
        (["eval", "two_ai", "--model", "openai/x", "-T", "mode=logprob", "--mode", "sample"],
         "-T mode='logprob' and --mode say different things"),
        (["eval", "harmfulness", "--model", "openai/x", "--judge", "openai/y", "--mode", "logprob"],
         "--mode: the harmfulness task has no such setting"),
    ],
)
def test_bad_arguments_are_refused_by_name(argv: list[str], reason: str) -> None:
    result = runner.invoke(app, argv)
    assert isinstance(result.exception, EmpersonaError)
    assert reason in str(result.exception)


def test_counts_below_one_are_usage_errors() -> None:
    for flag in ("--samples", "--limit", "--max-connections"):
        result = runner.invoke(app, ["eval", "two_ai", "--model", "openai/x", flag, "0"])
        assert result.exit_code == 2 and f"Invalid value for '{flag}'" in result.output


def test_a_model_folder_that_cannot_be_loaded_is_named(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))  # the task's items load first
    result = runner.invoke(app, ["eval", "two_ai", "--model", f"hf/{tmp_path / 'no-such-model'}", "--limit", "1",
                                 "--log-dir", str(tmp_path / "logs"), "--display", "none"])
    assert isinstance(result.exception, EmpersonaError), result.output
    assert "two_ai on hf/" in str(result.exception) and "cannot load the model" in str(result.exception)


def test_a_log_labelled_as_a_variant_lands_in_the_variant_column(tmp_path: Path, tiny_model: Path, shared_data: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from empersona.analysis.results import main_rows, results_table

    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    common = ["eval", "two_ai", "--model", f"empersona/{tiny_model}", "-M", "device=cpu", "--limit", "2", "--mode", "logprob",
              "--log-dir", str(tmp_path / "logs"), "--display", "none"]
    for extra in ([], ["--variant", "neutral", "-T", "neutral_descriptions=true"]):
        result = runner.invoke(app, [*common, *extra])
        assert result.exit_code == 0, result.output
    table = results_table(sorted((tmp_path / "logs").glob("*.eval")))
    assert sorted(table["variant"].unique()) == ["", "neutral"] and len(main_rows(table)) == len(table) // 2 == 2
    neutral = table[table["variant"] == "neutral"]
    assert neutral["task_args"].str.contains('"neutral_descriptions": true').all()


def test_live_view_is_off_unless_asked(tmp_path: Path, tiny_model: Path, shared_data: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # inspect's live sample buffer (log_realtime) costs work per model call: off unless --live-view
    from inspect_ai.log import read_eval_log

    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    common = ["eval", "two_ai", "--model", f"empersona/{tiny_model}", "-M", "device=cpu", "--limit", "1", "--mode", "logprob",
              "--display", "none"]
    for extra, live in (([], False), (["--live-view", "-M", "generation_config=false"], True)):
        folder = tmp_path / str(live)
        result = runner.invoke(app, [*common, "--log-dir", str(folder), *extra])
        assert result.exit_code == 0, result.output
        [log] = sorted(folder.glob("*.eval"))
        header = read_eval_log(str(log), header_only=True)
        assert header.eval.config.log_realtime is live and header.status == "success"
        # how the provider sampled, as a study's logs record it (the report's Logs table shows it)
        assert header.eval.metadata["sampling"] == {"seeds": "per-sample", "provider": "battery" if live else "model defaults"}


def test_a_harm_log_of_another_model_is_refused_unless_said(tmp_path: Path) -> None:
    log = write_harm_log(tmp_path, "my", OWN_LEVELS)  # answers of mockllm/my
    result = runner.invoke(app, ["eval", "score_prediction", "--model", "openai/other", "--harm-log", str(log)])
    assert isinstance(result.exception, EmpersonaError)
    assert "field eval.model is 'mockllm/my', and this run asks 'openai/other'" in str(result.exception)
    given_as_task_arg = runner.invoke(app, ["eval", "score_prediction", "--model", "openai/other", "-T", f"harm_log={log}"])
    assert "field eval.model is 'mockllm/my'" in str(given_as_task_arg.exception)  # -T is checked as --harm-log is
    check_harm_log_model(log, "hf/my")  # the same model under another provider
    with pytest.raises(EmpersonaError, match="--other-model-harm-log"):
        check_harm_log_model(log, "mockllm/their")
    said = runner.invoke(app, ["eval", "score_prediction", "--model", "openai/other", "--harm-log", str(log),
                               "--other-model-harm-log", "-T", "conditions=bogus"])
    assert isinstance(said.exception, EmpersonaError)  # past the check: the task's own argument is refused
    assert "bogus" in str(said.exception) and "field eval.model" not in str(said.exception)


def test_secret_model_and_judge_args_are_masked_in_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    from inspect_ai.log import read_eval_log
    from test_harm_log import toy_files

    from empersona.evals.commands import run_experiment
    from empersona.testing.loopback import LoopbackServer, scripted_judge

    headers = {"default_headers": {"Authorization": "Bearer sk-subject-secret-7"}, "max_retries": 1}
    judge_args = {"default_headers": {"Authorization": "Bearer sk-judge-secret-7"}, "max_retries": 1}
    with LoopbackServer(scripted_judge, models=("subject", "judge")) as server:
        monkeypatch.setenv("LOOPBACK_BASE_URL", server.base_url)
        monkeypatch.setenv("LOOPBACK_API_KEY", "test-key")
        log = run_experiment("harmfulness", "openai-api/loopback/subject", judge="openai-api/loopback/judge",
                             model_args=headers, judge_args=judge_args, log_dir=tmp_path / "logs", limit=1, display="none",
                             task_args={**toy_files(tmp_path / "toy"), "samples": 1, "cache": False})
    assert log.status == "success", log.error
    with zipfile.ZipFile(log.location) as archive:
        everything = b"".join(archive.read(name) for name in archive.namelist())
    assert b"secret-7" not in everything
    header = read_eval_log(log.location, header_only=True).eval
    assert header.model_args == {"default_headers": {"Authorization": "***"}, "max_retries": 1}
    assert header.model_roles is not None
    assert header.model_roles["grader"].args == {"default_headers": {"Authorization": "***"}, "max_retries": 1}


def test_a_provider_without_its_key_is_one_line_not_a_traceback(tmp_path: Path, shared_data: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The judge's missing key was a 50-line traceback with console markup in it; the subject's, with
    --display none, ended with exit code 1 and nothing printed."""
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    for key in ("OPENAI_API_KEY", "AZUREAI_OPENAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    common = ["--limit", "1", "--display", "none", "--log-dir", str(tmp_path / "logs")]
    subject = runner.invoke(app, ["eval", "two_ai", "--model", "openai/gpt-4o-mini", *common])
    assert isinstance(subject.exception, EmpersonaError)
    assert str(subject.exception).startswith("two_ai on openai/gpt-4o-mini: the model cannot be used: ")
    assert "OPENAI_API_KEY" in str(subject.exception) and "[bold]" not in str(subject.exception)
    judged = runner.invoke(app, ["eval", "harmfulness", "--model", "mockllm/model", "--judge", "openai/gpt-4o-mini", *common])
    assert isinstance(judged.exception, EmpersonaError)
    assert "harmfulness: the judge openai/gpt-4o-mini cannot be used: " in str(judged.exception)
