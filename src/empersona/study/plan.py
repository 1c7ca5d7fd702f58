"""The plan of a study: which adapters to train, which (model, experiment) runs to make, what it costs.

A plan is computed from the study file and what already lies in the run folder, so the same
function answers ``--dry-run`` and drives the run, and a re-run after a crash plans only what is
left. Run folder layout::

    <out>/adapters/<domain>-s<seed>/   LoRA adapter + tokenizer + empersona.json (training)
    <out>/models/<name>/               views of the study file's extra adapters (``extra_models``)
    <out>/logs/<model>/*.eval          inspect logs, one folder per model
    <out>/models.yaml                  model name -> model string, base model, adapter, domain, seed
    <out>/results.parquet, report/     written by the report step

Call counts are estimates before the run: generations = items x samples (x orders/foils where
an experiment asks twice), judge calls per experiment as documented in ``estimate_calls``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from empersona.study.config import SCRIPTED_JUDGE, SCRIPTED_JUDGE_MODEL, SCRIPTED_SECOND_JUDGE_MODEL, StudyConfig

if TYPE_CHECKING:
    from empersona.moved import FolderMove
    from empersona.train.recipe import TrainConfig

DEFAULT_FOILS = ("contrast", "matched")
SAMPLED_EXPERIMENTS = ("harmfulness", "em_classic", "two_ai")
"""Experiments the study-wide ``samples`` applies to (the paper samples these 10 times)."""
TrainStatus = Literal["done", "missing", "stale", "partial"]
EvalStatus = Literal["done", "todo"]
ModelKind = Literal["base", "fine-tune", "checkpoint", "adapter", "model"]
"""The study's base; one of its own fine-tunes; a checkpoint one of them kept (``checkpoints:``);
an extra adapter of its base (``models:``, served like a fine-tune); an extra model string asked
as given."""
BASE_NAME = "base"


@dataclass(frozen=True)
class TrainJob:
    """One adapter to make (or already made): a (domain, seed) of the study, or a fine-tune on
    ``first`` trained on further on ``domain`` (``sequential:``)."""

    domain: str
    seed: int
    out: Path
    config: TrainConfig
    status: TrainStatus
    why: str
    first: str | None = None

    @property
    def label(self) -> str:
        """The training data: the domain, or ``<first> > <then>``."""
        return f"{self.first} > {self.domain}" if self.first else self.domain


@dataclass(frozen=True)
class ModelSpec:
    """A model the battery runs on: the base, one of the study's fine-tunes, or an extra model."""

    name: str
    model_string: str
    base_model: str | None
    adapter: Path | None = None
    domain: str | None = None
    seed: int | None = None
    identity: str | None = None
    """The base's ``base_identity``, an extra adapter's ``adapter_fingerprint`` (None on a fine-tune:
    its identity is its training run's, read when asked; and on an extra model string)."""
    kind: ModelKind | None = None
    """None: "fine-tune" with an adapter, "base" without."""
    model_args: dict[str, Any] | None = None
    """An extra model string's own model args (None: the study's)."""
    source: Path | None = None
    """An extra adapter's own folder (``adapter`` is its view in the run folder)."""
    step: int | None = None
    """A checkpoint's training step."""
    serving: str | None = None
    """A fine-tune's `serving_identity` (None: the defaults), part of its `model_identity`."""

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", "fine-tune" if self.adapter is not None else "base")

    @property
    def served(self) -> bool:
        """Served by the study's provider on its base (the base, a fine-tune, an extra adapter)."""
        return self.kind != "model"


@dataclass(frozen=True)
class EvalJob:
    """One experiment on one model."""

    model: ModelSpec
    experiment: str
    task_args: dict[str, Any]
    limit: int | None
    log_dir: Path
    generations: int
    judge_calls: int
    status: EvalStatus
    log: Path | None = None
    note: str = ""
    """Why a job with a log is to do (judge calls that failed in it), or is kept though they did, said by
    the dry run and the run."""
    reask: int | None = None
    """The failed judge calls of the log it replaces, when it is made again to ask them (``REASKED``)."""
    variant: str | None = None
    """The study variant it asks the experiment under (None: the battery itself); the log records it."""

    @property
    def label(self) -> str:
        """The experiment, with its variant: ``two_ai`` or ``two_ai [honest]``."""
        return self.experiment + (f" [{self.variant}]" if self.variant else "")


@dataclass(frozen=True)
class Plan:
    """Everything a study run will do, in order."""

    study: StudyConfig
    train_jobs: list[TrainJob]
    models: list[ModelSpec]
    eval_jobs: list[EvalJob] = field(default_factory=list)

    @property
    def generations(self) -> int:
        return sum(job.generations for job in self.eval_jobs if job.status == "todo")

    @property
    def judge_calls(self) -> int:
        return sum(job.judge_calls for job in self.eval_jobs if job.status == "todo")

    def untrained_models(self) -> set[str]:
        """The models whose adapter (a checkpoint's: its fine-tune's) is not trained."""
        untrained = {job.out.resolve() for job in self.train_jobs if job.status != "done"}
        return {model.name for model in self.models if training_folder(model) in untrained}


def _domain_slug(domain: str) -> str:
    return Path(domain).stem.replace(".jsonl", "") if domain.endswith((".jsonl", ".gz")) else domain


def adapter_dir(study: StudyConfig, domain: str, seed: int, first: str | None = None) -> Path:
    """Where the adapter of (domain, seed) lives in the run folder; with ``first``, the adapter of
    ``first`` trained on further on ``domain`` (``<first>+<domain>-s<seed>``)."""
    slug = _domain_slug(domain) if first is None else f"{_domain_slug(first)}+{_domain_slug(domain)}"
    return study.out / "adapters" / f"{slug}-s{seed}"


def sequential_label(first: str, then: str) -> str:
    """A sequential fine-tune's domain as the tables show it."""
    return f"{_domain_slug(first)}>{_domain_slug(then)}"


def base_path(study: StudyConfig) -> str:
    """The base model as training and ``hf/`` want it: a local folder made absolute, or a hub id."""
    local = Path(study.base_model)
    return str(local.resolve()) if local.exists() or study.build_tiny_base else study.base_model


def train_config(study: StudyConfig, domain: str, seed: int, first: str | None = None) -> TrainConfig:
    """The full training config of one job: recipe defaults, the study's settings, the job's keys
    (with ``first``: continuing the study's adapter of ``first`` and ``seed``)."""
    from empersona.train.recipe import TrainConfig

    return TrainConfig(
        **study.train,
        base=base_path(study),
        domain=domain,
        seed=seed,
        out=adapter_dir(study, domain, seed, first),
        domain_path=study.domain_paths.get(domain),
        system_prompt=study.system_prompt,
        init_adapter=adapter_dir(study, first, seed) if first is not None else None,
    )


def sequential_status(config: TrainConfig, first: TrainJob) -> tuple[TrainStatus, str]:
    """`training_status` of a sequential job, which also goes stale when the adapter it continues is
    to be trained (again), or was trained again since it started from it."""
    from empersona.train.metadata import INCOMPLETE_MARKER

    status, why = training_status(config)
    if first.status != "done":  # what it holds, even a checkpoint to resume from, grew from the adapter to be replaced
        return ("missing" if status == "missing" else "stale"), f"continues {first.out.name}, which is trained first"
    if status in ("done", "partial"):  # what it started from (an interrupted run's marker keeps it) against that adapter now
        record = config.output_dir() / ("empersona.json" if status == "done" else INCOMPLETE_MARKER)
        recorded = json.loads(record.read_text(encoding="utf-8")).get("init_adapter") or {}
        now = json.loads((first.out / "empersona.json").read_text(encoding="utf-8"))
        if recorded.get("empersona") != now:
            return "stale", f"{first.out.name} was trained again since this adapter started from it"
    return status, why


def training_status(config: TrainConfig) -> tuple[TrainStatus, str]:
    """Whether an adapter folder holds a finished adapter trained with exactly this config."""
    from empersona.train.base_model import base_fingerprint
    from empersona.train.metadata import CHECKPOINTS_DIR, config_changes, last_complete_checkpoint
    from empersona.train.sft import INCOMPLETE_MARKER

    out = config.output_dir()
    meta_path = out / "empersona.json"
    # empersona.json is written (atomically) before the marker is removed, so it decides
    if not meta_path.exists():
        if (out / INCOMPLETE_MARKER).exists():
            if (why := _started_otherwise(config, out / INCOMPLETE_MARKER)) is not None:
                return "stale", why
            if last_complete_checkpoint(out / CHECKPOINTS_DIR) is not None:
                return "partial", "interrupted; resumes from its last checkpoint"
            return "partial", "interrupted before its first checkpoint; starts again"
        return "missing", "no adapter yet"
    record = json.loads(meta_path.read_text(encoding="utf-8"))
    recorded, wanted = record.get("config", {}), config.model_dump(mode="json")
    trained_on = (record.get("dataset") or {}).get("sha256")
    changed = config_changes(recorded, wanted, trained_on)
    if changed:
        return "stale", f"trained with other settings ({', '.join(changed)})"
    edited = _edited_domain_file(config, trained_on) if trained_on else None
    if edited is not None:
        return "stale", f"its domain file {edited} changed since it was trained (another sha256)"
    # absent in records older than 2026-11-28, and a base folder not there (an unmounted disk): not compared
    trained_base, base_now = record.get("base_fingerprint"), base_fingerprint(config.resolved_base())
    if trained_base is not None and base_now is not None and trained_base != base_now:
        return "stale", f"its base model {config.resolved_base()} changed since it was trained (other files)"
    trained_in = recorded.get("out")  # relative in records older than 2026-11-28: read from the working folder
    if trained_in is None or Path(trained_in).resolve() != Path(wanted["out"]).resolve():
        return "done", f"adapter matches the plan (trained in {trained_in}, since moved)"
    return "done", "adapter matches the plan"


def _started_otherwise(config: TrainConfig, marker: Path) -> str | None:
    """Why an interrupted training cannot resume under ``config`` (it started with other settings,
    or on a domain file since edited), or None. Such a run is trained anew (its folder set
    aside), as a finished adapter with other settings is: resuming it would mix two runs."""
    from empersona.train.metadata import config_changes, config_record

    try:
        started = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a marker cut short: nothing to compare, resume decides
        return None
    changed = config_changes(started["config"], config_record(config)) if isinstance(started.get("config"), dict) else []
    if changed:
        return f"interrupted, and started with other settings ({', '.join(changed)}): trained anew"
    data = started.get("data") or {}
    edited = _edited_domain_file(config, data["sha256"]) if data.get("sha256") else None
    if edited is not None:
        return f"interrupted, and its domain file {edited} changed since it started: trained anew"
    return None


def _edited_domain_file(config: TrainConfig, trained_on: str) -> Path | None:
    """The domain's file, where it now holds other bytes than the adapter was trained on: a domain
    given as a chat JSONL file, or a local copy (``domain_path``) of an emergent_plus domain (the
    legal and security data and the aligned controls). None otherwise: a pinned file domain's copy
    is checked against its source's sha256 whenever it is read, and a hub download is not read here."""
    from empersona.data.domains import DOMAINS
    from empersona.data.fetch import sha256_file

    known = DOMAINS.get(config.domain)
    if known is None:
        path: Path | None = Path(config.domain).expanduser()
    elif known.source_kind != "file" and config.domain_path is not None:
        path = Path(config.domain_path).expanduser()
    else:
        path = None
    return path if path is not None and path.is_file() and sha256_file(path) != trained_on else None


def base_identity(study: StudyConfig) -> str:
    """Which base model the study's base is: a short fingerprint that changes with ``base_model``.

    A hub id is its own identity. A local folder is known by where it lies (its path inside the
    run folder, else its folder name: never the absolute path, so moving the run folder, or the
    project folder holding base and run folder, keeps it) and its files (`train.base_model.add_base_files`:
    config, tokenizer config, chat template, weight file names and sizes). It scopes the base's
    cached calls and marks its logs (``log_is_of_model``), and under ``provider: vllm`` names the
    base on the server, so the answers of another base model (a study before this one on the same
    port, or a changed ``base_model``) are not taken for this one's.
    """
    import hashlib

    from empersona.train.base_model import add_base_files

    digest = hashlib.sha256()
    local = Path(base_path(study))
    if not local.is_dir():
        digest.update(f"hub:{study.base_model}".encode())
    else:
        out = study.out.resolve()
        place = local.relative_to(out).as_posix() if local.is_relative_to(out) else local.name
        digest.update(f"local:{place}\n".encode())
        add_base_files(digest, local)
    if (serving := serving_identity(study)) is not None:
        digest.update(f"served with {serving}".encode())
    return digest.hexdigest()[:16]


def serving_identity(study: StudyConfig) -> str | None:
    """How the study's own models are served, as far as it changes their answers, e.g. a ``dtype``:
    the study's ``model_args`` but credentials, placement (``extra_models.PLACEMENT_ARGS``: device,
    batch sizes), the provider's speed options (``SERVING_SPEED_ARGS``), values at the provider's
    default and ``generation_config`` (how the provider samples has its own mark; kept logs sampled
    otherwise are named in a warning, `run.earlier_sampling_warning`); under ``provider: vllm`` also
    the server's ``dtype`` and those of its ``extra_args`` that change answers
    (``VLLM_ANSWERING_FLAGS``: a ``--quantization``). None where none is set, so identities made
    before this was part of them stand. Part of the base's identity and of each fine-tune's and
    checkpoint's (`model_identity`): their logs and cached calls are of it."""
    from empersona.study.extra_models import answering_args

    defaults = _provider_defaults(study.provider)
    answering = {key: value for key, value in answering_args(study.model_args).items()
                 if key not in SERVING_SPEED_ARGS and key != "generation_config"  # the sampling mark's (`run.sampling_mark`)
                 and not (key in defaults and defaults[key] == value)}
    if study.provider == "vllm":
        answering |= {f"vllm.{key}": value for key, value in
                      (("dtype", study.vllm.dtype), ("extra_args", answering_vllm_flags(study.vllm.extra_args))) if value}
    return json.dumps(answering, sort_keys=True, default=str) if answering else None


SERVING_SPEED_ARGS = frozenset({
    "prefix_reuse", "min_prefix", "compile", "sync_every", "freeze_gc", "kv_cache_gib", "min_batch_bucket",
    "shrink_at", "compile_prefill", "compile_mode", "lora_merge", "max_adapters",
})
"""The ``empersona/`` provider's batching, caching and compiling options (``provider.api.ProviderArgs``):
how fast it answers; its ``dtype``, ``lora_dtype`` and ``adapter`` say what."""
VLLM_ANSWERING_FLAGS = frozenset({
    "--quantization", "--dtype", "--kv-cache-dtype", "--tokenizer", "--tokenizer-mode", "--revision",
    "--tokenizer-revision", "--code-revision", "--chat-template", "--seed", "--override-generation-config",
    "--hf-overrides", "--load-format", "--max-logprobs", "--logprobs-mode",
})
"""``vllm serve`` flags that change what the server answers (the rest: memory, batching, parallelism, logging)."""


def answering_vllm_flags(extra_args: Sequence[str]) -> list[str]:
    """The flags of ``extra_args`` in ``VLLM_ANSWERING_FLAGS``, each with its value."""
    kept: list[str] = []
    for index, arg in enumerate(extra_args):
        flag = arg.split("=", 1)[0]
        if flag in VLLM_ANSWERING_FLAGS:
            kept.append(arg)
            following = extra_args[index + 1] if index + 1 < len(extra_args) else None
            if "=" not in arg and following is not None and not following.startswith("--"):
                kept.append(following)
    return kept


def _provider_defaults(provider: str) -> dict[str, Any]:
    """The model args a provider takes by default (a setting written at its default changes nothing);
    known for ``empersona`` only."""
    if provider != "empersona":
        return {}
    from empersona.provider.api import ProviderArgs

    return {name: field.default for name, field in ProviderArgs.model_fields.items()}


def model_specs(study: StudyConfig) -> list[ModelSpec]:
    """The base model and one adapter per (domain, seed), with their model strings."""
    base = base_path(study)
    identity = base_identity(study)
    serving = serving_identity(study)
    served = f"{BASE_NAME}-{identity}"  # the base's name on a vLLM server: another base, another name
    specs = [ModelSpec(BASE_NAME, model_string(study, base, None, served), base, identity=identity)]
    trained = [(domain, seed, None) for domain in study.domains for seed in study.seeds]
    trained += [(step.then, seed, step.first) for step in study.sequential for seed in study.seeds]
    for domain, seed, first in trained:
        out = adapter_dir(study, domain, seed, first)
        label = domain if first is None else sequential_label(first, domain)
        specs.append(ModelSpec(out.name, model_string(study, base, out, out.name), base, out, label, seed,
                               serving=serving))
        if study.checkpoints:
            specs += checkpoint_specs(study, base, out, label, serving)
    specs += extra_model_specs(study, base, identity)
    return specs


def checkpoint_specs(study: StudyConfig, base: str, adapter: Path, domain: str, serving: str | None = None) -> list[ModelSpec]:
    """The complete checkpoints a finished fine-tune kept (``train: keep_checkpoints``), but the
    one of its last step (the fine-tune itself), as models ``<adapter>-step<N>``. A checkpoint is
    known by its fine-tune's training run and its step; it has no fine-tuning seed of its own in
    the tables (so seeds are pooled over final adapters only); ``serving``: how it is served
    (`serving_identity`), part of its identity as of its fine-tune's."""
    from empersona.train.metadata import CHECKPOINTS_DIR, adapter_identity, complete_checkpoints, read_metadata

    run = adapter_identity(adapter)
    if run is None:  # not trained to the end yet: its checkpoints are a run in progress
        return []
    final = read_metadata(adapter).steps
    specs = []
    for step, folder in complete_checkpoints(adapter / CHECKPOINTS_DIR):
        if step == final:
            continue
        name = f"{adapter.name}-step{step}"
        identity = served(f"{run}@{step}", serving)
        specs.append(ModelSpec(name, model_string(study, base, folder, name), base, folder, domain,
                               identity=identity, kind="checkpoint", step=step))
    return specs


def extra_model_specs(study: StudyConfig, base: str, base_id: str) -> list[ModelSpec]:
    """The study file's ``models:``: extra adapters (served through their views in the run folder,
    ``extra_models.view_dir``) and extra model strings (as given).

    An adapter is known by its files and the base it is served on (``base_id``: another base
    gives other answers through the same adapter); a model string by its local folder's files, if
    it names one (``hf/DIR``), and its model args but placement ones like ``device``
    (``extra_models.model_string_identity``); a bare remote model string by the string alone.
    """
    import hashlib

    from empersona.study.extra_models import adapter_fingerprint, model_string_identity, view_dir

    specs = []
    for name, entry in study.models.items():
        if entry.adapter is not None:
            view = view_dir(study, name)
            identity = hashlib.sha256(f"{adapter_fingerprint(entry.adapter)} on {base_id}".encode()).hexdigest()[:16]
            specs.append(ModelSpec(name, model_string(study, base, view, name), base, view, entry.domain,
                                   identity=identity, kind="adapter", source=entry.adapter))
        else:
            assert entry.model is not None
            specs.append(ModelSpec(name, entry.model, None, domain=entry.domain,
                                   identity=model_string_identity(entry.model, entry.model_args),
                                   kind="model", model_args=dict(entry.model_args)))
    return specs


def model_string(study: StudyConfig, base: str, adapter: Path | None, name: str) -> str:
    """An inspect model string for the study's provider."""
    if study.provider == "vllm":
        return f"openai-api/{VLLM_SERVICE}/{name}"
    target = str(adapter.resolve()) if adapter else base
    return f"{study.provider}/{target}"


VLLM_SERVICE = "empersonavllm"


def task_args(study: StudyConfig, experiment: str) -> dict[str, Any]:
    """The experiment's task parameters: study-wide ones, then the experiment's own."""
    from empersona.evals.battery import EXPERIMENTS, with_home_expanded

    params = EXPERIMENTS[experiment].parameters()
    args: dict[str, Any] = {"system_prompt": study.system_prompt, "seed": study.seed}
    if study.samples is not None and experiment in SAMPLED_EXPERIMENTS and "samples" in params:
        args["samples"] = study.samples
    args.update(with_home_expanded(study.experiments[experiment].args))
    return args


# --- call estimates ------------------------------------------------------------------------

def estimate_calls(experiment: str, args: dict[str, Any], limit: int | None, harm: tuple[int, int] = (0, 0)) -> tuple[int, int]:
    """(generations by the subject model, judge calls) of one experiment, before it runs.

    Experiments whose items come from files are counted by building their task (cheap: it only
    reads the data). Output recognition and score prediction are counted from the harmfulness
    run they read, ``harm`` = (prompts, samples per prompt), taking every logged response as
    scored: output recognition asks each own response (the first ``responses`` per prompt) once
    per foil kind and order, and writes and judges one contrast foil per own response; score
    prediction asks ``blind`` once per prompt and ``shown``/``shown_other`` once per response.
    """
    from empersona.evals.battery import EXPERIMENTS

    if EXPERIMENTS[experiment].needs_harm_log:
        return _harm_log_estimate(experiment, args, *harm)
    if experiment == "two_ai":  # a framing shows answers of a log not written yet: the items are the same
        args = {key: value for key, value in args.items() if key not in ("framing", "harm_log", "answers")}
    task = EXPERIMENTS[experiment].task_function()(**args)
    epochs = task.epochs if isinstance(task.epochs, int) else (task.epochs.epochs if task.epochs else 1)
    items = min(len(task.dataset), limit) if limit else len(task.dataset)
    generations = items * epochs
    judge_per_generation = {"harmfulness": 1, "em_classic": 2 * em_judge_calls(args)}.get(experiment, 0)
    if experiment == "self_assessment" and args.get("language_detector") == "judge":
        language = sum(1 for s in list(task.dataset)[:items] if (s.metadata or {}).get("format") == "language")
        return generations, language * epochs
    return generations, generations * judge_per_generation


def em_judge_calls(args: dict[str, Any]) -> int:
    """Judge calls for each of em_classic's two scores (aligned, coherent) of one answer, at most:
    one with ``judge_method: logprob``, ``EM_FALLBACK_SAMPLES`` sampled ones with ``sample``, and
    with ``auto`` one asking for logprobs and, where the judge gives none (many APIs), the samples."""
    from empersona.evals.judge import EM_FALLBACK_SAMPLES

    method = args.get("judge_method", _task_default("em_classic", "judge_method"))
    return {"logprob": 1, "sample": EM_FALLBACK_SAMPLES}.get(method, 1 + EM_FALLBACK_SAMPLES)


def as_list(value: Any, default: list[str]) -> list[str]:
    """A comma-separated string or a list, as a list (``default`` when unset)."""
    if value is None:
        return default
    return [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)


def _harm_log_estimate(experiment: str, args: dict[str, Any], prompts: int, samples: int) -> tuple[int, int]:
    epochs = int(args.get("samples", 1))
    per_prompt = min(int(args.get("responses") or samples), samples)
    responses = prompts * per_prompt
    if experiment == "output_recognition":
        foils = as_list(args.get("foils"), list(DEFAULT_FOILS))
        contrast = responses if "contrast" in foils else 0
        return responses * len(foils) * 2 * epochs + contrast, contrast
    conditions = as_list(args.get("conditions"), ["blind", "shown", "shown_other"])
    items = sum(prompts if condition == "blind" else responses for condition in conditions)
    return items * epochs, 0


# --- the plan ------------------------------------------------------------------------------

def _task_default(experiment: str, parameter: str) -> Any:
    """The default of one of an experiment's task parameters."""
    from empersona.evals.battery import EXPERIMENTS

    return EXPERIMENTS[experiment].defaults()[parameter]


def model_identity(model: ModelSpec) -> str | None:
    """Which training run of its adapter a fine-tune is (``train.metadata.adapter_identity``), served
    how (`serving_identity`); for the base, which base model it is (``base_identity``)."""
    from empersona.train.metadata import adapter_identity

    if model.kind != "fine-tune" or model.adapter is None:
        return model.identity
    run = adapter_identity(model.adapter)
    return run if run is None or model.serving is None else served(run, model.serving)


def served(identity: str, serving: str | None) -> str:
    """A short fingerprint of ``identity`` served as ``serving`` says (`serving_identity`)."""
    import hashlib

    return hashlib.sha256((identity + (f" served with {serving}" if serving else "")).encode()).hexdigest()[:16]


def finished_log(log_dir: Path, experiment: str, args: dict[str, Any], limit: int | None,
                 model: ModelSpec | None = None, judge: str | None = None,
                 run_folder: Path | None = None, variant: str | None = None,
                 judge_settings: str | None = None) -> Path | None:
    """A successful log of this experiment with these task arguments, if the folder has one.

    With ``model``, the log must also be of that model string and, for a fine-tune, of its
    current training run: a log of another base model, or of an adapter since retrained into
    the same folder, is not this model's result. Logs written before runs were recorded count
    when they are newer than the adapter. With ``judge``, the log must have been judged by that
    model string (``metadata["judge"]``) with these answer-affecting judge args (``judge_settings``,
    `judge_identity`; ``metadata["judge_identity"]``, in logs made since it is recorded). A task argument
    naming a file (``*_file``) must name one with the contents the log recorded
    (``metadata["files"]``, `file_digests`; logs from before that was recorded count as they did:
    by the path). With ``run_folder`` (where the study's run folder is
    now), paths the log recorded inside the run folder (model strings, harmfulness logs read)
    count at their places after a move or copy of the folder (``log_move``). The log must be of
    the study ``variant`` (``metadata["variant"]``), or of none when it is None.
    """
    from inspect_ai.log import list_eval_logs, read_eval_log

    from empersona.train.metadata import trained_run_folder

    if not log_dir.exists():
        return None
    identity = model_identity(model) if model is not None else None
    trained_in = trained_run_folder(run_folder) if run_folder is not None else None  # read once, not per log
    contents = file_digests(args)
    unused = unused_args(experiment, args)
    compared = {k: v for k, v in args.items() if k not in unused}
    for info in list_eval_logs(str(log_dir), recursive=False):
        try:
            header = read_eval_log(info, header_only=True)
        except Exception:  # a log cut short by a killed run (no zip directory): not finished
            continue
        if header.status != "success" or header.eval.task.split("/")[-1] != experiment:
            continue
        move = log_move(header.eval, run_folder, trained_in) if run_folder is not None else None
        recorded = {k: v for k, v in (header.eval.task_args or {}).items() if k not in unused}
        if not (all(_same(move, recorded.get(k), v) for k, v in compared.items()) and (header.eval.config.limit == limit)):
            continue
        if not _rest_at_defaults(experiment, recorded, compared):
            continue
        if model is not None and not log_is_of_model(header.eval, model, identity, move):
            continue
        meta = header.eval.metadata or {}
        # judge_identity is in every log made since it was recorded (None: no such args); older logs count by the string
        if judge is not None and (meta.get("judge") != judge or ("judge_identity" in meta and meta["judge_identity"] != judge_settings)):
            continue
        recorded_files = meta.get("files") or {}
        if any(key in recorded_files and recorded_files[key] != digest for key, digest in contents.items()):
            continue
        if (meta.get("variant") or None) != (variant or None):
            continue
        return Path(info.name.removeprefix("file://"))
    return None


def log_move(spec: Any, run_folder: Path, trained_in: str | None = None) -> FolderMove | None:
    """How the run folder moved (or was copied) since a log was written, if it did
    (``analysis.results.recorded_run_folder`` says where it was; ``trained_in``: where the run's
    adapters were trained, ``train.metadata.trained_run_folder``, for logs that say nothing)."""
    from empersona.analysis.results import recorded_run_folder
    from empersona.moved import FolderMove

    recorded = recorded_run_folder(spec, trained_in)
    return FolderMove.between(recorded, run_folder) if recorded is not None else None


SET_AT_RUN_TIME = frozenset({"harm_log", "matched_log", "foil_model", "foil_model_args"})
"""Task arguments the runner fills in when it runs an experiment (the harmfulness log read, the
foils' sources), not the study file: `finished_log` compares them through its ``args`` only."""
RUNNER_DEFAULTS: dict[tuple[str, str], Any] = {("output_recognition", "foils"): ",".join(DEFAULT_FOILS)}
"""Where the runner, not the task, gives an argument the study leaves unset (`run.recognition_foils`)."""


def _rest_at_defaults(experiment: str, recorded: dict[str, Any], args: dict[str, Any]) -> bool:
    """Whether every argument a log recorded that the study no longer sets is at the task's
    default: a setting taken out of the study file (``max_tokens: 24`` removed, so 512 again)
    must not leave a log made with it counted as done. Arguments the task no longer has, and those
    set at run time (``SET_AT_RUN_TIME``), are not compared."""
    from empersona.evals.battery import EXPERIMENTS

    if experiment not in EXPERIMENTS:
        return True
    defaults = EXPERIMENTS[experiment].defaults()
    for key, value in recorded.items():
        if key in args or key in SET_AT_RUN_TIME or key not in defaults:
            continue
        default = RUNNER_DEFAULTS.get((experiment, key), defaults[key])
        if json.loads(json.dumps(default, default=str)) != json.loads(json.dumps(value, default=str)):
            return False
    return True


def _same(move: FolderMove | None, recorded: Any, now: Any) -> bool:
    return move.same(recorded, now) if move is not None else recorded == now


UNUSED_IN_LOGPROB_MODE = frozenset({"samples", "temperature", "max_tokens"})
"""What two-AI identification and output recognition do not read in ``mode: logprob`` (one pass,
one token): a change to them leaves such a log as it is."""


def unused_args(experiment: str, args: dict[str, Any]) -> frozenset[str]:
    """The task arguments ``experiment`` does not read with these ``args``: not compared between a
    log and the plan."""
    if experiment in ("two_ai", "output_recognition") and args.get("mode") == "logprob":
        return UNUSED_IN_LOGPROB_MODE
    return frozenset()


def file_digests(args: dict[str, Any]) -> dict[str, str]:
    """The sha256 of each file a task argument names (``prompts_file``, ``rubric_file``, ...):
    recorded in a study's logs, so that a file edited in place is not taken for the one a log read."""
    from empersona.data.fetch import sha256_file

    return {key: sha256_file(Path(value)) for key, value in sorted(args.items())
            if key.endswith("_file") and isinstance(value, str) and value and Path(value).is_file()}


def judge_identity(study: StudyConfig) -> str | None:
    """What the judge's args say about its answers: all but credentials and placement
    (``extra_models.PLACEMENT_ARGS``: timeouts, connections), e.g. another ``base_url`` or
    ``temperature``; None where they say nothing (so logs from before this was recorded count)."""
    return _args_identity(study.judge_args)


def second_judge_identity(study: StudyConfig) -> str | None:
    """`judge_identity` of the second judge's ``model_args`` (None without a second judge)."""
    return _args_identity(study.second_judge.model_args) if study.second_judge is not None else None


def _args_identity(args: dict[str, Any]) -> str | None:
    import hashlib

    from empersona.study.extra_models import answering_args

    answering = answering_args(args)
    if not answering:
        return None
    return hashlib.sha256(json.dumps(answering, sort_keys=True, default=str).encode()).hexdigest()[:16]


def asks_judge(experiment: str, args: dict[str, Any]) -> bool:
    """Whether the experiment's logs hold the judge's verdicts (``JUDGED_EXPERIMENTS``) with these
    task args: self-assessment asks it only as its language detector."""
    if experiment == "self_assessment":
        detector = args.get("language_detector", _task_default(experiment, "language_detector"))
        return detector == "judge"
    return experiment in JUDGED_EXPERIMENTS


def log_is_of_model(spec: Any, model: ModelSpec, identity: str | None, move: FolderMove | None = None) -> bool:
    """Whether a log's eval spec is of ``model`` (and of its adapter's current training run);
    ``move``: the run folder moved since the log was written (``log_move``)."""
    if not _same(move, spec.model, model.model_string):
        return False
    recorded = (spec.metadata or {}).get("model_identity")
    if identity is None:  # a log made with an identity (a model string with a revision, say) is not of the bare one
        return recorded is None or model.kind != "model"
    if recorded is not None:
        return recorded == identity
    if model.kind == "base":  # a base log from before bases had identities: its model string decided
        return True
    if model.kind != "fine-tune" or model.adapter is None:  # extra adapters' logs always record theirs
        return False
    import json
    from datetime import datetime

    from empersona.train.metadata import METADATA_FILE

    assert model.adapter is not None
    try:
        trained = datetime.fromisoformat(json.loads((model.adapter / METADATA_FILE).read_text())["finished_at"])
        created = datetime.fromisoformat(spec.created)
    except (OSError, ValueError, KeyError, TypeError):  # cannot tell: evaluate again
        return False
    if trained.tzinfo is None or created.tzinfo is None:
        trained, created = trained.replace(tzinfo=None), created.replace(tzinfo=None)
    return created >= trained


def make_plan(study: StudyConfig, *, download: bool = True) -> Plan:
    """Plan a study against what its run folder already holds. ``download`` False (a dry run): a
    chat template the honesty variants read is not downloaded (`_default_system`)."""
    jobs = []
    for domain in study.domains:
        for seed in study.seeds:
            config = train_config(study, domain, seed)
            status, why = training_status(config)
            jobs.append(TrainJob(domain, seed, config.output_dir(), config, status, why))
    for step in study.sequential:  # after the adapters they continue
        for seed in study.seeds:
            config = train_config(study, step.then, seed, step.first)
            first = next(job for job in jobs if job.domain == step.first and job.seed == seed and job.first is None)
            status, why = sequential_status(config, first)
            jobs.append(TrainJob(step.then, seed, config.output_dir(), config, status, why, step.first))
    models = model_specs(study)
    # a fine-tune whose adapter is to be (re)trained has no result yet, whatever its logs say
    untrained = frozenset(job.out.resolve() for job in jobs if job.status != "done")
    evals = []
    harm = (0, 0)  # (prompts, samples) of the harmfulness runs, read by the experiments after it
    harm_done: dict[str, Path | None] = {}  # each model's finished harmfulness log (None: to be written)
    # experiment-major order: every model's harmfulness log exists before any experiment reads
    # one (output recognition also reads another model's, for its matched foils)
    for experiment in study.ordered_experiments():
        args = task_args(study, experiment)
        experiment_jobs = _jobs(study, experiment, models, {model.name: args for model in models}, harm, harm_done,
                                untrained)
        if experiment == "harmfulness":
            samples = int(args.get("samples", _task_default("harmfulness", "samples")))
            harm = (experiment_jobs[0].generations // samples, samples)
            harm_done.update({job.model.name: job.log for job in experiment_jobs})
        evals += experiment_jobs
        if experiment == "harmfulness" and study.second_judge is not None:
            evals += second_judge_jobs(study, models, harm_done, study.experiments[experiment].limit, harm)
    for name in study.variants:  # after the battery: each variant asks its experiments again
        for experiment in study.variant_experiments(name):
            per_model = {model.name: variant_task_args(study, name, experiment, model, download=download) for model in models}
            evals += _jobs(study, experiment, models, per_model, harm, harm_done, untrained, name)
    return Plan(study, jobs, models, evals)


def training_folder(model: ModelSpec) -> Path | None:
    """The adapter folder whose training made ``model`` (a checkpoint's: its fine-tune's), resolved."""
    folder = model.adapter.parent.parent if model.kind == "checkpoint" and model.adapter else model.adapter
    return None if folder is None else folder.resolve()


def _jobs(study: StudyConfig, experiment: str, models: Sequence[ModelSpec], args: dict[str, dict[str, Any]],
          harm: tuple[int, int], harm_done: dict[str, Path | None], untrained: frozenset[Path],
          variant: str | None = None) -> list[EvalJob]:
    """One experiment's job on every model (``args``: its task arguments per model name), done where
    a finished log of it stands (of that variant, or of none for the battery's own)."""
    limit = study.experiments[experiment].limit
    judge_settings = judge_identity(study)
    jobs = []
    estimates: dict[str, tuple[int, int]] = {}  # building a task to count its items is done once per argument set
    for model in models:
        model_args = args[model.name]
        key = json.dumps(model_args, sort_keys=True, default=str)
        if key not in estimates:
            estimates[key] = estimate_calls(experiment, model_args, limit, harm)
        generations, judge_calls = estimates[key]
        log_dir = study.out / "logs" / model.name
        reads = harm_logs_read(experiment, model, models, model_args)
        stale = training_folder(model) in untrained or any(
            harm_done.get(name) is None for name in reads.values())
        # a reader's log counts only if it read the harmfulness logs that stand now
        expected = {**model_args, **{key: str(harm_done.get(name)) for key, name in reads.items()}}
        judge = judge_model_string(study) if asks_judge(experiment, model_args) else None
        done = None if stale else finished_log(log_dir, experiment, expected, limit, model, judge, study.out, variant,
                                               judge_settings if judge else None)
        done, note, reask = with_failed_judge_calls(done, experiment)
        jobs.append(EvalJob(model, experiment, model_args, limit, log_dir, generations, judge_calls,
                            "done" if done else "todo", done, note, reask, variant))
    return jobs


def variant_task_args(study: StudyConfig, name: str, experiment: str, model: ModelSpec | None,
                      download: bool = True) -> dict[str, Any]:
    """An experiment's task arguments under variant ``name`` on ``model``: the battery's, then the
    variant's system prompt (with its honesty pressure; ``model`` None: without it, as the study
    file's checks build the tasks), two-AI settings and own args.

    Honesty pressure under the ``default`` policy keeps the system prompt the model would get
    without it (its chat template's default, `policy.template_default_system`: the base's for the
    models served on it, a local model folder's for a ``model:`` naming one) and adds the
    instruction after it; a model string asked as given (an API model) gets the instruction alone.
    ``download`` False: a template not on this machine is not downloaded (`TEMPLATE_READ_AT_RUN_TIME`).
    """
    from empersona.evals.battery import with_home_expanded
    from empersona.evals.policy import HONESTY_PRESSURE, resolve_system_prompt, with_honesty

    variant = study.variants[name]
    args = task_args(study, experiment)
    policy = variant.system_prompt if variant.system_prompt is not None else study.system_prompt
    if variant.honesty and model is not None:
        honesty = HONESTY_PRESSURE if variant.honesty is True else str(variant.honesty)
        text = resolve_system_prompt(policy)
        if text is None:
            text = _default_system(study, name, model, honesty, download)
        policy = with_honesty(text, honesty)
    args["system_prompt"] = policy
    if experiment == "two_ai" and variant.neutral_descriptions:
        args["neutral_descriptions"] = True
    if experiment == "two_ai" and variant.framing is not None:
        args["framing"] = variant.framing
    args.update(with_home_expanded(variant.args.get(experiment, {})))
    return args


TEMPLATE_READ_AT_RUN_TIME = "<the chat template's default system prompt, read when the run starts>"
"""What a dry run puts before the honesty instruction where the template is not on this machine:
the evaluation is to do either way (no log of it stands), and its counts do not depend on the text."""


def _default_system(study: StudyConfig, name: str, model: ModelSpec, honesty: str, download: bool = True) -> str | None:
    """The system prompt ``model`` gets from its chat template when sent none (None: none, or an
    API model): read from the template where the tokenizer is on this machine (a local folder, the
    Hugging Face cache), else the text a finished log of this variant on this model sent before
    the instruction, else downloaded (with ``download``; else ``TEMPLATE_READ_AT_RUN_TIME``);
    failures are remembered (a plan is made more than once)."""
    from empersona.errors import EmpersonaError
    from empersona.study.config import located_in_study

    source = _template_source(study, model)
    if source is None:
        return None
    if study.build_tiny_base and source == base_path(study) and not (Path(source) / "config.json").is_file():
        from empersona.testing.tiny import QWEN_DEFAULT_SYSTEM_PROMPT  # built at the run's start, Qwen2.5's template

        return QWEN_DEFAULT_SYSTEM_PROMPT
    text, problem = _template_default(source, True)
    if problem is None:
        return text
    recorded = _recorded_default(study, model, name, honesty)
    if recorded is not None:
        return recorded or None
    if not download:
        return TEMPLATE_READ_AT_RUN_TIME
    text, problem = _template_default(source, False)
    if problem is None:
        return text
    raise EmpersonaError(located_in_study(study, ("variants", name, "honesty"), problem,
                                          "Run where the model's tokenizer can be read (e.g. `hf download "
                                          f"{source}` first), or give the variant a system_prompt text to add the "
                                          "instruction to"))


def _template_source(study: StudyConfig, model: ModelSpec) -> str | None:
    """Whose chat template a model is asked through: the base's for the models served on it, a
    ``model:`` string's local folder (``hf/DIR``), else none (an API model)."""
    if model.served:
        return base_path(study)
    provider, _, rest = model.model_string.partition("/")
    from empersona.study.config import LOCAL_MODEL_PROVIDERS

    folder = Path(rest).expanduser()
    return str(folder.resolve()) if provider in LOCAL_MODEL_PROVIDERS and (folder / "config.json").is_file() else None


def _recorded_default(study: StudyConfig, model: ModelSpec, variant: str, honesty: str) -> str | None:
    """What a finished log of ``variant`` on ``model`` (its current version) sent before the
    honesty instruction ("" for the instruction alone; None when there is no such log)."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    log_dir = study.out / "logs" / model.name
    if not log_dir.is_dir():
        return None
    identity = model_identity(model)
    for info in list_eval_logs(str(log_dir), recursive=False):
        try:
            header = read_eval_log(info, header_only=True)
        except Exception:  # a log cut short by a kill
            continue
        sent = (header.eval.task_args or {}).get("system_prompt")
        if (header.status != "success" or (header.eval.metadata or {}).get("variant") != variant
                or not isinstance(sent, str) or not log_is_of_model(header.eval, model, identity,
                                                                     log_move(header.eval, study.out))):
            continue
        if sent == honesty:
            return ""
        if sent.endswith(f"\n\n{honesty}"):
            return sent.removesuffix(f"\n\n{honesty}")
    return None


@functools.lru_cache(maxsize=16)
def _template_default(source: str, local_only: bool) -> tuple[str | None, str | None]:
    """(the template's default system prompt, None), or (None, why it could not be read)."""
    from empersona.errors import EmpersonaError
    from empersona.evals.policy import template_default_system

    try:
        return template_default_system(source, local_only=local_only), None
    except EmpersonaError as err:
        return None, str(err)


def second_judge_jobs(study: StudyConfig, models: Sequence[ModelSpec], harm_done: dict[str, Path | None],
                      limit: int | None, harm: tuple[int, int]) -> list[EvalJob]:
    """The second judge's re-scoring of each model's harmfulness log (``evals.second_judge``):
    done when a log of it re-scored the harmfulness log that stands now, with this judge and these
    settings; no generations, one judge call per re-scored answer."""
    from empersona.evals.second_judge import SECOND_JUDGE

    assert study.second_judge is not None
    from empersona.redact import redacted

    # its model args as the log records them (secrets masked): another endpoint or setting is another judge
    args: dict[str, Any] = {"prompts": study.second_judge.prompts, "seed": study.seed,
                            "judge_args": redacted(study.second_judge.model_args)}
    prompts, samples = harm
    calls = min(prompts, study.second_judge.prompts or prompts) * samples
    judge = second_judge_model_string(study)
    identity = second_judge_identity(study)
    jobs = []
    for model in models:
        log_dir = study.out / "logs" / model.name
        harm_log = harm_done.get(model.name)
        done = None if harm_log is None else finished_log(log_dir, SECOND_JUDGE, {**args, "harm_log": str(harm_log)}, limit,
                                                          model, judge, study.out, judge_settings=identity)
        done, note, reask = with_failed_judge_calls(done, SECOND_JUDGE)
        jobs.append(EvalJob(model, SECOND_JUDGE, args, limit, log_dir, 0, calls, "done" if done else "todo", done, note,
                            reask))
    return jobs


JUDGE_CALL_FAILED = "judge call failed:"
"""How `evals.judge.ask_judge` records a judge call the client gave up on (a timeout, a refused
connection, an unreadable body, after the client's retries): worth asking again. A reply that came
back with an error (``judge error:``: a content filter, a prompt over the judge's context) would
come back the same, and a reply that could not be read is final."""
REASKED = "reasked_failed_judge_calls"
"""Log metadata of an evaluation made again to ask its failed judge calls: how many the log it
replaced had. A log that still has as many is not made again (a judge that fails for good)."""
REASKED_EXPERIMENTS = frozenset({"harmfulness", "em_classic", "self_assessment", "output_recognition", "second_judge"})
"""Experiments whose judge calls go through the call cache, so a re-made log asks the failed ones only."""


def failed_judge_calls(log: Path) -> int:
    """Samples of a finished log with a judge call the client gave up on (`JUDGE_CALL_FAILED`).
    Only logs whose header counts unscored samples are read (their sample summaries); the count
    is kept per file and modification time (a plan is made more than once per run)."""
    stat = log.stat()
    return _failed_judge_calls(str(log), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=512)
def _failed_judge_calls(path: str, _mtime_ns: int, _size: int) -> int:
    from inspect_ai.log import read_eval_log, read_eval_log_sample_summaries

    header = read_eval_log(path, header_only=True)
    if header.results is None or not any(score.unscored_samples for score in header.results.scores):
        return 0

    def failed(summary: Any) -> bool:
        reasons = (str((score.metadata or {}).get("reason") or "") for score in (summary.scores or {}).values())
        return any(JUDGE_CALL_FAILED in reason for reason in reasons)

    return sum(1 for summary in read_eval_log_sample_summaries(path) if failed(summary))


def with_failed_judge_calls(done: Path | None, experiment: str) -> tuple[Path | None, str, int | None]:
    """A finished log stands unless judge calls the client gave up on are in it (an API outage):
    then the evaluation is made again, once per log: its subject answers and every judgement that
    came back replay from inspect's call cache, the failed calls are asked. A log that was itself
    made for that and has as many failed calls is kept, and the note says so. Returns the log
    that stands, the note, and the failed calls the evaluation is made again for (else None)."""
    if done is None or experiment not in REASKED_EXPERIMENTS:
        return done, "", None
    failed = failed_judge_calls(done)
    if not failed:
        return done, "", None
    from inspect_ai.log import read_eval_log

    before = (read_eval_log(str(done), header_only=True).eval.metadata or {}).get(REASKED)
    if isinstance(before, int) and failed >= before:
        return done, (f"{failed} sample(s) of {done.name} have a judge call that failed again when asked again: kept "
                      "(move the log out of logs/ to make the evaluation anew)"), None
    return None, (f"{failed} sample(s) of {done.name} have a judge call that failed: made again, asking only those "
                  "(the rest comes from inspect's call cache; with the cache cleared or on another machine, everything "
                  "is asked again)"), failed


JUDGED_EXPERIMENTS = frozenset({"harmfulness", "em_classic", "self_assessment", "output_recognition", "score_prediction"})
"""Experiments whose logs hold the judge's verdicts (self-assessment: its judge language
detector; output recognition: its contrast foils; score prediction: the judge's scores as its
ground truth); another judge means evaluating them again."""


def judge_model_string(study: StudyConfig) -> str:
    """The judge's inspect model string as the logs record it (the scripted judge's own for ``scripted``)."""
    return SCRIPTED_JUDGE_MODEL if study.judge == SCRIPTED_JUDGE else study.judge


def second_judge_model_string(study: StudyConfig) -> str:
    """The second judge's model string as its logs record it (``SCRIPTED_SECOND_JUDGE_MODEL`` for ``scripted``)."""
    assert study.second_judge is not None
    return SCRIPTED_SECOND_JUDGE_MODEL if study.second_judge.model == SCRIPTED_JUDGE else study.second_judge.model


def matched_partner(model: ModelSpec, models: Sequence[ModelSpec]) -> ModelSpec | None:
    """Whose harmfulness log gives ``model`` its matched foils: the base model for a fine-tune or
    an extra model; for the base its first fine-tune, else its first extra adapter, else its first
    extra model string (None when the study has no other model)."""
    if model.kind != "base":
        return next((spec for spec in models if spec.kind == "base"), None)
    for kind in ("fine-tune", "adapter", "model"):  # the closest to the base first: another adapter of it
        partner = next((spec for spec in models if spec.kind == kind), None)
        if partner is not None:
            return partner
    return None


def base_spec(models: Sequence[ModelSpec]) -> ModelSpec:
    """The study's base model among ``models``."""
    return next(spec for spec in models if spec.kind == "base")


def uses_matched_log(args: dict[str, Any]) -> bool:
    """Whether output recognition with these arguments takes its matched foils from the study's partner."""
    return "matched" in as_list(args.get("foils"), list(DEFAULT_FOILS)) and not args.get("matched_log")


def harm_logs_read(experiment: str, model: ModelSpec, models: Sequence[ModelSpec],
                   args: dict[str, Any] | None = None) -> dict[str, str]:
    """The harmfulness logs ``experiment`` on ``model`` reads, as {task argument: model name}:
    its own (``harm_log``) and, for output recognition with matched foils from the study, the
    partner's (``matched_log``)."""
    from empersona.evals.battery import reads_harm_log

    if not reads_harm_log(experiment, args or {}):
        return {}
    read = {"harm_log": model.name}
    partner = matched_partner(model, models)
    if experiment == "output_recognition" and partner is not None and uses_matched_log(args or {}):
        read["matched_log"] = partner.name
    return read


JUDGE_RUBRIC_TOKENS = 1300
"""About the harmfulness rubric's length in tokens (5,226 characters); score prediction shows it too."""


def estimated_cost(plan: Plan, prompt_tokens: int = 200) -> float | None:
    """A rough dollar figure from the study's prices, every answer at its full length: an upper
    bound for planning.

    Subject prompts count ``prompt_tokens`` each, plus what they show: the answers of a framed
    two-AI question, output recognition's two answers, score prediction's rubric
    (``JUDGE_RUBRIC_TOKENS``) and answer, each answer at the harmfulness ``max_tokens``. Each answer
    counts its experiment's ``max_tokens``. A judge prompt counts the rubric and one answer; a judge
    reply ``HARM_JUDGE_MAX_TOKENS``.
    """
    from empersona.evals.judge import HARM_JUDGE_MAX_TOKENS

    prices = plan.study.prices
    if prices is None:
        return None
    per_million = 1e-6
    answer_tokens = int(task_args(plan.study, "harmfulness").get("max_tokens", _task_default("harmfulness", "max_tokens"))
                        ) if "harmfulness" in plan.study.experiments else _task_default("harmfulness", "max_tokens")
    shown_by_experiment = {"output_recognition": 2 * answer_tokens, "score_prediction": JUDGE_RUBRIC_TOKENS + answer_tokens}
    subject = 0.0
    for job in plan.eval_jobs:
        if job.status != "todo" or job.experiment == "second_judge":
            continue
        shown = shown_by_experiment.get(job.experiment, 0)
        if job.experiment == "two_ai" and job.task_args.get("framing", "self") != "self":
            shown = int(job.task_args.get("answers", 3)) * answer_tokens
        answer = int(job.task_args.get("max_tokens", _task_default(job.experiment, "max_tokens")))
        subject += job.generations * ((prompt_tokens + shown) * prices.subject_input + answer * prices.subject_output)
    judge_prompt = JUDGE_RUBRIC_TOKENS + answer_tokens
    second = sum(job.judge_calls for job in plan.eval_jobs if job.status == "todo" and job.experiment == "second_judge")
    judge = (plan.judge_calls - second) * (judge_prompt * prices.judge_input + HARM_JUDGE_MAX_TOKENS * prices.judge_output)
    judge += second * (judge_prompt * prices.second_judge_input + HARM_JUDGE_MAX_TOKENS * prices.second_judge_output)
    return (subject + judge) * per_million


def print_plan(plan: Plan) -> None:
    """The dry-run view: training jobs, evaluation jobs, call totals and the cost estimate."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    study = plan.study
    judge = "built-in scripted judge (offline smoke runs only)" if study.judge == SCRIPTED_JUDGE else study.judge
    if study.second_judge is not None:
        second = study.second_judge
        judge += (f"; second judge {'built-in scripted second judge' if second.model == SCRIPTED_JUDGE else second.model} "
                  f"(re-scores {f'{second.prompts} prompts' if second.prompts else 'every prompt'} of each harmfulness log)")
    console.print(f"[bold]study[/bold] {study.name}: base {study.base_model}, judge {judge}, "
                  f"provider {study.provider}, system prompt {study.system_prompt!r}, run folder {study.out}")
    train = Table(title="training jobs")
    for column in ("adapter", "domain", "seed", "status", "why"):
        train.add_column(column)
    for job in plan.train_jobs:
        train.add_row(job.out.name, job.label, str(job.seed), job.status, job.why)
    console.print(train)
    extra = [model for model in plan.models if model.kind in ("adapter", "model")]
    if extra:
        table = Table(title="models the study did not train (models:)")
        for column in ("model", "kind", "source", "asked as"):
            table.add_column(column)
        for model in extra:
            table.add_row(model.name, model.kind or "", str(model.source or "-"), model.model_string)
        console.print(table)
    evals = Table(title="evaluations (in order)")
    variants = bool(study.variants)
    for column in ("model", "experiment", *(("variant",) if variants else ()), "limit", "generations", "judge calls", "status"):
        evals.add_column(column, justify="right" if column in ("generations", "judge calls", "limit") else "left")
    for job in plan.eval_jobs:
        evals.add_row(job.model.name, job.experiment, *((job.variant or "-",) if variants else ()), str(job.limit or "all"),
                      f"{job.generations:,}", f"{job.judge_calls:,}", job.status)
    console.print(evals)
    for job in plan.eval_jobs:
        if job.note:
            console.print(f"{job.label} on {job.model.name}: {job.note}")
    if study.probes is not None:
        console.print("probes: after the battery, every model with local weights, at one count of answers per harm "
                      "class for all (RUN_DIR/probes/<model>/; those already probed with these settings are kept)")
    if study.checkpoints:
        pending = [job.out.name for job in plan.train_jobs if job.status != "done"]
        if pending:
            every = int(study.train.get("save_steps", 50))
            console.print(f"checkpoints: true: the checkpoints of {len(pending)} fine-tune(s) not trained yet are not in "
                          f"these counts (one every {every} steps each, evaluated like a fine-tune once trained)")
    console.print(f"to do: {sum(j.status != 'done' for j in plan.train_jobs)} training job(s), "
                  f"{sum(j.status == 'todo' for j in plan.eval_jobs)} evaluation(s), "
                  f"{plan.generations:,} generations, {plan.judge_calls:,} judge calls")
    cost = estimated_cost(plan)
    if cost is not None:
        console.print(f"estimated cost (upper bound at full output length): ${cost:,.2f}")
