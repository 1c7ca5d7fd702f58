"""Next-token choice for a batch: greedy, or temperature / top-k / top-p sampling, per row,
after an optional repetition penalty.

Kept apart from the engine so the CUDA path can compile it on its own (``torch.compile`` fuses
the softmax, filtering and draw over the vocabulary into a few kernels).

Each sampled row draws with one uniform number per token, computed from the row's seed and the
position of the token it draws (a counter-based hash, splitmix64's mixer over
``mix(seed) + position * golden``): no generator state is kept or shared, so a seeded row draws
the same tokens whatever else shares its batch, and the draw costs a few integer operations per
row instead of a vocabulary-sized tensor of noise. The filters follow Hugging Face's logits
warpers in their order (temperature, then top-k, then top-p on the distribution left after
top-k, as vLLM also does); the repetition penalty follows ``RepetitionPenaltyLogitsProcessor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# splitmix64's constants as signed int64 values (torch has no uint64 arithmetic)
GOLDEN_GAMMA = 0x9E3779B97F4A7C15 - 2**64
MIX_1 = 0xBF58476D1CE4E5B9 - 2**64
MIX_2 = 0x94D049BB133111EB - 2**64
UNIFORM_BITS = 23  # a uniform below 1 - 2**-23: times a float32 total it stays below the total


def as_int64(seed: int) -> int:
    """A Python int seed as the int64 value with the same low 64 bits (any int is a valid seed)."""
    return (seed + 2**63) % 2**64 - 2**63


def _shift_right(value: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's ``>>`` on int64 copies the sign bit)."""
    return (value >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(value: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on int64 tensors (multiplications wrap modulo 2**64)."""
    value = (value ^ _shift_right(value, 30)) * MIX_1
    value = (value ^ _shift_right(value, 27)) * MIX_2
    return value ^ _shift_right(value, 31)


def row_uniform(seed: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """One uniform draw per row in ``[0, 1 - 2**-23]`` (float32) from int64 ``seed`` and ``position``.

    The same (seed, position) gives the same number on any device and in any batch.
    """
    hashed = _mix64(_mix64(seed) + position.long() * GOLDEN_GAMMA)
    return _shift_right(hashed, 64 - UNIFORM_BITS).float() * (2.0 ** -UNIFORM_BITS)


def _cumsum(values: torch.Tensor) -> torch.Tensor:
    """Cumulative sum over the vocabulary, in a compiled graph of its own (graph breaks before and after).

    Inductor runs a scan this long on CUDA as a split scan, and torch 2.11's scheduler fused a
    vocabulary reduction of the same graph (the greedy argmax before it, ``keep.sum`` after it)
    into that kernel, whose code generator has no reductions: compiling failed with "NYI
    TritonSplitDimKernel reductions" (H100, 2026-11-27). Later versions refuse that fusion
    themselves; the breaks keep the sampler compiling on the versions before. Eager: a plain cumsum.
    """
    import torch

    torch._dynamo.graph_break()
    total = values.cumsum(dim=-1)
    torch._dynamo.graph_break()
    return total


def sample_next(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    greedy: torch.Tensor,
    seed: torch.Tensor,
    position: torch.Tensor,
    k: int,
    sampled: bool,
    filters: bool,
    penalty: torch.Tensor | None = None,
    seen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Pick each row's next token; return it, its logprob and the top-``k`` logprobs (``k=0``: none).

    ``sampled`` (any row samples) and ``filters`` (any row uses top-k/top-p) are per-batch flags,
    and so is ``seen`` (None: no row of the batch has a repetition penalty), so the all-greedy,
    unfiltered and unpenalised cases skip that work without a device sync.

    ``seen`` (bool ``[rows, vocab]``) marks the tokens already in each row's input (prompt and
    tokens generated so far); their logits are divided by the row's ``penalty`` where positive
    and multiplied by it where negative, before anything else (greedy rows too), as
    ``RepetitionPenaltyLogitsProcessor``. Greedy rows then take the argmax (first index on ties,
    as ``model.generate``). Sampled rows divide the logits by their temperature, keep their
    top-k tokens (ties with the k-th kept, as ``TopKLogitsWarper``), then the smallest set of
    those whose probability, renormalised over the top-k, reaches top-p (``TopPLogitsWarper``
    after top-k), and draw by inverse CDF with the row's one uniform (``row_uniform`` of
    ``seed`` and ``position``, int64 per row): the first token, in vocabulary order, whose
    cumulative weight exceeds the uniform times the total. The weights are ``exp(scaled - max)``,
    not normalised: the total stands in for the normaliser. The filters are found in descending
    order (where the kept tokens are a prefix) and applied as a threshold, the lowest kept value:
    every row draws in vocabulary order whether or not its batch filters, so a row's draw does
    not depend on its neighbours' settings (tokens tied with the lowest kept one are all kept).

    Logprobs are the model's own: ``logits - logsumexp(logits)`` of the raw logits (before the
    penalty, temperature and filtering), taken only where needed (the chosen token, the top k),
    so no vocabulary-sized tensor of logprobs is written: at batch 256 and a 152k vocabulary
    each such tensor is 155 MB per step. With ``k=0`` (no row asked for logprobs) no logprob is
    computed at all and the second value is None; with ``k=1`` the top logprob is the row's
    maximum, a reduction the greedy choice already makes when no penalty applies, not a
    ``topk`` over the vocabulary. ``logits`` may be bf16 (the model's own values); the
    arithmetic is float32.
    """
    import torch

    logits = logits.float()
    best = choice = logits.argmax(dim=-1)  # the greedy choice: the first index of the maximum
    work = logits
    if seen is not None:
        if penalty is None:
            raise ValueError("sample_next: seen given without penalty")
        factor = penalty[:, None]
        work = torch.where(seen, torch.where(logits < 0, logits * factor, logits / factor), logits)
        choice = work.argmax(dim=-1)
    if sampled:
        uniform = row_uniform(seed, position)[:, None]
        scaled = work / temperature.clamp_min(1e-5)[:, None]
        peak = scaled.gather(-1, choice[:, None])  # the row's maximum (temperature keeps the argmax)
        weight = (scaled - peak).exp_()
        if filters:
            ordered = scaled.sort(dim=-1, descending=True).values
            kth = ordered.gather(-1, (top_k - 1).clamp(0, ordered.shape[-1] - 1)[:, None])
            keep = (top_k[:, None] <= 0) | (ordered >= kth)
            ordered_cum = _cumsum((ordered - peak).exp_().masked_fill_(~keep, 0.0))
            before = torch.nn.functional.pad(ordered_cum[:, :-1], (1, 0))  # exclusive: exactly monotone
            keep &= ~((top_p[:, None] < 1.0) & (before >= top_p[:, None] * ordered_cum[:, -1:]))
            kept = keep.sum(dim=-1, keepdim=True).clamp_min(1)  # the kept tokens are a prefix
            weight.masked_fill_(scaled < ordered.gather(-1, kept - 1), 0.0)
        total_cum = _cumsum(weight)
        index = torch.searchsorted(total_cum, uniform * total_cum[:, -1:], right=True)
        drawn = index.clamp_max(total_cum.shape[-1] - 1).squeeze(-1)
        choice = torch.where(greedy, choice, drawn)
    if not k:
        return choice, None, None, None
    norm = torch.logsumexp(logits, dim=-1)
    chosen = logits.gather(-1, choice[:, None]).squeeze(-1) - norm
    if k == 1:
        return choice, chosen, logits.gather(-1, best[:, None]) - norm[:, None], best[:, None]
    values, ids = logits.topk(k, dim=-1)
    return choice, chosen, values - norm[:, None], ids
