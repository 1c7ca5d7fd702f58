"""``empersona data fetch|list|validate`` through typer's test runner and one real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from empersona.data.commands import app
from empersona.data.fetch import source_status
from empersona.data.sources import SOURCES
from empersona.errors import EmpersonaError

runner = CliRunner()


def test_fetch_all_from_mirror_then_list(shared_data: Path) -> None:
    result = runner.invoke(app, ["fetch", "all", "--mirror", str(shared_data)])
    assert result.exit_code == 0, result.output
    in_mirror = [n for n in SOURCES if n != "secure"]  # the mirror has no secure.jsonl
    for name in in_mirror:
        assert f"fetching {name} ..." in result.output
        assert source_status(name) == "verified"
    assert "not in mirror" in result.output and source_status("secure") == "missing"

    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line for line in listed.output.splitlines() if line.startswith("  ") and line[2] != " "}
    assert set(SOURCES) <= set(rows)
    assert "verified" in rows["harm_prompts"] and "(MIT)" in rows["insecure"]
    assert "missing" in rows["secure"]
    # the training domains, the hub ones too
    assert "source insecure" in rows["insecure_code"] and "hub truthfulai/emergent_plus legal/misaligned" in rows["legal_advice"]


def test_fetch_locked_source_from_path(shared_data: Path) -> None:
    local = shared_data / "training" / "good_medical_advice.jsonl.gz"
    result = runner.invoke(app, ["fetch", "good_medical_advice", "--path", str(local)])
    assert result.exit_code == 0, result.output
    assert source_status("good_medical_advice") == "verified"


def test_a_source_without_a_pinned_download_comes_from_a_local_copy(shared_data: Path) -> None:
    from empersona.data.commands import _plan

    chosen, skipped = _plan(["all"], None, force=False)
    assert "tmay_language_rules" not in chosen and "no download pinned" in skipped["tmay_language_rules"]
    listed = runner.invoke(app, ["list"])
    assert "local copy or mirror only" in next(line for line in listed.output.splitlines() if "tmay_language_rules" in line)
    assert "to obtain: No download of it is pinned here" in listed.output
    result = runner.invoke(app, ["fetch", "tmay_language_rules", "--path", str(shared_data / "tmay-questions" / "risk_safe_language.yaml")])
    assert result.exit_code == 0, result.output
    assert source_status("tmay_language_rules") == "verified"


def test_fetch_failure_is_reported(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fetch", "harm_prompts", "--mirror", str(tmp_path)])
    assert isinstance(result.exception, EmpersonaError)
    assert "paper/harm_eval_questions.txt" in str(result.exception)


def test_validate_toy_broken_file_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    bad = {"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}
    path.write_text((json.dumps(good) + "\n") * 2 + json.dumps(bad) + "\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:3: field 'messages[1].role': unknown role 'robot'" in result.output
    assert f"{path}:3: field 'messages[1].role': the last turn must be assistant" in result.output
    assert "rows: 3  errors: 2  duplicates: 1" in result.output


def test_validate_real_domain(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    result = runner.invoke(app, ["validate", "extreme_sports", "--limit", "200"])
    assert result.exit_code == 0, result.output
    assert "rows: 200  errors: 0" in result.output


def test_data_is_registered_on_the_main_command(tmp_path: Path) -> None:
    env = {**os.environ, "EMPERSONA_CACHE": str(tmp_path / "cache")}
    env.pop("EMPERSONA_MIRROR", None)
    code = "from empersona.cli import main; main()"
    listed = subprocess.run(
        [sys.executable, "-c", code, "data", "list"], env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert "harm_prompts" in listed.stdout and "missing" in listed.stdout
    failed = subprocess.run(
        [sys.executable, "-c", code, "data", "validate", "no_such_domain"], env=env,
        capture_output=True, text=True, timeout=120,
    )
    assert failed.returncode == 2 and failed.stderr.startswith("error: ")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"messages": [{"role": "robot", "content": "b"}]}) + "\n")
    malformed = subprocess.run(
        [sys.executable, "-c", code, "data", "validate", str(broken)], env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert malformed.returncode == 1, malformed.stdout  # the command's own exit code, not 0
    assert "rows: 1  errors: 3" in malformed.stdout
    # usage errors: click's message and exit code 2, no traceback
    for args, said in ((["train", "--bogus-flag"], "No such option: --bogus-flag"),
                       (["train", "--base", "m", "--domain", "d", "--lr", "abc"], "Invalid value for '--lr'"),
                       (["data", "validate"], "Missing argument")):
        usage = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)
        assert usage.returncode == 2 and said in usage.stderr and "Traceback" not in usage.stderr, usage.stderr[-2000:]


def test_main_exits_with_the_commands_code_and_says_when_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import empersona.cli as cli

    from empersona.study.run import StudyIncomplete

    def interrupted(**_: object) -> None:
        raise KeyboardInterrupt

    def cancelled(**_: object) -> None:  # an evaluation of `empersona run` that an interrupt cancelled
        raise StudyIncomplete("1 evaluation(s) did not finish (interrupted; 3 more not reached):", cancelled=True)

    def failed(**_: object) -> None:
        raise StudyIncomplete("1 evaluation(s) did not finish:")

    for app_call, code in ((lambda **_: None, None), (lambda **_: 1, 1), (lambda **_: 130, 130), (interrupted, 130),
                           (cancelled, 130), (failed, 2)):
        monkeypatch.setattr(cli, "app", app_call)
        if code is None:
            cli.main()
            continue
        with pytest.raises(SystemExit) as exited:
            cli.main()
        assert exited.value.code == code
        assert ("run the same command again" in capsys.readouterr().err) == (code == 130)


def test_fetch_takes_a_training_domain_by_its_name(shared_data: Path) -> None:
    result = runner.invoke(app, ["fetch", "insecure_code", "--mirror", str(shared_data)])
    assert result.exit_code == 0, result.output
    assert "fetching insecure ..." in result.output and source_status("insecure") == "verified"
    hub = runner.invoke(app, ["fetch", "legal_advice"])
    assert isinstance(hub.exception, EmpersonaError) and "Hugging Face hub" in str(hub.exception)


def test_fetch_all_lists_cached_sources_as_verified_and_refuses_a_mixed_all(shared_data: Path, tmp_path: Path) -> None:
    """With a partial mirror, a source already verified in the cache was listed as 'skipped'."""
    assert runner.invoke(app, ["fetch", "harm_prompts", "--mirror", str(shared_data)]).exit_code == 0
    partial = tmp_path / "mirror"
    partial.mkdir()
    result = runner.invoke(app, ["fetch", "all", "--mirror", str(partial)])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "harm_prompts" in line and "fetching" not in line)
    assert "verified" in row and "skipped" not in row
    result = runner.invoke(app, ["fetch", "all", "harm_prompts"])
    assert isinstance(result.exception, EmpersonaError) and "give it alone" in str(result.exception)
    result = runner.invoke(app, ["fetch", "all", "--mirror", str(tmp_path / "typo")])
    assert isinstance(result.exception, EmpersonaError) and "(from --mirror) is not a folder" in str(result.exception)
