"""Batched generation on one loaded base model, for the base and many LoRA adapters at once.

``Engine.generate(requests)`` takes tokenised prompts (each naming its adapter, or none for the
base model) and returns the generated token ids, stop reason and optional logprobs. One call:

1. sorts the requests by prompt length and cuts them into batches of at most
   ``max_batch_size`` rows whose lengths stay within a factor of two (little padding); seeds do
   not split batches: each row draws from its own seed (``sampling.row_uniform`` of the seed and
   the token's position), so a seeded request samples the same tokens whatever shares its batch,
   and an unseeded one gets a seed from torch's global generator when its round starts;
2. per batch, finds the longest token prefix all prompts share (the chat template's system
   prompt, a rubric) and, when it is at least ``min_prefix`` tokens, runs it once per distinct
   adapter in the batch and copies its KV cache into every row (prefix KV reuse). Rows are laid
   out ``[prefix][padding][own suffix]``; positions skip the padding, so each row computes what
   it would compute alone;
3. decodes all rows together: greedy where ``temperature == 0``, otherwise temperature, top-k and
   top-p sampling per row, after a per-row repetition penalty (``repetition_penalty``, as
   Hugging Face's: on every token of the row's prompt and answer so far). Rows stop at an EOS token of the model's generation config (as
   ``model.generate`` does) or at their own ``max_new_tokens``. Once the rows still generating
   are at most ``shrink_at`` of the batch, the round goes on with those rows only (their KV
   cache, mask and settings moved to a smaller batch): sampled answers end at very different
   lengths, and a full round would decode every row until its longest answer ends.

On CUDA (``compile=True``, the default there) the decode step runs on a static KV cache and is
compiled with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs): batch sizes are padded to
powers of two of at least ``GPU_MIN_ROWS`` rows and cache lengths to multiples of 256 so few graphs
are captured, and EOS is checked every ``sync_every`` steps instead of every step. On CPU it runs
eagerly on a dynamic cache.

The static caches are kept for reuse, one per (rows, length) bucket, within a byte budget
(``kv_cache_bytes``; on CUDA by default ``KV_CACHE_SHARE`` of the memory free once the model is
loaded): the least recently used ones are dropped to make room, and a batch whose cache would not
fit even alone runs in smaller batches. A 14B model's cache for 256 rows of 768 tokens is 39 GB,
so without the budget a battery (several prompt lengths and answer lengths, each tail of small
batches) would run out of GPU memory. A dropped cache that comes back is allocated anew; the
compiled step is not recompiled for it (CUDA graph trees re-record their graph for the new
addresses, up to inductor's ``cudagraph_unexpected_rerecord_limit`` times per graph).

Logprobs are the model's own (raw logits, before the repetition penalty, temperature and filtering), for every
generated token: the chosen token's logprob and the ``top_logprobs`` most likely alternatives.
"""

from __future__ import annotations

import inspect as pyinspect
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from empersona.provider.attention import use_grouped_decode_attention
from empersona.provider.lora import AdapterSet, read_adapter
from empersona.provider.sampling import as_int64, sample_next

if TYPE_CHECKING:
    import torch
    from torch import nn

StopReason = Literal["stop", "max_tokens"]
STATIC_LENGTH_STEP = 256
KV_CACHE_SHARE = 0.5  # of the GPU memory free after loading, for static KV caches (the rest: activations)
GPU_MIN_ROWS = 32  # compiled CUDA batches are padded to at least this many rows (one graph for small batches)
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]  # torch.compile's
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
# a round goes on with its live rows once they are at most this share of its batch (EngineOptions.shrink_at);
# compiled: off, since each smaller bucket is one more compiled graph (about 50 s for a 1.5B model
# on an H100), more than the tails of a battery's rounds are estimated to save until a GPU run says
SHRINK_AT_STATIC = 0.5
SHRINK_AT_DYNAMIC = 0.75
SHRINK_AT_COMPILED = 0.0
# lora_merge merges a newly met adapter for a batch of at least this many tokens (rows x (prompt
# width + new tokens)) per unit of the model's width (hidden size): about what its adapter
# products cost against a merge and a restore (see Engine._merge_choice)
MERGE_MIN_TOKENS = 4
_PRODUCTS = object()  # _merge_choice: run the batch with per-row adapter products


@dataclass(frozen=True)
class Request:
    """One prompt to continue. ``temperature == 0`` is greedy; ``top_logprobs=None`` skips logprobs.

    ``seed``: the row's draws depend on it and on the token positions only (None: a seed from
    torch's global generator). ``repetition_penalty`` (1.0: none) applies to greedy rows too.
    """

    prompt: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    adapter: str | None = None
    top_logprobs: int | None = None
    seed: int | None = None
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's logprob and the most likely alternatives ``(token id, logprob)``."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Completion:
    """Generated token ids (without the EOS token), why generation stopped, and logprobs."""

    tokens: tuple[int, ...]
    stop_reason: StopReason
    prompt_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass
class EngineStats:
    """Counters for benchmarks and tests (forward passes are batched model calls)."""

    generate_calls: int = 0
    batches: int = 0
    rows: int = 0
    mixed_batches: int = 0
    merged_batches: int = 0  # batches run with their one adapter merged into the base weights (lora_merge)
    adapter_merges: int = 0  # times an adapter was merged in (each after taking the previous one out)
    forward_passes: int = 0
    prefill_tokens: int = 0
    prefix_tokens_saved: int = 0
    generated_tokens: int = 0
    static_caches_dropped: int = 0  # evicted to keep the static caches within the byte budget
    split_batches: int = 0  # planned batches run in parts because their cache exceeded the budget
    shrunk_rounds: int = 0  # times a round went on in a smaller batch (most of its rows had finished)
    adapter_reloads: int = 0  # adapters loaded again after max_adapters had unloaded them
    decode_row_steps: int = 0  # rows the next-token choice ran on, summed over the steps
    # batches by (rows, cache length rounded up to STATIC_LENGTH_STEP): the shapes a GPU compiles for
    shapes: Counter[tuple[int, int]] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        """The counters as JSON-ready values (``shapes`` keyed ``"<rows>x<length>"``)."""
        counts = {name: value for name, value in vars(self).items() if name != "shapes"}
        return {**counts, "shapes": {f"{rows}x{length}": n for (rows, length), n in sorted(self.shapes.items())}}


@dataclass(frozen=True)
class EngineOptions:
    """How the engine batches and decodes.

    ``compile=None`` means on for CUDA, off elsewhere; ``static_cache=None`` follows ``compile``
    (a static cache without compiling runs the CUDA layout eagerly, which is how CPU tests check it).
    ``grouped_attention`` swaps SDPA for ``attention.grouped_decode_attention`` in decode steps.
    ``row_prefill_tokens``: on CPU, batches with prompts of unequal length, the longest at least
    this long, are prefilled one row at a time (no padding mask, so PyTorch's fast causal kernel
    runs; a padded mask sends CPU attention to a kernel several times slower) without prefix reuse.
    ``kv_cache_bytes``: most bytes the kept static caches may take together (None: on CUDA
    ``KV_CACHE_SHARE`` of the memory free when the engine starts, elsewhere no limit).
    ``min_batch_bucket``: the fewest rows a static-cache batch is padded to (None: ``GPU_MIN_ROWS``
    when compiling on CUDA, else 1). A GPU decode step costs about the same at 1 row as at 32 (the
    weights are read once either way), and each batch size is a graph compiled anew (about 50 s
    for a 1.5B model on an H100): small batches, the tail of every task, share one size.
    ``shrink_at``: when the rows still generating are at most this share of a round's batch
    (checked every ``sync_every`` steps on a static cache, every step otherwise), the round goes
    on with those rows only: sampled answers end at different lengths, and a round otherwise runs
    all its rows until its longest answer ends. None: ``SHRINK_AT_COMPILED`` (off) when the step
    is compiled, ``SHRINK_AT_STATIC`` on an eager static cache (the live rows then fill the next
    power-of-two bucket down), ``SHRINK_AT_DYNAMIC`` otherwise (the live rows exactly; the cost is
    a copy of their KV cache). 0 turns it off.
    A model with sliding-window attention (`uses_sliding_window`) gets neither prefix reuse nor
    shrinking, whatever these say: transformers masks the window by cache slots, so a prefix's gap
    or rows copied into another cache would let the wrong tokens into the window.
    ``lora_dtype``: the dtype adapters are applied in, ``"model"`` (the base model's: bf16 on a GPU,
    tensor cores, as vLLM) or ``"float32"`` (PEFT's default for a 16-bit base; see ``lora``).
    ``compile_prefill``: run prompt forward passes through ``torch.compile`` too (dynamic shapes:
    one graph for any prompt width and row count above one, per cache type; no CUDA graphs). Eager prompt
    passes leave the norms, rotary embedding and activations unfused: on an H100 (1.5B shape,
    batch 256, 64-token prompts) 77 of the prefill's 150 ms of kernels were such element-wise
    work beside 65 ms of matrix products. Timed there (torch 2.11, 2026-11-27): the batch's prompt
    passes 166 -> 115 ms (1.44x), the whole call 6.08 -> 5.58 ms per new token (1.09x; 128 new
    tokens), after a compile of 75 s (``bench/profile_engine.py``; 171 s as ``bench/generate.py``'s
    ``engine-cp`` warm-up measured it). Off by default: it saves ~51 ms per 256 prompts of 64
    tokens, so the compile pays back only after about 1,500 such batches, more than a study's
    battery asks of one process; on this project's 2-core CPU it cost 130 s (0.5B shape) for
    prompt passes 1.18x faster.
    ``compile_mode``: the ``torch.compile`` mode of the decode step (one of ``COMPILE_MODES``; with
    the inductor backend only). None: ``reduce-overhead`` (CUDA graphs) on CUDA, inductor's default
    elsewhere. ``max-autotune`` also times several kernel choices for every matrix product of the
    step (and tunes the fused element-wise kernels) while compiling, and keeps the fastest: a longer
    first compile for possibly faster products at large batches, where the compiled decode step of
    the 1.5B shape spends 2.24 of its 3.76 ms in matrix products (H100, batch 256); not yet timed
    on a GPU (``bench/generate.py``'s ``engine-ma`` method measures it), hence not the default.
    ``lora_fuse_input``: where the adapters run in the model's dtype, stack their A factors under
    each adapted layer's base weight, so one matrix product gives the layer's output and the
    adapters' A x instead of two (one small product less per adapted layer: 196 per decode step
    of Qwen2.5-1.5B with all seven projections adapted). Off by default until a GPU run of
    ``bench/adapters.py`` says it pays: on this project's CPU it was 0.86-0.97x the speed of two
    products over three runs (0.5B shape, batch 8).
    ``max_adapters``: the most adapters kept loaded at once; beyond it the least recently used one
    that the requests at hand do not need is unloaded (``AdapterSet.remove``) and loaded again
    from its folder when asked for again. Every loaded adapter holds its factors on the device and
    widens the products of mixed batches: a study with ``checkpoints: true`` asks tens of adapters
    in turn, one at a time.
    ``lora_merge``: a batch whose rows all use one adapter (``empersona run`` evaluates one model at
    a time, so every batch of a fine-tune's evaluation) runs with that adapter merged into the base
    weights (``AdapterSet.merge``: ``W + scaling * B A``, rounded once into the weight's dtype, as
    PEFT's ``merge_and_unload``) and no adapter products, at the base model's speed; a batch of base
    rows alone also skips them. Such batches run on the base model's own layers
    (``AdapterSet.wrap``), so compiled, they reuse the decode graphs compiled for the base model
    instead of compiling their own (a study evaluates the base model first). A mixed batch takes the
    update out again (the base weights come back bit for bit) and uses the per-row products. A merge
    costs about two layer-sized products per adapted layer, so a newly met adapter is merged for a
    batch of at least ``MERGE_MIN_TOKENS`` x the model width tokens, or from the second batch of its
    rows alone in a row (``Engine._merge_choice``): batches that alternate between models do not pay
    a merge each. In bf16 the merged weights give logits slightly different from the products'
    (first-token logprobs within 0.05 of PEFT's forward pass, as the products are), so a row's
    answer may depend on whether its batch was mixed. On by default: on this project's CPU, batches
    of one adapter's rows with six loaded ran 0.96-1.26x as fast merged as products over ten runs,
    median 1.11x (0.5B shape, batch 8; the base model alone drifted between 2.22 and 2.86 s per
    batch over the same runs), and 1.24x and 1.41x in two runs with the decode step compiled
    (inductor: the GPU's layout, where the products cover every loaded adapter's columns; 0.78-0.81x
    the base model's speed as products); on the H100 a batch over six adapters ran at 0.67x the base
    model's speed (``bench/adapters.py``), which is what merging recovers for a study's one-model
    batches (not yet timed there).
    """

    max_batch_size: int = 256
    prefix_reuse: bool = True
    min_prefix: int = 16
    compile: bool | None = None
    static_cache: bool | None = None
    sync_every: int = 8
    compile_backend: str = "inductor"
    grouped_attention: bool = True
    row_prefill_tokens: int = 256
    kv_cache_bytes: int | None = None
    min_batch_bucket: int | None = None
    shrink_at: float | None = None
    lora_dtype: str = "model"
    lora_fuse_input: bool = False
    compile_prefill: bool = False
    lora_merge: bool = True
    max_adapters: int = 16
    compile_mode: CompileMode | None = None

    def __post_init__(self) -> None:
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode {self.compile_mode!r}: one of {', '.join(COMPILE_MODES)}, or None")
        if self.compile_mode is not None and self.compile_backend != "inductor":
            raise ValueError(f"compile_mode {self.compile_mode!r} needs the inductor backend, not {self.compile_backend!r}")


@dataclass
class _Batch:
    """Tensors of one batch while it decodes."""

    requests: list[Request]
    width: int  # prompt area: prefix + padded suffix
    mask: torch.Tensor  # [rows, width + max_new] 1 = attend
    positions: torch.Tensor  # [rows, width]
    ids: torch.Tensor  # [rows, width]
    prefix: int
    real_rows: int
    by_row: bool = False


@dataclass
class _RoundState:
    """Per-row decoding state of a round, one entry per row of the batch as it runs now."""

    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    limit: torch.Tensor
    length: torch.Tensor  # tokens kept when the row stops (EOS excluded)
    stopped: torch.Tensor  # ended on an EOS token
    done: torch.Tensor
    position: torch.Tensor  # the row's own position of the token it draws next (padding not counted)
    slot: torch.Tensor  # the row of ``requests`` (and of the round's output) each row writes to
    seed: torch.Tensor  # int64: the request's seed, or one drawn when the round started
    penalty: torch.Tensor  # repetition penalty, 1.0 where none
    seen: torch.Tensor | None  # bool [rows, vocab]: tokens in the row's input (None: no row penalised)

    def select(self, keep: torch.Tensor) -> None:
        for name, value in vars(self).items():
            if value is not None:
                setattr(self, name, value.index_select(0, keep))


@dataclass
class _RoundOutput:
    """What a round produced, by request row; written through ``_RoundState.slot``."""

    tokens: torch.Tensor  # [rows, max_new]
    length: torch.Tensor
    stopped: torch.Tensor
    logprob: torch.Tensor | None  # [rows, max_new] of the chosen token
    top_values: torch.Tensor | None  # [rows, max_new, k]
    top_ids: torch.Tensor | None

    @classmethod
    def empty(cls, rows: int, max_new: int, k: int, pad_id: int, device: torch.device) -> _RoundOutput:
        import torch

        return cls(
            tokens=torch.full((rows, max_new), pad_id, dtype=torch.long, device=device),
            length=torch.zeros(rows, dtype=torch.long, device=device),
            stopped=torch.zeros(rows, dtype=torch.bool, device=device),
            logprob=torch.zeros((rows, max_new), dtype=torch.float32, device=device) if k else None,
            top_values=torch.zeros((rows, max_new, k), dtype=torch.float32, device=device) if k else None,
            top_ids=torch.zeros((rows, max_new, k), dtype=torch.long, device=device) if k else None,
        )

    def write_step(
        self, slot: torch.Tensor, step: int, token: torch.Tensor, logprob: torch.Tensor | None,
        values: torch.Tensor | None, ids: torch.Tensor | None,
    ) -> None:
        self.tokens[slot, step] = token
        if self.logprob is not None and logprob is not None:
            self.logprob[slot, step] = logprob.float()
        if self.top_values is not None and values is not None and ids is not None:
            self.top_values[slot, step] = values.float()
            self.top_ids[slot, step] = ids  # type: ignore[index]

    def finish(self, state: _RoundState) -> None:
        """Store the stop state of every row of the round as it runs now."""
        self.length[state.slot] = state.length
        self.stopped[state.slot] = state.stopped


def uses_sliding_window(config: Any) -> bool:
    """Whether some attention layer sees only a window of the latest tokens (Gemma 2 and 3,
    Mistral v0.1, Phi-3, gpt-oss, Qwen2 with ``use_sliding_window``)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(config, "layer_types", None)
    if types:
        return "sliding_attention" in types
    return getattr(config, "sliding_window", None) is not None


class Engine:
    """One base model in memory serving batched requests for it and its LoRA adapters."""

    def __init__(self, model: nn.Module, options: EngineOptions = EngineOptions()) -> None:

        self.model = model.eval()
        self.grouped_attention = options.grouped_attention and use_grouped_decode_attention(model)
        self.device: torch.device = next(model.parameters()).device
        self.options = options
        self.compile = compiles(options, self.device.type)
        self.static = options.static_cache if options.static_cache is not None else self.compile
        if self.compile and not self.static:
            raise ValueError("compile=True decodes on a static cache; do not set static_cache=False with it")
        self.adapters = AdapterSet(model, fuse_input=options.lora_fuse_input)
        if options.lora_dtype == "model":
            self.adapters.rows.dtype = next(model.parameters()).dtype
        elif options.lora_dtype != "float32":
            raise ValueError(f"lora_dtype must be 'model' or 'float32', not {options.lora_dtype!r}")
        self.stats = EngineStats()
        self.lock = threading.RLock()
        generation = getattr(model, "generation_config", None)
        eos = getattr(generation, "eos_token_id", None)
        self.eos_ids: tuple[int, ...] = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (eos,))
        pad = getattr(generation, "pad_token_id", None)
        if pad is None:
            pad = getattr(model.config, "pad_token_id", None)
        self.pad_id: int = int(pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0))
        params = pyinspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._wants_cache_position = "cache_position" in params
        self._static_caches: OrderedDict[tuple[int, int], Any] = OrderedDict()  # least recently used first
        self.kv_cache_budget = options.kv_cache_bytes if options.kv_cache_bytes is not None else auto_kv_budget(self.device)
        self._kv_bytes_per_slot = kv_bytes_per_slot(model)
        self.min_rows = options.min_batch_bucket or default_min_rows(self.compile, self.device)
        shrink_default = SHRINK_AT_COMPILED if self.compile else SHRINK_AT_STATIC if self.static else SHRINK_AT_DYNAMIC
        self.shrink_at = options.shrink_at if options.shrink_at is not None else shrink_default
        # transformers masks a sliding window by cache slots: the gap between a shared prefix and the
        # rest, or rows copied into a smaller cache, would put the wrong tokens inside the window
        self.sliding_window = uses_sliding_window(model.config)
        self.prefix_reuse = options.prefix_reuse and not self.sliding_window
        if self.sliding_window:
            self.shrink_at = 0.0  # never: a round keeps its rows where they are
        self._compiled_step: Any = None
        self._compiled_sample: Any = None
        self._compiled_prompt: Any = None
        self.compile_prefill = options.compile_prefill
        self._last_adapters: set[str | None] = set()  # the adapters of the batch before
        self._adapter_paths: dict[str, Path] = {}  # every adapter key ever added: its folder, to load it again
        self._adapter_use: OrderedDict[str, None] = OrderedDict()  # loaded adapters, least recently used first
        self._unloaded: set[str] = set()  # adapters max_adapters unloaded
        self._batch_merge: str | None | object = _PRODUCTS  # this batch's _merge_choice

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, path: Path) -> str:
        """Load a LoRA adapter folder onto the base weights; returns the key requests name it by."""
        with self.lock:
            key = self.adapters.key(path)
            self._adapter_paths[key] = Path(path)
            self._load_adapters({key})
            return key

    def _load_adapters(self, needed: set[str]) -> None:
        """Have ``needed`` loaded (again, if unloaded since), then unload the least recently used
        others while more than ``max_adapters`` are loaded."""
        for key in sorted(needed):
            if key not in self.adapters.adapters:
                path = self._adapter_paths.get(key)
                if path is None:
                    raise KeyError(f"adapter {key} was never added to this engine (add_adapter)")
                self.stats.adapter_reloads += key in self._unloaded
                self.adapters.add(read_adapter(path))
                self._unloaded.discard(key)
            self._adapter_use[key] = None
            self._adapter_use.move_to_end(key)
        for key in list(self._adapter_use):
            if len(self._adapter_use) <= self.options.max_adapters:
                break
            if key not in needed:
                self.adapters.remove(key)
                del self._adapter_use[key]
                self._unloaded.add(key)

    # ------------------------------------------------------------------ public entry
    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Generate for all requests, batched; results come back in the order of ``requests``.
        The first batch that fails raises its error (`generate_each` keeps the others)."""
        outcomes = self.generate_each(requests)
        failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failed is not None:
            raise failed
        return [o for o in outcomes if isinstance(o, Completion)]

    def generate_each(self, requests: Sequence[Request]) -> list[Completion | Exception]:
        """Generate for all requests, batched; each request gets its completion or the error of
        the batch it ran in, in the order of ``requests``. A batch that fails (out of memory, a
        row too long for the KV budget) fails its own requests only; the other batches run."""
        import torch

        results: list[Completion | Exception | None] = [None] * len(requests)
        with self.lock, torch.inference_mode():
            self.stats.generate_calls += 1
            self._load_adapters({r.adapter for r in requests if r.adapter is not None})
            for planned in self._plan(requests):
                try:
                    parts = self._fit(planned, requests)
                except ValueError:  # the longest row does not fit the KV budget: each row on its own
                    parts = []
                    for index in planned:
                        try:
                            parts += self._fit([index], requests)
                        except ValueError as exc:  # only the rows too long fail
                            results[index] = exc
                for batch in parts:
                    try:
                        done = self._run([requests[i] for i in batch])
                    except Exception as exc:  # noqa: BLE001 - handed to this batch's requests
                        for index in batch:
                            results[index] = exc
                        continue
                    for index, completion in zip(batch, done):
                        results[index] = completion
        return [r if r is not None else RuntimeError("no result (engine error)") for r in results]

    def _plan(self, requests: Sequence[Request]) -> list[list[int]]:
        """Sort request indices by prompt length and cut them into batches of similar length.

        Seeds do not split batches: each row draws from its own seed (the repeats of a sample
        carry different seeds, and a batch per seed would cut a round of 256 rows into many small ones).
        """
        def order(index: int) -> tuple[Any, ...]:
            # length first (little padding), then a canonical order: the same requests in any
            # order get the same rows, so a seeded request samples the same tokens again
            request = requests[index]
            return (len(request.prompt), -1 if request.seed is None else request.seed, request.prompt, str(request.adapter))

        indices = sorted(range(len(requests)), key=order)
        plan: list[list[int]] = []
        batch: list[int] = []
        for index in indices:
            length = len(requests[index].prompt)
            if batch:
                shortest = len(requests[batch[0]].prompt)
                too_long = length - shortest > max(64, shortest)
                if len(batch) >= self.options.max_batch_size or too_long:
                    plan.append(batch)
                    batch = []
            batch.append(index)
        if batch:
            plan.append(batch)
        return plan

    def _cache_length(self, requests: Sequence[Request]) -> int:
        """Slots of the static cache a batch of ``requests`` needs: longest prompt plus most new tokens, rounded up."""
        return self._static_length(max(len(r.prompt) for r in requests), max(r.max_new_tokens for r in requests))

    def _rows_in_budget(self, requests: Sequence[Request]) -> int | None:
        """How many rows of a static cache long enough for ``requests`` the byte budget holds (None: no budget)."""
        if self.kv_cache_budget is None:
            return None
        return self.kv_cache_budget // self.cache_bytes(1, self._cache_length(requests))

    def _fit(self, batch: list[int], requests: Sequence[Request]) -> list[list[int]]:
        """``batch`` cut into parts whose static cache fits the byte budget (one part when it fits)."""
        if not self.static or self.kv_cache_budget is None:
            return [batch]
        length = self._cache_length([requests[i] for i in batch])
        row_bytes = self.cache_bytes(1, length)
        fit = self.kv_cache_budget // row_bytes
        if fit < 1:
            gib = 2**30
            raise ValueError(
                f"one row of this batch needs {row_bytes / gib:.2f} GiB of KV cache ({length} token slots: the "
                f"longest prompt plus max_new_tokens) and the engine's budget for KV caches is "
                f"{self.kv_cache_budget / gib:.2f} GiB; raise the budget (model arg kv_cache_gib), or lower "
                "max_tokens or the prompt length"
            )
        if len(batch) <= fit:
            return [batch]
        size = 1
        while size * 2 <= min(fit, self.options.max_batch_size):
            size *= 2  # a power of two: a part fills its bucket
        self.stats.split_batches += 1
        return [batch[i : i + size] for i in range(0, len(batch), size)]

    def cache_bytes(self, rows: int, length: int) -> int:
        """Bytes of a static KV cache with ``rows`` rows of ``length`` slots (sliding-window layers counted in full)."""
        return rows * length * self._kv_bytes_per_slot

    @staticmethod
    def _static_length(prompt: int, max_new: int) -> int:
        return -(-(prompt + max_new) // STATIC_LENGTH_STEP) * STATIC_LENGTH_STEP

    # ------------------------------------------------------------------ one batch
    def _run(self, requests: list[Request]) -> list[Completion]:
        import torch

        for request in requests:
            if not request.prompt:
                raise ValueError("empty prompt: nothing to condition generation on")
            if not request.repetition_penalty > 0:
                raise ValueError(f"repetition_penalty must be above 0, not {request.repetition_penalty}")
        real_rows = len(requests)
        if self.static:
            size = self._bucket_rows(real_rows, self._rows_in_budget(requests))
            requests = requests + [requests[0]] * (size - real_rows)
        max_new = max(r.max_new_tokens for r in requests)
        batch = self._layout(requests, real_rows, max_new)
        self.stats.batches += 1
        self.stats.rows += real_rows
        self.stats.shapes[(real_rows, self._static_length(batch.width, max_new))] += 1
        if len({r.adapter for r in requests[:real_rows]}) > 1:
            self.stats.mixed_batches += 1

        self._batch_merge = self._merge_choice(requests[:real_rows], batch.width, max_new)
        cache, logits = self._prefill(batch, max_new)
        if self.adapters.rows.merged and self.adapters.merged_key is not None:
            self.stats.merged_batches += 1
        rows = len(requests)
        device = self.device
        sample = self._sampler()
        want = [r.top_logprobs for r in requests]
        k = max((w for w in want if w is not None), default=-1)
        k = max(k, 1) if k >= 0 else 0
        filters = any(r.top_p < 1.0 or r.top_k > 0 for r in requests)
        sampled = any(r.temperature > 0 for r in requests)
        penalised = any(r.repetition_penalty != 1.0 for r in requests)
        limit = torch.tensor([r.max_new_tokens for r in requests], device=device)
        limit[real_rows:] = 1  # padding rows of a compiled batch stop at once
        eos = torch.tensor(self.eos_ids or (-1,), device=device)
        state = _RoundState(
            temperature=torch.tensor([r.temperature for r in requests], dtype=torch.float32, device=device),
            top_p=torch.tensor([r.top_p for r in requests], dtype=torch.float32, device=device),
            top_k=torch.tensor([r.top_k for r in requests], dtype=torch.long, device=device),
            limit=limit,
            length=limit.clone(),
            stopped=torch.zeros(rows, dtype=torch.bool, device=device),
            done=torch.zeros(rows, dtype=torch.bool, device=device),
            position=batch.positions[:, -1] + 1,
            slot=torch.arange(rows, device=device),
            seed=row_seeds(requests[:real_rows], rows).to(device),
            penalty=torch.tensor([r.repetition_penalty for r in requests], dtype=torch.float32, device=device),
            seen=prompt_tokens_seen(batch, logits.shape[-1]) if penalised else None,
        )
        # what each row of the batch produced, by its row in ``requests``; one more row takes the
        # writes of the padding rows a shrunk round may add
        out = _RoundOutput.empty(rows + 1, max_new, k, self.pad_id, device)
        sync_every = self.options.sync_every if self.static else 1
        steps = 0
        for step in range(max_new):
            token, token_lp, values, ids = sample(
                logits, state.temperature, state.top_p, state.top_k, state.temperature <= 0, state.seed,
                state.position, k, sampled, filters, state.penalty, state.seen,
            )
            token = torch.where(state.done, self.pad_id, token)
            if state.seen is not None:
                state.seen.scatter_(1, token[:, None], True)
            out.write_step(state.slot, step, token, token_lp, values, ids)  # logprobs None when k == 0
            steps = step + 1
            self.stats.decode_row_steps += len(state.slot)
            hit_eos = torch.isin(token, eos) & ~state.done
            at_limit = (step + 1 >= state.limit) & ~state.done
            state.length = torch.where(hit_eos, step, state.length)
            state.stopped |= hit_eos
            state.length = torch.where(at_limit & ~hit_eos, step + 1, state.length)
            state.done |= hit_eos | at_limit
            if step + 1 == max_new:
                break
            if (step + 1) % sync_every == 0:
                live = [row for row, done in enumerate(state.done.tolist()) if not done]
                if not live:
                    break
                if len(live) <= self.shrink_at * len(state.slot):
                    batch, cache, token = self._shrink(batch, cache, state, out, token, live)
            logits = self._decode(batch, cache, token, state.position, step)
            state.position = state.position + 1
        out.finish(state)
        self.stats.generated_tokens += int(out.length[:real_rows].sum())
        return self._collect(requests[:real_rows], out, steps)

    def _shrink(
        self, batch: _Batch, cache: Any, state: _RoundState, out: _RoundOutput, token: torch.Tensor, live: list[int]
    ) -> tuple[_Batch, Any, torch.Tensor]:
        """Go on with the rows still generating only, in a smaller batch (same tokens, less work).

        The finished rows' results are stored; the live rows' KV cache, mask and sampling settings
        move to a batch of the next bucket size (static cache: padded with finished copies of a
        live row, whose writes go to the spare output row) or of exactly the ``live`` rows.
        """
        import torch

        size = self._bucket_rows(len(live)) if self.static else len(live)
        if size >= len(state.slot):
            return batch, cache, token
        keep_rows = live + live[:1] * (size - len(live))
        keep = torch.tensor(keep_rows, device=self.device)
        out.finish(state)
        spare = out.length.shape[0] - 1
        state.select(keep)
        state.slot[len(live):] = spare
        state.done[len(live):] = True
        token = token.index_select(0, keep)
        batch = replace(
            batch,
            requests=[batch.requests[i] for i in keep_rows],
            mask=batch.mask.index_select(0, keep),
            positions=batch.positions.index_select(0, keep),
            ids=batch.ids.index_select(0, keep),
            real_rows=len(live),
        )
        if self.static:
            smaller = self._static_cache(size, batch.mask.shape[1])
            _copy_rows(smaller, cache, keep)
            cache = smaller
            self.stats.shapes[(len(live), batch.mask.shape[1])] += 1
        else:
            cache.batch_select_indices(keep)
        self._set_rows([r.adapter for r in batch.requests])
        self.stats.shrunk_rounds += 1
        return batch, cache, token

    def _collect(self, requests: list[Request], out: _RoundOutput, steps: int) -> list[Completion]:
        rows = len(requests)
        token_list = out.tokens[:rows, :steps].cpu().tolist()
        lengths = out.length[:rows].cpu().tolist()
        stop_list = out.stopped[:rows].cpu().tolist()
        lp = out.logprob[:rows, :steps].cpu().tolist() if out.logprob is not None else None
        tv = out.top_values[:rows, :steps].cpu().tolist() if out.top_values is not None else None
        ti = out.top_ids[:rows, :steps].cpu().tolist() if out.top_ids is not None else None
        completions: list[Completion] = []
        for row, request in enumerate(requests):
            n = int(lengths[row])
            logprobs = None
            if request.top_logprobs is not None and lp is not None and tv is not None and ti is not None:
                top_n = max(request.top_logprobs, 1)
                # an EOS that stopped the row is part of what the model produced: report it too
                reported = min(n + int(stop_list[row]), steps)
                logprobs = tuple(
                    TokenLogprob(
                        token=token_list[row][i],
                        logprob=lp[row][i],
                        top=tuple(zip(ti[row][i][:top_n], tv[row][i][:top_n], strict=True)),
                    )
                    for i in range(reported)
                )
            completions.append(
                Completion(
                    tokens=tuple(token_list[row][:n]),
                    stop_reason="stop" if stop_list[row] else "max_tokens",
                    prompt_tokens=len(request.prompt),
                    logprobs=logprobs,
                )
            )
        return completions

    # ------------------------------------------------------------------ layout and prefill
    def _layout(self, requests: list[Request], real_rows: int, max_new: int) -> _Batch:
        """Lay rows out as ``[shared prefix][left padding][own suffix]`` with a 0/1 mask and positions."""
        import torch

        prompts = [r.prompt for r in requests]
        lengths = {len(p) for p in prompts}
        by_row = (
            not self.static
            and self.device.type == "cpu"
            and len(lengths) > 1
            and max(lengths) >= self.options.row_prefill_tokens
        )
        prefix = self._shared_prefix(prompts[:real_rows]) if real_rows > 1 and not by_row else 0
        suffix = max(len(p) - prefix for p in prompts)
        width = prefix + suffix
        total = self._static_length(width, max_new) if self.static else width + max_new
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), total), dtype=torch.long)
        mask[:, width:] = 1
        for row, prompt in enumerate(prompts):
            own = len(prompt) - prefix
            ids[row, :prefix] = torch.tensor(prompt[:prefix], dtype=torch.long)
            ids[row, width - own :] = torch.tensor(prompt[prefix:], dtype=torch.long)
            mask[row, :prefix] = 1
            mask[row, width - own : width] = 1
        positions = (mask[:, :width].cumsum(1) - 1).clamp_min(0)
        return _Batch(
            requests=requests,
            width=width,
            mask=mask.to(self.device),
            positions=positions.to(self.device),
            ids=ids.to(self.device),
            prefix=prefix,
            real_rows=real_rows,
            by_row=by_row,
        )

    def _shared_prefix(self, prompts: Sequence[tuple[int, ...]]) -> int:
        """Length of the token prefix every prompt shares, kept when long enough to be worth reusing."""
        if not self.prefix_reuse:
            return 0
        shortest = min(len(p) for p in prompts)
        n = 0
        first = prompts[0]
        while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
            n += 1
        return n if n >= self.options.min_prefix else 0

    def _merge_choice(self, requests: Sequence[Request], width: int, max_new: int) -> str | None | object:
        """The adapter a batch runs merged into the base weights (``None``: the base model with
        no adapter products), or ``_PRODUCTS``: per-row adapter products.

        Only a batch of one adapter's rows runs merged (``lora_merge``). Merging and taking the
        update out again cost about two products the size of a layer's weight (0.6 to 3 s per
        switch for the 0.5B shape on this project's CPU), which a batch's adapter products repay
        once it holds about ``MERGE_MIN_TOKENS`` x the model width tokens; so a newly met
        adapter is merged for a batch that large, or when the batch before was also its rows
        alone (a study evaluates one model at a time: from its second batch on), and batches
        that alternate between models do not merge and restore every time. The adapter already
        merged, and the base model, cost nothing to keep.
        """
        if not (self.options.lora_merge and self.adapters.adapters):
            return _PRODUCTS
        distinct = {r.adapter for r in requests}
        previous, self._last_adapters = self._last_adapters, distinct
        if len(distinct) != 1:
            return _PRODUCTS
        (only,) = distinct
        if not self.adapters.can_merge(only):
            return _PRODUCTS
        hidden = int(getattr(self.model.config, "hidden_size", 0) or 0)
        large = len(requests) * (width + max_new) >= MERGE_MIN_TOKENS * hidden
        if only is None or only == self.adapters.merged_key or previous == distinct or large:
            return only
        return _PRODUCTS

    def _set_rows(self, adapters: Sequence[str | None]) -> None:
        if not self.adapters.adapters:
            return
        rows = self.adapters.rows
        if self._batch_merge is not _PRODUCTS and set(adapters) == {self._batch_merge}:
            key = self._batch_merge
            assert key is None or isinstance(key, str)
            if key is not None and key != self.adapters.merged_key:
                self.stats.adapter_merges += 1
            self.adapters.merge(key)
            self.adapters.wrap(False)  # the base model's own layers: its compiled graphs serve
            rows.merged = True
            return
        self.adapters.merge(None)
        self.adapters.wrap(True)
        rows.merged = False
        rows.set_rows([self.adapters.block(a) for a in adapters], self.device)

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: Any, start: int,
        prompt: bool = True,
    ) -> torch.Tensor:
        """One forward pass of the tokens at cache slots ``start...``; last position's logits ``[rows, vocab]``.

        ``prompt``: a prompt pass (prefill), compiled when ``compile_prefill`` is on; else eager.
        """
        import torch

        kwargs: dict[str, Any] = {self._cache_arg: cache}
        if self._wants_cache_position:
            kwargs["cache_position"] = torch.arange(start, start + ids.shape[1], device=self.device)
        run: Any = _last_logits
        if prompt and self.compile_prefill:
            if self._compiled_prompt is None:
                raise_recompile_limit()
                # dynamic: prompt widths and row counts vary from batch to batch
                self._compiled_prompt = torch.compile(_last_logits, backend=self.options.compile_backend, dynamic=True)
            run = self._compiled_prompt
        logits = run(self.model, ids, positions, mask, kwargs)
        self.stats.forward_passes += 1
        return logits

    def _prefill(self, batch: _Batch, max_new: int) -> tuple[Any, torch.Tensor]:
        """Run the prompts through the model; the shared prefix once per adapter in the batch.

        On a static cache the prompt passes write into it directly, except when they are compiled:
        then they write a dynamic cache (whose shapes, unlike a static cache's, stay symbolic in
        the compiled graph: one graph for every row count and width) that is copied into the
        static cache afterwards.
        """
        import torch
        from transformers import DynamicCache

        if batch.by_row:
            return self._prefill_rows(batch)
        adapters = [r.adapter for r in batch.requests]
        static: Any = self._static_cache(len(adapters), batch.mask.shape[1]) if self.static else None
        direct = static is not None and not self.compile_prefill
        cache: Any = static if direct else None
        if batch.prefix:
            distinct = list(dict.fromkeys(adapters))
            self._set_rows(distinct)
            shared = DynamicCache(config=self.model.config)
            rows = len(distinct)
            self._forward(
                batch.ids[:1, : batch.prefix].expand(rows, -1),
                batch.positions[:1, : batch.prefix].expand(rows, -1),
                batch.mask[:1, : batch.prefix].expand(rows, -1),
                shared,
                0,
            )
            index = torch.tensor([distinct.index(a) for a in adapters], device=self.device)
            if direct:
                _copy_rows(static, shared, index)
            else:
                shared.reorder_cache(index)
                cache = shared
            self.stats.prefill_tokens += batch.prefix * rows
            self.stats.prefix_tokens_saved += batch.prefix * (batch.real_rows - rows)
        if cache is None:
            cache = DynamicCache(config=self.model.config)
        self._set_rows(adapters)
        suffix = batch.ids[:, batch.prefix :]
        self.stats.prefill_tokens += suffix.shape[1] * batch.real_rows
        logits = self._forward(
            suffix,
            batch.positions[:, batch.prefix :],
            batch.mask if direct else batch.mask[:, : batch.width],
            cache,
            batch.prefix,
        )
        if static is not None and not direct:
            _copy_rows(static, cache, torch.arange(len(adapters), device=self.device))
            cache = static
        return cache, logits

    def _prefill_rows(self, batch: _Batch) -> tuple[Any, torch.Tensor]:
        """Prefill each row alone (no padding), then left-pad the KV caches into one batch cache."""
        import torch
        from transformers import DynamicCache

        caches = []
        logits = []
        for row, request in enumerate(batch.requests):
            own = len(request.prompt)
            self._set_rows([request.adapter])
            cache = DynamicCache(config=self.model.config)
            start = batch.width - own
            logits.append(self._forward(batch.ids[row : row + 1, start:], batch.positions[row : row + 1, start:], None, cache, 0))
            caches.append(cache)
            self.stats.prefill_tokens += own
        merged = DynamicCache(config=self.model.config)
        for layer in range(len(caches[0].layers)):
            first = caches[0].layers[layer]
            keys = first.keys.new_zeros(len(caches), first.keys.shape[1], batch.width, first.keys.shape[3])
            values = first.values.new_zeros(len(caches), first.values.shape[1], batch.width, first.values.shape[3])
            for row, cache in enumerate(caches):
                own_keys, own_values = cache.layers[layer].keys, cache.layers[layer].values
                keys[row, :, batch.width - own_keys.shape[2] :] = own_keys[0]
                values[row, :, batch.width - own_values.shape[2] :] = own_values[0]
            merged.update(keys, values, layer)
        self._set_rows([r.adapter for r in batch.requests])
        return merged, torch.cat(logits)

    def _static_cache(self, rows: int, length: int) -> Any:
        """The kept static cache of this bucket, reset; else a new one, after dropping the least
        recently used caches the byte budget has no room for."""
        from transformers import StaticCache

        key = (rows, length)
        cache = self._static_caches.get(key)
        if cache is not None:
            self._static_caches.move_to_end(key)
            cache.reset()
            return cache
        if self.kv_cache_budget is not None:
            need = self.cache_bytes(rows, length)
            dropped = False
            while self._static_caches and self.kept_cache_bytes() + need > self.kv_cache_budget:
                self._static_caches.popitem(last=False)
                self.stats.static_caches_dropped += 1
                dropped = True
            if dropped and self.device.type == "cuda":
                import torch

                torch.cuda.empty_cache()  # hand the dropped blocks back whole: the new cache's tensors differ in size
        cache = StaticCache(config=self.model.config, max_cache_len=length)
        # allocated now rather than at the first write: a compiled prompt pass then always meets
        # an allocated cache (one graph, not one for a new cache and one for a kept one)
        _, kv_heads, head_dim = kv_layout(self.model)
        cache.early_initialization(rows, kv_heads, head_dim, next(self.model.parameters()).dtype, self.device)
        self._static_caches[key] = cache
        return cache

    def kept_cache_bytes(self) -> int:
        """Bytes of the static caches kept for reuse (by their size, allocated or not yet)."""
        return sum(self.cache_bytes(rows, length) for rows, length in self._static_caches)

    def _bucket_rows(self, rows: int, fit: int | None = None) -> int:
        return bucket_rows(rows, self.min_rows, self.options.max_batch_size, fit)

    # ------------------------------------------------------------------ decode
    def _sampler(self) -> Any:
        """``sample_next``, compiled (fused kernels) when the engine compiles."""
        if not self.compile:
            return sample_next
        if self._compiled_sample is None:
            import torch

            self._compiled_sample = torch.compile(sample_next, backend=self.options.compile_backend, dynamic=False)
        return self._compiled_sample

    @property
    def compile_mode(self) -> str | None:
        """The ``torch.compile`` mode of the decode step: ``compile_mode``, else ``reduce-overhead``
        (CUDA graphs) with inductor on CUDA, else inductor's default (None)."""
        if self.options.compile_mode is not None:
            return self.options.compile_mode
        cuda_graphs = self.device.type == "cuda" and self.options.compile_backend == "inductor"
        return "reduce-overhead" if cuda_graphs else None

    def _decode(self, batch: _Batch, cache: Any, token: torch.Tensor, position: torch.Tensor, step: int) -> torch.Tensor:
        """One decode step for all rows; returns the next logits ``[rows, vocab]``."""
        import torch

        if not self.static:
            return self._forward(
                token[:, None], position[:, None], batch.mask[:, : batch.width + step + 1], cache, batch.width + step,
                prompt=False,
            )
        step_fn: Any = _static_decode_step
        if self.compile:
            if self._compiled_step is None:
                raise_recompile_limit()  # one graph per (batch bucket, cache length bucket)
                self._compiled_step = torch.compile(
                    _static_decode_step,
                    backend=self.options.compile_backend,
                    mode=self.compile_mode,
                    dynamic=False,
                )
            step_fn = self._compiled_step
            torch.compiler.cudagraph_mark_step_begin()
        kwargs: dict[str, Any] = {}
        if self._wants_cache_position:
            at = batch.width + step
            kwargs["cache_position"] = torch.arange(at, at + 1, device=self.device)
        logits = step_fn(self.model, self._cache_arg, cache, token[:, None], position[:, None], batch.mask, kwargs)
        self.stats.forward_passes += 1
        return logits.clone()


def compiles(options: EngineOptions, device_type: str) -> bool:
    """Whether an engine with ``options`` on a ``device_type`` device compiles its decode step
    (``compile``; None: on CUDA only)."""
    return options.compile if options.compile is not None else device_type == "cuda"


def row_seeds(requests: Sequence[Request], rows: int) -> torch.Tensor:
    """The int64 seed of each row: the request's own, else one drawn from torch's global
    generator (so ``torch.manual_seed`` makes unseeded runs repeat); rows past the requests
    (a static batch's padding) get 0."""
    import torch

    seeds = torch.zeros(rows, dtype=torch.long)
    unseeded = [row for row, request in enumerate(requests) if request.seed is None]
    if unseeded:
        seeds[unseeded] = torch.randint(-(2**62), 2**62, (len(unseeded),), dtype=torch.long)
    seeded = [(row, as_int64(request.seed)) for row, request in enumerate(requests) if request.seed is not None]
    if seeded:
        seeds[[row for row, _ in seeded]] = torch.tensor([value for _, value in seeded], dtype=torch.long)
    return seeds


def prompt_tokens_seen(batch: _Batch, vocab: int) -> torch.Tensor:
    """Bool ``[rows, vocab]``: the tokens of each row's prompt (the padding between prefix and
    suffix not counted), where the repetition penalty starts."""
    import torch

    prompt_mask = batch.mask[:, : batch.width].bool()
    # a padded slot points at the row's last prompt token (always its own), which is seen anyway
    index = torch.where(prompt_mask, batch.ids, batch.ids[:, -1:])
    seen = torch.zeros((batch.ids.shape[0], vocab), dtype=torch.bool, device=batch.ids.device)
    return seen.scatter_(1, index, True)


def _copy_rows(target_cache: Any, source_cache: Any, index: torch.Tensor) -> None:
    """Write rows ``index`` of ``source_cache`` into the static ``target_cache``: a shared prefix
    (a dynamic cache, one row per adapter) into every row, or a static cache's live rows into a
    smaller one of the same length."""
    for target, source in zip(target_cache.layers, source_cache.layers, strict=True):
        keys = source.keys.index_select(0, index)  # the target was allocated when made (_static_cache)
        values = source.values.index_select(0, index)
        target.keys[:, :, : keys.shape[2]].copy_(keys)
        target.values[:, :, : values.shape[2]].copy_(values)
        if hasattr(target, "cumulative_length"):  # transformers >= 5.2x counts the filled length itself
            filled = getattr(source, "cumulative_length", None)  # a static layer's; a dynamic one is full
            if filled is None:
                target.cumulative_length.fill_(keys.shape[2])
            else:
                target.cumulative_length.copy_(filled)


def raise_recompile_limit() -> None:
    """Let dynamo keep up to 64 graphs of a compiled function instead of its default 8."""
    import torch

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))


def _last_logits(model: nn.Module, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, extra: dict[str, Any]) -> torch.Tensor:
    """The model's forward pass over ``ids`` (cache and cache positions in ``extra``); the last position's logits."""
    out = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, logits_to_keep=1, **extra)
    return out.logits[:, -1, :]


def _static_decode_step(
    model: nn.Module, cache_arg: str, cache: Any, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
    extra: dict[str, Any],
) -> torch.Tensor:
    """The compiled decode step: one token per row on a static cache, last-position logits.

    The logits stay in the model's dtype (the sampler computes in float32): the copy out of the
    CUDA graph's buffer is then half the size for a bf16 model.
    """
    return _last_logits(model, ids, positions, mask, {cache_arg: cache, **extra})


def kv_layout(model: nn.Module) -> tuple[int, int, int]:
    """``(layers, key/value heads, head size)`` of ``model``'s KV cache."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, kv_heads, head_dim


def kv_bytes_per_slot(model: nn.Module) -> int:
    """Bytes one token slot of one row takes in a static KV cache of ``model``: keys and values of
    every layer, in the model's dtype."""
    layers, kv_heads, head_dim = kv_layout(model)
    dtype = next(model.parameters()).dtype
    return 2 * layers * kv_heads * head_dim * dtype.itemsize


def bucket_rows(rows: int, min_rows: int, max_batch_size: int, fit: int | None = None) -> int:
    """Rows of the static cache (and compiled graph) a batch of ``rows`` runs in: a power of two of
    at least ``min_rows``, at most ``max_batch_size``, within the ``fit`` rows a byte budget holds."""
    size = 1
    while size < max(rows, min_rows):
        size *= 2
    size = max(rows, min(size, max_batch_size))
    if fit is not None and size > fit:  # no room for the padding rows: the smallest power of two that fits
        size = 1
        while size < rows:
            size *= 2
        size = size if size <= fit else rows
    return size


def default_min_rows(compile: bool, device: torch.device) -> int:
    """Fewest rows of a static-cache batch unless told: ``GPU_MIN_ROWS`` for CUDA graphs, else 1."""
    return GPU_MIN_ROWS if compile and device.type == "cuda" else 1


def auto_kv_budget(device: torch.device) -> int | None:
    """The default byte budget for static KV caches: on CUDA ``KV_CACHE_SHARE`` of the memory free now
    (free on the device plus what this process's allocator holds unused, e.g. after training)."""
    if device.type != "cuda":
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    held_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(KV_CACHE_SHARE * (free + held_unused))
