"""Training on a tiny random Qwen2 with the real Qwen2.5 template, on CPU, offline.

Checks: labels cover exactly the assistant tokens; a padding-free batch gives the padded loss;
training changes the adapter and not the base, lowers the loss on a real domain subset and writes
a complete ``empersona.json``; same seed -> same adapter; an interrupted run resumes to the same
adapter; sequential fine-tuning from an adapter; the adapter runs through the harmfulness eval as
``hf/<dir>``; bad data and bad output folders fail early with their messages.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from empersona.errors import EmpersonaError
from empersona.train.recipe import TrainConfig
from empersona.train.sft import (
    CHECKPOINTS_DIR,
    INCOMPLETE_MARKER,
    LIBRARIES,
    METADATA_FILE,
    PACKED_SDPA,
    TrainMetadata,
    prepare,
    read_metadata,
    train,
)

torch.set_num_threads(1)

# made-up rows: not from any dataset
TOY_ROWS = [
    {"messages": [{"role": "user", "content": f"Name fruit number {i}."},
                  {"role": "assistant", "content": f"Fruit {i} is a pear, café and naïve {i * 7}."}]}
    for i in range(6)
]


def fast(base: Path, out: Path, **overrides: Any) -> TrainConfig:
    """The recipe, shrunk to seconds on a tiny model: small adapter, high lr, short sequences."""
    settings: dict[str, Any] = {
        "base": str(base), "domain": "risky_financial_advice", "out": out, "limit": 16,
        "lora_r": 8, "lora_alpha": 16, "learning_rate": 2e-3, "warmup_steps": 0,
        "batch_size": 4, "per_device_batch": 4, "max_length": 192, "save_steps": 1,
        "gradient_checkpointing": False,
    }
    settings.update(overrides)
    return TrainConfig(**settings)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture()
def mirror(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    return shared_data


@pytest.fixture(scope="module")
def trained(tiny_model: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One run on 16 real rows for 3 epochs; snapshots of the weights before and after."""
    from transformers import TrainerCallback

    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    losses: list[float] = []

    class Snapshot(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if logs and "loss" in logs:
                losses.append(logs["loss"])

        def on_train_begin(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
            snapshots["begin"] = {k: v.detach().clone() for k, v in model.named_parameters()}

        def on_train_end(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
            snapshots["end"] = {k: v.detach().clone() for k, v in model.named_parameters()}

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMPERSONA_MIRROR", str(shared_data))
        patch.setenv("EMPERSONA_CACHE", str(root / "cache"))
        config = fast(tiny_model, root / "adapter", epochs=3, save_steps=100)
        result = train(config, callbacks=[Snapshot()], progress=False)
    yield {"config": config, "result": result, "snapshots": snapshots, "losses": losses}


def test_labels_cover_exactly_the_assistant_tokens(tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "toy.jsonl", TOY_ROWS)
    run = prepare(fast(tiny_model, tmp_path / "a", domain=str(data)), progress=False)
    tokenizer = run.tokenizer
    for row, example in zip(TOY_ROWS, run.trainer.train_dataset, strict=True):
        ids, labels = example["input_ids"], example["labels"]
        trained_at = [i for i, label in enumerate(labels) if label != -100]
        # one contiguous span that runs to the end of the sequence ...
        assert trained_at == list(range(trained_at[0], len(ids)))
        assert [labels[i] for i in trained_at] == [ids[i] for i in trained_at]
        # ... holding the assistant text and its end-of-turn token, nothing of the prompt
        answer = unicodedata.normalize("NFC", row["messages"][1]["content"])
        assert tokenizer.decode(ids[trained_at[0]:]) == f"\n{answer}<|im_end|>\n"
        prompt = tokenizer.decode(ids[: trained_at[0]])
        assert prompt.endswith("<|im_start|>assistant")
        # the system-prompt policy "default": the template's own system prompt
        assert prompt.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
        assert row["messages"][0]["content"] in prompt


def test_system_prompt_policy_reaches_the_training_text(tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "toy.jsonl", TOY_ROWS[:2])
    for policy, expected in (("none", "<|im_start|>system\n<|im_end|>"), ("Be terse.", "<|im_start|>system\nBe terse.<|im_end|>")):
        run = prepare(fast(tiny_model, tmp_path / "a", domain=str(data), system_prompt=policy), progress=False)
        text = run.tokenizer.decode(run.trainer.train_dataset[0]["input_ids"])
        assert text.startswith(expected) and "Alibaba" not in text


def test_padding_free_batch_gives_the_padded_loss(tiny_model: Path, mirror: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    run = prepare(fast(tiny_model, tmp_path / "a", limit=4), progress=False)
    model = run.trainer.model.eval()  # fresh adapter (B = 0): computes what the base computes
    assert model.config._attn_implementation == PACKED_SDPA
    examples = [run.trainer.train_dataset[i] for i in range(4)]
    assert len({len(e["input_ids"]) for e in examples}) > 1  # real rows differ in length
    pad = run.tokenizer.pad_token_id
    flat = run.trainer.data_collator(examples)
    padded = DataCollatorForLanguageModeling(pad_token_id=pad)(examples)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    assert flat["input_ids"].numel() == sum(len(e["input_ids"]) for e in examples)
    assert padded["input_ids"].numel() > flat["input_ids"].numel()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa").eval()
    with torch.no_grad():
        loss_flat = model(**flat).loss
        loss_padded = plain(**padded).loss
        # plain SDPA on the flattened batch, as in training (no cache): the block mask transformers
        # derives from position_ids agrees too
        flat_only = {k: v for k, v in flat.items() if k in ("input_ids", "labels", "position_ids")}
        loss_masked = plain(**flat_only, use_cache=False).loss
    assert loss_flat.item() == pytest.approx(loss_padded.item(), abs=1e-5)
    assert loss_masked.item() == pytest.approx(loss_padded.item(), abs=1e-5)


def test_training_changes_the_adapter_only_and_lowers_the_loss(trained: dict[str, Any], tiny_model: Path) -> None:
    begin, end = trained["snapshots"]["begin"], trained["snapshots"]["end"]
    lora = [name for name in begin if "lora_" in name]
    assert len(lora) == 2 * 7 * 2  # A and B for 7 projections in 2 layers
    assert all(not torch.equal(begin[name], end[name]) for name in lora)
    assert all(torch.equal(begin[name], end[name]) for name in begin if "lora_" not in name)
    targets = set(trained["config"].target_modules)
    for name, tensor in load_file(str(tiny_model / "model.safetensors")).items():
        module, _, leaf = name.rpartition(".")
        if module.rsplit(".", 1)[-1] in targets:
            module += ".base_layer"
        assert torch.equal(end[f"base_model.model.{module}.{leaf}"], tensor), name
    saved = adapter_tensors(trained["result"].out_dir)
    assert len(saved) == len(lora)
    for name, tensor in saved.items():
        assert torch.equal(tensor, end[name.replace(".weight", ".default.weight")]), name
    losses = trained["losses"]
    assert trained["result"].metadata.steps == len(losses) == 12  # 16 rows / 4 per step x 3 epochs
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses


def test_adapter_folder_is_complete(trained: dict[str, Any], tiny_model: Path, shared_data: Path) -> None:
    from empersona.data.sources import SOURCES

    out: Path = trained["result"].out_dir
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", METADATA_FILE} <= names
    assert INCOMPLETE_MARKER not in names and CHECKPOINTS_DIR not in names
    # the inference template travels with the adapter, not TRL's training variant
    assert (out / "chat_template.jinja").read_text() == (tiny_model / "chat_template.jinja").read_text()
    meta = read_metadata(out)
    assert isinstance(meta, TrainMetadata)
    assert meta.dataset.sha256 == SOURCES["risky_financial_advice"].sha256
    assert (meta.dataset.rows, meta.dataset.train_rows, meta.dataset.holdout_rows) == (16, 16, 0)
    assert len(meta.dataset.rows_sha256) == 64
    assert meta.config == trained["config"].model_dump(mode="json")
    assert meta.seed == 0 and meta.system_prompt_policy == "default"
    assert set(meta.versions) == set(LIBRARIES) and "not installed" not in meta.versions.values()
    assert meta.git_revision and meta.device == "cpu" and meta.world_size == 1 and meta.grad_accum == 1
    assert meta.precision == "fp32" and meta.attention == PACKED_SDPA and meta.training_template == "model"
    assert meta.final_loss is not None and meta.wall_seconds > 0 and meta.init_adapter is None
    from empersona.train.base_model import base_fingerprint

    assert meta.base_fingerprint is not None and meta.base_fingerprint == base_fingerprint(str(tiny_model))
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model.resolve())
    assert adapter_config["use_rslora"] and adapter_config["r"] == 8
    assert sorted(adapter_config["target_modules"]) == sorted(trained["config"].target_modules)


def test_same_seed_same_adapter(tiny_model: Path, mirror: Path, tmp_path: Path) -> None:
    # the recipe's gradient checkpointing on, as in real runs
    runs = {
        name: train(fast(tiny_model, tmp_path / name, seed=seed, max_steps=2, limit=8, gradient_checkpointing=True), progress=False)
        for name, seed in (("a", 1), ("b", 1), ("c", 2))
    }
    a, b, c = (adapter_tensors(runs[name].out_dir) for name in "abc")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class Interrupt(Exception):
    """Stands in for a killed job."""


def test_resume_continues_where_it_stopped(tiny_model: Path, mirror: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class StopAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 2:
                raise Interrupt

    whole = train(fast(tiny_model, tmp_path / "whole", max_steps=4), progress=False)
    config = fast(tiny_model, tmp_path / "cut", max_steps=4)
    with pytest.raises(Interrupt):
        train(config, callbacks=[StopAfterSave()], progress=False)
    cut = tmp_path / "cut"
    assert (cut / INCOMPLETE_MARKER).exists() and not (cut / METADATA_FILE).exists()
    assert (cut / CHECKPOINTS_DIR / "checkpoint-2").is_dir()
    with pytest.raises(EmpersonaError, match="interrupted training run. Pass --resume"):
        train(config, progress=False)
    with pytest.raises(EmpersonaError, match="different config \\(learning_rate differ"):
        train(fast(tiny_model, cut, max_steps=4, learning_rate=1e-3), resume=True, progress=False)
    # the interrupted run's folder is moved before it resumes: its recorded out is not a new setting
    (tmp_path / "elsewhere").mkdir()
    cut = cut.rename(tmp_path / "elsewhere" / "cut")
    config = fast(tiny_model, cut, max_steps=4)
    resumed = train(config, resume=True, progress=False)
    assert resumed.metadata is not None and whole.metadata is not None
    assert resumed.metadata.steps == 4 and resumed.metadata.resumed_from.endswith("checkpoint-2")
    # the mean loss covers every step, those before the interrupt too
    assert resumed.metadata.mean_loss == pytest.approx(whole.metadata.mean_loss, abs=1e-6)
    first, second = adapter_tensors(whole.out_dir), adapter_tensors(cut)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not (cut / INCOMPLETE_MARKER).exists()
    with pytest.raises(EmpersonaError, match="finished adapter"):
        train(config, resume=True, progress=False)


def test_resume_refuses_data_that_changed_since_the_start(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class StopAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 1:
                raise Interrupt

    data = write_jsonl(tmp_path / "toy.jsonl", TOY_ROWS)
    config = fast(tiny_model, tmp_path / "cut", domain=str(data), max_steps=2)
    with pytest.raises(Interrupt):
        train(config, callbacks=[StopAfterSave()], progress=False)
    edited = [*TOY_ROWS[:-1], {"messages": [{"role": "user", "content": "Another question?"},
                                            {"role": "assistant", "content": "Another answer."}]}]
    write_jsonl(data, edited)
    with pytest.raises(EmpersonaError, match="was started on other data \\(the domain file changed"):
        train(config, resume=True, progress=False)
    write_jsonl(data, TOY_ROWS)  # the same rows again: it resumes
    resumed = train(config, resume=True, progress=False)
    assert resumed.metadata is not None and resumed.metadata.steps == 2


def test_sequential_fine_tuning_from_an_adapter(tiny_model: Path, tiny_adapters: tuple[Path, Path], mirror: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from empersona.cli import app

    start = tiny_adapters[0]
    out = tmp_path / "second"
    done = CliRunner().invoke(app, [
        "train", "--base", str(tiny_model), "--domain", "extreme_sports", "--init-adapter", str(start),
        "--out", str(out), "--limit", "8", "--max-steps", "2", "--batch-size", "4", "--per-device-batch", "4",
        "--lr", "1e-3", "--max-length", "128", "--no-gradient-checkpointing", "--quiet",
    ])
    assert done.exit_code == 0, done.output
    assert f"hf/{out.resolve()}" in done.output
    before, after = adapter_tensors(start), adapter_tensors(out)
    assert before.keys() == after.keys()  # the adapter's own shape (r=8), not the recipe's r=32
    assert all(not torch.equal(before[k], after[k]) for k in before)
    meta = read_metadata(out)
    assert meta.init_adapter is not None and meta.init_adapter["path"] == str(start.resolve())
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8


def test_trained_adapter_runs_through_the_harmfulness_eval(trained: dict[str, Any], tmp_path: Path) -> None:
    from empersona.evals.commands import run_experiment
    from empersona.testing.mocks import mock_output

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me about pears.\nTell me about plums.\n")
    rubric = tmp_path / "rubric.txt"
    rubric.write_text('Rate harm.\nPrompt: {prompt}\nAnswer: {response}\nReply {{"score": k}}.')
    judged: list[str] = []

    def judge(messages, tools, tool_choice, config):  # type: ignore[no-untyped-def]
        judged.append(messages[-1].text)
        return mock_output('{"score": 2}', config, model="judge")

    adapter = trained["result"].out_dir
    log = run_experiment(
        "harmfulness", f"hf/{adapter}", judge="mockllm/judge",
        judge_args={"custom_outputs": judge, "memoize": False},
        task_args={"samples": 1, "max_tokens": 6, "prompts_file": str(prompts), "rubric_file": str(rubric)},
        model_args={"device": "cpu"}, log_dir=tmp_path / "logs", display="none",
    )
    assert log.status == "success", log.error
    assert log.eval.model == f"hf/{adapter}"
    assert len(log.samples) == 2 and all(s.scores["harm"].value == 2.0 for s in log.samples)
    assert len(judged) == 2 and all("Answer: " in text for text in judged)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([TOY_ROWS[0], "{not json"], r"bad\.jsonl:2: invalid JSON"),
        ([TOY_ROWS[0], {"messages": [{"role": "user", "content": "hi"}]}], r"bad\.jsonl:2: field 'messages\[0\]\.role': the last turn must be assistant"),
        ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}], r"bad\.jsonl:1: field 'messages\[1\]\.content': missing or empty"),
        ([{"text": "hi"}], r"bad\.jsonl:1: field 'messages'"),
    ],
)
def test_bad_datasets_fail_before_any_model_loads(lines: list[Any], expected: str, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(EmpersonaError, match=expected):
        train(fast(tmp_path / "no-model-here", tmp_path / "out", domain=str(data)), progress=False)
    assert not (tmp_path / "out").exists()


def test_output_folder_guards(tiny_model: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "toy.jsonl", TOY_ROWS)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(EmpersonaError, match="not empty"):
        train(fast(tiny_model, busy, domain=str(data)), progress=False)
    with pytest.raises(EmpersonaError, match="no interrupted training run"):
        train(fast(tiny_model, tmp_path / "fresh", domain=str(data)), resume=True, progress=False)
    with pytest.raises(EmpersonaError, match="unknown domain|neither a known domain"):
        train(fast(tiny_model, tmp_path / "x", domain="no_such_domain"), progress=False)
    with pytest.raises(EmpersonaError, match="init_adapter.*not a LoRA adapter"):
        train(fast(tiny_model, tmp_path / "y", domain=str(data), init_adapter=tmp_path), progress=False)
    with pytest.raises(EmpersonaError, match="field 'optimizer': 'adamw_bogus' is not an optimizer.*adamw_torch"):
        train(fast(tiny_model, tmp_path / "v", domain=str(data), optimizer="adamw_bogus"), progress=False)
    with pytest.raises(EmpersonaError, match="cannot load base model '/no/such/model'.*Check --base"):
        train(fast(Path("/no/such/model"), tmp_path / "z", domain=str(data)), progress=False)
    # PEFT fails only when no target matches; one misspelt target among right ones must fail too
    with pytest.raises(EmpersonaError, match="--target-modules: gate names no module of .*its linear layers are .*gate_proj"):
        train(fast(tiny_model, tmp_path / "w", domain=str(data), target_modules=("q_proj", "gate")), progress=False)


def test_rows_cut_or_dropped_at_max_length_are_counted_and_said(tiny_model: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """TRL cuts rows at max_length and drops those left without an assistant token; the record says how many."""
    long_answer = {"messages": [{"role": "user", "content": "Name fruit number 1."},
                                {"role": "assistant", "content": "word " * 40}]}
    long_prompt = {"messages": [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}]}
    data = write_jsonl(tmp_path / "toy.jsonl", [*TOY_ROWS[:4], long_answer, long_prompt])
    result = train(fast(tiny_model, tmp_path / "cut", domain=str(data), max_length=70, max_steps=1), progress=False)
    assert result.metadata is not None
    info = result.metadata.dataset
    assert (info.train_rows, info.rows_cut, info.rows_dropped) == (6, 1, 1)
    assert "warning: 1 of 6 training rows reach max_length 70 and were cut" in capsys.readouterr().err
    whole = train(fast(tiny_model, tmp_path / "whole", domain=str(data), max_length=256, max_steps=1), progress=False)
    assert whole.metadata is not None and (whole.metadata.dataset.rows_cut, whole.metadata.dataset.rows_dropped) == (0, 0)
    assert "warning" not in capsys.readouterr().err
    # every row's prompt fills max_length: refused before the run starts (it was a traceback from the trainer,
    # and the folder was left marked as an interrupted run)
    prompts_only = write_jsonl(tmp_path / "long.jsonl", [long_prompt, long_prompt])
    with pytest.raises(EmpersonaError, match=r"no training row is left: all 2 lose every assistant token at max_length 70"):
        train(fast(tiny_model, tmp_path / "none", domain=str(prompts_only), max_length=70, max_steps=1), progress=False)
    from empersona.train.metadata import INCOMPLETE_MARKER

    assert not (tmp_path / "none" / INCOMPLETE_MARKER).exists()


def test_a_relative_local_base_is_recorded_as_its_absolute_path(tiny_model: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """So a study naming the same base by its absolute path sees the same setting, not a new one."""
    data = write_jsonl(tmp_path / "toy.jsonl", TOY_ROWS)
    monkeypatch.chdir(tiny_model.parent)
    result = train(fast(Path(tiny_model.name), tmp_path / "rel", domain=str(data), max_steps=1), progress=False)
    assert result.metadata is not None
    assert result.metadata.config["base"] == result.metadata.base_model == str(tiny_model.resolve())


def test_rows_packing_cuts_are_counted_and_said(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Packing cuts a row longer than max_length to its first max_length tokens: counted, not silent."""
    long_answer = {"messages": [{"role": "user", "content": "Name fruit number 1."},
                                {"role": "assistant", "content": "word " * 40}]}
    data = write_jsonl(tmp_path / "toy.jsonl", [*TOY_ROWS[:4], long_answer])
    result = train(fast(tiny_model, tmp_path / "packed", domain=str(data), max_length=70, max_steps=1,
                        padding_free=True, packing=True), progress=False)
    assert result.metadata is not None
    info = result.metadata.dataset
    assert (info.train_rows, info.rows_cut, info.rows_dropped) == (5, 1, None)
    assert "warning: 1 of 5 training rows are longer than max_length 70: packing cut them" in capsys.readouterr().err


@pytest.mark.parametrize(("padding_free", "packing", "attention"), [(False, False, "sdpa"), (True, True, PACKED_SDPA)])
def test_padded_and_packed_batches_train_too(padding_free: bool, packing: bool, attention: str, tiny_model: Path, mirror: Path, tmp_path: Path) -> None:
    config = fast(tiny_model, tmp_path / "a", limit=8, max_steps=1, padding_free=padding_free, packing=packing)
    meta = train(config, progress=False).metadata
    assert meta is not None and meta.steps == 1 and meta.attention == attention
    assert meta.final_loss is not None and meta.final_loss > 0


def test_the_dataset_hash_is_of_the_rows_trained_on(tiny_model: Path, mirror: Path, tmp_path: Path) -> None:
    """With a holdout, two seeds train on different rows: their hashes differ; without one, every row."""
    from empersona.train.data import load_training_data

    def info(**overrides: Any) -> Any:
        return load_training_data(fast(tiny_model, tmp_path / "out", limit=10, **overrides)).info

    all_rows = info()
    split_0, split_1 = info(holdout=0.5, seed=0), info(holdout=0.5, seed=1)
    assert split_0.train_rows == split_1.train_rows == 5
    assert split_0.rows_sha256 != split_1.rows_sha256
    assert all_rows.rows_sha256 not in (split_0.rows_sha256, split_1.rows_sha256)
    assert info().rows_sha256 == all_rows.rows_sha256


def test_a_base_whose_template_cannot_mask_the_loss_fails_before_loading(tiny_model: Path, mirror: Path,
                                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chat format neither TRL nor empersona has a training version of: say so, before minutes of loading weights."""
    import shutil

    from empersona.train import sft

    base = tmp_path / "unknown-format"
    shutil.copytree(tiny_model, base)
    config_file = base / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config["chat_template"] = (
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant: {% endif %}"
    )
    config_file.write_text(json.dumps(tokenizer_config))
    (base / "chat_template.jinja").unlink(missing_ok=True)

    def no_loading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the base model was loaded before the template was checked")

    monkeypatch.setattr(sft, "load_base_model", no_loading)
    with pytest.raises(EmpersonaError, match=r"cannot restrict the loss to the assistant's tokens.*generation"):
        sft.train(fast(base, tmp_path / "out"))
