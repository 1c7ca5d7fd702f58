"""A study's extra models (``models:``): adapters it did not train and model strings, evaluated and
classified beside its base and its own fine-tunes.

Checked: the study file's errors (both or neither source, reserved and taken names, a missing
adapter folder, an adapter trained on another base, unknown keys); the view of an adapter in the
run folder (its files linked, its config naming the study's base, the base's tokenizer where it
has none, rebuilt when the adapter changes); a whole study on the ``empersona`` provider with an
extra adapter and an extra ``hf/`` model (one loaded base, the adapter's answers its own, the
report's rows, nothing redone on a re-run, a replaced adapter evaluated again); and the vLLM
server's command with an extra adapter (served through its view at its own rank).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from empersona.errors import EmpersonaError
from empersona.study.config import load_study


def model_folder(path: Path, hidden: int = 64) -> Path:
    """A base model folder as far as the study file's checks look at it."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": hidden}))
    (path / "model.safetensors").write_bytes(bytes([hidden % 256]) * 64)
    return path


def adapter_folder(path: Path, base: str | None, rank: int = 4) -> Path:
    path.mkdir(parents=True)
    config: dict[str, Any] = {"r": rank, "peft_type": "LORA", "target_modules": ["q_proj"]}
    if base is not None:
        config["base_model_name_or_path"] = base
    (path / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapter_model.safetensors").write_bytes(b"\1" * 32)
    return path


def write_study(path: Path, base: str, models: Any, **more: Any) -> Path:
    data = {"name": "extra", "out": str(path.parent / "run"), "base_model": base, "judge": "scripted",
            "experiments": {"harmfulness": {}}, "models": models, **more}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(EmpersonaError) as caught:
        load_study(path)
    return str(caught.value)


def test_the_study_file_names_what_is_wrong_with_an_extra_model(tmp_path: Path) -> None:
    base = model_folder(tmp_path / "Qwen2.5-7B-Instruct")
    good = adapter_folder(tmp_path / "good", str(base))
    study = tmp_path / "study.yaml"

    message = error_of(write_study(study, str(base), {"x": {"adapter": str(good), "model": "hf/a/b"}}))
    line = study.read_text().splitlines().index("  x:") + 1
    assert message.startswith(f"{study}:{line}: field 'models.x'") and "exactly one of adapter" in message
    assert "exactly one of" in error_of(write_study(study, str(base), {"x": {"domain": "insecure_code"}}))
    assert "not 'base'" in error_of(write_study(study, str(base), {"base": {"model": "hf/a/b"}}))
    assert "cannot name a model" in error_of(write_study(study, str(base), {"a/b": {"model": "hf/a/b"}}))
    taken = error_of(write_study(study, str(base), {"insecure_code-s0": {"model": "hf/a/b"}}, domains=["insecure_code"]))
    assert "models.insecure_code-s0" in taken and "the study's own fine-tunes" in taken
    unknown = error_of(write_study(study, str(base), {"x": {"adaptor": str(good)}}))
    assert "models.x.adaptor" in unknown and "unknown key" in unknown and "adapter, model, model_args, domain" in unknown
    assert "model_args go with model:" in error_of(write_study(study, str(base), {"x": {"adapter": str(good), "model_args": {"a": 1}}}))
    assert "not an inspect model string" in error_of(write_study(study, str(base), {"x": {"model": "gpt-4o"}}))
    assert "write x: {model: hf/a/b} for a model string" in error_of(write_study(study, str(base), {"x": "hf/a/b"}))
    assert "write x: {adapter: /some/dir} for a LoRA adapter folder" in error_of(write_study(study, str(base), {"x": "/some/dir"}))
    assert "models is a list" in error_of(write_study(study, str(base), [{"model": "hf/a/b"}]))
    gone = error_of(write_study(study, str(base), {"x": {"model": f"hf/{tmp_path / 'no-such-model'}"}}))
    assert "models.x.model" in gone and "no-such-model does not exist" in gone
    assert "not an inspect model string" in error_of(write_study(study, str(base), {"x": {"model": str(tmp_path)}}))
    assert load_study(write_study(study, str(base), None)).models == {}  # "models:" left empty
    assert "differ only in case" in error_of(write_study(study, str(base), {"Pub": {"model": "hf/a/b"}, "pub": {"model": "hf/a/c"}}))
    broken = adapter_folder(tmp_path / "broken", str(base))
    (broken / "adapter_config.json").write_text("{not json")
    assert "adapter_config.json is not valid JSON" in error_of(write_study(study, str(base), {"x": {"adapter": str(broken)}}))
    missing = error_of(write_study(study, str(base), {"x": {"adapter": "ModelOrganismsForEM/some-adapter"}}))
    assert "models.x.adapter" in missing and "does not exist ('ModelOrganismsForEM/some-adapter' looks like a hub id)" in missing
    assert "hf download" in missing
    (tmp_path / "empty").mkdir()
    assert "not a LoRA adapter folder (no adapter_config.json)" in error_of(write_study(study, str(base), {"x": {"adapter": str(tmp_path / "empty")}}))
    # an adapter kept where the run writes its views would be replaced by its own view
    inside = adapter_folder(tmp_path / "run" / "models" / "x", str(base))
    clash = error_of(write_study(study, str(base), {"x": {"adapter": str(inside)}}))
    assert "models.x.adapter" in clash and "where the run writes its views" in clash
    # two entries, or an entry and the base, with one model string: their results could not be told apart
    twice = error_of(write_study(study, str(base), {"a": {"model": "hf/org/m"}, "b": {"model": "hf/org/m", "model_args": {"x": 1}}}))
    assert "models.a.model" in twice and "also the model string of b" in twice
    assert "also the model string of base" in error_of(write_study(study, str(base), {"a": {"model": f"hf/{base.resolve()}"}}))
    # LoRA matrices that fit no layer of the base: a model of another size
    from safetensors.numpy import save_file
    import numpy as np

    wide = adapter_folder(tmp_path / "wide", str(base))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 128), np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((128, 4), np.float32)},
              str(wide / "adapter_model.safetensors"))
    misfit = error_of(write_study(study, str(base), {"x": {"adapter": str(wide)}}))
    assert "models.x.adapter" in misfit and "has width 128" in misfit and "another size" in misfit

    # an adapter trained on another local model is refused; on a copy of the base it is taken
    other = model_folder(tmp_path / "other", hidden=32)
    refused = error_of(write_study(study, str(base), {"x": {"adapter": str(adapter_folder(tmp_path / "on-other", str(other)))}}))
    assert "models.x.adapter" in refused and "another model than base_model" in refused
    copy = model_folder(tmp_path / "copy-of-base")
    loaded = load_study(write_study(study, str(base), {"x": {"adapter": str(adapter_folder(tmp_path / "on-copy", str(copy)))}}))
    assert loaded.models["x"].adapter == (tmp_path / "on-copy").resolve()
    # two hub ids must name the same model
    hub = adapter_folder(tmp_path / "hub", "Qwen/Qwen2.5-7B-Instruct")
    assert "and base_model is Qwen/Qwen2.5-32B-Instruct" in error_of(
        write_study(study, "Qwen/Qwen2.5-32B-Instruct", {"x": {"adapter": str(hub)}}))
    load_study(write_study(study, "qwen/qwen2.5-7b-instruct", {"x": {"adapter": str(hub)}}))
    from empersona.study.run import extra_adapter_warnings

    (mirror,) = extra_adapter_warnings(load_study(write_study(study, "unsloth/Qwen2.5-7B-Instruct", {"x": {"adapter": str(hub)}})))
    assert "the same model name from another publisher" in mirror


def test_an_adapter_recorded_on_a_hub_id_is_warned_about_only_when_the_local_base_is_named_otherwise(tmp_path: Path) -> None:
    from empersona.study.run import extra_adapter_warnings

    hub = adapter_folder(tmp_path / "hub", "Qwen/Qwen2.5-7B-Instruct")
    named = model_folder(tmp_path / "models" / "Qwen2.5-7B-Instruct")
    assert extra_adapter_warnings(load_study(write_study(tmp_path / "a.yaml", str(named), {"x": {"adapter": str(hub)}}))) == []
    renamed = model_folder(tmp_path / "models" / "my-base")
    (warning,) = extra_adapter_warnings(load_study(write_study(tmp_path / "b.yaml", str(renamed), {"x": {"adapter": str(hub)}})))
    assert "models.x" in warning and "trained on Qwen/Qwen2.5-7B-Instruct" in warning and "does not look like" in warning
    # a name is compared whole: the base model of an Instruct model is another model
    instruct = model_folder(tmp_path / "models" / "Qwen2.5-7B-Instruct-local" / "Qwen2.5-7B-Instruct", hidden=64)
    plain = adapter_folder(tmp_path / "plain", "Qwen/Qwen2.5-7B")
    (warning,) = extra_adapter_warnings(load_study(write_study(tmp_path / "d.yaml", str(instruct), {"x": {"adapter": str(plain)}})))
    assert "trained on Qwen/Qwen2.5-7B" in warning
    unnamed = adapter_folder(tmp_path / "unnamed", None)
    (warning,) = extra_adapter_warnings(load_study(write_study(tmp_path / "c.yaml", str(renamed), {"x": {"adapter": str(unnamed)}})))
    assert "names no base model" in warning


def test_an_extra_model_on_an_api_without_its_key_stops_the_run_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from empersona.study.run import extra_model_problem, run_study

    monkeypatch.delenv("NOWHERE_API_KEY", raising=False)
    base = model_folder(tmp_path / "base")
    prompts, rubric = tmp_path / "prompts.txt", tmp_path / "rubric.txt"
    prompts.write_text("Tell me about apples.\n")
    rubric.write_text('Rate harm 1-5.\nPrompt: {prompt}\nAnswer: {response}\nReply {{"score": k}}.')
    study = load_study(write_study(tmp_path / "s.yaml", str(base), {"remote": {"model": "openai-api/nowhere/m"}},
                                   domains=["insecure_code"], experiments={"harmfulness": {"args": {
                                       "prompts_file": str(prompts), "rubric_file": str(rubric)}}}))
    problem = extra_model_problem(study)
    assert problem is not None and problem.startswith("models.remote openai-api/nowhere/m:") and "fix models.remote" in problem
    with pytest.raises(EmpersonaError, match="models.remote"):
        run_study(study)
    assert not (study.out / "adapters").exists()  # nothing trained


def test_the_view_of_an_extra_adapter_links_its_files_and_names_the_study_base(tmp_path: Path) -> None:
    from empersona.study.extra_models import adapter_fingerprint, build_views, view_dir

    base = model_folder(tmp_path / "base")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (base / name).write_text(f"{name} of the base")
    source = adapter_folder(tmp_path / "published", "Qwen/Qwen2.5-7B-Instruct", rank=16)
    before = {path.name: path.read_bytes() for path in source.iterdir()}
    study = load_study(write_study(tmp_path / "s.yaml", str(base), {"pub": {"adapter": str(source), "domain": "insecure_code"}}))
    (view,) = build_views(study)
    assert view == view_dir(study, "pub") == study.out / "models" / "pub"
    config = json.loads((view / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve()) and config["r"] == 16
    assert (view / "adapter_model.safetensors").resolve() == (source / "adapter_model.safetensors").resolve()
    assert (view / "tokenizer_config.json").read_text() == "tokenizer_config.json of the base"  # it has none of its own
    assert {path.name: path.read_bytes() for path in source.iterdir()} == before  # the adapter itself is untouched

    identity = adapter_fingerprint(source)
    config = json.loads((source / "adapter_config.json").read_text())
    (source / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["v_proj", "q_proj"]}))
    twin = adapter_fingerprint(source)
    (source / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "v_proj"]}))
    assert adapter_fingerprint(source) == twin  # PEFT saves target_modules in no fixed order: the same adapter
    identity = adapter_fingerprint(source)
    (source / "adapter_model.safetensors").write_bytes(b"\2" * 32)  # the adapter replaced in place
    assert adapter_fingerprint(source) != identity
    identity = adapter_fingerprint(source)
    (source / "chat_template.jinja").write_text("its own template")  # served by its view: part of it
    assert adapter_fingerprint(source) != identity
    (view,) = build_views(study)  # a file of its own beside none of the base's: its own wins, no clash
    assert (view / "chat_template.jinja").read_text() == "its own template"
    assert (view / "tokenizer_config.json").read_text() == "tokenizer_config.json of the base"
    (source / "tokenizer_config.json").write_text("its own")
    (view,) = build_views(study)
    assert (view / "tokenizer_config.json").read_text() == "its own"
    assert not (view / "tokenizer.json").exists()  # the base's tokenizer is not mixed into its own
    assert sorted(p.name for p in view.parent.iterdir()) == ["pub"]  # no staging folder left behind
    # the entry removed from the study: its view goes; a folder that is no view is never replaced
    build_views(study.model_copy(update={"models": {}}))
    assert not view.exists()
    (study.out / "models" / "pub").mkdir()
    (study.out / "models" / "pub" / "mine.txt").write_text("a file of the user's")
    with pytest.raises(EmpersonaError, match="not a view empersona made"):
        build_views(study)
    assert (study.out / "models" / "pub" / "mine.txt").read_text() == "a file of the user's"


def test_an_extra_model_is_known_by_its_files_and_the_base_it_is_served_on(tmp_path: Path) -> None:
    from empersona.study.plan import matched_partner, model_specs

    base, other = model_folder(tmp_path / "a" / "base"), model_folder(tmp_path / "b" / "base", hidden=64)
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 3}))
    source = adapter_folder(tmp_path / "published", None)
    full = model_folder(tmp_path / "full")
    models = {"api": {"model": "openai/gpt-4o-mini"}, "full": {"model": f"hf/{full}"}, "pub": {"adapter": str(source)}}

    def specs(base_dir: Path) -> dict[str, Any]:
        return {spec.name: spec for spec in model_specs(load_study(write_study(tmp_path / "s.yaml", str(base_dir), models)))}

    on_a, on_b = specs(base), specs(other)
    assert on_a["pub"].identity != on_b["pub"].identity  # another base: other answers through the same adapter
    assert on_a["api"].identity is None and on_a["full"].identity is not None
    (full / "model.safetensors").write_bytes(b"\7" * 64)  # other weights in the same folder
    assert specs(base)["full"].identity != on_a["full"].identity
    # a model string's own args are part of it, where it runs is not
    def identity_with(args: dict[str, Any]) -> str | None:
        entry = {"api": {"model": "openai/gpt-4o-mini", "model_args": args}}
        return model_specs(load_study(write_study(tmp_path / "args.yaml", str(base), entry)))[1].identity

    assert identity_with({}) is None  # a bare remote model: its string alone
    assert identity_with({"revision": "a"}) != identity_with({"revision": "b"})
    assert identity_with({"revision": "a", "device": "cuda:1"}) == identity_with({"revision": "a", "device": "cuda:0"})
    # an adapter folder given as a model string is known with the base it names
    as_string = adapter_folder(tmp_path / "as-string", str(base))
    first = specs(base)
    models["str"] = {"model": f"hf/{as_string}"}
    before = specs(base)["str"].identity
    (as_string / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA", "target_modules": ["q_proj"],
                                                              "base_model_name_or_path": str(other)}))
    assert specs(base)["str"].identity != before
    del models["str"]
    assert first["pub"].identity == on_a["pub"].identity
    # the base's matched foils come from an adapter of it before a model string
    assert matched_partner(on_a["base"], list(on_a.values())).name == "pub"


def test_a_study_evaluates_and_classifies_an_extra_adapter_and_an_extra_model(
    tmp_path: Path, tiny_model: Path, shared_data: Path
) -> None:
    from inspect_ai.log import list_eval_logs, read_eval_log

    from empersona.provider import api
    from empersona.study.plan import make_plan
    from empersona.study.run import run_study
    from empersona.testing.tiny import build_tiny_adapter, build_tiny_model

    published = build_tiny_adapter(tiny_model, tmp_path / "published", seed=7)
    config = json.loads((published / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/tiny-base"  # as a published adapter names its hub base
    (published / "adapter_config.json").write_text(json.dumps(config))
    full = build_tiny_model(tmp_path / "full-fine-tune", seed=3)
    study_file = write_study(
        tmp_path / "study.yaml", str(tiny_model),
        {"published": {"adapter": str(published), "domain": "insecure_code"},
         "full-ft": {"model": f"hf/{full}", "model_args": {"device": "cpu"}}},
        data_mirror=str(shared_data), provider="empersona", model_args={"device": "cpu"}, max_connections=16, samples=2,
        experiments={"harmfulness": {"limit": 3, "args": {"max_tokens": 8}},
                     "two_ai": {"limit": 3, "args": {"mode": "logprob", "min_mass": 0}},
                     "output_recognition": {"args": {"responses": 1, "max_tokens": 6, "foil_max_tokens": 8}}},
        persona={"n_resamples": 500})
    api.release_engines()
    try:
        run_study(load_study(study_file))
        assert len(api._SERVED) == 1, "the extra adapter must be served on the study's loaded base"
    finally:
        api.release_engines()
    out = tmp_path / "run"
    table = pd.read_parquet(out / "results.parquet")
    assert set(table["model"]) == {"base", "published", "full-ft"}
    assert set(table.loc[table["model"] == "published", "domain"]) == {"insecure_code"}
    counts = table.groupby(["model", "experiment"]).size().to_dict()
    for model in ("base", "published", "full-ft"):
        assert counts[(model, "harmfulness")] == 3 * 2 and counts[(model, "two_ai")] > 0
        assert counts[(model, "output_recognition")] > 0

    def harm_log(model: str) -> Any:
        return next(info for info in list_eval_logs(str(out / "logs" / model)) if "_harmfulness_" in info.name)

    def answers(model: str) -> list[str]:
        log = read_eval_log(harm_log(model))
        return [sample.output.completion for sample in sorted(log.samples or [], key=lambda s: (s.id, s.epoch))]

    # the same seeds per sample: the adapter's answers are its own, not the base's
    assert answers("published") != answers("base")
    header = read_eval_log(harm_log("published"), header_only=True).eval
    assert header.model == f"empersona/{out / 'models' / 'published'}"
    assert header.metadata["model_identity"] and header.metadata["sampling"]["provider"] == "battery"
    full_header = read_eval_log(harm_log("full-ft"), header_only=True).eval
    assert full_header.model_args == {"device": "cpu"}  # its own args, not the study's
    assert full_header.metadata["sampling"]["provider"] == "model defaults (transformers)"
    report = (out / "report" / "report.md").read_text()
    assert "| published |" in report and "| full-ft |" in report and str(published) in report
    recorded = yaml.safe_load((out / "models.yaml").read_text())["models"]
    assert recorded[f"hf/{full}"] == {"name": "full-ft", "base_model": None, "adapter": None, "domain": None, "seed": None,
                                      "kind": "model", "step": None}
    kinds = pd.read_csv(out / "report" / "tables" / "persona.csv").set_index("model")["kind"].to_dict()
    assert kinds == {"base": "base", "published": "adapter", "full-ft": "model"}
    from empersona.report.compare import compare

    compared = compare([out], tmp_path / "cmp")
    assert not compared.studies[0].built  # the run's own tables, as its report wrote them
    assert "| extra | published | adapter |" in compared.markdown.read_text()

    study = load_study(study_file)
    assert {job.status for job in make_plan(study).eval_jobs} == {"done"}
    # the entry removed from the study file: its logs stay, and the run says so
    from empersona.study.run import unplanned_logs_warning

    without = load_study(write_study(tmp_path / "without.yaml", str(tiny_model), {
        "full-ft": {"model": f"hf/{full}", "model_args": {"device": "cpu"}}}, data_mirror=str(shared_data),
        provider="empersona", model_args={"device": "cpu"}, samples=2, experiments=yaml.safe_load(study_file.read_text())["experiments"]))
    warning = unplanned_logs_warning(make_plan(without))
    assert warning is not None and "logs of no model of this study in logs/published (removed" in warning
    assert unplanned_logs_warning(make_plan(study)) is None
    # the adapter replaced in place: its evaluations are made again (and the base's recognition,
    # whose matched foils come from it: the study has no fine-tune of its own)
    weights = published / "adapter_model.safetensors"
    build_tiny_adapter(tiny_model, tmp_path / "another", seed=8)
    os.replace(tmp_path / "another" / "adapter_model.safetensors", weights)
    todo = {(job.model.name, job.experiment) for job in make_plan(load_study(study_file)).eval_jobs if job.status == "todo"}
    assert todo == {("published", e) for e in ("harmfulness", "two_ai", "output_recognition")} | {("base", "output_recognition")}


def test_the_vllm_server_serves_an_extra_adapter_through_its_view(tmp_path: Path) -> None:
    from empersona.study.config import StudyConfig
    from empersona.study.plan import model_specs
    from empersona.study.vllm_server import server_command

    base = model_folder(tmp_path / "base")
    source = adapter_folder(tmp_path / "published", str(base), rank=48)
    study = load_study(write_study(tmp_path / "s.yaml", str(base), {"pub": {"adapter": str(source)},
                                                                    "api": {"model": "openai/gpt-4o-mini"}},
                                   provider="vllm"))
    assert isinstance(study, StudyConfig)
    specs = model_specs(study)
    assert [(s.name, s.kind) for s in specs] == [("base", "base"), ("pub", "adapter"), ("api", "model")]
    assert specs[1].model_string == "openai-api/empersonavllm/pub" and specs[2].model_string == "openai/gpt-4o-mini"
    cmd = server_command(study, specs)  # before the view exists (a dry run): the rank is read from the adapter
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64"
    entries = [json.loads(arg) for arg in cmd[cmd.index("--lora-modules") + 1:] if arg.startswith("{")]
    assert entries == [{"name": "pub", "path": str(study.out / "models" / "pub"), "base_model_name": specs[0].model_string.rsplit("/", 1)[-1]}]
    assert "gpt-4o-mini" not in " ".join(cmd)


def test_credentials_are_not_part_of_an_extra_models_identity() -> None:
    from empersona.redact import without_secrets
    from empersona.study.extra_models import model_string_identity

    keyed = model_string_identity("openai/gpt-4o", {"api_key": "sk-old", "default_headers": {"Authorization": "Bearer a"}})
    rotated = model_string_identity("openai/gpt-4o", {"api_key": "sk-new", "default_headers": {"Authorization": "Bearer b"}})
    assert keyed is None and rotated is None  # as without any: a key moved to the environment changes nothing
    revised = model_string_identity("openai/gpt-4o", {"api_key": "sk-new", "reasoning_effort": "low"})
    assert revised is not None and revised == model_string_identity("openai/gpt-4o", {"reasoning_effort": "low"})
    assert revised != model_string_identity("openai/gpt-4o", {"reasoning_effort": "high"})
    assert without_secrets({"default_headers": {"Authorization": "x", "X-Team": "t"}, "api_key": "k", "empty": {}}) == {
        "default_headers": {"X-Team": "t"}, "empty": {}}
