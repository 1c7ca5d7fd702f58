"""Models a study evaluates beside its base and its own fine-tunes: the study file's ``models:``.

A study can take in fine-tunes it did not make, so that the battery, the persona table and the
report put them beside its own: a published emergent-misalignment model organism, an adapter from
another project, a model behind an API. Two kinds of entry:

- ``adapter: DIR``: a LoRA adapter folder of the study's base model. It is served like the
  study's own fine-tunes (one loaded base for ``provider: empersona``, one vLLM server for
  ``provider: vllm``). The run folder gets a view of it, ``<out>/models/<name>/``: the adapter's
  files linked (never copied or changed), its ``adapter_config.json`` written with the study's
  base as ``base_model_name_or_path`` (a published adapter names the hub id it was trained on, or
  a folder on its authors' machine) and, when the adapter folder carries no tokenizer, the
  base's. An adapter whose recorded base is plainly another model (another local folder with
  other weights, a hub id of another model name, matrices that fit no layer of the base) is
  refused before anything runs; one whose recorded base cannot be compared (a hub id beside a
  local base, the same name from another publisher) is warned about.
- ``model: <provider>/<model>``: any inspect model string (a full fine-tune, an API model), asked
  as given with its own ``model_args``.

Either is classified against the study's base (delta harm against the base's harm), and
``domain`` says what it was fine-tuned on (a label for the report). An adapter's identity (what
scopes its cached calls and marks its logs) is a fingerprint of its files and of the base it is
served on, a ``model:`` entry's of its local folder (if it names one) and its answering model
args (``model_string_identity``): an adapter replaced in place, or served on another base, is
evaluated again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empersona.redact import without_secrets

if TYPE_CHECKING:
    from empersona.study.config import StudyConfig

EXTRA_DIR = "models"
"""Where the views of a study's extra adapters lie in its run folder."""
ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")
"""Files of a model folder that make up its tokenizer (and chat template)."""


def view_dir(study: StudyConfig, name: str) -> Path:
    """The run folder's view of extra adapter ``name`` (what its model string names)."""
    return study.out / EXTRA_DIR / name


def adapter_fingerprint(folder: Path) -> str:
    """Which adapter a folder holds: its ``adapter_config.json`` (the recorded base left out: that
    changes with where the base lies, not with the adapter), its ``empersona.json``, tokenizer and
    chat template files if any, and each weight file's name, size and first MiB (reading all of
    it would cost seconds per run)."""
    digest = hashlib.sha256(b"adapter\n")
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config.pop("base_model_name_or_path", None)
    for key, value in config.items():  # PEFT saves sets (target_modules) as lists in no fixed order
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            config[key] = sorted(value)
    digest.update(json.dumps(config, sort_keys=True).encode())
    for extra in ("empersona.json", *TOKENIZER_FILES):  # the tokenizer and chat template its view serves
        if (folder / extra).is_file():
            digest.update(f"{extra}:".encode() + hashlib.sha256((folder / extra).read_bytes()).digest())
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            with path.open("rb") as handle:
                head = hashlib.sha256(handle.read(2**20)).hexdigest()
            digest.update(f"{path.name}:{path.stat().st_size}:{head}\n".encode())
    return digest.hexdigest()[:16]


def local_model_identity(model: str) -> str | None:
    """The identity of an extra model string that names a local folder (``hf/DIR``,
    ``empersona/DIR``, ``vllm/DIR``): its files (``adapter_fingerprint`` for an adapter folder,
    else the config and each weight file's name, size and first MiB), so other weights put in
    the same folder are evaluated again. None for anything else (a hub id, an API model)."""
    _provider, _, rest = model.partition("/")
    folder = Path(rest).expanduser()
    if not rest or not folder.is_dir():
        return None
    if (folder / ADAPTER_CONFIG).is_file():  # the adapter, and the base it names (another base, other answers)
        recorded = str(json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path") or "")
        base = Path(recorded).expanduser()
        base_id = model_folder_identity(base) if recorded and base.is_dir() else f"hub:{recorded}"
        return hashlib.sha256(f"{adapter_fingerprint(folder)} on {base_id}".encode()).hexdigest()[:16]
    return model_folder_identity(folder)


PLACEMENT_ARGS = frozenset({
    "device", "device_map", "max_connections", "batch_size", "max_batch_size", "gpu_memory_utilization",
    "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "port", "host", "timeout",
    "client_timeout", "max_retries",
})
"""Model args that say where and how fast a model runs, not what it answers: left out of its identity."""


def answering_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """Model args as far as they say what a model answers: without credentials (they say who pays:
    a rotated key, or one moved to the environment, keeps the identity, and with it the logs and
    the call cache) and without ``PLACEMENT_ARGS``."""
    return {key: value for key, value in without_secrets(model_args).items() if key not in PLACEMENT_ARGS}


def model_string_identity(model: str, model_args: dict[str, object]) -> str | None:
    """The identity of an extra ``model:`` entry: its local folder's (``local_model_identity``) and
    its model args but those of ``PLACEMENT_ARGS`` (a revision, a dtype, another tokenizer: other
    answers; credentials left out); None for a bare remote model string, known by the string alone."""
    folder = local_model_identity(model)
    answering = answering_args(model_args)
    if folder is None and not answering:
        return None
    text = f"{folder}|{json.dumps(answering, sort_keys=True, default=str)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_folder_identity(folder: Path) -> str:
    """A model folder's files: config, generation config, tokenizer and chat template, and each
    weight file's name, size and first MiB (``provider.api.folder_fingerprint``)."""
    from empersona.provider.api import folder_fingerprint

    digest = hashlib.sha256(repr(folder_fingerprint(folder)).encode())
    for name in ("generation_config.json", *TOKENIZER_FILES):
        if (folder / name).is_file():
            digest.update(f"{name}:".encode() + hashlib.sha256((folder / name).read_bytes()).digest())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BaseCheck:
    """Whether an extra adapter may be served on the study's base: a refusal, a warning, or neither."""

    problem: str | None = None
    warning: str | None = None


def check_base(study: StudyConfig, name: str, folder: Path) -> BaseCheck:
    """Compare the base an adapter records (``base_model_name_or_path``) with the study's base.

    Refused when they are plainly different models: two local folders whose config or weight
    files differ, two hub ids of different model names, or LoRA matrices that fit no layer of a
    local base. Warned about a hub id of the same name from another publisher (unsloth/..., a
    mirror), and when they cannot be compared (a hub id against a local folder, a recorded folder
    that is gone) and the folder's path does not name the hub model. The same model, or a copy
    of it, passes.
    """
    from empersona.provider.api import folder_fingerprint
    from empersona.study.plan import base_path

    recorded = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    base = base_path(study)
    misfit = shape_problem(folder, Path(base))
    if misfit:
        return BaseCheck(problem=misfit)
    if not recorded:
        return BaseCheck(warning=f"models.{name}: {folder / ADAPTER_CONFIG} names no base model; it is served on "
                                 f"the study's base {study.base_model}")
    trained_on = Path(str(recorded)).expanduser()
    if not trained_on.is_absolute() and (folder / trained_on).is_dir():
        trained_on = folder / trained_on
    base_local = Path(base).is_dir()
    if trained_on.is_dir() and base_local:
        if trained_on.resolve() == Path(base).resolve() or folder_fingerprint(trained_on) == folder_fingerprint(Path(base)):
            return BaseCheck()
        return BaseCheck(problem=f"the adapter was trained on {recorded}, another model than base_model {study.base_model} "
                                 "(their config or weight files differ)")
    recorded_name = str(recorded).rstrip("/").rsplit("/", 1)[-1].casefold()
    base_name = base.rstrip("/").rsplit("/", 1)[-1].casefold()
    if not trained_on.is_dir() and not base_local and not str(recorded).startswith(("/", ".", "~")):
        if str(recorded).strip("/").casefold() == base.strip("/").casefold():
            return BaseCheck()
        if recorded_name == base_name:  # another publisher's copy (unsloth/..., a mirror): the same name
            return BaseCheck(warning=f"models.{name}: the adapter was trained on {recorded}, and base_model is "
                                     f"{study.base_model}: the same model name from another publisher; make sure "
                                     "their weights are the same")
        return BaseCheck(problem=f"the adapter was trained on {recorded}, and base_model is {study.base_model}")
    # one side cannot be read here: a local copy of a hub model usually keeps its name (exactly:
    # Qwen2.5-7B is not Qwen2.5-7B-Instruct, and a parent folder's name says nothing)
    if recorded_name == base_name:
        return BaseCheck()
    return BaseCheck(warning=f"models.{name}: the adapter was trained on {recorded}, and the study's base "
                             f"{study.base_model} does not look like that model (its name differs); make sure it is, "
                             "or its answers are another model's")


VIEW_MARKER = ".empersona-view"
"""A file in every view folder: what marks a folder of ``models/`` as one empersona may replace."""


def lora_shapes(folder: Path) -> dict[str, list[int]]:
    """The shapes of an adapter's LoRA matrices, from its safetensors header (nothing else is
    read); empty when the weights are not in ``adapter_model.safetensors``."""
    import struct

    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        return {}
    with path.open("rb") as handle:
        start = handle.read(8)
        (length,) = struct.unpack("<Q", start) if len(start) == 8 else (0,)
        if not 0 < length <= min(path.stat().st_size - 8, 2**27):  # not a safetensors file: its loader will say
            return {}
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            return {}
    if not isinstance(header, dict):
        return {}
    return {key: value["shape"] for key, value in header.items()
            if isinstance(value, dict) and ("lora_A" in key or "lora_B" in key) and "shape" in value}


def shape_problem(folder: Path, base: Path) -> str | None:
    """Why an adapter's matrices cannot fit a local base's layers (a model of another size), or
    None: every LoRA A matrix must read, and every B matrix write, one of the widths the base's
    ``config.json`` gives its projections (hidden, intermediate, attention and key/value heads,
    vocabulary)."""
    config_file = base / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError:  # the base's own loading names a broken config
        return None
    if not isinstance(config, dict):
        return None
    config = config.get("text_config", config)  # multimodal configs keep the language model's apart
    hidden = config.get("hidden_size")
    if not isinstance(hidden, int):
        return None
    heads = config.get("num_attention_heads") or 1
    head_dim = config.get("head_dim") or hidden // heads
    widths = {hidden, config.get("intermediate_size"), heads * head_dim,
              (config.get("num_key_value_heads") or heads) * head_dim, config.get("vocab_size")}
    for key, shape in sorted(lora_shapes(folder).items()):
        width = shape[1] if "lora_A" in key else shape[0]
        if len(shape) == 2 and width not in widths:
            return (f"the adapter's {key} has width {width}, which no layer of base_model {base} has "
                    f"(hidden {hidden}, intermediate {config.get('intermediate_size')}): it was made for a model of "
                    "another size")
    return None


def build_views(study: StudyConfig) -> list[Path]:
    """(Re)build the view of every extra adapter in the run folder; returns the view folders.

    Built anew on every run from the adapter's files as they are now, in a folder beside the old
    view that then replaces it, so a run killed here leaves a complete view or none. Views of
    adapters no longer in the study are removed (they hold links and a config, nothing else);
    a folder in ``models/`` that is not a view is never replaced or removed.
    """
    from empersona.errors import EmpersonaError

    views = []
    for name, entry in study.models.items():
        if entry.adapter is None:
            continue
        view = view_dir(study, name)
        if view.exists() and not (view / VIEW_MARKER).is_file():
            raise EmpersonaError(f"{view} is in the way of the view of models.{name}: it is not a view empersona made "
                                 "(it may hold files of yours). Move it out of the run folder's models/")
        views.append(_build_view(study, entry.adapter, view))
    folder = study.out / EXTRA_DIR
    if folder.is_dir():
        for stale in folder.iterdir():
            if stale.name not in study.models and stale.is_dir() and (stale / VIEW_MARKER).is_file():
                shutil.rmtree(stale)  # links and the rewritten config only
    return views


def _build_view(study: StudyConfig, source: Path, view: Path) -> Path:
    from empersona.study.plan import base_path

    staging = view.with_name(f".{view.name}.building")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    source = source.resolve()
    for path in sorted(source.iterdir()):
        if path.name != ADAPTER_CONFIG:
            (staging / path.name).symlink_to(path)
    config = json.loads((source / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_path(study)
    (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if not (source / "tokenizer_config.json").is_file():
        _add_base_tokenizer(base_path(study), staging)
    (staging / VIEW_MARKER).write_text(f"a view of {source} made by empersona run; rebuilt on each run\n", encoding="utf-8")
    if view.exists():
        old = view.with_name(f".{view.name}.old")
        if old.exists():
            shutil.rmtree(old)
        view.rename(old)
        staging.rename(view)
        shutil.rmtree(old)  # links and the rewritten config only: the adapter's files stay where they are
    else:
        staging.rename(view)
    return view


def _add_base_tokenizer(base: str, view: Path) -> None:
    """Give an adapter view without a tokenizer the base's (inspect's ``hf/`` loads the tokenizer
    from the folder its model string names): links to a local base's files, or a hub base's
    tokenizer saved into the view."""
    local = Path(base)
    if local.is_dir():
        for name in TOKENIZER_FILES:
            if (local / name).is_file() and not (view / name).exists():  # the adapter's own files win
                (view / name).symlink_to((local / name).resolve())
        return
    from transformers import AutoTokenizer

    from empersona.errors import EmpersonaError

    try:
        AutoTokenizer.from_pretrained(base).save_pretrained(str(view))
    except (OSError, ValueError) as err:  # not downloadable here (offline, a gated model without a token)
        raise EmpersonaError(f"{view.name}: the adapter has no tokenizer and the base's ({base}) could not be loaded "
                             f"({err}); download the base first, or put its tokenizer files into the adapter's folder") from err
