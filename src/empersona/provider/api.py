"""The inspect ``ModelAPI`` of the ``empersona/`` provider and the process-wide engines behind it.

Each inspect model (base or adapter) is one ``EmpersonaAPI``; all models on the same base share
one ``Served`` entry: the loaded ``Engine`` and the ``Batcher`` in front of it (``batcher.py``:
no fixed wait, where inspect's ``hf`` provider waits 2 s for quiet and polls every second).

Prompts are built like inspect's ``hf`` provider builds them: the tokenizer's chat template
with ``add_generation_prompt=True``, then the tokenizer's default call, so outputs compare
one to one. The tokenizer (and so the chat template) is the adapter folder's when it has one.

Sampling fields a call leaves unset (temperature, top_p, top_k) and the repetition penalty come
from the base model's ``generation_config.json`` by default (model arg ``generation_config``), as
``model.generate`` behind inspect's ``hf/`` provider and vLLM take them: a Qwen2.5-Instruct
model then samples at temperature 0.7, top-p 0.8, top-k 20 with repetition penalty 1.05 unless
the call says otherwise. The file's ``do_sample`` is not read (inspect's ``hf/`` sends its own,
true by default, and vLLM takes no such default): a call is greedy when it asks for temperature 0.
Fields the file does not set keep this provider's plain defaults (temperature 1, no top-p, no
top-k, no penalty; ``model.generate`` would add top-k 50). ``generation_config=false``
ignores the file: pure temperature sampling unless the call sets more.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from empersona.errors import EmpersonaError
from empersona.provider.batcher import Batcher
from empersona.provider.engine import CompileMode, Completion, Engine, EngineOptions, Request, compiles

if TYPE_CHECKING:
    from inspect_ai.model import ChatMessage, GenerateConfig, Logprobs, ModelOutput
    from inspect_ai.tool import ToolChoice, ToolInfo

from inspect_ai.model import GenerateConfig as _GenerateConfig
from inspect_ai.model import ModelAPI, modelapi

DEFAULT_MAX_TOKENS = 2048
PROMPT_CACHE_SIZE = 8192  # distinct prompts kept tokenised per model (the paper battery has ~1,000)
METASPACE = "\u2581"  # SentencePiece's mark of a word's start (a space)
CALLS_PER_BATCH_ROW = 2  # default max_connections per row of max_batch_size: one batch decoding, the next waiting


class ProviderArgs(BaseModel):
    """Model args of the ``empersona/`` provider (unknown keys are refused by name)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = None
    device: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_size: int = Field(256, ge=1)
    max_connections: int | None = Field(None, ge=1)
    prefix_reuse: bool = True
    min_prefix: int = 16
    compile: bool | None = None
    sync_every: int = 8
    freeze_gc: bool = True
    kv_cache_gib: float | None = Field(None, gt=0)
    min_batch_bucket: int | None = Field(None, ge=1)
    shrink_at: float | None = Field(None, ge=0, le=1)
    lora_dtype: Literal["model", "float32"] = "model"
    compile_prefill: bool = False
    compile_mode: CompileMode | None = None
    lora_merge: bool = True
    max_adapters: int = Field(16, ge=1)
    generation_config: bool = True


@dataclass(frozen=True)
class SamplingDefaults:
    """Sampling settings a model's ``generation_config.json`` sets (None: the file does not set it)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None


UNAPPLIED_FIELDS: dict[str, object] = {
    "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None, "no_repeat_ngram_size": 0,
    "min_length": 0, "min_new_tokens": 0, "suppress_tokens": None, "begin_suppress_tokens": None, "bad_words_ids": None,
    "sequence_bias": None, "encoder_repetition_penalty": 1.0, "exponential_decay_length_penalty": None, "num_beams": 1,
}  # fmt: skip
"""``generation_config.json`` fields that ``model.generate`` (and inspect's ``hf/``) applies and this
provider does not, each with the value that does nothing: a file setting another is warned about."""


def sampling_defaults(base: str) -> SamplingDefaults:
    """The sampling settings of ``base``'s generation config (none when it has no such file); a
    setting it holds that this provider does not apply (`UNAPPLIED_FIELDS`) is warned about."""
    from transformers import GenerationConfig

    file = Path(base) / "generation_config.json"
    try:
        config = GenerationConfig.from_pretrained(base)
    except OSError as exc:
        if file.exists():
            raise EmpersonaError(f"{file}: cannot be read ({exc}); fix the file or remove it") from exc
        return SamplingDefaults()
    defaults = SamplingDefaults(
        temperature=None if config.temperature is None else float(config.temperature),
        top_p=None if config.top_p is None else float(config.top_p),
        top_k=None if config.top_k is None else int(config.top_k),
        repetition_penalty=None if config.repetition_penalty is None else float(config.repetition_penalty),
    )
    problems = {
        "temperature": defaults.temperature is not None and defaults.temperature < 0,
        "top_p": defaults.top_p is not None and not 0 < defaults.top_p <= 1,
        "top_k": defaults.top_k is not None and defaults.top_k < 0,
        "repetition_penalty": defaults.repetition_penalty is not None and defaults.repetition_penalty <= 0,
    }
    for field, bad in problems.items():
        if bad:
            raise EmpersonaError(
                f"{file}: field '{field}' is {getattr(defaults, field)}, out of range; correct it, "
                "or pass the model arg generation_config=false to ignore the file"
            )
    unapplied = [f"{name}={value!r}" for name, idle in UNAPPLIED_FIELDS.items()
                 if (value := getattr(config, name, None)) is not None and value != idle and value != []]
    if unapplied:
        import warnings

        warnings.warn(f"{file}: {', '.join(unapplied)}: model.generate (and hf/) would apply this; empersona/ samples "
                      "without it (it applies temperature, top_p, top_k and repetition_penalty only)", stacklevel=2)
    return defaults


@dataclass(frozen=True)
class ModelRef:
    """Where a model string points: the base folder and, for a fine-tune, its adapter folder."""

    base: str
    adapter: Path | None


def resolve_model(name: str, adapter: str | None) -> ModelRef:
    """Resolve ``empersona/<name>`` (+ ``adapter=``) to base and adapter folders."""
    import json

    path = Path(name).expanduser()
    if (path / "adapter_config.json").exists():
        if adapter is not None:
            raise EmpersonaError(
                f"empersona/{name}: is an adapter folder and the model arg adapter={adapter} names another; "
                "give the base folder with adapter=..., or the adapter folder alone"
            )
        config_file = path / "adapter_config.json"
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise EmpersonaError(
                f"{config_file}: field 'base_model_name_or_path' is empty; "
                "set it to the base model folder, or pass the base as empersona/<base> with adapter=<this folder>"
            )
        base_path = Path(base).expanduser()
        if not base_path.is_absolute() and (path / base_path).exists():
            base_path = path / base_path
        if base_path.is_absolute() and not base_path.exists():
            base_path = _moved_base(path, base_path, config_file)
        return ModelRef(base=_canonical(base_path, str(base)), adapter=path.resolve())
    if adapter is not None:
        adapter_path = Path(adapter).expanduser()
        if not (adapter_path / "adapter_config.json").exists():
            raise EmpersonaError(
                f"{adapter_path}: model arg 'adapter' has no adapter_config.json; pass a PEFT LoRA adapter folder"
            )
        _check_named_base(path, adapter_path)
        return ModelRef(base=_canonical(path, name), adapter=adapter_path.resolve())
    return ModelRef(base=_canonical(path, name), adapter=None)


def _check_named_base(base: Path, adapter: Path) -> None:
    """Refuse an adapter served on a base other than the one it was trained on: when both its
    recorded base and the named one are local folders, they must be the same folder or copies
    of it (same config and weight files). Layer shapes alone would let a different model of the
    same architecture through, with wrong answers and no error. A recorded hub id cannot be
    compared: a named base whose path does not contain the hub model's name is warned about."""
    import json

    config_file = adapter / "adapter_config.json"
    recorded = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not recorded or not base.is_dir():
        return
    trained_on = Path(recorded).expanduser()
    if not trained_on.is_absolute():
        trained_on = adapter / trained_on
    if not trained_on.is_dir():  # a hub id (or a folder gone): its files are not here to compare
        hub_name = str(recorded).rstrip("/").rsplit("/", 1)[-1]
        if hub_name not in str(base.resolve()):  # a local copy of a hub model usually keeps its name
            import warnings

            warnings.warn(f"{config_file}: the adapter was trained on {recorded}; empersona/{base} does not look like "
                          "that model (its path does not name it). Make sure it is, or the answers are another model's",
                          UserWarning, stacklevel=2)
        return
    if trained_on.resolve() == base.resolve():
        return
    if folder_fingerprint(trained_on) != folder_fingerprint(base):
        raise EmpersonaError(
            f"{config_file}: field 'base_model_name_or_path' says the adapter was trained on {recorded}, "
            f"and empersona/{base} is another model; serve it as empersona/{adapter} (its own base), "
            "or name that base"
        )


def folder_fingerprint(folder: Path) -> tuple[object, ...]:
    """What tells two model folders apart cheaply: the config (its own path left out) and each
    weight file's name, size and first MiB."""
    import hashlib
    import json

    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    config.pop("_name_or_path", None)
    weights = []
    for file in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]):
        with file.open("rb") as handle:
            weights.append((file.name, file.stat().st_size, hashlib.sha256(handle.read(2**20)).hexdigest()))
    return (json.dumps(config, sort_keys=True), tuple(weights))


def _moved_base(adapter: Path, base: Path, config_file: Path) -> Path:
    """The base of an adapter whose recorded base folder is gone: where the moves of the run
    folder the adapter was trained in took it (``empersona.json`` records that folder and the
    base it trained on), if it is there."""
    from empersona.moved import FolderMove, run_folder_of
    from empersona.train.metadata import recorded_place

    place = recorded_place(adapter)
    if place is not None:
        trained_in, trained_on = place
        move = FolderMove.between(run_folder_of(trained_in), run_folder_of(adapter.resolve()))
        for candidate in (trained_on, str(base)):
            moved = Path(move.path(candidate)) if move else Path(candidate)
            if moved.exists():
                return moved
    raise EmpersonaError(
        f"{config_file}: field 'base_model_name_or_path' names {base}, which does not exist (moved?); "
        "set it to the base model folder, or pass the base as empersona/<base> with adapter=<this folder>"
    )


def _canonical(path: Path, name: str) -> str:
    """A local folder by its absolute path; anything else (a hub id) as given."""
    return str(path.resolve()) if path.exists() else name


# ---------------------------------------------------------------------- shared engines
@dataclass(frozen=True)
class EngineKey:
    """What makes two models share one loaded base: folder, device, dtype and engine options."""

    base: str
    device: str
    dtype: str
    options: EngineOptions


@dataclass
class Served:
    """A loaded engine and the batcher in front of it."""

    engine: Engine
    batcher: Batcher
    defaults: SamplingDefaults  # the base's generation_config.json sampling settings, read at load


_SERVED: dict[EngineKey, Served] = {}
_SERVED_LOCK = threading.Lock()


def served(key: EngineKey, freeze_gc: bool = True) -> Served:
    """The process-wide engine for ``key``, loading the base model on first use only.

    Process-wide on purpose: inspect builds one ``ModelAPI`` per model string, and the base
    and its adapters must share the base weights.

    ``freeze_gc``: after a load, move every object alive into the collector's permanent
    generation. The libraries and the model are long-lived; left in the oldest generation, each
    full collection rescans them (about half a million objects: ~0.35 s per full collection on 2
    CPU cores, one every few hundred requests; `bench/provider_overhead.py`). Reference counting
    still frees frozen objects; only cycles among them are no longer collected, so a full
    collection runs first (nothing that is garbage gets frozen), and only when a base is loaded,
    not for every model (a study's earlier logs are not frozen with it).
    """
    with _SERVED_LOCK:
        entry = _SERVED.get(key)
        if entry is None:
            engine = Engine(_load_base(key), key.options)
            batcher = Batcher(engine, max_round=key.options.max_batch_size)
            entry = Served(engine=engine, batcher=batcher, defaults=sampling_defaults(key.base))
            _SERVED[key] = entry
            if freeze_gc:
                gc.collect()
                gc.freeze()
        return entry


def release_engines() -> None:
    """Drop every loaded engine (frees the base weights once no model refers to them).

    Objects frozen on load (``served``) are handed back to the collector first, so a model kept
    alive only by reference cycles is collected too.
    """
    with _SERVED_LOCK:
        _SERVED.clear()
    gc.unfreeze()
    gc.collect()


def _load_base(key: EngineKey) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[key.dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(key.base, dtype=dtype)
    except OSError as exc:
        raise EmpersonaError(
            f"empersona/{key.base}: cannot load the base model ({exc}); pass a local model folder"
        ) from exc
    return model.to(key.device)


def context_length(config: Any) -> int | None:
    """The most positions a model takes (prompt and new tokens), from its config; None if it names none."""
    for field in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _device_and_dtype(args: ProviderArgs) -> tuple[str, str]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


# ---------------------------------------------------------------------- the model API
class EmpersonaAPI(ModelAPI):
    """One inspect model: a base model or one adapter of it, served by the shared engine."""

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = _GenerateConfig(),
        **model_args: Any,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        from transformers import AutoTokenizer

        try:
            args = ProviderArgs(**model_args)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise EmpersonaError(
                f"empersona/{model_name}: bad model args ({problems}); "
                f"known args: {', '.join(ProviderArgs.model_fields)}"
            ) from exc
        self.args = args
        if config.max_connections is None and config.adaptive_connections is None:
            # inspect's default adaptive concurrency starts at 20 concurrent calls, which would cap
            # every batch at 20: ask for static concurrency of two batches instead (this is the
            # model's own config object, so inspect's connection pool sees it)
            config.max_connections = self.max_connections()
        self.ref = resolve_model(model_name, args.adapter)
        device, dtype = _device_and_dtype(args)
        options = EngineOptions(
            max_batch_size=args.max_batch_size,
            prefix_reuse=args.prefix_reuse,
            min_prefix=args.min_prefix,
            compile=args.compile,
            sync_every=args.sync_every,
            kv_cache_bytes=None if args.kv_cache_gib is None else int(args.kv_cache_gib * 2**30),
            min_batch_bucket=args.min_batch_bucket,
            shrink_at=args.shrink_at,
            lora_dtype=args.lora_dtype,
            compile_prefill=args.compile_prefill,
            compile_mode=args.compile_mode,
            lora_merge=args.lora_merge,
            max_adapters=args.max_adapters,
        )
        if not compiles(options, device.split(":")[0]):
            # read only where the step is compiled: elsewhere it would only make a second engine key
            options = replace(options, compile_mode=None)
        self.served = served(EngineKey(base=self.ref.base, device=device, dtype=dtype, options=options), args.freeze_gc)
        self.adapter_key = self.served.engine.add_adapter(self.ref.adapter) if self.ref.adapter else None
        self.defaults = self.served.defaults if args.generation_config else SamplingDefaults()
        tokenizer_dir = self.ref.adapter if self.ref.adapter and (self.ref.adapter / "tokenizer_config.json").exists() else self.ref.base
        self.tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.context_length = context_length(self.served.engine.model.config)
        # a battery asks each prompt many times (epochs, samples): render and tokenise it once
        self._prompt_ids: OrderedDict[tuple[tuple[str, str], ...], tuple[int, ...]] = OrderedDict()

    def max_tokens(self) -> int | None:
        return DEFAULT_MAX_TOKENS

    def max_connections(self) -> int:
        """Concurrent calls, and inspect's samples in flight unless an eval sets ``max_samples``:
        ``max_connections``, else ``CALLS_PER_BATCH_ROW`` x ``max_batch_size``. A round takes the
        oldest pending requests, up to one batch's worth, and runs until its longest answer ends.
        With only one batch's worth of calls allowed, the next samples' calls arrive one by one
        after a round returns (inspect sets each sample up in turn on its event loop), and the
        round that starts first holds the few that came first, for as many steps as a full one;
        with two batches' worth, the next round's requests are already waiting when a round ends."""
        return self.args.max_connections or CALLS_PER_BATCH_ROW * self.args.max_batch_size

    def collapse_user_messages(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to close per model: the base weights are shared (see ``release_engines``)."""

    def prompt(self, messages: list[ChatMessage]) -> str:
        """The chat-templated prompt text, as inspect's ``hf`` provider renders it (a tokenizer
        without a chat template: one ``role: text`` line per message, as ``hf`` does then)."""
        if not self.tokenizer.chat_template:
            return "".join(f"{m.role}: {m.text}\n" for m in messages)
        chat = [{"role": m.role, "content": m.text} for m in messages]
        return str(self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))

    def prompt_ids(self, messages: list[ChatMessage]) -> tuple[int, ...]:
        """The prompt's token ids, from a bounded cache keyed by the messages' roles and texts.
        Content other than text (an image, audio, a document) is refused: it would be left out."""
        for message in messages:
            other = sorted({c.type for c in message.content if c.type not in ("text", "reasoning")}
                           if isinstance(message.content, list) else ())
            if other:
                raise EmpersonaError(f"empersona/{self.model_name}: {', '.join(other)} content in a {message.role} message: "
                                     "this provider reads text only. Use an hf/ or API model for it")
        key = tuple((m.role, m.text) for m in messages)
        ids = self._prompt_ids.get(key)
        if ids is None:
            ids = tuple(self.tokenizer(self.prompt(messages))["input_ids"])
            self._prompt_ids[key] = ids
            while len(self._prompt_ids) > PROMPT_CACHE_SIZE:
                self._prompt_ids.popitem(last=False)
        else:
            self._prompt_ids.move_to_end(key)
        return ids

    def request(self, messages: list[ChatMessage], config: GenerateConfig, choice: int = 0) -> Request:
        """Turn an inspect generate call into an engine request (``choice``: which of ``num_choices``).

        New tokens stop at the model's context length (``context_length``): a prompt that fills
        it is refused with the lengths named, rather than generating past the positions the
        model was trained on. Choice ``i`` of a seeded call draws with ``seed + i``. Sampling
        fields the call leaves None come from ``self.defaults`` (the model's generation config,
        unless ``generation_config=false``), else temperature 1, no top-p, no top-k, no penalty.
        """
        prompt = self.prompt_ids(messages)
        if config.max_tokens is not None and config.max_tokens < 1:
            raise EmpersonaError(f"empersona/{self.model_name}: max_tokens={config.max_tokens}; ask for at least 1 new token")
        max_new = config.max_tokens or DEFAULT_MAX_TOKENS
        if self.context_length is not None:
            room = self.context_length - len(prompt)
            if room <= 0:
                raise EmpersonaError(
                    f"empersona/{self.model_name}: the prompt is {len(prompt)} tokens and the model's context "
                    f"is {self.context_length} positions (its config.json); shorten the prompt"
                )
            max_new = min(max_new, room)
        defaults = self.defaults
        if config.temperature is not None:
            temperature = float(config.temperature)
        else:
            temperature = 1.0 if defaults.temperature is None else defaults.temperature
        top_p = config.top_p if config.top_p is not None else defaults.top_p
        top_k = config.top_k if config.top_k is not None else defaults.top_k
        return Request(
            prompt=prompt,
            max_new_tokens=max_new,
            temperature=temperature,
            top_p=1.0 if top_p is None else float(top_p),
            top_k=top_k or 0,
            adapter=self.adapter_key,
            top_logprobs=(config.top_logprobs or 1) if config.logprobs else None,
            seed=None if config.seed is None else config.seed + choice,
            repetition_penalty=1.0 if defaults.repetition_penalty is None else defaults.repetition_penalty,
        )

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        from inspect_ai.model import ChatCompletionChoice, ChatMessageAssistant, ModelOutput, ModelUsage

        if tools:
            raise EmpersonaError(f"empersona/{self.model_name}: tool calls are not supported by this provider")
        start = time.monotonic()
        requests = [self.request(input, config, choice) for choice in range(max(1, config.num_choices or 1))]
        # the choices go to the batcher together: one batch, the prompt's cache shared where it helps
        completions = await asyncio.gather(*(self.served.batcher.submit(request) for request in requests))
        choices = []
        output_tokens = 0
        for request, completion in zip(requests, completions, strict=True):
            stop_reason = completion.stop_reason
            if stop_reason == "max_tokens" and request.max_new_tokens < (config.max_tokens or DEFAULT_MAX_TOKENS):
                stop_reason = "model_length"  # cut by the context length, not by max_tokens
            stopped = self.at_stop_seq(completion, config.stop_seqs or [])
            if stopped is not None:
                completion, text = stopped
                stop_reason = "stop"
            else:
                text = self.decode(completion.tokens)
            # the EOS token that ended an answer is generated (and has a logprob) too, as hf/ counts it
            output_tokens += len(completion.tokens) + (stopped is None and completion.stop_reason == "stop")
            choices.append(
                ChatCompletionChoice(
                    message=ChatMessageAssistant(content=text, model=self.model_name, source="generate"),
                    stop_reason=stop_reason,
                    logprobs=self.logprobs(completion),
                )
            )
        prompt_tokens = completions[0].prompt_tokens
        return ModelOutput(
            model=self.model_name,
            choices=choices,
            usage=ModelUsage(
                input_tokens=prompt_tokens,
                output_tokens=output_tokens,
                total_tokens=prompt_tokens + output_tokens,
            ),
            time=time.monotonic() - start,
        )

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def at_stop_seq(self, completion: Completion, stops: Sequence[str]) -> tuple[Completion, str] | None:
        """A completion that contains a stop sequence, cut at the earliest one: the text before
        it, and the tokens up to the one that completes it (as ``hf/`` stops there; their
        logprobs and count stay consistent with what was generated up to the stop). None when
        no stop sequence occurs."""
        text = self.decode(completion.tokens)
        found = [(at, stop) for stop in stops if stop and (at := text.find(stop)) >= 0]
        if not found:
            return None
        at, stop = min(found)
        low, high = 1, len(completion.tokens)  # the fewest tokens whose text holds the stop sequence
        while low < high:
            middle = (low + high) // 2
            if self.decode(completion.tokens[:middle]).find(stop) >= 0:
                high = middle
            else:
                low = middle + 1
        logprobs = completion.logprobs[:low] if completion.logprobs is not None else None
        return replace(completion, tokens=completion.tokens[:low], logprobs=logprobs), text[:at]

    def token_text(self, token: int) -> str:
        """A token as the text it stands for (``Ġ10`` -> `` 10``, ``▁Yes`` -> `` Yes``), as
        top_logprobs report it; a piece of a character (a byte-level token of an emoji) reads "\ufffd"."""
        return self.token_piece(token)[0]

    def token_piece(self, token: int) -> tuple[str, list[int]]:
        """A token's text and the bytes it stands for (`token_text`; the bytes of a part of a
        character are that part, so a completion's token bytes join into its UTF-8 text)."""
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if piece is None:
            return "", []
        piece = str(piece)
        to_byte = self._byte_decoder
        if to_byte is not None and all(char in to_byte for char in piece):  # byte-level BPE (Qwen, Llama 3)
            raw = bytes(to_byte[char] for char in piece)
            return raw.decode("utf-8", errors="replace"), list(raw)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece's byte fallback
            try:
                raw = bytes([int(piece[3:5], 16)])
            except ValueError:
                raw = piece.encode("utf-8")
            return raw.decode("utf-8", errors="replace"), list(raw)
        # SentencePiece's word-start mark is a space (its decoder drops it at the start of a text)
        text = piece.replace(METASPACE, " ") if METASPACE in piece else str(self.tokenizer.convert_tokens_to_string([piece]))
        return text, list(text.encode("utf-8"))

    @cached_property
    def _byte_decoder(self) -> dict[str, int] | None:
        """The byte each character of a byte-level BPE piece stands for (GPT-2's table), for a
        tokenizer that decodes byte-level; None for others (SentencePiece, WordPiece)."""
        decoder = getattr(getattr(self.tokenizer, "backend_tokenizer", None), "decoder", None)
        return byte_level_table() if type(decoder).__name__ == "ByteLevel" else None

    def logprobs(self, completion: Completion) -> Logprobs | None:
        """Inspect ``Logprobs`` for every generated token: the token taken and the top alternatives."""
        from inspect_ai.model import Logprob, Logprobs, TopLogprob

        if completion.logprobs is None:
            return None
        content = []
        for item in completion.logprobs:
            text, raw = self.token_piece(item.token)
            top = [TopLogprob(token=t, logprob=lp, bytes=b) for tid, lp in item.top for t, b in [self.token_piece(tid)]]
            content.append(Logprob(token=text, logprob=item.logprob, bytes=raw, top_logprobs=top))
        return Logprobs(content=content)


def byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character to byte: the printable Latin-1 bytes stand for
    themselves, the other 68 bytes for U+0100 onwards in byte order (``Ġ``, U+0120: a space)."""
    shown = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(byte): byte for byte in shown}
    hidden = [byte for byte in range(256) if chr(byte) not in table]
    table.update({chr(0x100 + i): byte for i, byte in enumerate(hidden)})
    return table


@modelapi(name="empersona")
def empersona() -> type[ModelAPI]:
    """The ``empersona/`` model API (registered with inspect when this module is imported)."""
    return EmpersonaAPI
