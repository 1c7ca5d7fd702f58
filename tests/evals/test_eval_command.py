"""``empersona eval``: what it refuses before any model is loaded, each with a one-line reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from empersona.cli import app
from empersona.errors import EmpersonaError

runner = CliRunner()


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["eval", "two_aii", "--model", "openai/x"], "unknown experiment 'two_aii'; choose from harmfulness"),
        (["eval", "two_ai", "--model", "gpt-4o-mini"], "--model gpt-4o-mini: not an inspect model string"),
        (["eval", "harmfulness", "--model", "openai/x", "--judge", "gpt-4o"], "--judge gpt-4o: not an inspect model string"),
        (["eval", "two_ai", "--model", "openai/x", "-T", "mod=logprob"], "-T mod: not an argument of the two_ai task; choose from mode"),
    ],
)
def test_bad_arguments_are_refused_by_name(argv: list[str], reason: str) -> None:
    result = runner.invoke(app, argv)
    assert isinstance(result.exception, EmpersonaError)
    assert reason in str(result.exception)


def test_a_model_folder_that_cannot_be_loaded_is_named(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))  # the task's items load first
    result = runner.invoke(app, ["eval", "two_ai", "--model", f"hf/{tmp_path / 'no-such-model'}", "--limit", "1",
                                 "--log-dir", str(tmp_path / "logs"), "--display", "none"])
    assert isinstance(result.exception, EmpersonaError), result.output
    assert "two_ai on hf/" in str(result.exception) and "cannot load the model" in str(result.exception)
