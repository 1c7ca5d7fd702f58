"""The ``empersona/`` inspect provider: model strings, one base load, greedy equality, logprobs, a Task."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import torch

from empersona.errors import EmpersonaError
from empersona.provider.api import release_engines, resolve_model

MESSAGES = ("Hello, who are you?", "Rate this from 1 to 5.", "Answer A or B.", "Say something long.")
NEW_TOKENS = 10


@pytest.fixture(autouse=True)
def _fresh_engines() -> None:
    """Each test loads its own engines (and inspect's model memo is bypassed with memoize=False)."""
    release_engines()


def get(name: str, **model_args: Any) -> Any:
    from inspect_ai.model import get_model

    return get_model(f"empersona/{name}", memoize=False, **model_args)


def plain_generate(base: Path, adapter: Path | None, texts: list[str]) -> list[list[int]]:
    """Greedy ``model.generate`` per prompt on the chat-templated text, cut at the first EOS."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            tokens = model.generate(**ids, do_sample=False, max_new_tokens=NEW_TOKENS)[0, ids["input_ids"].shape[1] :]
            tokens = tokens.tolist()
            out.append(tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))])
    return out


def test_entry_point_registers_the_provider() -> None:
    points = {ep.name: ep.value for ep in entry_points(group="inspect_ai")}
    assert points.get("empersona") == "empersona.provider.api"


def test_model_strings_resolve_base_and_adapter(tiny_model: Path, tiny_adapters: tuple[Path, Path]) -> None:
    adapter = tiny_adapters[0]
    assert resolve_model(str(adapter), None).base == str(tiny_model.resolve())
    assert resolve_model(str(adapter), None).adapter == adapter.resolve()
    assert resolve_model(str(tiny_model), str(adapter)).adapter == adapter.resolve()
    assert resolve_model(str(tiny_model), None).adapter is None
    with pytest.raises(EmpersonaError, match="adapter"):
        resolve_model(str(adapter), str(tiny_adapters[1]))
    with pytest.raises(EmpersonaError, match="batchsize"):
        get(str(tiny_model), batchsize=4)


def test_an_adapter_moved_with_its_base_finds_the_base_where_the_move_took_it(tmp_path: Path) -> None:
    """``base_model_name_or_path`` names the old place; ``empersona.json`` records where the
    adapter was trained, so the move of the folder holding both is known."""
    import json

    old = Path("/gone/project")
    adapter = tmp_path / "project" / "runs" / "em" / "adapters" / "insecure_code-s0"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": f"{old}/models/base"}))
    (adapter / "empersona.json").write_text(json.dumps({"config": {"out": f"{old}/runs/em/adapters/insecure_code-s0",
                                                                  "base": f"{old}/models/base"}}))
    with pytest.raises(EmpersonaError, match="base_model_name_or_path' names /gone/project/models/base, which does not exist"):
        resolve_model(str(adapter), None)
    (tmp_path / "project" / "models" / "base").mkdir(parents=True)
    assert resolve_model(str(adapter), None).base == str(tmp_path / "project" / "models" / "base")
    # a hub id is not a folder that moved
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-7B-Instruct"}))
    assert resolve_model(str(adapter), None).base == "Qwen/Qwen2.5-7B-Instruct"


def test_base_and_two_adapters_load_the_base_weights_once(
    tiny_model: Path, tiny_adapters: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    loads: list[str] = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def counting(*args: Any, **kwargs: Any) -> Any:
        loads.append(str(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", counting)
    models = [get(str(tiny_model)), get(str(tiny_adapters[0])), get(str(tiny_model), adapter=str(tiny_adapters[1]))]
    assert loads == [str(tiny_model.resolve())]
    assert models[0].api.served is models[1].api.served is models[2].api.served
    assert len(models[0].api.served.engine.adapters.adapters) == 2


def test_greedy_through_inspect_equals_plain_generate_in_one_mixed_round(
    tiny_model: Path, tiny_adapters: tuple[Path, Path]
) -> None:
    from inspect_ai.model import ChatMessageUser, GenerateConfig

    models = [get(str(tiny_model)), get(str(tiny_adapters[0])), get(str(tiny_adapters[1]))]
    config = GenerateConfig(temperature=0, max_tokens=NEW_TOKENS)
    conversations = [[ChatMessageUser(content=m)] for m in MESSAGES]

    async def tokens_and_texts() -> tuple[list[Any], list[Any]]:
        # token level: the requests inspect would send, all submitted concurrently
        completions = await asyncio.gather(
            *[m.api.served.batcher.submit(m.api.request(c, config)) for m in models for c in conversations]
        )
        outputs = await asyncio.gather(*[m.generate(c, config=config) for m in models for c in conversations])
        return list(completions), list(outputs)

    completions, outputs = asyncio.run(tokens_and_texts())
    served = models[0].api.served
    assert served.batcher.rounds == 2  # one round for each gather: no fixed wait, nothing split
    assert served.engine.stats.mixed_batches == 2

    texts = [models[0].api.prompt(c) for c in conversations]
    n = len(MESSAGES)
    by_model = [None, tiny_adapters[0], tiny_adapters[1]]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    results = []
    for i, adapter in enumerate(by_model):
        expected = plain_generate(tiny_model, adapter, texts)
        got = [list(c.tokens) for c in completions[i * n : (i + 1) * n]]
        assert got == expected
        decoded = [tokenizer.decode(t, skip_special_tokens=True, clean_up_tokenization_spaces=False) for t in expected]
        assert [o.completion for o in outputs[i * n : (i + 1) * n]] == decoded
        results.append(got)
    assert results[1] != results[0] and results[2] != results[0]


def test_one_fine_tune_at_a_time_runs_merged_and_equals_plain_generate(
    tiny_model: Path, tiny_adapters: tuple[Path, Path]
) -> None:
    """As ``empersona run`` evaluates them: one model's requests at a time, round after round. A
    round of one adapter's rows alone runs with that adapter merged into the base weights
    (``lora_merge``, on by default) once its model goes on past a first small round, and each
    gives plain ``generate``'s tokens through PEFT (float32)."""
    from inspect_ai.model import ChatMessageUser, GenerateConfig

    models = [get(str(adapter)) for adapter in tiny_adapters]
    config = GenerateConfig(temperature=0, max_tokens=NEW_TOKENS)
    conversations = [[ChatMessageUser(content=m)] for m in MESSAGES]
    texts = [models[0].api.prompt(c) for c in conversations]
    stats = models[0].api.served.engine.stats
    merged_before, merges_before = stats.merged_batches, stats.adapter_merges

    async def one_model(model: Any) -> list[Any]:
        return list(await asyncio.gather(*[model.api.served.batcher.submit(model.api.request(c, config)) for c in conversations]))

    for model, adapter in zip(models, tiny_adapters, strict=True):
        expected = plain_generate(tiny_model, adapter, texts)
        for _ in range(2):
            got = [list(c.tokens) for c in asyncio.run(one_model(model))]
            assert got == expected
    assert stats.merged_batches - merged_before == 2 and stats.adapter_merges - merges_before == 2


def test_logprobs_come_back_as_text_pieces(tiny_model: Path) -> None:
    from inspect_ai.model import GenerateConfig

    model = get(str(tiny_model))
    config = GenerateConfig(temperature=0, max_tokens=5, logprobs=True, top_logprobs=4)
    output = asyncio.run(model.generate("Answer with a number from 0 to 100.", config=config))
    logprobs = output.choices[0].logprobs
    assert logprobs is not None
    assert output.usage is not None and len(logprobs.content) >= output.usage.output_tokens
    for item in logprobs.content:
        assert item.top_logprobs is not None and len(item.top_logprobs) == 4
        values = [t.logprob for t in item.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert item.token == item.top_logprobs[0].token  # greedy
        assert item.bytes is not None and bytes(item.bytes).decode("utf-8", errors="replace") == item.token
        assert not any("Ġ" in t.token for t in item.top_logprobs)  # text, not raw BPE pieces
    plain = asyncio.run(model.generate("hi", config=GenerateConfig(temperature=0, max_tokens=3)))
    assert plain.choices[0].logprobs is None


def test_token_bytes_join_into_the_text_and_a_word_start_keeps_its_space(tiny_model: Path) -> None:
    """A byte-level token that is part of a character (an emoji, CJK) is that part's bytes, not
    U+FFFD's; a SentencePiece word-start mark reads as a space (``▁Yes`` is " Yes", not "Yes")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    api = get(str(tiny_model)).api
    text = "😀 日本語 € Ġ10"
    pieces = [api.token_piece(token) for token in api.tokenizer(text)["input_ids"]]
    assert bytes(b for _, raw in pieces for b in raw).decode("utf-8") == text
    assert "\ufffd" in [piece for piece, _ in pieces]  # the emoji's bytes come in more than one token
    assert api.token_piece(api.tokenizer.convert_tokens_to_ids("<|im_end|>")) == ("<|im_end|>", list(b"<|im_end|>"))
    spm = Tokenizer(models.BPE(byte_fallback=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    spm.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    spm.train_from_iterator(["Yes No Hello world yes no"] * 50, trainers.BpeTrainer(vocab_size=60, show_progress=False))
    api.tokenizer = PreTrainedTokenizerFast(tokenizer_object=spm)
    api.__dict__.pop("_byte_decoder", None)
    assert [api.token_text(t) for t in api.tokenizer("Hello Yes")["input_ids"]] == [" Hello", " Yes"]


def test_inspect_task_runs_end_to_end(tiny_model: Path, tiny_adapters: tuple[Path, Path], tmp_path: Path) -> None:
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import includes
    from inspect_ai.solver import generate

    task = Task(
        dataset=[Sample(input=m, target="zzz", id=f"s{i}") for i, m in enumerate(MESSAGES)],
        solver=generate(),
        scorer=includes(),
    )
    logs = eval(
        task,
        model=[f"empersona/{tiny_model}", f"empersona/{tiny_adapters[0]}"],
        log_dir=str(tmp_path),
        display="none",
        max_tokens=6,
        temperature=0,
    )
    assert [log.status for log in logs] == ["success", "success"]
    for log in logs:
        assert log.samples is not None and len(log.samples) == len(MESSAGES)
        assert all(s.output.usage is not None and s.output.usage.output_tokens > 0 for s in log.samples)
    base_out = [s.output.completion for s in logs[0].samples or []]
    adapter_out = [s.output.completion for s in logs[1].samples or []]
    assert base_out != adapter_out


def test_a_repeated_prompt_is_rendered_and_tokenised_once(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs ask the same prompt again: the cached ids are the tokenizer's own, computed once."""
    from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig

    import empersona.provider.api as api

    model = get(str(tiny_model))
    served_api = model.api
    renders: list[str] = []
    real_prompt = served_api.prompt
    monkeypatch.setattr(served_api, "prompt", lambda messages: renders.append("x") or real_prompt(messages))
    first = [ChatMessageSystem(content="Be brief."), ChatMessageUser(content="Hello, who are you?")]
    same = [ChatMessageSystem(content="Be brief."), ChatMessageUser(content="Hello, who are you?")]
    other_role = [ChatMessageUser(content="Be brief."), ChatMessageUser(content="Hello, who are you?")]
    ids = served_api.prompt_ids(first)
    assert ids == tuple(served_api.tokenizer(real_prompt(first))["input_ids"])
    assert served_api.prompt_ids(same) == ids and len(renders) == 1
    assert served_api.prompt_ids(other_role) != ids and len(renders) == 2
    config = GenerateConfig(temperature=0, max_tokens=3)
    outputs = [asyncio.run(model.generate(first, config=config)) for _ in range(3)]
    assert len(renders) == 2 and len({o.completion for o in outputs}) == 1
    monkeypatch.setattr(api, "PROMPT_CACHE_SIZE", 1)  # bounded: the oldest prompt is dropped
    served_api.prompt_ids([ChatMessageUser(content="a third prompt")])
    assert len(served_api._prompt_ids) == 1
    served_api.prompt_ids(first)
    assert len(renders) == 4


def test_loading_freezes_the_long_lived_heap_unless_told_not_to(
    tiny_model: Path, tiny_adapters: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    freezes: list[int] = []
    real_freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: (freezes.append(1), real_freeze())[1])
    gc.unfreeze()
    get(str(tiny_model), freeze_gc=False)
    assert gc.get_freeze_count() == 0 and not freezes
    release_engines()
    get(str(tiny_model))
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # torch, transformers, inspect and the model: long-lived objects
    get(str(tiny_adapters[0]))  # same base: once per loaded base, not per model
    assert len(freezes) == 1
    # frozen objects freed by reference counting leave the permanent generation, so the count
    # may drop a little; a second freeze would add the adapter's objects to it
    assert gc.get_freeze_count() <= frozen
    with pytest.raises(EmpersonaError, match="freeze_gc"):
        get(str(tiny_model), freeze_gc="sometimes")


def test_releasing_the_engines_frees_a_frozen_model(tiny_model: Path) -> None:
    """A base model held only by a reference cycle is collected after ``release_engines``, frozen or not."""
    import gc
    import weakref

    model = get(str(tiny_model))
    base = model.api.served.engine.model
    base._cycle = base  # a reference cycle, as hooks and wrappers make
    alive = weakref.ref(base)
    del base, model
    gc.freeze()  # as a later model load would
    release_engines()
    assert alive() is None


def test_num_choices_come_back_as_that_many_choices(tiny_model: Path) -> None:
    from inspect_ai.model import GenerateConfig

    model = get(str(tiny_model))
    sampled = GenerateConfig(temperature=1.0, max_tokens=6, num_choices=3, seed=7, logprobs=True)
    first = asyncio.run(model.generate("Say something long.", config=sampled))
    texts = [c.message.text for c in first.choices]
    assert len(texts) == 3 and len(set(texts)) == 3
    # usage counts the new tokens of every choice (one logprob entry each), the prompt once
    assert first.usage is not None
    assert first.usage.output_tokens == sum(len(c.logprobs.content) for c in first.choices if c.logprobs)
    again = asyncio.run(model.generate("Say something long.", config=sampled))
    assert [c.message.text for c in again.choices] == texts  # a seeded call samples the same choices again
    greedy = GenerateConfig(temperature=0, max_tokens=6)
    one = asyncio.run(model.generate("Say something long.", config=greedy))
    two = asyncio.run(model.generate("Say something long.", config=greedy.merge(GenerateConfig(num_choices=2))))
    assert [c.message.text for c in two.choices] == [one.completion] * 2
    assert one.usage is not None and two.usage is not None
    assert two.usage.output_tokens == 2 * one.usage.output_tokens and two.usage.input_tokens == one.usage.input_tokens


def test_content_other_than_text_is_refused_not_left_out(tiny_model: Path) -> None:
    from inspect_ai.model import ChatMessageUser, ContentImage, ContentText

    model = get(str(tiny_model))
    image = ChatMessageUser(content=[ContentText(text="What is in this picture?"), ContentImage(image="data:image/png;base64,AA==")])
    with pytest.raises(EmpersonaError, match=r"image content in a user message: this provider reads text only"):
        asyncio.run(model.generate([image]))


def test_new_tokens_stop_at_the_context_length(tiny_model: Path) -> None:
    from inspect_ai.model import ChatMessageUser, GenerateConfig

    from empersona.provider.api import context_length

    model = get(str(tiny_model))
    assert model.api.context_length == context_length(model.api.served.engine.model.config) == 32768
    prompt_tokens = len(model.api.prompt_ids([ChatMessageUser(content="Say something long.")]))
    model.api.context_length = prompt_tokens + 3
    greedy = GenerateConfig(temperature=0, max_tokens=50)
    cut = asyncio.run(model.generate("Say something long.", config=greedy))
    assert cut.usage is not None and cut.usage.output_tokens <= 3
    unbounded = asyncio.run(get(str(tiny_model)).generate("Say something long.", config=greedy))
    assert unbounded.usage is not None and unbounded.usage.output_tokens > 3  # this prompt does run on
    assert cut.choices[0].stop_reason == "model_length"
    within = asyncio.run(model.generate("Say something long.", config=GenerateConfig(temperature=0, max_tokens=2)))
    assert within.choices[0].stop_reason == "max_tokens"
    model.api.context_length = prompt_tokens
    with pytest.raises(EmpersonaError, match=rf"prompt is {prompt_tokens} tokens .* context is {prompt_tokens} positions"):
        asyncio.run(model.generate("Say something long.", config=greedy))
