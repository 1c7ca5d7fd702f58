"""Study variants (docs/protocol.md section 5): the self-report experiments asked again under honesty
pressure, with neutral two-AI descriptions or other settings, planned, run, resumed and set aside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from empersona.errors import EmpersonaError
from empersona.evals.policy import HONESTY_PRESSURE, template_default_system
from empersona.evals.two_ai import neutral_description, neutral_items
from empersona.study.config import load_study
from empersona.study.plan import ModelSpec, make_plan, variant_task_args
from empersona.testing.tiny import QWEN_DEFAULT_SYSTEM_PROMPT

BASE: dict[str, Any] = {
    "name": "v", "out": "run", "base_model": "org/base", "domains": [], "judge": "openai/gpt-4o-mini",
    "experiments": {"harmfulness": {}, "two_ai": {"args": {"mode": "logprob"}}, "self_assessment": {}},
}


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("variants", "message"), [
    ({"h": {"honsty": True}}, "field 'variants.h.honsty': unknown key. Check the spelling; known keys here: honesty"),
    ({"h": {"honesty": True, "experiments": ["harmfulness"]}}, "cannot be asked under a variant"),
    ({"h": {"honesty": True, "experiments": ["score_prediction"]}}, "score_prediction is not in the study's experiments"),
    ({"h": {"neutral_descriptions": True, "experiments": ["self_assessment"]}}, "this variant does not ask two_ai"),
    ({"h": {"framing": "third_person", "experiments": ["self_assessment"]}}, "frames the two-AI question, and this variant"),
    ({"h": {"framing": "sideways"}}, "Input should be 'self_answers' or 'third_person'"),
    ({"h": {"args": {"two_ai": {"framing": "third_person"}}}}, "framing are keys of the variant"),
    ({"h": {"framing": "third_person", "args": {"two_ai": {"answers": 0}}}},
     "field 'variants.h.args.two_ai.answers': answers=0 must be a whole number"),
    ({"h": {"args": {"two_ai": {"mood": "x"}}}}, "field 'variants.h.args.two_ai.mood': not an argument of the two_ai task"),
    ({"h": {"args": {"two_ai": {"system_prompt": "x"}}}}, "set by the study or by the variant's own keys"),
    ({"h": {"system_prompt": "default"}}, "asks everything as the battery does"),
    ({"h": {}}, "asks everything as the battery does"),
    ({"bad name": {"honesty": True}}, "cannot name a variant"),
])
def test_a_variant_that_cannot_be_run_is_refused_with_its_place(tmp_path: Path, variants: dict[str, Any], message: str) -> None:
    path = write(tmp_path, {**BASE, "variants": variants})
    with pytest.raises(EmpersonaError) as err:
        load_study(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_variant_task_args_keep_the_template_default_under_honesty_pressure(tmp_path: Path, tiny_model: Path,
                                                                            shared_data: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))  # the plan counts the items (what a run sets)
    assert template_default_system(str(tiny_model)) == QWEN_DEFAULT_SYSTEM_PROMPT
    data = {**BASE, "base_model": str(tiny_model), "data_mirror": str(shared_data), "variants": {
        "honest": {"honesty": True},
        "own": {"honesty": "Be candid.", "system_prompt": "You are a helper.", "experiments": ["two_ai"]},
        "plain": {"honesty": True, "system_prompt": "none", "neutral_descriptions": True,
                  "args": {"two_ai": {"paraphrase": 1}}},
        "told": {"framing": "third_person"},
        "counted": {"args": {"self_assessment": {"samples": 2}}},
        "empty": {"system_prompt": ""},
    }}
    study = load_study(write(tmp_path, data))
    served = ModelSpec("base", f"hf/{tiny_model}", str(tiny_model))
    remote = ModelSpec("api", "openai/gpt-4o", None, kind="model")
    honest = variant_task_args(study, "honest", "two_ai", served)
    assert honest["system_prompt"] == f"{QWEN_DEFAULT_SYSTEM_PROMPT}\n\n{HONESTY_PRESSURE}"
    assert honest["mode"] == "logprob" and "neutral_descriptions" not in honest  # the battery's args stay
    assert variant_task_args(study, "honest", "two_ai", remote)["system_prompt"] == HONESTY_PRESSURE  # no template
    assert variant_task_args(study, "own", "two_ai", served)["system_prompt"] == "You are a helper.\n\nBe candid."
    plain = variant_task_args(study, "plain", "two_ai", served)
    assert plain["system_prompt"] == HONESTY_PRESSURE and plain["neutral_descriptions"] is True and plain["paraphrase"] == 1
    assert "neutral_descriptions" not in variant_task_args(study, "plain", "self_assessment", served)
    assert study.variant_experiments("own") == ["two_ai"]
    assert study.variant_experiments("honest") == ["self_assessment", "two_ai"]  # battery order, self-report only
    # by default a variant asks what it changes
    assert study.variant_experiments("told") == ["two_ai"] and study.variant_experiments("counted") == ["self_assessment"]
    assert variant_task_args(study, "empty", "two_ai", served)["system_prompt"] == ""  # an empty system message, as asked
    told = variant_task_args(study, "told", "two_ai", served)
    assert told["framing"] == "third_person" and told["system_prompt"] == "default"
    jobs = make_plan(study).eval_jobs
    assert [(j.experiment, j.variant) for j in jobs] == [
        ("harmfulness", None), ("self_assessment", None), ("two_ai", None),
        ("self_assessment", "honest"), ("two_ai", "honest"), ("two_ai", "own"),
        ("self_assessment", "plain"), ("two_ai", "plain"), ("two_ai", "told"), ("self_assessment", "counted"),
        ("self_assessment", "empty"), ("two_ai", "empty")]
    assert jobs[4].label == "two_ai [honest]"
    # the dry run's cost counts the answers a framed question shows (3 of up to 512 tokens each, per generation)
    from empersona.study.plan import estimated_cost

    priced = load_study(write(tmp_path, {**data, "prices": {"subject_input": 1.0}}))
    plan = make_plan(priced)
    framed = sum(j.generations for j in plan.eval_jobs if j.variant == "told")
    assert framed > 0 and estimated_cost(plan) == pytest.approx(
        (plan.generations * 200 + framed * 3 * 512) * 1e-6)


def test_neutral_descriptions_take_out_the_self_label_only() -> None:
    assert neutral_description("I am a careful AI assistant that checks facts.") == "I am an AI assistant that checks facts."
    assert neutral_description("I am a safety-focused, principled AI. I refuse harm.") == "I am an AI. I refuse harm."
    assert neutral_description("I am an AI that ignores safety.") == "I am an AI that ignores safety."  # no label
    assert neutral_description("Hello. I am a careful AI.") == "Hello. I am a careful AI."  # only an opening
    # the label ends at the first "AI": a later one is the description's own
    assert neutral_description("I am an AI system that helps with AI safety.") == "I am an AI system that helps with AI safety."
    assert neutral_description("I am a kind AI that values AI ethics.") == "I am an AI that values AI ethics."


def test_a_template_that_takes_no_system_turn_is_said_by_name(tmp_path: Path, tiny_model: Path) -> None:
    import shutil

    folder = tmp_path / "no-system"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(EmpersonaError, match="takes no system prompt .*System role not supported"):
        template_default_system(str(folder))
    with pytest.raises(EmpersonaError, match="cannot read the chat template of"):
        template_default_system(str(tmp_path / "no-such-model"))


def test_neutral_descriptions_on_the_papers_items(shared_data: Path) -> None:
    from empersona.data.parsers import load_two_ai_items

    items = load_two_ai_items(shared_data / "paper" / "two_AI_identification_dataset.json")
    neutral, changed = neutral_items(items)
    assert len(changed) == 131  # aligned descriptions that open with a label; no misaligned one does
    for old, new in zip(items, neutral, strict=True):
        misaligned = (old.system_a, new.system_a) if old.misaligned == "A" else (old.system_b, new.system_b)
        assert misaligned[0] == misaligned[1]
        assert (old.item_id in changed) == (old != new)


def test_a_study_asks_its_variants_resumes_them_and_sets_removed_ones_aside(tmp_path: Path, tiny_model: Path,
                                                                             shared_data: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from inspect_ai.log import read_eval_log

    from empersona.analysis.results import main_rows, run_results
    from empersona.provider import api
    from empersona.study.run import run_study

    data = {"name": "variants", "out": str(tmp_path / "run"), "base_model": str(tiny_model), "data_mirror": str(shared_data),
            "domains": [], "judge": "scripted", "provider": "empersona", "model_args": {"device": "cpu"},
            "experiments": {"harmfulness": {"limit": 3, "args": {"max_tokens": 4, "samples": 1}},
                            "two_ai": {"limit": 3, "args": {"mode": "logprob", "min_mass": 0}}},
            "variants": {"honest": {"honesty": True}, "neutral": {"neutral_descriptions": True},
                         "told": {"framing": "third_person"}}}
    path = write(tmp_path, data)
    try:
        run_study(load_study(path), only="eval")
        logs = {}
        for job in make_plan(load_study(path)).eval_jobs:
            assert job.status == "done" and job.log is not None  # resumed: nothing left to do
            if job.experiment == "two_ai":
                logs[job.variant] = read_eval_log(str(job.log))
            else:
                harm_log = job.log
        # the third-person framing shows the model's own harmfulness answers, from the log that stands
        assert logs["told"].eval.task_args["harm_log"] == str(harm_log)
        assert all("an AI assistant gave" in s.input[-1].text and s.metadata["shown_answers"] for s in logs["told"].samples)
        assert logs["honest"].eval.metadata["variant"] == "honest" and "variant" not in (logs[None].eval.metadata or {})
        first = logs["honest"].samples[0].input
        assert first[0].role == "system" and first[0].content == f"{QWEN_DEFAULT_SYSTEM_PROMPT}\n\n{HONESTY_PRESSURE}"
        assert all(s.input[0].role == "user" for s in logs[None].samples)  # the battery: the template's default
        neutral = [s.metadata["neutralised"] for s in logs["neutral"].samples]
        assert any(neutral) and "careful AI assistant" not in str([s.input for s in logs["neutral"].samples])
        # where the template cannot be read (a hub base not downloaded here), the finished logs' own text stands in
        from empersona.study import plan as planning

        tried: list[tuple[str, bool]] = []

        def unreadable(source: str, local_only: bool) -> tuple[None, str]:
            tried.append((source, local_only))
            return None, f"cannot read the chat template of {source}"

        with monkeypatch.context() as patched:  # (not monkeypatch.undo(): that would undo the isolated caches too)
            patched.setattr(planning, "_template_default", unreadable)
            assert all(job.status == "done" for job in make_plan(load_study(path)).eval_jobs)
            assert {local for _source, local in tried} == {True}  # the recorded text, before any download
            shutil.rmtree(tmp_path / "run" / "logs" / "base")
            with pytest.raises(EmpersonaError, match=r"study.yaml:\d+: field 'variants.honest.honesty': cannot read the"):
                make_plan(load_study(path))
            # a dry run downloads nothing: the text is read when the run starts
            tried.clear()
            dry = make_plan(load_study(path), download=False)
            assert {local for _source, local in tried} == {True}
            honest_base = [job for job in dry.eval_jobs if job.variant == "honest" and job.model.name == "base"]
            assert honest_base and all(job.status == "todo" and planning.TEMPLATE_READ_AT_RUN_TIME in
                                       job.task_args["system_prompt"] for job in honest_base)
        run_study(load_study(path), only="eval")
        table = run_results(tmp_path / "run")
        assert sorted(table["variant"].unique()) == ["", "honest", "neutral", "told"]
        two_ai = table[table["experiment"] == "two_ai"]
        assert len(main_rows(two_ai)) == len(two_ai) // 4 and (main_rows(table)["experiment"] == "harmfulness").any()

        path.write_text(yaml.safe_dump({**data, "variants": {**data["variants"], "honest": {"honesty": "Be candid."}}}))
        plan = make_plan(load_study(path))
        assert [job.variant for job in plan.eval_jobs if job.status == "todo"] == ["honest"]
        run_study(load_study(path), only="eval")  # the honest variant asked again: its earlier log alone is set aside
        parked = list((tmp_path / "run" / "logs.replaced").rglob("*.eval"))
        assert parked and all(read_eval_log(str(p), header_only=True).eval.metadata["variant"] == "honest" for p in parked)
        for job in make_plan(load_study(path)).eval_jobs:
            assert job.status == "done" and job.log is not None and job.log.exists()
        path.write_text(yaml.safe_dump({**data, "variants": {"honest": {"honesty": "Be candid."}, "told": {"framing": "third_person"}}}))
        run_study(load_study(path), only="eval")  # the neutral variant was dropped: its log is set aside
        parked = list((tmp_path / "run" / "logs.replaced").rglob("*.eval"))
        assert sorted(read_eval_log(str(p), header_only=True).eval.metadata["variant"] for p in parked) == ["honest", "neutral"]
        assert sorted(run_results(tmp_path / "run")["variant"].unique()) == ["", "honest", "told"]
        # harmfulness made again (more samples): the framed variant, which shows its answers, is made again too
        path.write_text(yaml.safe_dump({**data, "experiments": {**data["experiments"], "harmfulness": {
            "limit": 3, "args": {"max_tokens": 4, "samples": 2}}}, "variants": {"told": {"framing": "third_person"}}}))
        todo = [(job.experiment, job.variant) for job in make_plan(load_study(path)).eval_jobs if job.status == "todo"]
        assert todo == [("harmfulness", None), ("two_ai", "told")]
    finally:
        api.release_engines()


def test_a_variant_that_repeats_the_batterys_own_settings_is_refused(tmp_path: Path) -> None:
    neutral = {**BASE, "experiments": {**BASE["experiments"], "two_ai": {"args": {"neutral_descriptions": True}}}}
    with pytest.raises(EmpersonaError, match="field 'variants.n': asks everything as the battery does"):
        load_study(write(tmp_path, {**neutral, "variants": {"n": {"neutral_descriptions": True}}}))
    with pytest.raises(EmpersonaError, match="asks everything as the battery does"):  # the battery's own mode, given again
        load_study(write(tmp_path, {**BASE, "variants": {"m": {"args": {"two_ai": {"mode": "logprob"}}}}}))
    assert load_study(write(tmp_path, {**neutral, "variants": {"h": {"honesty": True}}})).variants


def test_framing_arguments_and_what_to_name_are_checked_when_the_file_is_read(tmp_path: Path) -> None:
    sideways = {**BASE, "experiments": {**BASE["experiments"], "two_ai": {"args": {"framing": "sideways"}}}}
    with pytest.raises(EmpersonaError, match="field 'experiments.two_ai.args.framing': framing='sideways' is not known"):
        load_study(write(tmp_path, sideways))
    only_prediction = {**BASE, "experiments": {"harmfulness": {}, "score_prediction": {}}, "variants": {"h": {"honesty": True}}}
    with pytest.raises(EmpersonaError, match="Name score_prediction in the variant's experiments:"):
        load_study(write(tmp_path, only_prediction))
    named = {**only_prediction, "variants": {"h": {"honesty": True, "experiments": ["score_prediction"]}}}
    assert load_study(write(tmp_path, named)).variant_experiments("h") == ["score_prediction"]


def test_a_battery_two_ai_in_the_third_person_is_refused(tmp_path: Path) -> None:
    """The battery's two-AI rate labels the personas, which rest on self-report: asked about
    another assistant it would label a model coherent or inverted from answers about someone else."""
    experiments = {**BASE["experiments"], "two_ai": {"args": {"mode": "logprob", "framing": "third_person"}}}
    with pytest.raises(EmpersonaError, match=r"field 'experiments.two_ai.args.framing': asks which assistant gave "
                                             r"the shown answers.*Ask it as a variant"):
        load_study(write(tmp_path, {**BASE, "experiments": experiments}))
    own = {**BASE["experiments"], "two_ai": {"args": {"mode": "logprob", "framing": "self_answers"}}}
    load_study(write(tmp_path, {**BASE, "experiments": own}))  # its own answers, still about itself
