"""``empersona run STUDY.yaml``: the whole study from one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from empersona.study.config import Stage


def run_command(
    study_file: Annotated[Path, typer.Argument(help="The study's YAML file (see configs/smoke.yaml, configs/paper.yaml).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (jobs, calls, cost) and run nothing (it fetches the data files into the cache to count the items).")] = False,
    only: Annotated[Stage | None, typer.Option("--only", help="Run one stage: train, eval or report.")] = None,
    fail_fast: Annotated[bool, typer.Option(
        "--fail-fast", help="Stop at the first evaluation that fails (by default the others go on, the report covers "
                            "what finished, and the run ends with an error naming what did not).")] = False,
) -> None:
    """Plan, train, evaluate and report a whole study; run it again after a crash to continue."""
    from empersona.study.config import load_study
    from empersona.study.run import run_study
    from empersona.study.vllm_server import stop_signals_interrupt

    # SIGTERM and SIGHUP (a scheduler's stop, a closed terminal) stop the run as Ctrl-C does, at any
    # stage: an evaluation is cancelled with its log, a probe's process is ended with the run
    with stop_signals_interrupt():
        run_study(load_study(study_file), only=only, dry_run=dry_run, fail_fast=fail_fast)
