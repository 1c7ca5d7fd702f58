"""Where ``empersona/`` must behave as inspect's ``hf/`` does: stop sequences, the count of new
tokens, tokenizers without a chat template, and adapters it must refuse."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from empersona.errors import EmpersonaError
from empersona.provider.api import release_engines


@pytest.fixture(autouse=True)
def _fresh_engines() -> None:
    release_engines()


def get(name: str, **model_args: Any) -> Any:
    from inspect_ai.model import get_model

    return get_model(f"empersona/{name}", memoize=False, **model_args)


def test_a_stop_sequence_ends_the_text_and_the_counted_tokens(tiny_model: Path) -> None:
    from inspect_ai.model import GenerateConfig

    model = get(str(tiny_model))
    sampled = GenerateConfig(temperature=1.0, seed=3, max_tokens=24, logprobs=True)
    full = asyncio.run(model.generate("Say something long.", config=sampled))
    pieces = [item.token for item in full.choices[0].logprobs.content]
    text = "".join(pieces)
    assert full.completion == text and len(pieces) == 24  # it runs to max_tokens: no EOS in this sample
    stop = text[12:15]
    at = text.find(stop)
    cut = asyncio.run(model.generate("Say something long.", config=sampled.merge(GenerateConfig(stop_seqs=[stop]))))
    choice = cut.choices[0]
    assert choice.message.text == text[:at] and choice.stop_reason == "stop"
    kept = [item.token for item in choice.logprobs.content]
    # the tokens up to the one completing the stop sequence: counted and given logprobs, no more
    assert stop in "".join(kept) and stop not in "".join(kept[:-1]) and kept == pieces[: len(kept)]
    assert cut.usage.output_tokens == len(kept) < len(pieces)
    missing = asyncio.run(model.generate("Say something long.", config=sampled.merge(GenerateConfig(stop_seqs=["\x00"]))))
    assert missing.completion == text and missing.usage.output_tokens == 24


def test_the_eos_token_that_ends_an_answer_is_counted(tiny_model: Path, tmp_path: Path) -> None:
    """As ``hf/`` counts it: the EOS token is generated (and has a logprob entry)."""
    from inspect_ai.model import ChatMessageUser, GenerateConfig

    from empersona.provider.engine import Request

    sampled = GenerateConfig(temperature=1.0, seed=11, max_tokens=12, logprobs=True)
    model = get(str(tiny_model))
    prompt = model.api.prompt_ids([ChatMessageUser(content="Hello")])
    [run_on] = model.api.served.engine.generate([Request(prompt=prompt, max_new_tokens=12, temperature=1.0, seed=11)])
    # a copy of the model whose EOS is a token this answer first takes at step 3 or later: it ends there
    end = next(i for i in range(2, 12) if run_on.tokens[i] not in run_on.tokens[:i])
    ending = shutil.copytree(tiny_model, tmp_path / "ending")
    config_file = ending / "generation_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["eos_token_id"] = run_on.tokens[end]
    config_file.write_text(json.dumps(config), encoding="utf-8")
    release_engines()
    output = asyncio.run(get(str(ending)).generate("Hello", config=sampled))
    choice = output.choices[0]
    assert choice.stop_reason == "stop" and len(choice.logprobs.content) == end + 1
    assert output.usage.output_tokens == end + 1  # the answer's tokens and the EOS


def test_a_tokenizer_without_a_chat_template_gets_role_lines(tiny_model: Path, tmp_path: Path) -> None:
    from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig

    plain = shutil.copytree(tiny_model, tmp_path / "plain")
    config_file = plain / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config), encoding="utf-8")
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    model = get(str(plain))
    messages = [ChatMessageSystem(content="Be brief."), ChatMessageUser(content="Hello")]
    assert model.api.prompt(messages) == "system: Be brief.\nuser: Hello\n"
    output = asyncio.run(model.generate(messages, config=GenerateConfig(temperature=0, max_tokens=3)))
    assert output.usage.input_tokens == len(model.api.prompt_ids(messages))


def test_an_adapter_named_on_another_base_is_refused(tiny_model: Path, tiny_adapters: tuple[Path, Path], tmp_path: Path) -> None:
    from empersona.provider.api import resolve_model
    from empersona.testing.tiny import build_tiny_model

    adapter = tiny_adapters[0]
    other = build_tiny_model(tmp_path / "other", seed=5)  # same shapes, other weights
    with pytest.raises(EmpersonaError, match=r"adapter_config\.json.*trained on .* another model"):
        resolve_model(str(other), str(adapter))
    copy = shutil.copytree(tiny_model, tmp_path / "copy")  # a copy of its own base is that base
    assert resolve_model(str(copy), str(adapter)).adapter == adapter.resolve()
    assert resolve_model(str(tiny_model), str(adapter)).base == str(tiny_model.resolve())
    # trained on a hub model: a local base whose path does not name it is warned about
    hub = shutil.copytree(adapter, tmp_path / "hub-adapter")
    config = json.loads((hub / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-0.5B-Instruct"
    (hub / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.warns(UserWarning, match="trained on Qwen/Qwen2.5-0.5B-Instruct; .* does not look like that model"):
        resolve_model(str(other), str(hub))
    snapshot = shutil.copytree(tiny_model, tmp_path / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_model(str(snapshot), str(hub))  # a hub snapshot of that model: no warning


def test_an_activated_lora_is_refused(tiny_adapters: tuple[Path, Path], tmp_path: Path) -> None:
    from empersona.provider.lora import read_adapter

    alora = shutil.copytree(tiny_adapters[0], tmp_path / "alora")
    config_file = alora / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["alora_invocation_tokens"] = [5, 6]
    config_file.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(EmpersonaError, match="alora_invocation_tokens"):
        read_adapter(alora)


def test_max_tokens_below_one_is_refused(tiny_model: Path) -> None:
    """Not read as "unset" (the default of 2048 new tokens)."""
    from inspect_ai.model import GenerateConfig

    model = get(str(tiny_model))
    with pytest.raises(EmpersonaError, match="max_tokens=0; ask for at least 1"):
        asyncio.run(model.generate("Hello", config=GenerateConfig(max_tokens=0)))
