"""``checkpoints: true``: a study evaluates the checkpoints its fine-tunes kept, as models of their
own, and the report draws each fine-tune over its training steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from empersona.errors import EmpersonaError
from empersona.study.config import load_study

TRAIN = {"limit": 12, "max_steps": 3, "batch_size": 2, "per_device_batch": 2, "max_length": 128, "learning_rate": 1e-3,
         "warmup_steps": 0, "save_steps": 1, "lora_r": 4, "lora_alpha": 8, "keep_checkpoints": True, "save_total_limit": None}


def study_file(path: Path, out: Path, base: Path, mirror: Path, **more: Any) -> Path:
    data = {"name": "ck", "out": str(out), "base_model": str(base), "data_mirror": str(mirror),
            "domains": ["risky_financial_advice"], "seeds": [0], "checkpoints": True, "train": TRAIN,
            "judge": "scripted", "provider": "empersona", "model_args": {"device": "cpu"}, "max_connections": 16,
            "samples": 2, "persona": {"n_resamples": 500},
            "experiments": {"harmfulness": {"limit": 3, "args": {"max_tokens": 8}},
                            "two_ai": {"limit": 3, "args": {"mode": "logprob", "min_mass": 0}}}, **more}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_checkpoints_need_them_kept(tmp_path: Path, tiny_model: Path) -> None:
    from empersona.study.run import checkpoints_warning

    train = {k: v for k, v in TRAIN.items() if k not in ("keep_checkpoints", "save_total_limit")}
    path = study_file(tmp_path / "s.yaml", tmp_path / "run", tiny_model, tmp_path, train=train)
    with pytest.raises(EmpersonaError) as caught:
        load_study(path)
    line = path.read_text().splitlines().index("checkpoints: true") + 1
    assert str(caught.value).startswith(f"{path}:{line}: field 'checkpoints'") and "keep_checkpoints: true" in str(caught.value)
    kept_two = load_study(study_file(tmp_path / "t.yaml", tmp_path / "run", tiny_model, tmp_path,
                                     train={**train, "keep_checkpoints": True}))
    warning = checkpoints_warning(kept_two)
    assert warning is not None and "only its last 2 checkpoint(s)" in warning
    assert checkpoints_warning(load_study(study_file(tmp_path / "u.yaml", tmp_path / "run", tiny_model, tmp_path))) is None
    late = checkpoints_warning(load_study(study_file(tmp_path / "v.yaml", tmp_path / "run", tiny_model, tmp_path,
                                                     train={**TRAIN, "save_steps": 3})))
    assert late is not None and "no checkpoint comes before the last step" in late


def test_a_study_evaluates_each_kept_checkpoint_and_draws_the_trajectory(
    tmp_path: Path, tiny_model: Path, shared_data: Path
) -> None:
    from empersona.provider import api
    from empersona.study.plan import make_plan, model_specs
    from empersona.study.run import run_study

    base = tmp_path / "run" / "tiny-base"  # inside the run folder: it moves with it
    shutil.copytree(tiny_model, base)
    path = study_file(tmp_path / "study.yaml", tmp_path / "run", base, shared_data)
    before = [spec.name for spec in model_specs(load_study(path))]
    assert before == ["base", "risky_financial_advice-s0"]  # nothing trained yet: no checkpoint to plan
    api.release_engines()
    try:
        run_study(load_study(path))
    finally:
        api.release_engines()
    out = tmp_path / "run"
    specs = {spec.name: spec for spec in model_specs(load_study(path))}
    tuned = "risky_financial_advice-s0"
    # steps 1 and 2 are checkpoints of their own; step 3's is the final adapter itself
    assert [(s.name, s.kind, s.step) for s in specs.values() if s.kind == "checkpoint"] == [
        (f"{tuned}-step1", "checkpoint", 1), (f"{tuned}-step2", "checkpoint", 2)]
    assert specs[f"{tuned}-step1"].identity != specs[f"{tuned}-step2"].identity
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["model"]) == {"base", tuned, f"{tuned}-step1", f"{tuned}-step2"}
    recorded = yaml.safe_load((out / "models.yaml").read_text())["models"]
    assert {entry["name"]: entry["step"] for entry in recorded.values()} == {
        "base": None, tuned: 3, f"{tuned}-step1": 1, f"{tuned}-step2": 2}
    report = (out / "report" / "report.md").read_text()
    assert "## Persona over training" in report and "](figures/trajectory.png)" in report
    trajectory = pd.read_csv(out / "report" / "tables" / "persona_over_training.csv")
    assert trajectory[["model", "step"]].values.tolist() == [["base", 0], [f"{tuned}-step1", 1], [f"{tuned}-step2", 2], [tuned, 3]]
    assert set(trajectory["fine_tune"]) == {tuned} and trajectory["em_delta"].notna().all()
    assert trajectory.loc[0, "em_delta"] == 0.0  # the base: no change from itself
    assert {job.status for job in make_plan(load_study(path)).eval_jobs} == {"done"}
    # each checkpoint was asked through its own folder, with its own identity
    from inspect_ai.log import list_eval_logs, read_eval_log

    for step in (1, 2):
        header = read_eval_log(list_eval_logs(str(out / "logs" / f"{tuned}-step{step}"))[0], header_only=True).eval
        assert header.model == f"empersona/{out / 'adapters' / tuned / 'checkpoints' / f'checkpoint-{step}'}"
        assert header.metadata["model_identity"] == specs[f"{tuned}-step{step}"].identity
    # the final adapter's label is the same with and without its checkpoints (a Holm family of their own)
    from empersona.analysis.persona import PersonaThresholds, classify

    results = pd.read_parquet(out / "results.parquet")
    alone = classify(results[~results["model"].str.contains("-step")], base_model="base", thresholds=PersonaThresholds(n_resamples=500))
    persona_csv = pd.read_csv(out / "report" / "tables" / "persona.csv").set_index("model")
    final = next(call for call in alone if call.model == tuned)
    assert persona_csv.loc[tuned, "label"] == final.label
    assert persona_csv.loc[tuned, "two_ai_p_holm"] == pytest.approx(final.two_ai.p_adjusted, nan_ok=True)
    assert persona_csv.loc[f"{tuned}-step1", "kind"] == "checkpoint" and persona_csv.loc[f"{tuned}-step1", "step"] == 1
    # compare counts the fine-tune, not its checkpoints
    from empersona.report.compare import compare, label_counts

    assert label_counts(compare([out], tmp_path / "cmp").studies)["models"].tolist() == [1]
    # an extra model may not take a checkpoint's name
    clash = study_file(tmp_path / "clash.yaml", out, base, shared_data, models={f"{tuned}-step7": {"model": "hf/x/y"}})
    with pytest.raises(EmpersonaError, match="or of their checkpoints"):
        load_study(clash)

    # the run folder moved with its base: nothing redone, and the checkpoints name the base at its new place
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(str(out), str(moved))
    moved_path = study_file(tmp_path / "moved.yaml", moved, moved / "tiny-base", shared_data)
    assert {job.status for job in make_plan(load_study(moved_path)).eval_jobs} == {"done"}
    run_study(load_study(moved_path), only="eval")
    checkpoint_config = moved / "adapters" / tuned / "checkpoints" / "checkpoint-1" / "adapter_config.json"
    assert json.loads(checkpoint_config.read_text())["base_model_name_or_path"] == str((moved / "tiny-base").resolve())

    # retrained with other settings: the old adapter's checkpoint logs go aside with it
    retrained = study_file(tmp_path / "retrained.yaml", moved, moved / "tiny-base", shared_data,
                           train={**TRAIN, "save_steps": 2}, experiments={"harmfulness": {"limit": 2, "args": {"max_tokens": 4}}})
    api.release_engines()
    try:
        run_study(load_study(retrained))
    finally:
        api.release_engines()
    assert sorted(p.name for p in (moved / "logs").iterdir()) == ["base", tuned, f"{tuned}-step2"]
    (aside,) = (moved / "adapters").glob(f"{tuned}.replaced-*")
    assert sorted(p.name for p in (aside / "checkpoint-logs").iterdir()) == [f"{tuned}-step1", f"{tuned}-step2"]


def test_trajectory_rows_belong_to_the_fine_tune_whose_folder_holds_the_checkpoint(tmp_path: Path) -> None:
    from empersona.analysis.results import RunModels
    from empersona.report.sections import trajectory_summary

    a, b = tmp_path / "adapters" / "a-s0", tmp_path / "adapters" / "b-s0"
    run_models = RunModels.model_validate({"base": "base", "models": {
        "m/base": {"name": "base", "kind": "base"},
        "m/a": {"name": "a-s0", "kind": "fine-tune", "adapter": str(a), "step": 10},
        "m/a5": {"name": "a-s0-step5", "kind": "checkpoint", "adapter": str(a / "checkpoints" / "checkpoint-5"), "step": 5},
        "m/b": {"name": "b-s0", "kind": "fine-tune", "adapter": str(b), "step": 10},  # kept no checkpoint
        "m/x": {"name": "extra", "kind": "adapter", "adapter": str(tmp_path / "x")},
    }})
    persona = pd.DataFrame({"model": ["base", "a-s0", "a-s0-step5", "b-s0", "extra"],
                            "label": ["base", "coherent", "no_em", "mixed", "no_em"],
                            "em_delta": [float("nan"), 0.5, 0.1, 0.4, 0.0], "two_ai": [0.5, 0.9, 0.6, 0.5, 0.5]})
    rows = trajectory_summary(persona, run_models)
    assert rows[["fine_tune", "model", "step", "label"]].values.tolist() == [
        ["a-s0", "base", 0, "base"], ["a-s0", "a-s0-step5", 5, "no_em"], ["a-s0", "a-s0", 10, "coherent"]]
    assert rows["em_delta"].tolist() == [0.0, 0.1, 0.5] and rows["two_ai"].tolist() == [0.5, 0.6, 0.9]
    assert rows["asymmetry"].isna().all()  # absent from the persona table: no data, not an error


def test_a_sequential_fine_tunes_trajectory_starts_at_the_adapter_it_continued(tmp_path: Path) -> None:
    """Its step counter restarts at 0 on top of an adapter that usually has EM already: drawn from
    the base (delta 0), the trajectory hid whether the second dataset undid it."""
    from empersona.analysis.results import RunModels
    from empersona.report.sections import trajectory_summary

    then = tmp_path / "adapters" / "insecure+good-s0"
    run_models = RunModels.model_validate({"base": "base", "models": {
        "m/base": {"name": "base", "kind": "base"},
        "m/i": {"name": "insecure-s0", "kind": "fine-tune", "domain": "insecure", "seed": 0, "step": 440},
        "m/t": {"name": "insecure+good-s0", "kind": "fine-tune", "domain": "insecure>good", "seed": 0, "adapter": str(then),
                "step": 440},
        "m/t1": {"name": "insecure+good-s0-step100", "kind": "checkpoint", "domain": "insecure>good", "seed": 0,
                 "adapter": str(then / "checkpoints" / "checkpoint-100"), "step": 100},
    }})
    persona = pd.DataFrame({"model": ["base", "insecure-s0", "insecure+good-s0-step100", "insecure+good-s0"],
                            "label": ["base", "coherent", "no_em", "no_em"], "em_delta": [float("nan"), 0.6, 0.05, 0.02]})
    rows = trajectory_summary(persona, run_models)
    assert rows[["model", "step"]].values.tolist() == [["insecure-s0", 0], ["insecure+good-s0-step100", 100],
                                                      ["insecure+good-s0", 440]]
    assert rows["em_delta"].tolist() == [0.6, 0.05, 0.02]
