"""``empersona data``: fetch the pinned sources, list them, validate training domains."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from empersona.data.fetch import cache_dir, checked_mirror, fetch, mirror_file, mirror_from_env, source_status
from empersona.data.sources import SOURCES
from empersona.errors import EmpersonaError

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="Public data sources: fetch them into the cache, list them, validate training files.",
    no_args_is_help=True,
    add_completion=False,
)

MirrorOption = Annotated[
    Path | None,
    typer.Option(
        "--mirror",
        help="Folder laid out like ../shared/data to copy from instead of downloading "
        "(default: $EMPERSONA_MIRROR).",
    ),
]


def _console() -> Console:
    from rich.console import Console

    return Console(soft_wrap=False)


def _plan(names: list[str], mirror: Path | None, force: bool) -> tuple[list[str], dict[str, str]]:
    """(names to fetch, {skipped name: why}).

    Given names are all fetched. "all" (or no name) means every source that can be had: with a
    mirror, those the mirror holds; without, every source that is not password-locked; and,
    unless ``force``, every source already verified in the cache (listed as it is).
    """
    if "all" in names and names != ["all"]:
        raise EmpersonaError("'all' fetches every source: give it alone, or name the sources")
    if names and names != ["all"]:
        return names, {}
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for source in SOURCES.values():
        try:
            verified = not force and source_status(source.name) == "verified"
        except EmpersonaError:  # an unreadable cached copy: its fetch says why
            verified = False
        if verified:
            chosen.append(source.name)
        elif mirror is not None and mirror_file(source, mirror) is None:
            skipped[source.name] = f"not in mirror {mirror}"
        elif mirror is None and source.locked:
            skipped[source.name] = "locked upstream: `empersona data fetch NAME --path FILE`"
        elif mirror is None and source.url is None:
            skipped[source.name] = "no download pinned: `empersona data fetch NAME --path FILE`"
        else:
            chosen.append(source.name)
    return chosen, skipped


def _source_name(name: str) -> str:
    """A source name as given, or the source a training domain reads (``insecure_code`` -> ``insecure``)."""
    from empersona.data.domains import DOMAINS

    domain = DOMAINS.get(name)
    if name in SOURCES or name == "all" or domain is None:
        return name
    if domain.source_kind == "file":
        return domain.source
    raise EmpersonaError(
        f"domain '{name}' is no file to fetch: `datasets` loads it from the Hugging Face hub when training "
        f"starts; offline, give training a local copy (`empersona train --domain {name} --domain-path FILE`, "
        "or domain_paths in a study file)"
    )


@app.command("fetch")
def fetch_command(
    names: Annotated[
        list[str] | None, typer.Argument(help="Source names, or 'all' (the default).")
    ] = None,
    mirror: MirrorOption = None,
    force: Annotated[bool, typer.Option("--force", help="Copy again even if cached.")] = False,
    path: Annotated[
        Path | None,
        typer.Option("--path", help="A local copy of ONE source (for password-locked files)."),
    ] = None,
) -> None:
    """Download (or copy from a mirror) and verify the pinned sources."""
    from rich.table import Column, Table

    names = [_source_name(name) for name in names or []]
    if path is not None and (names == ["all"] or len(names) != 1):
        raise EmpersonaError("--path needs exactly one source name: `data fetch NAME --path FILE`")
    if mirror is not None:
        mirror = checked_mirror(mirror.expanduser(), "--mirror")
    else:
        mirror = mirror_from_env()
    table = Table(Column("source", no_wrap=True), "status", "sha256", "cached at")
    failures: list[str] = []
    chosen, skipped = _plan(names, mirror, force)
    for name in chosen:
        typer.echo(f"fetching {name} ...")
        try:
            cached = fetch(name, mirror=mirror, force=force, path=path)
        except EmpersonaError as err:
            failures.append(f"{name}: {err}")
            table.add_row(name, "[red]failed[/red]", "", "")
            continue
        table.add_row(name, "verified", SOURCES[name].sha256[:12], str(cached))
    for name, why in skipped.items():
        table.add_row(name, "skipped", "", why)
    _console().print(table)
    if failures:
        raise EmpersonaError(f"{len(failures)} source(s) failed:\n" + "\n".join(failures))


@app.command("list")
def list_command() -> None:
    """Show each source (cache status, licence, what it is, how to obtain a missing locked one)
    and each training domain with where its rows come from."""
    from empersona.data.domains import DOMAINS, HF_DATASET

    console = _console()
    say = partial(console.print, markup=False, highlight=False, soft_wrap=True)
    say(f"sources (cache: {cache_dir() / 'data'}):")
    width = max(len(name) for name in SOURCES)
    for source in SOURCES.values():
        status = source_status(source.name)
        if status != "verified" and source.locked:
            status += ", locked upstream"
        elif status != "verified" and source.url is None:
            status += ", no download pinned: local copy or mirror only"
        say(f"  {source.name:<{width}}  {status}  ({source.license})")
        say(f"  {'':<{width}}  {source.description}")
        if status.startswith("missing") and source.how_to_obtain:
            say(f"  {'':<{width}}  to obtain: {source.how_to_obtain}")
        elif status.startswith("corrupt"):
            how = "--path FILE" if source.locked or source.url is None else "--force"
            say(f"  {'':<{width}}  the cached copy does not match its sha256: `empersona data fetch {source.name} {how}`")
    say("training domains (empersona train --domain NAME):")
    width = max(len(name) for name in DOMAINS)
    for domain in DOMAINS.values():
        kind = "misaligned" if domain.misaligned else "aligned control"
        origin = (f"source {domain.source}" if domain.source_kind == "file"
                  else f"hub {HF_DATASET} {domain.source}/{domain.column}, loaded when training starts")
        say(f"  {domain.name:<{width}}  {kind}: {domain.description}; {origin}")


@app.command("validate")
def validate_command(
    target: Annotated[str, typer.Argument(help="A domain name or a .jsonl/.jsonl.gz chat file.")],
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="Tokenizer (model folder) for token-length percentiles."),
    ] = None,
    path: Annotated[
        Path | None,
        typer.Option(
            "--path", help="Local copy for a domain (locked file, or emergent_plus schema)."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Check only the first rows.")] = None,
    max_errors: Annotated[int, typer.Option("--max-errors", help="Errors to print.")] = 20,
) -> None:
    """Check every row of a training domain or file; exit 1 when any row is malformed."""
    from empersona.data.domains import validate

    report = validate(target, tokenizer_path=tokenizer, path=path, limit=limit)
    for error in report.errors[:max_errors]:
        where = f"{error.file}:{error.line}" + (f": field '{error.field}'" if error.field else "")
        typer.echo(f"{where}: {error.message}")
    if len(report.errors) > max_errors:
        typer.echo(f"... and {len(report.errors) - max_errors} more errors")
    typer.echo(f"source: {report.source}")
    counts = f"rows: {report.rows}  errors: {len(report.errors)}  duplicates: {report.duplicates}"
    typer.echo(counts)
    if report.token_lengths is not None:
        t = report.token_lengths
        typer.echo(
            f"tokens ({t.method}): p50 {t.p50:.0f}  p90 {t.p90:.0f}  p99 {t.p99:.0f}  max {t.max}"
        )
    if not report.ok:
        raise typer.Exit(code=1)
