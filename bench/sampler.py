"""Benchmark (issue 7): the engine's next-token choice against the softmax-materialising form.

``sample_next`` draws by inverse CDF with one hashed uniform per row (of its seed and position)
on the unnormalised weights of the scaled logits, and takes logprobs as ``logits - logsumexp``
at the chosen and top-k tokens only (until 2026-11-27 it drew with the exponential race, a
vocabulary-sized tensor of noise per step; the H100 figures below are from that form). The reference below is the form it
replaced: a full log-softmax tensor, a probability tensor and a tensor of exponential draws per
step (three vocabulary-sized writes). Both run on the same logits, eager and (``--compile``)
through ``torch.compile``, alternating, best of ``--repeats``, at each ``--top-logprobs`` count
(0: no logprobs asked, which ``sample_next`` skips; 1: its top logprob is the greedy maximum,
no ``topk``); the table gives ms per step and the ratio to the reference at the same count. On
the H100 (1.5B shape, batch 256) ``bench/profile_engine.py`` measured the old form at 1.16 ms per step, more than the weights take to read (1.03 ms); this script there (2026-11-27,
``--device cuda --compile``, 256 x 151,936 bf16) gave ``sample_next`` compiled 0.25 ms without
logprobs (2.0x the old form), 0.37 ms with one top logprob (3.2x), 1.04 ms with five (1.1x: the
``topk`` over the vocabulary).

Run: ``.venv/bin/python bench/sampler.py`` (CPU: batch 32; ``--device cuda`` for a GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from empersona.provider.sampling import sample_next


def reference_sample(
    logits: Any, temperature: Any, top_p: Any, top_k: Any, greedy: Any, seed: Any, position: Any, k: int, sampled: bool,
    filters: bool,
) -> Any:
    """The replaced form (no filters; global-generator draws, ``seed`` and ``position`` unused):
    log-softmax, softmax and exponential draws, all materialised."""
    import torch

    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    choice = logits.argmax(dim=-1)
    if sampled:
        probs = torch.softmax(logits / temperature.clamp_min(1e-5)[:, None], dim=-1)
        race = torch.rand_like(probs).log_().neg_()
        choice = torch.where(greedy, choice, (probs / race).argmax(dim=-1))
    chosen = logprobs.gather(-1, choice[:, None]).squeeze(-1)
    if k:
        values, ids = logprobs.topk(k, dim=-1)
        return choice, chosen, values, ids
    return choice, chosen, None, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=None, help="rows (default 32 on CPU, 256 on CUDA)")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument(
        "--top-logprobs", default="0,1,5",
        help="comma-separated top-logprob counts, each timed (0: none asked, the engine skips logprobs)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time both through torch.compile")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    rows = args.batch or (256 if args.device == "cuda" else 32)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    logits = (torch.randn(rows, args.vocab, device=args.device) * 3).to(dtype)
    temperature = torch.ones(rows, device=args.device)
    top_p = torch.ones(rows, device=args.device)
    top_k = torch.zeros(rows, dtype=torch.long, device=args.device)
    greedy = torch.zeros(rows, dtype=torch.bool, device=args.device)
    seed = torch.arange(rows, device=args.device)
    position = torch.full((rows,), 100, device=args.device)
    counts = [int(part) for part in args.top_logprobs.split(",")]

    forms: dict[str, Any] = {"reference": reference_sample, "sample_next": sample_next}
    if args.compile:
        forms |= {f"{name} (compiled)": torch.compile(fn, dynamic=False) for name, fn in list(forms.items())}
    # (name, function, k) per timed variant; the reference form is the same at every k but for its topk
    variants = {f"{name} k={k}": (fn, k) for k in counts for name, fn in forms.items()}

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    checks = device_checks(logits, temperature, top_p, top_k, greedy, seed, position, forms)
    for name, value in checks.items():
        print(f"check: {name}: {value}")
    best = {name: float("inf") for name in variants}
    for fn, k in variants.values():  # warm up (and compile) before any timing
        fn(logits, temperature, top_p, top_k, greedy, seed, position, k, True, False)
    for _ in range(args.repeats):
        for name, (fn, k) in variants.items():
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                fn(logits, temperature, top_p, top_k, greedy, seed, position, k, True, False)
            sync()
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
    print(f"sampler, {args.device}, {rows} rows x {args.vocab} vocabulary ({dtype}), sampled at temperature 1")
    print(f"{'variant':<32} {'ms/step':>9} {'x reference':>12}")
    rows_out = []
    for name, seconds in best.items():
        form, k = name.rsplit(" k=", 1)
        base = best[f"reference{' (compiled)' if 'compiled' in form else ''} k={k}"]
        print(f"{name:<32} {1000 * seconds:>9.2f} {base / seconds:>12.2f}")
        rows_out.append(
            {"variant": name, "top_logprobs": int(k), "ms_per_step": 1000 * seconds, "speedup_vs_reference": base / seconds}
        )
    out = args.out or Path(f"bench/results/sampler-{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": args.device, "rows": rows, "vocab": args.vocab, "checks": checks,
                               "results": rows_out}, indent=2) + "\n")
    print(f"written to {out}")
    return 0 if checks["uniform draws equal the CPU's"] else 1


def device_checks(logits: Any, temperature: Any, top_p: Any, top_k: Any, greedy: Any, seed: Any, position: Any,
                  forms: dict[str, Any]) -> dict[str, Any]:
    """What the per-row draws rest on, on this device: the hashed uniforms equal the CPU's bit for
    bit (int64 products wrap the same way), and the compiled sampler picks the eager one's tokens
    (share of rows, over 20 positions; float rounding may move a draw that lands on a boundary)."""
    import torch

    from empersona.provider.sampling import row_uniform

    positions = torch.arange(20, device=seed.device)[:, None] + position[None, :]
    here = torch.stack([row_uniform(seed, p) for p in positions]).cpu()
    cpu = torch.stack([row_uniform(seed.cpu(), p.cpu()) for p in positions])
    checks: dict[str, Any] = {"uniform draws equal the CPU's": bool(torch.equal(here, cpu))}
    compiled = forms.get("sample_next (compiled)")
    if compiled is not None:
        same = [(sample_next(logits, temperature, top_p, top_k, greedy, seed, p, 0, True, False)[0]
                 == compiled(logits, temperature, top_p, top_k, greedy, seed, p, 0, True, False)[0]).float().mean().item()
                for p in positions]
        checks["compiled picks the eager tokens (share of rows)"] = round(sum(same) / len(same), 4)
        # the filtered path too (top-k 50, top-p 0.9): a second scan, and a reduction after it
        top_p_on, top_k_on = torch.full_like(top_p, 0.9), torch.full_like(top_k, 50)
        same = [(sample_next(logits, temperature, top_p_on, top_k_on, greedy, seed, p, 0, True, True)[0]
                 == compiled(logits, temperature, top_p_on, top_k_on, greedy, seed, p, 0, True, True)[0]).float().mean().item()
                for p in positions]
        checks["compiled picks the eager tokens with top-k and top-p (share of rows)"] = round(sum(same) / len(same), 4)
    return checks


if __name__ == "__main__":
    raise SystemExit(main())
