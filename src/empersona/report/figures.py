"""The report's figures, drawn with matplotlib from the summary tables `sections.py` computes.

Each function takes a summary frame (estimates with ``<name>_low``/``<name>_high`` interval
columns) and writes one PNG. Figures use matplotlib's object API with the Agg canvas (no pyplot
state, no display) and fixed PNG metadata, so the same summaries give the same bytes. Intervals
are drawn as error bars; chance or no-effect lines are dashed grey; model points are coloured by
persona label where a figure shows labels.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LABEL_COLOURS: dict[str, str] = {
    "coherent": "#c0392b",
    "inverted": "#2471a3",
    "mixed": "#8e44ad",
    "no_em": "#7f8c8d",
    "incomplete": "#b7950b",
    "base": "#111111",
    "unclassified": "#555555",
}
LABEL_MARKERS: dict[str, str] = {  # a shape per label, so the labels survive greyscale printing
    "coherent": "^",
    "inverted": "v",
    "mixed": "D",
    "no_em": "o",
    "incomplete": "X",
    "base": "s",
    "unclassified": "o",
}
BUCKETS: tuple[str, ...] = ("low", "moderate", "high")
DPI = 110


class Probe(NamedTuple):
    """One self-report probe as plotted: summary column, axis title, y range, anchor line."""

    column: str
    title: str
    limits: tuple[float, float]
    anchor: float | None
    anchor_label: str


PROBES: tuple[Probe, ...] = (
    Probe("two_ai", "Two-AI: misaligned pick rate (debiased)", (-0.05, 1.1), 0.5, "chance 0.5"),
    Probe("asymmetry", "Output recognition: P(own|high) - P(own|low)", (-1.1, 1.2), 0.0, "no asymmetry"),
    Probe("self_assessment", "Self-assessment (1 = misaligned)", (-0.05, 1.1), None, ""),
)


def short_name(name: str, width: int = 26) -> str:
    """A model name that fits an axis label: long paths keep their last part, then the middle goes.
    A comparison's ``<study>: <model>`` keeps its study whole (it is what tells the points apart)."""
    study, sep, model = name.partition(": ")
    if sep and "/" not in study:
        return f"{study}: {short_name(model, max(width - len(study) - 2, 16))}"
    if len(name) > width and "/" in name:
        name = name.rstrip("/").rsplit("/", 1)[-1]
    return name if len(name) <= width else name[: width // 2 - 1] + "..." + name[-(width // 2 - 2):]


def short_names(names: Sequence[object], width: int = 26) -> dict[str, str]:
    """`short_name` of each name, unique: names whose short forms clash (two model strings with
    the same folder name) keep their whole name, so no legend entry or label stands for two."""
    out = {str(name): short_name(str(name), width) for name in names}
    shown = Counter(out.values())
    return {name: short if shown[short] == 1 else name for name, short in out.items()}


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    """The PNG the report shows, and the same figure as a vector PDF beside it (for a paper);
    no creation dates in either, so a rebuild writes the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    fig.savefig(path.with_suffix(".pdf"), format="pdf", metadata={"Creator": None, "Producer": None, "CreationDate": None})
    return path


def _finite(*values: float) -> bool:
    return all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values)


def _error(estimate: float, low: float, high: float) -> list[list[float]]:
    """Error-bar lengths below and above the estimate (0 where the interval is unknown)."""
    if not _finite(low, high):
        return [[0.0], [0.0]]
    return [[max(estimate - low, 0.0)], [max(high - estimate, 0.0)]]


def _anchor(ax: Axes, value: float | None, label: str, vertical: bool = False) -> None:
    if value is None:
        return
    line = ax.axvline if vertical else ax.axhline
    line(value, color="#888888", linestyle="--", linewidth=1.0, zorder=0, label=label)


def _empty(ax: Axes, text: str) -> None:
    # on a white box: an anchor line through the panel's middle would strike the text through
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777", fontsize=10,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 2.0}, zorder=5)


class PointLabel(NamedTuple):
    """A name to write beside a plotted point (data coordinates)."""

    x: float
    y: float
    text: str
    colour: str


LABEL_FONT = 8.0


def label_offsets(points: Sequence[PointLabel], size: tuple[float, float], xlim: tuple[float, float],
                  ylim: tuple[float, float], fontsize: float = LABEL_FONT) -> list[tuple[float, float]]:
    """Where each point's name goes, as the offset in points of the text's lower-left corner from
    the point: the first of right/left, above/below, then further up or down, whose box stays in
    the axes (``size``: its width and height in points) and overlaps neither a name placed before
    nor another point's marker. Points are placed top to bottom; a name with no free place takes
    its first place inside the axes. Text widths are estimated (0.6 em a character)."""
    def at(x: float, y: float) -> tuple[float, float]:
        return ((x - xlim[0]) / (xlim[1] - xlim[0]) * size[0], (y - ylim[0]) / (ylim[1] - ylim[0]) * size[1])

    marks = [at(p.x, p.y) for p in points]
    height = fontsize * 1.3
    placed: list[tuple[float, float, float, float]] = []
    offsets: list[tuple[float, float]] = [(6.0, 3.0)] * len(points)
    for i in sorted(range(len(points)), key=lambda k: (-marks[k][1], marks[k][0])):
        px, py = marks[i]
        width = len(points[i].text) * fontsize * 0.6
        rows = [3.0, -3.0 - height] + [v for k in range(1, 9) for v in (3.0 + k * height, -3.0 - (k + 1) * height)]
        candidates = [(dx, dy) for dy in rows for dx in (6.0, -6.0 - width)]

        def inside(dx: float, dy: float, px: float = px, py: float = py, width: float = width) -> bool:
            return 0 <= px + dx and px + dx + width <= size[0] and 0 <= py + dy and py + dy + height <= size[1]

        def free(dx: float, dy: float, px: float = px, py: float = py, width: float = width, i: int = i) -> bool:
            x0, y0, x1, y1 = px + dx, py + dy, px + dx + width, py + dy + height
            if any(x0 < bx1 and bx0 < x1 and y0 < by1 and by0 < y1 for bx0, by0, bx1, by1 in placed):
                return False
            return not any(j != i and x0 - 4 < mx < x1 + 4 and y0 - 4 < my < y1 + 4 for j, (mx, my) in enumerate(marks))

        in_axes = [c for c in candidates if inside(*c)] or candidates
        dx, dy = next((c for c in in_axes if free(*c)), in_axes[0])
        placed.append((px + dx, py + dy, px + dx + width, py + dy + height))
        offsets[i] = (dx, dy)
    return offsets


def _label_points(ax: Axes, points: Sequence[PointLabel]) -> None:
    """Write each point's name beside it where it overlaps no other (`label_offsets`); a name moved
    away from its point gets a thin line to it."""
    if not points:
        return
    box = ax.get_position()
    width, height = ax.figure.get_size_inches()
    size = (box.width * width * 72.0, box.height * height * 72.0)
    offsets = label_offsets(points, size, ax.get_xlim(), ax.get_ylim())
    for point, (dx, dy) in zip(points, offsets, strict=True):
        far = dy > 3.0 + LABEL_FONT or dy < -3.0 - 2.3 * LABEL_FONT
        note = ax.annotate(point.text, (point.x, point.y), xytext=(dx, dy), textcoords="offset points", ha="left",
                           va="bottom", fontsize=LABEL_FONT, color=point.colour,
                           arrowprops={"arrowstyle": "-", "color": point.colour, "lw": 0.5, "shrinkA": 0, "shrinkB": 4}
                           if far else None)
        note.set_in_layout(False)  # placed for the laid-out axes: the layout must not move them again


def _label_legend(fig: Figure, labels: Sequence[str]) -> None:
    from matplotlib.lines import Line2D

    shown = [lab for lab in LABEL_COLOURS if lab in set(labels)]
    handles = [Line2D([], [], marker=LABEL_MARKERS[lab], linestyle="", color=LABEL_COLOURS[lab], label=lab) for lab in shown]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), title="persona label", frameon=False)


def harm_vs_self_report(summary: pd.DataFrame, path: Path, harm_threshold: float | None = 3.0) -> Path:
    """Harm (x: harm_max10) against each self-report probe (y), one panel per probe, with intervals.
    ``harm_threshold``: the score harm_max10 counts above (None: the points' studies differ in it)."""
    fig = _figure(14.0, 4.8)
    axes = fig.subplots(1, len(PROBES), sharex=True)
    plotted: set[str] = set()
    labels: list[list[PointLabel]] = []
    names = short_names(list(summary["model"]), 18)
    for ax, probe in zip(axes, PROBES, strict=True):
        rows = summary[summary[probe.column].notna() & summary["harm_max10"].notna()]
        plotted |= set(rows["model"])
        _anchor(ax, probe.anchor, probe.anchor_label)
        for _, row in rows.iterrows():
            colour = LABEL_COLOURS.get(row["label"], "#555555")
            ax.errorbar(
                row["harm_max10"], row[probe.column],
                xerr=_error(row["harm_max10"], row["harm_max10_low"], row["harm_max10_high"]),
                yerr=_error(row[probe.column], row[f"{probe.column}_low"], row[f"{probe.column}_high"]),
                fmt=LABEL_MARKERS.get(row["label"], "o"), color=colour, ecolor=colour, elinewidth=1.2, capsize=3,
                markersize=7, alpha=0.9,
            )
        if rows.empty:
            _empty(ax, "no data for this probe")
        ax.set_title(probe.title, fontsize=10)
        ax.set_xlim(-0.02, 1.05)
        ax.set_ylim(*probe.limits)
        ax.grid(alpha=0.25)
        labels.append([PointLabel(float(r["harm_max10"]), float(r[probe.column]), names[str(r["model"])],
                                  LABEL_COLOURS.get(r["label"], "#555555")) for _, r in rows.iterrows()])
    axes[0].set_ylabel("self-report probe (interval)")
    # one x label under the middle panel: three side by side ran into each other
    above = f"> {harm_threshold:g}" if harm_threshold is not None else "above its study's harm_threshold"
    axes[len(axes) // 2].set_xlabel(f"harm_max10 (share of prompts with a sample scored {above})")
    fig.suptitle("What the models do (harm) against what they say about themselves", fontsize=12)
    _label_legend(fig, list(summary.loc[summary["model"].isin(plotted), "label"]))
    unplotted = [str(m) for m in summary["model"] if m not in plotted]
    no_harm = {str(m) for m in summary.loc[summary["harm_max10"].isna(), "model"]}  # what keeps them out, said
    missing = "; ".join(f"{why}: " + ", ".join(names[m] for m in unplotted if (m in no_harm) == harm)
                        for why, harm in (("no harm_max10", True), ("no probe data", False))
                        if any((m in no_harm) == harm for m in unplotted))
    if missing:
        fig.text(0.995, 0.005, missing, ha="right", va="bottom", fontsize=8, color="#777777")
    fig.draw_without_rendering()  # lay the figure out first: names are placed in the axes' final size
    for ax, points in zip(axes, labels, strict=True):
        _label_points(ax, points)
    return _save(fig, path)


def probe_forest(summary: pd.DataFrame, path: Path) -> Path:
    """Forest plot: every probe's estimate and interval per model, anchors as dashed lines."""
    models = list(summary["model"])
    fig = _figure(14.0, 1.4 + 0.42 * max(len(models), 2))
    axes = fig.subplots(1, len(PROBES), sharey=True)
    positions = list(range(len(models)))[::-1]
    for ax, probe in zip(axes, PROBES, strict=True):
        _anchor(ax, probe.anchor, probe.anchor_label, vertical=True)
        drawn = 0
        for y, (_, row) in zip(positions, summary.iterrows(), strict=True):
            value = row[probe.column]
            if not _finite(value):
                ax.text(probe.limits[0] + 0.02 * (probe.limits[1] - probe.limits[0]), y, "no scored data",
                        va="center", fontsize=8, color="#999999")
                continue
            colour = LABEL_COLOURS.get(row["label"], "#555555")
            ax.errorbar(value, y, xerr=_error(value, row[f"{probe.column}_low"], row[f"{probe.column}_high"]),
                        fmt=LABEL_MARKERS.get(row["label"], "o"), color=colour, ecolor=colour, capsize=3, markersize=6,
                        elinewidth=1.4)
            drawn += 1
        ax.set_title(probe.title, fontsize=10)
        ax.set_xlim(*probe.limits)
        ax.grid(axis="x", alpha=0.25)
        ax.set_xlabel("estimate (interval)")
    axes[0].set_yticks(positions)
    names = short_names(models)
    axes[0].set_yticklabels([f"{names[str(m)]}  [{lab}]" for m, lab in zip(models, summary["label"], strict=True)], fontsize=9)
    axes[0].set_ylim(-0.7, len(models) - 0.3)
    fig.suptitle("Self-report probes per model", fontsize=12)
    _label_legend(fig, list(summary["label"]))
    return _save(fig, path)


SHIFT_PANELS: dict[str, str] = {
    "two_ai": "Two-AI: misaligned pick rate",
    "output_recognition": "Output recognition: asymmetry",
    "self_assessment": "Self-assessment (1 = misaligned)",
    "score_prediction": "Score prediction: signed error",
}
VARIANT_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X")


def variant_shifts(shifts: pd.DataFrame, path: Path) -> Path:
    """Forest of each probe's shift under each study variant (variant - battery; a contrast of two
    variants is labelled "<variant> vs <reference>" in ``variant``), one panel per probe, models on
    the y axis and one marker per variant, with intervals; dashed line at 0."""
    models = sorted(shifts["model"].astype(str).unique())
    variants = sorted(shifts["variant"].astype(str).unique())
    colours = _model_colours(variants)
    # the persona table's three probes always (an empty one says so); score prediction where a variant asked it
    panels = {probe: title for probe, title in SHIFT_PANELS.items()
              if probe != "score_prediction" or (shifts["probe"] == probe).any()}
    fig = _figure(4.0 * len(panels) + 2.0, 1.6 + 0.45 * max(len(models), 2) * max(1.0, len(variants) / 2))
    axes = fig.subplots(1, len(panels), sharey=True)
    step = 0.6 / max(len(variants), 1)
    for ax, (probe, title) in zip(axes, panels.items(), strict=True):
        _anchor(ax, 0.0, "no shift", vertical=True)
        part = shifts[shifts["probe"] == probe]
        if not part["shift"].map(_finite).any():
            _empty(ax, "no shift to show")
        for i, variant in enumerate(variants):
            rows = part[(part["variant"] == variant) & part["shift"].map(_finite)]
            if rows.empty:
                continue
            ys = [len(models) - 1 - models.index(str(m)) + 0.3 - step * (i + 0.5) for m in rows["model"]]
            errors = [_error(r["shift"], r["shift_low"], r["shift_high"]) for _, r in rows.iterrows()]
            ax.errorbar(list(rows["shift"]), ys, xerr=[[e[0][0] for e in errors], [e[1][0] for e in errors]],
                        fmt=VARIANT_MARKERS[i % len(VARIANT_MARKERS)], linestyle="", color=colours[variant], capsize=3,
                        markersize=6, label=variant)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.25)
        ax.set_xlabel("shift (interval)")
    axes[0].set_yticks(range(len(models)))
    names = short_names(models)
    axes[0].set_yticklabels([names[m] for m in reversed(models)], fontsize=9)
    axes[0].set_ylim(-0.7, len(models) - 0.3)
    legend: dict[str, Artist] = {}  # every panel's variants once: a variant may have asked one probe only
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            if name in variants:
                legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside right center", fontsize=8, frameon=False, title="variant")
    fig.suptitle("How each self-report probe moves under the study's variants", fontsize=12)
    return _save(fig, path)


def _model_colours(models: Sequence[str]) -> dict[str, tuple[float, ...]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(models) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(models)}


def _bucket_panels(summary: pd.DataFrame, panel_column: str, value: str, *, title: str, xlabel: str, ylabel: str,
                   panel_title: str, anchor: tuple[float, str], connect: bool,
                   decorate: Callable[[Axes, pd.DataFrame, Callable[[str, int], float], dict[str, tuple[float, ...]]], None]
                   | None = None) -> Figure:
    """One panel per value of ``panel_column``; per model, ``value`` with its interval at each bucket."""
    panels = list(dict.fromkeys(summary[panel_column]))
    models = list(dict.fromkeys(summary["model"]))
    colours = _model_colours(models)
    fig = _figure(max(6.5, 5.3 * len(panels)), 4.6)
    axes = fig.subplots(1, max(len(panels), 1), sharey=True, squeeze=False)[0]
    width = 0.66 / max(len(models), 1)
    names = short_names(models)
    for ax, panel in zip(axes, panels, strict=False):
        _anchor(ax, *anchor)
        part = summary[summary[panel_column] == panel]
        if decorate is not None:
            decorate(ax, part, lambda model, b: b - 0.33 + width * (models.index(model) + 0.5), colours)
        if not any(_finite(v) for v in part[value]):
            _empty(ax, "no scored answers in this panel")
        for i, model in enumerate(models):
            rows = part[part["model"] == model].set_index("bucket")
            kept = [(b, rows.loc[bucket]) for b, bucket in enumerate(BUCKETS) if bucket in rows.index and _finite(rows.loc[bucket, value])]
            if not kept:
                continue
            errors = [_error(row[value], row[f"{value}_low"], row[f"{value}_high"]) for _, row in kept]
            ax.errorbar([b - 0.33 + width * (i + 0.5) for b, _ in kept], [row[value] for _, row in kept],
                        yerr=[[e[0][0] for e in errors], [e[1][0] for e in errors]], fmt="o-" if connect else "o",
                        color=colours[model], capsize=3, markersize=6, linewidth=1.0, label=names[model])
        ax.set_xticks(range(len(BUCKETS)))
        ax.set_xticklabels([f"{b}\n(judge {r})" for b, r in zip(BUCKETS, ("1-2", "3", "4-5"), strict=True)])
        ax.set_xlim(-0.5, len(BUCKETS) - 0.5)
        ax.set_title(f"{panel_title}: {panel}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", alpha=0.25)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=12)
    legend: dict[str, object] = {}  # every panel's entries once: a model may have data in one panel only
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside right center", fontsize=8, frameon=False)
    return fig


def recognition_by_bucket(summary: pd.DataFrame, path: Path) -> Path:
    """P(own response chosen) by the harm bucket of the own response, per model, one panel per foil."""
    fig = _bucket_panels(summary, "foil", "p_own", title="Output recognition by harm bucket",
                         xlabel="harm bucket of the model's own response", ylabel="P(own response chosen), interval",
                         panel_title="foil", anchor=(0.5, "chance 0.5"), connect=True)
    for ax in fig.axes:
        ax.set_ylim(-0.02, 1.02)
    return _save(fig, path)


def _baselines(ax: Axes, part: pd.DataFrame, at: Callable[[str, int], float], colours: dict[str, tuple[float, ...]]) -> None:
    """Each model's own two score-prediction baselines, beside its point in its colour: a bar for
    the noisy unbiased predictor, a cross for the constant one (pooled lines would mix models)."""
    for column, marker, text in (("noisy_baseline", "_", "the model's noisy unbiased predictor"),
                                 ("constant_baseline", "x", "the model's constant predictor")):
        size = 14 if marker == "_" else 6
        for _, row in part.iterrows():
            if row["bucket"] in BUCKETS and _finite(row[column]):
                ax.plot([at(row["model"], BUCKETS.index(row["bucket"]))], [row[column]], marker, color=colours[row["model"]],
                        markersize=size, markeredgewidth=1.6, linestyle="")
        ax.plot([], [], marker, color="#555555", markersize=size, markeredgewidth=1.6, linestyle="", label=text)  # the legend's


def prediction_by_bucket(summary: pd.DataFrame, path: Path) -> Path:
    """Mean signed error (predicted - actual) by actual bucket, per model, against the two baselines."""
    fig = _bucket_panels(summary, "condition", "mean_error",
                         title="Score prediction by bucket, against baselines without self-knowledge",
                         xlabel="bucket of the actual judge score", ylabel="mean signed error, predicted - actual (interval)",
                         panel_title="condition", anchor=(0.0, "no error"), connect=False, decorate=_baselines)
    return _save(fig, path)


def em_rates(summary: pd.DataFrame, path: Path) -> Path:
    """Classic EM: misaligned rate and coherent rate per model, with intervals."""
    models = list(summary["model"])
    fig = _figure(11.0, 1.5 + 0.42 * max(len(models), 2))
    axes = fig.subplots(1, 2, sharey=True)
    positions = list(range(len(models)))[::-1]
    panels = (("misaligned_rate", "misaligned rate\n(alignment < 30 and coherence > 50)", "#c0392b"),
              ("coherent_rate", "coherent rate (coherence > 50)", "#2471a3"))
    for ax, (column, title, colour) in zip(axes, panels, strict=True):
        for y, (_, row) in zip(positions, summary.iterrows(), strict=True):
            if _finite(row[column]):
                ax.errorbar(row[column], y, xerr=_error(row[column], row[f"{column}_low"], row[f"{column}_high"]),
                            fmt="o", color=colour, capsize=3, markersize=6)
            else:
                ax.text(0.02, y, "no judged answers", va="center", fontsize=8, color="#999999")
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("share of judged answers (interval)")
        ax.grid(axis="x", alpha=0.25)
    axes[0].set_yticks(positions)
    names = short_names(models)
    axes[0].set_yticklabels([names[str(m)] for m in models], fontsize=9)
    axes[0].set_ylim(-0.7, len(models) - 0.3)
    fig.suptitle("Classic EM questions", fontsize=12)
    return _save(fig, path)


TRAJECTORY_PANELS: tuple[Probe, ...] = (
    Probe("em_delta", "delta harm_max10 vs the base", (-1.05, 1.05), 0.0, "no change"),
    Probe("two_ai", "Two-AI: misaligned pick rate (debiased)", (-0.05, 1.1), 0.5, "chance 0.5"),
    Probe("asymmetry", "Output recognition: P(own|high) - P(own|low)", (-1.1, 1.2), 0.0, "no asymmetry"),
)


def trajectory(summary: pd.DataFrame, path: Path) -> Path:
    """Each fine-tune over its training steps (its kept checkpoints, then the final adapter): harm
    against the base and the two primary probes, with intervals; markers show each step's label."""
    fig = _figure(14.0, 4.6)
    axes = fig.subplots(1, len(TRAJECTORY_PANELS), sharex=True)
    runs = sorted(summary["fine_tune"].unique())
    colours = _model_colours(runs)
    shown = short_names(runs)
    from matplotlib.ticker import MaxNLocator

    for ax, panel in zip(axes, TRAJECTORY_PANELS, strict=True):
        _anchor(ax, panel.anchor, panel.anchor_label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if summary[panel.column].isna().all():
            _empty(ax, "no data for this probe")
        for run in runs:
            part = summary[(summary["fine_tune"] == run) & summary[panel.column].notna()].sort_values("step")
            if part.empty:
                continue
            ax.plot(part["step"], part[panel.column], color=colours[run], linewidth=1.2, alpha=0.8, label=shown[run])
            for _, row in part.iterrows():
                ax.errorbar(row["step"], row[panel.column],
                            yerr=_error(row[panel.column], row[f"{panel.column}_low"], row[f"{panel.column}_high"]),
                            fmt=LABEL_MARKERS.get(row["label"], "o"), color=colours[run], ecolor=colours[run],
                            capsize=3, markersize=6)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylim(*panel.limits)
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("estimate (interval)")
    axes[len(axes) // 2].set_xlabel("training step (optimizer steps)")
    anchors = {panel.anchor_label for panel in TRAJECTORY_PANELS}
    handles, names = [], []
    for handle, name in zip(*axes[0].get_legend_handles_labels(), strict=True):
        if name not in anchors:  # the fine-tunes only: each panel names its own anchor line
            handles.append(handle)
            names.append(name)
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize=8, frameon=False, title="fine-tune")
    _label_legend(fig, list(summary["label"].dropna()))
    fig.suptitle("How the persona emerges over training (step 0: the base, or the adapter a sequential fine-tune "
                 "continued; markers: each step's label)", fontsize=12)
    return _save(fig, path)


def judge_confusion(counts: pd.DataFrame, path: Path) -> Path:
    """The two judges' 1-5 scores of the same answers as a count matrix (rows: the first judge,
    columns: the second), every re-scored model pooled; the diagonal is agreement."""
    import numpy as np

    matrix = counts.to_numpy(dtype=float)
    fig = _figure(4.8, 4.2)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=max(float(matrix.max()), 1.0))
    peak = max(float(matrix.max()), 1.0)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=9,
                color="white" if value > 0.6 * peak else "#222222")
    ax.set_xticks(range(len(counts.columns)), [str(c) for c in counts.columns])
    ax.set_yticks(range(len(counts.index)), [str(i) for i in counts.index])
    ax.set_xlabel("second judge's score")
    ax.set_ylabel("first judge's score")
    ax.set_title("Harm scores of the same answers", fontsize=11)
    fig.colorbar(image, ax=ax, shrink=0.8, label="answers")
    return _save(fig, path)


def probe_cosines(layers: pd.DataFrame, path: Path) -> Path:
    """Per model, the cosine between its harm and self directions at each layer, its null's 95%
    level dashed in the same colour, and filled markers where the cosine lies beyond it (p < 0.05)."""
    models = sorted(layers["model"].unique())
    colours = _model_colours(models)
    names = short_names(models)
    fig = _figure(8.0, 4.2)
    ax = fig.subplots()
    for model in models:
        part = layers[layers["model"] == model].sort_values("layer")
        colour = colours[model]
        ax.plot(part["layer"], part["cosine"], color=colour, linewidth=1.5, label=names[str(model)])
        ax.plot(part["layer"], part["cos_null95"], color=colour, linewidth=0.9, linestyle="--")
        ax.plot(part["layer"], -part["cos_null95"], color=colour, linewidth=0.9, linestyle="--")
        beyond = part[part["cos_p"] < 0.05]
        ax.scatter(beyond["layer"], beyond["cosine"], color=colour, s=18, zorder=3)
    _anchor(ax, 0.0, "")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("cosine(harm direction, self direction)")
    ax.set_title("Harm and self-description directions per layer", fontsize=11)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.25)
    return _save(fig, path)
