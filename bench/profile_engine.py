"""Benchmark (issue 7): where the engine's time goes in one large batch, phase by phase.

``bench/generate.py`` gives the engine's end-to-end figure; this script splits one batch of B
rows (default the 1.5B shape at B=256, ~128 prompt tokens, 128 new) into its parts, each timed
on its own after a warm-up, all in one run:

- ``generate``: ``Engine.generate`` end to end (what generate.py reports), ms per new token;
- ``prefill``: layout plus the prompt forward passes (prefix once, then the suffixes); apart from
  the phases, the same passes compiled (``compile_prefill``), after their compile;
- ``decode step``: the model's decode step alone (compiled, CUDA graphs on CUDA), replayed;
- ``sampler``: the next-token choice alone, as the timed generate makes it (a draw, no logprobs
  asked), and apart from the phases with one top logprob;
- ``loop rest``: per-step time of generate not covered by the three above (host work, syncs);
- attention: the decode attention of one layer on the batch's cache: ``ours``
  (``grouped_decode_attention`` as the engine runs it), ``matmul`` (its fallback without SDPA's
  ``enable_gqa``) and SDPA on repeated key/value heads (what transformers does with a mask), at
  the cache length the engine allocates and at the length actually filled,
  times the number of layers; on CUDA each is captured in a CUDA graph so launches do not count;
- kernels (CUDA): ``torch.profiler`` over a few calls of the eager decode step, of the prefill and
  of the compiled sampler: the kernels with the most device time, and device time per call by
  kind (matmul, attention, softmax/reduce, rest).

Figures go to stdout and ``--out`` (JSON). Run here: ``.venv/bin/python bench/profile_engine.py
--shape tiny --device cpu --batch 8 --new-tokens 16``; on the H100 through ``bench/gpu.sh``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import QWEN25_SHAPES, BenchModel, _sync, weight_bytes  # noqa: E402


def timed(fn: Callable[[], Any], device: Any, repeats: int) -> float:
    """Best wall seconds of ``repeats`` calls of ``fn`` after one untimed call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def graphed(fn: Callable[[], Any], device: Any) -> Callable[[], Any]:
    """On CUDA, ``fn`` captured once in a CUDA graph (replays cost no launches); else ``fn``."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def attention_variants(config: Any, rows: int, lengths: dict[str, int], device: Any, dtype: Any) -> dict[str, float]:
    """Milliseconds per decode step (all layers) of each attention variant at each cache length."""
    import torch
    import torch.nn.functional as F

    from empersona.provider.attention import _grouped_matmul_attention, grouped_decode_attention

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = config.hidden_size // heads
    group = heads // kv_heads
    out: dict[str, float] = {}
    for label, length in lengths.items():
        generator = torch.Generator(device="cpu").manual_seed(0)
        query = torch.randn(rows, heads, 1, dim, generator=generator).to(device, dtype)
        key = torch.randn(rows, kv_heads, length, dim, generator=generator).to(device, dtype)
        value = torch.randn(rows, kv_heads, length, dim, generator=generator).to(device, dtype)
        mask = torch.ones(rows, 1, 1, length, dtype=torch.bool, device=device)
        mask[:, :, :, : length // 8] = False  # some left padding, as in a real batch
        module = torch.nn.Module()
        module.num_key_value_groups = group
        module.is_causal = True
        module.training = False

        def ours() -> Any:
            return grouped_decode_attention(module, query, key, value, mask, scaling=dim**-0.5)

        def matmul() -> Any:
            return _grouped_matmul_attention(query, key, value, mask, dim**-0.5)

        def repeated() -> Any:
            k = key.repeat_interleave(group, dim=1)
            v = value.repeat_interleave(group, dim=1)
            return F.scaled_dot_product_attention(query, k, v, attn_mask=mask)

        for name, fn in (("ours", ours), ("matmul", matmul), ("sdpa_repeat_kv", repeated)):
            try:
                run = graphed(fn, device)
                seconds = timed(lambda run=run: [run() for _ in range(10)], device, 5) / 10
                out[f"{name}@{label}={length}"] = 1000 * seconds * config.num_hidden_layers
            except Exception as err:  # a variant this PyTorch lacks: say so, keep the others
                out[f"{name}@{label}={length}"] = float("nan")
                print(f"  attention {name} at {length}: {type(err).__name__}: {err}"[:300])
    return out


def decode_runner(engine: Any, batch: Any, cache: Any, token: Any, position: Any) -> Callable[[int], Any]:
    """The eager decode step ``i`` of ``batch`` on ``cache`` (what the engine compiles)."""
    import torch

    from empersona.provider.engine import _static_decode_step

    kwargs: dict[str, Any] = {}

    def step(i: int) -> Any:
        if engine._wants_cache_position:
            at = batch.width + i
            kwargs["cache_position"] = torch.arange(at, at + 1, device=engine.device)
        return _static_decode_step(engine.model, engine._cache_arg, cache, token[:, None], position[:, None], batch.mask, kwargs)

    return step


def kernel_profile(run: Callable[[int], Any], steps: int) -> dict[str, Any]:
    """Device time per call of ``run`` (called with 0, 1, ...), by kind, and the top kernels (CUDA only)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        run(0)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(steps):
                run(i)
            torch.cuda.synchronize()
    kinds = {"matmul": 0.0, "attention": 0.0, "softmax/reduce": 0.0, "rest": 0.0}
    top = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0.0)
        if not device_us:
            continue
        name = event.key.lower()
        # attention first: cuDNN's fused attention kernels carry "sm90_" in their names too
        if any(s in name for s in ("flash", "fmha", "attention", "efficient", "sdpa")):
            kind = "attention"
        elif any(s in name for s in ("gemm", "nvjet", "cutlass", "sm90_", "matmul", "cublas")):
            kind = "matmul"
        elif any(s in name for s in ("softmax", "reduce")):
            kind = "softmax/reduce"
        else:
            kind = "rest"
        kinds[kind] += device_us / 1000 / steps
        top.append((device_us / 1000 / steps, event.count // steps, event.key[:110]))
    top.sort(reverse=True)
    return {"ms_per_step_by_kind": kinds, "top_kernels": [{"ms_per_step": t, "calls_per_step": c, "name": n} for t, c, n in top[:25]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="1.5b", choices=["tiny", *QWEN25_SHAPES])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--bandwidth", type=float, default=3.0e12, help="bytes/s for the weight-read bound")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from empersona.provider.engine import Engine, EngineOptions, Request

    out = args.out or Path(f"bench/results/profile-engine-{args.shape}-{args.device}.json")
    report: dict[str, Any] = {"shape": args.shape, "device": args.device, "batch": args.batch, "new_tokens": args.new_tokens}
    if args.device == "cuda":
        report["card"] = torch.cuda.get_device_name(0)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    with tempfile.TemporaryDirectory() as scratch:
        bench = BenchModel.build(args.shape, args.device, Path(scratch))
        device, dtype = bench.device, bench.dtype
        model = bench.load()
        compile_engine = None if args.compile == "auto" else args.compile == "on"
        engine = Engine(model, EngineOptions(max_batch_size=args.batch, compile=compile_engine, static_cache=True))
        ids = bench.prompt_ids(args.batch, args.prompt_tokens, seed=args.batch)
        requests = [Request(prompt=p, max_new_tokens=args.new_tokens, temperature=1.0) for p in ids]
        step_bytes = weight_bytes(model)
        n = args.new_tokens

        began = time.perf_counter()
        engine.generate(requests)  # compiles (CUDA) and warms up
        _sync(device)
        report["first_generate_s"] = time.perf_counter() - began
        generate_s = timed(lambda: engine.generate(requests), device, args.repeats)

        with torch.inference_mode():
            batch = engine._layout(requests, len(requests), n)
            prefill_s = timed(lambda: engine._prefill(batch, n), device, args.repeats)
            # the same prompt passes compiled (compile_prefill): first call compiles, then timed
            engine.compile_prefill = True
            began = time.perf_counter()
            engine._prefill(batch, n)
            _sync(device)
            report["prefill_compile_s"] = time.perf_counter() - began
            report["prefill_compiled_s"] = timed(lambda: engine._prefill(batch, n), device, args.repeats)
            engine.compile_prefill = False
            cache, logits = engine._prefill(batch, n)
            rows = len(requests)
            temperature = torch.ones(rows, device=device)
            top_p = torch.ones(rows, device=device)
            top_k = torch.zeros(rows, dtype=torch.long, device=device)
            greedy = torch.zeros(rows, dtype=torch.bool, device=device)
            seed = torch.arange(rows, device=device)
            position = batch.positions[:, -1] + 1
            sample = engine._sampler()
            token = sample(logits, temperature, top_p, top_k, greedy, seed, position, 1, True, False)[0]
            steps = min(16, n - 1)

            def decode_steps() -> None:
                for i in range(steps):
                    engine._decode(batch, cache, token, position + i, i)

            def sample_steps(k: int) -> None:
                for _ in range(steps):
                    sample(logits, temperature, top_p, top_k, greedy, seed, position, k, True, False)

            decode_ms = 1000 * timed(decode_steps, device, args.repeats) / steps
            # as the timed generate calls sample (no logprobs asked), and with one top logprob
            sample_ms = 1000 * timed(lambda: sample_steps(0), device, args.repeats) / steps
            sample(logits, temperature, top_p, top_k, greedy, seed, position, 1, True, False)  # compiles the k=1 form
            report["sampler_top1_ms"] = 1000 * timed(lambda: sample_steps(1), device, args.repeats) / steps
        generate_ms = 1000 * generate_s / n
        prefill_ms = 1000 * prefill_s / n
        report["phases_ms_per_new_token"] = {
            "generate": generate_ms,
            "prefill (amortised)": prefill_ms,
            "decode step": decode_ms * (n - 1) / n,
            "sampler": sample_ms,
            "loop rest": generate_ms - prefill_ms - decode_ms * (n - 1) / n - sample_ms,
        }
        report["prefill_s"] = prefill_s
        report["cache_length"] = int(batch.mask.shape[1])
        report["filled_length"] = int(batch.width + n)
        report["weight_read_ms"] = 1000 * step_bytes / args.bandwidth
        print(
            f"{args.shape} on {report.get('card', args.device)}, batch {args.batch}, {n} new tokens; weights "
            f"{step_bytes / 1e9:.2f} GB ({report['weight_read_ms']:.2f} ms/step at {args.bandwidth:.2g} B/s); "
            f"cache {report['cache_length']} slots, {report['filled_length']} filled; first generate {report['first_generate_s']:.1f} s"
        )
        for name, ms in report["phases_ms_per_new_token"].items():
            print(f"  {name:<22} {ms:8.3f} ms per new token")
        print(f"  (sampler with one top logprob: {report['sampler_top1_ms']:.3f} ms per call)")
        print(
            f"  prefill of the batch: eager {1000 * report['prefill_s']:.1f} ms, compiled (compile_prefill) "
            f"{1000 * report['prefill_compiled_s']:.1f} ms ({report['prefill_s'] / report['prefill_compiled_s']:.2f}x; "
            f"its compile {report['prefill_compile_s']:.1f} s)"
        )
        save()

        with torch.inference_mode():
            lengths = {"allocated": report["cache_length"], "filled": report["filled_length"]}
            report["attention_ms_per_step"] = attention_variants(model.config, args.batch, lengths, device, dtype)
        for name, ms in report["attention_ms_per_step"].items():
            print(f"  attention {name:<32} {ms:8.3f} ms per step (all layers)")
        save()

        if args.device == "cuda":
            profiled = {
                "eager_step_kernels": ("eager decode step", decode_runner(engine, batch, cache, token, position), 25),
                "prefill_kernels": ("prefill (whole batch)", lambda i: engine._prefill(batch, n), 12),
                "sampler_kernels": (
                    "sampler (as compiled, no logprobs)",
                    lambda i: sample(logits, temperature, top_p, top_k, greedy, seed, position, 0, True, False),
                    8,
                ),
            }
            for key, (title, run, shown) in profiled.items():
                report[key] = kernel_profile(run, args.profile_steps)
                by_kind = {k: round(v, 3) for k, v in report[key]["ms_per_step_by_kind"].items()}
                print(f"  {title}, device ms per call by kind:", by_kind)
                for k in report[key]["top_kernels"][:shown]:
                    print(f"    {k['ms_per_step']:7.3f} ms x{k['calls_per_step']:<4} {k['name']}")
                save()
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
