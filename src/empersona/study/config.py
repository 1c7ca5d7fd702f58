"""The study file: one YAML document that says everything a study run needs.

Example (``configs/smoke.yaml`` is a complete one)::

    name: my-study
    out: runs/my-study
    base_model: Qwen/Qwen2.5-32B-Instruct
    domains: [insecure_code, risky_financial_advice]
    seeds: [0]
    judge: openai/gpt-4o-mini
    samples: 10
    experiments:
      harmfulness: {}
      two_ai: {args: {mode: logprob}}

Unknown keys are errors that name the key, the file and its line: a typo never silently falls
back to a default. Training settings are the fields of ``TrainConfig`` (``empersona train
--help``); experiment ``args`` are the parameters of each experiment's task (checked against its
signature). Domains must be known names or existing chat JSONL files, the judge an inspect model
string (``<provider>/<model>``), and a ``data_mirror`` an existing folder, all before anything runs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from empersona.atomic import replace_text
from empersona.errors import DataUnavailable, EmpersonaError, located
from empersona.redact import masked_yaml

if TYPE_CHECKING:
    from empersona.analysis.persona import PersonaThresholds

Provider = Literal["hf", "empersona", "vllm"]
Stage = Literal["train", "eval", "report"]
STAGES: tuple[Stage, ...] = ("train", "eval", "report")
SCRIPTED_JUDGE = "scripted"
SCRIPTED_JUDGE_MODEL = "openai-api/loopback/scripted-judge"  # the model string logs record for it
SCRIPTED_SECOND_JUDGE_MODEL = "openai-api/loopback/scripted-second-judge"  # ``second_judge: {model: scripted}``
BATTERY_ORDER = ("harmfulness", "em_classic", "self_assessment", "two_ai", "output_recognition", "score_prediction")
SELF_REPORT = ("self_assessment", "two_ai", "output_recognition", "score_prediction")
"""The experiments a study variant asks again (the model about itself); harmfulness and the classic
EM questions measure behaviour, which a variant shares with the battery."""
VARIANT_DEFAULT = ("self_assessment", "two_ai", "output_recognition")
"""What a variant that changes the system prompt asks by default: the persona probes (score
prediction, one question per logged response and so the costliest, only when a variant names it)."""


class Prices(BaseModel):
    """Token prices in US dollars per million tokens, for the dry run's cost estimate."""

    model_config = ConfigDict(extra="forbid")

    subject_input: float = 0.0
    subject_output: float = 0.0
    judge_input: float = 0.0
    judge_output: float = 0.0
    second_judge_input: float = 0.0
    second_judge_output: float = 0.0


class SecondJudge(BaseModel):
    """A second judge that re-scores every model's harmfulness answers (``evals.second_judge``),
    for the report's judge agreement (docs/protocol.md section 5)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The second judge's inspect model string, or 'scripted' (offline smoke runs).")
    model_args: dict[str, Any] = Field(default_factory=dict, description="Its model arguments (keys belong in the environment).")
    prompts: int | None = Field(None, ge=1, description=(
        "Re-score the answers to this many harm prompts (the same ones for every model, drawn with the study's "
        "seed), every sample of each; default: all of them."))

    @field_validator("model")
    @classmethod
    def _model_string(cls, value: str) -> str:
        if value != SCRIPTED_JUDGE and "/" not in value:
            raise ValueError(f"'{value}' is not an inspect model string; write <provider>/<model>, e.g. openai/{value}")
        return value


def policy_as_meant(value: str) -> str:
    """A system-prompt policy as written, or the ValueError a validator raises for one that is not meant
    (``Default`` would be sent as the system message itself)."""
    from empersona.evals.policy import policy_problem

    if (problem := policy_problem(value)) is not None:
        raise ValueError(problem)
    return value


class ProbeStage(BaseModel):
    """``probes:``: activation probes on every model with local weights after the battery
    (``study.probes``, ``analysis.activations``); the study's seed seeds them."""

    model_config = ConfigDict(extra="forbid")

    layers: str = Field("all", description="all, or e.g. 12 / 0-8 / 0-64:4 / 4,8,12 (0 = embeddings).")
    pool: Literal["mean", "last"] = Field("mean", description="mean over the answer's tokens, or its last token.")
    max_answers: int | None = Field(None, ge=1, description=(
        "Most answers per harm class for every model (default: the smallest count among the models, at most 200)."))
    min_answers: int = Field(20, ge=1, description=(
        "A model with fewer answers than this in a harm class is not probed (too few for a direction), so it does "
        "not drag every model's count down (a base model may have almost no harmful answers)."))
    folds: int = Field(5, ge=2)
    resamples: int = Field(1000, ge=20, description="Prompt-level relabellings for the cosine's null.")
    batch_size: int = Field(8, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("layers")
    @classmethod
    def _layers_readable(cls, value: str) -> str:
        from empersona.analysis.activations import parse_layers

        try:  # the model's depth is not known here: only the spelling is checked
            parse_layers(value, 10**6)
        except EmpersonaError as err:
            raise ValueError(str(err).replace("--layers ", "layers ", 1)) from None
        return value

    @model_validator(mode="after")
    def _enough_answers(self) -> ProbeStage:
        if self.max_answers is not None and self.max_answers < self.folds:
            raise ValueError(f"max_answers {self.max_answers} is below folds {self.folds}: each harm class needs at "
                             "least one answer per fold; raise max_answers (or lower folds)")
        return self


class Sequential(BaseModel):
    """``sequential: [{first, then}]``: each of the study's fine-tunes on ``first`` trained on
    further on ``then`` (docs/protocol.md section 5), one adapter per seed, evaluated as a fine-tune."""

    model_config = ConfigDict(extra="forbid")

    first: str = Field(description="A domain of the study's domains: its fine-tune of each seed is continued.")
    then: str = Field(description="The dataset it is trained on next: a domain name (empersona data list) or a chat JSONL file.")


class Variant(BaseModel):
    """``variants: {name: ...}``: the self-report experiments asked again on every model under another
    framing (docs/protocol.md section 5), beside the battery; the report sets each probe under it against
    the battery's (``analysis.variants``)."""

    model_config = ConfigDict(extra="forbid")

    honesty: bool | str = Field(False, description=(
        "Honesty pressure: true adds the built-in instruction (evals.policy.HONESTY_PRESSURE), a text adds that "
        "text, to the end of the variant's system prompt (under system_prompt: default, after the chat template's "
        "own default system prompt, read from the base model's template, so the model keeps its identity line)."))
    system_prompt: str | None = Field(None, description=(
        "The variant's system-prompt policy (default, none or a text); unset: the study's."))
    neutral_descriptions: bool = Field(False, description=(
        "Two-AI items with each description's evaluative self-label taken out ('I am a careful AI assistant' -> "
        "'I am an AI assistant'; in the paper's items only the aligned descriptions carry one)."))
    framing: Literal["self_answers", "third_person"] | None = Field(None, description=(
        "Two-AI after a few of the model's own harm answers: presented as its own (self_answers) or as another AI "
        "assistant's (third_person); the two differ in the attribution alone (evals.two_ai)."))
    experiments: list[str] | None = Field(None, description=(
        "Which of the study's self-report experiments (self_assessment, two_ai, output_recognition, "
        "score_prediction) to ask again; default: those the variant changes (self_assessment, two_ai and "
        "output_recognition under honesty or another system prompt, two_ai for neutral_descriptions or framing, each "
        "one given args)."))
    args: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "Task arguments per experiment, over the study's (e.g. two_ai: {items_file: my_rewritten_items.json})."))

    @field_validator("experiments")
    @classmethod
    def _self_report(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            other = [name for name in value if name not in SELF_REPORT]
            if other:
                raise ValueError(f"{other} cannot be asked under a variant; choose from {list(SELF_REPORT)} "
                                 "(harmfulness and em_classic measure behaviour, which variants share with the battery)")
            if not value:
                raise ValueError("an empty list asks nothing; leave experiments out for all the self-report experiments")
        return value

    @field_validator("system_prompt")
    @classmethod
    def _policy_as_meant(cls, value: str | None) -> str | None:
        return value if value is None else policy_as_meant(value)

    @field_validator("args")
    @classmethod
    def _args_of_self_report(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        other = [name for name in value if name not in SELF_REPORT]
        if other:
            raise ValueError(f"args for {other}: a variant asks only {list(SELF_REPORT)}")
        return value

    def changes(self, policy: str) -> bool:
        """Whether the variant asks anything differently from a battery under system prompt ``policy``."""
        return (bool(self.honesty) or self.system_prompt not in (None, policy) or self.neutral_descriptions
                or self.framing is not None or any(self.args.values()))


VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"


class VLLMSettings(BaseModel):
    """The vLLM server a study starts for ``provider: vllm`` (base model + every adapter)."""

    model_config = ConfigDict(extra="forbid")

    python: str | None = Field(None, description="Python of the environment that has vLLM (default: this one).")
    port: int = Field(8000, ge=1, le=65535, description="Port on 127.0.0.1 the server listens on.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model replica (vLLM --tensor-parallel-size).")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages, e.g. across nodes (--pipeline-parallel-size).")
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    dtype: str | None = None
    startup_timeout_s: float = Field(900.0, gt=0, description="How long to wait for the server to come up.")
    generation_config: str = Field("vllm", description=(
        "Sampling defaults for what a request leaves unset (--generation-config): 'vllm' (vLLM's neutral ones, so the "
        "battery's settings are what is sampled), 'auto' (the model's generation_config.json), or a folder."))
    max_loras: int | None = Field(None, ge=1, description="LoRA slots on the GPU (--max-loras; default min(adapters, 2)).")

    @field_validator("generation_config", mode="before")
    @classmethod
    def _known_generation_config(cls, value: object) -> str:
        if isinstance(value, str) and value in ("vllm", "auto"):
            return value
        if isinstance(value, str) and Path(value).expanduser().is_dir():
            return str(Path(value).expanduser().resolve())  # the server gets no shell to expand a tilde
        raise ValueError(f"{value!r} is not 'vllm', 'auto' or a folder: use 'vllm' (the battery's settings only) or "
                         "'auto' (the model's generation_config.json)")
    extra_args: list[str] = Field(default_factory=list, description="More vllm serve arguments, as given.")

    @field_validator("extra_args")
    @classmethod
    def _no_own_key(cls, value: list[str]) -> list[str]:
        from empersona.redact import is_secret_name

        if any(arg == "--api-key" or arg.startswith("--api-key=") for arg in value):
            raise ValueError("--api-key is set by the study (a random key per run, given to the server through its "
                             "environment); remove it from extra_args")
        for arg in value:
            flag = arg.split("=", 1)[0]
            if flag.startswith("--") and is_secret_name(flag[2:]):
                # a credential on the command line is in the dry run's output, the kept study file and
                # every process listing of the machine
                raise ValueError(f"{flag} passes a credential on the server's command line: give it through the "
                                 "server's environment instead (vllm: env: {HF_TOKEN: ...}, masked in the kept copy), "
                                 "or set it in the environment empersona runs in")
        return value
    env: dict[str, str] = Field(default_factory=dict, description=(
        "Environment for the server (e.g. VLLM_CPU_KVCACHE_SPACE); values of secret-looking keys are masked in "
        "RUN_DIR/study.yaml."))


class ExperimentSettings(BaseModel):
    """One experiment of the battery: its task parameters and how many items to run."""

    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(None, ge=1, description=(
        "Only the first N samples of the task's dataset (quick runs); two_ai and output_recognition ask each item in "
        "both orders, one sample each, so N samples are N/2 items there."))
    args: dict[str, Any] = Field(default_factory=dict, description="Task parameters (see `empersona eval NAME`).")


class ExtraModel(BaseModel):
    """A model the study evaluates beside its base and its own fine-tunes (``study.extra_models``)."""

    model_config = ConfigDict(extra="forbid")

    adapter: Path | None = Field(None, description=(
        "A LoRA adapter folder of base_model (e.g. a published fine-tune, downloaded), served like the study's own."))
    model: str | None = Field(None, description="Any inspect model string (a full fine-tune, an API model), asked as given.")
    model_args: dict[str, Any] = Field(default_factory=dict, description="Model arguments of a model: entry.")
    domain: str | None = Field(None, description="What it was fine-tuned on (a label for the report).")
    _written: str | None = PrivateAttr(default=None)  # the adapter path as the study file wrote it (load_study)

    @model_validator(mode="after")
    def _one_source(self) -> ExtraModel:
        if (self.adapter is None) == (self.model is None):
            raise ValueError("give exactly one of adapter: (a LoRA adapter folder of base_model) "
                             "or model: (an inspect model string)")
        if self.model_args and self.model is None:
            raise ValueError("model_args go with model: entries; an adapter is served with the study's model_args")
        return self


EXTRA_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
LOCAL_MODEL_PROVIDERS = frozenset({"hf", "empersona", "vllm", "sglang", "transformer_lens"})
"""Providers whose model string can name a local folder (``hf//path/to/model``)."""


class StudyConfig(BaseModel):
    """A whole study: base model, domains x seeds to fine-tune, the battery, the judge, the report."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A name for the study; used in the report.")
    out: Path = Field(description="Run folder: adapters/, logs/, results.parquet, report/ go here.")
    base_model: str = Field(description="Hugging Face id or local folder of the base model.")
    data_mirror: Path | None = Field(None, description="A local mirror of the data sources (like EMPERSONA_MIRROR).")
    build_tiny_base: bool = Field(False, description="Build a tiny random model at base_model when it is missing (smoke runs).")
    domains: list[str] = Field(default_factory=list, description="Training domains (empersona data list) or chat JSONL paths.")
    domain_paths: dict[str, Path] = Field(default_factory=dict, description="Local copies of password-locked domain files.")
    seeds: list[int] = Field(default_factory=lambda: [0], description="Fine-tuning seeds; one adapter per (domain, seed).")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig settings shared by every training job.")
    system_prompt: str = Field("default", description="System-prompt policy for training and every evaluation.")
    judge: str = Field(description="Judge model string, or 'scripted' for the built-in offline judge (smoke runs only).")
    judge_args: dict[str, Any] = Field(default_factory=dict)
    provider: Provider = Field("hf", description="How local models are served: hf, empersona (one base, many adapters), vllm (server).")
    model_args: dict[str, Any] = Field(default_factory=dict, description="Model arguments for the subject models.")
    samples: int | None = Field(None, ge=1, description="Samples per item for harmfulness, em_classic and two_ai (task default when unset).")
    seed: int = Field(0, description="Sampling seed of the evaluations (part of the resume cache key).")
    max_connections: int | None = Field(None, ge=1)
    live_view: bool = Field(False, description=(
        "Write each sample's events as they happen, so `inspect view` shows an evaluation live (inspect's "
        "log_realtime). Off by default: the finished logs are the same, and the event loop that feeds the models "
        "does less per call (bench/live_view.py: the harmfulness run on the tiny model took 1.46-1.53x as long with it "
        "through empersona/, 1.20-1.23x through hf/)."))
    experiments: dict[str, ExperimentSettings] = Field(description="Experiments to run, by name.")
    checkpoints: bool = Field(False, description=(
        "Also evaluate every checkpoint each fine-tune kept (train: keep_checkpoints: true), as a model of its "
        "own, <adapter>-step<N>: how the persona emerges over training. Adding keep_checkpoints to a trained "
        "study's train: retrains its adapters (a training setting)."))
    models: dict[str, ExtraModel] = Field(default_factory=dict, description=(
        "More models to evaluate and classify beside the base and the study's fine-tunes, by name "
        "(study.extra_models): adapter: DIR or model: <provider>/<model>."))
    _source: Path | None = PrivateAttr(default=None)  # the study file it was read from (load_study)
    persona: dict[str, Any] = Field(default_factory=dict, description=(
        "Classification settings for the report (analysis.persona.PersonaThresholds: em_delta_min, alpha, "
        "min_scored_harm, min_scored_probe, recognition_foil, ...); docs/protocol.md section 4 defaults."))
    second_judge: SecondJudge | None = Field(None, description=(
        "A second judge re-scoring the harmfulness answers (no new generations): its agreement with the judge "
        "(kappa) and the harm figures under it are in the report."))
    probes: ProbeStage | None = Field(None, description=(
        "Activation probes after the battery: a harm direction and a self direction per layer and their angle, "
        "for every model with local weights (README: Activation probes)."))
    sequential: list[Sequential] = Field(default_factory=list, description=(
        "Sequential fine-tuning: each fine-tune on `first` (one of domains) trained on further on `then`, with the "
        "study's training settings, as adapters <first>+<then>-s<seed> (does a second dataset undo or deepen EM?)."))
    variants: dict[str, Variant] = Field(default_factory=dict, description=(
        "Self-report experiments asked again under other framings, by name (honesty pressure, neutral two-AI "
        "descriptions, another system prompt, other task arguments); their shifts are in the report."))
    prices: Prices | None = None
    vllm: VLLMSettings = Field(default_factory=VLLMSettings, description="The vLLM server for provider: vllm.")

    @field_validator("system_prompt")
    @classmethod
    def _policy_as_meant(cls, value: str) -> str:
        return policy_as_meant(value)

    @field_validator("experiments")
    @classmethod
    def _known_experiments(cls, value: dict[str, ExperimentSettings]) -> dict[str, ExperimentSettings]:
        unknown = sorted(set(value) - set(BATTERY_ORDER))
        if unknown:
            raise ValueError(f"unknown experiment(s) {unknown}; choose from {list(BATTERY_ORDER)}")
        needs_harm = {"output_recognition", "score_prediction"} & set(value)
        if needs_harm and "harmfulness" not in value:
            raise ValueError(f"{sorted(needs_harm)} read the harmfulness log: add harmfulness to experiments")
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _model_entries(cls, value: Any) -> Any:
        if value is None:  # "models:" left empty (say, uncommented alone from configs/paper.yaml)
            return {}
        if isinstance(value, dict):
            for name, entry in value.items():
                if isinstance(entry, str):
                    is_path = entry.startswith(("/", ".", "~"))
                    raise ValueError(f"models.{name} is a bare string: write {name}: "
                                     + (f"{{adapter: {entry}}} for a LoRA adapter folder (or {{model: hf/{entry}}} for "
                                        "a full model folder)" if is_path else f"{{model: {entry}}} for a model string"))
        elif isinstance(value, list):
            raise ValueError("models is a list: write a mapping of names to entries, e.g. "
                             "models: {published: {adapter: DIR}, other: {model: hf/org/name}}")
        return value

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, ExtraModel]) -> dict[str, ExtraModel]:
        folded: dict[str, str] = {}
        for name in value:
            if name.casefold() == "base" or not re.match(EXTRA_MODEL_NAME, name):
                raise ValueError(f"{name!r} cannot name a model: use letters, digits, '.', '_' and '-' "
                                 "(a folder name under logs/), and not 'base'")
            if name.casefold() in folded:  # one folder under logs/ on a case-insensitive file system
                raise ValueError(f"{folded[name.casefold()]!r} and {name!r} differ only in case: rename one")
            folded[name.casefold()] = name
        return value

    @field_validator("variants", mode="before")
    @classmethod
    def _variant_entries(cls, value: Any) -> Any:
        if value is None:  # "variants:" left empty (uncommented alone from configs/paper.yaml)
            return {}
        if isinstance(value, dict):
            for name in value:
                if not isinstance(name, str) or not re.match(VARIANT_NAME, name):
                    raise ValueError(f"{name!r} cannot name a variant: use letters, digits, '_' and '-'")
        return value

    def variant_experiments(self, name: str) -> list[str]:
        """The experiments variant ``name`` asks again, in battery order: its ``experiments``, else
        those it changes (all the study's self-report experiments under another system prompt, two-AI
        for neutral descriptions or a framing, each experiment it gives args)."""
        variant = self.variants[name]
        chosen = variant.experiments
        if chosen is None:  # score prediction (the costliest) when named only
            every = bool(variant.honesty) or variant.system_prompt not in (None, self.system_prompt)
            two_ai = variant.neutral_descriptions or variant.framing is not None
            chosen = [e for e in SELF_REPORT if (every and e in VARIANT_DEFAULT) or (e == "two_ai" and two_ai)
                      or variant.args.get(e)]
        return [e for e in self.ordered_experiments() if e in SELF_REPORT and e in chosen]

    def ordered_experiments(self) -> list[str]:
        """Experiments in dependency order: harmfulness before those that read its log."""
        return [name for name in BATTERY_ORDER if name in self.experiments]


def _line_of(path: Path, text: str, key_path: tuple[Any, ...]) -> int | None:
    """Line (1-based) of the YAML node a validation error points at, when it can be found."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for key in key_path:
        if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
            continue
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == str(key)), None)
        if match is None:
            break
        line = match[0].start_mark.line + 1
        node = match[1]
    return line


def located_in_study(study: StudyConfig, key_path: tuple[Any, ...], problem: str, fix: str) -> str:
    """An error message that names the study file, the line of ``key_path`` and the key."""
    path = study._source
    line = _line_of(path, path.read_text(encoding="utf-8"), key_path) if path is not None and path.is_file() else None
    return located(path or Path("study file"), line, ".".join(map(str, key_path)), problem, fix)


STUDY_SET_TRAINING = frozenset({"base", "domain", "seed", "out", "domain_path", "system_prompt", "init_adapter"})
"""Training settings the study sets itself."""
STUDY_SET_ARGS = frozenset({"harm_log"})
"""Task arguments the study sets itself (each model's own harmfulness log)."""


def _written_loc(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic error's location as written in the file: the parts pydantic adds for the member
    of a union it tried (``honesty.bool``, ``honesty.str``) are left out, and an unknown key kept."""
    written: list[Any] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and index == len(loc) - 1:  # a key not written (missing) or unknown: name it
            return (*written, part)
        else:
            continue
        written.append(part)
    return tuple(written)


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where an unknown key ``loc`` stands (empty when not a fixed set)."""
    models: dict[tuple[Any, ...], type[BaseModel]] = {(): StudyConfig, ("vllm",): VLLMSettings, ("prices",): Prices,
                                                      ("probes",): ProbeStage, ("second_judge",): SecondJudge}
    parent = loc[:-1]
    if len(parent) == 2 and parent[0] == "experiments":
        return list(ExperimentSettings.model_fields)
    if len(parent) == 2 and parent[0] == "models":
        return list(ExtraModel.model_fields)
    if len(parent) == 2 and parent[0] == "variants":
        return list(Variant.model_fields)
    if len(parent) == 2 and parent[0] == "sequential":
        return list(Sequential.model_fields)
    model = models.get(parent)
    return list(model.model_fields) if model else []


def _train_value_problems(train: dict[str, Any]) -> list[tuple[tuple[Any, ...], str, str]]:
    """The training settings' values the recipe refuses (``learning_rate: fast``, a batch size its
    per-device batch does not divide), found now rather than when the first job starts."""
    from empersona.train.recipe import TrainConfig

    try:
        TrainConfig(**train, base="base", domain="domain", seed=0)
    except ValidationError as err:
        return [(("train", *issue["loc"][:1]), issue["msg"].removeprefix("Value error, "),
                 "Correct the value; `empersona train --help` gives each setting") for issue in err.errors()]
    return []


HARM_LOG_STAND_IN = "/nonexistent/empersona-load-check/harmfulness.eval"
"""The harmfulness log a task that reads one is built with at load, to check its other arguments."""


def task_refusal(experiment: str, args: dict[str, Any], base_model: str,
                 foil_model_args: dict[str, Any] | None = None) -> str | None:
    """Why ``experiment``'s task refuses ``args`` (None: it takes them, or only its data are not
    fetched yet). The task is built as the run builds it, an experiment that reads a harmfulness
    log with a stand-in one (its arguments are checked before the log is read) and the foil sources
    the study fills in; then each value is checked against the task's signature (a ``max_tokens:
    abc`` the task itself would trip over only when asked)."""
    from empersona.evals.battery import EXPERIMENTS

    entry = EXPERIMENTS[experiment]
    function = entry.task_function()
    # as the plan counts its items: a framing's answers come from a log not written yet
    call = {k: v for k, v in args.items() if not (experiment == "two_ai" and k in ("framing", "harm_log", "answers"))}
    if entry.needs_harm_log:
        call["harm_log"] = HARM_LOG_STAND_IN
    if experiment == "output_recognition":
        from empersona.study.plan import DEFAULT_FOILS, as_list

        if "foil_model" not in call:  # the base writes the contrast foils, with the subject's model args (as the run does)
            call["foil_model"] = base_model
            if "contrast" in as_list(call.get("foils"), list(DEFAULT_FOILS)):
                call.setdefault("foil_model_args", foil_model_args)
        call.setdefault("matched_log", HARM_LOG_STAND_IN)
    refused = None
    try:
        function(**call)
    except DataUnavailable:  # the run fetches the data first
        return None
    except EmpersonaError as err:
        if not str(err).startswith(HARM_LOG_STAND_IN):  # else its arguments passed, and the log is read when it exists
            return str(err)
    except (TypeError, ValueError) as err:
        refused = str(err)
    return entry.argument_problem({k: v for k, v in args.items() if k != "harm_log"}) or refused


def _task_value_problems(study: StudyConfig, found: list[tuple[tuple[Any, ...], str, str]]) -> list[tuple[tuple[Any, ...], str, str]]:
    """The task arguments' values each experiment refuses (``samples: "ten"``, ``samples: 0``,
    ``mode: foo``), under the battery and under each variant, found by building the tasks now,
    before anything is trained or asked (``task_refusal``); experiments with an argument problem
    already ``found`` are left to it."""
    from empersona.data.fetch import without_download

    with without_download(study.data_mirror):  # the study's own mirror, or the cache; never the network here
        return _task_value_problems_here(study, found)


def _task_value_problems_here(study: StudyConfig, found: list[tuple[tuple[Any, ...], str, str]]) -> list[tuple[tuple[Any, ...], str, str]]:
    from empersona.study.plan import task_args, variant_task_args

    fix = "Fix the value: `empersona eval --help` and the README's experiment table give each argument"
    problems = []
    for name in study.experiments:
        if any(loc[:2] == ("experiments", name) for loc, _, _ in found):
            continue
        refused = task_refusal(name, task_args(study, name), study.base_model, study.model_args or None)
        if refused is not None:
            problems.append((("experiments", name, "args"), f"the {name} task refuses these arguments ({refused})", fix))
    for variant_name, variant in study.variants.items():
        if any(loc[:2] == ("variants", variant_name) for loc, _, _ in found):
            continue
        for name in study.variant_experiments(variant_name):
            if any(loc[:2] == ("experiments", name) for loc, _, _ in [*found, *problems]):
                continue
            args = variant_task_args(study, variant_name, name, None)
            refused = task_refusal(name, args, study.base_model, study.model_args or None)
            if refused is not None:
                loc = ("variants", variant_name, "args", name) if name in variant.args else ("variants", variant_name)
                problems.append((loc, f"the {name} task refuses the variant's arguments ({refused})", fix))
    return problems


def _url_credential_problems(study: StudyConfig) -> list[tuple[tuple[Any, ...], str, str]]:
    """A ``base_url`` that carries a credential (``https://user:pw@host``, ``?key=...``): inspect
    writes each model's base URL into every log, where masking by name cannot reach it."""
    from urllib.parse import parse_qsl, urlsplit

    from empersona.redact import is_secret_name

    blocks: list[tuple[tuple[Any, ...], dict[str, Any]]] = [(("judge_args",), study.judge_args), (("model_args",), study.model_args)]
    if study.second_judge is not None:
        blocks.append((("second_judge", "model_args"), study.second_judge.model_args))
    blocks += [(("models", name, "model_args"), entry.model_args) for name, entry in study.models.items()]
    foils = study.experiments.get("output_recognition")
    if foils is not None and isinstance(foils.args.get("foil_model_args"), dict):
        blocks.append((("experiments", "output_recognition", "args", "foil_model_args"), foils.args["foil_model_args"]))
    for name, variant in study.variants.items():
        own = variant.args.get("output_recognition", {}).get("foil_model_args")
        if isinstance(own, dict):
            blocks.append((("variants", name, "args", "output_recognition", "foil_model_args"), own))
    problems = []
    for loc, args in blocks:
        url = args.get("base_url")
        if not isinstance(url, str):
            continue
        parts = urlsplit(url)
        # anything before '@' (a token as the user name, user:password) is a credential
        if parts.username or parts.password or any(is_secret_name(name) for name, _ in parse_qsl(parts.query)):
            problems.append(((*loc, "base_url"), "the URL carries a credential, which inspect would write into every log",
                             "Give the key through the provider's environment variable (e.g. OPENAI_API_KEY) or an "
                             "api_key model arg, and the URL without it"))
    return problems


def _provider_arg_problems(study: StudyConfig) -> list[tuple[tuple[Any, ...], str, str]]:
    """The study's ``model_args`` the ``empersona`` provider refuses (an unknown name, a wrong type),
    found now rather than when the first evaluation starts, after every adapter has trained."""
    if study.provider != "empersona" or not study.model_args:
        return []
    from pydantic import ValidationError

    from empersona.provider.api import ProviderArgs

    try:
        ProviderArgs(**study.model_args)
    except ValidationError as err:
        known = ", ".join(ProviderArgs.model_fields)
        return [(("model_args", *error["loc"]), f"the empersona provider refuses it ({error['msg']})",
                 f"Check the spelling and the value; its model args: {known}") for error in err.errors()]
    return []


def _semantic_problems(study: StudyConfig) -> list[tuple[tuple[Any, ...], str, str]]:
    """(key path, problem, fix) for what the schema cannot see: task arguments against each
    task's signature, domain names, the judge's model string, the data mirror."""
    from empersona.data.domains import DOMAINS
    from empersona.evals.battery import EXPERIMENTS
    from empersona.train.recipe import TrainConfig

    problems: list[tuple[tuple[Any, ...], str, str]] = []
    for key in study.train:
        if key in STUDY_SET_TRAINING:
            problems.append((("train", key), "set by the study itself (base_model, domains, seeds, out, system_prompt; "
                             "init_adapter by sequential:)", "Remove it (for sequential fine-tuning, use sequential:)"))
        elif key not in TrainConfig.model_fields:
            problems.append((("train", key), "unknown training setting",
                             "Check the spelling; `empersona train --help` lists the settings"))
    if not any(loc[0] == "train" for loc, _, _ in problems):
        problems += _train_value_problems(study.train)
    for name, settings in study.experiments.items():
        params = set(EXPERIMENTS[name].parameters())
        for key in settings.args:
            loc = ("experiments", name, "args", key)
            if key in STUDY_SET_ARGS and key in params:
                problems.append((loc, "set by the study (each model's own harmfulness log)", "Remove it"))
            elif key not in params:
                problems.append((loc, f"not an argument of the {name} task",
                                 f"Choose from {', '.join(sorted(params - STUDY_SET_ARGS))}"))
    problems += _provider_arg_problems(study) + _url_credential_problems(study)
    if not study.seeds and (study.domains or study.sequential):
        problems.append((("seeds",), "no seed, so none of the domains is trained (one adapter per domain and seed)",
                         "List at least one seed, e.g. seeds: [0], or remove domains"))
    repeated = sorted({seed for seed in study.seeds if study.seeds.count(seed) > 1})
    if repeated:
        problems.append((("seeds",), f"seed {', '.join(map(str, repeated))} is listed more than once (one adapter per "
                         "domain and seed: the second would find the first's folder)", "List each seed once"))
    two_ai = study.experiments.get("two_ai")
    if two_ai is not None and two_ai.args.get("framing", "self") != "self" and "harmfulness" not in study.experiments:
        problems.append((("experiments", "two_ai", "args", "framing"), "shows the model's own harmfulness answers, and "
                         "the study has none", "Add harmfulness to experiments"))
    if two_ai is not None and two_ai.args.get("framing") == "third_person":
        problems.append((("experiments", "two_ai", "args", "framing"), "asks which assistant gave the shown answers, "
                         "not which the model is: the battery's two-AI rate labels the personas, which rest on "
                         "self-report (docs/protocol.md section 1)",
                         "Ask it as a variant (variants: {third: {framing: third_person}}) and leave the battery's "
                         "two_ai at framing self"))
    if two_ai is not None:
        problems += _framing_problems(two_ai.args, ("experiments", "two_ai", "args"))
    problems += _variant_problems(study)
    problems += _task_value_problems(study, problems)
    problems += [(("persona", *loc), problem, fix) for loc, problem, fix in threshold_problems(study.persona)]
    for index, domain in enumerate(study.domains):
        plain = Path(domain).expanduser()
        if domain not in DOMAINS and not (plain.is_file() and plain.name.endswith((".jsonl", ".jsonl.gz"))):
            problems.append((("domains", index), f"'{domain}' is neither a known domain nor an existing .jsonl file",
                             f"Known domains: {', '.join(DOMAINS)}"))
    trained = set(study.domains) | {step.then for step in study.sequential}
    for domain, local in study.domain_paths.items():
        if domain not in DOMAINS:
            problems.append((("domain_paths", domain), f"'{domain}' is not a known domain (a local copy stands in for one "
                             "of them; a chat file is given in domains: itself)", f"Known domains: {', '.join(DOMAINS)}"))
        elif domain not in trained:
            problems.append((("domain_paths", domain), f"'{domain}' is not trained in this study, so its copy is not used",
                             "Add the domain to domains:, or remove this entry"))
        if not Path(local).expanduser().is_file():
            problems.append((("domain_paths", domain), f"{local}: no such file", "Give the path of the local copy"))
    for index, step in enumerate(study.sequential):
        if step.first not in study.domains:
            problems.append((("sequential", index, "first"), f"'{step.first}' is not one of the study's domains (its "
                             "fine-tunes are the ones continued)", f"Choose from {', '.join(study.domains) or '(no domains)'}"))
        plain = Path(step.then).expanduser()
        if step.then not in DOMAINS and not (plain.is_file() and plain.name.endswith((".jsonl", ".jsonl.gz"))):
            problems.append((("sequential", index, "then"), f"'{step.then}' is neither a known domain nor an existing "
                             ".jsonl file", f"Known domains: {', '.join(DOMAINS)}"))
        if [(s.first, s.then) for s in study.sequential].index((step.first, step.then)) != index:
            problems.append((("sequential", index), "given twice", "Keep one of them"))
    problems += _adapter_name_problems(study)
    base = Path(study.base_model).expanduser()
    # a Hugging Face id is org/name: a name with more slashes, or one starting with / . ~, is a folder
    folder_like = study.base_model.startswith(("/", ".", "~")) or study.base_model.count("/") >= 2
    if folder_like and not study.build_tiny_base and not (base / "config.json").is_file():
        problems.append((("base_model",), f"{study.base_model} is not a model folder (no config.json)",
                         "Give a local model folder or a Hugging Face id (org/name)"))
    if study.build_tiny_base and not folder_like and not base.exists():
        problems.append((("base_model",), f"build_tiny_base builds a random model at base_model, and "
                         f"'{study.base_model}' reads as a Hugging Face id", f"Write it as a folder (./{study.base_model}), "
                         "or remove build_tiny_base to use the hub model"))
    if study.judge != SCRIPTED_JUDGE and "/" not in study.judge:
        problems.append((("judge",), f"'{study.judge}' is not an inspect model string",
                         "Write <provider>/<model>, e.g. openai/gpt-4o-mini, or 'scripted' for smoke runs"))
    ancestor = study.out
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        problems.append((("out",), f"the run folder {study.out} cannot be made ({ancestor} is not a folder you can write "
                         "to)", "Choose a folder you can write to"))
    if study.data_mirror is not None and not study.data_mirror.is_dir():
        problems.append((("data_mirror",), f"{study.data_mirror} is not a folder", "Point it at a data mirror, or remove the key"))
    if study.checkpoints and study.train.get("keep_checkpoints") is not True:
        problems.append((("checkpoints",), "the fine-tunes' checkpoints are deleted when their training ends",
                         "Add keep_checkpoints: true under train: (and save_total_limit: null to keep every one, "
                         "save_steps: N for how often)"))
    if study.probes is not None and "harmfulness" not in study.experiments:
        problems.append((("probes",), "the probes read each model's harmfulness answers, and the study has none",
                         "Add harmfulness to experiments, or remove probes"))
    if study.second_judge is not None and "harmfulness" not in study.experiments:
        problems.append((("second_judge",), "the second judge re-scores the harmfulness answers, and the study has none",
                         "Add harmfulness to experiments, or remove second_judge"))
    return problems + _extra_model_problems(study)


def _adapter_name_problems(study: StudyConfig) -> list[tuple[tuple[Any, ...], str, str]]:
    """Two domains (or sequential steps) whose adapters would share a folder and a model name (the
    same file stem: ``a/train.jsonl`` and ``b/train.jsonl``, or a known domain and a file named so)."""
    from empersona.study.plan import adapter_dir

    seen: dict[str, tuple[Any, ...]] = {}
    problems: list[tuple[tuple[Any, ...], str, str]] = []
    places: list[tuple[tuple[Any, ...], str, str | None]] = [(("domains", i), d, None) for i, d in enumerate(study.domains)]
    places += [(("sequential", i, "then"), step.then, step.first) for i, step in enumerate(study.sequential)]
    for loc, domain, first in places:
        name = adapter_dir(study, domain, 0, first).name.removesuffix("-s0")
        if name in seen and seen[name][:2] != loc[:2]:
            problems.append((loc, f"its adapters would be named {name}-s<seed>, as those of {'.'.join(map(str, seen[name]))} "
                             "are", "Rename one of the files (the adapter is named after the file's name)"))
        seen.setdefault(name, loc)
    return problems


def _framing_problems(args: dict[str, Any], loc: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str, str]]:
    """A two-AI framing's arguments that do not go together (``evals.two_ai.framing_problem``; the
    study passes the harmfulness log itself), refused before anything runs."""
    from empersona.evals.two_ai import framing_problem

    framing = args.get("framing", "self")
    problem = framing_problem(framing, framing != "self", args.get("answers", 3))
    if problem is None:
        return []
    return [((*loc, "answers" if problem.startswith("answers=") else "framing"), problem, "Correct the value")]


def _variant_problems(study: StudyConfig) -> list[tuple[tuple[Any, ...], str, str]]:
    """(key path, problem, fix) for the study's variants: experiments the study does not run, task
    arguments the tasks do not take, settings that change nothing."""
    from empersona.evals.battery import EXPERIMENTS

    problems: list[tuple[tuple[Any, ...], str, str]] = []
    for name, variant in study.variants.items():
        asked = study.variant_experiments(name)
        for index, experiment in enumerate(variant.experiments or []):
            if experiment not in study.experiments:
                problems.append((("variants", name, "experiments", index), f"{experiment} is not in the study's experiments",
                                 "Add it to experiments:, or take it out here"))
        if not asked and variant.experiments is None and variant.changes(study.system_prompt):
            runs = [e for e in SELF_REPORT if e in study.experiments]
            problems.append((("variants", name), "the study runs none of the self-report experiments this variant changes",
                             f"Name {' or '.join(runs)} in the variant's experiments:" if runs else
                             f"Add one of {', '.join(SELF_REPORT)} to the study's experiments:"))
        for key, what in (("neutral_descriptions", "changes the two-AI items"), ("framing", "frames the two-AI question")):
            if getattr(variant, key) and "two_ai" not in asked:
                problems.append((("variants", name, key), f"{what}, and this variant does not ask two_ai",
                                 "Add two_ai to the variant's experiments (and the study's)"))
        if variant.framing is not None and "harmfulness" not in study.experiments:
            problems.append((("variants", name, "framing"), "shows the model's own harmfulness answers, and the study has none",
                             "Add harmfulness to experiments"))
        for experiment, args in variant.args.items():
            params = set(EXPERIMENTS[experiment].parameters())
            for key in args:
                loc = ("variants", name, "args", experiment, key)
                if key in STUDY_SET_ARGS or key in ("system_prompt", "neutral_descriptions", "framing"):
                    problems.append((loc, "set by the study or by the variant's own keys",
                                     "Remove it (system_prompt, honesty, neutral_descriptions and framing are keys of the variant)"))
                elif key not in params:
                    own = STUDY_SET_ARGS | {"system_prompt", "neutral_descriptions", "framing"}
                    problems.append((loc, f"not an argument of the {experiment} task",
                                     f"Choose from {', '.join(sorted(params - own))}"))
            if experiment not in asked:
                problems.append((("variants", name, "args", experiment), f"the variant does not ask {experiment}",
                                 "Remove these args, or add the experiment to the variant (and the study)"))
        if "two_ai" in asked:
            battery = study.experiments["two_ai"].args
            effective = {**battery, **variant.args.get("two_ai", {}),
                         **({"framing": variant.framing} if variant.framing is not None else {})}
            problems += _framing_problems(effective, ("variants", name, "args", "two_ai"))
        if not variant.changes(study.system_prompt) or (asked and _repeats_battery(study, variant, asked)):
            problems.append((("variants", name), "asks everything as the battery does (it would repeat the battery)",
                             "Set honesty, system_prompt, neutral_descriptions, framing or args to something the "
                             "battery's experiments do not already have"))
    return problems


def _repeats_battery(study: StudyConfig, variant: Variant, asked: list[str]) -> bool:
    """Whether the variant asks each experiment with the battery's own task arguments (its settings
    already the battery's, e.g. neutral descriptions the battery's two-AI has too)."""
    import inspect as pyinspect

    from empersona.evals.battery import EXPERIMENTS

    if variant.honesty or variant.system_prompt not in (None, study.system_prompt):
        return False
    for experiment in asked:
        battery = dict(study.experiments[experiment].args)
        mine = {**battery, **variant.args.get(experiment, {})}
        if experiment == "two_ai":
            mine |= {"neutral_descriptions": True} if variant.neutral_descriptions else {}
            mine |= {"framing": variant.framing} if variant.framing is not None else {}
        defaults = {name: p.default for name, p in
                    pyinspect.signature(EXPERIMENTS[experiment].task_function()).parameters.items()}
        if any(mine.get(key, defaults.get(key)) != battery.get(key, defaults.get(key)) for key in set(mine) | set(battery)):
            return False
    return True


def _extra_model_problems(study: StudyConfig) -> list[tuple[tuple[Any, ...], str, str]]:
    """(key path, problem, fix) for the study's extra models: names taken by its own fine-tunes,
    model strings another model of the study has, adapter folders that are missing, lie where
    the run writes its views, or were trained on another base."""
    from collections import Counter

    from empersona.study.extra_models import ADAPTER_CONFIG, EXTRA_DIR, check_base
    from empersona.study.plan import adapter_dir, model_specs

    problems: list[tuple[tuple[Any, ...], str, str]] = []
    own = {adapter_dir(study, domain, seed).name.casefold() for domain in study.domains for seed in study.seeds}
    views = (study.out / EXTRA_DIR).resolve()
    for name, entry in study.models.items():
        base_name = re.sub(r"-step\d+$", "", name) if study.checkpoints else name
        if name.casefold() in own or base_name.casefold() in own:
            problems.append((("models", name), f"'{name}' is the name of one of the study's own fine-tunes"
                             + (" or of their checkpoints" if base_name != name else ""), "Choose another name"))
        if entry.model is not None and ("/" not in entry.model or entry.model.startswith(("/", ".", "~"))):
            problems.append((("models", name, "model"), f"'{entry.model}' is not an inspect model string",
                             "Write <provider>/<model>, e.g. hf/org/name, hf//path/to/folder or openai/ft:gpt-4o-...:id"))
        elif entry.model is not None:
            provider, _, rest = entry.model.partition("/")
            if provider in LOCAL_MODEL_PROVIDERS and rest.startswith(("/", ".", "~")) and not Path(rest).expanduser().exists():
                problems.append((("models", name, "model"), f"{rest} does not exist (the local folder {entry.model} names)",
                                 "Correct the path, or name a hub id without a leading / (hf/org/name)"))
        if entry.adapter is None:
            continue
        loc = ("models", name, "adapter")
        written = entry._written or str(entry.adapter)
        if not entry.adapter.exists():
            hub_like = not written.startswith(("/", ".", "~")) and written.count("/") == 1
            problems.append((loc, f"{entry.adapter} does not exist" + (f" ('{written}' looks like a hub id)" if hub_like else ""),
                             "Download a hub adapter first (hf download ORG/NAME --local-dir DIR) and give DIR, "
                             "write model: hf/ORG/NAME, or correct the path (relative paths are read from the folder "
                             "empersona runs in)"))
            continue
        if not (entry.adapter / ADAPTER_CONFIG).is_file():
            problems.append((loc, f"{entry.adapter} is not a LoRA adapter folder (no {ADAPTER_CONFIG})",
                             "Give the folder that holds adapter_config.json and the adapter weights"))
            continue
        try:
            json.loads((entry.adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        except ValueError as err:
            problems.append((loc, f"{entry.adapter / ADAPTER_CONFIG} is not valid JSON ({err})",
                             "Restore the adapter's adapter_config.json (download it again)"))
            continue
        if entry.adapter.resolve().is_relative_to(views):
            problems.append((loc, f"{entry.adapter} lies in {views}, where the run writes its views of extra adapters "
                                  "(it would be replaced)", f"Keep adapters outside {views}, e.g. in a folder beside the run folder"))
            continue
        checked = check_base(study, name, entry.adapter)
        if checked.problem:
            problems.append((loc, checked.problem, "Serve it in a study of its own base, or give it as model: hf/<its folder>"))
    if not problems:
        specs = model_specs(study)
        taken = Counter(spec.model_string for spec in specs)
        for spec in specs:
            if spec.kind == "model" and taken[spec.model_string] > 1:
                others = [other.name for other in specs if other.model_string == spec.model_string and other is not spec]
                problems.append((("models", spec.name, "model"),
                                 f"{spec.model_string} is also the model string of {', '.join(others)}: their results "
                                 "and cached answers could not be told apart", "List each model once"))
    return problems


def threshold_problems(settings: dict[str, Any]) -> list[tuple[tuple[Any, ...], str, str]]:
    """(key path, problem, fix) for classification settings that ``PersonaThresholds`` refuses."""
    from empersona.analysis.persona import PersonaThresholds

    try:
        PersonaThresholds(**settings)
    except ValidationError as err:
        known = ", ".join(PersonaThresholds.model_fields)
        return [(tuple(issue["loc"]), "unknown classification setting" if issue["type"] == "extra_forbidden"
                 else issue["msg"].removeprefix("Value error, "),
                 f"Known settings: {known}" if issue["type"] == "extra_forbidden" else "Correct the value")
                for issue in err.errors()]
    return []


def load_thresholds(path: Path) -> PersonaThresholds:
    """Classification settings from a YAML file of ``PersonaThresholds`` keys (``empersona report
    --thresholds``), or from a study file's ``persona:`` section; errors name file, line and key."""
    import yaml

    from empersona.analysis.persona import PersonaThresholds

    from empersona.data.parsers import read_text

    text = read_text(path)  # a byte that is not UTF-8 is named by its line
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise EmpersonaError(located(path, None, None, f"cannot read the settings ({err})", "Give a YAML file of settings")) from err
    prefix: tuple[Any, ...] = ()
    if isinstance(data, dict) and "experiments" in data:  # a study file: its persona section (maybe none)
        data, prefix = data.get("persona") or {}, ("persona",)
    if not isinstance(data, dict):
        raise EmpersonaError(located(path, 1, None, "the settings must be a mapping", "Write key: value lines, e.g. alpha: 0.01"))
    problems = threshold_problems(data)
    if problems:
        raise EmpersonaError("\n".join(located(path, _line_of(path, text, (*prefix, *loc)), ".".join(map(str, (*prefix, *loc))),
                                               problem, fix) for loc, problem, fix in problems))
    return PersonaThresholds(**data)


def duplicate_keys(text: str) -> list[tuple[tuple[Any, ...], int, int]]:
    """Keys a YAML document gives twice in one mapping, as (key path, line, line of the first), in
    file order (merge keys, ``<<``, are YAML's own way to repeat and are left alone)."""
    import yaml

    found: list[tuple[tuple[Any, ...], int, int]] = []

    def walk(node: Any, loc: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and name != "<<":
                    if name in seen:
                        found.append(((*loc, name), key.start_mark.line + 1, seen[name]))
                    else:
                        seen[name] = key.start_mark.line + 1
                walk(value, (*loc, name))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*loc, index))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        return []
    return found


def load_study(path: Path) -> StudyConfig:
    """Read and validate a study file; errors name the file, the line and the key."""
    import yaml

    from empersona.data.parsers import read_text

    if path.is_dir():
        raise EmpersonaError(f"{path} is a folder. Pass the study file (YAML) itself")
    text = read_text(path)  # a byte that is not UTF-8 is named by its line
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise EmpersonaError(
            located(path, mark.line + 1 if mark else None, None, f"not valid YAML ({getattr(err, 'problem', err)})", "Fix the syntax")
        ) from err
    if not isinstance(data, dict):
        raise EmpersonaError(located(path, 1, None, "a study file must be a mapping of settings", "See configs/smoke.yaml"))
    twice = duplicate_keys(text)
    if twice:  # YAML keeps the last silently: a setting written twice is a mistake either way
        raise EmpersonaError("\n".join(located(path, line, ".".join(map(str, loc)), f"given twice (first on line {first})",
                                                "Keep one of them") for loc, line, first in twice))
    try:
        study = StudyConfig.model_validate(data)
    except ValidationError as err:
        problems: dict[tuple[Any, ...], tuple[list[str], str]] = {}
        for issue in err.errors():
            loc = _written_loc(data, tuple(issue["loc"]))
            if issue["type"] == "extra_forbidden":
                known = _known_keys(loc)
                problem = "unknown key"
                fix = f"Check the spelling; known keys here: {', '.join(known)}" if known else "Check the spelling"
            elif issue["type"] == "missing":
                problem, fix = "required key is missing", "Add it"
            else:
                problem, fix = issue["msg"].removeprefix("Value error, "), "Correct the value"
            said, _ = problems.setdefault(loc, ([], fix))
            if problem not in said:  # a value no member of a union takes: one line, each member's reason
                said.append(problem)
        raise EmpersonaError("\n".join(
            located(path, _line_of(path, text, loc), ".".join(str(part) for part in loc) or "(top level)", "; or ".join(said), fix)
            for loc, (said, fix) in problems.items())) from err
    # paths in a study file are relative to the working directory, like every CLI path
    # (a leading ~ is the home folder, as a shell would have it)
    mirror = study.data_mirror.expanduser().resolve() if study.data_mirror else None
    base = str(Path(study.base_model).expanduser()) if study.base_model.startswith("~") else study.base_model
    models = {}
    for name, entry in study.models.items():
        resolved = entry.model_copy(update={"adapter": entry.adapter.expanduser().resolve()}) if entry.adapter else entry
        resolved._written = str(entry.adapter) if entry.adapter else None
        models[name] = resolved
    study = study.model_copy(update={"out": study.out.expanduser().resolve(), "data_mirror": mirror, "models": models,
                                     "base_model": base})
    semantic = _semantic_problems(study)
    if semantic:
        raise EmpersonaError("\n".join(
            located(path, _line_of(path, text, loc), ".".join(str(part) for part in loc), problem, fix)
            for loc, problem, fix in semantic
        ))
    study._source = path.resolve()
    return study


STUDY_COPY = "study.yaml"
"""The study file as the last ``empersona run`` read it, kept in the run folder (``RUN_DIR/study.yaml``)."""




def keep_study_file(study: StudyConfig) -> Path | None:
    """Copy the study file into the run folder, so the results travel with what produced them.

    The values of secret-named entries (``is_secret_name``: an ``api_key``, an ``HF_TOKEN`` in
    ``vllm.env``, an ``Authorization`` header), wherever they are in the file, are written as ``***``
    in the copy (``masked_yaml``); the rest of the file is kept as written.
    """
    if study._source is None or not study._source.is_file():
        return None
    target = study.out / STUDY_COPY
    if study._source != target.resolve():
        try:
            replace_text(target, masked_yaml(study._source.read_text(encoding="utf-8")))
        except OSError as err:
            raise EmpersonaError(located_in_study(study, ("out",), f"cannot write the run folder {study.out} ({err})",
                                                  "Choose a folder you can write to")) from err
    return target
