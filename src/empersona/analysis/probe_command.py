"""``empersona probe MODEL --harm-log LOG``: the activation probes of ``activations.py``, written
to ``probe.json`` (settings, counts, the per-layer table, notes), ``probe.csv`` (one row per layer)
and ``probe.png`` (probe AUCs, the cosine against its permutation null, the harm answers on the
self axis, each against the layer), with the table printed. The folder is ``RUN_DIR/probes/<name>/``
for a log in ``RUN_DIR/logs/<name>/`` (``--out`` elsewhere); a ``probe.json`` made there from another
log or with other settings is not replaced without ``--overwrite``."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from empersona.analysis.activations import Device, LayerRow, Pool, ProbeResult, StartBar

DPI = 110
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("layer", "layer"),
    ("harm_auc", "harm AUC"),
    ("self_auc", "self AUC"),
    ("cosine", "cos"),
    ("cos_null95", "null 95%"),
    ("cos_p", "p"),
    ("cross_auc", "cross AUC"),
    ("high_on_self", "high on self"),
    ("low_on_self", "low on self"),
)
"""What the printed table shows, out of each ``LayerRow`` (the CSV has every column)."""


def write_csv(rows: list[LayerRow], path: Path) -> Path:
    """One row per layer, every column of ``LayerRow`` (empty where a statistic is undefined)."""
    from empersona.analysis.activations import LayerRow

    fields = list(LayerRow.model_fields)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.model_dump().items()})
    return path


def _dashed(ax: Axes, value: float, label: str) -> None:
    ax.axhline(value, color="#999999", linestyle="--", linewidth=1, label=label)


def draw_figure(result: ProbeResult, path: Path) -> Path:
    """Three panels against the layer: both probes' held-out AUC; the cosine with the permutation
    null's 95% band and the random-direction one; the harm answers'
    mean position on the self axis (-1 aligned, +1 misaligned description)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = result.layers
    layers = [r.layer for r in rows]
    fig = Figure(figsize=(7.5, 9.0), dpi=DPI, layout="constrained")
    top, middle, bottom = fig.subplots(3, 1, sharex=True)
    top.plot(layers, [r.harm_auc for r in rows], marker="o", color="#c0392b", label="harm (high vs low answers)")
    top.plot(layers, [r.self_auc for r in rows], marker="s", color="#2471a3", label="self (misaligned vs aligned description)")
    top.plot(layers, [r.cross_auc for r in rows], marker="^", color="#8e44ad", linestyle=":",
             label="harm answers on the self direction")
    _dashed(top, 0.5, "chance")
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("held-out AUC")
    top.legend(fontsize=8, loc="lower right")
    middle.fill_between(layers, [-r.cos_null95 for r in rows], [r.cos_null95 for r in rows], color="#bbbbbb", alpha=0.5,
                        label="null (harm relabelled by prompt), 95%")
    middle.plot(layers, [r.cos_random95 for r in rows], color="#777777", linestyle=":", label="random directions, 95%")
    middle.plot(layers, [-r.cos_random95 for r in rows], color="#777777", linestyle=":")
    middle.plot(layers, [r.cosine for r in rows], marker="o", color="#111111", label="cos(harm, self)")
    middle.axhline(0, color="#999999", linewidth=0.8)
    middle.set_ylim(-1.02, 1.02)
    middle.set_ylabel("cosine")
    middle.legend(fontsize=8, loc="lower right")
    bottom.plot(layers, [r.high_on_self for r in rows], marker="o", color="#c0392b", label="high-harm answers")
    bottom.plot(layers, [r.low_on_self for r in rows], marker="o", color="#27ae60", label="low-harm answers")
    _dashed(bottom, 1.0, "misaligned descriptions")
    bottom.axhline(-1.0, color="#999999", linestyle="-.", linewidth=1, label="aligned descriptions")
    bottom.set_ylabel("position on the self axis")
    bottom.set_xlabel("layer (0 = embeddings)")
    bottom.legend(fontsize=8, loc="best")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, middle, bottom):
        ax.grid(alpha=0.25)
    settings = result.settings
    fig.suptitle(f"Activation probes: {Path(settings.adapter or settings.base).name} ({settings.pool} pooling)", fontsize=11)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def writable_folder(out: Path) -> None:
    """Make ``out`` and check that a file can be written in it, or say why not (``EmpersonaError``)."""
    from empersona.errors import EmpersonaError

    check = out / ".empersona-write-check"
    try:
        out.mkdir(parents=True, exist_ok=True)
        check.write_bytes(b"")
        check.unlink()
    except OSError as err:
        raise EmpersonaError(f"--out {out}: {err.strerror or err}. Give a folder that can be made and written: the "
                             "probe's files go there after its forward passes") from err


def write_outputs(result: ProbeResult, out: Path) -> list[Path]:
    """``probe.json``, ``probe.csv`` and ``probe.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "probe.json"
    json_path.write_text(result.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return [json_path, write_csv(result.layers, out / "probe.csv"), draw_figure(result, out / "probe.png")]


def print_table(result: ProbeResult) -> None:
    """The counts, the per-layer table (three decimals; "-" where undefined) and the notes."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    h, s = result.harm, result.self_set
    console.print(f"harm answers: {h.high_used} high of {h.high}, {h.low_used} low of {h.low}, from {h.prompts_used} prompts "
                  f"(left out: moderate {h.moderate_left_out}, unscored {h.unscored_left_out}, empty {h.empty_left_out})")
    console.print(f"class counts used: {h.high_used} high, {h.low_used} low (the cosine depends on them: compare models "
                  "at equal counts, see --max-answers)")
    console.print(f"self descriptions: {s.descriptions} from {s.items} items (put in the first person: {s.adapted}; "
                  f"not first person, kept: {s.not_first_person})")
    table = Table(title=f"activation probes, {result.settings.pool} pooling, hidden size {result.hidden_size}")
    for _field, title in TABLE_COLUMNS:
        table.add_column(title, justify="right")
    for row in result.layers:
        values = row.model_dump()
        table.add_row(*(str(values[f]) if f == "layer" else ("-" if math.isnan(values[f]) else f"{values[f]:.3f}")
                        for f, _title in TABLE_COLUMNS))
    console.print(table)
    console.print(f"cos: cosine of the two difference-of-means directions; null 95%: |cos| that 95% of prompt-level "
                  f"relabellings of the harm answers stay under, the self direction held fixed (random directions: "
                  f"{result.layers[0].cos_random95:.3f}); on self: -1 = aligned descriptions, +1 = misaligned")
    for note in result.notes:
        console.print(f"note: {note}", style="yellow")


@contextmanager
def progress_bars() -> Iterator[StartBar]:
    """Rich progress bars, one per set of answers, on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as progress:

        def start(label: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(label, total=total)
            return lambda done: progress.advance(task, done)

        yield start


def probe_command(
    model: Annotated[str, typer.Argument(help="A local model folder or LoRA adapter folder (hf/DIR and empersona/DIR accepted).")],
    harm_log: Annotated[Path, typer.Option("--harm-log", help="That model's harmfulness log (.eval).")],
    out: Annotated[Path | None, typer.Option("--out", help=(
        "Folder for probe.json, probe.csv, probe.png (default: RUN_DIR/probes/<name> when LOG lies in "
        "RUN_DIR/logs/<name>/, else ./probes/<model folder>)."))] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=(
        "Replace a probe.json in the folder made from another log or with other settings (a rerun of the same "
        "log and settings replaces it anyway)."))] = False,
    layers: Annotated[str, typer.Option("--layers", help="all, or e.g. 12 / 0-8 / 0-64:4 / 4,8,12 (0 = embeddings).")] = "all",
    pool: Annotated[str, typer.Option("--pool", help="mean: mean hidden state over the answer's tokens; last: its last token.")] = "mean",
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when there is one), cpu (fp32) or cuda (bf16).")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Answers per forward pass.")] = 8,
    max_answers: Annotated[int, typer.Option("--max-answers", min=0, help=(
        "At most this many answers per harm class (seeded sample); 0: all. The cosine depends on the counts: to "
        "compare models, set it to the smallest per-class count among them."))] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample, the folds and the permutations.")] = 0,
    folds: Annotated[int, typer.Option("--folds", min=2, help="Cross-validation folds (grouped by prompt / by item).")] = 5,
    resamples: Annotated[int, typer.Option("--resamples", min=20, help="Prompt-level relabellings of the harm answers for the cosine's null.")] = 1000,
    items: Annotated[Path | None, typer.Option("--items", help="Two-AI items file (default: the cached two_ai_items source).")] = None,
) -> None:
    """Linear probes on activations: a harm direction, a self-assessment direction, their angle, per layer."""
    from empersona.analysis.activations import default_out_dir, measure_probe, overwrite_problem, plan_probe
    from empersona.errors import EmpersonaError

    if pool not in ("mean", "last"):
        raise EmpersonaError(f"--pool {pool!r}: choose mean or last")
    if device not in ("auto", "cpu", "cuda"):
        raise EmpersonaError(f"--device {device!r}: choose auto, cpu or cuda")
    chosen_pool: Pool = "last" if pool == "last" else "mean"
    chosen_device: Device = "cpu" if device == "cpu" else "cuda" if device == "cuda" else "auto"
    plan = plan_probe(model, harm_log, items=items, layers=layers, pool=chosen_pool, device=chosen_device,
                      batch_size=batch_size, max_answers=max_answers or None, seed=seed, folds=folds, resamples=resamples)
    folder = out if out is not None else default_out_dir(harm_log, model)
    problem = None if overwrite else overwrite_problem(folder, plan.settings)
    if problem is not None:
        raise EmpersonaError(problem)
    writable_folder(folder)  # before the forward passes, whose results would be lost at the end
    with progress_bars() as start_bar:
        result = measure_probe(plan, start_bar)
    print_table(result)
    for path in write_outputs(result, folder):
        typer.echo(f"wrote {path}")
