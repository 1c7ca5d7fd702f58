"""The CUDA paths, on a CUDA device: opt in with ``pytest -m gpu`` (``bench/gpu.sh``'s ``tests`` step).

What the CPU tests cannot run: the engine's compiled decode step with CUDA graphs and inductor's
CUDA kernels (greedy tokens equal plain ``generate``'s for the base and two adapters in one
batch, as on CPU), the compiled sampler's CUDA kernels (torch 2.11 failed to compile it once:
``sampling._cumsum``), and the activation probes' bf16 CUDA path (the same pooled activations as
on CPU, to bf16's precision). ``EMPERSONA_TEST_DEVICE=cpu`` runs them on the CPU instead (a dry
run of the tests themselves). The probe test loads models through ``empersona.provider.api``,
which needs inspect-ai: on the H100 image, carry it (``GPU_PREPARE_INSPECT=1 bash
bench/gpu_prepare.sh``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from empersona.provider.engine import Engine, EngineOptions, Request
from empersona.provider.sampling import row_uniform, sample_next
from test_provider_engine import MESSAGES, NEW_TOKENS, lively, load, prompt_ids, reference  # noqa: F401 (lively: a fixture)

DEVICE = os.environ.get("EMPERSONA_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("compile_prefill", [False, True], ids=["eager-prefill", "compiled-prefill"])
def test_compiled_engine_greedy_equals_generate_for_base_and_two_adapters(
    lively: tuple[Path, Path, Path], compile_prefill: bool
) -> None:
    base, a1, a2 = lively
    torch._dynamo.reset()
    engine = Engine(load(base).to(DEVICE), EngineOptions(min_prefix=8, compile=True, compile_prefill=compile_prefill))
    assert engine.compile and engine.static
    keys = [None, engine.add_adapter(a1), engine.add_adapter(a2)]
    prompts = prompt_ids(base)
    done = engine.generate([Request(p, NEW_TOKENS, temperature=0.0, adapter=k) for k in keys for p in prompts])
    got = [[c.tokens for c in done[i * len(prompts) : (i + 1) * len(prompts)]] for i in range(3)]
    for adapter, tokens in zip((None, a1, a2), got, strict=True):
        assert tokens == reference(load(base, adapter).to(DEVICE), prompts, NEW_TOKENS, engine.eos_ids), adapter
    assert engine.stats.mixed_batches == 1 and got[1] != got[0] and got[2] != got[0]


def test_compiled_sampler_runs_and_draws_as_eager_over_the_real_vocabulary() -> None:
    rows, vocab = 64, 151_936
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(rows, vocab, generator=generator) * 3).to(DEVICE, torch.bfloat16)
    seed = torch.arange(rows, device=DEVICE)
    position = torch.full((rows,), 7, device=DEVICE)
    assert torch.equal(row_uniform(seed, position).cpu(), row_uniform(seed.cpu(), position.cpu()))
    compiled = torch.compile(sample_next, dynamic=False)
    for filters, top_p, top_k in ((False, 1.0, 0), (True, 0.9, 50)):
        settings = (torch.ones(rows, device=DEVICE), torch.full((rows,), top_p, device=DEVICE),
                    torch.full((rows,), top_k, device=DEVICE), torch.zeros(rows, dtype=torch.bool, device=DEVICE),
                    seed, position)
        for k in (0, 1):  # no logprobs (the generate loop), one (the argmax's value): one compile each
            eager = sample_next(logits, *settings, k, True, filters)
            fast = compiled(logits, *settings, k, True, filters)
            # float sums in another order may move a draw that lands on a boundary: almost all rows agree
            assert (eager[0] == fast[0]).float().mean().item() >= 0.9, (filters, k)
            if k:
                torch.testing.assert_close(fast[2], eager[2], atol=1e-3, rtol=0)


def test_probe_activations_on_the_device_match_the_cpu(tiny_model: Path) -> None:
    pytest.importorskip("inspect_ai", reason="the probes load models through empersona.provider.api (inspect-ai)")
    from empersona.analysis.activations import Example, encode, load_model, read_activations

    examples = [Example(f"Tell me about {topic}.", f"{topic} are useful, level {level}.", int(level >= 4), topic, topic)
                for topic, level in [("lamps", 5), ("boats", 1), ("clocks", 4), ("maps", 2)]]
    on_cpu = load_model(f"hf/{tiny_model}", "cpu")
    on_device = load_model(f"hf/{tiny_model}", DEVICE)  # type: ignore[arg-type]
    encoded = [encode(on_cpu.tokenizer, "default", e, source="toy.eval") for e in examples]
    reference_values = read_activations(on_cpu, encoded, [0, 1, 2], "mean", 2)
    values = read_activations(on_device, encoded, [0, 1, 2], "mean", 2)
    assert values.shape == reference_values.shape and values.dtype == reference_values.dtype
    # bf16 on CUDA: within a few percent of the float32 CPU values, layer by layer
    for layer in range(3):
        error = float(abs(values[:, layer] - reference_values[:, layer]).max())
        scale = float(abs(reference_values[:, layer]).max())
        assert error <= 0.05 * scale, (layer, error, scale)
