"""Sampling as the model's own generate samples: per-request seeds, HF's filters, repetition
penalty, and the model's generation_config defaults.

A seeded request must draw the same tokens whatever shares its batch (per-row counter-based
draws), and choice i of a seeded call as a single call with seed + i; top-k with top-p keeps the
set Hugging Face's warpers keep (top-p over the distribution left after top-k); the repetition
penalty gives ``model.generate(repetition_penalty=...)``'s greedy tokens; the ``empersona/`` API
fills unset sampling fields from ``generation_config.json`` unless ``generation_config=false``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from empersona.errors import EmpersonaError
from empersona.provider.api import SamplingDefaults, release_engines, sampling_defaults
from empersona.provider.engine import Engine, EngineOptions, Request, prompt_tokens_seen
from empersona.provider.sampling import row_uniform, sample_next
from test_provider_engine import lively, load, prompt_ids  # noqa: F401 (lively: a fixture)

QWEN_INSTRUCT_DEFAULTS = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


def splitmix_reference(seed: int, position: int) -> float:
    """``row_uniform`` in plain Python integers (unsigned 64-bit arithmetic)."""
    mask = 2**64 - 1

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    hashed = mix((mix(seed & mask) + position * 0x9E3779B97F4A7C15) & mask)
    return (hashed >> 41) / 2**23


def test_row_uniform_is_splitmix64_of_seed_and_position() -> None:
    seeds = [0, 1, 42, -1, -(2**63), 2**63 - 1, 123456789012345]
    positions = [0, 1, 7, 5000, 2**31 + 3]
    seed = torch.tensor([s for s in seeds for _ in positions])
    position = torch.tensor([p for _ in seeds for p in positions])
    got = row_uniform(seed, position).tolist()
    assert got == [splitmix_reference(s, p) for s in seeds for p in positions]
    many = row_uniform(torch.zeros(100_000, dtype=torch.long), torch.arange(100_000))
    assert 0 <= float(many.min()) and float(many.max()) < 1
    assert abs(float(many.mean()) - 0.5) < 0.005  # one seed over positions: uniform


def row_settings(rows: int, temperature: float, top_p: float, top_k: int) -> tuple[torch.Tensor, ...]:
    """Temperature, top-p, top-k, greedy flag, seeds 0..rows-1 and position 0 for every row."""
    return (
        torch.full((rows,), temperature),
        torch.full((rows,), top_p),
        torch.full((rows,), top_k, dtype=torch.long),
        torch.full((rows,), temperature <= 0),
        torch.arange(rows),
        torch.zeros(rows, dtype=torch.long),
    )


# a made-up next-token distribution over 12 tokens, shuffled so the sort order matters
LOGITS = torch.tensor([3.0, 2.6, 2.2, 1.9, 1.5, 1.2, 1.0, 0.8, 0.5, 0.3, 0.0, -0.5])[
    torch.tensor([5, 0, 9, 3, 11, 1, 7, 2, 10, 4, 8, 6])
]


def hf_distribution(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The sampling distribution Hugging Face's warpers (temperature, top-k, top-p) give ``logits``."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    scores = warpers(torch.zeros((1, 1), dtype=torch.long), logits[None].clone())
    return torch.softmax(scores[0].double(), -1)


def top_p_over_whole_vocabulary(logits: torch.Tensor, top_k: int, top_p: float) -> set[int]:
    """The kept set when the top-p cut uses the full softmax (not the one renormalised after top-k)."""
    ordered, order = logits.sort(descending=True)
    probs = torch.softmax(ordered, -1)
    keep = ((probs.cumsum(-1) - probs) < top_p) & (torch.arange(len(logits)) < (top_k or len(logits)))
    return set(order[keep].tolist())


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 4, 0.7), (0.8, 6, 0.5), (1.5, 3, 0.9), (1.0, 0, 0.6), (1.0, 5, 1.0), (2.0, 8, 0.75)],
)
def test_top_k_then_top_p_keeps_what_hf_warpers_keep(temperature: float, top_k: int, top_p: float) -> None:
    rows = 6000
    expected = hf_distribution(LOGITS, temperature, top_k, top_p)
    logits = LOGITS.expand(rows, -1).contiguous()
    choice, _, _, _ = sample_next(logits, *row_settings(rows, temperature, top_p, top_k), 0, True, True)
    observed = torch.bincount(choice, minlength=LOGITS.numel()).double() / rows
    assert set(torch.nonzero(observed).flatten().tolist()) == set(torch.nonzero(expected).flatten().tolist())
    sigma = (expected * (1 - expected) / rows).sqrt()
    assert ((observed - expected).abs() <= 5 * sigma + 1e-9).all(), (observed, expected)
    if (temperature, top_k, top_p) == (1.0, 4, 0.7):  # the case the whole-vocabulary cut gets wrong
        assert len(top_p_over_whole_vocabulary(LOGITS, top_k, top_p)) > int((expected > 0).sum())


def test_one_seed_over_many_positions_follows_the_distribution() -> None:
    rows = 20_000
    logits = LOGITS.expand(rows, -1).contiguous()
    temperature, top_p, top_k, greedy, _, _ = row_settings(rows, 1.0, 1.0, 0)
    choice, _, _, _ = sample_next(
        logits, temperature, top_p, top_k, greedy, torch.full((rows,), 99), torch.arange(rows), 0, True, False
    )
    observed = torch.bincount(choice, minlength=LOGITS.numel()).double() / rows
    expected = torch.softmax(LOGITS.double(), -1)
    sigma = (expected * (1 - expected) / rows).sqrt()
    assert ((observed - expected).abs() <= 5 * sigma + 1e-9).all(), (observed, expected)


def test_a_rows_draw_does_not_depend_on_its_neighbours_filters_or_penalty() -> None:
    generator = torch.Generator().manual_seed(1)
    rows, vocab = 512, 40
    logits = torch.randn(rows, vocab, generator=generator) * 2
    temperature, top_p, top_k, greedy, seed, position = row_settings(rows, 1.0, 1.0, 0)
    plain = sample_next(logits, temperature, top_p, top_k, greedy, seed, position, 0, True, False)[0]
    top_k = top_k.clone()
    top_k[1::2] = 3  # every other row filters: the batch takes the filtered path
    penalty = torch.ones(rows)
    penalty[1::2] = 1.5
    seen = torch.rand(rows, vocab, generator=generator) < 0.3
    mixed = sample_next(logits, temperature, top_p, top_k, greedy, seed, position, 0, True, True, penalty, seen)[0]
    assert torch.equal(mixed[0::2], plain[0::2])
    assert not torch.equal(mixed[1::2], plain[1::2])


def test_inductor_compiled_sampler_draws_as_eager() -> None:
    """The GPU path compiles the sampler (dynamic=False): int64 hashing, the filtered draw and the
    penalty give the same tokens from inductor's generated code as eagerly (here: its CPU code)."""
    generator = torch.Generator().manual_seed(0)
    rows, vocab = 8, 64
    logits = torch.randn(rows, vocab, generator=generator) * 3
    temperature = torch.tensor([1.0, 0.7, 0.0, 1.3, 1.0, 1.0, 0.5, 2.0])
    top_p = torch.tensor([1.0, 0.8, 1.0, 0.5, 1.0, 0.9, 1.0, 0.3])
    top_k = torch.tensor([0, 5, 0, 0, 3, 10, 0, 20])
    seed = torch.tensor([0, -1, 2**62, -(2**63), 17, 17, 5, 123456789])
    position = torch.tensor([0, 3, 900, 12, 12, 13, 2**33, 40])
    penalty = torch.tensor([1.0, 1.3, 2.0, 1.0, 0.8, 1.1, 1.0, 1.5])
    seen = torch.rand(rows, vocab, generator=generator) < 0.3
    args = (logits, temperature, top_p, top_k, temperature <= 0, seed, position, 2, True, True, penalty, seen)
    torch._dynamo.reset()
    compiled = torch.compile(sample_next, backend="inductor", dynamic=False)
    for got, want in zip(compiled(*args), sample_next(*args), strict=True):
        assert got is not None and want is not None
        if got.dtype == torch.long:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------- seeds in the engine
@pytest.mark.parametrize(
    "options",
    [EngineOptions(min_prefix=8), EngineOptions(min_prefix=8, static_cache=True, sync_every=2)],
    ids=["dynamic", "static"],
)
def test_a_seeded_request_draws_the_same_whatever_shares_its_batch(
    lively: tuple[Path, Path, Path], options: EngineOptions
) -> None:
    base, a1, _ = lively
    prompts = prompt_ids(base)
    engine = Engine(load(base), options)
    key = engine.add_adapter(a1)
    target = Request(prompts[1], 10, temperature=1.0, seed=123)
    alone = engine.generate([target])[0]
    neighbours = [
        Request(prompts[0], 10, temperature=1.0, seed=7),
        Request(prompts[2], 4, temperature=1.0),  # unseeded, ends early: the static round shrinks
        Request(prompts[3], 10, temperature=0.8, top_k=5, seed=123, adapter=key),
        Request(prompts[1], 10, temperature=0.0),
        Request(prompts[1], 10, temperature=1.0, seed=124),
    ]
    batches = engine.stats.batches
    together = engine.generate([*neighbours[:2], target, *neighbours[2:]])
    assert engine.stats.batches == batches + 1  # one round with the neighbours
    assert together[2] == alone
    assert together[-1].tokens != alone.tokens  # the next seed draws another answer
    assert len(set(alone.tokens)) > 3  # a sampled, varied answer


def test_choice_i_of_a_seeded_call_draws_as_one_call_with_seed_plus_i(lively: tuple[Path, Path, Path]) -> None:
    from inspect_ai.model import GenerateConfig, get_model

    release_engines()
    model = get_model(f"empersona/{lively[0]}", memoize=False)

    async def texts() -> tuple[list[str], list[str]]:
        config = GenerateConfig(temperature=1.0, max_tokens=8, seed=40)
        several = await model.generate("Say something long.", config=config.merge(GenerateConfig(num_choices=3)))
        singles = [
            await model.generate("Say something long.", config=config.merge(GenerateConfig(seed=40 + i))) for i in range(3)
        ]
        return [c.message.text for c in several.choices], [s.choices[0].message.text for s in singles]

    several, singles = asyncio.run(texts())
    assert several == singles
    assert len(set(several)) == 3


def test_unseeded_requests_stay_random_beside_a_seeded_one(lively: tuple[Path, Path, Path]) -> None:
    base = lively[0]
    prompts = prompt_ids(base)
    engine = Engine(load(base))
    seeded = Request(prompts[0], 10, temperature=1.0, seed=5)
    free = Request(prompts[1], 10, temperature=1.0)
    first = engine.generate([seeded, free])
    second = engine.generate([seeded, free])
    assert first[0] == second[0]
    assert first[1].tokens != second[1].tokens
    torch.manual_seed(11)  # unseeded rows draw their seeds from torch's global generator
    again = engine.generate([free])
    torch.manual_seed(11)
    assert engine.generate([free]) == again
    # seeded rows leave the global generator alone: no reseeding from the request's seed
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    engine.generate([seeded, Request(prompts[2], 6, temperature=1.0, seed=8)])
    assert torch.equal(torch.rand(4), expected)


# ---------------------------------------------------------------------- repetition penalty
def penalised_reference(model: Any, prompt: tuple[int, ...], n: int, penalty: float, eos: tuple[int, ...]) -> tuple[int, ...]:
    """Greedy ``model.generate`` with ``repetition_penalty``, cut at the first EOS like the engine."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        generated = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
            repetition_penalty=penalty,
        )[0, len(prompt) :].tolist()
    cut = next((i for i, t in enumerate(generated) if t in eos), len(generated))
    return tuple(generated[:cut])


@pytest.mark.parametrize(
    "options",
    [
        EngineOptions(min_prefix=8),
        EngineOptions(min_prefix=8, static_cache=True, sync_every=2, shrink_at=0.75),
        EngineOptions(min_prefix=8, compile=True, compile_backend="eager"),
    ],
    ids=["dynamic", "static+shrink", "compiled"],
)
def test_repetition_penalty_greedy_equals_generate_for_base_and_adapter(
    lively: tuple[Path, Path, Path], options: EngineOptions
) -> None:
    base, a1, _ = lively
    prompts = prompt_ids(base)[:4]
    engine = Engine(load(base), options)
    key = engine.add_adapter(a1)
    # (adapter, penalty, new tokens): the short rows end early, so a static round shrinks with the rest
    setups = [(None, 1.5, 12), (key, 1.3, 12), (None, 1.0, 3), (key, 2.0, 3)]
    requests = [Request(p, n, temperature=0.0, adapter=k, repetition_penalty=pen) for k, pen, n in setups for p in prompts]
    done = engine.generate(requests)
    assert engine.stats.batches == 1 and engine.stats.mixed_batches == 1
    if options.shrink_at:
        assert engine.stats.shrunk_rounds >= 1
    models = {None: load(base), key: load(base, a1)}
    got = {}
    for (k, pen, n), start in zip(setups, range(0, len(requests), len(prompts)), strict=True):
        got[(k, pen)] = [c.tokens for c in done[start : start + len(prompts)]]
        assert got[(k, pen)] == [penalised_reference(models[k], p, n, pen, engine.eos_ids) for p in prompts], (k, pen)
    unpenalised = [penalised_reference(models[None], p, 12, 1.0, engine.eos_ids) for p in prompts]
    assert got[(None, 1.5)] != unpenalised  # the penalty changes greedy answers


def test_repetition_penalty_counts_prompt_tokens_but_not_padding(lively: tuple[Path, Path, Path]) -> None:
    base = lively[0]
    prompts = prompt_ids(base)
    engine = Engine(load(base), EngineOptions(min_prefix=8))
    requests = [Request(p, 4, temperature=0.0, repetition_penalty=1.2) for p in (prompts[4], prompts[3])]
    batch = engine._layout(requests, len(requests), 4)
    assert batch.prefix > 0 and len(prompts[4]) < len(prompts[3])  # a shared prefix, then padding in row 0
    assert engine.pad_id not in prompts[4]
    seen = prompt_tokens_seen(batch, engine.model.config.vocab_size)
    for row, request in enumerate(requests):
        assert set(torch.nonzero(seen[row]).flatten().tolist()) == set(request.prompt)


def test_repetition_penalty_must_be_positive(lively: tuple[Path, Path, Path]) -> None:
    base = lively[0]
    engine = Engine(load(base))
    with pytest.raises(ValueError, match="repetition_penalty"):
        engine.generate([Request(prompt_ids(base)[0], 2, repetition_penalty=0.0)])


# ---------------------------------------------------------------------- generation_config defaults
def with_generation_config(model_dir: Path, out: Path, settings: dict[str, Any] | None) -> Path:
    """A copy of ``model_dir`` whose generation_config.json adds ``settings`` (None: no such file)."""
    shutil.copytree(model_dir, out)
    file = out / "generation_config.json"
    if settings is None:
        file.unlink(missing_ok=True)
    else:
        file.write_text(json.dumps({**json.loads(file.read_text()), **settings}))
    return out


def test_sampling_defaults_read_the_generation_config(tmp_path: Path) -> None:
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "generation_config.json").write_text(json.dumps(QWEN_INSTRUCT_DEFAULTS))
    assert sampling_defaults(str(qwen)) == SamplingDefaults(0.7, 0.8, 20, 1.05)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "generation_config.json").write_text(json.dumps({"do_sample": False, "eos_token_id": 2}))
    assert sampling_defaults(str(plain)) == SamplingDefaults()  # do_sample is not read (hf/ sends its own)
    missing = tmp_path / "missing"
    missing.mkdir()
    assert sampling_defaults(str(missing)) == SamplingDefaults()
    (missing / "generation_config.json").write_text("{not json")
    with pytest.raises(EmpersonaError, match="generation_config.json"):
        sampling_defaults(str(missing))
    (plain / "generation_config.json").write_text(json.dumps({"do_sample": True, "repetition_penalty": -1.0}))
    with pytest.raises(EmpersonaError, match="'repetition_penalty'"):
        sampling_defaults(str(plain))
    # a setting plain generate applies and this provider does not is said, not dropped in silence
    (plain / "generation_config.json").write_text(json.dumps({"do_sample": True, "min_p": 0.05, "no_repeat_ngram_size": 0,
                                                              "typical_p": 1.0, "top_k": 20}))
    with pytest.warns(UserWarning, match=r"generation_config\.json: min_p=0\.05: model\.generate \(and hf/\) would apply"):
        assert sampling_defaults(str(plain)) == SamplingDefaults(top_k=20)  # settings that do nothing are not named


def test_unset_sampling_fields_come_from_the_generation_config_unless_turned_off(
    tiny_model: Path, tmp_path: Path
) -> None:
    from inspect_ai.model import ChatMessageUser, GenerateConfig, get_model

    release_engines()
    qwen = with_generation_config(tiny_model, tmp_path / "qwen", QWEN_INSTRUCT_DEFAULTS)
    greedy = with_generation_config(tiny_model, tmp_path / "greedy", {"do_sample": False, "temperature": 0.6})
    bare = with_generation_config(tiny_model, tmp_path / "bare", None)
    messages = [ChatMessageUser(content="hi")]

    def fields(folder: Path, config: GenerateConfig, **model_args: Any) -> tuple[float, float, int, float]:
        request = get_model(f"empersona/{folder}", memoize=False, **model_args).api.request(messages, config)
        return request.temperature, request.top_p, request.top_k, request.repetition_penalty

    unset = GenerateConfig(max_tokens=4)
    assert fields(qwen, unset) == (0.7, 0.8, 20, 1.05)
    assert fields(qwen, GenerateConfig(temperature=1.0, top_k=3)) == (1.0, 0.8, 3, 1.05)
    assert fields(qwen, unset, generation_config=False) == (1.0, 1.0, 0, 1.0)
    assert fields(greedy, unset) == (0.6, 1.0, 0, 1.0)  # do_sample false is not read: hf/ sends do_sample=true
    assert fields(greedy, GenerateConfig(temperature=0.9)) == (0.9, 1.0, 0, 1.0)
    assert fields(bare, unset) == (1.0, 1.0, 0, 1.0)
    with pytest.raises(EmpersonaError, match="generation_config"):
        get_model(f"empersona/{qwen}", memoize=False, generation_config="maybe")
