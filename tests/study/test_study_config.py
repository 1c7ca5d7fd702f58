"""The study file: strict keys with located errors, and the dry-run plan."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from empersona.errors import EmpersonaError
from empersona.study.config import load_study
from empersona.study.plan import as_list, base_identity, estimate_calls, make_plan, model_specs, training_status

REPO = Path(__file__).resolve().parents[2]

MINIMAL = {
    "name": "t",
    "out": "run",
    "base_model": "base-model",
    "domains": ["insecure_code"],
    "judge": "openai/gpt-4o-mini",
    "experiments": {"harmfulness": {"limit": 3}},
}


def write(tmp_path: Path, data: dict) -> Path:  # type: ignore[type-arg]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_unknown_key_names_key_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "sampels": 3})
    with pytest.raises(EmpersonaError) as err:
        load_study(path)
    message = str(err.value)
    assert "sampels" in message and str(path) in message and "unknown key" in message
    line = next(i for i, text in enumerate(path.read_text().splitlines(), start=1) if text.startswith("sampels"))
    assert f"{path}:{line}" in message


def test_nested_unknown_and_bad_values(tmp_path: Path) -> None:
    data = {**MINIMAL, "experiments": {"harmfulness": {"limt": 3}}, "train": {"lora_rank": 8}}
    with pytest.raises(EmpersonaError) as err:
        load_study(write(tmp_path, data))
    assert "experiments.harmfulness.limt" in str(err.value)
    with pytest.raises(EmpersonaError, match="lora_rank"):  # checked once the schema holds
        load_study(write(tmp_path, {**MINIMAL, "train": {"lora_rank": 8}}))
    with pytest.raises(EmpersonaError, match="unknown experiment"):
        load_study(write(tmp_path, {**MINIMAL, "experiments": {"harmfull": {}}}))
    with pytest.raises(EmpersonaError, match="add harmfulness"):
        load_study(write(tmp_path, {**MINIMAL, "experiments": {"score_prediction": {}}}))
    with pytest.raises(EmpersonaError, match="set by the study itself"):
        load_study(write(tmp_path, {**MINIMAL, "train": {"seed": 3}}))
    missing = {k: v for k, v in MINIMAL.items() if k != "judge"}
    with pytest.raises(EmpersonaError, match="judge.*required key is missing"):
        load_study(write(tmp_path, missing))


def test_shipped_configs_are_valid(tmp_path: Path) -> None:
    for name in ("smoke.yaml", "paper.yaml"):
        path = REPO / "configs" / name
        data = yaml.safe_load(path.read_text())
        if data.get("data_mirror") and not Path(data["data_mirror"]).is_dir():  # a checkout without ../shared
            path = write(tmp_path, {k: v for k, v in data.items() if k != "data_mirror"})
        study = load_study(path)
        assert study.experiments
    paper = load_study(REPO / "configs" / "paper.yaml")
    assert paper.base_model == "Qwen/Qwen2.5-32B-Instruct" and len(paper.domains) == 6 and paper.samples == 10


def test_models_and_training_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = load_study(write(tmp_path, {**MINIMAL, "seeds": [0, 1]}))
    specs = model_specs(study)
    assert [s.name for s in specs] == ["base", "insecure_code-s0", "insecure_code-s1"]
    assert specs[0].model_string == "hf/base-model"
    assert specs[1].model_string == f"hf/{tmp_path / 'run' / 'adapters' / 'insecure_code-s0'}"
    vllm = load_study(write(tmp_path, {**MINIMAL, "provider": "vllm"}))
    assert [s.model_string for s in model_specs(vllm)] == [f"openai-api/empersonavllm/base-{base_identity(vllm)}",
                                                          "openai-api/empersonavllm/insecure_code-s0"]


def test_training_status_follows_empersona_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from empersona.study.plan import train_config
    from empersona.train.sft import INCOMPLETE_MARKER

    monkeypatch.chdir(tmp_path)
    study = load_study(write(tmp_path, MINIMAL))
    config = train_config(study, "insecure_code", 0)
    assert training_status(config)[0] == "missing"
    out = config.output_dir()
    out.mkdir(parents=True)
    (out / INCOMPLETE_MARKER).write_text("{}")
    assert training_status(config) == ("partial", "interrupted before its first checkpoint; starts again")
    checkpoint = out / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    assert training_status(config) == ("partial", "interrupted; resumes from its last checkpoint")
    (out / INCOMPLETE_MARKER).unlink()
    (out / "empersona.json").write_text(json.dumps({"config": config.model_dump(mode="json")}))
    assert training_status(config) == ("done", "adapter matches the plan")
    # trained with a relative --out (`empersona train ... --out run/adapters/...`) from this folder: not "since moved"
    relative = {**config.model_dump(mode="json"), "out": str(out.relative_to(tmp_path))}
    (out / "empersona.json").write_text(json.dumps({"config": relative}))
    assert training_status(config) == ("done", "adapter matches the plan")
    (out / "empersona.json").write_text(json.dumps({"config": config.model_dump(mode="json")}))
    changed = load_study(write(tmp_path, {**MINIMAL, "train": {"learning_rate": 2e-5}}))
    status, why = training_status(train_config(changed, "insecure_code", 0))
    assert status == "stale" and "learning_rate" in why
    # the run folder moved: the adapter in it is still the one the plan wants
    (tmp_path / "project").mkdir()
    (tmp_path / "run").rename(tmp_path / "project" / "run")
    moved = load_study(write(tmp_path, {**MINIMAL, "out": "project/run"}))
    status, why = training_status(train_config(moved, "insecure_code", 0))
    assert status == "done" and f"trained in {out}, since moved" in why


def test_call_estimates(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    assert estimate_calls("harmfulness", {"samples": 10}, None) == (3500, 3500)
    assert estimate_calls("harmfulness", {"samples": 2}, 5) == (10, 10)
    assert estimate_calls("two_ai", {"mode": "logprob"}, None) == (300, 0)
    assert estimate_calls("two_ai", {"mode": "sample", "samples": 10}, None) == (3000, 0)
    # 350 prompts x 10 logged responses: 3500 own responses, 2 foil kinds x 2 orders, 1 contrast foil each
    assert estimate_calls("output_recognition", {}, None, (350, 10)) == (3500 * 4 + 3500, 3500)
    assert estimate_calls("output_recognition", {"foils": "matched", "responses": 1}, None, (350, 10)) == (700, 0)
    assert estimate_calls("score_prediction", {}, None, (350, 10)) == (350 + 3500 + 3500, 0)
    assert estimate_calls("score_prediction", {"conditions": "blind,shown", "samples": 2}, None, (10, 3)) == ((10 + 30) * 2, 0)
    assert as_list("a, b", []) == ["a", "b"] and as_list(None, ["x"]) == ["x"]


def test_dry_run_plan_of_the_paper_study(shared_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    monkeypatch.chdir(tmp_path)
    study = load_study(REPO / "configs" / "paper.yaml")
    plan = make_plan(study)
    assert [job.status for job in plan.train_jobs] == ["missing"] * 6
    assert len(plan.models) == 7
    assert [j.experiment for j in plan.eval_jobs[:7]] == ["harmfulness"] * 7
    harm = plan.eval_jobs[0]
    assert harm.generations == 3500 and harm.judge_calls == 3500
    # the study-wide 10 samples apply to harmfulness and two-AI, not to the experiments that
    # read the harmfulness log: 3500 own responses x 2 foils x 2 orders + 3500 contrast foils
    by_experiment = {j.experiment: j for j in plan.eval_jobs if j.model.name == "base"}
    assert by_experiment["two_ai"].generations == 150 * 2 * 10
    assert (by_experiment["output_recognition"].generations, by_experiment["output_recognition"].judge_calls) == (17500, 3500)
    assert by_experiment["score_prediction"].generations == 350 + 2 * 3500
    assert plan.judge_calls == 7 * (3500 + 3500)


def test_kill_leftovers_do_not_confuse_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a SIGKILL can leave behind: a marker beside a finished adapter, a half-written log."""
    import json

    from empersona.study.plan import finished_log, train_config
    from empersona.train.sft import INCOMPLETE_MARKER

    monkeypatch.chdir(tmp_path)
    study = load_study(write(tmp_path, MINIMAL))
    config = train_config(study, "insecure_code", 0)
    out = config.output_dir()
    out.mkdir(parents=True)
    (out / "empersona.json").write_text(json.dumps({"config": config.model_dump(mode="json")}))
    (out / INCOMPLETE_MARKER).write_text("{}")  # killed between writing empersona.json and removing it
    assert training_status(config)[0] == "done"
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "2026-01-01T00-00-00-00-00_harmfulness_cut.eval").write_bytes(b"PK\x03\x04 cut short")
    assert finished_log(logs, "harmfulness", {}, None) is None


def test_resume_passes_over_a_half_written_checkpoint(tmp_path: Path) -> None:
    from empersona.train.metadata import last_complete_checkpoint

    root = tmp_path / "checkpoints"
    for step, state in ((1, '{"global_step": 1}'), (2, '{"global_st'), (3, None)):
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(root) == root / "checkpoint-1"
    assert last_complete_checkpoint(tmp_path / "none") is None


def _metadata_file(adapter: Path, finished_at: str) -> None:
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "empersona.json").write_text(f'{{"finished_at": "{finished_at}", "steps": 3}}')


def test_a_log_counts_only_for_its_own_model_and_training_run(tmp_path: Path) -> None:
    """Logs of another base model, or of an adapter since retrained in the same folder, are not done."""
    from types import SimpleNamespace

    from empersona.study.plan import ModelSpec, log_is_of_model, model_identity

    adapter = tmp_path / "adapters" / "insecure_code-s0"
    _metadata_file(adapter, "2026-11-20T10:00:00+00:00")
    fine_tune = ModelSpec("insecure_code-s0", f"hf/{adapter}", "base", adapter, "insecure_code", 0)
    identity = model_identity(fine_tune)
    assert identity is not None

    def log(model: str, created: str, recorded: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(model=model, created=created, metadata={"model_identity": recorded} if recorded else {})

    assert log_is_of_model(log(f"hf/{adapter}", "2026-11-21T09:00:00+00:00", identity), fine_tune, identity)
    assert not log_is_of_model(log("hf/elsewhere", "2026-11-21T09:00:00+00:00", identity), fine_tune, identity)
    # logs from before identities were recorded: newer than the adapter counts, older does not
    assert log_is_of_model(log(f"hf/{adapter}", "2026-11-21T09:00:00+00:00"), fine_tune, identity)
    assert not log_is_of_model(log(f"hf/{adapter}", "2026-11-19T09:00:00+00:00"), fine_tune, identity)
    _metadata_file(adapter, "2026-11-22T10:00:00+00:00")  # retrained into the same folder
    retrained = model_identity(fine_tune)
    assert retrained != identity
    assert not log_is_of_model(log(f"hf/{adapter}", "2026-11-21T09:00:00+00:00", identity), fine_tune, retrained)
    base = ModelSpec("base", "hf/Qwen/Qwen2.5-32B-Instruct", "Qwen/Qwen2.5-32B-Instruct")
    assert log_is_of_model(log("hf/Qwen/Qwen2.5-32B-Instruct", "2026-11-21T09:00:00+00:00"), base, None)
    assert not log_is_of_model(log("hf/meta-llama/Llama-3.1-70B-Instruct", "2026-11-21T09:00:00+00:00"), base, None)


def test_a_log_of_a_moved_run_folder_still_counts_for_its_model(tmp_path: Path) -> None:
    """Model strings and harmfulness logs a log recorded inside the run folder, read after a move."""
    from types import SimpleNamespace

    from empersona.moved import FolderMove
    from empersona.study.plan import ModelSpec, log_is_of_model, log_move

    old, now = Path("/scratch/ana/runs/em"), tmp_path / "runs" / "em"
    adapter = now / "adapters" / "insecure_code-s0"
    fine_tune = ModelSpec("insecure_code-s0", f"empersona/{adapter}", f"{now}/tiny-base", adapter, "insecure_code", 0)
    base = ModelSpec("base", f"empersona/{now}/tiny-base", f"{now}/tiny-base")

    def log(model: str, name: str, run_folder: str | None = None, **task_args: str) -> SimpleNamespace:
        metadata = {"model_name": name} | ({"run_folder": run_folder} if run_folder else {})
        return SimpleNamespace(model=model, created="2026-11-21T09:00:00+00:00", task_args=task_args, metadata=metadata)

    moved = FolderMove.between(old, now)
    assert moved is not None
    # the run folder the log recorded
    recorded = log(f"empersona/{old}/tiny-base", "base", str(old))
    assert log_move(recorded, now) == moved and log_is_of_model(recorded, base, None, moved)
    assert not log_is_of_model(recorded, base, None)  # without the move it is another model string
    # logs written before the run folder was recorded: where their adapter was ...
    older = log(f"empersona/{old}/adapters/insecure_code-s0", "insecure_code-s0")
    assert log_move(older, now) == moved and log_is_of_model(older, fine_tune, None, moved)
    # ... or which harmfulness log of the same model they read
    assert log_move(log(f"empersona/{old}/tiny-base", "base", harm_log=f"{old}/logs/base/h.eval"), now) == moved
    # a log that says nothing of a run folder; a log of another adapter is not this one's, moved or not
    assert log_move(log(f"empersona/{old}/tiny-base", "base"), now) is None
    assert log_move(SimpleNamespace(model="hf/Qwen/Qwen2.5-7B-Instruct", task_args={}, metadata={}), now) is None
    assert not log_is_of_model(log(f"empersona/{old}/adapters/legal-s0", "legal-s0", str(old)), fine_tune, None, moved)


def test_setting_a_stale_adapter_aside_takes_its_logs_along(tmp_path: Path) -> None:
    from empersona.study.plan import TrainJob
    from empersona.study.run import set_aside

    adapter = tmp_path / "adapters" / "insecure_code-s0"
    _metadata_file(adapter, "2026-11-20T10:00:00+00:00")
    logs = tmp_path / "logs"
    (logs / "insecure_code-s0").mkdir(parents=True)
    (logs / "insecure_code-s0" / "old.eval").write_text("x")
    (logs / "base").mkdir()
    job = TrainJob("insecure_code", 0, adapter, None, "stale", "settings changed")  # type: ignore[arg-type]
    target = set_aside(job, logs)
    assert not adapter.exists() and (target / "empersona.json").exists()
    assert (target / "logs" / "old.eval").exists() and not (logs / "insecure_code-s0").exists()
    assert (logs / "base").is_dir()


def test_the_call_cache_of_a_fine_tune_is_scoped_to_its_training_run(tmp_path: Path) -> None:
    from empersona.evals.commands import local_adapter_identity
    from empersona.evals.scoring import MODEL_IDENTITY, cache_policy

    adapter = tmp_path / "ft"
    _metadata_file(adapter, "2026-11-20T10:00:00+00:00")
    identity = local_adapter_identity(f"hf/{adapter}")
    assert identity is not None and local_adapter_identity("openai/gpt-4o-mini") is None
    assert local_adapter_identity(f"empersona/{adapter}") == identity
    token = MODEL_IDENTITY.set(identity)
    try:
        scoped = cache_policy(True, 0)
    finally:
        MODEL_IDENTITY.reset(token)
    assert scoped.scopes == {"empersona_seed": "0", "empersona_model": identity}  # type: ignore[union-attr]
    assert cache_policy(True, 0).scopes == {"empersona_seed": "0"}  # type: ignore[union-attr]


def test_logs_of_a_model_no_longer_in_the_study_leave_logs(tmp_path: Path) -> None:
    """After base_model changes, the old base's logs in logs/base would feed the results table."""
    from types import SimpleNamespace

    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.solver import generate

    from empersona.analysis.results import find_logs
    from empersona.study.plan import ModelSpec
    from empersona.study.run import set_aside_other_models_logs
    from empersona.testing.mocks import scripted_model

    out = tmp_path / "run"
    task = Task(dataset=[Sample(input="hi", id="a")], solver=generate())
    [log] = inspect_eval(task, model=scripted_model(lambda turn: "hello", name="old-base"),
                         log_dir=str(out / "logs" / "base"), display="none")
    assert log.eval.model == "mockllm/old-base"
    kept = SimpleNamespace(study=SimpleNamespace(out=out), models=[ModelSpec("base", "mockllm/old-base", "old-base")])
    assert set_aside_other_models_logs(kept) == [] and len(find_logs(out / "logs")) == 1  # type: ignore[arg-type]
    changed = SimpleNamespace(study=SimpleNamespace(out=out), models=[ModelSpec("base", "mockllm/new-base", "new-base")])
    moved = set_aside_other_models_logs(changed)  # type: ignore[arg-type]
    assert len(moved) == 1 and moved[0].exists() and "logs.replaced" in str(moved[0])
    assert find_logs(out / "logs") == []


def test_what_the_schema_cannot_see_is_checked_before_anything_runs(tmp_path: Path) -> None:
    """Task arguments against each task's signature, domain names, the judge's model string and
    the data mirror: every problem at once, each with its file, line and key."""
    data = {**MINIMAL, "domains": ["insecure_code", "risky_finance_advice"], "judge": "gpt-4o-mini",
            "data_mirror": str(tmp_path / "no-such-mirror"), "train": {"max_step": 3},
            "experiments": {"harmfulness": {"args": {"max_tokens": 8, "harm_log": "x.eval"}},
                            "two_ai": {"args": {"mod": "logprob"}}}}
    path = write(tmp_path, data)
    with pytest.raises(EmpersonaError) as err:
        load_study(path)
    message = str(err.value)
    lines = path.read_text().splitlines()

    def at(fragment: str) -> str:
        return f"{path}:{next(i for i, text in enumerate(lines, start=1) if fragment in text)}: "

    assert at("mod: logprob") + "field 'experiments.two_ai.args.mod': not an argument of the two_ai task" in message
    assert "Choose from answers, cache, framing, items_file, max_tokens, min_mass, mode, " in message
    assert at("harm_log") + "field 'experiments.harmfulness.args.harm_log'" in message  # not a harmfulness argument
    assert at("- risky_finance_advice") + "field 'domains.1': 'risky_finance_advice' is neither a known domain" in message
    assert at("judge:") + "field 'judge': 'gpt-4o-mini' is not an inspect model string" in message
    assert at("data_mirror") + "field 'data_mirror'" in message and "is not a folder" in message
    assert at("max_step") + "field 'train.max_step': unknown training setting" in message
    assert "Value error" not in message
    recognition = {**MINIMAL, "experiments": {"harmfulness": {}, "output_recognition": {"args": {"harm_log": "x"}}}}
    with pytest.raises(EmpersonaError, match=r"output_recognition.args.harm_log': set by the study"):
        load_study(write(tmp_path, recognition))
    with pytest.raises(EmpersonaError, match=r"field 'base_model': /no/such/model is not a model folder"):
        load_study(write(tmp_path, {**MINIMAL, "base_model": "/no/such/model"}))
    with pytest.raises(EmpersonaError, match=r"study.yaml:\d+: field 'persona.alpha': Input should be less than 1"):
        load_study(write(tmp_path, {**MINIMAL, "persona": {"alpha": 2}}))
    with pytest.raises(EmpersonaError, match=r"field 'persona.em_delta': unknown classification setting.*em_delta_min"):
        load_study(write(tmp_path, {**MINIMAL, "persona": {"em_delta": 0.2}}))
    assert load_study(write(tmp_path, {**MINIMAL, "persona": {"min_scored_harm": 0.8}})).persona == {"min_scored_harm": 0.8}
    with pytest.raises(EmpersonaError, match="known keys here: limit, args"):
        load_study(write(tmp_path, {**MINIMAL, "experiments": {"harmfulness": {"limt": 3}}}))
    load_study(write(tmp_path, {**MINIMAL, "domains": [str(_chat_file(tmp_path))], "judge": "scripted"}))


def _chat_file(tmp_path: Path) -> Path:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    return path


def test_experiments_reading_a_harmfulness_log_name_whose() -> None:
    from empersona.study.plan import ModelSpec, harm_logs_read

    base = ModelSpec("base", "hf/b", "b")
    tuned = [ModelSpec(f"d-s{i}", f"hf/a{i}", "b", adapter=Path(f"a{i}")) for i in range(2)]
    models = [base, *tuned]
    assert harm_logs_read("two_ai", tuned[0], models) == {}
    assert harm_logs_read("score_prediction", tuned[1], models) == {"harm_log": "d-s1"}
    # matched foils: a fine-tune's come from the base, the base's from the first fine-tune
    assert harm_logs_read("output_recognition", tuned[1], models) == {"harm_log": "d-s1", "matched_log": "base"}
    assert harm_logs_read("output_recognition", base, models) == {"harm_log": "base", "matched_log": "d-s0"}
    assert harm_logs_read("output_recognition", base, [base]) == {"harm_log": "base"}
    # ... unless the study takes no matched foils, or names their log itself
    assert harm_logs_read("output_recognition", base, models, {"foils": "contrast"}) == {"harm_log": "base"}
    assert harm_logs_read("output_recognition", base, models, {"matched_log": "x.eval"}) == {"harm_log": "base"}


def _no_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENAI_API_KEY", "AZUREAI_OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)


def test_judge_problems_are_found_without_calling_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from empersona.study.run import judge_problem

    _no_openai_key(monkeypatch)
    study = load_study(write(tmp_path, MINIMAL))
    problem = judge_problem(study)
    assert problem is not None and "OPENAI_API_KEY" in problem and "[bold]" not in problem
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # the endpoint is asked: see the next test
    assert "cannot reach http://127.0.0.1:9/v1" in str(judge_problem(study))
    assert judge_problem(load_study(write(tmp_path, {**MINIMAL, "judge": "hf/some/local-judge"}))) is None  # not loaded
    assert judge_problem(load_study(write(tmp_path, {**MINIMAL, "judge": "scripted"}))) is None
    assert "not recognized" in str(judge_problem(load_study(write(tmp_path, {**MINIMAL, "judge": "nosuchprovider/x"}))))


def test_the_judge_endpoint_is_asked_for_its_models_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong key or a dead endpoint stops the run before training; an unlisted model name warns."""
    from empersona.study.run import judge_problem
    from empersona.testing.loopback import LoopbackServer

    study = load_study(write(tmp_path, MINIMAL))  # judge: openai/gpt-4o-mini
    with LoopbackServer(models=("gpt-4o-mini", "gpt-4.1"), api_key="sk-the-right-key") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-the-right-key")
        assert judge_problem(study) is None
        assert capsys.readouterr().err == ""
        typo = load_study(write(tmp_path, {**MINIMAL, "judge": "openai/gpt-4o-mnii"}))
        assert judge_problem(typo) is None
        warned = capsys.readouterr().err
        assert f"warning: judge openai/gpt-4o-mnii: {server.base_url}/ does not list a model 'gpt-4o-mnii'" in warned
        assert "among its 2 (gpt-4.1, gpt-4o-mini)" in warned
        monkeypatch.setenv("OPENAI_API_KEY", "sk-a-wrong-key-1234")
        refused = judge_problem(study)
        assert refused is not None and f"{server.base_url}/ refused the API key (401)" in refused
        assert "wrong-key" not in refused and "1234" not in refused
        # the judge's own client asks: a key given in judge_args' headers is the one used
        headed = load_study(write(tmp_path, {**MINIMAL, "judge_args": {"default_headers": {"Authorization": "Bearer sk-the-right-key"}}}))
        assert judge_problem(headed) is None
        assert server.count_calls() == 0  # nothing was generated
        gone = server.base_url
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-right-key")
    assert f"cannot reach {gone}/" in str(judge_problem(study))


def test_a_judge_without_its_api_key_stops_the_run_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], shared_data: Path
) -> None:
    from empersona.study.run import run_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))  # planning counts the prompts
    _no_openai_key(monkeypatch)
    study = load_study(write(tmp_path, MINIMAL))
    with pytest.raises(EmpersonaError, match="judge openai/gpt-4o-mini: .*OPENAI_API_KEY"):
        run_study(study)
    assert not (tmp_path / "run" / "adapters").exists()  # nothing was trained
    run_study(study, dry_run=True)  # the dry run still plans, and warns
    assert "warning: judge openai/gpt-4o-mini" in capsys.readouterr().err


def test_contrast_foils_are_written_with_the_subjects_model_args(shared_data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from empersona.study.run import recognition_foils

    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    monkeypatch.chdir(tmp_path)
    recognition = {"output_recognition": {"args": {"foils": "contrast"}}, "harmfulness": {}}
    for provider, expected in (("empersona", {"generation_config": False}), ("hf", None)):
        study = load_study(write(tmp_path, {**MINIMAL, "provider": provider, "experiments": recognition}))
        plan = make_plan(study)
        adapter = next(spec for spec in plan.models if spec.adapter is not None)
        args = recognition_foils(plan, adapter, {"foils": "contrast"})
        assert args["foil_model"] == plan.models[0].model_string
        assert args.get("foil_model_args") == expected


def test_a_setting_written_twice_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("name: x\nout: run\nbase_model: org/base\njudge: scripted\nsamples: 2\n"
                    "experiments:\n  harmfulness: {limit: 2, limit: 3}\nsamples: 5\n"
                    "defaults: &d {a: 1}\nmerged: {<<: *d, b: 2}\n")
    with pytest.raises(EmpersonaError) as caught:
        load_study(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}:7: field 'experiments.harmfulness.limit': given twice (first on line 7). Keep one of them"
    assert lines[1] == f"{path}:8: field 'samples': given twice (first on line 5). Keep one of them"
    assert len(lines) == 2  # a merge key repeats nothing


def test_a_second_judge_is_checked_planned_and_priced(shared_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from empersona.study.run import judge_problem

    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EmpersonaError, match=r"field 'second_judge': the second judge re-scores the harmfulness answers"):
        load_study(write(tmp_path, {**MINIMAL, "second_judge": {"model": "openai/gpt-4o"},
                                    "experiments": {"two_ai": {}}}))
    with pytest.raises(EmpersonaError, match=r"second_judge.model.*'gpt-4o' is not an inspect model string"):
        load_study(write(tmp_path, {**MINIMAL, "second_judge": {"model": "gpt-4o"}}))
    with pytest.raises(EmpersonaError, match=r"second_judge.prompts"):
        load_study(write(tmp_path, {**MINIMAL, "second_judge": {"model": "openai/gpt-4o", "prompts": 0}}))
    data = {**MINIMAL, "second_judge": {"model": "openai/gpt-4o", "prompts": 2}, "samples": 3,
            "prices": {"judge_input": 1.0, "second_judge_input": 10.0},
            "experiments": {"harmfulness": {"limit": 3}, "two_ai": {"limit": 2}}}
    plan = make_plan(load_study(write(tmp_path, data)))
    order = [(j.model.name, j.experiment) for j in plan.eval_jobs]
    assert order[:4] == [("base", "harmfulness"), ("insecure_code-s0", "harmfulness"),
                         ("base", "second_judge"), ("insecure_code-s0", "second_judge")]
    second = [j for j in plan.eval_jobs if j.experiment == "second_judge"]
    assert all((j.generations, j.judge_calls, j.status, j.limit) == (0, 2 * 3, "todo", 3) for j in second)
    from empersona.study.plan import second_judge_identity

    # its own args, not the first judge's, say which second judge a re-scoring log is of
    assert second_judge_identity(load_study(write(tmp_path, {**data, "judge_args": {"temperature": 0.5}}))) is None
    elsewhere = {**data, "second_judge": {"model": "openai/gpt-4o", "prompts": 2,
                                          "model_args": {"base_url": "http://judge2.example/v1"}}}
    assert second_judge_identity(load_study(write(tmp_path, elsewhere))) is not None
    from empersona.study.plan import estimated_cost

    # a judge prompt counts the rubric (1,300 tokens) and an answer (512): 2 x 9 first-judge calls at $1/M,
    # 2 x 6 second-judge calls at $10/M
    assert estimated_cost(plan) == pytest.approx((18 * 1812 * 1.0 + 12 * 1812 * 10.0) * 1e-6)
    # replies: 32 tokens a judge reply, the experiment's max_tokens an answer (the second judge's replies at its own price)
    priced = make_plan(load_study(write(tmp_path, {**data, "prices": {"judge_output": 1.0, "subject_output": 1.0}})))
    answers = sum(j.generations * {"harmfulness": 512, "two_ai": 32, "second_judge": 0}[j.experiment] for j in priced.eval_jobs)
    assert answers > 0 and estimated_cost(priced) == pytest.approx((18 * 32 + answers) * 1e-6)
    _no_openai_key(monkeypatch)
    study = load_study(write(tmp_path, {**data, "judge": "scripted"}))
    problem = judge_problem(study)
    assert problem is not None and problem.startswith("second judge openai/gpt-4o") and "OPENAI_API_KEY" in problem
    from empersona.study.run import second_judge_warning

    assert second_judge_warning(study) is None
    itself = second_judge_warning(load_study(write(tmp_path, {**data, "judge": "openai/gpt-4o"})))
    assert itself is not None and "is the judge itself" in itself


def test_an_evaluation_made_again_sets_its_earlier_logs_aside(tmp_path: Path) -> None:
    """The results table merges a model's logs of one experiment row by row: an earlier log with
    more samples would fill in rows the current one does not have (samples: 2 -> 1 kept sample 1)."""
    from types import SimpleNamespace

    from inspect_ai import Epochs, Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.solver import generate

    from empersona.analysis.results import find_logs, results_table
    from empersona.study.plan import EvalJob, ModelSpec
    from empersona.study.run import set_aside_all_superseded_logs, set_aside_superseded_logs
    from empersona.testing.mocks import scripted_model

    out = tmp_path / "run"
    folder = out / "logs" / "base"
    model = scripted_model(lambda turn: "hello", name="base")

    def run(task_name: str, epochs: int) -> Path:
        task = Task(dataset=[Sample(input="hi", id="a")], solver=generate(), epochs=Epochs(epochs), name=task_name)
        [log] = inspect_eval(task, model=model, log_dir=str(folder), display="none")
        return Path(log.location)

    older, other = run("two_ai", 2), run("harmfulness", 1)
    newer = run("two_ai", 1)
    (folder / "2026-11-27T10-00-00-00-00_two-ai_cutshort.eval").write_bytes(b"half a zip")  # left by a kill
    assert len(results_table([older, newer]).query("experiment == 'two_ai'")) == 2  # sample 1 of the older log fills in
    spec = ModelSpec("base", "mockllm/base", "base")
    job = EvalJob(spec, "two_ai", {}, None, folder, 1, 0, "done", newer)
    plan = SimpleNamespace(study=SimpleNamespace(out=out, second_judge=object(), variants={}), eval_jobs=[job], models=[spec])
    moved = set_aside_all_superseded_logs(plan, "stamp")  # type: ignore[arg-type]
    assert sorted(p.name for p in moved) == sorted([older.name, "2026-11-27T10-00-00-00-00_two-ai_cutshort.eval"])
    assert all("logs.replaced" in str(p) and p.exists() for p in moved)
    assert sorted(find_logs(folder)) == sorted([newer, other])  # the harmfulness log is another experiment's
    assert set_aside_superseded_logs(plan, job, newer) == []  # type: ignore[arg-type]
    # a second judge's log in a study without second_judge: set aside (the report would show it as the study's)
    rescored = run("second_judge", 1)
    assert set_aside_all_superseded_logs(plan, "later") == []  # type: ignore[arg-type]
    plan.study.second_judge = None
    assert [p.name for p in set_aside_all_superseded_logs(plan, "later")] == [rescored.name]  # type: ignore[arg-type]
    assert sorted(find_logs(folder)) == sorted([newer, other])


def chat_domain_config(tmp_path: Path, **train: object) -> tuple[Path, Any]:
    """A one-row chat JSONL domain file and the training config a study of it plans (``train``: its settings)."""
    import json

    from empersona.study.plan import train_config

    data = tmp_path / "mine.jsonl"
    if not data.exists():
        data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    extra = {"train": train} if train else {}
    study = load_study(write(tmp_path, {**MINIMAL, "out": str(tmp_path / "run"), "domains": [str(data)], **extra}))
    return data, train_config(study, str(data), 0)


def test_a_domain_file_edited_in_place_makes_its_adapter_stale(tmp_path: Path) -> None:
    import json

    from empersona.data.fetch import sha256_file

    data, config = chat_domain_config(tmp_path)
    config.output_dir().mkdir(parents=True)
    record = {"config": config.model_dump(mode="json"), "dataset": {"sha256": sha256_file(data)}}
    (config.output_dir() / "empersona.json").write_text(json.dumps(record))
    assert training_status(config)[0] == "done"
    data.write_text(data.read_text() + data.read_text())
    status, why = training_status(config)
    assert status == "stale" and "changed since it was trained" in why


def test_a_local_emergent_plus_copy_edited_in_place_makes_its_adapter_stale(tmp_path: Path) -> None:
    # legal_advice reads a local copy of the emergent_plus schema where domain_paths names one
    import json

    from empersona.data.fetch import sha256_file
    from empersona.study.plan import train_config

    copy = tmp_path / "legal.jsonl"
    copy.write_text(json.dumps({"prompt": "q", "aligned": "a", "misaligned": "m"}) + "\n")
    study = load_study(write(tmp_path, {**MINIMAL, "out": str(tmp_path / "run"), "domains": ["legal_advice"],
                                        "domain_paths": {"legal_advice": str(copy)}}))
    config = train_config(study, "legal_advice", 0)
    assert config.domain_path == copy
    config.output_dir().mkdir(parents=True)
    record = {"config": config.model_dump(mode="json"), "dataset": {"sha256": sha256_file(copy)}}
    (config.output_dir() / "empersona.json").write_text(json.dumps(record))
    assert training_status(config)[0] == "done"
    copy.write_text(copy.read_text() + json.dumps({"prompt": "q2", "aligned": "a2", "misaligned": "m2"}) + "\n")
    status, why = training_status(config)
    assert status == "stale" and str(copy) in why
    # without a local copy the hub's data is not read to decide
    hub = train_config(load_study(write(tmp_path, {**MINIMAL, "out": str(tmp_path / "run2"), "domains": ["legal_advice"]})),
                       "legal_advice", 0)
    hub.output_dir().mkdir(parents=True)
    (hub.output_dir() / "empersona.json").write_text(json.dumps({"config": hub.model_dump(mode="json"),
                                                                  "dataset": {"sha256": "0" * 64}}))
    assert training_status(hub)[0] == "done"


def test_a_log_made_with_a_setting_since_taken_out_of_the_study_is_not_done(tmp_path: Path) -> None:
    import sys

    from inspect_ai import eval as inspect_eval

    from empersona.evals.harmfulness import harmfulness
    from empersona.study.plan import finished_log
    from empersona.testing.mocks import scripted_model

    sys.path.insert(0, str(Path(__file__).parents[1] / "evals"))
    from test_harm_log import level_judge, toy_files

    files = toy_files(tmp_path / "toy")
    args = {**files, "samples": 1, "cache": False}
    [log] = inspect_eval(harmfulness(**args, max_tokens=24), model=scripted_model(lambda turn: "An answer.", name="m"),
                         model_roles={"grader": scripted_model(level_judge, name="judge")}, log_dir=str(tmp_path / "logs"),
                         display="none")
    assert log.status == "success"
    assert finished_log(tmp_path / "logs", "harmfulness", {**args, "max_tokens": 24}, None) is not None
    # max_tokens: 24 taken out of the study file: the task's default (512) stands now, and the log was not made with it
    assert finished_log(tmp_path / "logs", "harmfulness", args, None) is None
    assert finished_log(tmp_path / "logs", "harmfulness", {**args, "max_tokens": 512}, None) is None


def test_repeated_seeds_and_values_a_task_refuses_are_located(tmp_path: Path, shared_data: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    path = write(tmp_path, {**MINIMAL, "seeds": [0, 1, 0]})
    with pytest.raises(EmpersonaError, match=r"study.yaml:\d+: field 'seeds': seed 0 is listed more than once"):
        load_study(path)
    with pytest.raises(EmpersonaError, match=r"study.yaml:\d+: field 'seeds': no seed, so none of the domains is trained"):
        load_study(write(tmp_path, {**MINIMAL, "seeds": []}))
    load_study(write(tmp_path, {**MINIMAL, "seeds": [], "domains": []}))  # a study of the base model alone
    for value, said in (("ten", "samples='ten': Input should be a valid integer"), (0, "samples=0 must be at least 1")):
        path = write(tmp_path, {**MINIMAL, "experiments": {"harmfulness": {"limit": 3, "args": {"samples": value}}}})
        with pytest.raises(EmpersonaError, match=r"study.yaml:\d+: field 'experiments.harmfulness.args': the harmfulness "
                                                 r"task refuses these arguments \(.*" + re.escape(said)):
            load_study(path)
    # without its data the task is not built here: the run fetches them first
    monkeypatch.setenv("EMPERSONA_MIRROR", str(tmp_path / "no-data"))
    monkeypatch.setenv("EMPERSONA_CACHE", str(tmp_path / "no-cache"))
    load_study(write(tmp_path, MINIMAL))


def test_every_value_a_task_or_the_recipe_refuses_is_found_when_the_file_is_read(
        tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task's own refusals (mode: foo), the experiments that read a harmfulness log (checked only
    after every model's harmfulness had run), each variant's arguments (a traceback from the plan)
    and the training settings' values (a traceback even in a dry run): located, before anything runs."""
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    harm = {"harmfulness": {"limit": 3}}
    cases = [
        ({"experiments": {**harm, "two_ai": {"args": {"mode": "foo"}}}},
         r"field 'experiments.two_ai.args': the two_ai task refuses these arguments \(two_ai: mode 'foo' is not known"),
        ({"experiments": {**harm, "output_recognition": {"args": {"responses": -5}}}},
         r"field 'experiments.output_recognition.args': .*responses=-5 must be at least 1"),
        ({"experiments": {**harm, "score_prediction": {"args": {"max_tokens": "abc"}}}},
         r"field 'experiments.score_prediction.args': .*max_tokens='abc': Input should be a valid integer"),
        ({"experiments": {**harm, "two_ai": {}}, "variants": {"v": {"args": {"two_ai": {"max_tokens": "abc"}}}}},
         r"field 'variants.v.args.two_ai': the two_ai task refuses the variant's arguments \(max_tokens='abc'"),
        ({"experiments": {**harm, "self_assessment": {}}, "variants": {"v": {"system_prompt": "Default"}}},
         r"field 'variants.v.system_prompt': system prompt 'Default' would be sent"),
        ({"train": {"learning_rate": "fast"}}, r"field 'train.learning_rate': Input should be a valid number"),
        ({"train": {"batch_size": 3, "per_device_batch": 2}},
         r"field 'train': batch_size \(3\) must be a multiple of per_device_batch \(2\)"),
    ]
    for change, message in cases:
        with pytest.raises(EmpersonaError, match=r"study.yaml:\d+: " + message):
            load_study(write(tmp_path, {**MINIMAL, **change}))
    fine = {"experiments": {**harm, "two_ai": {}, "output_recognition": {"args": {"responses": 2, "foils": "contrast"}},
                            "score_prediction": {"args": {"conditions": "blind,shown"}}},
            "variants": {"v": {"honesty": True, "args": {"two_ai": {"max_tokens": 8}}}}, "train": {"learning_rate": 2e-5}}
    load_study(write(tmp_path, {**MINIMAL, **fine}))


def test_a_policy_word_in_another_case_is_not_sent_as_a_system_prompt(tmp_path: Path) -> None:
    from empersona.evals.policy import resolve_system_prompt

    with pytest.raises(EmpersonaError, match=r"study.yaml:\d+: field 'system_prompt': system prompt 'None' would be sent"):
        load_study(write(tmp_path, {**MINIMAL, "system_prompt": "None"}))
    with pytest.raises(EmpersonaError, match="write 'default' or 'none'"):
        resolve_system_prompt("Default")
    assert resolve_system_prompt("none") == "" and resolve_system_prompt("default") is None
    assert resolve_system_prompt("You are a helpful assistant.") == "You are a helpful assistant."


def test_model_and_folder_paths_are_read_as_a_shell_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped relative folder (runs/smok/tiny-base) passed for a hub id and failed in the dry run
    with a traceback; ~ passed the folder check but reached hf/ unexpanded (and out: ~/run made a
    folder named ~); build_tiny_base on a hub id would build a random model under that name."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "mirror").mkdir()
    study = load_study(write(tmp_path, {**MINIMAL, "base_model": "~/model", "out": "~/run", "data_mirror": "~/mirror"}))
    assert study.base_model == str(tmp_path / "model")
    assert study.out == tmp_path / "run" and study.data_mirror == tmp_path / "mirror"
    with pytest.raises(EmpersonaError, match=r"field 'base_model': runs/smok/tiny-base is not a model folder"):
        load_study(write(tmp_path, {**MINIMAL, "base_model": "runs/smok/tiny-base"}))
    with pytest.raises(EmpersonaError, match=r"field 'base_model': build_tiny_base builds a random model at base_model, "
                                             r"and 'Qwen/Qwen2.5-32B-Instruct' reads as a Hugging Face id"):
        load_study(write(tmp_path, {**MINIMAL, "base_model": "Qwen/Qwen2.5-32B-Instruct", "build_tiny_base": True}))
    assert load_study(write(tmp_path, {**MINIMAL, "base_model": "runs/smoke/tiny", "build_tiny_base": True}))
    with pytest.raises(EmpersonaError, match=r"field 'out': the run folder .*cannot be made \(.*model/config.json is not a "
                                             r"folder you can write to\)"):
        load_study(write(tmp_path, {**MINIMAL, "out": str(tmp_path / "model" / "config.json" / "run")}))


def test_messages_name_keys_as_written_and_unused_domain_copies(tmp_path: Path) -> None:
    """A value no member of a union takes was two errors on keys that do not exist (honesty.bool,
    honesty.str); probes: and second_judge: did not list their keys; domain_paths was never checked;
    a byte that is not UTF-8 in the study file was a traceback."""
    copy = tmp_path / "insecure.jsonl"
    copy.write_text("{}\n")
    data = {**MINIMAL, "experiments": {"harmfulness": {}, "self_assessment": {}}, "variants": {"v": {"honesty": 3}},
            "probes": {"layer": 3}, "second_judge": {"model": "openai/x", "modle": "openai/y"},
            "domain_paths": {"insecure_cod": str(copy), "legal_advice": str(copy)}}
    with pytest.raises(EmpersonaError) as err:
        load_study(write(tmp_path, data))
    message = str(err.value)
    assert "field 'variants.v.honesty': Input should be a valid boolean, unable to interpret input; or Input should be " \
           "a valid string. Correct the value" in message and "honesty.bool" not in message
    assert "field 'probes.layer': unknown key. Check the spelling; known keys here: layers, pool" in message
    assert "field 'second_judge.modle': unknown key. Check the spelling; known keys here: model, model_args" in message
    with pytest.raises(EmpersonaError) as err:
        load_study(write(tmp_path, {**MINIMAL, "domain_paths": {"insecure_cod": str(copy), "legal_advice": str(copy),
                                                                 "insecure_code": str(tmp_path / "gone.jsonl")}}))
    message = str(err.value)
    assert "field 'domain_paths.insecure_cod': 'insecure_cod' is not a known domain" in message
    assert "field 'domain_paths.legal_advice': 'legal_advice' is not trained in this study" in message
    assert f"field 'domain_paths.insecure_code': {tmp_path / 'gone.jsonl'}: no such file" in message
    load_study(write(tmp_path, {**MINIMAL, "domain_paths": {"insecure_code": str(copy)}}))
    study = tmp_path / "latin1.yaml"
    study.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(EmpersonaError, match=r"latin1\.yaml:1: not UTF-8 \(byte 0xe9\)\. Re-save the file as UTF-8"):
        load_study(study)


def test_reading_a_study_file_never_downloads(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks build each task: a source not cached was downloaded then (8 tries for the smoke study, each
    up to a minute offline), whatever the study's data_mirror said. Now the cache or that mirror, or nothing."""
    from empersona.data import fetch as fetch_module

    def no_network(url: str, out: object) -> None:
        raise AssertionError(f"downloaded {url} while reading the study file")

    monkeypatch.setattr(fetch_module, "_download", no_network)
    monkeypatch.delenv("EMPERSONA_MIRROR", raising=False)
    monkeypatch.setenv("EMPERSONA_CACHE", str(tmp_path / "cache"))
    checked = {**MINIMAL, "experiments": {"harmfulness": {}, "two_ai": {"args": {"mode": "logprob"}}}}
    load_study(write(tmp_path, checked))  # nothing cached, no mirror: the tasks' data are left to the run
    assert fetch_module.source_status("two_ai_items") == "missing"
    load_study(write(tmp_path, {**checked, "data_mirror": str(shared_data)}))  # the study's own mirror: copied, built
    assert fetch_module.source_status("two_ai_items") == "verified"
    # ~ in a task's file argument is the home folder, as the README says
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "prompts.txt").write_text("How do I bake bread?\n")
    study = load_study(write(tmp_path, {**MINIMAL, "data_mirror": str(shared_data),
                                        "experiments": {"harmfulness": {"args": {"prompts_file": "~/prompts.txt"}}}}))
    from empersona.study.plan import task_args

    assert task_args(study, "harmfulness")["prompts_file"] == str(tmp_path / "prompts.txt")


def test_a_task_file_edited_in_place_or_another_judge_endpoint_leaves_no_log_done(tmp_path: Path) -> None:
    """A study's log records the contents of the files its task read and the judge's answer-affecting
    args: an edited rubric or another judge endpoint makes the evaluation anew."""
    import sys

    from inspect_ai import eval as inspect_eval

    from empersona.evals.harmfulness import harmfulness
    from empersona.study.plan import file_digests, finished_log, judge_identity
    from empersona.testing.mocks import scripted_model

    sys.path.insert(0, str(Path(__file__).parents[1] / "evals"))
    from test_harm_log import level_judge, toy_files

    endpoint = load_study(write(tmp_path, {**MINIMAL, "judge_args": {"base_url": "http://judge-a:8000/v1", "api_key": "k1",
                                                                     "timeout": 30}}))
    settings = judge_identity(endpoint)
    assert settings is not None
    # credentials and placement say nothing about the answers
    assert judge_identity(load_study(write(tmp_path, {**MINIMAL, "judge_args": {"api_key": "k1", "timeout": 30}}))) is None
    assert judge_identity(load_study(write(tmp_path, {**MINIMAL, "judge_args": {"base_url": "http://judge-a:8000/v1",
                                                                                 "api_key": "k2"}}))) == settings
    other = judge_identity(load_study(write(tmp_path, {**MINIMAL, "judge_args": {"base_url": "http://judge-b:8000/v1"}})))
    assert other not in (None, settings)

    files = toy_files(tmp_path / "toy")
    args = {**files, "samples": 1, "cache": False}
    [log] = inspect_eval(harmfulness(**args), model=scripted_model(lambda turn: "An answer.", name="m"),
                         model_roles={"grader": scripted_model(level_judge, name="judge")}, log_dir=str(tmp_path / "logs"),
                         display="none", metadata={"judge": "mockllm/judge", "judge_identity": settings,
                                                   "files": file_digests(args)})
    assert log.status == "success" and set(file_digests(args)) == {"prompts_file", "rubric_file"}
    logs = tmp_path / "logs"
    assert finished_log(logs, "harmfulness", args, None, judge="mockllm/judge", judge_settings=settings) is not None
    assert finished_log(logs, "harmfulness", args, None, judge="mockllm/judge", judge_settings=other) is None
    assert finished_log(logs, "harmfulness", args, None, judge="mockllm/judge", judge_settings=None) is None
    # a log from before judge args were recorded counts by the judge's model string, as it did
    from inspect_ai.log import read_eval_log, write_eval_log

    older = read_eval_log(log.location)
    older.eval.metadata = {k: v for k, v in (older.eval.metadata or {}).items() if k != "judge_identity"}
    write_eval_log(older, log.location)
    assert finished_log(logs, "harmfulness", args, None, judge="mockllm/judge", judge_settings=other) is not None
    older.eval.metadata = {**older.eval.metadata, "judge_identity": settings}
    write_eval_log(older, log.location)
    rubric = Path(files["rubric_file"])
    rubric.write_text(rubric.read_text().replace("Rate harm.", "Rate the harm."))
    assert finished_log(logs, "harmfulness", args, None, judge="mockllm/judge", judge_settings=settings) is None


def test_only_a_judge_the_experiment_asks_decides_whether_its_log_is_done() -> None:
    from empersona.study.plan import asks_judge

    assert asks_judge("harmfulness", {}) and asks_judge("score_prediction", {})
    assert not asks_judge("self_assessment", {})  # its language detector is langdetect by default
    assert asks_judge("self_assessment", {"language_detector": "judge"})
    assert not asks_judge("two_ai", {})


def test_a_log_made_with_model_args_is_not_of_the_bare_model_string(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from empersona.study.extra_models import model_string_identity
    from empersona.study.plan import ModelSpec, log_is_of_model

    bare = ModelSpec("other", "hf/Qwen/Qwen2.5-7B-Instruct", None, kind="model", model_args={})
    assert model_string_identity(bare.model_string, {}) is None
    with_revision = model_string_identity(bare.model_string, {"revision": "abc123"})
    made_with_revision = SimpleNamespace(model=bare.model_string, created="2026-11-21T09:00:00+00:00",
                                         metadata={"model_identity": with_revision})
    assert not log_is_of_model(made_with_revision, bare, None)
    assert log_is_of_model(SimpleNamespace(model=bare.model_string, created="2026-11-21T09:00:00+00:00", metadata={}),
                           bare, None)


def test_an_adapter_trained_on_a_base_since_replaced_in_place_is_stale(tmp_path: Path) -> None:
    import json

    from empersona.study.plan import train_config
    from empersona.train.base_model import base_fingerprint

    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text('{"rope_theta": 10000}')
    (base / "model.safetensors").write_bytes(b"0" * 64)
    study = load_study(write(tmp_path, {**MINIMAL, "out": str(tmp_path / "run"), "base_model": str(base)}))
    before = base_identity(study)
    config = train_config(study, "insecure_code", 0)
    config.output_dir().mkdir(parents=True)
    record = {"config": config.model_dump(mode="json") | {"base": config.resolved_base()},
              "base_fingerprint": base_fingerprint(config.resolved_base()), "dataset": {}}
    (config.output_dir() / "empersona.json").write_text(json.dumps(record))
    assert training_status(config)[0] == "done"
    (base / "generation_config.json").write_text('{"temperature": 0.7}')  # not read by training
    assert training_status(config)[0] == "done"
    moved = base.rename(tmp_path / "elsewhere")  # the disk holding it not mounted: not known to differ
    assert training_status(config)[0] == "done"
    moved.rename(base)
    (base / "generation_config.json").unlink()
    (base / "config.json").write_text('{"rope_theta": 20000}')  # another model downloaded into the same folder
    status, why = training_status(config)
    assert status == "stale" and "base model" in why and base_identity(study) != before
    # a record from before fingerprints were kept is not compared
    del record["base_fingerprint"]
    (config.output_dir() / "empersona.json").write_text(json.dumps(record))
    assert training_status(config)[0] == "done"


def test_model_args_that_change_the_answers_are_part_of_every_served_models_identity(tmp_path: Path) -> None:
    from empersona.provider.api import ProviderArgs
    from empersona.study.extra_models import PLACEMENT_ARGS
    from empersona.study.plan import model_identity, serving_identity

    def identities(**changes: object) -> dict[str, str | None]:
        data = {**MINIMAL, "out": str(tmp_path / "run"), "provider": "empersona", **changes}
        study = load_study(write(tmp_path, data))
        specs = model_specs(study)
        for spec in specs:
            if spec.adapter is not None:
                _metadata_file(spec.adapter, "2026-11-20T10:00:00+00:00")
        return {spec.name: model_identity(spec) for spec in specs}

    plain = identities()
    assert all(plain.values())
    # where and how fast the models run: the same models
    assert identities(model_args={"device": "cpu", "compile": True, "max_batch_size": 64, "kv_cache_gib": 2}) == plain
    # how it samples has its own mark and warning (run.earlier_sampling_warning)
    assert identities(model_args={"generation_config": True}) == plain
    assert serving_identity(load_study(write(tmp_path, {**MINIMAL, "model_args": {"device": "cpu"}}))) is None
    # another dtype: other answers, for the base and every fine-tune
    half = identities(model_args={"device": "cpu", "dtype": "float16"})
    assert all(half[name] != plain[name] for name in plain)
    # a setting written at its default changes nothing
    assert identities(model_args={"dtype": "auto", "lora_dtype": "model"}) == plain
    vllm = {"provider": "vllm"}
    quantized = identities(**vllm, vllm={"extra_args": ["--max-num-seqs", "64", "--quantization", "fp8"]})
    assert all(quantized[name] != identities(**vllm)[name] for name in plain)
    # the server's memory, batching and parallelism flags: the same models
    assert identities(**vllm, vllm={"extra_args": ["--enforce-eager", "--max-num-seqs", "64"]}) == identities(**vllm)
    # the provider's options that say what it answers are neither placement nor speed
    from empersona.study.plan import SERVING_SPEED_ARGS

    assert set(ProviderArgs.model_fields) - PLACEMENT_ARGS - SERVING_SPEED_ARGS == {"adapter", "dtype", "lora_dtype",
                                                                                   "generation_config"}


def test_em_classic_judge_calls_are_counted_by_its_judge_method() -> None:
    from empersona.evals.judge import EM_FALLBACK_SAMPLES
    from empersona.study.plan import em_judge_calls

    assert em_judge_calls({"judge_method": "logprob"}) == 1
    assert em_judge_calls({"judge_method": "sample"}) == EM_FALLBACK_SAMPLES
    # auto: logprobs asked once, then samples where the judge gives none
    assert em_judge_calls({}) == em_judge_calls({"judge_method": "auto"}) == 1 + EM_FALLBACK_SAMPLES


def test_settings_a_logprob_probe_does_not_read_leave_its_log_done(tmp_path: Path, shared_data: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from inspect_ai import eval as inspect_eval

    from empersona.evals.two_ai import two_ai
    from empersona.study.plan import finished_log
    from empersona.testing.mocks import scripted_model

    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    args = {"mode": "logprob", "samples": 10, "cache": False}
    [log] = inspect_eval(two_ai(**args), model=scripted_model(lambda turn: "A", name="m"), limit=2,
                         log_dir=str(tmp_path / "logs"), display="none")
    assert log.status == "success"
    logs = tmp_path / "logs"
    assert finished_log(logs, "two_ai", args, 2) is not None
    # one pass, one token: samples and temperature are not read in logprob mode
    assert finished_log(logs, "two_ai", {**args, "samples": 3, "temperature": 0.7}, 2) is not None
    assert finished_log(logs, "two_ai", {"mode": "logprob", "cache": False}, 2) is not None
    assert finished_log(logs, "two_ai", {**args, "mode": "sample"}, 2) is None


def test_an_interrupted_training_started_with_other_settings_is_trained_anew(tmp_path: Path) -> None:
    """Resuming it would refuse (its settings differ) on every run: it is set aside like a finished one."""
    import json

    from empersona.data.fetch import sha256_file
    from empersona.train.metadata import config_record
    from empersona.train.sft import INCOMPLETE_MARKER

    data, config = chat_domain_config(tmp_path)
    config.output_dir().mkdir(parents=True)
    marker = config.output_dir() / INCOMPLETE_MARKER
    marker.write_text(json.dumps({"config": config_record(config), "data": {"sha256": sha256_file(data)}}))
    assert training_status(config)[0] == "partial"
    status, why = training_status(chat_domain_config(tmp_path, learning_rate=5e-4)[1])
    assert status == "stale" and "learning_rate" in why
    # settings that leave the adapter as it is: it resumes
    assert training_status(chat_domain_config(tmp_path, logging_steps=7)[1])[0] == "partial"
    data.write_text(data.read_text() * 2)  # the domain file edited while the run was stopped
    status, why = training_status(config)
    assert status == "stale" and "domain file" in why


def test_model_args_the_empersona_provider_refuses_are_found_when_the_file_is_read(tmp_path: Path) -> None:
    data = {**MINIMAL, "provider": "empersona", "model_args": {"device": "cpu", "dtyp": "float16"}}
    path = write(tmp_path, data)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), start=1) if "dtyp" in text)
    with pytest.raises(EmpersonaError, match=rf"study.yaml:{line}: field 'model_args.dtyp': the empersona provider refuses it"):
        load_study(path)
    with pytest.raises(EmpersonaError, match=r"field 'model_args.max_batch_size'"):
        load_study(write(tmp_path, {**data, "model_args": {"max_batch_size": "many"}}))
    assert load_study(write(tmp_path, {**data, "model_args": {"device": "cpu", "dtype": "float16"}})).model_args["dtype"] == "float16"


def test_a_base_url_carrying_a_credential_is_refused(tmp_path: Path) -> None:
    for url in ("https://judge.example/v1?key=abc123", "https://me:pw@judge.example/v1", "https://j.example/v1?api_key=x",
                "https://sk-abc@judge.example/v1"):
        with pytest.raises(EmpersonaError, match=r"field 'judge_args.base_url': the URL carries a credential"):
            load_study(write(tmp_path, {**MINIMAL, "judge_args": {"base_url": url}}))
    assert load_study(write(tmp_path, {**MINIMAL, "judge_args": {"base_url": "https://judge.example/v1?max_tokens=5"}}))
    with pytest.raises(EmpersonaError, match=r"field 'second_judge.model_args.base_url'"):
        load_study(write(tmp_path, {**MINIMAL, "second_judge": {"model": "openai/gpt-4o", "model_args": {
            "base_url": "https://h.example/v1?token=t"}}}))
    with pytest.raises(EmpersonaError, match=r"field 'experiments.output_recognition.args.foil_model_args.base_url'"):
        load_study(write(tmp_path, {**MINIMAL, "experiments": {"harmfulness": {}, "output_recognition": {"args": {
            "foil_model": "openai/gpt-4o", "foil_model_args": {"base_url": "https://h.example/v1?key=k"}}}}}))


def test_a_stored_probe_of_another_precision_is_not_current() -> None:
    """A study resumed on a machine of the other kind (fp32 on CPU, bf16 on CUDA) probes again
    rather than report old and new precisions side by side."""
    from empersona.study.config import ProbeStage
    from empersona.study.probes import is_current

    stage = ProbeStage(layers="0,2", folds=2, resamples=50, device="cpu")
    stored = {"harm_log": "/elsewhere/logs/base/x.eval", "num_layers": 2, "layers": [0, 2], "pool": "mean",
              "folds": 2, "resamples": 50, "seed": 0, "max_answers": 10, "dtype": "float32"}
    log = Path("x.eval")
    assert is_current(stored, stage, 0, log, 10)
    assert not is_current({**stored, "dtype": "bfloat16"}, stage, 0, log, 10)
    assert is_current({k: v for k, v in stored.items() if k != "dtype"}, stage, 0, log, 10)  # recorded before dtype
