"""Tiny Qwen2 models: tokenizer load paths agree, Qwen chat template, inspect hf end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from empersona.errors import EmpersonaError
from empersona.testing.tiny import (
    IM_END,
    QWEN_DEFAULT_SYSTEM_PROMPT,
    build_tiny_model,
    main,
    train_tokenizer,
)

SAMPLES_OF_TEXT = [
    "Hello world, 12345 and 3.14159",
    '{"score": 5}\n\nAnswer with A or B?',
    "café naïve e\u0301 ﬁne Ångström",  # NFC changes the decomposed e + accent
    "日本語 テスト русский 😀 → 20°C",
    "I'm sure you've seen it; they'll DON'T   spaces\ttabs\r\n",
    "<|im_start|>user\nhi<|im_end|>\n",
]


def test_tokenizer_load_paths_agree(tiny_model: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(tiny_model)
    raw_saved = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    raw_trained = train_tokenizer(seed=0, vocab_size=1024)
    assert type(auto).__name__ == "Qwen2Tokenizer"
    for text in SAMPLES_OF_TEXT:
        ids = auto(text)["input_ids"]
        assert ids == raw_saved.encode(text).ids == raw_trained.encode(text).ids, text
        assert auto.decode(ids) == raw_saved.decode(ids, skip_special_tokens=False)
    # Qwen splits numbers into single digits
    digits = auto("12345")["input_ids"]
    assert [auto.decode([i]) for i in digits] == list("12345")
    # NFC: the decomposed and the composed form tokenize the same
    assert auto("e\u0301")["input_ids"] == auto("\u00e9")["input_ids"]


def test_special_tokens_and_generation_config(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer.eos_token == IM_END
    assert tokenizer.pad_token == "<|endoftext|>"
    for token in ("<|endoftext|>", "<|im_start|>", IM_END):
        assert len(tokenizer(token)["input_ids"]) == 1, token
    generation = json.loads((tiny_model / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids(IM_END) in generation["eos_token_id"]
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["vocab_size"] == len(tokenizer)


def test_chat_template_inserts_qwen_default_system_prompt(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    default = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert default.startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM_PROMPT}<|im_end|>\n")
    assert default.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    explicit = tokenizer.apply_chat_template(
        [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}], tokenize=False
    )
    assert QWEN_DEFAULT_SYSTEM_PROMPT not in explicit
    assert explicit.startswith("<|im_start|>system\n<|im_end|>\n")


def test_build_is_deterministic_and_head_dim_64_variant(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = build_tiny_model(tmp_path / "a", seed=3)
    b = build_tiny_model(tmp_path / "b", seed=3)
    wide = build_tiny_model(tmp_path / "wide", hidden_size=128, num_heads=2, num_kv_heads=2)
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all((weights_a[k] == weights_b[k]).all() for k in weights_a)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    config = json.loads((wide / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    with pytest.raises(EmpersonaError, match="num_heads"):
        build_tiny_model(tmp_path / "bad", hidden_size=64, num_heads=3)


def test_adapters_change_outputs_and_load_with_peft(tiny_model: Path, tiny_adapters: tuple[Path, Path]) -> None:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_adapters[0])
    inputs = tokenizer("Rate the response on a scale", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        base_logits = base(**inputs).logits
        logits = [AutoPeftModelForCausalLM.from_pretrained(p)(**inputs).logits for p in tiny_adapters]
        # transformers' own PEFT integration (the path inspect's hf provider takes)
        via_transformers = AutoModelForCausalLM.from_pretrained(tiny_adapters[0])(**inputs).logits
    assert not torch.allclose(base_logits, logits[0])
    assert not torch.allclose(logits[0], logits[1])
    torch.testing.assert_close(via_transformers, logits[0])
    adapter_config = json.loads((tiny_adapters[0] / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }
    assert Path(adapter_config["base_model_name_or_path"]) == tiny_model.resolve()


def _direct_greedy(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation with plain transformers, for comparison with inspect's hf provider."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_inspect_hf_greedy_generation_base_and_adapter(
    tiny_model: Path, tiny_adapters: tuple[Path, Path], tmp_path: Path
) -> None:
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.model import GenerateConfig, get_model
    from inspect_ai.solver import generate

    prompts = ["Say A.", "Say B."]
    task = Task(dataset=[Sample(input=p, id=f"s{i}") for i, p in enumerate(prompts)], solver=generate())
    models = [
        get_model(f"hf/{path}", config=GenerateConfig(max_tokens=6), do_sample=False)
        for path in (tiny_model, tiny_adapters[0])
    ]
    logs = eval(task, model=models, log_dir=str(tmp_path / "logs"), display="none")
    assert [log.status for log in logs] == ["success", "success"]
    completions: dict[str, list[str]] = {}
    for log in logs:
        assert log.samples is not None and len(log.samples) == 2
        samples = sorted(log.samples, key=lambda s: str(s.id))
        completions[log.eval.model] = [s.output.completion for s in samples]
        assert all(s.output.usage is not None and s.output.usage.output_tokens > 0 for s in samples)
    base_out = completions[f"hf/{tiny_model}"]
    adapter_out = completions[f"hf/{tiny_adapters[0]}"]
    assert base_out == [_direct_greedy(tiny_model, p, 6) for p in prompts]
    assert adapter_out == [_direct_greedy(tiny_adapters[0], p, 6) for p in prompts]
    assert base_out != adapter_out


def test_main_builds_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "m"), "--seed", "1"]) == 0
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert capsys.readouterr().out.strip() == str(tmp_path / "m")
    assert main(["--seed"]) == 2


def test_the_command_keeps_an_existing_model_and_names_bad_sizes(tmp_path: Path) -> None:
    """`empersona tiny-model DIR` wrote over whatever DIR held; a shape that does not divide was a traceback."""
    from typer.testing import CliRunner

    from empersona.cli import app
    from empersona.errors import EmpersonaError

    runner = CliRunner()
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "model.safetensors").write_bytes(b"my trained weights")
    result = runner.invoke(app, ["tiny-model", str(kept)])
    assert isinstance(result.exception, EmpersonaError) and "pass --overwrite" in str(result.exception)
    assert (kept / "model.safetensors").read_bytes() == b"my trained weights"
    result = runner.invoke(app, ["tiny-model", str(tmp_path / "odd"), "--hidden-size", "100", "--num-heads", "3"])
    assert isinstance(result.exception, EmpersonaError) and "must divide by num_heads (3)" in str(result.exception)
    assert runner.invoke(app, ["tiny-model", str(kept), "--overwrite"]).exit_code == 0
    assert (kept / "config.json").is_file()
