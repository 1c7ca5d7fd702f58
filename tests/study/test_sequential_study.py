"""Sequential fine-tuning in a study (docs/protocol.md section 5): a fine-tune trained on further on a
second dataset, planned after the adapter it continues, redone when that adapter is, evaluated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from empersona.errors import EmpersonaError
from empersona.study.config import load_study
from empersona.study.plan import make_plan

FIRST, THEN = "risky_financial_advice", "extreme_sports"


def study_file(tmp_path: Path, tiny_model: Path, mirror: Path, **extra: Any) -> Path:
    data = {"name": "seq", "out": str(tmp_path / "run"), "base_model": str(tiny_model), "data_mirror": str(mirror),
            "domains": [FIRST], "sequential": [{"first": FIRST, "then": THEN}],
            "train": {"limit": 8, "max_steps": 2, "batch_size": 2, "per_device_batch": 2, "max_length": 256,
                      "learning_rate": 1e-3, "warmup_steps": 0, "save_steps": 1, "lora_r": 4, "lora_alpha": 8},
            "judge": "scripted", "provider": "empersona", "model_args": {"device": "cpu"}, "samples": 1,
            "experiments": {"harmfulness": {"limit": 2, "args": {"max_tokens": 4}}}, **extra}
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("sequential", "message"), [
    ([{"first": "bad_medical_advice", "then": THEN}], "field 'sequential.0.first': 'bad_medical_advice' is not one of the study's domains"),
    ([{"first": FIRST, "then": "no_such_domain"}], "field 'sequential.0.then': 'no_such_domain' is neither a known domain"),
    ([{"first": FIRST, "then": THEN}, {"first": FIRST, "then": THEN}], "field 'sequential.1': given twice"),
    ([{"first": FIRST, "than": THEN}], "field 'sequential.0.than': unknown key"),
])
def test_a_sequential_step_that_cannot_be_trained_is_refused(tmp_path: Path, tiny_model: Path, shared_data: Path,
                                                             sequential: list[dict[str, str]], message: str) -> None:
    with pytest.raises(EmpersonaError, match=message):
        load_study(study_file(tmp_path, tiny_model, shared_data, sequential=sequential))


def test_a_study_continues_its_fine_tune_on_a_second_dataset(tmp_path: Path, tiny_model: Path, shared_data: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from empersona.provider import api
    from empersona.study.run import run_study

    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    path = study_file(tmp_path, tiny_model, shared_data)
    plan = make_plan(load_study(path))
    assert [(job.out.name, job.label, job.status) for job in plan.train_jobs] == [
        (f"{FIRST}-s0", FIRST, "missing"), (f"{FIRST}+{THEN}-s0", f"{FIRST} > {THEN}", "missing")]
    assert [(m.name, m.domain) for m in plan.models] == [
        ("base", None), (f"{FIRST}-s0", FIRST), (f"{FIRST}+{THEN}-s0", f"{FIRST}>{THEN}")]
    try:
        run_study(load_study(path), only="train")
    finally:
        api.release_engines()
    first, sequential = (tmp_path / "run" / "adapters" / name for name in (f"{FIRST}-s0", f"{FIRST}+{THEN}-s0"))
    record = json.loads((sequential / "empersona.json").read_text())
    assert record["init_adapter"]["path"] == str(first.resolve()) and record["domain"] == THEN
    assert record["init_adapter"]["empersona"] == json.loads((first / "empersona.json").read_text())
    assert all(job.status == "done" for job in make_plan(load_study(path)).train_jobs)
    # outside the study (no models.yaml), the adapter's own record names it the same way
    from empersona.analysis.results import model_info

    info = model_info(f"hf/{sequential}")
    assert (info.name, info.domain) == (f"{FIRST}>{THEN}-s0", f"{FIRST}>{THEN}")

    # interrupted (its marker keeps what it started from): it resumes only if the adapter it continues is that one still
    from empersona.train.metadata import INCOMPLETE_MARKER

    finished = (sequential / "empersona.json").read_text()
    (sequential / "empersona.json").unlink()
    marker = {"config": record["config"], "init_adapter": record["init_adapter"]}
    (sequential / INCOMPLETE_MARKER).write_text(json.dumps(marker))
    assert make_plan(load_study(path)).train_jobs[1].status == "partial"
    (sequential / INCOMPLETE_MARKER).write_text(json.dumps({**marker, "init_adapter": {"empersona": {"an": "older run"}}}))
    [_first, later] = make_plan(load_study(path)).train_jobs
    assert later.status == "stale" and "was trained again since" in later.why
    (sequential / INCOMPLETE_MARKER).unlink()
    (sequential / "empersona.json").write_text(finished)

    # the adapter it continued trained again since: it goes stale too
    meta = json.loads((first / "empersona.json").read_text())
    meta["finished_at"] = "2099-01-01T00:00:00+00:00"
    (first / "empersona.json").write_text(json.dumps(meta))
    [_first, later] = make_plan(load_study(path)).train_jobs
    assert later.status == "stale" and "was trained again since" in later.why
    # the adapter it continues is to be trained (here: deleted): it is trained after it, afresh
    import shutil

    shutil.rmtree(first)
    jobs = make_plan(load_study(path)).train_jobs
    assert [job.status for job in jobs] == ["missing", "stale"] and "which is trained first" in jobs[1].why

    try:
        run_study(load_study(path))  # trained again in order (first, then the one continuing it), evaluated, reported
    finally:
        api.release_engines()
    plan = make_plan(load_study(path))
    assert all(job.status == "done" for job in [*plan.train_jobs, *plan.eval_jobs])
    assert json.loads((sequential / "empersona.json").read_text())["init_adapter"]["empersona"] == json.loads(
        (first / "empersona.json").read_text())
    models = yaml.safe_load((tmp_path / "run" / "models.yaml").read_text())["models"]
    assert {entry["domain"] for entry in models.values()} >= {FIRST, f"{FIRST}>{THEN}"}
    assert f"| {FIRST}+{THEN}-s0 |" in (tmp_path / "run" / "report" / "report.md").read_text()


def test_adapters_that_would_share_a_folder_and_train_init_adapter_are_refused(tmp_path: Path, tiny_model: Path,
                                                                               shared_data: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.jsonl").write_text(
            json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    path = study_file(tmp_path, tiny_model, shared_data, sequential=[
        {"first": FIRST, "then": str(tmp_path / "a" / "train.jsonl")}, {"first": FIRST, "then": str(tmp_path / "b" / "train.jsonl")}])
    with pytest.raises(EmpersonaError, match="field 'sequential.1.then': its adapters would be named "
                                             f"{FIRST}\\+train-s<seed>, as those of sequential.0.then are"):
        load_study(path)
    with pytest.raises(EmpersonaError, match="field 'train.init_adapter': set by the study itself .* use sequential:"):
        load_study(study_file(tmp_path, tiny_model, shared_data, train={"init_adapter": str(tmp_path)}))
