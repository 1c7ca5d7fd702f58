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

# --- sub-command registration (one line per stage) ---------------------------------------
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
