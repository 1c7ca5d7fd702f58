"""Inspect logs -> one tidy results table (CONTRACT.md), saved as Parquet beside the logs.

One row per (model, experiment, item_id, sample, condition, variant): the sample's primary score (its
``value`` and ``status``), the experiment's own fields, and the run's metadata. Every experiment
maps onto the table here, in `experiment_fields` and `PRIMARY_SCORERS`; an experiment that is not
present in a run simply contributes no rows.

Run metadata per log: the model string (``log.eval.model``), the experiment (our tasks put
``experiment`` in their metadata; else the task name), the judge (``metadata["judge"]``, which
``empersona eval`` passes to inspect's eval and inspect merges into ``log.eval.metadata``; else
the ``grader`` model role), the system-prompt policy and the sampling seed (task metadata), the
package versions (``log.eval.packages``, as JSON), the study variant (``metadata["variant"]``: a
self-report experiment asked again under a study's ``variants:``; "" for the battery itself,
the rows every analysis but the variants' own reads, `main_rows`). What a model *is* comes from, in order:

1. ``RUN_DIR/models.yaml`` (optional; see `RunModels`): model string -> name, base model,
   adapter, domain, fine-tuning seed; it can also name the ``base`` (reference) model;
2. for ``hf/<dir>`` model strings, the adapter folder's ``empersona.json`` written by training
   (base model, domain, seed); the display name is then ``<domain>-s<seed>``;
3. the log's own ``model_name`` (and ``domain``, ``ft_seed``), which the study runner records;
4. otherwise the model string itself is the display name.

In a study's run folder (`run_results`), a log written before the folder was moved or copied
names its model by the old path (``recorded_run_folder``); its model string is read at the new
place, so its rows and those of logs written since are of one model.

Two model strings that would share a display name keep their model strings instead. When the
same (model, experiment, item, sample, condition, variant) appears in several logs (a resumed or repeated
run), the row of the most recently created log is kept; where the newest log of a unit was run
with other settings (judge, system prompt, task arguments), older logs' rows of that unit are
left out and the logs listed (`deduplicate`).
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from empersona.errors import EmpersonaError, located

if TYPE_CHECKING:
    import pandas as pd
    from inspect_ai.log import EvalLog, EvalSample
    from inspect_ai.scorer import Score

Status = Literal["scored", "unscored", "refused", "unparsed"]
STATUSES: tuple[Status, ...] = ("scored", "unscored", "refused", "unparsed")

KEY_COLUMNS: tuple[str, ...] = ("model", "experiment", "item_id", "sample", "condition", "variant")
MODEL_COLUMNS: tuple[str, ...] = ("model_string", "base_model", "adapter", "domain", "seed", "judge", "system_prompt_policy")
EXPERIMENT_COLUMNS: tuple[str, ...] = (
    "bucket", "picked_position", "p_a", "theme", "format", "dimension", "predicted", "actual",
    "aligned", "coherent", "stored_aligned", "stored_coherent",
)
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "method", "reason", "answer", "raw", "source", "log_file", "eval_id", "created", "eval_seed", "task_args", "versions",
)
TIDY_COLUMNS: tuple[str, ...] = (
    "model", *MODEL_COLUMNS, "experiment", "item_id", "sample", "condition", "variant", "status", "value",
    *EXPERIMENT_COLUMNS, *PROVENANCE_COLUMNS,
)
FLOAT_COLUMNS: frozenset[str] = frozenset({"value", "p_a", "predicted", "actual", "aligned", "coherent", "stored_aligned", "stored_coherent"})
INT_COLUMNS: frozenset[str] = frozenset({"sample"})
NULLABLE_INT_COLUMNS: frozenset[str] = frozenset({"seed", "eval_seed"})
REQUIRED_COLUMNS: tuple[str, ...] = ("model", "experiment", "item_id", "sample", "condition", "status", "value")
"""A stored or imported table without ``variant`` is of the battery alone ("" throughout)."""

PRIMARY_SCORERS: dict[str, str] = {
    "harmfulness": "harm",
    "em_classic": "em_judge",
    "two_ai": "misaligned_pick",
    "self_assessment": "self_rating",
    "output_recognition": "own_chosen",
    "score_prediction": "prediction",
    "second_judge": "harm",  # a harmfulness log re-scored by a second judge (evals.second_judge)
}
"""The score that gives a sample its ``value``; other experiments: the first non-companion score."""

COMPANION_SCORERS: frozenset[str] = frozenset({"answer_status", "foil"})
"""Scorers that restate another score's status or describe its inputs (forced-choice experiments)."""

RESULTS_FILE = "results.parquet"
MODELS_FILE = "models.yaml"
ADAPTER_METADATA_FILE = "empersona.json"  # written by empersona.train.sft


# --------------------------------------------------------------------------- model metadata


class ModelEntry(BaseModel):
    """What one model string is, as stated in ``models.yaml`` (every field optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    base_model: str | None = None
    adapter: str | None = None
    domain: str | None = None
    seed: int | None = None
    kind: str | None = None  # a study's: base, fine-tune, checkpoint, adapter or model (study.plan.ModelKind)
    step: int | None = None  # a checkpoint's training step, a fine-tune's last


class RunModels(BaseModel):
    """``RUN_DIR/models.yaml``: the reference (base) model for classification and per-model facts.

    Example::

        base: qwen-base                  # display name or model string of the base model
        models:
          hf/adapters/qwen-insecure-s0: {name: insecure-s0, base_model: Qwen/Qwen2.5-32B-Instruct, domain: insecure_code, seed: 0}
          hf/Qwen/Qwen2.5-32B-Instruct: {name: qwen-base}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str | None = None
    models: dict[str, ModelEntry] = {}
    run_folder: str | None = None  # where the study's run folder was when it wrote the file

    def by_name(self) -> dict[str, ModelEntry]:
        """Each entry under the name its model has in the results table (`display_name`)."""
        return {display_name(key, entry): entry for key, entry in self.models.items()}

    def relocated(self, run_folder: Path) -> RunModels:
        """The statements with model strings and paths read where the run folder is now, if it
        was moved or copied since the file was written (``run_folder`` recorded)."""
        from empersona.moved import FolderMove

        move = FolderMove.between(self.run_folder, run_folder) if self.run_folder else None
        if move is None:
            return self
        models = {
            move.model_string(key): entry.model_copy(update={
                "adapter": entry.adapter and move.path(entry.adapter),
                "base_model": entry.base_model and move.path(entry.base_model),
            })
            for key, entry in self.models.items()
        }
        base = self.base and move.model_string(self.base)
        return RunModels(base=base, models=models, run_folder=str(run_folder))


@dataclass(frozen=True)
class ModelInfo:
    """The facts about one evaluated model that land in every one of its rows."""

    name: str
    model_string: str
    base_model: str | None = None
    adapter: str | None = None
    domain: str | None = None
    seed: int | None = None


def load_run_models(path: Path) -> RunModels:
    """Read ``models.yaml``; an absent file means no statements (an empty `RunModels`)."""
    import yaml

    if not path.is_file():
        return RunModels()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise EmpersonaError(
            located(path, mark.line + 1 if mark else None, None, f"not valid YAML ({err})", "fix the file's syntax")
        ) from err
    try:
        return RunModels.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise EmpersonaError(
            located(path, None, field, first["msg"], "allowed keys: base, run_folder, models.<model string>.{name, base_model, adapter, domain, seed, kind, step}")
        ) from err


def _domain_label(domain: str) -> str:
    """A training domain as a short label (a JSONL path becomes its file stem)."""
    if "/" in domain or domain.endswith(".jsonl"):
        return Path(domain).stem
    return domain


def _adapter_folder(model_string: str, search: Sequence[Path]) -> Path | None:
    """The folder an ``hf/<dir>`` model string points at, if it holds ``empersona.json``."""
    provider, _, rest = model_string.partition("/")
    if provider != "hf" or not rest:
        return None
    candidate = Path(rest)
    places = [candidate] if candidate.is_absolute() else [base / candidate for base in search]
    for place in places:
        if (place / ADAPTER_METADATA_FILE).is_file():
            return place
    return None


def display_name(model_string: str, entry: ModelEntry) -> str:
    """The name a model goes by in the results table: its ``name``, else ``<domain>-s<seed>``
    from its domain and seed, else its model string."""
    name = entry.name
    if name is None and entry.domain is not None:
        name = _domain_label(entry.domain) + (f"-s{entry.seed}" if entry.seed is not None else "")
    return name or model_string


def model_info(model_string: str, run_models: RunModels | None = None, search: Sequence[Path] = ()) -> ModelInfo:
    """What ``model_string`` is: ``models.yaml`` first, then an adapter's ``empersona.json``.

    A relative adapter path is looked up under each folder of ``search``, then the working folder.
    """
    entry = (run_models or RunModels()).models.get(model_string)
    if entry is None and (folder := _adapter_folder(model_string, [*search, Path.cwd()])) is not None:
        path = folder / ADAPTER_METADATA_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            domain = record.get("domain")
            started = ((record.get("init_adapter") or {}).get("empersona") or {}).get("domain")
            if domain and started:  # sequential fine-tuning: named as a study names it, <first>><then>
                domain = f"{_domain_label(started)}>{_domain_label(domain)}"
            entry = ModelEntry(
                base_model=record.get("base_model"),
                adapter=str(folder),
                domain=domain,
                seed=record.get("seed"),
            )
        except (json.JSONDecodeError, ValidationError, AttributeError) as err:
            raise EmpersonaError(located(path, None, None, f"unreadable adapter record ({err})", "re-run training or fix the file")) from err
    if entry is None:
        return ModelInfo(name=model_string, model_string=model_string)
    return ModelInfo(
        name=display_name(model_string, entry),
        model_string=model_string,
        base_model=entry.base_model,
        adapter=entry.adapter,
        domain=entry.domain,
        seed=entry.seed,
    )


# --------------------------------------------------------------------------- one log -> rows


def experiment_name(log: EvalLog) -> str:
    """Our tasks record ``experiment`` in their metadata; otherwise the task name without package."""
    meta = log.eval.metadata or {}
    return str(meta.get("experiment") or log.eval.task.split("/")[-1])


def judge_name(log: EvalLog) -> str | None:
    """The judge model string: the CLI's ``metadata["judge"]``, else the ``grader`` role."""
    meta = log.eval.metadata or {}
    if meta.get("judge"):
        return str(meta["judge"])
    roles = log.eval.model_roles or {}
    grader = roles.get("grader")
    return str(grader.model) if grader is not None else None


def primary_score(experiment: str, scores: Mapping[str, Score] | None) -> tuple[str, Score] | None:
    """The (scorer name, score) that gives a sample of ``experiment`` its value."""
    if not scores:
        return None
    wanted = PRIMARY_SCORERS.get(experiment)
    if wanted is not None:
        return (wanted, scores[wanted]) if wanted in scores else None
    for name, score in scores.items():
        if name not in COMPANION_SCORERS:
            return name, score
    return None


def _first(key: str, *sources: Mapping[str, Any]) -> Any:
    for source in sources:
        if source.get(key) is not None:
            return source[key]
    return None


def _number(value: Any) -> float:
    """A float from a score field (NaN for None, text, bool or anything not a number)."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def experiment_fields(experiment: str, score_meta: Mapping[str, Any], sample_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment-specific columns of one sample (CONTRACT.md), from its score and sample metadata.

    Fields are looked up in the score's metadata first, then the sample's, so an experiment may
    put them in either place; fields an experiment does not have stay empty.
    """
    fields: dict[str, Any] = {
        "bucket": _first("bucket", score_meta, sample_meta),
        "picked_position": _first("picked_position", score_meta),
        "p_a": _number(_first("p_a", score_meta)),  # P(answer "A"): the letter's probability in logprob mode
        "theme": _first("theme", score_meta, sample_meta),
        "format": _first("format", score_meta, sample_meta),
        "dimension": _first("dimension", score_meta, sample_meta),
        "predicted": _number(_first("predicted", score_meta)),
        "actual": _number(_first("actual", score_meta, sample_meta)),
        "aligned": _number(score_meta.get("aligned")),
        "coherent": _number(score_meta.get("coherent")),
        "method": _first("method", score_meta) or _first("aligned_method", score_meta),
    }
    if experiment == "output_recognition" and fields["bucket"] is None:
        fields["bucket"] = _first("own_bucket", score_meta, sample_meta)
    return fields


def _status_and_value(score: Score) -> tuple[Status, float, str | None]:
    meta = score.metadata or {}
    value = _number(score.value)
    status = meta.get("status")
    reason = meta.get("reason")
    if status not in STATUSES:
        if status is not None:
            reason = f"unknown status {status!r} in the log"
        status = "scored" if not math.isnan(value) and status is None else "unscored"
    if status == "scored" and math.isnan(value):
        status, reason = "unscored", reason or f"score value {score.value!r} is not a number"
    if status == "unscored" and not reason:
        reason = f"score value {score.value!r} is not a number" if math.isnan(value) else "unscored, no reason logged"
    return status, (value if status == "scored" else math.nan), reason


def sample_row(sample: EvalSample, experiment: str) -> dict[str, Any]:
    """The tidy fields of one logged sample (without the run's metadata)."""
    sample_meta = sample.metadata or {}
    picked = primary_score(experiment, sample.scores)
    row: dict[str, Any] = {
        "experiment": experiment,
        "item_id": str(sample_meta.get("item_id", sample.id)),
        "sample": int(sample.epoch) - 1,
        "condition": str(sample_meta.get("condition") or ""),
    }
    if picked is None:
        reason = f"sample error: {sample.error.message}" if sample.error else "the sample has no score"
        return {**row, "status": "unscored", "value": math.nan, "reason": reason, **experiment_fields(experiment, {}, sample_meta)}
    _name, score = picked
    score_meta = score.metadata or {}
    status, value, reason = _status_and_value(score)
    return {
        **row,
        "status": status,
        "value": value,
        "reason": reason,
        "answer": score.answer,
        "raw": score_meta.get("raw"),
        **experiment_fields(experiment, score_meta, sample_meta),
    }


def recorded_run_folder(spec: Any, fallback: str | None = None) -> str | None:
    """The run folder a study's log was written in, as it was then (None: not a study log).

    The study runner records it (``metadata["run_folder"]``); for its logs from before that,
    it is read off the adapter folder the model string names (``<run>/adapters/<model_name>``)
    or the harmfulness log the experiment read (``<run>/logs/<model_name>/<file>``), else it is
    ``fallback`` (where the run's adapters were trained: ``train.metadata.trained_run_folder``).
    """
    meta = spec.metadata or {}
    if isinstance(meta.get("run_folder"), str):
        return str(meta["run_folder"])
    name = meta.get("model_name")
    if not isinstance(name, str):
        return None
    target = PurePath(spec.model.partition("/")[2])
    if target.name == name and target.parent.name == "adapters":
        return str(target.parents[1])
    harm = (spec.task_args or {}).get("harm_log")
    if isinstance(harm, str) and PurePath(harm).parent.name == name and PurePath(harm).parent.parent.name == "logs":
        return str(PurePath(harm).parents[2])
    return fallback


def log_rows(
    path: Path,
    run_models: RunModels | None = None,
    search: Sequence[Path] = (),
    root: Path | None = None,
    run_folder: Path | None = None,
    trained_in: str | None = None,
) -> list[dict[str, Any]]:
    """Every sample of one ``.eval`` log as tidy rows, with the run's metadata.

    ``log_file`` is recorded relative to ``root`` when the log lies under it. ``run_folder``: the
    study's run folder as it is now, where a log written before a move names its model by the
    old path (`recorded_run_folder`; ``trained_in``: its fallback).
    """
    from inspect_ai.log import read_eval_log

    from empersona.eval_logs import read_samples
    from empersona.moved import FolderMove

    log = read_eval_log(str(path), header_only=True)
    meta = log.eval.metadata or {}
    model_string = log.eval.model
    args = dict(log.eval.task_args or {})
    recorded = recorded_run_folder(log.eval, trained_in) if run_folder is not None else None
    if recorded is not None and (move := FolderMove.between(recorded, run_folder)) is not None:
        model_string = move.model_string(model_string)
        args = {key: move.value(value) for key, value in args.items()}  # e.g. the foil model's path
    info = model_info(model_string, run_models, search=search)
    if info.name == info.model_string and meta.get("model_name"):  # the study runner names its models
        info = ModelInfo(name=str(meta["model_name"]), model_string=info.model_string, domain=meta.get("domain"), seed=meta.get("ft_seed"))
    experiment = experiment_name(log)
    shared = {
        "model": info.name,
        "model_string": info.model_string,
        "base_model": info.base_model,
        "adapter": info.adapter,
        "domain": info.domain,
        "seed": info.seed,
        "judge": judge_name(log),
        "system_prompt_policy": meta.get("system_prompt_policy"),
        "variant": str(meta.get("variant") or ""),
        "source": "log",
        "log_file": str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path),
        "eval_id": log.eval.eval_id,
        "created": str(log.eval.created),
        "eval_seed": meta.get("seed"),
        "task_args": json.dumps(args, sort_keys=True, default=str),
        "versions": json.dumps(log.eval.packages or {}, sort_keys=True),
        "log_status": log.status,  # not a column: `results_table` lists the logs that did not finish
    }
    samples = read_samples(path, drop=("events", "messages"))
    return [{**shared, **sample_row(sample, experiment)} for sample in samples]


# --------------------------------------------------------------------------- the table


def tidy_frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows (dicts or a frame) as a table with exactly the tidy columns, in order, with fixed dtypes."""
    import pandas as pd

    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    for column in TIDY_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    frame = frame[list(TIDY_COLUMNS)]
    out = {}
    for column in TIDY_COLUMNS:
        series = frame[column]
        if column in FLOAT_COLUMNS:
            out[column] = pd.to_numeric(series, errors="coerce").astype("float64")
        elif column in INT_COLUMNS:
            out[column] = pd.to_numeric(series).astype("int64")
        elif column in NULLABLE_INT_COLUMNS:
            out[column] = pd.to_numeric(series, errors="coerce").astype("Int64")
        else:
            out[column] = series.astype("object").where(series.notna(), None).map(lambda v: v if v is None else str(v)).astype("str")
    table = pd.DataFrame(out, index=range(len(frame)))
    for column in ("condition", "variant"):  # keys: "" where a table or log has none
        table[column] = table[column].fillna("")
    return table


def main_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The battery's own rows: those of no study variant (``variant`` ""). Every analysis of the
    battery reads these; a variant's rows are the same experiments asked again under other
    framings (`empersona.analysis.variants`), and would count twice."""
    if "variant" not in table.columns:
        return table
    kept = table.loc[table["variant"] == ""]
    return kept.reset_index(drop=True) if len(kept) < len(table) else table


def _settings(frame: pd.DataFrame) -> pd.Series:
    """What a log's rows were run with, as one string per row: the judge, the system-prompt
    policy and the task arguments, leaving out file paths (``*_log``, ``*_file``: a moved run
    folder changes them, not the run)."""

    def arguments(text: object) -> str:
        args = json.loads(text) if isinstance(text, str) and text else {}
        return json.dumps({k: v for k, v in args.items() if not k.endswith(("_log", "_file"))}, sort_keys=True)

    # a missing judge or policy (a task without one) is "": NaN would make every row differ from itself
    return (frame["task_args"].map(arguments).astype(str) + "|" + frame["judge"].fillna("").astype(str) + "|"
            + frame["system_prompt_policy"].fillna("").astype(str))


def deduplicate(table: pd.DataFrame) -> pd.DataFrame:
    """One row per key: where logs overlap (a resumed run), the most recently created log wins.

    The samples of one unit (model, experiment, variant, item and condition) all come from logs
    run with the settings of the newest log that has the unit (`_settings`): a unit's rows from a
    log run otherwise (another judge, number of samples, system prompt) are left out, not mixed
    with the newer ones (a max over samples from two configurations is neither's), and that log
    is listed in ``attrs[SUPERSEDED_LOGS]``. Units only an older log has stay (e.g. the blind
    condition run on its own before the shown one). Rows are expected in reading order (older
    files first), which breaks ties in ``created``.
    """
    ordered = table.sort_values("created", kind="stable", na_position="first")
    superseded: list[str] = []
    logged = ordered["source"] == "log"
    if logged.any():
        settings = _settings(ordered.loc[logged])
        units = ["model", "experiment", "variant", "item_id", "condition"]
        groups = ordered.loc[logged, units].astype(str).agg("\x1f".join, axis=1)
        newest = settings.groupby(groups).transform("last")  # ordered: the last row is the newest log's
        stale = settings.index[settings != newest]
        superseded = sorted(ordered.loc[stale, "log_file"].astype(str).unique())
        ordered = ordered.drop(index=stale)
    kept = ordered.drop_duplicates(list(KEY_COLUMNS), keep="last")
    out = kept.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)
    out.attrs[SUPERSEDED_LOGS] = superseded
    return out


def disambiguate_names(table: pd.DataFrame) -> pd.DataFrame:
    """Where one display name covers several model strings, use the model strings instead."""
    strings_per_name = table.groupby("model")["model_string"].nunique()
    clashing = set(strings_per_name[strings_per_name > 1].index)
    if not clashing:
        return table
    out = table.copy()
    hit = out["model"].isin(clashing)
    out.loc[hit, "model"] = out.loc[hit, "model_string"]
    return out


def find_logs(log_dir: Path) -> list[Path]:
    """Every ``.eval`` log under ``log_dir`` (any depth), sorted by path."""
    return sorted(p for p in log_dir.rglob("*.eval") if p.is_file())


SUPERSEDED_LOGS = "superseded_logs"
"""The table's ``attrs`` key for logs whose rows were left out where a newer log of the same units
was run with other settings (`deduplicate`)."""

UNFINISHED_LOGS = "unfinished_logs"
"""The table's ``attrs`` key for the logs of evaluations that did not finish (an error, an interrupt)
whose samples are in the table: a list of ``{"log": path, "status": ..., "rows": rows kept}``."""

SKIPPED_LOGS = "skipped_logs"
"""The table's ``attrs`` key (kept in its Parquet file) for the logs `results_table` could not read: a
list of ``{"log": path, "reason": ...}``."""


def results_table(
    logs: Sequence[Path],
    *,
    run_models: RunModels | None = None,
    search: Sequence[Path] = (),
    extra: Sequence[pd.DataFrame] = (),
    root: Path | None = None,
    run_folder: Path | None = None,
) -> pd.DataFrame:
    """The tidy table of the given logs (and of ``extra`` tables already in the tidy schema).

    ``search``: folders to resolve relative ``hf/<dir>`` adapter paths in; ``root``: log paths
    are recorded relative to it; ``run_folder``: a study's run folder, which may have moved
    since some of its logs were written (`log_rows`).
    """
    import pandas as pd

    from empersona.train.metadata import trained_run_folder

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    trained_in = trained_run_folder(run_folder) if run_folder is not None else None  # read once, not per log
    for path in sorted(logs, key=lambda p: p.stat().st_mtime):  # ties in `created` go to the later file
        try:
            rows.extend(log_rows(path, run_models, search, root, run_folder, trained_in))
        except (ValueError, OSError, zipfile.BadZipFile) as err:  # cut short by a killed run
            warnings.warn(f"skipping unreadable log {path}: {err}", stacklevel=2)
            shown = path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else str(path)
            skipped.append({"log": shown, "reason": str(err) or type(err).__name__})
    parts = [tidy_frame(rows)] + [tidy_frame(frame) for frame in extra]
    parts = [part for part in parts if len(part)]
    merged = deduplicate(disambiguate_names(pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0])) \
        if parts else None
    table = tidy_frame([]) if merged is None else tidy_frame(merged)
    table.attrs[SUPERSEDED_LOGS] = [] if merged is None else merged.attrs[SUPERSEDED_LOGS]
    table.attrs[SKIPPED_LOGS] = skipped  # every report lists them: their samples are in no count
    unfinished = {row["log_file"]: row["log_status"] for row in rows if row["log_status"] != "success"}
    kept = table["log_file"].value_counts().to_dict() if unfinished else {}
    table.attrs[UNFINISHED_LOGS] = [{"log": log, "status": status, "rows": int(kept[log])}
                                    for log, status in sorted(unfinished.items()) if kept.get(log)]
    return table


def write_results(table: pd.DataFrame, path: Path, *, inputs: Sequence[str] | None = None,
                  run_folder: Path | None = None) -> Path:
    """Save a tidy table as Parquet (atomically: a temporary file, then a rename).

    ``inputs`` (the files it was built from) and ``run_folder`` (where the run folder was, since
    model strings are read at its place) are kept in the file's metadata.
    """
    from empersona.atomic import replacing

    frame = tidy_frame(table)
    for key in (SKIPPED_LOGS, SUPERSEDED_LOGS, UNFINISHED_LOGS):
        frame.attrs[key] = list(table.attrs.get(key, []))
    if inputs is not None:
        frame.attrs["inputs"] = list(inputs)
    if run_folder is not None:
        frame.attrs["run_folder"] = str(run_folder)
    with replacing(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def read_results(path: Path) -> pd.DataFrame:
    """Load a tidy table saved by `write_results` (or an imported one), checking its columns."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise EmpersonaError(located(path, None, None, f"not a readable Parquet file ({err})", "delete it and rebuild")) from err
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise EmpersonaError(
            located(path, None, missing[0], "the column is missing from the results table", "delete the file and rebuild it")
        )
    table = tidy_frame(frame)
    table.attrs = dict(frame.attrs)
    return table


def _input_stamp(path: Path, run_dir: Path) -> str:
    """An input of the results table as it is now: its place in the run folder, size, times and inode. A
    file put back with an older mtime (``cp -p``, ``rsync -a``, a restored backup) still changes its
    ctime or inode, so the table is built again."""
    stat = path.stat()
    return f"{path.relative_to(run_dir).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"


def run_results(run_dir: Path, *, rebuild: bool = False) -> pd.DataFrame:
    """``RUN_DIR/results.parquet``, rebuilt from ``logs/`` and ``imports/`` when missing or stale.

    Stale: older than any log, imported table or ``models.yaml``, built from another set of
    them (one was added, deleted or replaced, even by a copy that kept the old mtime), or built
    where the run folder was before it was moved or copied. See `empersona.report.build` for the run folder's layout.
    """
    target = run_dir / RESULTS_FILE
    logs = find_logs(run_dir / "logs") if (run_dir / "logs").is_dir() else []
    imports = sorted((run_dir / "imports").glob("*.parquet")) if (run_dir / "imports").is_dir() else []
    inputs = [*logs, *imports] + ([run_dir / MODELS_FILE] if (run_dir / MODELS_FILE).is_file() else [])
    names = [_input_stamp(p, run_dir) for p in inputs]
    if not rebuild and target.is_file() and all(p.stat().st_mtime <= target.stat().st_mtime for p in inputs):
        stored = read_results(target)
        if stored.attrs.get("inputs") == names and stored.attrs.get("run_folder") == str(run_dir.resolve()):
            return stored
    if not logs and not imports:
        raise EmpersonaError(
            located(run_dir, None, None, "no .eval logs under logs/ and no imported tables under imports/",
                    "run 'empersona eval ... --log-dir RUN_DIR/logs' or 'empersona import ... --out RUN_DIR' first")
        )
    table = results_table(
        logs,
        run_models=load_run_models(run_dir / MODELS_FILE).relocated(run_dir.resolve()),
        search=[run_dir],
        extra=[read_results(p) for p in imports],
        root=run_dir,
        run_folder=run_dir.resolve(),
    )
    write_results(table, target, inputs=names, run_folder=run_dir.resolve())
    table.attrs["inputs"], table.attrs["run_folder"] = names, str(run_dir.resolve())
    return table
