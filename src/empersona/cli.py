"""The ``empersona`` command: one sub-command per pipeline stage."""

from __future__ import annotations

import sys

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


# --- sub-command registration (one line per stage) ---------------------------------------
from empersona.evals.commands import eval_command  # noqa: E402

app.command("eval")(eval_command)
from empersona.data.commands import app as data_app  # noqa: E402

app.add_typer(data_app, name="data")
from empersona.train.commands import train  # noqa: E402

app.command("train")(train)
# --- end of sub-command registration ------------------------------------------------------


def main() -> None:
    """Entry point: run the app, turning EmpersonaError into a one-line message."""
    try:
        app(standalone_mode=False)
    except EmpersonaError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as err:  # click's own usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(130)
        raise
