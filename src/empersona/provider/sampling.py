"""Next-token choice for a batch: greedy, or temperature / top-k / top-p sampling, per row.

Kept apart from the engine so the CUDA path can compile it on its own (``torch.compile`` fuses
the softmax, filtering and draw over the vocabulary into a few kernels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def sample_next(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    greedy: torch.Tensor,
    k: int,
    sampled: bool,
    filters: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Pick each row's next token; return it, its logprob and the top-``k`` logprobs (``k=0``: none).

    ``sampled`` (any row samples) and ``filters`` (any row uses top-k/top-p) are per-batch flags,
    so the all-greedy and unfiltered cases skip that work without a device sync.

    Greedy rows take the argmax (first index on ties, as ``model.generate``). Sampled rows divide
    the logits by their temperature, keep their top-k tokens and the smallest set whose
    probability reaches top-p, then draw with the exponential race: the argmax of p / E with
    E ~ Exp(1) samples exactly from p, and since log p differs from the scaled logits by a
    constant per row, that is the argmax of ``scaled - log E``: no softmax is needed.

    Logprobs are ``logits - logsumexp(logits)`` taken only where needed (the chosen token, the
    top k), so no vocabulary-sized tensor of logprobs or probabilities is written: at batch 256
    and a 152k vocabulary each such tensor is 155 MB per step. With ``k=0`` (no row asked for
    logprobs) no logprob is computed at all and the second value is None; with ``k=1`` the top
    logprob is the row's maximum, a reduction the greedy choice already makes, not a ``topk``
    over the vocabulary. ``logits`` may be bf16 (the model's own values); the arithmetic is
    float32.
    """
    import torch

    logits = logits.float()
    best = choice = logits.argmax(dim=-1)  # the greedy choice: the first index of the maximum
    if sampled:
        scaled = logits / temperature.clamp_min(1e-5)[:, None]
        if filters:
            ordered, order = scaled.sort(dim=-1, descending=True)
            rank = torch.arange(ordered.shape[-1], device=logits.device)[None, :]
            drop = (top_k[:, None] > 0) & (rank >= top_k[:, None])
            probs = torch.softmax(ordered, dim=-1)
            drop |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
            drop[:, 0] = False
            scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
        log_race = torch.rand_like(scaled).log_().neg_().log_()  # log E, E = -log U ~ Exp(1)
        choice = torch.where(greedy, choice, (scaled - log_race).argmax(dim=-1))
    if not k:
        return choice, None, None, None
    norm = torch.logsumexp(logits, dim=-1)
    chosen = logits.gather(-1, choice[:, None]).squeeze(-1) - norm
    if k == 1:
        return choice, chosen, logits.gather(-1, best[:, None]) - norm[:, None], best[:, None]
    values, ids = logits.topk(k, dim=-1)
    return choice, chosen, values - norm[:, None], ids
