"""The engine decodes like ``model.generate``: greedy token for token, base and adapters in one batch.

The fixture models of tests/conftest.py are random and tiny: greedy decoding on them tends to
repeat one token. The ``lively`` model (the same weights scaled up) gives prompt-dependent,
varied continuations, so equality with ``model.generate`` is a strong check there too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from empersona.errors import EmpersonaError
from empersona.provider.engine import Engine, EngineOptions, Request
from empersona.provider.lora import read_adapter

MESSAGES = (
    "Hello there, how are you today?",
    "Rate this answer from 1 to 5.",
    "Which of these two AI systems are you? Answer A or B.",
    "Tell me about yourself in detail, please.",
    "ok",
)
NEW_TOKENS = 12


def prompt_ids(model_dir: Path) -> list[tuple[int, ...]]:
    """The made-up messages through the model's chat template, tokenised."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": m}], add_generation_prompt=True, tokenize=False)
        for m in MESSAGES
    ]
    return [tuple(tokenizer(t)["input_ids"]) for t in texts]


def load(model_dir: Path, adapter: Path | None = None) -> torch.nn.Module:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter) if adapter is not None else model


def reference(model: torch.nn.Module, prompts: list[tuple[int, ...]], n: int, eos: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Plain ``model.generate``, one prompt at a time, greedy; cut at the first EOS like the engine."""
    out = []
    device = next(model.parameters()).device  # the CUDA tests run it on the device
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            generated = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n
            )[0, len(prompt) :].tolist()
            cut = next((i for i, t in enumerate(generated) if t in eos), len(generated))
            out.append(tuple(generated[:cut]))
    return out


@pytest.fixture(scope="module")
def lively(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The tiny model with its weight matrices scaled by 6 (varied greedy output), and two adapters."""
    from transformers import AutoTokenizer

    from empersona.testing.tiny import build_tiny_adapter

    root = tmp_path_factory.mktemp("lively")
    model = load(tiny_model)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(6.0)
    model.save_pretrained(root / "base")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(root / "base")
    base = root / "base"
    return base, build_tiny_adapter(base, root / "a1", seed=1), build_tiny_adapter(base, root / "a2", seed=2)


def run_mixed(base: Path, adapters: tuple[Path, Path], options: EngineOptions) -> tuple[Engine, list[list[tuple[int, ...]]]]:
    """Base and both adapters, every prompt, in one ``generate`` call; outputs grouped per model."""
    engine = Engine(load(base), options)
    keys = [None, engine.add_adapter(adapters[0]), engine.add_adapter(adapters[1])]
    prompts = prompt_ids(base)
    requests = [Request(p, NEW_TOKENS, temperature=0.0, adapter=k) for k in keys for p in prompts]
    done = engine.generate(requests)
    tokens = [c.tokens for c in done]
    n = len(prompts)
    return engine, [tokens[i * n : (i + 1) * n] for i in range(3)]


@pytest.fixture(scope="module")
def expected() -> dict[tuple[Path, Path | None], list[tuple[int, ...]]]:
    """Reference outputs of plain ``generate``, computed once per (base, adapter)."""
    return {}


def reference_for(
    cache: dict[tuple[Path, Path | None], list[tuple[int, ...]]], base: Path, adapter: Path | None, eos: tuple[int, ...]
) -> list[tuple[int, ...]]:
    if (base, adapter) not in cache:
        cache[(base, adapter)] = reference(load(base, adapter), prompt_ids(base), NEW_TOKENS, eos)
    return cache[(base, adapter)]


@pytest.mark.parametrize(
    ("which", "options"),
    [
        ("fixture", EngineOptions(min_prefix=8)),
        ("lively", EngineOptions(min_prefix=8)),
        ("lively", EngineOptions(prefix_reuse=False)),
        ("lively", EngineOptions(min_prefix=8, static_cache=True)),
        ("lively", EngineOptions(prefix_reuse=False, static_cache=True, sync_every=3)),
        ("lively", EngineOptions(row_prefill_tokens=1)),
    ],
    ids=["fixture", "lively-dynamic+prefix", "lively-dynamic", "lively-static+prefix", "lively-static", "lively-by-row"],
)
def test_greedy_equals_generate_for_base_and_two_adapters_in_one_batch(
    which: str,
    options: EngineOptions,
    tiny_model: Path,
    tiny_adapters: tuple[Path, Path],
    lively: tuple[Path, Path, Path],
    expected: dict[tuple[Path, Path | None], list[tuple[int, ...]]],
) -> None:
    base, a1, a2 = (tiny_model, *tiny_adapters) if which == "fixture" else lively
    engine, (got_base, got_a1, got_a2) = run_mixed(base, (a1, a2), options)
    eos = engine.eos_ids
    assert got_base == reference_for(expected, base, None, eos)
    assert got_a1 == reference_for(expected, base, a1, eos)
    assert got_a2 == reference_for(expected, base, a2, eos)
    # the adapters really change the output, and everything ran as one mixed batch
    assert got_a1 != got_base and got_a2 != got_base and got_a1 != got_a2
    assert engine.stats.batches == 1 and engine.stats.mixed_batches == 1
    by_row = options.row_prefill_tokens <= max(len(p) for p in prompt_ids(base))
    assert (engine.stats.prefix_tokens_saved > 0) == (options.prefix_reuse and not by_row)
    if by_row:  # one prefill pass per row, then one batched pass per decode step
        assert engine.stats.forward_passes == 3 * len(MESSAGES) + NEW_TOKENS - 1
    if which == "lively":
        assert len({t for row in got_base for t in row}) > 10  # varied, not one repeated token


def test_compiled_decode_step_is_one_graph_and_decodes_the_same(
    lively: tuple[Path, Path, Path], expected: dict[tuple[Path, Path | None], list[tuple[int, ...]]]
) -> None:
    """The CUDA path's decode step (static cache + mixed LoRA) compiles without graph breaks.

    ``backend="eager"`` runs TorchDynamo's capture (what decides graph breaks) without code
    generation, so it is quick on CPU; CUDA uses the inductor backend with CUDA graphs.
    """
    from torch._dynamo.utils import counters

    base, a1, a2 = lively
    torch._dynamo.reset()
    counters.clear()
    engine, (got_base, got_a1, got_a2) = run_mixed(
        base, (a1, a2), EngineOptions(min_prefix=8, compile=True, compile_backend="eager")
    )
    eos = engine.eos_ids
    assert got_base == reference_for(expected, base, None, eos)
    assert got_a1 == reference_for(expected, base, a1, eos)
    assert got_a2 == reference_for(expected, base, a2, eos)
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] >= 1


@pytest.mark.parametrize("compile_mode", [None, "max-autotune-no-cudagraphs"], ids=["default-mode", "max-autotune"])
def test_inductor_compiled_decoding_equals_generate(
    lively: tuple[Path, Path, Path], expected: dict[tuple[Path, Path | None], list[tuple[int, ...]]],
    compile_mode: str | None,
) -> None:
    """The GPU configuration's compiler (inductor), generating real kernels, on CPU: same tokens.

    CUDA graphs are the one part of the GPU path this cannot run; the code inductor writes for
    the static-cache step and the compiled sampler does run here (about 20 s of compiling). With
    ``max-autotune`` inductor compiles the step under that mode's settings (on a CPU it may find
    little to tune: the weights are graph inputs); the tokens must not change.
    """
    base, a1, a2 = lively
    torch._dynamo.reset()
    engine, (got_base, got_a1, got_a2) = run_mixed(
        base, (a1, a2), EngineOptions(min_prefix=8, compile=True, compile_backend="inductor", compile_mode=compile_mode)  # type: ignore[arg-type]
    )
    assert engine.compile and engine.static and engine.compile_mode == compile_mode
    eos = engine.eos_ids
    assert got_base == reference_for(expected, base, None, eos)
    assert got_a1 == reference_for(expected, base, a1, eos)
    assert got_a2 == reference_for(expected, base, a2, eos)


def test_compile_mode_is_checked_and_means_cuda_graphs_on_cuda_by_default() -> None:
    from types import SimpleNamespace

    with pytest.raises(ValueError, match="compile_mode 'fast': one of default, reduce-overhead"):
        EngineOptions(compile_mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the inductor backend"):
        EngineOptions(compile_mode="max-autotune", compile_backend="eager")

    def mode(options: EngineOptions, device: str) -> str | None:
        return Engine.compile_mode.fget(SimpleNamespace(options=options, device=torch.device(device)))  # type: ignore[attr-defined]

    assert mode(EngineOptions(), "cuda") == "reduce-overhead"  # CUDA graphs
    assert mode(EngineOptions(), "cpu") is None
    assert mode(EngineOptions(compile_backend="eager"), "cuda") is None
    assert mode(EngineOptions(compile_mode="max-autotune"), "cuda") == "max-autotune"
    assert mode(EngineOptions(compile_mode="max-autotune-no-cudagraphs"), "cpu") == "max-autotune-no-cudagraphs"


def test_the_decode_step_is_compiled_in_the_compile_mode(lively: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``torch.compile`` is asked for: the decode step in ``compile_mode`` (inductor's default
    mode without one on CPU); the sampler in the default mode either way."""
    asked: list[tuple[str, object]] = []

    def spy(fn: object, **kwargs: object) -> object:
        asked.append((getattr(fn, "__name__", "?"), kwargs.get("mode")))
        return fn  # run eagerly: only what was asked is checked here

    monkeypatch.setattr(torch, "compile", spy)
    base = lively[0]
    prompts = prompt_ids(base)[:2]
    for mode in ("max-autotune", None):
        asked.clear()
        engine = Engine(load(base), EngineOptions(compile=True, compile_backend="inductor", compile_mode=mode))  # type: ignore[arg-type]
        engine.generate([Request(p, 3, temperature=0.0) for p in prompts])
        assert ("_static_decode_step", mode) in asked
        assert all(m is None for name, m in asked if name != "_static_decode_step")


def test_eos_stops_a_row_like_generate(lively: tuple[Path, Path, Path]) -> None:
    base = lively[0]
    prompt = prompt_ids(base)[0]
    free = reference(load(base), [prompt], NEW_TOKENS, ())[0]
    stop_token = free[4]
    model = load(base)
    model.generation_config.eos_token_id = stop_token
    engine = Engine(model)
    short, long_ = engine.generate(
        [Request(prompt, NEW_TOKENS, temperature=0.0), Request(prompt, 2, temperature=0.0)]
    )
    assert short.tokens == free[: free.index(stop_token)] and short.stop_reason == "stop"
    assert long_.tokens == free[:2] and long_.stop_reason == "max_tokens"
    assert [short.tokens] == reference(model, [prompt], NEW_TOKENS, (stop_token,))


def test_logprobs_are_the_models_own(lively: tuple[Path, Path, Path]) -> None:
    base = lively[0]
    prompt = prompt_ids(base)[1]
    model = load(base)
    with torch.no_grad():
        first = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].float(), -1)
    values, ids = first.topk(5)
    (done,) = Engine(model).generate([Request(prompt, 4, temperature=0.0, top_logprobs=5)])
    assert done.logprobs is not None and len(done.logprobs) == 4
    step = done.logprobs[0]
    assert [t for t, _ in step.top] == ids.tolist()
    assert [lp for _, lp in step.top] == pytest.approx(values.tolist(), abs=1e-5)
    for item in done.logprobs:  # greedy: the chosen token is the most likely one
        assert item.token == item.top[0][0] and item.logprob == pytest.approx(item.top[0][1])
        assert [lp for _, lp in item.top] == sorted((lp for _, lp in item.top), reverse=True)


def test_sampling_is_seeded_and_top_k_one_is_greedy(lively: tuple[Path, Path, Path]) -> None:
    base = lively[0]
    prompts = prompt_ids(base)
    engine = Engine(load(base))
    sampled = [Request(p, 8, temperature=1.0, seed=7) for p in prompts]
    first = engine.generate(sampled)
    again = engine.generate(sampled)
    assert first == again
    greedy = engine.generate([Request(p, 8, temperature=0.0) for p in prompts])
    assert first != greedy  # temperature 1 on a varied model does sample
    top1 = engine.generate([Request(p, 8, temperature=1.0, top_k=1, seed=3) for p in prompts])
    assert [c.tokens for c in top1] == [c.tokens for c in greedy]
    tiny_p = engine.generate([Request(p, 8, temperature=1.0, top_p=1e-6, seed=3) for p in prompts])
    assert [c.tokens for c in tiny_p] == [c.tokens for c in greedy]


def test_the_repeats_of_a_prompt_share_one_batch_and_differ(lively: tuple[Path, Path, Path]) -> None:
    """Ten repeats with seeds 0..9 (as the evals send them): one batch, ten samples, reproducible."""
    base = lively[0]
    prompt = prompt_ids(base)[3]
    engine = Engine(load(base))
    repeats = [Request(prompt, 8, temperature=1.0, seed=seed) for seed in range(10)]
    first = engine.generate(repeats)
    assert engine.stats.batches == 1
    assert len({c.tokens for c in first}) >= 8  # the repeats are samples, not one answer ten times
    assert engine.generate(list(reversed(repeats))) == list(reversed(first))
    other = engine.generate([Request(prompt, 8, temperature=1.0, seed=seed) for seed in range(10, 20)])
    assert [c.tokens for c in other] != [c.tokens for c in first]


def test_unsupported_adapter_is_refused_by_field(tiny_adapters: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    adapter = shutil.copytree(tiny_adapters[0], tmp_path / "dora")
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["use_dora"] = True
    config_file.write_text(json.dumps(config))
    with pytest.raises(EmpersonaError, match="use_dora"):
        read_adapter(adapter)


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa-enable-gqa", "matmul"])
@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_grouped_decode_attention_equals_repeated_kv_attention(
    fused: bool, mask_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One query token over a grouped KV cache with padding: same as SDPA on repeated KV heads."""
    from empersona.provider import attention
    from empersona.provider.attention import grouped_decode_attention

    monkeypatch.setattr(attention, "FUSED_GQA", fused)

    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, dim = 3, 6, 2, 9, 8
    query = torch.randn(batch, heads, 1, dim, generator=generator)
    key = torch.randn(batch, kv_heads, length, dim, generator=generator)
    value = torch.randn(batch, kv_heads, length, dim, generator=generator)
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[0, ..., :3] = False  # left padding
    mask[2, ..., 4:6] = False  # padding between a shared prefix and the row's own suffix
    group = heads // kv_heads
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(group, 1), value.repeat_interleave(group, 1), attn_mask=mask
    ).transpose(1, 2)
    given = mask if mask_kind == "bool" else torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    got, _ = grouped_decode_attention(torch.nn.Module(), query, key, value, given, scaling=dim**-0.5)
    assert got.shape == (batch, 1, heads, dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_engine_decodes_with_grouped_attention(lively: tuple[Path, Path, Path]) -> None:
    from empersona.provider.attention import ATTENTION_NAME

    engine = Engine(load(lively[0]))
    assert engine.grouped_attention and engine.model.config._attn_implementation == ATTENTION_NAME
    plain = Engine(load(lively[0]), EngineOptions(grouped_attention=False))
    assert plain.model.config._attn_implementation == "sdpa"
    requests = [Request(p, NEW_TOKENS, temperature=0.0) for p in prompt_ids(lively[0])]
    assert [c.tokens for c in engine.generate(requests)] == [c.tokens for c in plain.generate(requests)]


@pytest.fixture(scope="module")
def sliding(lively: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lively model with every layer's attention limited to a window of 24 tokens (as Mistral
    v0.1, Gemma 2 and 3 or Phi-3 have one): shorter than the prompts."""
    import shutil

    folder = tmp_path_factory.mktemp("sliding") / "base"
    shutil.copytree(lively[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=24, max_window_layers=0, layer_types=None)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "options",
    [EngineOptions(min_prefix=8), EngineOptions(min_prefix=8, static_cache=True),
     EngineOptions(prefix_reuse=False, static_cache=True, shrink_at=1.0, sync_every=1),
     EngineOptions(min_prefix=8, compile=True, compile_backend="eager")],
    ids=["dynamic+prefix", "static+prefix", "static-shrinking", "compiled+prefix"],
)
def test_a_sliding_window_model_decodes_like_generate(sliding: Path, options: EngineOptions) -> None:
    """transformers masks the window by cache slots: a shared prefix's gap, or rows copied into a
    smaller cache, would let the wrong tokens into the window (every row differed from ``generate``
    on the GPU's default layout). Such a model gets neither; its answers equal ``generate``'s."""
    from empersona.provider.engine import uses_sliding_window

    engine = Engine(load(sliding), options)
    prompts = prompt_ids(sliding)
    assert engine.sliding_window and max(len(p) for p in prompts) > 24
    got = [c.tokens for c in engine.generate([Request(p, NEW_TOKENS, temperature=0.0) for p in prompts])]
    assert got == reference(load(sliding), prompts, NEW_TOKENS, engine.eos_ids)
    assert engine.stats.prefix_tokens_saved == 0 and engine.stats.shrunk_rounds == 0
    from transformers import Gemma2Config, MistralConfig, Qwen2Config

    assert uses_sliding_window(MistralConfig()) and uses_sliding_window(Gemma2Config())
    assert not uses_sliding_window(Qwen2Config()) and not uses_sliding_window(MistralConfig(sliding_window=None))
