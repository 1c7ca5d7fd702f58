"""Benchmark 2 (issue 7): generation throughput of the local paths, side by side in one run.

Ways to get B sampled continuations of N tokens from the same local model:
- ``plain``: one ``model.generate(do_sample=True)`` call on the left-padded batch (transformers);
- ``hf``: inspect's ``hf/<dir>`` provider, B concurrent ``Model.generate`` calls with
  ``max_connections=B`` (its batch size);
- ``empersona``: this project's ``empersona/<dir>`` provider, B concurrent calls;
- ``engine``: the provider's engine called directly with the B tokenised prompts (no inspect; for
  machines without inspect, such as the H100 image);
- ``engine-cp``: the same engine with ``compile_prefill`` on (prompt passes compiled too), so its
  figure sits beside the eager prompt passes' in one run;
- ``engine-ma``: an engine of its own (a second copy of the model) whose decode step compiles with
  ``compile_mode="max-autotune"`` (kernel choices timed for every matrix product while compiling;
  its warm-up, reported as ``compile_s``, includes that tuning).

Models: ``tiny`` is the test model builder's (hidden 64, 2 layers); ``0.5b`` and ``1.5b`` are
random-init Qwen2.5-0.5B / 1.5B configurations (full 151,936-token vocabulary) with the tiny
tokenizer. The generation config has no EOS token, so every row generates exactly N tokens.

Reported per method and batch size: wall seconds, generated tokens/s, ms per decode step
(wall / N, prefill included), speed-up over ``plain``, and the weight-bandwidth bound: each
decode step must read every weight once, so tokens/s <= B * bandwidth / (params * bytes per
param); the percentage of that bound is shown (KV-cache reads are not counted, so the bound is
generous). On CUDA the bandwidth defaults to 3.0e12 B/s (H100 HBM3 device copy, measured); on
CPU a tensor copy is timed and reported, and the bound is indicative only (a tiny model is
bound by Python overhead, not memory).

The ``empersona`` provider compiles its decode step on CUDA: the first run of each batch size is
a warm-up whose time is reported as ``compile_s`` and not counted. Every method gets one
untimed warm-up at each batch size.

Run: ``.venv/bin/python bench/generate.py`` (CPU, tiny model, batch 1, 8, 32; about two minutes);
GPU: ``python bench/generate.py --device cuda --shape 1.5b --batch-sizes 1,32,256`` (on the H100
image, which has no inspect: ``--methods plain,engine``).
Writes ``bench/results/generate.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

Method = Literal["plain", "hf", "empersona", "engine", "engine-cp", "engine-ma"]
KNOWN_METHODS: tuple[Method, ...] = get_args(Method)
METHODS: tuple[Method, ...] = ("plain", "hf", "empersona")

# Qwen2.5 configurations (hidden, intermediate, layers, heads, kv heads); vocabulary 151936, tied embeddings
QWEN25_SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    "0.5b": (896, 4864, 24, 14, 2),
    "1.5b": (1536, 8960, 28, 12, 2),
    "tiny-v152k": (128, 512, 2, 4, 2),  # a small body with the real vocabulary: the sampler's share, on a CPU
}
QWEN25_VOCAB = 151936


@dataclass(frozen=True)
class Measurement:
    """One method at one batch size."""

    method: Method
    batch: int
    new_tokens: int
    wall_s: float
    tokens_per_s: float
    ms_per_step: float
    speedup_vs_plain: float | None
    bound_tokens_per_s: float
    fraction_of_bound: float
    compile_s: float | None = None


def build_model(shape: str, out: Path, dtype: str) -> Path:
    """Save the benchmark model (random weights, tiny tokenizer, no EOS) into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from empersona.testing.tiny import build_tiny_model

    build_tiny_model(out, seed=0)
    if shape == "tiny":
        model = AutoModelForCausalLM.from_pretrained(out)
    else:
        hidden, intermediate, layers, heads, kv_heads = QWEN25_SHAPES[shape]
        base = AutoModelForCausalLM.from_pretrained(out).config
        config = Qwen2Config(
            vocab_size=QWEN25_VOCAB,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=32768,
            rope_theta=1_000_000.0,
            tie_word_embeddings=True,
            bos_token_id=base.bos_token_id,
            eos_token_id=base.eos_token_id,
            pad_token_id=base.pad_token_id,
        )
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
    model = model.to(getattr(torch, dtype))
    pad = model.config.pad_token_id
    model.generation_config = GenerationConfig(pad_token_id=pad, eos_token_id=None, bos_token_id=None)
    model.save_pretrained(out)
    return out


def chat_text(tokenizer: Any, text: str) -> str:
    """A user message through the chat template, ready for the assistant's reply."""
    return str(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False))


def prompt_ids(tokenizer: Any, text: str) -> tuple[int, ...]:
    """The token ids of a user message through the chat template."""
    return tuple(tokenizer(chat_text(tokenizer, text))["input_ids"])


def prompts(model_dir: Path, batch: int, prompt_tokens: int, seed: int) -> list[str]:
    """Distinct made-up user messages of about ``prompt_tokens`` tokens after the chat template."""
    from transformers import AutoTokenizer

    from empersona.testing.tiny import synthetic_corpus

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    lines = synthetic_corpus(seed=1, lines=400)
    out = []
    for _ in range(batch):
        text = ""
        while len(prompt_ids(tokenizer, text)) < prompt_tokens:
            text += rng.choice(lines) + " "
        out.append(text)
    return out


@dataclass(frozen=True)
class BenchModel:
    """A benchmark model saved for one run: bf16 on CUDA, float32 on CPU, with its tokenizer."""

    model_dir: Path
    tokenizer: Any
    device: Any  # torch.device
    dtype: Any  # torch.dtype

    @classmethod
    def build(cls, shape: str, device: str, scratch: Path) -> BenchModel:
        import torch
        from transformers import AutoTokenizer

        cuda = device == "cuda"
        model_dir = build_model(shape, Path(scratch) / "model", "bfloat16" if cuda else "float32")
        return cls(model_dir, AutoTokenizer.from_pretrained(model_dir), torch.device("cuda:0" if cuda else "cpu"),
                   torch.bfloat16 if cuda else torch.float32)

    def load(self) -> Any:
        """A fresh copy of the model on the device."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype).to(self.device)

    def prompt_ids(self, batch: int, prompt_tokens: int, seed: int) -> list[tuple[int, ...]]:
        """Token ids of ``batch`` distinct made-up prompts (``prompts``) through the chat template."""
        return [prompt_ids(self.tokenizer, text) for text in prompts(self.model_dir, batch, prompt_tokens, seed)]


def run_plain(model: Any, tokenizer: Any, texts: list[str], new_tokens: int) -> float:
    """One sampled ``model.generate`` on the whole left-padded batch; returns wall seconds."""
    import torch

    batch = tokenizer([chat_text(tokenizer, t) for t in texts], return_tensors="pt", padding=True).to(model.device)
    _sync(model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    _sync(model.device)
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return time.perf_counter() - start


def run_engine(engine: Any, tokenizer: Any, texts: list[str], new_tokens: int) -> float:
    """The provider's engine on the B chat-templated prompts; returns wall seconds."""
    from empersona.provider.engine import Request

    requests = [Request(prompt=prompt_ids(tokenizer, t), max_new_tokens=new_tokens, temperature=1.0) for t in texts]
    _sync(engine.device)
    start = time.perf_counter()
    done = engine.generate(requests)
    _sync(engine.device)
    elapsed = time.perf_counter() - start
    assert {len(c.tokens) for c in done} == {new_tokens}
    return elapsed


def run_inspect(model: Any, texts: list[str], new_tokens: int) -> float:
    """B concurrent ``Model.generate`` calls through an inspect provider; returns wall seconds."""
    from inspect_ai.model import GenerateConfig
    from inspect_ai.util._concurrency import init_concurrency

    # inspect keeps one connection pool per model, sized by the first call: start a fresh one so
    # max_connections = B applies (for hf it is also the batch size it waits to fill)
    init_concurrency()
    config = GenerateConfig(max_tokens=new_tokens, temperature=1.0, max_connections=len(texts))

    async def all_calls() -> list[Any]:
        return await asyncio.gather(*[model.generate(t, config=config) for t in texts])

    start = time.perf_counter()
    outputs = asyncio.run(all_calls())
    elapsed = time.perf_counter() - start
    produced = [o.usage.output_tokens for o in outputs if o.usage is not None]
    assert produced and min(produced) == new_tokens, f"expected {new_tokens} tokens per row, got {set(produced)}"
    return elapsed


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize()


def cpu_copy_bandwidth() -> float:
    """Bytes per second moved by a 256 MiB tensor copy (read + write), best of five."""
    import torch

    source = torch.ones(64 * 1024 * 1024, dtype=torch.float32)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * source.element_size() / best


def weight_bytes(model: Any) -> int:
    """Bytes of all parameters (tied embeddings counted once): what one decode step must read."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        total += param.numel() * param.element_size()
    return total


def print_table(rows: list[Measurement], header: str) -> None:
    print(header)
    print(f"{'method':<10} {'batch':>5} {'wall s':>8} {'tok/s':>10} {'ms/step':>9} {'x plain':>8} {'bound tok/s':>12} {'% bound':>8} {'compile s':>9}")
    for r in rows:
        speed = f"{r.speedup_vs_plain:.2f}" if r.speedup_vs_plain is not None else "-"
        compile_s = f"{r.compile_s:.1f}" if r.compile_s is not None else "-"
        print(
            f"{r.method:<10} {r.batch:>5} {r.wall_s:>8.2f} {r.tokens_per_s:>10.1f} {r.ms_per_step:>9.2f} "
            f"{speed:>8} {r.bound_tokens_per_s:>12.0f} {100 * r.fraction_of_bound:>7.2f}% {compile_s:>9}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=["tiny", *QWEN25_SHAPES], default="tiny")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", type=int, default=32, help="fixed output length per row")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="about this many prompt tokens per row")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(KNOWN_METHODS)}")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument(
        "--compile", choices=["auto", "on", "off"], default="auto",
        help="engine: compiled static-cache decoding (auto: on for cuda; on CPU it runs inductor without CUDA graphs)",
    )
    parser.add_argument("--bandwidth", type=float, default=None, help="bytes/s for the bound (cuda default 3.0e12)")
    parser.add_argument("--model-dir", type=Path, default=None, help="where to build the model (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/generate.json"), help="JSON report path")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    batch_sizes = list(dict.fromkeys(int(b) for b in args.batch_sizes.split(",") if b))
    methods = list(dict.fromkeys(m for m in args.methods.split(",") if m))
    unknown = sorted(set(methods) - set(KNOWN_METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(KNOWN_METHODS)})")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if args.device == "cuda" else "float32")
    device = "cuda:0" if args.device == "cuda" else "cpu"
    if args.bandwidth is not None:
        bandwidth, bandwidth_source = args.bandwidth, "given"
    elif args.device == "cuda":
        bandwidth, bandwidth_source = 3.0e12, "H100 device copy, measured earlier (STACK.md)"
    else:
        bandwidth, bandwidth_source = cpu_copy_bandwidth(), "CPU tensor copy, measured now (indicative only)"

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_model(args.shape, args.model_dir or Path(scratch) / "model", dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.padding_side = "left"
        plain_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
        step_bytes = weight_bytes(plain_model)
        params = sum(p.numel() for p in {p.data_ptr(): p for p in plain_model.parameters()}.values())
        if "plain" not in methods:
            del plain_model
        hf_model = ours = engine = tuned = None
        if "hf" in methods or "empersona" in methods:
            from inspect_ai.model import get_model

            import empersona.provider.api  # noqa: F401  (registers empersona/ also without the entry point)

            if "hf" in methods:
                hf_model = get_model(f"hf/{model_dir}", device=device, dtype=dtype)
            if "empersona" in methods:
                ours = get_model(f"empersona/{model_dir}", device=device, dtype=dtype, max_batch_size=max(batch_sizes))
        if "engine" in methods or "engine-cp" in methods:
            from empersona.provider.engine import Engine, EngineOptions

            engine_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device)
            compile_engine = None if args.compile == "auto" else args.compile == "on"
            engine = Engine(engine_model, EngineOptions(max_batch_size=max(batch_sizes), compile=compile_engine))
        if "engine-ma" in methods:
            from empersona.provider.engine import Engine, EngineOptions

            tuned_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device)
            compile_tuned = None if args.compile == "auto" else args.compile == "on"
            tuned = Engine(tuned_model, EngineOptions(max_batch_size=max(batch_sizes), compile=compile_tuned,
                                                      compile_mode="max-autotune"))

        card = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
        header = (
            f"device {args.device} ({card}), shape {args.shape} ({params / 1e6:.1f}M params, {dtype}), "
            f"{args.new_tokens} new tokens, ~{args.prompt_tokens} prompt tokens; bound: {bandwidth:.3g} B/s "
            f"({bandwidth_source}), {step_bytes / 1e6:.1f} MB of weights per step; threads {torch.get_num_threads()}"
        )

        def write_report(rows: list[Measurement], stats: dict[str, Any] | None, complete: bool) -> None:
            report = {
                "device": args.device,
                "card": card,
                "shape": args.shape,
                "params": params,
                "dtype": dtype,
                "new_tokens": args.new_tokens,
                "prompt_tokens": args.prompt_tokens,
                "batch_sizes": batch_sizes,
                "complete": complete,
                "bandwidth_bytes_per_s": bandwidth,
                "bandwidth_source": bandwidth_source,
                "weight_bytes_per_step": step_bytes,
                "torch_threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "engine_stats": stats,
                "failures": failures,
                "results": [asdict(r) for r in rows],
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

        def measure(method: str, texts: list[str], warm: list[str], walls: dict[str, float],
                    compiles: dict[str, float | None]) -> None:
            """One method at one batch size: an untimed warm-up, then the timed run."""
            if method == "plain":
                run_plain(plain_model, tokenizer, warm, args.new_tokens)
                walls[method] = run_plain(plain_model, tokenizer, texts, args.new_tokens)
            elif method == "hf":
                run_inspect(hf_model, warm, args.new_tokens)
                walls[method] = run_inspect(hf_model, texts, args.new_tokens)
            elif method in ("engine", "engine-cp"):
                engine.compile_prefill = method == "engine-cp"  # read at each prompt pass
                warm_s = run_engine(engine, tokenizer, warm, args.new_tokens)
                walls[method] = run_engine(engine, tokenizer, texts, args.new_tokens)
                compiles[method] = warm_s - walls[method] if engine.compile else None
                engine.compile_prefill = False
            elif method == "engine-ma":
                warm_s = run_engine(tuned, tokenizer, warm, args.new_tokens)
                walls[method] = run_engine(tuned, tokenizer, texts, args.new_tokens)
                compiles[method] = warm_s - walls[method] if tuned.compile else None
            else:
                warm_s = run_inspect(ours, warm, args.new_tokens)
                walls[method] = run_inspect(ours, texts, args.new_tokens)
                compiles[method] = warm_s - walls[method] if args.device == "cuda" else None

        def batch_rows(batch: int, walls: dict[str, float], compiles: dict[str, float | None]) -> list[Measurement]:
            bound = batch * bandwidth / step_bytes
            return [
                Measurement(
                    method=method,  # type: ignore[arg-type]
                    batch=batch,
                    new_tokens=args.new_tokens,
                    wall_s=wall,
                    tokens_per_s=batch * args.new_tokens / wall,
                    ms_per_step=1000 * wall / args.new_tokens,
                    speedup_vs_plain=walls["plain"] / wall if "plain" in walls else None,
                    bound_tokens_per_s=bound,
                    fraction_of_bound=batch * args.new_tokens / wall / bound,
                    compile_s=compiles.get(method),
                )
                for method, wall in walls.items()
            ]

        def engine_stats() -> dict[str, Any] | None:
            served = engine if engine is not None else (ours.api.served.engine if ours is not None else None)
            return served.stats.summary() if served is not None else None

        rows: list[Measurement] = []
        failures: dict[str, str] = {}
        for batch in batch_sizes:
            texts = prompts(model_dir, batch, args.prompt_tokens, seed=batch)
            warm = prompts(model_dir, batch, args.prompt_tokens, seed=1000 + batch)
            walls: dict[str, float] = {}
            compiles: dict[str, float | None] = {}  # per method: warm-up less timed run
            for method in methods:
                try:
                    measure(method, texts, warm, walls, compiles)
                except Exception as err:  # noqa: BLE001  (one method failing, a compile on another torch, keeps the others)
                    failures[f"{method} at batch {batch}"] = f"{type(err).__name__}: {err}"[:2000]
                    print(f"{method} at batch {batch} failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
                    traceback.print_exc()
                    if method in ("engine", "engine-cp"):
                        engine.compile_prefill = False
                # written after every method: a run cut short by a time limit keeps what it measured
                rows = [r for r in rows if r.batch != batch] + batch_rows(batch, walls, compiles)
                write_report(rows, engine_stats(), complete=batch == batch_sizes[-1] and method == methods[-1])
            print_table([r for r in rows if r.batch == batch], header)

    print_table(rows, header)
    for name, failure in failures.items():
        print(f"failed: {name}: {failure.splitlines()[0] if failure else ''}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
