"""The engine's next-token choice: exact sampling distribution, filters and the model's own logprobs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from empersona.provider.sampling import sample_next  # noqa: E402


def flags(rows: int, temperature: float, top_p: float = 1.0, top_k: int = 0, position: int = 0) -> tuple[torch.Tensor, ...]:
    """Per-row settings: one temperature, top-p and top-k for all, seeds 0..rows-1, one position."""
    return (
        torch.full((rows,), temperature),
        torch.full((rows,), top_p),
        torch.full((rows,), top_k, dtype=torch.long),
        torch.full((rows,), temperature <= 0),
        torch.arange(rows, dtype=torch.long),
        torch.full((rows,), position, dtype=torch.long),
    )


LOGITS = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_draws_follow_the_tempered_softmax(temperature: float) -> None:
    rows = 40_000
    logits = LOGITS.expand(rows, -1).contiguous()
    choice, _, _, _ = sample_next(logits, *flags(rows, temperature), 0, True, False)
    observed = torch.bincount(choice, minlength=LOGITS.numel()).double() / rows
    expected = torch.softmax(LOGITS.double() / temperature, -1)
    sigma = (expected * (1 - expected) / rows).sqrt()
    assert ((observed - expected).abs() <= 5 * sigma + 1e-9).all(), (observed, expected)


def test_logprobs_are_log_softmax_of_the_raw_logits_at_any_temperature() -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, 50) * 3
    choice, chosen, values, ids = sample_next(logits, *flags(6, 0.7), 4, True, False)
    reference = torch.log_softmax(logits, -1)
    torch.testing.assert_close(chosen, reference.gather(-1, choice[:, None]).squeeze(-1))
    expected_values, expected_ids = reference.topk(4, -1)
    torch.testing.assert_close(values, expected_values)
    assert torch.equal(ids, expected_ids)


def test_greedy_rows_take_the_first_argmax_beside_sampled_rows() -> None:
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0]] * 4)
    temperature = torch.tensor([0.0, 1.0, 0.0, 1.0])
    greedy = temperature <= 0
    seen = set()
    for step in range(50):
        choice, _, _, _ = sample_next(
            logits, temperature, torch.ones(4), torch.zeros(4, dtype=torch.long), greedy,
            torch.arange(4), torch.full((4,), step), 0, True, False,
        )
        assert choice[0] == 1 and choice[2] == 1  # ties: the first index, as model.generate
        seen.update(choice[[1, 3]].tolist())
    assert {1, 2} <= seen  # the sampled rows draw both top tokens


@pytest.mark.parametrize(("top_k", "top_p", "allowed"), [(2, 1.0, {0, 1}), (0, 0.6, {0, 1}), (0, 0.5, {0}), (1, 1.0, {0})])
def test_top_k_and_top_p_restrict_the_draws(top_k: int, top_p: float, allowed: set[int]) -> None:
    # probabilities 0.563, 0.207, 0.126, 0.028, 0.076: top-p 0.6 keeps the first two, 0.5 the first
    rows = 4000
    logits = LOGITS.expand(rows, -1).contiguous()
    choice, _, _, _ = sample_next(logits, *flags(rows, 1.0, top_p, top_k), 0, True, True)
    assert set(choice.tolist()) == allowed


def test_bf16_logits_give_the_same_result_as_their_float32_values() -> None:
    torch.manual_seed(4)
    logits = (torch.randn(8, 300) * 4).to(torch.bfloat16)
    args = flags(8, 1.0)
    low = sample_next(logits, *args, 3, True, False)
    full = sample_next(logits.float(), *args, 3, True, False)
    for a, b in zip(low, full, strict=True):
        assert torch.equal(a, b)


def test_top_one_logprob_is_the_rows_maximum_without_a_topk() -> None:
    torch.manual_seed(6)
    logits = torch.randn(5, 40) * 2
    logits[0, [3, 9]] = 10.0  # a tie: the first index is reported, as argmax
    choice, chosen, values, ids = sample_next(logits, *flags(5, 1.0), 1, True, False)
    reference = torch.log_softmax(logits, -1)
    assert values is not None and ids is not None and values.shape == (5, 1) and ids.shape == (5, 1)
    torch.testing.assert_close(values.squeeze(1), reference.max(-1).values)
    assert torch.equal(ids.squeeze(1), logits.argmax(-1)) and ids[0, 0] == 3
    torch.testing.assert_close(chosen, reference.gather(-1, choice[:, None]).squeeze(-1))


def test_no_logprobs_asked_computes_none_and_draws_the_same_tokens() -> None:
    logits = torch.randn(64, 100) * 3
    args = flags(64, 0.8)
    bare = sample_next(logits, *args, 0, True, False)
    with_logprobs = sample_next(logits, *args, 2, True, False)
    assert bare[1:] == (None, None, None)
    assert torch.equal(bare[0], with_logprobs[0])


@pytest.mark.parametrize("filters", [False, True])
def test_compiled_sampler_keeps_each_vocabulary_scan_in_a_graph_without_reductions(filters: bool) -> None:
    # torch 2.11's inductor fused a vocabulary reduction (the greedy argmax, keep.sum) into the
    # CUDA split-scan kernel of a cumsum and failed to compile ("NYI TritonSplitDimKernel
    # reductions", H100): each scan must sit in a graph that holds no reduction (or run eagerly,
    # as dynamo may run a function it has broken in before)
    import torch._dynamo

    rows = 4
    logits = torch.randn(rows, 300)
    settings = flags(rows, 1.0, top_p=0.9 if filters else 1.0, top_k=20 if filters else 0, position=3)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(sample_next)(logits, *settings, 1, True, filters)
    reductions = {"argmax", "sum", "amax", "max", "logsumexp", "topk", "mean"}
    scans = 0
    for graph in explained.graphs:
        called = {str(getattr(node.target, "__name__", node.target)) for node in graph.graph.nodes if node.op.startswith("call")}
        if "cumsum" in called:
            scans += 1
            assert not (called & reductions), called
    assert scans >= 1
    compiled = torch.compile(sample_next, dynamic=False)
    eager = sample_next(logits, *settings, 1, True, filters)
    assert torch.equal(compiled(logits, *settings, 1, True, filters)[0], eager[0])
