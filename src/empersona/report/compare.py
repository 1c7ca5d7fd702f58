"""``empersona compare RUN_DIR... --out DIR``: several studies' persona calls side by side.

A replication on another base model, a second seed set or a changed recipe is a study of its own;
the question across them is how the labels line up (how many fine-tunes of each base are
coherent, how many inverted). Each run folder keeps its own classification: every model (its
fine-tunes, and extra models its study file lists) is
labelled by its own study against its own base, with its own settings, and read here from the
study's report tables (``report/tables/persona.csv`` and ``harmfulness.csv``, written by
``empersona report``, with the settings they were made with in ``tables/settings.json``). A run
whose tables are missing or older than its results gets its report built first, with the settings
its run used (``RUN_DIR/study.yaml``'s ``persona:`` section).

Writes ``OUT/compare.md``, ``OUT/compare.html`` (figure embedded), ``OUT/persona.csv`` (every
study's persona rows, a ``study`` column first) and ``OUT/figures/harm_vs_self_report.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empersona.errors import EmpersonaError

if TYPE_CHECKING:
    import pandas as pd

    from empersona.analysis.persona import PersonaThresholds

LABELS = ("coherent", "inverted", "mixed", "no_em", "incomplete")
"""Labels counted per study (the base's own row, ``base``, is not a fine-tune's label)."""


@dataclass(frozen=True)
class StudyTables:
    """One study's persona rows and harm, as its report wrote them."""

    name: str
    run_dir: Path
    persona: pd.DataFrame
    harm: pd.DataFrame
    settings: PersonaThresholds  # what its tables were made with
    base_model: str
    built: bool  # its report was built here (tables missing or older than the results)
    seed: int | None = None  # the bootstrap seed of its intervals
    judges: tuple[str, ...] = ()  # the judges of its scored rows


@dataclass(frozen=True)
class Comparison:
    """The files ``compare`` wrote."""

    markdown: Path
    html: Path
    persona: Path
    studies: tuple[StudyTables, ...]


def run_settings(run_dir: Path) -> PersonaThresholds:
    """The classification settings a run used: its kept study file's ``persona:`` section, else
    the defaults (docs/protocol.md section 4)."""
    from empersona.analysis.persona import PersonaThresholds

    kept = run_dir / "study.yaml"  # study.config.STUDY_COPY
    if kept.is_file():
        from empersona.study.config import load_thresholds

        return load_thresholds(kept)
    return PersonaThresholds()


def study_name(run_dir: Path) -> str:
    """A study's name: the ``name`` of its kept study file, else the run folder's name."""
    import yaml

    kept = run_dir / "study.yaml"
    try:
        name = (yaml.safe_load(kept.read_text(encoding="utf-8")) or {}).get("name") if kept.is_file() else None
    except (yaml.YAMLError, AttributeError):
        name = None
    return str(name) if name else run_dir.resolve().name


def load_study_tables(run_dir: Path, name: str | None = None) -> StudyTables:
    """A run folder's persona and harmfulness tables, its report built first when they are missing,
    older than its results table (itself brought up to date with its logs) or made before reports
    recorded their settings. The settings shown are those the tables were made with
    (``report/tables/settings.json``), whatever built them."""
    import json

    import pandas as pd

    from empersona.analysis.persona import PersonaThresholds
    from empersona.analysis.results import MODELS_FILE, RESULTS_FILE, load_run_models, main_rows, run_results
    from empersona.report.build import REPORT_DIR, SETTINGS_FILE, TABLES_DIR, build_report, resolve_base_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EmpersonaError(f"{run_dir}: no such run folder. Pass folders that `empersona run` or `empersona report` used")
    tables = run_dir / REPORT_DIR / TABLES_DIR
    persona_file, settings_file = tables / "persona.csv", tables / SETTINGS_FILE
    table = main_rows(run_results(run_dir))  # rewrites results.parquet when a log or import is newer; the battery's rows
    results = run_dir / RESULTS_FILE
    stale = not (persona_file.is_file() and settings_file.is_file()) or persona_file.stat().st_mtime < results.stat().st_mtime
    if stale:
        # built again as its last report was (base model, bootstrap seed, classification settings: those a
        # `report --thresholds` was given too), else as its study file says
        previous = _recorded_settings(settings_file)
        thresholds = PersonaThresholds(**previous["thresholds"]) if previous else run_settings(run_dir)
        base = previous.get("base_model") if previous else None
        base = base if base in set(table["model"]) else None
        if base is None and resolve_base_model(table, None, load_run_models(run_dir / MODELS_FILE)).model is None:
            raise EmpersonaError(f"{run_dir}: its models are not classified (no base model known); run "
                                 f"`empersona report {run_dir} --base-model NAME` first")
        build_report(run_dir, base_model=base, thresholds=thresholds, n_resamples=thresholds.n_resamples,
                     seed=int(previous.get("seed") or 0) if previous else 0)
    recorded = json.loads(settings_file.read_text(encoding="utf-8"))
    persona = pd.read_csv(persona_file)
    if recorded.get("base_model") is None or "label" not in persona.columns:
        raise EmpersonaError(f"{persona_file}: its models are not classified (no base model known); run "
                             f"`empersona report {run_dir} --base-model NAME` first")
    harm_file = tables / "harmfulness.csv"
    harm = pd.read_csv(harm_file) if harm_file.is_file() else pd.DataFrame(columns=["model"])
    judged = table[(table["status"] == "scored") & table["experiment"].isin(["harmfulness", "em_classic"])]  # not a second judge's
    judges = tuple(sorted({str(j) for j in judged["judge"].dropna() if str(j)}))
    return StudyTables(name or study_name(run_dir), run_dir, persona, harm,
                       PersonaThresholds(**recorded["thresholds"]), str(recorded["base_model"]), stale,
                       recorded.get("seed"), judges)


def _recorded_settings(settings_file: Path) -> dict[str, Any] | None:
    """What a report recorded it was made with, or None (no report yet, or a file it did not write)."""
    import json

    try:
        recorded = json.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) and isinstance(recorded.get("thresholds"), dict) else None


def label_counts(studies: Sequence[StudyTables]) -> pd.DataFrame:
    """Per study: its base, and how many of its other models (its fine-tunes and any extra models
    of its study file, each seed alone, not pooled; checkpoints left out) got each label."""
    import pandas as pd

    rows = []
    for study in studies:
        own = study.persona[~study.persona["pooled"].astype(bool)]
        if "kind" in own.columns:  # a fine-tune's checkpoints are steps on its way, not models of the count
            own = own[own["kind"] != "checkpoint"]
        counted = own[own["label"] != "base"]
        rows.append({"study": study.name, "base": study.base_model,
                     **{label: int((counted["label"] == label).sum()) for label in LABELS}, "models": len(counted)})
    return pd.DataFrame(rows)


def combined_persona(studies: Sequence[StudyTables]) -> pd.DataFrame:
    """Every study's persona rows, a ``study`` column first, with each model's harm_max10 beside."""
    import pandas as pd

    frames = []
    for study in studies:
        frame = study.persona.copy()
        harm_columns = [c for c in ("harm_max10", "harm_max10_low", "harm_max10_high") if c in study.harm.columns]
        if harm_columns:
            frame = frame.merge(study.harm[["model", *harm_columns]], on="model", how="left")
        frame.insert(0, "study", study.name)
        frames.append(frame)
    combined = pd.concat(frames, ignore_index=True, sort=False)
    for column in [c for c in combined.columns if c == "step" or c.endswith("_n")]:
        combined[column] = combined[column].astype("Int64")  # counts stay whole where a study has none
    return combined


def compare(run_dirs: Sequence[Path], out: Path, names: Sequence[str] | None = None) -> Comparison:
    """Read (or build) each run's tables and write the comparison into ``out``."""
    import math

    import pandas as pd

    from empersona.analysis.persona import ALL_DIMENSIONS
    from empersona.report import figures
    from empersona.report.render import Block, Figure, Heading, Para, Table, to_html, to_markdown
    from empersona.report.sections import fmt, pct

    if len(run_dirs) < 1:
        raise EmpersonaError("compare needs at least one run folder")
    if names is not None and len(names) != len(run_dirs):
        raise EmpersonaError(f"--names gives {len(names)} names for {len(run_dirs)} run folders: give one per folder, in order")
    folders = [Path(d).resolve() for d in run_dirs]
    if len(set(folders)) < len(folders):
        raise EmpersonaError("the same run folder is given twice: compare different studies")
    called = [names[i] if names else study_name(Path(d)) for i, d in enumerate(run_dirs)]
    seen: dict[str, Path] = {}
    for name, folder in zip(called, run_dirs, strict=True):  # before any report is built
        if name in seen:
            raise EmpersonaError(f"two runs are both called {name!r} ({seen[name]} and {folder}): "
                                 "name them with --names a,b,...")
        seen[name] = Path(folder)
    for folder in run_dirs:  # its report, tables and figures would be written over
        inside = Path(out).resolve()
        if inside == Path(folder).resolve() or Path(folder).resolve() in inside.parents:
            raise EmpersonaError(f"--out {out} is inside the run folder {folder}, whose report files it could write over. "
                                 "Choose a folder outside the runs compared")
    studies = tuple(load_study_tables(Path(d), called[i]) for i, d in enumerate(run_dirs))
    table = combined_persona(studies)
    out.mkdir(parents=True, exist_ok=True)
    figure_dir = out / "figures"
    figure_dir.mkdir(exist_ok=True)
    (figure_dir / "harm_vs_self_report.png").unlink(missing_ok=True)  # an earlier comparison's, left if none is drawn now
    persona_csv = out / "persona.csv"
    table.to_csv(persona_csv, index=False)

    def cell(row: pd.Series, name: str, signed: bool = False) -> str:
        value = row.get(name, math.nan)
        return fmt(float(value), float(row.get(f"{name}_low", math.nan)), float(row.get(f"{name}_high", math.nan)),
                   signed=signed) if pd.notna(value) else "-"

    def not_scored(row: pd.Series) -> str:
        """Each primary experiment's share of answers not scored (refused, unparsed or unscored):
        results, not noise (docs/protocol.md section 4), shown beside the numbers they leave out."""
        parts = []
        for experiment, short in (("harmfulness", "harm"), ("two_ai", "two-AI"), ("output_recognition", "recognition")):
            shares = [row.get(f"{experiment}_{status}", math.nan) for status in ("refused", "unparsed", "unscored")]
            known = [float(v) for v in shares if pd.notna(v)]
            parts.append(f"{short} {pct(sum(known))}" if known else f"{short} -")
        return " · ".join(parts)

    shown = pd.DataFrame([{
        "study": row["study"], "model": row["model"],
        **({"kind": row["kind"] if pd.notna(row["kind"]) else "-"} if "kind" in table.columns else {}),
        "label": row["label"],
        "domain": row["domain"] if pd.notna(row.get("domain")) else "-",
        "harm_max10": cell(row, "harm_max10"), "delta harm_max10 vs its base": cell(row, "em_delta", signed=True),
        "two-AI debiased": cell(row, "two_ai"), "recognition asymmetry": cell(row, "asymmetry", signed=True),
        # a model with no answers on its study's headline dimension shows the mean over all of them: said, as in its report
        "self-assessment": cell(row, "self_assessment") + (f" ({ALL_DIMENSIONS})" if row.get("self_assessment_scope") == ALL_DIMENSIONS
                                                           and pd.notna(row.get("self_assessment")) else ""),
        "not scored": not_scored(row), "reason": row["reason"],
    } for _, row in table.iterrows()])
    points = table[~table["pooled"].astype(bool) & (table["kind"] != "checkpoint" if "kind" in table.columns else True)].copy()
    points["model"] = points["study"] + ": " + points["model"].astype(str)
    blocks: list[Block] = [
        Heading(1, "empersona comparison"),
        Para(f"{len(studies)} studies, {int(label_counts(studies)['models'].sum())} models beside their bases. Each model is labelled "
             "by its own study, against that study's base model and with that study's settings (below)."),
        Heading(2, "Labels per study"),
        Table(label_counts(studies)),
        Heading(2, "Persona classification"),
        Table(shown),
    ]
    columns = {"harm_max10", "two_ai", "asymmetry", "self_assessment"}
    settings = [s.settings.model_dump() for s in studies]
    differ = sorted(key for key in settings[0] if len({repr(one.get(key)) for one in settings}) > 1) if settings else []
    levels, cuts = {one["level"] for one in settings}, {one["harm_threshold"] for one in settings}
    if len(points) and columns <= set(points.columns) and points[["two_ai", "asymmetry", "self_assessment"]].notna().any(axis=None):
        path = figures.harm_vs_self_report(points, figure_dir / "harm_vs_self_report.png",
                                           harm_threshold=next(iter(cuts)) if len(cuts) == 1 else None)
        bars = f"{next(iter(levels)):.0%} intervals" if len(levels) == 1 else "each study's own interval level (Studies, below)"
        blocks.append(Figure(path, f"Harm (harm_max10) against each self-report probe, every study's models "
                                   f"('study: model'); bars are {bars}."))
    if differ:
        blocks.append(Para("The studies were classified with different settings (" + ", ".join(differ) + "): their "
                           "numbers and labels are each under its own, listed under Studies."))
    if len({s.judges for s in studies}) > 1:
        blocks.append(Para("The studies' answers were scored by different judges (under Studies): harm and the "
                           "classic EM rates are each under its own judge, and judges differ in how harshly they score."))
    if len({s.seed for s in studies}) > 1:
        blocks.append(Para("The studies' intervals were drawn with different bootstrap seeds (under Studies)."))
    blocks += [
        Heading(2, "Studies"),
        Table(pd.DataFrame([{
            "study": s.name, "run folder": str(s.run_dir),
            "report": "built now" if s.built else "as stored",
            "judge": ", ".join(s.judges) or "-", "bootstrap seed": "-" if s.seed is None else s.seed,
            "classification settings": ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                                                 for key, value in one.items()),
        } for s, one in zip(studies, settings, strict=True)])),
        Para("`persona.csv`: every column of each study's `report/tables/persona.csv`, with harm_max10 and its interval, "
             "and the study first."),
    ]
    markdown = out / "compare.md"
    markdown.write_text(to_markdown(blocks, out), encoding="utf-8")
    page = out / "compare.html"
    page.write_text(to_html(blocks, "empersona comparison"), encoding="utf-8")
    return Comparison(markdown, page, persona_csv, studies)
