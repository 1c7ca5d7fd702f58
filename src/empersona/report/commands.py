"""``empersona report RUN_DIR``, ``empersona compare RUN_DIR...`` and ``empersona import FILE... --out RUN_DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder: logs/ (inspect .eval logs), imports/, optional models.yaml.")],
    base_model: Annotated[str | None, typer.Option("--base-model", help="Reference model for the labels (display name or model string).")] = None,
    resamples: Annotated[int | None, typer.Option("--resamples", min=100, help=(
        "Bootstrap resamples per interval (default: the settings' n_resamples, 10,000 unless set)."))] = None,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild results.parquet from the logs even when it is fresh.")] = False,
    thresholds: Annotated[Path | None, typer.Option("--thresholds", help=(
        "YAML of classification settings (em_delta_min, alpha, min_scored_harm, min_scored_probe, recognition_foil, "
        "...), or a study file (its persona: section). Default: RUN_DIR/study.yaml's persona: section when the run "
        "folder has one, else docs/protocol.md section 4."))] = None,
) -> None:
    """Write RUN_DIR/report/report.md, report.html (figures embedded) and figures/ from stored results."""
    from rich.console import Console

    from empersona.errors import EmpersonaError
    from empersona.report.build import build_report

    if not run_dir.is_dir():
        raise EmpersonaError(f"{run_dir}: no such run folder. Pass the folder that holds logs/ (and imports/)")
    settings = None
    kept = run_dir / "study.yaml"  # study.config.STUDY_COPY: the settings `empersona run` used
    if thresholds is not None or kept.is_file():
        from empersona.study.config import load_thresholds

        settings = load_thresholds(thresholds or kept)
    report = build_report(run_dir, base_model=base_model, n_resamples=resamples, seed=seed, rebuild_results=rebuild,
                          thresholds=settings)
    console = Console()
    for model, label in report.labels.items():
        console.print(f"{model}: {label}")
    if not report.labels:
        console.print("no persona labels: no base model (pass --base-model NAME)")
    console.print(f"report: {report.markdown}")
    console.print(f"report: {report.html}")


def compare_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders of the studies to compare (each reported on its own).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for compare.md, compare.html, persona.csv and figures/.")],
    names: Annotated[str | None, typer.Option("--names", help=(
        "Comma-separated names of the studies, in order (default: each run's study name, else its folder name)."))] = None,
) -> None:
    """Put several studies' persona calls side by side: labels per study, one table, one figure."""
    from rich.console import Console

    from empersona.report.compare import LABELS, compare, label_counts

    result = compare(run_dirs, out, [n.strip() for n in names.split(",")] if names else None)
    console = Console()
    for study in result.studies:
        if study.built:
            console.print(f"{study.name}: its report was built first ({study.run_dir / 'report'}: tables missing or older "
                          "than its results)")
    for row in label_counts(result.studies).itertuples(index=False):
        counts = ", ".join(f"{label} {getattr(row, label)}" for label in LABELS if getattr(row, label))
        console.print(f"{row.study}: {row.models} models ({counts or 'none classified'})")
    console.print(f"comparison: {result.markdown}")
    console.print(f"comparison: {result.html}")


def import_command(
    files: Annotated[list[Path], typer.Argument(help="Files to import.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to import into (imports/ is created).")],
    fmt: Annotated[str, typer.Option("--format", help="em-csv (classic EM CSV layout) or jsonl (our tidy records).")] = "em-csv",
    model: Annotated[str | None, typer.Option("--model", help="Model name for the rows (em-csv default: the file's stem).")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="The judge that scored the file, for the record.")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Points by which stored and recomputed scores may differ.")] = 0.5,
) -> None:
    """Import generations made elsewhere; then 'empersona report RUN_DIR' includes them."""
    from rich.console import Console

    from empersona.analysis.importers import FORMATS, import_files
    from empersona.errors import EmpersonaError

    if fmt not in FORMATS:
        raise EmpersonaError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    results = import_files(files, fmt=fmt, out=out, model=model, judge=judge, tolerance=tolerance)  # type: ignore[arg-type]
    console = Console()
    for result in results:
        record = result.record
        counts = ", ".join(f"{k} {v}" for k, v in sorted(record.status_counts.items()))
        console.print(f"{record.source}: {record.rows} rows for {', '.join(record.models)} ({counts})")
        for d in record.disagreements:
            console.print(
                f"  {d['score']}: recomputed from the judge distribution for {d['compared']} rows; "
                f"{d['disagree']} differ from the stored score by more than {tolerance:g} "
                f"(max {d['max_abs_diff']:.2f}, mean {d['mean_abs_diff']:.2f}; scored by one side only: {d['only_one_scored']})"
            )
    console.print(f"imported into {out / 'imports'}; next: empersona report {out}")
