"""A whole study, run as a user runs it, killed with SIGKILL at random points and started again.

The killed-and-restarted study must finish with the same results as an uninterrupted one, and
the judge (a loopback server the test starts) must not be asked again for anything whose reply
had arrived: over all the restarts, at most the calls in flight at each kill are repeated.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from empersona.study.run import say
from empersona.testing.loopback import SECOND_JUDGE_NAME, LoopbackServer, scripted_judges

KEY = ["model", "experiment", "item_id", "sample", "condition"]


def study(tmp_path: Path, name: str, tiny_model: Path, mirror: Path) -> Path:
    out = tmp_path / name
    data = {
        "name": name,
        "out": str(out),
        "base_model": str(tiny_model),
        "data_mirror": str(mirror),
        "domains": ["risky_financial_advice"],
        "seeds": [0],
        "train": {"limit": 12, "max_steps": 3, "batch_size": 2, "per_device_batch": 2, "max_length": 128,
                  "learning_rate": 1e-3, "warmup_steps": 0, "save_steps": 1, "lora_r": 4, "lora_alpha": 8},
        "judge": "openai-api/loopback/judge",
        "second_judge": {"model": f"openai-api/loopback/{SECOND_JUDGE_NAME}", "prompts": 3},
        "provider": "hf",
        "model_args": {"device": "cpu", "do_sample": False},
        "max_connections": 1,
        "samples": 2,
        "experiments": {
            "harmfulness": {"limit": 4, "args": {"max_tokens": 12}},
            "self_assessment": {"limit": 4, "args": {"formats": "decision", "max_tokens": 6, "samples": 1}},
            "two_ai": {"limit": 4, "args": {"mode": "logprob"}},
            "output_recognition": {"args": {"foils": "matched", "responses": 1, "max_tokens": 4}},
            "score_prediction": {"args": {"conditions": "blind,shown", "max_tokens": 6, "samples": 1}},
        },
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start(study_file: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "empersona.cli", "run", str(study_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def results(out: Path) -> pd.DataFrame:
    table = pd.read_parquet(out / "results.parquet")
    return table[[*KEY, "status", "value"]].sort_values(KEY).reset_index(drop=True)


def test_killed_study_finishes_like_an_uninterrupted_one(
    tmp_path: Path, tiny_model: Path, shared_data: Path
) -> None:
    base_env = {**os.environ, "LOOPBACK_API_KEY": "test-key", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    rng = random.Random(int(os.environ.get("EMPERSONA_KILL_SEED", "7")))  # other kill points: set it
    with LoopbackServer(scripted_judges, latency_s=0.02, models=("judge", SECOND_JUDGE_NAME)) as server:
        env = {**base_env, "LOOPBACK_BASE_URL": server.base_url}

        reference = start(study(tmp_path, "reference", tiny_model, shared_data), {**env, "INSPECT_CACHE_DIR": str(tmp_path / "cache-a")})
        output, _ = reference.communicate(timeout=900)
        assert reference.returncode == 0, output[-3000:]
        reference_calls = server.count_calls("ok")
        reference_wall = max(c.started_s for c in server.calls)

        killed_file = study(tmp_path, "killed", tiny_model, shared_data)
        killed_env = {**env, "INSPECT_CACHE_DIR": str(tmp_path / "cache-b")}
        before = server.count_calls("ok")
        kills = 0
        for _ in range(3):
            run = start(killed_file, killed_env)
            time.sleep(rng.uniform(4.0, max(5.0, reference_wall * 0.6)))
            if run.poll() is None:
                run.send_signal(signal.SIGKILL)
                kills += 1
            run.wait(timeout=60)
        final = start(killed_file, killed_env)
        output, _ = final.communicate(timeout=900)
        assert final.returncode == 0, output[-3000:]
        killed_calls = server.count_calls("ok") - before

    assert kills >= 1, "no run was interrupted; the kill points came too late"
    # the same results, row for row
    pd.testing.assert_frame_equal(results(tmp_path / "reference"), results(tmp_path / "killed"))
    # every judge call of the reference was needed once; restarts repeat at most one in-flight call per kill
    assert reference_calls <= killed_calls <= reference_calls + kills, (reference_calls, killed_calls, kills)
    assert (tmp_path / "killed" / "report" / "report.html").exists()
    # the second judge re-scored 3 of the 4 prompts (2 samples each) of both models, once, and the report compares
    rescored = results(tmp_path / "killed").query("experiment == 'second_judge'")
    assert len(rescored) == 2 * 3 * 2 and rescored["item_id"].nunique() == 3
    assert any(c.model.endswith(SECOND_JUDGE_NAME) and c.outcome == "ok" for c in server.calls)  # counted in the bound above
    assert "## Judge agreement" in (tmp_path / "killed" / "report" / "report.md").read_text()
    assert (tmp_path / "killed" / "report" / "tables" / "judge_agreement.csv").is_file()
    assert (tmp_path / "killed" / "adapters" / "risky_financial_advice-s0" / "empersona.json").exists()


def test_a_long_progress_line_stays_one_line_and_brackets_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    message = "trained risky_financial_advice-s0: 4 steps, final loss 6.9147 " + "x" * 120 + " [bold]kept[/bold]"
    say(message)
    err = capsys.readouterr().err
    assert err == f"empersona run {message}\n"


def test_a_study_on_the_empersona_provider_serves_base_and_adapter_from_one_load(
    tmp_path: Path, tiny_model: Path, shared_data: Path
) -> None:
    """``provider: empersona``: every experiment of the base and the fine-tune, one copy of the base."""
    from empersona.provider import api
    from empersona.study.config import load_study
    from empersona.study.run import run_study

    api.release_engines()
    data = yaml.safe_load(study(tmp_path, "on-empersona", tiny_model, shared_data).read_text())
    del data["second_judge"]  # its loopback judge is not served here (the killed study's test runs it)
    data.update(
        provider="empersona",
        judge="scripted",
        model_args={"device": "cpu"},
        max_connections=16,
        live_view=True,  # inspect's live sample buffer (off by default)
        persona={"em_delta_min": 0.2, "n_resamples": 2000},  # the report's classification settings
        experiments={
            "harmfulness": {"limit": 3, "args": {"max_tokens": 8}},
            "two_ai": {"limit": 3, "args": {"mode": "logprob"}},
            "score_prediction": {"args": {"conditions": "blind", "max_tokens": 4}},
        },
    )
    path = tmp_path / "on-empersona-provider.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        run_study(load_study(path))
        loaded = list(api._SERVED.values())
        assert len(loaded) == 1, "base and adapter must share one loaded base model"
        assert loaded[0].engine.stats.rows > 0
    finally:
        api.release_engines()
    table = pd.read_parquet(tmp_path / "on-empersona" / "results.parquet")
    assert set(table["model"]) == {"base", "risky_financial_advice-s0"}
    counts = table.groupby(["model", "experiment"]).size().to_dict()
    for model in ("base", "risky_financial_advice-s0"):
        assert counts[(model, "harmfulness")] == 3 * 2  # 3 prompts x 2 samples
        assert counts[(model, "two_ai")] > 0 and counts[(model, "score_prediction")] > 0
    assert (tmp_path / "on-empersona" / "report" / "report.html").exists()
    configuration = (tmp_path / "on-empersona" / "report" / "report.md").read_text()
    assert "em_delta_min=0.2" in configuration and "2000 resamples" in configuration
    assert (tmp_path / "on-empersona" / "study.yaml").read_text() == path.read_text()  # kept with the results
    assert "Study file: `study.yaml` in the run folder" in configuration
    assert "provider battery; seeds per-sample" in configuration and "generation_config=False" in configuration
    from inspect_ai.log import read_eval_log

    logs = sorted((tmp_path / "on-empersona" / "logs").rglob("*.eval"))
    assert logs and all(read_eval_log(str(log), header_only=True).eval.config.log_realtime is True for log in logs)
    # what the finished study counts as done: another judge re-judges; a stale adapter re-evaluates
    from empersona.study.plan import make_plan

    def statuses(**changes: object) -> dict[tuple[str, str], str]:
        changed = tmp_path / "changed.yaml"
        changed.write_text(yaml.safe_dump({**data, **changes}, sort_keys=False))
        return {(job.model.name, job.experiment): job.status for job in make_plan(load_study(changed)).eval_jobs}

    def todo(**changes: object) -> set[tuple[str, str]]:
        return {job for job, status in statuses(**changes).items() if status == "todo"}

    tuned = "risky_financial_advice-s0"
    assert todo() == set() and len(statuses()) == 6
    # finished logs sampled otherwise than a run would now sample are kept, and said so
    from inspect_ai.log import read_eval_log, write_eval_log

    from empersona.study.run import earlier_sampling_warning

    plan = make_plan(load_study(path))
    assert earlier_sampling_warning(plan) is None
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(yaml.safe_dump({**data, "model_args": {"device": "cpu", "generation_config": True}}, sort_keys=False))
    warning = earlier_sampling_warning(make_plan(load_study(defaults)))
    assert warning is not None and warning.startswith("warning: 6 finished evaluation(s)")
    assert "provider sampling 'battery', now 'model defaults'" in warning
    job = next(j for j in plan.eval_jobs if j.model.name == "base" and j.experiment == "two_ai")
    assert job.log is not None
    old_log = read_eval_log(str(job.log))
    old_log.eval.metadata = {k: v for k, v in (old_log.eval.metadata or {}).items() if k != "sampling"}  # before the mark
    write_eval_log(old_log, str(job.log))
    warning = earlier_sampling_warning(make_plan(load_study(path)))
    assert warning is not None and "1 finished evaluation(s)" in warning and "base/two_ai (one seed for every sample)" in warning
    assert todo() == set()  # kept, not redone
    both = {(m, e) for m in ("base", tuned) for e in ("harmfulness", "score_prediction")}
    assert todo(judge="openai-api/loopback/another-judge") == both  # two_ai has no judge
    assert todo(train={**data["train"], "max_steps": 2}) == {(tuned, e) for e in ("harmfulness", "two_ai", "score_prediction")}
    # a new harmfulness run invalidates the score predictions that read the old one
    rewritten = {**data["experiments"], "harmfulness": {"limit": 3, "args": {"max_tokens": 9}}}
    assert todo(experiments=rewritten) == both
    # ... also once the new harmfulness logs are written (its readers name the log they read)
    only_harm = tmp_path / "only-harm.yaml"
    only_harm.write_text(yaml.safe_dump({**data, "experiments": {"harmfulness": rewritten["harmfulness"]}}, sort_keys=False))
    try:
        run_study(load_study(only_harm))
    finally:
        api.release_engines()
    assert todo(experiments=rewritten) == {("base", "score_prediction"), (tuned, "score_prediction")}


def test_a_moved_run_folder_keeps_its_adapters_and_results(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    """A project folder (base and run folder) moved elsewhere: nothing is trained or evaluated
    again, and a new experiment runs on the moved adapters."""
    import json
    import shutil

    from empersona.analysis.results import find_logs
    from empersona.provider import api
    from empersona.study.config import load_study
    from empersona.study.plan import Plan, make_plan
    from empersona.study.run import run_study

    data = yaml.safe_load(study(tmp_path, "moving", tiny_model, shared_data).read_text())
    data.update(provider="empersona", judge="scripted", model_args={"device": "cpu"}, max_connections=16,
                second_judge={"model": "scripted", "prompts": 1})
    experiments = {"harmfulness": {"limit": 2, "args": {"max_tokens": 6}},
                   "score_prediction": {"args": {"conditions": "blind", "max_tokens": 4}}}
    project = tmp_path / "project"
    shutil.copytree(tiny_model, project / "base")

    def study_file(folder: Path, **more: dict[str, object]) -> Path:
        path = tmp_path / "moving.yaml"
        path.write_text(yaml.safe_dump({**data, "out": str(folder / "run"), "base_model": str(folder / "base"),
                                        "experiments": {**experiments, **more}}, sort_keys=False))
        return path

    def run(path: Path) -> Plan:
        try:
            return run_study(load_study(path))
        finally:
            api.release_engines()

    run(study_file(project))
    before = {log.relative_to(project) for log in find_logs(project / "run" / "logs")}
    assert len(before) == 6  # two models x (two experiments and the second judge's re-scoring)
    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    project.rename(moved)

    plan = make_plan(load_study(study_file(moved)))
    assert [job.status for job in plan.train_jobs] == ["done"]
    assert all(job.status == "done" for job in plan.eval_jobs), [(j.model.name, j.experiment, j.status) for j in plan.eval_jobs]
    run(study_file(moved, two_ai={"limit": 2, "args": {"mode": "logprob"}}))
    adapter = moved / "run" / "adapters" / "risky_financial_advice-s0"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(moved / "base")
    after = {log.relative_to(moved) for log in find_logs(moved / "run" / "logs")}
    assert before < after and len(after - before) == 2  # two_ai on the base and the moved adapter, nothing else
    assert not (moved / "run" / "logs.replaced").exists()
    # the logs from before the move and after it are of the same two models
    table = pd.read_parquet(moved / "run" / "results.parquet")
    assert set(table["model"]) == {"base", "risky_financial_advice-s0"}
    assert set(table["model_string"]) == {f"empersona/{moved / 'base'}", f"empersona/{adapter}"}
    assert set(table.loc[table["experiment"] == "two_ai", "model"]) == {"base", "risky_financial_advice-s0"}
    # moved back where it was trained: the adapters' base field (pointed at the second place) follows again
    moved.rename(project)
    run(study_file(project, two_ai={"limit": 1, "args": {"mode": "logprob"}}))
    adapter = project / "run" / "adapters" / "risky_financial_advice-s0"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(project / "base")
    # two_ai made again on one item: its two earlier logs (two items) are set aside, not merged with the new ones
    assert len(find_logs(project / "run" / "logs")) == len(after)
    assert len(find_logs(project / "run" / "logs.replaced")) == 2


@pytest.mark.parametrize("unreadable", [3, 6], ids=["outage-over", "fails-for-good"])
def test_judge_calls_that_failed_are_asked_again_by_the_next_run(tmp_path: Path, tiny_model: Path, shared_data: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, unreadable: int) -> None:
    """An API outage leaves unscored samples in a finished log ("judge call failed"): the next run
    makes the evaluation again and asks the judge for those samples only; a call that fails again
    is kept, and the runs after that ask nothing."""
    from empersona.provider import api
    from empersona.study.config import load_study
    from empersona.study.plan import make_plan
    from empersona.study.run import run_study

    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump({
        "name": "outage", "out": str(tmp_path / "run"), "base_model": str(tiny_model), "data_mirror": str(shared_data),
        "domains": [], "judge": "openai-api/loopback/judge", "provider": "empersona", "model_args": {"device": "cpu"},
        "max_connections": 1, "samples": 2, "experiments": {"harmfulness": {"limit": 3, "args": {"max_tokens": 4}}},
    }))
    # three unreadable bodies in a row fail one judge call (asked 1 + 2 times); the first run makes 1 + 5 calls, so
    # with "fails-for-good" the asking again in the second run meets three more
    schedule = ["malformed"] * 3 + ([None] * 5 + ["malformed"] * 3 if unreadable == 6 else [])
    with LoopbackServer(scripted_judges, schedule=schedule, models=("judge",)) as server:
        monkeypatch.setenv("LOOPBACK_BASE_URL", server.base_url)
        monkeypatch.setenv("LOOPBACK_API_KEY", "test-key")
        try:
            run_study(load_study(path))
            first = results(tmp_path / "run")
            assert (first["status"] == "unscored").sum() == 1
            [job] = make_plan(load_study(path)).eval_jobs
            assert job.status == "todo" and job.note.startswith("1 sample(s) of ") and job.reask == 1
            calls = len(server.calls)
            run_study(load_study(path))
            assert len(server.calls) - calls == (1 if unreadable == 3 else 3)  # the failed call only (and its retries)
            [job] = make_plan(load_study(path)).eval_jobs
            assert job.status == "done"
            assert ("failed again when asked again" in job.note) == (unreadable == 6)
            calls = len(server.calls)
            run_study(load_study(path))
            assert len(server.calls) == calls  # nothing asked: settled, or kept after failing again
        finally:
            api.release_engines()
    again = results(tmp_path / "run")
    assert len(again) == 6 and (again["status"] == "scored").sum() == (6 if unreadable == 3 else 5)
    scored = first["status"] == "scored"
    pd.testing.assert_frame_equal(first[scored].reset_index(drop=True), again[scored.to_numpy()].reset_index(drop=True))
    assert len(list((tmp_path / "run" / "logs.replaced").rglob("*.eval"))) == 1  # the log with the gap, set aside


def test_a_study_probes_its_models_once_and_reports_them(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    """``probes:`` runs `empersona probe` on every model with local weights after the battery, at one
    count per class for all, once; the report shows them."""
    from empersona.errors import EmpersonaError
    from empersona.provider import api
    from empersona.study.config import load_study
    from empersona.study.run import StudyIncomplete, run_study

    data = {"name": "probing", "out": str(tmp_path / "run"), "base_model": str(tiny_model), "data_mirror": str(shared_data),
            "domains": [], "judge": "scripted", "provider": "empersona", "model_args": {"device": "cpu"},
            "samples": 2, "experiments": {"harmfulness": {"limit": 8, "args": {"max_tokens": 6}}},
            "probes": {"folds": 2, "min_answers": 2, "resamples": 50, "layers": "0,2"}}
    path = tmp_path / "probing.yaml"
    path.write_text(yaml.safe_dump({**data, "experiments": {"two_ai": {}}}))
    with pytest.raises(EmpersonaError, match="field 'probes': the probes read each model's harmfulness answers"):
        load_study(path)
    path.write_text(yaml.safe_dump(data))
    try:
        run_study(load_study(path))
        from inspect_ai.model import _model as inspect_model

        # the battery's models are let go before the probe processes load theirs
        assert not any(type(m.api).__name__ == "EmpersonaAPI" for m in inspect_model._models.values())
        result = tmp_path / "run" / "probes" / "base" / "probe.json"
        made = result.stat().st_mtime_ns
        settings = json.loads(result.read_text())["settings"]
        assert settings["layers"] == [0, 2] and settings["folds"] == 2 and settings["max_answers"] >= 2
        ghost = tmp_path / "run" / "probes" / "removed-model"
        ghost.mkdir()
        (ghost / "probe.json").write_text("{}")
        kept = {name: (tmp_path / "run" / name).stat().st_mtime_ns for name in ("models.yaml", "results.parquet")}
        run_study(load_study(path))
        assert result.stat().st_mtime_ns == made  # probed once
        # nothing new: models.yaml is not written again, so the results table is not rebuilt from every log
        assert {name: (tmp_path / "run" / name).stat().st_mtime_ns for name in kept} == kept
        assert not ghost.exists() and list((tmp_path / "run" / "probes.replaced").glob("*/removed-model"))
        path.write_text(yaml.safe_dump({**data, "probes": {**data["probes"], "resamples": 60}}))
        run_study(load_study(path))
        assert result.stat().st_mtime_ns != made and json.loads(result.read_text())["settings"]["resamples"] == 60
    finally:
        api.release_engines()
    path.write_text(yaml.safe_dump({**data, "probes": {**data["probes"], "layers": "banana"}}))
    with pytest.raises(EmpersonaError, match=r"field 'probes.layers': .*layers 'banana': cannot read 'banana'"):
        load_study(path)
    path.write_text(yaml.safe_dump({**data, "probes": {"folds": 3, "max_answers": 2}}))
    with pytest.raises(EmpersonaError, match="max_answers 2 is below folds 3"):
        load_study(path)
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "## Activation probes" in report and "figures/probe_cosines.png" in report
    table = pd.read_csv(tmp_path / "run" / "report" / "tables" / "probe_layers.csv")
    assert list(table["layer"]) == [0, 2] and set(table["model"]) == {"base"}
    # min_answers raised above the base's count: it is now skipped, where "nothing to do" kept it
    count = json.loads(result.read_text())["settings"]["max_answers"]
    path.write_text(yaml.safe_dump({**data, "probes": {**data["probes"], "resamples": 60, "min_answers": count + 1}}))
    try:
        run_study(load_study(path))
    finally:
        api.release_engines()
    assert not result.exists() and len(list((tmp_path / "run" / "probes.replaced").glob("*/base/probe.json"))) == 1
    # a probe that fails (a layer past the tiny model's depth) is listed with what did not finish: exit code 2
    path.write_text(yaml.safe_dump({**data, "probes": {**data["probes"], "resamples": 70, "layers": "0,99"}}))
    try:
        with pytest.raises(StudyIncomplete, match=r"1 probe run\(s\) failed:\n  probe: base: the probe process exited"):
            run_study(load_study(path))
    finally:
        api.release_engines()


def test_a_failed_evaluation_leaves_the_others_to_finish(tmp_path: Path, tiny_model: Path, shared_data: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The fine-tune's harmfulness run fails partway (one generation raises, as an out-of-memory
    error would): the study runs every other evaluation, does not start the one that reads the
    failed log, writes the report of what finished (naming the unfinished log), and ends with an
    error naming both. Run again, it does those two only."""
    from empersona.provider import api
    from empersona.study.config import load_study
    from empersona.study.plan import make_plan
    from empersona.study.run import StudyIncomplete, run_study

    data = yaml.safe_load(study(tmp_path, "failing", tiny_model, shared_data).read_text())
    del data["second_judge"]
    data.update(provider="empersona", judge="scripted", model_args={"device": "cpu"}, max_connections=1,
                experiments={"harmfulness": {"limit": 3, "args": {"max_tokens": 5}},
                             "two_ai": {"limit": 2, "args": {"mode": "logprob"}},
                             "score_prediction": {"args": {"conditions": "blind", "max_tokens": 4}}})
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    tuned = "risky_financial_advice-s0"
    real = api.EmpersonaAPI.generate
    tuned_calls = 0

    async def fails_from_the_third_answer(self: api.EmpersonaAPI, *args: Any, **kwargs: Any) -> Any:
        nonlocal tuned_calls
        if tuned in self.model_name:
            tuned_calls += 1
            if tuned_calls >= 3 and kwargs["config"].max_tokens == 5:  # harmfulness's answers (and inspect's retries)
                raise RuntimeError("out of memory (injected)")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(api.EmpersonaAPI, "generate", fails_from_the_third_answer)
    api.release_engines()
    try:
        with pytest.raises(StudyIncomplete) as failed:
            run_study(load_study(path))
        message = str(failed.value)
        assert message.startswith("1 evaluation(s) did not finish, 1 evaluation(s) not started:")
        assert f"failed: harmfulness on {tuned}: error (RuntimeError('out of memory (injected)'))" in message
        assert f"not started: score_prediction on {tuned}: reads the harmfulness log of {tuned}, which did not finish" in message
        todo = {(job.model.name, job.experiment) for job in make_plan(load_study(path)).eval_jobs if job.status == "todo"}
        assert todo == {(tuned, "harmfulness"), (tuned, "score_prediction")}  # the base's and the tuned two_ai finished
        table = results(tmp_path / "failing")
        kept = len(table[(table["model"] == tuned) & (table["experiment"] == "harmfulness")])
        assert 0 < kept < 3 * 2  # the answers before the failure
        report = (tmp_path / "failing" / "report" / "report.md").read_text()
        assert "Evaluations that did not finish (1)" in report and f"(error, {kept} rows)" in report
        from empersona.analysis.results import UNFINISHED_LOGS, run_results

        stored = run_results(tmp_path / "failing")  # read back from results.parquet: a later report says it too
        assert [(u["status"], u["rows"]) for u in stored.attrs[UNFINISHED_LOGS]] == [("error", kept)]
        monkeypatch.setattr(api.EmpersonaAPI, "generate", real)
        logs = {log.name for log in (tmp_path / "failing" / "logs").rglob("*.eval")}
        run_study(load_study(path))  # the rest, and nothing else
    finally:
        api.release_engines()
    made = {(log.parent.name, log.name.split("_")[1]) for log in (tmp_path / "failing" / "logs").rglob("*.eval")
            if log.name not in logs}
    assert made == {(tuned, "harmfulness"), (tuned, "score-prediction")}
    assert {job.status for job in make_plan(load_study(path)).eval_jobs} == {"done"}
    table = results(tmp_path / "failing")
    assert len(table[(table["model"] == tuned) & (table["experiment"] == "harmfulness")]) == 3 * 2
    assert "did not finish" not in (tmp_path / "failing" / "report" / "report.md").read_text()


@pytest.mark.parametrize("fail_fast", [False, True], ids=["in-a-row", "fail-fast"])
def test_evaluations_stop_after_failures_in_a_row_or_at_the_first_with_fail_fast(
        tmp_path: Path, tiny_model: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch, fail_fast: bool) -> None:
    """Failures one after another point at a cause no single model has (the server, the disk): the
    study stops evaluating after `STOP_AFTER_IN_A_ROW` of them (an evaluation not started for a
    failed harmfulness log does not count), and `empersona run --fail-fast` at the first."""
    from typer.testing import CliRunner

    from empersona.cli import app
    from empersona.evals import commands
    from empersona.study.run import STOP_AFTER_IN_A_ROW, StudyIncomplete

    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({
        "name": "broken", "out": str(tmp_path / "run"), "base_model": str(tiny_model), "data_mirror": str(shared_data),
        "domains": [], "judge": "scripted", "provider": "empersona", "model_args": {"device": "cpu"},
        "experiments": {name: {"limit": 2} for name in ("harmfulness", "score_prediction", "two_ai", "self_assessment",
                                                       "output_recognition")},
    }))
    asked: list[str] = []

    def disk_full(experiment: str, *args: object, **kwargs: object) -> None:
        asked.append(experiment)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(commands, "run_experiment", disk_full)
    result = CliRunner().invoke(app, ["run", str(path), *(["--fail-fast"] if fail_fast else [])])
    assert isinstance(result.exception, StudyIncomplete)
    message = str(result.exception)
    if fail_fast:
        assert asked == ["harmfulness"]
        assert "stopped at the first failure (--fail-fast); 4 more not reached" in message
    else:  # score prediction and output recognition read the failed harmfulness log: not started, not counted
        assert len(asked) == STOP_AFTER_IN_A_ROW == 3 and "score_prediction" not in asked
        assert "stopped after 3 failures in a row" in message and "OSError: [Errno 28] No space left on device" in message
    assert not (tmp_path / "run" / "report").exists()


def test_a_failed_training_leaves_the_other_adapters_to_finish(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    """One domain's data is broken: its adapter (and a sequential one that continues it) does not
    train, the other adapter and the base are trained and evaluated, the broken ones' evaluations
    are not started, the report is written, and the run ends naming them. Mended and run again,
    it trains and evaluates those only."""
    from empersona.provider import api
    from empersona.study.config import load_study
    from empersona.study.plan import make_plan
    from empersona.study.run import StudyIncomplete, run_study

    bad = tmp_path / "broken_domain.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a question"}]}\n' * 12)  # no answer to learn
    data = yaml.safe_load(study(tmp_path, "half", tiny_model, shared_data).read_text())
    del data["second_judge"]
    data.update(provider="empersona", judge="scripted", model_args={"device": "cpu"}, max_connections=8,
                domains=["risky_financial_advice", str(bad)],
                sequential=[{"first": str(bad), "then": "risky_financial_advice"}],
                experiments={"harmfulness": {"limit": 2, "args": {"max_tokens": 4}},
                             "two_ai": {"limit": 2, "args": {"mode": "logprob"}}})
    path = tmp_path / "half.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    broken = {"broken_domain-s0", "broken_domain+risky_financial_advice-s0"}
    api.release_engines()
    try:
        with pytest.raises(StudyIncomplete) as failed:
            run_study(load_study(path))
        message = str(failed.value)
        assert message.startswith("2 training run(s) did not finish, 4 evaluation(s) not started:")
        assert f"training: broken_domain-s0: {bad}" in message  # the data's own error: file, line, field
        assert ("training: broken_domain+risky_financial_advice-s0: not started, it continues broken_domain-s0, "
                "which did not train") in message
        assert "not started: two_ai on broken_domain-s0: its adapter did not train" in message
        plan = make_plan(load_study(path))
        assert {job.out.name for job in plan.train_jobs if job.status != "done"} == broken
        assert {job.model.name for job in plan.eval_jobs if job.status == "todo"} == broken
        table = results(tmp_path / "half")
        assert set(table["model"]) == {"base", "risky_financial_advice-s0"}
        report = (tmp_path / "half" / "report" / "report.md").read_text()
        assert "broken_domain-s0: no results at all" in report
        good = json.loads((tmp_path / "half" / "adapters" / "risky_financial_advice-s0" / "empersona.json").read_text())
        bad.write_text('{"messages": [{"role": "user", "content": "a question"}, {"role": "assistant", "content": "an answer"}]}\n' * 12)
        logs = {p.name for p in (tmp_path / "half" / "logs").rglob("*.eval")}
        run_study(load_study(path))
    finally:
        api.release_engines()
    assert json.loads((tmp_path / "half" / "adapters" / "risky_financial_advice-s0" / "empersona.json").read_text()) == good
    new = {p.parent.name for p in (tmp_path / "half" / "logs").rglob("*.eval") if p.name not in logs}
    assert new == broken  # the mended models' evaluations only
    assert {job.status for job in make_plan(load_study(path)).eval_jobs} == {"done"}


def test_an_evaluation_an_interrupt_cancelled_stops_the_study_as_an_interrupt() -> None:
    """The stop's error carries ``cancelled``, so `empersona run` exits 130 (or 143), not 2."""
    from empersona.study.run import StudyIncomplete, Unfinished

    unfinished = Unfinished()
    with pytest.raises(StudyIncomplete) as stopped:
        unfinished.failed(unfinished.evaluations, "two-AI on base: cancelled", 3, cancelled=True)
    assert stopped.value.cancelled and "interrupted; 3 more not reached" in str(stopped.value)
    unfinished.failed(unfinished.evaluations, "harmfulness on base: out of memory", 2)  # one failure: the run goes on
    assert unfinished.evaluations[-1] == "harmfulness on base: out of memory"


def test_sigterm_stops_a_training_as_ctrl_c_does(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    """A scheduler's SIGTERM at any stage (here: training, no vLLM server) ends `empersona run` as an
    interrupt, 143, with the interrupted training left to resume, not killed outright mid-write."""
    from empersona.train.sft import INCOMPLETE_MARKER

    path = study(tmp_path, "stopped", tiny_model, shared_data)
    data = yaml.safe_load(path.read_text())
    data["train"].update({"max_steps": 100000, "save_steps": 5})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "empersona.cli", "run", str(path), "--only", "train"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert run.stdout is not None
    adapter = tmp_path / "stopped" / "adapters" / "risky_financial_advice-s0"
    seen = []
    for line in run.stdout:
        seen.append(line)
        if "training 1/1" in line:
            break
    deadline = time.monotonic() + 120
    while not list((adapter / "checkpoints").glob("checkpoint-*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    run.send_signal(signal.SIGTERM)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 143, "".join(seen) + out
    assert "interrupted: run the same command again" in out
    assert (adapter / INCOMPLETE_MARKER).is_file() and not (adapter / "empersona.json").exists()
