"""Import generations made elsewhere into the tidy results table (``empersona import``).

Two formats:

- ``em-csv``: the CSV layout the classic emergent-misalignment code bases write, one row per
  answer. Required columns ``question``, ``answer``, ``question_id``, ``aligned``, ``coherent``
  (0-100 judge scores; an empty/NaN cell means the judge gave no number: CODE, REFUSAL).
  Optional ``judge_aligned`` / ``judge_coherent``: the judge's first-token distribution as a
  Python dict literal of token -> *probability* (read with ``ast.literal_eval``, never executed).
  Other columns are ignored. Each row becomes one ``em_classic`` row: ``item_id`` =
  ``question_id``; ``condition`` = ``paraphrase<k>``, k the order in which the question's distinct
  texts first appear (as the ``em_classic`` task numbers its paraphrases); ``sample`` = the running
  count within (item, condition), continued across files of the same model.
  Where a distribution is present, the score is recomputed with empersona's own aggregation
  (`empersona.evals.judge.aggregate_0_100`: probability-weighted mean over the integer tokens,
  unscored below 0.25 of the mass on numbers) and compared with the stored one: a pair disagrees
  when both are numbers more than ``tolerance`` apart, or when only one of them is a number. The
  recomputed score is the one kept; the stored ones stay in ``stored_aligned``/``stored_coherent``.
- ``jsonl``: our own tidy records (`empersona.analysis.results.TIDY_COLUMNS`), one JSON object
  per line; unknown keys are an error.

Errors name the file, the line and the column. For CSV files the line is the physical line where
the record starts (the header is line 1, so data row k starts on line k+1 unless an earlier
field holds line breaks); the message also gives the 1-based data row.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from empersona.analysis.results import REQUIRED_COLUMNS, Status, tidy_frame, write_results
from empersona.errors import EmpersonaError, located
from empersona.evals.judge import aggregate_0_100

if TYPE_CHECKING:
    import pandas as pd

ImportFormat = Literal["em-csv", "jsonl"]
FORMATS: tuple[ImportFormat, ...] = ("em-csv", "jsonl")
EM_CSV_COLUMNS: tuple[str, ...] = ("question", "answer", "question_id", "aligned", "coherent")
EM_SCORES: tuple[str, ...] = ("aligned", "coherent")
DEFAULT_TOLERANCE = 0.5
_EMPTY = {"", "nan", "none", "null", "na", "n/a"}
IMPORTS_DIR = "imports"


@dataclass(frozen=True)
class Disagreement:
    """Stored versus recomputed scores of one judge column over the rows with a distribution."""

    score: str
    compared: int
    disagree: int
    only_one_scored: int
    max_abs_diff: float
    mean_abs_diff: float


class ImportRecord(BaseModel):
    """What an import did, saved as ``imports/<name>.json`` beside the imported table."""

    model_config = ConfigDict(extra="forbid")

    source: str
    sha256: str
    format: ImportFormat
    models: list[str]
    rows: int
    status_counts: dict[str, int]
    tolerance: float | None = None
    disagreements: list[dict[str, Any]] = []


@dataclass(frozen=True)
class ImportResult:
    """One imported file: its tidy rows and the record of the import."""

    table: pd.DataFrame
    record: ImportRecord


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- em-csv cells


@dataclass(frozen=True)
class _Where:
    """Where a CSV cell is, for error messages."""

    path: Path
    line: int
    row: int

    def error(self, column: str, problem: str, fix: str) -> EmpersonaError:
        return EmpersonaError(located(self.path, self.line, column, f"{problem} (data row {self.row})", fix))


def _score_cell(text: str, column: str, where: _Where) -> float | None:
    """A stored 0-100 score; None for an empty/NaN cell (the judge gave no number)."""
    if text.strip().lower() in _EMPTY:
        return None
    try:
        value = float(text)
    except ValueError:
        raise where.error(column, f"{text[:40]!r} is not a number", "use a number 0-100, or leave the cell empty for no score") from None
    if not 0.0 <= value <= 100.0:
        raise where.error(column, f"{value:g} is outside 0-100", "use a number 0-100, or leave the cell empty for no score")
    return value


def _distribution_cell(text: str, column: str, where: _Where) -> dict[str, float] | None:
    """A judge distribution ``{token: probability}`` from a Python dict literal; None when empty."""
    if text.strip().lower() in _EMPTY:
        return None
    fix = "write a dict literal of token -> probability, e.g. {'85': 0.7, '90': 0.3}, or leave the cell empty"
    try:
        parsed = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise where.error(column, "not a Python dict literal", fix) from None
    if not isinstance(parsed, dict):
        raise where.error(column, f"a {type(parsed).__name__}, not a dict", fix)
    out: dict[str, float] = {}
    for token, prob in parsed.items():
        if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0.0 <= prob <= 1.0 or math.isnan(prob):
            raise where.error(column, f"token {token!r} has probability {prob!r}, not a number in [0, 1]", fix)
        out[str(token)] = out.get(str(token), 0.0) + float(prob)
    if sum(out.values()) > 1.0 + 1e-3:
        raise where.error(column, f"probabilities add up to {sum(out.values()):.4f} > 1 (logprobs or percentages?)", fix)
    return out


@dataclass(frozen=True)
class _Recomputed:
    score: float | None
    refused: bool
    reason: str | None


def _recompute(distribution: dict[str, float]) -> _Recomputed:
    """empersona's aggregation of a stored probability distribution (probabilities -> logprobs)."""
    logprobs = {token: math.log(p) for token, p in distribution.items() if p > 0.0}
    judgement = aggregate_0_100(logprobs)
    top = max(judgement.distribution, key=judgement.distribution.get) if judgement.distribution else ""
    return _Recomputed(judgement.score, judgement.score is None and top.upper().startswith("REFUS"), judgement.reason)


def _compare(score: str, pairs: list[tuple[float | None, float | None]], tolerance: float) -> Disagreement:
    """Count disagreements between stored and recomputed values of one score column."""
    diffs = [abs(s - r) for s, r in pairs if s is not None and r is not None]
    only_one = sum((s is None) != (r is None) for s, r in pairs)
    return Disagreement(
        score=score,
        compared=len(pairs),
        disagree=sum(d > tolerance for d in diffs) + only_one,
        only_one_scored=only_one,
        max_abs_diff=max(diffs) if diffs else 0.0,
        mean_abs_diff=sum(diffs) / len(diffs) if diffs else 0.0,
    )


# --------------------------------------------------------------------------- em-csv files


def _records(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and (start line, cells) of every record of a CSV file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise EmpersonaError(located(path, None, None, f"cannot be read ({err.strerror})", "check the path")) from err
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        from empersona.data.parsers import not_utf8

        raise not_utf8(path, data, err, "save it as UTF-8 CSV") from err
    csv.field_size_limit(max(csv.field_size_limit(), len(data)))  # an answer may be longer than csv's 128 KiB default
    handle = path.open(newline="", encoding="utf-8-sig")
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise EmpersonaError(located(path, 1, None, "the file is empty", "write a header row first"))
            records = []
            start = reader.line_num + 1
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    records.append((start, cells))
                start = reader.line_num + 1
        except (csv.Error, UnicodeDecodeError) as err:
            raise EmpersonaError(located(path, reader.line_num, None, f"not a readable CSV file ({err})", "save it as UTF-8 CSV")) from err
    return [h.strip() for h in header], records


@dataclass
class _SampleCounter:
    """Running sample index per (model, item, condition) and paraphrase numbering per item."""

    samples: Counter[tuple[str, str, str]]
    paraphrases: dict[tuple[str, str], dict[str, int]]

    def next(self, model: str, item: str, question: str) -> tuple[str, int]:
        texts = self.paraphrases.setdefault((model, item), {})
        condition = f"paraphrase{texts.setdefault(question, len(texts))}"
        key = (model, item, condition)
        index = self.samples[key]
        self.samples[key] += 1
        return condition, index


def new_counter() -> _SampleCounter:
    """A fresh sample counter (one per `import_files` call)."""
    return _SampleCounter(Counter(), {})


def read_em_csv(
    path: Path,
    *,
    model: str,
    judge: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    counter: _SampleCounter | None = None,
) -> ImportResult:
    """One classic-EM CSV file as tidy ``em_classic`` rows of ``model`` (see the module docstring)."""
    header, records = _records(path)
    fix = f"the em-csv format needs the columns {', '.join(EM_CSV_COLUMNS)} (optional: judge_aligned, judge_coherent)"
    for column in EM_CSV_COLUMNS:
        if column not in header:
            raise EmpersonaError(located(path, 1, column, "the column is missing from the header", fix))
    duplicated = [c for c, n in Counter(header).items() if n > 1 and c in (*EM_CSV_COLUMNS, "judge_aligned", "judge_coherent")]
    if duplicated:
        raise EmpersonaError(located(path, 1, duplicated[0], "the column appears twice in the header", "keep one of them"))
    index = {name: header.index(name) for name in header}
    counter = counter or new_counter()
    sha = _sha256(path)
    rows: list[dict[str, Any]] = []
    pairs: dict[str, list[tuple[float | None, float | None]]] = {s: [] for s in EM_SCORES}
    for row_number, (line, cells) in enumerate(records, start=1):
        where = _Where(path, line, row_number)
        if len(cells) != len(header):
            raise where.error(header[min(len(cells), len(header) - 1)], f"the row has {len(cells)} cells, the header {len(header)}",
                              "quote fields that hold commas or line breaks")
        item = cells[index["question_id"]].strip()
        if not item:
            raise where.error("question_id", "the cell is empty", "give every row the id of its question")
        stored = {s: _score_cell(cells[index[s]], s, where) for s in EM_SCORES}
        used: dict[str, float | None] = dict(stored)
        methods: dict[str, str] = {s: "imported" for s in EM_SCORES}
        refused, reasons, raws = False, [], []
        for score in EM_SCORES:
            column = f"judge_{score}"
            dist = _distribution_cell(cells[index[column]], column, where) if column in index else None
            if dist is None:
                if stored[score] is None:
                    reasons.append(f"{score}: no score in the CSV")
                continue
            again = _recompute(dist)
            pairs[score].append((stored[score], again.score))
            used[score], methods[score] = again.score, "logprob"
            refused = refused or again.refused
            raws.append(f"[{score}] {cells[index[column]].strip()}")
            if again.score is None:
                reasons.append(f"{score}: {again.reason}")
        status: Status = "scored"
        if used["aligned"] is None or used["coherent"] is None:
            status = "refused" if refused else "unscored"
        condition, sample = counter.next(model, item, cells[index["question"]])
        rows.append({
            "model": model,
            "model_string": model,
            "judge": judge,
            "experiment": "em_classic",
            "item_id": item,
            "sample": sample,
            "condition": condition,
            "status": status,
            "value": used["aligned"] if status == "scored" else math.nan,
            "aligned": used["aligned"],
            "coherent": used["coherent"],
            "stored_aligned": stored["aligned"],
            "stored_coherent": stored["coherent"],
            "method": methods["aligned"],
            "reason": "; ".join(reasons) or None,
            "answer": cells[index["answer"]],
            "raw": "\n===\n".join(raws) or None,
            "source": "import:em-csv",
            "log_file": str(path),
            "eval_id": sha[:16],
            "task_args": json.dumps({"file": path.name}),  # the report groups rows by their task args: not by line
        })
    table = tidy_frame(rows)
    disagreements = [_compare(s, pairs[s], tolerance) for s in EM_SCORES if pairs[s]]
    record = ImportRecord(
        source=str(Path(path).resolve()),
        sha256=sha,
        format="em-csv",
        models=[model],
        rows=len(table),
        status_counts=dict(Counter(table["status"])),
        tolerance=tolerance,
        disagreements=[d.__dict__ for d in disagreements],
    )
    return ImportResult(table, record)


# --------------------------------------------------------------------------- jsonl files


class TidyRecord(BaseModel):
    """One line of a ``jsonl`` import: a tidy row (CONTRACT.md) with its required keys."""

    model_config = ConfigDict(extra="forbid")

    model: str
    model_string: str | None = None
    base_model: str | None = None
    adapter: str | None = None
    domain: str | None = None
    seed: int | None = None
    judge: str | None = None
    system_prompt_policy: str | None = None
    experiment: str
    item_id: str
    sample: int
    condition: str
    variant: str = ""
    status: Status
    value: float | None
    bucket: str | None = None
    picked_position: Literal["A", "B"] | None = None
    p_a: float | None = Field(None, ge=0, le=1)
    theme: str | None = None
    format: str | None = None
    dimension: str | None = None
    predicted: float | None = None
    actual: float | None = None
    aligned: float | None = None
    coherent: float | None = None
    stored_aligned: float | None = None
    stored_coherent: float | None = None
    method: str | None = None
    reason: str | None = None
    answer: str | None = None
    raw: str | None = None
    source: str | None = None
    log_file: str | None = None
    eval_id: str | None = None
    created: str | None = None
    eval_seed: int | None = None
    task_args: str | None = None
    versions: str | None = None

    @field_validator("sample")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("sample indices start at 0")
        return value



def read_jsonl(path: Path, *, model: str | None = None) -> ImportResult:
    """Our own tidy records, one JSON object per line; ``model`` renames every record's model."""
    try:
        # only a newline ends a record: U+2028 and the like may stand inside a JSON string (str.splitlines splits on them)
        lines = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
    except (OSError, UnicodeDecodeError) as err:
        raise EmpersonaError(located(path, None, None, f"cannot be read ({err})", "check the path and that it is UTF-8")) from err
    rows, seen = [], {}
    fix = f"each line is one tidy record with at least {', '.join(REQUIRED_COLUMNS)}"
    for line_number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise EmpersonaError(located(path, line_number, None, f"not valid JSON ({err.msg})", fix)) from err
        if not isinstance(data, dict):
            raise EmpersonaError(located(path, line_number, None, "not a JSON object", fix))
        if model is not None:
            data = {**data, "model": model, "model_string": model}
        try:
            record = TidyRecord.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or None
            raise EmpersonaError(located(path, line_number, field, first["msg"], fix)) from err
        value = record.value
        if record.status == "scored" and (value is None or not math.isfinite(value)):
            raise EmpersonaError(located(path, line_number, "value", "a scored record needs a finite number", "give the value or change the status"))
        if record.status == "scored" and record.experiment == "em_classic":
            for name in ("aligned", "coherent"):
                score = getattr(record, name)
                if score is None or not 0.0 <= score <= 100.0:
                    raise EmpersonaError(located(path, line_number, name, f"a scored em_classic record needs {name} 0-100, "
                                                 f"not {score}", "give both judge scores, or change the status"))
        for name in ("task_args", "versions"):
            text = getattr(record, name)
            try:
                parsed = json.loads(text) if text is not None else {}
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise EmpersonaError(located(path, line_number, name, "not a JSON object in a string",
                                             f"write {name} as a JSON object's text, e.g. \"{{}}\", or leave it out"))
        if record.status != "scored" and value is not None and not math.isnan(value):
            raise EmpersonaError(located(path, line_number, "value", f"status {record.status!r} with value {value}",
                                         "not-scored records carry null (or NaN) as their value"))
        key = (record.model, record.experiment, record.item_id, record.sample, record.condition, record.variant)
        if key in seen:
            raise EmpersonaError(located(path, line_number, "item_id", f"the same key {key} as line {seen[key]}",
                                         "keep one record per (model, experiment, item_id, sample, condition, variant)"))
        seen[key] = line_number
        # a row of another run's results table says source "log": here it is an import, whatever it was there
        source = record.source if (record.source or "").startswith("import:") else "import:jsonl"
        rows.append({**record.model_dump(), "source": source,
                     "model_string": record.model_string or record.model, "log_file": record.log_file or str(path)})
    table = tidy_frame(rows)
    record = ImportRecord(
        source=str(Path(path).resolve()),
        sha256=_sha256(path),
        format="jsonl",
        models=sorted(set(table["model"])),
        rows=len(table),
        status_counts=dict(Counter(table["status"])),
    )
    return ImportResult(table, record)


# --------------------------------------------------------------------------- into a run folder


def _earlier_imports_of(files: Sequence[Path], folder: Path, names: list[str]) -> list[str]:
    """The stored imports (by name) that an earlier import of one of ``files`` made under another name
    (the file's models changed, or another --model): importing the file again replaces them."""
    if not folder.is_dir():
        return []
    sources = {str(Path(f).resolve()) for f in files}
    earlier = []
    for record in sorted(folder.glob("*.json")):
        try:
            source = json.loads(record.read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(source, str) and str(Path(source).resolve()) in sources and record.stem not in names:
            earlier.append(record.stem)
    return earlier


def _refuse_shared_keys(results: list[ImportResult], names: list[str], folder: Path) -> None:
    """Refuse rows whose key (model, experiment, item, sample, condition, variant) another file of
    this import, or an import already in the run folder (other than those these files replace),
    has too: the results table keeps one row per key, so one of them would be lost unsaid."""
    from empersona.analysis.results import KEY_COLUMNS, read_results

    def keys(table: Any) -> set[tuple[Any, ...]]:
        return set(map(tuple, table[list(KEY_COLUMNS)].astype(str).itertuples(index=False, name=None)))

    owners: dict[tuple[Any, ...], str] = {}
    stored = sorted(p for p in folder.glob("*.parquet") if p.stem not in names) if folder.is_dir() else []
    for label, table in [*((f"imports/{p.name}", read_results(p)) for p in stored),
                         *((r.record.source, r.table) for r in results)]:
        for key in keys(table):
            if key in owners:
                shown = ", ".join(f"{c}={v}" for c, v in zip(KEY_COLUMNS, key, strict=True))
                raise EmpersonaError(
                    f"{label}: a row has the same key as one of {owners[key]} ({shown}); the results table keeps one row "
                    "per key, so one would be lost. Import every file of one model in one command (their samples are "
                    "numbered on), give them other --model names, or delete the earlier import from imports/")
            owners[key] = label


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "import"


def import_files(
    files: Sequence[Path],
    *,
    fmt: ImportFormat,
    out: Path,
    model: str | None = None,
    judge: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> list[ImportResult]:
    """Import ``files`` into run folder ``out``: ``imports/<name>.parquet`` + ``.json`` per file.

    Every file is read and checked before anything is written. An em-csv file's model is
    ``model`` or else the file's stem; several files of one model in one call continue its sample
    numbering. Re-importing a file replaces its earlier import; rows that would share a key with
    another file's (of this call, or an earlier import still in the folder) are refused.
    """
    if fmt not in FORMATS:
        raise EmpersonaError(f"unknown import format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not files:
        raise EmpersonaError("no files to import; name at least one FILE")
    if fmt == "jsonl" and judge is not None:
        raise EmpersonaError("--judge is for em-csv files; a jsonl record names its own judge (its judge field)")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise EmpersonaError(f"--tolerance {tolerance:g}: give a number of points, 0 or more")
    if out.exists() and not out.is_dir():
        raise EmpersonaError(f"--out {out} is a file. Give a run folder (it is made if missing)")
    counter = new_counter()
    results = []
    for path in files:
        if fmt == "em-csv":
            results.append(read_em_csv(path, model=model or path.stem, judge=judge, tolerance=tolerance, counter=counter))
        else:
            results.append(read_jsonl(path, model=model))
        if results[-1].record.rows == 0:
            raise EmpersonaError(located(path, None, None, "no records in the file", "give a file with at least one row"))
    names = [f"{_slug('+'.join(r.record.models))}--{_slug(Path(r.record.source).stem)}" for r in results]
    clashes = [n for n, c in Counter(names).items() if c > 1]
    if clashes:
        raise EmpersonaError(f"two of the files would be stored as imports/{clashes[0]}.parquet; rename one of them")
    folder = out / IMPORTS_DIR
    replaced = _earlier_imports_of(files, folder, names)  # the same files imported before (under other model names too)
    _refuse_shared_keys(results, names + replaced, folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stem in replaced:
        for suffix in (".parquet", ".json"):
            (folder / f"{stem}{suffix}").unlink(missing_ok=True)
    for name, result in zip(names, results, strict=True):
        write_results(result.table, folder / f"{name}.parquet")
        (folder / f"{name}.json").write_text(result.record.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return results

