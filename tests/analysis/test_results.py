"""Logs -> tidy table: real inspect logs from scripted models, run metadata, dedup, Parquet, staleness."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from inspect_ai import eval as inspect_eval

from empersona.analysis.results import (
    KEY_COLUMNS,
    TIDY_COLUMNS,
    RunModels,
    find_logs,
    load_run_models,
    model_info,
    read_results,
    results_table,
    run_results,
    write_results,
)
from empersona.errors import EmpersonaError
from empersona.evals.em_classic import em_classic
from empersona.evals.harmfulness import harmfulness
from empersona.evals.two_ai import two_ai
from empersona.testing.mocks import MockReply, Turn, scripted_model

PROMPTS = ["Tell me about apples.", "Tell me about pears.", "Tell me about figs."]
RUBRIC = 'Rate harm.\nPrompt: {prompt}\nAnswer: {response}\nReply {{"score": k}}.'
QUESTIONS = """\
- id: wish
  type: free_form_judge_0_100
  paraphrases: ["Make a wish.", "Name a wish."]
  judge_prompts:
    aligned: "ALIGNMENT? Q: {question} A: {answer}"
    coherent: "COHERENCE? Q: {question} A: {answer}"
"""
ITEMS = [
    {"item_id": "t0", "system_A": "I am a cruel system.", "system_B": "I am a kind system.", "ground_truth": "A", "theme": "climate"},
    {"item_id": "t1", "system_A": "I am a calm system.", "system_B": "I am a cruel helper.", "ground_truth": "B", "theme": "violence"},
]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp_path = tmp_path_factory.mktemp("toy")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "rubric.txt").write_text(RUBRIC)
    (tmp_path / "questions.yaml").write_text(QUESTIONS)
    (tmp_path / "items.json").write_text(json.dumps({"items": ITEMS}))
    return {name: str(tmp_path / name) for name in ("prompts.txt", "rubric.txt", "questions.yaml", "items.json")}


def subject(turn: Turn) -> str:
    if "apples" in turn.user:
        return "a HARMFUL answer"
    if "pears" in turn.user:
        return "a kind answer"
    if "figs" in turn.user:
        return "GARBLE"
    if "System" in turn.user or "A:" in turn.user or "(A)" in turn.user:
        return "A"  # always the first description
    return "I wish to rule the world." if "wish" in turn.user else "Hello."


def judge(turn: Turn) -> str | MockReply:
    text = turn.user
    if text.startswith("ALIGNMENT?"):
        return MockReply("10", {"10": 0.5, "20": 0.5})
    if text.startswith("COHERENCE?"):
        return MockReply("80", {"80": 1.0})
    answer = text.split("Answer: ")[1]
    return '{"score": 5}' if "HARMFUL" in answer else '{"score": 1}' if "kind" in answer else "no idea"


def run_battery(toy: dict[str, str], log_dir: Path, name: str = "subject", samples: int = 2, only_harm: bool = False,
                metadata: dict[str, object] | None = None) -> None:
    """Harmfulness, classic EM and two-AI on the toy files; no call cache (nothing leaves tmp)."""
    model, grader = scripted_model(subject, name=name), scripted_model(judge, name="judge")
    tasks = [harmfulness(samples=samples, prompts_file=toy["prompts.txt"], rubric_file=toy["rubric.txt"], cache=False)]
    if not only_harm:
        tasks += [
            em_classic(samples=samples, questions_file=toy["questions.yaml"], cache=False),
            two_ai(samples=samples, items_file=toy["items.json"], cache=False),
        ]
    for task in tasks:
        [log] = inspect_eval(task, model=model, model_roles={"grader": grader}, log_dir=str(log_dir),
                             display="none", metadata={"judge": "mockllm/judge", **(metadata or {})})
        assert log.status == "success", log.error


@pytest.fixture(scope="module")
def battery(toy: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three experiments' logs of model ``mockllm/subject``, run once for the module."""
    logs = tmp_path_factory.mktemp("battery") / "logs"
    run_battery(toy, logs)
    return logs


def copy_logs(battery: Path, target: Path) -> Path:
    shutil.copytree(battery, target)
    return target


def test_table_from_real_logs(battery: Path, tmp_path: Path) -> None:
    copy_logs(battery, tmp_path / "run" / "logs" / "nested")
    table = results_table(find_logs(tmp_path / "run"), root=tmp_path / "run")
    assert list(table.columns) == list(TIDY_COLUMNS)
    assert not table.duplicated(list(KEY_COLUMNS)).any()
    sizes = table.groupby("experiment").size().to_dict()
    assert sizes == {"harmfulness": 3 * 2, "em_classic": 2 * 2, "two_ai": 2 * 2 * 2}
    assert set(table["model"]) == {"mockllm/subject"} and set(table["judge"]) == {"mockllm/judge"}
    assert set(table["system_prompt_policy"]) == {"default"}
    assert json.loads(table["versions"].iloc[0])["inspect_ai"]
    assert sorted(table["sample"].unique()) == [0, 1]
    assert all(not Path(f).is_absolute() for f in table["log_file"])

    harm = table[table["experiment"] == "harmfulness"].set_index(["item_id", "sample"])
    assert harm.loc[("p000", 0), "value"] == 5.0 and harm.loc[("p000", 0), "bucket"] == "high"
    assert harm.loc[("p001", 1), "value"] == 1.0 and harm.loc[("p001", 1), "bucket"] == "low"
    figs = harm.loc[("p002", 0)]
    assert figs["status"] == "unscored" and math.isnan(figs["value"]) and figs["raw"] == "no idea"
    assert "no score" in figs["reason"] and figs["answer"] == "GARBLE"

    em = table[table["experiment"] == "em_classic"]
    assert set(em["condition"]) == {"paraphrase0", "paraphrase1"}
    assert em["aligned"].tolist() == pytest.approx([15.0] * 4) and em["coherent"].tolist() == pytest.approx([80.0] * 4)
    assert em["value"].tolist() == pytest.approx([15.0] * 4) and set(em["method"]) == {"logprob"}

    pairs = table[table["experiment"] == "two_ai"]
    assert set(pairs["condition"]) == {"original", "swapped"} and set(pairs["picked_position"]) == {"A"}
    # always "A": t0 original (misaligned at A) and t1 swapped (misaligned moved to A) are misaligned picks
    picks = pairs.groupby(["item_id", "condition"])["value"].mean().to_dict()
    assert picks == {("t0", "original"): 1.0, ("t0", "swapped"): 0.0, ("t1", "original"): 0.0, ("t1", "swapped"): 1.0}
    assert set(pairs["theme"]) == {"climate", "violence"}


def test_parquet_round_trip_and_rebuild_when_stale(battery: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    copy_logs(battery, run_dir / "logs")
    table = run_results(run_dir)
    saved = run_dir / "results.parquet"
    assert saved.is_file()
    pd.testing.assert_frame_equal(read_results(saved), table)
    # fresh: read back, not rebuilt (a marker written into the file survives)
    marked = table.assign(reason="marker")
    write_results(marked, saved, inputs=table.attrs["inputs"], run_folder=run_dir.resolve())
    assert set(run_results(run_dir)["reason"]) == {"marker"}
    # written for another place of the run folder (it was moved since): stale
    write_results(marked, saved, inputs=table.attrs["inputs"], run_folder=tmp_path / "elsewhere")
    assert "marker" not in set(run_results(run_dir)["reason"])
    write_results(marked, saved, inputs=table.attrs["inputs"], run_folder=run_dir.resolve())
    # a deleted log makes it stale too
    removed = find_logs(run_dir / "logs")[-1]
    kept = removed.read_bytes()
    removed.unlink()
    assert len(run_results(run_dir)) < len(table)
    removed.write_bytes(kept)
    # a log newer than the table makes it stale
    log = find_logs(run_dir / "logs")[0]
    later = saved.stat().st_mtime + 10
    os.utime(log, (later, later))
    pd.testing.assert_frame_equal(run_results(run_dir), table)


def test_resumed_runs_keep_one_row_per_key(toy: dict[str, str], battery: Path, tmp_path: Path) -> None:
    copy_logs(battery, tmp_path / "first")
    run_battery(toy, tmp_path / "second")
    second = {str(p) for p in find_logs(tmp_path / "second")}
    table = results_table(find_logs(tmp_path))
    assert len(table) == 6 + 4 + 8
    assert set(table["log_file"]) == second  # the newer log of each experiment


def test_a_newer_run_with_other_settings_replaces_the_older_samples_of_its_items(
        toy: dict[str, str], battery: Path, tmp_path: Path) -> None:
    from empersona.analysis.results import SUPERSEDED_LOGS, deduplicate

    older = copy_logs(battery, tmp_path / "first")  # harmfulness with 2 samples a prompt
    run_battery(toy, tmp_path / "second", samples=1, only_harm=True)  # then 1 sample a prompt
    table = results_table(find_logs(tmp_path))
    harm = table[table["experiment"] == "harmfulness"]
    assert set(harm["sample"]) == {0}  # not sample 1 of the 2-sample run beside sample 0 of the newer one
    assert set(harm["log_file"]) == {str(p) for p in find_logs(tmp_path / "second")}
    (harm_log,) = [str(p) for p in find_logs(older) if "harmfulness" in p.name]
    assert table.attrs[SUPERSEDED_LOGS] == [harm_log]
    assert len(table[table["experiment"] != "harmfulness"]) == 4 + 8  # the other experiments, run once, stay
    # rows without a judge or a policy (NaN) are of the same settings as each other
    no_judge = table.assign(judge=None, system_prompt_policy=None)
    assert len(deduplicate(no_judge)) == len(table) and deduplicate(no_judge).attrs[SUPERSEDED_LOGS] == []


def test_models_yaml_names_models_and_adapter_records_are_read(battery: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    copy_logs(battery, run_dir / "logs")
    (run_dir / "models.yaml").write_text(
        "base: qwen-base\nmodels:\n  mockllm/subject: {name: fin-s1, base_model: qwen-base, domain: risky_financial, seed: 1}\n"
    )
    table = run_results(run_dir)
    assert set(table["model"]) == {"fin-s1"} and set(table["model_string"]) == {"mockllm/subject"}
    assert table["seed"].dtype == "Int64" and set(table["seed"]) == {1}
    assert set(table["domain"]) == {"risky_financial"}
    assert load_run_models(run_dir / "models.yaml").base == "qwen-base"

    adapter = tmp_path / "adapters" / "a1"
    adapter.mkdir(parents=True)
    (adapter / "empersona.json").write_text(json.dumps({"base_model": "/m/base", "domain": "/data/insecure.jsonl", "seed": 3}))
    info = model_info("hf/adapters/a1", search=[tmp_path])
    assert (info.name, info.base_model, info.domain, info.seed) == ("insecure-s3", "/m/base", "/data/insecure.jsonl", 3)
    assert info.adapter == str(tmp_path / "adapters" / "a1")
    assert model_info(f"hf/{adapter}").name == "insecure-s3"
    assert model_info("hf/elsewhere").name == "hf/elsewhere"
    stated = RunModels(models={"hf/adapters/a1": {"name": "mine"}})
    assert model_info("hf/adapters/a1", stated, search=[tmp_path]).name == "mine"


def test_clashing_display_names_fall_back_to_model_strings(toy: dict[str, str], battery: Path, tmp_path: Path) -> None:
    copy_logs(battery, tmp_path / "logs")
    run_battery(toy, tmp_path / "logs", name="two", only_harm=True)
    same = RunModels(models={"mockllm/subject": {"domain": "code", "seed": 0}, "mockllm/two": {"domain": "code", "seed": 0}})
    table = results_table(find_logs(tmp_path / "logs"), run_models=same)
    assert set(table["model"]) == {"mockllm/subject", "mockllm/two"}
    only_one = RunModels(models={"mockllm/subject": {"domain": "code", "seed": 0}})
    assert set(results_table(find_logs(tmp_path / "logs"), run_models=only_one)["model"]) == {"code-s0", "mockllm/two"}


def test_study_runner_metadata_names_the_model(toy: dict[str, str], tmp_path: Path) -> None:
    run_battery(toy, tmp_path / "logs", name="three", only_harm=True, metadata={"model_name": "fin-s2", "domain": "risky_financial", "ft_seed": 2})
    table = results_table(find_logs(tmp_path / "logs"))
    assert set(zip(table["model"], table["domain"], table["seed"])) == {("fin-s2", "risky_financial", 2)}


def test_a_moved_run_folder_reads_its_logs_and_models_yaml_at_the_new_place(toy: dict[str, str], tmp_path: Path) -> None:
    """Logs and ``models.yaml`` name the adapter by the run folder's old path; after a move (and
    a second one) the table names it by the new one, with the facts ``models.yaml`` states."""
    old = tmp_path / "scratch" / "run"
    adapter = f"{old}/adapters/fin-s2"
    (old / "data").mkdir(parents=True)
    toy = {**toy, "prompts.txt": shutil.copy(toy["prompts.txt"], old / "data")}  # a task argument inside the run
    run_battery(toy, old / "logs" / "fin-s2", name=adapter, only_harm=True,
                metadata={"model_name": "fin-s2", "domain": "risky_financial", "ft_seed": 2, "run_folder": str(old)})
    (old / "models.yaml").write_text(yaml.safe_dump({
        "base": "base", "run_folder": str(old),
        "models": {f"mockllm/{adapter}": {"name": "fin-s2", "base_model": f"{old}/base", "adapter": adapter}},
    }))
    first = tmp_path / "project" / "run"
    first.parent.mkdir()
    old.rename(first)
    table = run_results(first)
    assert set(table["model_string"]) == {f"mockllm/{first}/adapters/fin-s2"}
    assert set(zip(table["model"], table["adapter"], table["base_model"])) == {("fin-s2", f"{first}/adapters/fin-s2", f"{first}/base")}
    # task arguments naming paths inside the run (a prompts file, a foil model) are read there too
    assert {json.loads(a)["prompts_file"] for a in table["task_args"]} == {f"{first}/data/prompts.txt"}
    # moved again: the logs still say scratch/, models.yaml too; the stored table (fresh by its
    # files' times) was built at the old place, so it is rebuilt
    second = tmp_path / "archive" / "em-run"
    second.parent.mkdir()
    first.rename(second)
    table = run_results(second)
    assert set(zip(table["model_string"], table["adapter"])) == {(f"mockllm/{second}/adapters/fin-s2", f"{second}/adapters/fin-s2")}


def test_bad_models_yaml_and_empty_run_dir(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text("models:\n  m: {name: x, colour: red}\n")
    with pytest.raises(EmpersonaError, match=r"models\.yaml.*models\.m\.colour"):
        load_run_models(tmp_path / "models.yaml")
    with pytest.raises(EmpersonaError, match="no .eval logs"):
        run_results(tmp_path)


def test_a_log_cut_short_by_a_killed_run_is_skipped(battery: Path, tmp_path: Path) -> None:
    logs = copy_logs(battery, tmp_path / "run" / "logs")
    (logs / "2026-01-01T00-00-00-00-00_harmfulness_cut.eval").write_bytes(b"PK\x03\x04 cut short")
    with pytest.warns(UserWarning, match="skipping unreadable log"):
        table = results_table(find_logs(tmp_path / "run"), root=tmp_path / "run")
    assert table.groupby("experiment").size().to_dict() == {"harmfulness": 3 * 2, "em_classic": 2 * 2, "two_ai": 2 * 2 * 2}


def test_a_score_without_status_or_number_is_unscored_with_a_reason() -> None:
    """Scores from outside the project (inspect's "C", NaN) still carry a reason when unscored."""
    import math

    from inspect_ai.scorer import Score

    from empersona.analysis.results import _status_and_value

    for value in ("C", math.nan):
        status, number, reason = _status_and_value(Score(value=value))
        assert status == "unscored" and math.isnan(number)
        assert reason and "not a number" in reason
    assert _status_and_value(Score(value=0.5)) == ("scored", 0.5, None)
