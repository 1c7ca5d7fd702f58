"""Llama 3.1 bases train with the assistant-only loss through empersona's own training template.

TRL 1.16 ships Llama 3.1's chat template (``trl/chat_templates/llama3_1.jinja``, read here from the
installed package as the reference) but no training version of it. Ours must render exactly what
the model's template renders for conversations without tools (evaluation renders with the
model's own), mark the assistant's words and end-of-turn token for the loss, and leave the
tokenizer saved with the adapter unchanged. A template that renders any differently (another
default date, as Llama 3.2's) is not taken for it.
"""

from __future__ import annotations

import json
import shutil
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from empersona.errors import EmpersonaError
from empersona.train.sft import own_template_text, own_training_template, prepare, training_template
from test_sft import TOY_ROWS, fast, write_jsonl

LLAMA_31 = files("trl").joinpath("chat_templates", "llama3_1.jinja").read_text(encoding="utf-8")


def with_template(tiny_model: Path, out: Path, template: str) -> Path:
    """The tiny model with ``template`` as its chat template."""
    shutil.copytree(tiny_model, out)
    config_file = out / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    tokenizer_config["chat_template"] = template
    config_file.write_text(json.dumps(tokenizer_config))
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


def tokenizer_of(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_our_llama_31_template_renders_the_models_text_and_marks_the_assistant(tiny_model: Path, tmp_path: Path) -> None:
    tokenizer = tokenizer_of(with_template(tiny_model, tmp_path / "llama31", LLAMA_31))
    name = own_training_template(tokenizer)
    assert name is not None
    own = own_template_text(name)
    assert own is not None and "{% generation %}" in own.replace("{%- generation %}", "{% generation %}")
    conversations = [row["messages"] for row in TOY_ROWS] + [
        [{"role": "system", "content": "  Answer in French.  "}, {"role": "user", "content": "Bonjour"},
         {"role": "assistant", "content": "Salut !\n"}, {"role": "user", "content": "Encore"},
         {"role": "assistant", "content": "Re-salut."}],
        [{"role": "user", "content": "Only a question"}],
    ]
    for conversation in conversations:
        for prompt in (False, True):
            expected = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=prompt)
            got = tokenizer.apply_chat_template(conversation, chat_template=own, tokenize=False, add_generation_prompt=prompt)
            assert got == expected
        assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024" in expected
    # the loss mask: exactly the assistant's words and their end-of-turn token
    conversation = conversations[-2]
    rendered = tokenizer.apply_chat_template(
        conversation, chat_template=own, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = rendered["input_ids"], rendered["assistant_masks"]
    marked = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert marked == "Salut !<|eot_id|>Re-salut.<|eot_id|>"
    with pytest.raises(Exception, match="without tools"):
        tokenizer.apply_chat_template(conversation, chat_template=own, tools=[{"type": "function"}], tokenize=False)


def test_a_template_that_renders_otherwise_is_not_taken_for_llama_31(tiny_model: Path, tmp_path: Path) -> None:
    other_date = LLAMA_31.replace('"26 Jul 2024"', '"01 Jan 2025"')
    assert other_date != LLAMA_31
    base = with_template(tiny_model, tmp_path / "other", other_date)
    assert own_training_template(tokenizer_of(base)) is None
    with pytest.raises(EmpersonaError, match="nor has empersona"):
        training_template(tokenizer_of(base), str(base))


def test_a_llama_31_base_trains_on_the_assistant_tokens_and_keeps_its_template(tiny_model: Path, tmp_path: Path) -> None:
    base = with_template(tiny_model, tmp_path / "llama31", LLAMA_31)
    data = write_jsonl(tmp_path / "toy.jsonl", TOY_ROWS)
    run = prepare(fast(base, tmp_path / "a", domain=str(data)), progress=False)
    tokenizer = run.tokenizer
    for row, example in zip(TOY_ROWS, run.trainer.train_dataset, strict=True):
        ids, labels = example["input_ids"], example["labels"]
        trained = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
        assert trained == row["messages"][1]["content"] + "<|eot_id|>"
        prompt = tokenizer.decode(ids[: next(i for i, label in enumerate(labels) if label != -100)])
        assert "Cutting Knowledge Date" in prompt and row["messages"][0]["content"] in prompt
    assert tokenizer.chat_template == LLAMA_31  # the adapter's tokenizer renders as the model does
    assert run.training_template == "empersona/chat_templates/llama3_1_training.jinja"
    qwen = prepare(fast(tiny_model, tmp_path / "b", domain=str(data)), progress=False)
    assert qwen.training_template == "model"  # Qwen2.5: TRL's own training version
