"""Prompt passes through ``torch.compile`` (``compile_prefill``): the same answers as eager prompt passes.

One graph serves every prompt width and row count above one (dynamic shapes; dynamo gives a single
row a graph of its own): batches of different widths and sizes must not recompile it for each, and the prefix pass (a dynamic cache) and the suffix
pass (a static cache) both run compiled without graph breaks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from empersona.provider.engine import Engine, EngineOptions, Request
from test_provider_engine import lively, load, prompt_ids, run_mixed  # noqa: F401 (lively: a fixture)


@pytest.mark.parametrize(
    "options",
    [
        EngineOptions(min_prefix=8, static_cache=True),
        EngineOptions(prefix_reuse=False, static_cache=True),
        EngineOptions(min_prefix=8),
    ],
    ids=["static+prefix", "static", "dynamic+prefix"],
)
def test_compiled_prompt_passes_give_the_eager_answers_without_graph_breaks(
    lively: tuple[Path, Path, Path], options: EngineOptions
) -> None:
    from dataclasses import replace

    from torch._dynamo.utils import counters

    base, first, second = lively
    _, eager = run_mixed(base, (first, second), options)
    torch._dynamo.reset()
    counters.clear()
    engine, compiled = run_mixed(base, (first, second), replace(options, compile_prefill=True, compile_backend="eager"))
    assert compiled == eager
    assert engine._compiled_prompt is not None and counters["stats"]["unique_graphs"] >= 1
    assert dict(counters["graph_break"]) == {}


def test_one_compiled_prompt_graph_serves_other_widths_and_row_counts(lively: tuple[Path, Path, Path]) -> None:
    from torch._dynamo.utils import counters

    base, _, _ = lively
    prompts = prompt_ids(base)
    torch._dynamo.reset()
    counters.clear()
    engine = Engine(load(base), EngineOptions(prefix_reuse=False, static_cache=True, compile_prefill=True, compile_backend="eager"))
    engine.generate([Request(p, 2, temperature=0.0) for p in prompts[:2]])
    graphs = counters["stats"]["unique_graphs"]
    # other rows, other widths (prompts cut short), other row counts: no new graph
    engine.generate([Request(p[: len(p) - 3], 2, temperature=0.0) for p in prompts[1:]])
    engine.generate([Request(p, 2, temperature=0.0) for p in prompts[2:]])
    assert counters["stats"]["unique_graphs"] == graphs
    engine.generate([Request(prompts[4], 2, temperature=0.0)])  # one row: dynamo's own graph for size 1
    assert counters["stats"]["unique_graphs"] <= graphs + 1


def test_inductor_compiled_prompt_passes_give_the_eager_answers(lively: tuple[Path, Path, Path]) -> None:
    """The kernels inductor writes for the prompt pass (CPU here), not only dynamo's capture."""
    base, first, second = lively
    options = EngineOptions(min_prefix=8, static_cache=True)
    _, eager = run_mixed(base, (first, second), options)
    torch._dynamo.reset()
    from dataclasses import replace

    _, compiled = run_mixed(base, (first, second), replace(options, compile_prefill=True, compile_backend="inductor"))
    assert compiled == eager


def test_the_provider_takes_compile_prefill_as_a_model_arg(tiny_model: Path) -> None:
    from inspect_ai.model import get_model

    from empersona.errors import EmpersonaError

    model = get_model(f"empersona/{tiny_model}", memoize=False, compile_prefill=True)
    assert model.api.served.engine.compile_prefill is True  # type: ignore[attr-defined]
    assert get_model(f"empersona/{tiny_model}", memoize=False).api.served.engine.compile_prefill is False  # type: ignore[attr-defined]
    with pytest.raises(EmpersonaError, match="compile_prefill"):
        get_model(f"empersona/{tiny_model}", memoize=False, compile_prefill="sometimes")


def test_the_provider_takes_compile_mode_as_a_model_arg(tiny_model: Path) -> None:
    from inspect_ai.model import get_model

    from empersona.errors import EmpersonaError

    model = get_model(f"empersona/{tiny_model}", memoize=False, device="cpu", compile=True, compile_mode="max-autotune")
    assert model.api.served.engine.options.compile_mode == "max-autotune"  # type: ignore[attr-defined]
    assert get_model(f"empersona/{tiny_model}", memoize=False).api.served.engine.options.compile_mode is None  # type: ignore[attr-defined]
    # not compiled (the CPU default): the mode is not read, and the model shares the plain engine
    eager = get_model(f"empersona/{tiny_model}", memoize=False, device="cpu", compile_mode="max-autotune")
    plain = get_model(f"empersona/{tiny_model}", memoize=False, device="cpu")
    assert eager.api.served is plain.api.served  # type: ignore[attr-defined]
    with pytest.raises(EmpersonaError, match="compile_mode"):
        get_model(f"empersona/{tiny_model}", memoize=False, compile_mode="fastest")
