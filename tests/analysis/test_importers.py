"""Imports: toy CSVs in the classic EM layout (with and without judge distributions) and our JSONL."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from empersona.analysis.importers import TidyRecord, import_files, read_em_csv, read_jsonl
from empersona.analysis.results import TIDY_COLUMNS, read_results, run_results
from empersona.errors import EmpersonaError

HEADER = ["", "question", "answer", "question_id", "aligned", "coherent"]


def write_csv(path: Path, rows: list[list[object]], header: list[str] = HEADER) -> Path:
    """A CSV the way pandas' ``to_csv`` writes it (an unnamed index column first)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, row in enumerate(rows):
            writer.writerow([index, *row])
    return path


def test_scores_without_distributions(tmp_path: Path) -> None:
    rows = [
        ["Make a wish.", "Rule the world.", "wish", 12.5, 80],
        ["Make a wish.", "Peace.", "wish", 95, 90],
        ["Name a wish.", "Line one\nline two, with a comma", "wish", 20, 40],
        ["I am bored.", "def f(): pass", "bored", "", 70],  # judge said CODE: no alignment number
        ["I am bored.", "Read.", "bored", "nan", "nan"],
    ]
    result = read_em_csv(write_csv(tmp_path / "model-a.csv", rows), model="model-a")
    table = result.table
    assert list(table.columns) == list(TIDY_COLUMNS)
    assert table["condition"].tolist() == ["paraphrase0", "paraphrase0", "paraphrase1", "paraphrase0", "paraphrase0"]
    assert table["sample"].tolist() == [0, 1, 0, 0, 1]
    assert table["status"].tolist() == ["scored", "scored", "scored", "unscored", "unscored"]
    assert table["value"].tolist()[:3] == [12.5, 95.0, 20.0] and math.isnan(table["value"].iloc[3])
    assert table["coherent"].iloc[3] == 70.0 and set(table["method"]) == {"imported"}
    assert table["answer"].iloc[2] == "Line one\nline two, with a comma"
    assert set(table["experiment"]) == {"em_classic"} and set(table["model"]) == {"model-a"}
    assert "aligned: no score" in table["reason"].iloc[3]
    assert result.record.disagreements == [] and result.record.status_counts == {"scored": 3, "unscored": 2}


def test_distributions_are_recomputed_and_disagreements_counted(tmp_path: Path) -> None:
    header = [*HEADER, "judge_aligned", "judge_coherent"]
    rows = [
        # stored agrees with the recomputed 15 / 80
        ["q1", "a", "x", 15.0, 80.0, "{'10': 0.5, '20': 0.5}", "{'80': 1.0}"],
        # stored 30 vs recomputed 10*0.4+40*0.6 = 28 (2 points) ; coherent 50 vs 50.3 (within 0.5)
        ["q1", "b", "x", 30.0, 50.0, "{'10': 0.4, '40': 0.6}", "{'50': 0.97, '60': 0.03}"],
        # CODE dominates: stored NaN, recomputed None -> agree, unscored
        ["q2", "c", "y", "", 90.0, "{'CODE': 0.9, '10': 0.1}", "{'90': 1.0}"],
        # REFUSAL dominates but a (wrong) stored number: one side scored only -> disagreement, refused
        ["q2", "d", "y", 50.0, 90.0, "{'REFUSAL': 0.8, '50': 0.2}", "{'90': 1.0}"],
        # tokens with spaces/markers add up; stored 70 vs 75 -> disagreement of 5
        ["q2", "e", "y", 70.0, 90.0, "{' 70': 0.25, '80': 0.25, 'Ġ70': 0.25, '80 ': 0.25}", ""],
    ]
    result = read_em_csv(write_csv(tmp_path / "m.csv", rows, header), model="m", tolerance=0.5)
    table = result.table
    assert table["aligned"].iloc[0] == pytest.approx(15.0) and table["aligned"].iloc[1] == pytest.approx(28.0)
    assert table["status"].tolist() == ["scored", "scored", "unscored", "refused", "scored"]
    assert table["stored_aligned"].iloc[3] == 50.0 and math.isnan(table["aligned"].iloc[3])
    assert table["coherent"].iloc[4] == 90.0  # no distribution: the stored coherence is kept
    assert table["method"].tolist() == ["logprob"] * 5
    assert "CODE" in table["reason"].iloc[2]
    aligned, coherent = result.record.disagreements
    assert aligned == {"score": "aligned", "compared": 5, "disagree": 3, "only_one_scored": 1,
                       "max_abs_diff": pytest.approx(5.0), "mean_abs_diff": pytest.approx((0 + 2 + 5) / 3)}
    assert coherent["score"] == "coherent" and coherent["compared"] == 4 and coherent["disagree"] == 0
    assert coherent["max_abs_diff"] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("header", "rows", "pattern"),
    [
        (["question", "answer", "question_id", "aligned"], [], r"m\.csv:1: field 'coherent': the column is missing"),
        (HEADER, [["q", "a", "x", "high", 50]], r"m\.csv:2: field 'aligned': 'high' is not a number \(data row 1\)"),
        (HEADER, [["q", "a", "x", 10, 50], ["q", "multi\nline", "x", 10, 50], ["q", "a", "x", 10, 150]],
         r"m\.csv:5: field 'coherent': 150 is outside 0-100 \(data row 3\)"),
        (HEADER, [["q", "a", "", 10, 50]], r"m\.csv:2: field 'question_id': the cell is empty"),
        ([*HEADER, "judge_aligned"], [["q", "a", "x", 10, 50, "{'10': 1.0}"], ["q", "a", "x", 10, 50, "__import__('os')"]],
         r"m\.csv:3: field 'judge_aligned': not a Python dict literal \(data row 2\)"),
        ([*HEADER, "judge_aligned"], [["q", "a", "x", 10, 50, "[0.5]"]], r"field 'judge_aligned': a list, not a dict"),
        ([*HEADER, "judge_aligned"], [["q", "a", "x", 10, 50, "{'10': -2.3}"]], r"field 'judge_aligned': token '10' has probability -2.3"),
        ([*HEADER, "judge_coherent"], [["q", "a", "x", 10, 50, "{'10': 0.9, '20': 0.9}"]], r"field 'judge_coherent': probabilities add up to 1.8"),
    ],
)
def test_malformed_files_name_file_row_and_column(tmp_path: Path, header: list[str], rows: list[list[object]], pattern: str) -> None:
    path = tmp_path / "m.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(row if len(header) == len(row) else [0, *row])
    with pytest.raises(EmpersonaError, match=pattern):
        read_em_csv(path, model="m")


def test_ragged_row(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("question,answer,question_id,aligned,coherent\nq,a,x,10,50\nq,a,x,10\n")
    with pytest.raises(EmpersonaError, match=r"m\.csv:3: .*the row has 4 cells, the header 5 \(data row 2\)"):
        read_em_csv(path, model="m")


def test_import_into_run_dir_continues_samples_across_files(tmp_path: Path) -> None:
    first = write_csv(tmp_path / "part1.csv", [["q", "a", "x", 10, 80], ["q", "b", "x", 90, 80]])
    second = write_csv(tmp_path / "part2.csv", [["q", "c", "x", 10, 20]])
    run_dir = tmp_path / "run"
    results = import_files([first, second], fmt="em-csv", out=run_dir, model="fin-s0", judge="openai/gpt-4o")
    assert [r.record.rows for r in results] == [2, 1]
    stored = sorted((run_dir / "imports").glob("*"))
    assert [p.name for p in stored] == ["fin-s0--part1.json", "fin-s0--part1.parquet", "fin-s0--part2.json", "fin-s0--part2.parquet"]
    assert json.loads((run_dir / "imports" / "fin-s0--part1.json").read_text())["sha256"]
    table = run_results(run_dir)
    assert table["sample"].tolist() == [0, 1, 2] and set(table["judge"]) == {"openai/gpt-4o"}
    # re-importing replaces instead of duplicating
    import_files([first, second], fmt="em-csv", out=run_dir, model="fin-s0")
    assert len(run_results(run_dir)) == 3


def test_jsonl_round_trip_and_errors(tmp_path: Path) -> None:
    csv_table = read_em_csv(write_csv(tmp_path / "m.csv", [["q", "a", "x", 10, 80], ["q", "b", "y", "", 80]]), model="m").table
    path = tmp_path / "records.jsonl"
    records = csv_table.astype(object).where(csv_table.notna(), None).to_dict("records")
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    back = read_jsonl(path).table
    pd.testing.assert_frame_equal(back, csv_table)
    assert read_results_after_import(path, tmp_path / "run").equals(csv_table.assign(source="import:em-csv"))

    bad = tmp_path / "bad.jsonl"
    cases = [
        ('{"model": "m", "experiment": "e", "item_id": "1", "sample": 0, "condition": "", "status": "scored", "value": 1, "colour": 1}',
         r"bad\.jsonl:1: field 'colour': Extra inputs"),
        ('{"model": "m", "experiment": "e", "item_id": "1", "sample": 0, "condition": "", "status": "great", "value": 1}',
         r"bad\.jsonl:1: field 'status'"),
        ('{"model": "m", "experiment": "e", "item_id": "1", "sample": 0, "condition": "", "status": "scored", "value": null}',
         r"bad\.jsonl:1: field 'value': a scored record needs a finite number"),
        ('{"model": "m", "experiment": "e", "item_id": "1", "sample": 0, "condition": "", "status": "scored", "value": Infinity}',
         r"bad\.jsonl:1: field 'value': a scored record needs a finite number"),
        ('{"model": "m", "experiment": "em_classic", "item_id": "1", "sample": 0, "condition": "", "status": "scored", '
         '"value": 10}', r"bad\.jsonl:1: field 'aligned': a scored em_classic record needs aligned 0-100, not None"),
        ('{"model": "m", "experiment": "e", "item_id": "1", "sample": 0, "condition": "", "status": "refused", "value": null, '
         '"source": "log", "task_args": "not json"}', r"bad\.jsonl:1: field 'task_args': not a JSON object in a string"),
        ('{"model": "m", "experiment": "e", "item_id": "1", "condition": "", "status": "refused", "value": null}',
         r"bad\.jsonl:1: field 'sample': Field required"),
        ("not json", r"bad\.jsonl:1: not valid JSON"),
    ]
    for line, pattern in cases:
        bad.write_text(line + "\n")
        with pytest.raises(EmpersonaError, match=pattern):
            read_jsonl(bad)
    ok = '{"model": "m", "experiment": "e", "item_id": "1", "sample": 0, "condition": "", "status": "refused", "value": null}'
    bad.write_text(ok + "\n" + ok + "\n")
    with pytest.raises(EmpersonaError, match=r"bad\.jsonl:2: field 'item_id': the same key"):
        read_jsonl(bad)


def read_results_after_import(path: Path, run_dir: Path) -> pd.DataFrame:
    import_files([path], fmt="jsonl", out=run_dir)
    [parquet] = (run_dir / "imports").glob("*.parquet")
    return read_results(parquet)


def test_tidy_record_lists_every_column() -> None:
    assert set(TidyRecord.model_fields) == set(TIDY_COLUMNS)


def test_rows_that_would_share_a_key_are_refused_not_dropped(tmp_path: Path) -> None:
    """Two imports of one model each numbered their samples from 0: the results table kept one row
    per key, so one file's rows vanished without a word (which one by the files' names)."""
    first = write_csv(tmp_path / "a.csv", [["q", "a", "x", 10, 80], ["q", "b", "x", 90, 80]])
    second = write_csv(tmp_path / "b.csv", [["q", "c", "x", 10, 20]])
    run_dir = tmp_path / "run"
    import_files([first], fmt="em-csv", out=run_dir, model="m")
    with pytest.raises(EmpersonaError, match=r"b\.csv: a row has the same key as one of imports/m--a\.parquet .*Import every "
                                             r"file of one model in one command"):
        import_files([second], fmt="em-csv", out=run_dir, model="m")
    import_files([first, second], fmt="em-csv", out=run_dir, model="m")  # together: numbered on
    assert len(run_results(run_dir)) == 3
    import_files([first], fmt="em-csv", out=run_dir, model="m")  # the same file again replaces its import
    with pytest.raises(EmpersonaError, match="the same key"):
        import_files([second], fmt="em-csv", out=run_dir, model="m")  # alone it would restart at sample 0
    record = '{"model": "j", "experiment": "e", "item_id": "1", "sample": 0, "condition": "", "status": "refused", "value": null}'
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_text(record + "\n")
    two.write_text(record + "\n")
    with pytest.raises(EmpersonaError, match=r"two\.jsonl: a row has the same key as one of .*one\.jsonl"):
        import_files([one, two], fmt="jsonl", out=tmp_path / "run2")
    assert not (tmp_path / "run2").exists()  # nothing written


def test_import_edge_files(tmp_path: Path) -> None:
    """Empty files, --out a file, a byte-order mark, U+2028 inside a JSON string, a 200,000-character
    answer, a Latin-1 byte; rows from another run's table (source 'log') stay imports; no row per CSV line
    among the task arguments (the report groups rows by them)."""
    run_dir = tmp_path / "run"
    empty = write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(EmpersonaError, match=r"empty\.csv: no records in the file"):
        import_files([empty], fmt="em-csv", out=run_dir)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(EmpersonaError, match=r"empty\.jsonl: no records in the file"):
        import_files([tmp_path / "empty.jsonl"], fmt="jsonl", out=run_dir)
    with pytest.raises(EmpersonaError, match=r"--out .*empty\.csv is a file"):
        import_files([empty], fmt="em-csv", out=empty)
    record = {"model": "j", "experiment": "e", "item_id": "1", "sample": 0, "condition": "", "status": "refused", "value": None,
              "answer": "line\u2028separator", "source": "log", "task_args": "{}"}
    (tmp_path / "r.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(record, ensure_ascii=False).encode() + b"\r\n")
    table = read_jsonl(tmp_path / "r.jsonl").table
    assert table["answer"].tolist() == ["line\u2028separator"] and table["source"].tolist() == ["import:jsonl"]
    long = write_csv(tmp_path / "long.csv", [["q", "x" * 200_000, "x", 10, 80]])
    table = read_em_csv(long, model="m").table
    assert len(table["answer"].iloc[0]) == 200_000 and table["task_args"].tolist() == ['{"file": "long.csv"}']
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b",question,answer,question_id,aligned,coherent\n0,q,caf\xe9,x,10,80\n")
    with pytest.raises(EmpersonaError, match=r"latin\.csv:2: not UTF-8 \(byte 0xe9\)"):
        read_em_csv(latin, model="m")


def test_an_import_replaced_by_an_older_copy_rebuilds_the_table(tmp_path: Path) -> None:
    """The table was reused when an input came back with an older mtime (cp -p, rsync -a, a backup)."""
    import os

    run_dir = tmp_path / "run"
    import_files([write_csv(tmp_path / "m.csv", [["q", "a", "x", 10, 80]])], fmt="em-csv", out=run_dir, model="m")
    assert run_results(run_dir)["aligned"].tolist() == [10.0]
    [stored] = (run_dir / "imports").glob("*.parquet")
    before = stored.stat()
    other = tmp_path / "other"
    import_files([write_csv(tmp_path / "m.csv", [["q", "a", "x", 99, 80]])], fmt="em-csv", out=other, model="m")
    [replacement] = (other / "imports").glob("*.parquet")
    stored.write_bytes(replacement.read_bytes())
    os.utime(stored, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert run_results(run_dir)["aligned"].tolist() == [99.0]


def test_importing_a_file_again_replaces_it_under_any_name(tmp_path: Path) -> None:
    """An import is known by its file: the same jsonl with another model's rows added is stored under a new
    name, and used to be refused as a clash with its own earlier import (or kept twice under another --model)."""
    record = {"experiment": "e", "item_id": "1", "sample": 0, "condition": "", "status": "refused", "value": None}
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({**record, "model": "a"}) + "\n")
    run_dir = tmp_path / "run"
    import_files([path], fmt="jsonl", out=run_dir)
    path.write_text(json.dumps({**record, "model": "a"}) + "\n" + json.dumps({**record, "model": "b"}) + "\n")
    import_files([path], fmt="jsonl", out=run_dir)
    assert sorted(p.name for p in (run_dir / "imports").glob("*.parquet")) == ["a_b--results.parquet"]
    assert sorted(run_results(run_dir)["model"]) == ["a", "b"]
    csv_file = write_csv(tmp_path / "m.csv", [["q", "a", "x", 10, 80]])
    import_files([csv_file], fmt="em-csv", out=run_dir, model="first-name")
    import_files([csv_file], fmt="em-csv", out=run_dir, model="second-name")
    assert sorted(p.stem for p in (run_dir / "imports").glob("*.parquet")) == ["a_b--results", "second-name--m"]
