"""Run a study: build what is missing, train, evaluate in dependency order, write the report.

Every step is idempotent, so a run killed at any point continues when started again:
finished adapters (``empersona.json`` matching the plan) are kept, an interrupted training resumes
from its last checkpoint, finished evaluations (a successful log with the same task arguments) are
skipped, and every model and judge call of an unfinished evaluation goes through inspect's cache,
so calls whose replies had arrived are not made again. A run folder that was moved or copied keeps
its adapters and finished evaluations (``empersona.moved``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empersona.atomic import replace_text
from empersona.errors import EmpersonaError
from empersona.study.config import SCRIPTED_JUDGE, SCRIPTED_JUDGE_MODEL, Stage, StudyConfig, keep_study_file
from empersona.evals.second_judge import SECOND_JUDGE
from empersona.study.plan import (
    DEFAULT_FOILS,
    REASKED,
    EvalJob,
    ModelSpec,
    Plan,
    TrainJob,
    as_list,
    base_path,
    base_spec,
    file_digests,
    harm_logs_read,
    judge_identity,
    make_plan,
    matched_partner,
    model_identity,
    print_plan,
    uses_matched_log,
)

if TYPE_CHECKING:
    from inspect_ai.model import GenerateConfig


def say(message: str) -> None:
    """One progress line for the whole study: never wrapped (logs are grepped), never read as markup."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text.assemble(("empersona run", "bold cyan"), " ", message))


def ensure_base(study: StudyConfig) -> None:
    """Build the tiny base model of a smoke study when it is not there yet."""
    path = Path(study.base_model)
    if study.build_tiny_base and not (path / "config.json").exists():
        from empersona.testing.tiny import build_tiny_model

        say(f"building a tiny random base model at {path}")
        build_tiny_model(path)


LOCAL_PROVIDERS = frozenset({"hf", "vllm", "empersona", "sglang", "llama-cpp-python", "transformer_lens", "mockllm"})
"""Judge providers that load a model when built: not built ahead of the run just to check them."""


def judge_problem(study: StudyConfig) -> str | None:
    """Why the judge cannot be used (no API key, provider unknown or not installed, a refused key
    or an endpoint out of reach), or None.

    A remote judge's inspect model is built once and an OpenAI-compatible endpoint asked for its
    model list (nothing is generated: `endpoint_problem`), so a missing or wrong key stops the run
    before hours of training rather than after them. Local judges are not built here.
    """
    second = study.second_judge
    if second is not None and second.model != SCRIPTED_JUDGE and (
            problem := remote_model_problem(f"second judge {second.model}", second.model, second.model_args,
                                            "second_judge.model/model_args")):
        return problem
    if study.judge == SCRIPTED_JUDGE:
        return None
    return remote_model_problem(f"judge {study.judge}", study.judge, study.judge_args, "judge/judge_args")


def extra_model_problem(study: StudyConfig) -> str | None:
    """Why an extra model string of the study (``models:`` with ``model:``) on a remote provider
    cannot be asked (no API key, an endpoint out of reach), checked like the judge, or None."""
    for name, entry in study.models.items():
        if entry.model is not None and (problem := remote_model_problem(f"models.{name} {entry.model}", entry.model,
                                                                         entry.model_args, f"models.{name}")):
            return problem
    return None


def remote_model_problem(what: str, model: str, args: dict[str, Any], fix: str) -> str | None:
    """Why a remote model cannot be used (``judge_problem``); local providers are not built here."""
    if model.split("/", 1)[0] in LOCAL_PROVIDERS:
        return None
    from inspect_ai.model import get_model
    from rich.text import Text

    try:
        built = get_model(model, memoize=False, **args)
    except Exception as err:  # inspect's PrerequisiteError (key, package), ValueError (provider)
        reason = " ".join(Text.from_markup(str(err)).plain.split()).rstrip(".")
        hint = (f" (a Hugging Face model is written hf/{model})" if "not recognized" in reason.lower() else "")
        return (f"{what}: {reason}{hint}. Set the key in the environment (never in the study file), "
                f"install the provider's package, or fix {fix}")
    return endpoint_problem(what, built.api)


JUDGE_PROBE_TIMEOUT_S = 15.0


def endpoint_problem(name: str, api: Any) -> str | None:
    """Whether an OpenAI-compatible endpoint (the judge's, an extra model's; ``name`` says which,
    e.g. "judge openai/gpt-4o-mini") answers and takes the key: it lists its models (free:
    nothing is generated) before the run trains for hours and then finds out.

    A refused key or an endpoint that cannot be reached is a problem; a judge model the listing
    does not name is a warning (``say``), since some services list only part of what they serve.
    Any other reply (a service without ``/models``) says nothing: the first call will tell.
    The judge's own client asks (its key, headers and query from ``judge_args`` included);
    Azure, Bedrock and other SDKs' clients are not probed. The key is never part of a message.
    """
    import asyncio

    import openai

    client = getattr(api, "client", None)
    if type(client) is not openai.AsyncOpenAI:
        return None
    url = client.base_url
    where = f"{url.scheme}://{url.host}{f':{url.port}' if url.port else ''}{url.path}"  # no userinfo or query
    probe = client.with_options(timeout=JUDGE_PROBE_TIMEOUT_S, max_retries=0)

    async def names() -> list[str]:
        return [entry.id for entry in (await probe.models.list()).data]

    try:
        listed = asyncio.run(names())
    except openai.AuthenticationError:
        return (f"{name}: {where} refused the API key (401). Set the right key in the environment "
                "(never in the study file)")
    except openai.APIConnectionError as err:  # refused, unresolvable, or no answer in time
        return (f"{name}: cannot reach {where} ({type(err).__name__}: {err}). Check the service is up "
                "and its base URL")
    except openai.APIError:
        return None
    if listed and api.model_name not in listed:
        shown = ", ".join(sorted(listed)[:8]) + (", ..." if len(listed) > 8 else "")
        say(f"warning: {name}: {where} does not list a model {api.model_name!r} among its {len(listed)} ({shown})")
    return None


@contextmanager
def judge_endpoint(study: StudyConfig) -> Iterator[str]:
    """The judge model string; for ``judge: scripted`` serve the offline scripted judge meanwhile."""
    second = study.second_judge
    if study.judge != SCRIPTED_JUDGE and (second is None or second.model != SCRIPTED_JUDGE):
        yield study.judge
        return
    from empersona.testing.loopback import SECOND_JUDGE_NAME, LoopbackServer, scripted_judges

    # a port the system picks, so studies running side by side (or anything else) never collide
    server = LoopbackServer(scripted_judges, models=("scripted-judge", SECOND_JUDGE_NAME)).start()
    saved = {key: os.environ.get(key) for key in ("LOOPBACK_BASE_URL", "LOOPBACK_API_KEY")}
    os.environ["LOOPBACK_BASE_URL"] = server.base_url
    os.environ["LOOPBACK_API_KEY"] = "scripted-judge-needs-no-key"
    try:
        yield SCRIPTED_JUDGE_MODEL if study.judge == SCRIPTED_JUDGE else study.judge
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


STOP_AFTER_IN_A_ROW = 3
"""Failures one after another (training runs, or evaluations) before a study stops: in the plan's
experiment-major order one model's failed evaluations are spread out, so several in a row point at
a cause no single model has (the server, the disk, the settings, one experiment's task)."""


class StudyIncomplete(EmpersonaError):
    """Work of the study that did not finish: an evaluation (``cancelled``: by an interrupt), or the
    run's end or stop naming all that did not (`Unfinished.message`)."""

    def __init__(self, message: str, *, cancelled: bool = False) -> None:
        super().__init__(message)
        self.cancelled = cancelled


@dataclass
class Unfinished:
    """What of the study did not finish in this run, and why. A failure is named and the rest goes
    on; `failed` stops the run at an interrupt, after `STOP_AFTER_IN_A_ROW` failures in a row, or at
    the first with ``fail_fast``."""

    fail_fast: bool = False
    trainings: list[str] = field(default_factory=list)
    """``<adapter>: <why>`` of each training run that failed or was not started."""
    evaluations: list[str] = field(default_factory=list)
    """``<label> on <model>: <why>`` of each evaluation that failed."""
    not_started: list[str] = field(default_factory=list)
    """The same of each evaluation not started: its adapter, or a harmfulness log it reads, failed."""
    probes: list[str] = field(default_factory=list)
    """``<model>: <why>`` of each model whose probe run failed."""
    in_a_row: int = 0

    def __bool__(self) -> bool:
        return bool(self.trainings or self.evaluations or self.not_started or self.probes)

    def failed(self, where: list[str], why: str, left: int, *, cancelled: bool = False) -> None:
        """Record a failure in ``where``; raise `StudyIncomplete` if the run is to stop (``left``:
        the jobs of this stage not reached then)."""
        where.append(why)
        self.in_a_row += 1
        stop = ("interrupted" if cancelled else "stopped at the first failure (--fail-fast)" if self.fail_fast
                else f"stopped after {self.in_a_row} failures in a row: their cause is likely not one model's"
                if self.in_a_row >= STOP_AFTER_IN_A_ROW else "")
        if stop:
            raise StudyIncomplete(self.message(f"{stop}; {left} more not reached"), cancelled=cancelled)
        say(f"did not finish: {why}; the others go on")

    def message(self, stopped: str = "") -> str:
        """The run's closing error: what did not finish, and what to do."""
        counts = [f"{len(items)} {what}" for items, what in ((self.trainings, "training run(s) did not finish"),
                                                             (self.evaluations, "evaluation(s) did not finish"),
                                                             (self.not_started, "evaluation(s) not started"),
                                                             (self.probes, "probe run(s) failed")) if items]
        lines = [", ".join(counts) + (f" ({stopped})" if stopped else "") + ":"]
        lines += [f"  training: {item}" for item in self.trainings] + [f"  failed: {item}" for item in self.evaluations]
        lines += [f"  not started: {item}" for item in self.not_started] + [f"  probe: {item}" for item in self.probes]
        lines.append("Finished work is kept. Mend the cause, then run the same command again: it does only what is left")
        return "\n".join(lines)


def first_line(text: str) -> str:
    """An error message's first line (the rest is printed where it happened)."""
    return text.strip().splitlines()[0] if text.strip() else "(no message)"


def failure_text(err: Exception) -> str:
    """An error for the list of what did not finish; one not raised by empersona (whose messages say
    what to do) is printed in full first, with its type."""
    if isinstance(err, EmpersonaError):
        return str(err)
    traceback.print_exc()
    return f"{type(err).__name__}: {first_line(str(err))}"


def train_all(plan: Plan, unfinished: Unfinished | None = None) -> None:
    """Train every adapter that is missing, stale or interrupted, in plan order; a run that fails
    goes into ``unfinished`` (a sequential one on top of a failed adapter is not started)."""
    from empersona.train.sft import train

    unfinished = unfinished if unfinished is not None else Unfinished(fail_fast=True)
    todo = [job for job in plan.train_jobs if job.status != "done"]
    not_trained: dict[tuple[str, int], str] = {}  # (domain, seed) of the first adapters that failed now: their names
    for index, job in enumerate(todo, start=1):
        say(f"training {index}/{len(todo)}: {job.out.name} ({job.why})")
        if (first := not_trained.get((job.first or "", job.seed))) is not None:
            unfinished.trainings.append(why := f"{job.out.name}: not started, it continues {first}, which did not train")
            say(why)
            continue
        try:
            if job.status == "stale":
                set_aside(job, plan.study.out / "logs")
            result = train(job.config, resume=job.status == "partial")
        except Exception as err:  # bad data, out of memory: named, the others go on
            if job.first is None:
                not_trained[(job.domain, job.seed)] = job.out.name
            unfinished.failed(unfinished.trainings, f"{job.out.name}: {failure_text(err)}", len(todo) - index)
            continue
        unfinished.in_a_row = 0
        if result.metadata is not None:
            loss = result.metadata.final_loss
            shown = f"{loss:.4f}" if loss is not None else "n/a"
            say(f"trained {job.out.name}: {result.metadata.steps} steps, final loss {shown}")


def set_aside(job: TrainJob, logs: Path | None = None) -> Path:
    """Move an adapter trained with other settings out of the way (nothing is deleted).

    Its evaluation logs (``logs/<name>``) go with it, into the set-aside folder: they are
    results of the old adapter, and the results table reads every log under ``logs/``.
    """
    import re

    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = job.out.with_name(f"{job.out.name}.replaced-{stamp}")
    shutil.move(str(job.out), str(target))
    old_logs = logs / job.out.name if logs is not None else None
    if old_logs is not None and old_logs.is_dir():
        shutil.move(str(old_logs), str(target / "logs"))
        say(f"kept the old {job.out.name} and its logs as {target.name}")
    else:
        say(f"kept the old {job.out.name} as {target.name}")
    # the logs of its checkpoints (checkpoints: true) are the old adapter's too
    own_checkpoint = re.compile(rf"{re.escape(job.out.name)}-step\d+")
    for folder in sorted(logs.iterdir()) if logs is not None and logs.is_dir() else []:
        if folder.is_dir() and own_checkpoint.fullmatch(folder.name):
            (target / "checkpoint-logs").mkdir(exist_ok=True)
            shutil.move(str(folder), str(target / "checkpoint-logs" / folder.name))
    return target


def repoint_moved_adapters(plan: Plan) -> list[Path]:
    """Point each moved adapter's ``adapter_config.json`` at its base where the base is now.

    PEFT, inspect's ``hf/`` and our provider load an adapter's base from its
    ``base_model_name_or_path``: an absolute path for a local base. After the run folder (with the
    base inside it or beside it) moved, the plan counts the adapter as done (its recorded base is
    the study's base at its new place: ``config_changes``), but that field still names the old
    place (or the place of an earlier move). Only that field is rewritten; the adapter's weights
    and ``empersona.json`` stay as trained.
    """
    from empersona.train.metadata import CHECKPOINTS_DIR

    repointed = []
    for job in plan.train_jobs:
        if job.status != "done":
            continue
        # the kept checkpoints too: a study with checkpoints: true serves them as models
        for config_file in [job.out / "adapter_config.json", *sorted((job.out / CHECKPOINTS_DIR).glob("*/adapter_config.json"))]:
            if not config_file.is_file():
                continue
            config = json.loads(config_file.read_text(encoding="utf-8"))
            base, now = config.get("base_model_name_or_path"), job.config.base
            if base == now:
                continue
            config["base_model_name_or_path"] = now
            replace_text(config_file, json.dumps(config, indent=2) + "\n")
            if config_file.parent == job.out:
                say(f"{job.out.name} was moved: its adapter_config.json now names the base at {now}")
            repointed.append(config_file)
    return repointed


def set_aside_other_models_logs(plan: Plan) -> list[Path]:
    """Move logs that are not of a planned model out of ``logs/`` (into ``logs.replaced/``).

    A model's folder can hold logs of what its name meant before: the old base after
    ``base_model`` changed, an adapter's earlier training run. They would still feed the
    results table, mixed with the current model's rows; nothing is deleted.
    """
    from inspect_ai.log import list_eval_logs, read_eval_log

    from empersona.study.plan import log_is_of_model, log_move
    from empersona.train.metadata import trained_run_folder

    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    trained_in = trained_run_folder(plan.study.out)  # read once, not per log
    for model in plan.models:
        folder = plan.study.out / "logs" / model.name
        if not folder.is_dir():
            continue
        identity = model_identity(model)
        for info in list_eval_logs(str(folder), recursive=False):
            path = Path(info.name.removeprefix("file://"))
            try:
                spec = read_eval_log(info, header_only=True).eval
            except Exception:  # a log cut short by a kill: the results table skips it already
                continue
            if log_is_of_model(spec, model, identity, log_move(spec, plan.study.out, trained_in)):
                continue
            moved.append(park_log(plan.study.out, stamp, model.name, path))
    if moved:
        say(f"moved {len(moved)} log(s) of models no longer in the study, or of an earlier version of one (a base model "
            f"changed, an adapter retrained or replaced), to {moved[0].parents[1]}")
    return moved


def park_log(run_folder: Path, stamp: str, model: str, path: Path) -> Path:
    """Move one log out of ``logs/`` to ``logs.replaced/<stamp>/<model>/`` (nothing is deleted)."""
    target = run_folder / "logs.replaced" / stamp / model / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))
    return target


def set_aside_superseded_logs(plan: Plan, job: EvalJob, keep: Path | None, stamp: str | None = None) -> list[Path]:
    """Move every other log of ``job``'s experiment (and variant) in its model's folder aside: the
    results table merges a model's logs of one experiment row by row, so an older log made with
    other settings (more samples or items, another harmfulness log read) would fill in the rows the
    current one does not have. ``keep``: the log that stands (the plan's, or the one just made; None: none)."""
    return _set_aside_logs(plan.study.out, job.log_dir, job.model.name, keep, stamp or time.strftime("%Y%m%d-%H%M%S"),
                           lambda task, variant: task == job.experiment and variant == job.variant)


def _set_aside_logs(run_folder: Path, log_dir: Path, model: str, keep: Path | None, stamp: str,
                    chosen: Callable[[str, str | None], bool]) -> list[Path]:
    """Park the logs of ``log_dir`` (but ``keep``) that ``chosen(task, variant)`` picks; a log cut
    short by a kill is read off its name (inspect's <time>_<task>_<id>) and taken for the battery's."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    if not log_dir.is_dir():
        return []
    moved = []
    for info in list_eval_logs(str(log_dir), recursive=False):
        path = Path(info.name.removeprefix("file://"))
        if keep is not None and path.resolve() == keep.resolve():
            continue
        try:
            spec = read_eval_log(info, header_only=True).eval
            task, variant = spec.task.split("/")[-1], (spec.metadata or {}).get("variant") or None
        except Exception:
            task, variant = (path.stem.split("_")[1].replace("-", "_") if path.stem.count("_") >= 2 else ""), None
        if chosen(task, variant):
            moved.append(park_log(run_folder, stamp, model, path))
    return moved


def set_aside_all_superseded_logs(plan: Plan, stamp: str) -> list[Path]:
    """`set_aside_superseded_logs` for every finished evaluation of the plan, every second judge's
    log when the study has no ``second_judge:`` and every log of a variant it no longer has (the
    report would present them as the study's); said once."""
    moved = [path for job in plan.eval_jobs if job.status == "done" and job.log is not None
             for path in set_aside_superseded_logs(plan, job, job.log, stamp)]
    if moved:
        say(f"moved {len(moved)} earlier log(s) of evaluations made again since (other settings) to {moved[0].parents[1]}")
    out = plan.study.out

    def each_model(chosen: Callable[[str, str | None], bool]) -> list[Path]:
        return [path for model in plan.models
                for path in _set_aside_logs(out, out / "logs" / model.name, model.name, None, stamp, chosen)]

    if plan.study.second_judge is None:
        rescored = each_model(lambda task, _variant: task == SECOND_JUDGE)
        if rescored:
            say(f"moved {len(rescored)} second judge log(s) to {rescored[0].parents[1]}: the study file has no "
                "second_judge: (add it to keep a second judge in the report)")
        moved += rescored
    variants = set(plan.study.variants)
    dropped = each_model(lambda _task, variant: variant is not None and variant not in variants)
    if dropped:
        say(f"moved {len(dropped)} log(s) of variants the study file no longer has to {dropped[0].parents[1]}")
    # a variant that no longer asks an experiment
    asked = {(name, experiment) for name in variants for experiment in plan.study.variant_experiments(name)}
    dropped_experiments = each_model(lambda task, variant: variant in variants and (variant, task) not in asked)
    if dropped_experiments:
        say(f"moved {len(dropped_experiments)} log(s) of experiments a variant no longer asks to "
            f"{dropped_experiments[0].parents[1]}")
    return moved + dropped + dropped_experiments


def moved_during_run(moved: list[Path], job: EvalJob) -> None:
    """Say which earlier logs an evaluation just made replaced."""
    if moved:
        say(f"moved {len(moved)} earlier log(s) of {job.label} on {job.model.name} to {moved[0].parents[1]}")


def write_models_file(plan: Plan) -> Path:
    """``models.yaml``: what each model string in the logs stands for, and which is the base."""
    import yaml

    from empersona.analysis.results import MODELS_FILE

    base = base_spec(plan.models)
    entries = {
        spec.model_string: {
            "name": spec.name,
            "base_model": spec.base_model,
            "adapter": str(spec.source or spec.adapter) if spec.adapter else None,
            "domain": spec.domain,
            "seed": spec.seed,
            "kind": spec.kind,
            "step": spec.step if spec.kind == "checkpoint" else trained_steps(spec) if spec.kind == "fine-tune" else None,
        }
        for spec in plan.models
    }
    path = plan.study.out / MODELS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"base": base.name, "models": entries, "run_folder": str(plan.study.out)}  # read after a move: RunModels.relocated
    text = yaml.safe_dump(record, sort_keys=False)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged: the results table stays current
        replace_text(path, text)
    return path


def trained_steps(spec: ModelSpec) -> int | None:
    """How many optimizer steps a finished fine-tune took (its ``empersona.json``), else None."""
    from empersona.train.metadata import METADATA_FILE, read_metadata

    if spec.adapter is None or not (spec.adapter / METADATA_FILE).is_file():
        return None
    return read_metadata(spec.adapter).steps


def harm_log_for(plan: Plan, model: ModelSpec) -> Path:
    """The finished harmfulness log of ``model`` (read by output recognition, score prediction)."""
    from empersona.study.plan import finished_log, judge_model_string

    harm = next(j for j in plan.eval_jobs if j.model.name == model.name and j.experiment == "harmfulness")
    # the log the plan counts as this model's (make_plan checks its readers against the same one)
    log = finished_log(harm.log_dir, "harmfulness", harm.task_args, harm.limit, model, judge_model_string(plan.study),
                       plan.study.out)
    if log is None:
        raise EmpersonaError(f"experiments on {model.name} need its finished harmfulness log in {harm.log_dir}")
    return log


def recognition_foils(plan: Plan, model: ModelSpec, args: dict[str, Any]) -> dict[str, Any]:
    """Study defaults for output recognition's foils, where the study file does not set them.

    Matched foils come from a partner model's harmfulness log: the base model for an adapter, the
    first adapter for the base. Contrast foils are written by the base model.
    """
    foils = as_list(args.get("foils"), list(DEFAULT_FOILS))
    out = {**args, "foils": ",".join(foils)}
    base = base_spec(plan.models)
    if "contrast" in foils and not out.get("foil_model"):
        out["foil_model"] = base.model_string
        # the base writes the foils as it answers as a subject: same provider settings
        if (model_args := subject_model_args(plan.study)) and "foil_model_args" not in out:
            out["foil_model_args"] = model_args
    if uses_matched_log(args):
        partner = matched_partner(model, plan.models)
        if partner is None:
            raise EmpersonaError("matched foils need a second model's harmfulness log: add a domain, or set foils: contrast")
        out["matched_log"] = str(harm_log_for(plan, partner))
    return out


def harm_logs_needed(plan: Plan, job: EvalJob) -> set[str]:
    """The models whose harmfulness log ``job`` reads (its own, a matched partner's)."""
    if job.experiment == SECOND_JUDGE:
        return {job.model.name}
    return set(harm_logs_read(job.experiment, job.model, plan.models, job.task_args).values())


def evaluate_all(plan: Plan, judge: str, stamp: str | None = None, unfinished: Unfinished | None = None) -> None:
    """Run every unfinished (model, experiment) in order; harmfulness comes before its readers.

    An evaluation that fails goes into ``unfinished`` and the others go on (see `Unfinished`); one
    of a model whose adapter did not train, or that reads a harmfulness log that failed, is not
    started.
    """
    unfinished = unfinished if unfinished is not None else Unfinished(fail_fast=True)
    unfinished.in_a_row = 0  # a new stage
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")  # one logs.replaced/<stamp> folder per run
    no_adapter = plan.untrained_models()  # their training failed in this run
    todo = [job for job in plan.eval_jobs if job.status == "todo" and job.model.name not in no_adapter]
    if no_adapter:
        left = [job for job in plan.eval_jobs if job.status == "todo" and job.model.name in no_adapter]
        unfinished.not_started += [f"{job.label} on {job.model.name}: its adapter did not train" for job in left]
        say(f"not evaluated, their adapters did not train: {', '.join(sorted(no_adapter))} ({len(left)} evaluation(s))")
    no_harm_log = set(no_adapter)  # and the models whose harmfulness evaluation failed in this run
    for index, job in enumerate(todo, start=1):
        say(f"evaluation {index}/{len(todo)}: {job.label} on {job.model.name}" + (f" ({job.note})" if job.note else ""))
        if blocked := sorted(harm_logs_needed(plan, job) & no_harm_log):
            why = f"{job.label} on {job.model.name}: reads the harmfulness log of {', '.join(blocked)}, which did not finish"
            unfinished.not_started.append(why)
            say(f"not started: {why}")
            continue
        try:
            evaluate(plan, job, judge, stamp)
        except Exception as err:  # an error log, a model that cannot be loaded: named, the others go on
            if job.experiment == "harmfulness" and job.variant is None:
                no_harm_log.add(job.model.name)
            unfinished.failed(unfinished.evaluations, f"{job.label} on {job.model.name}: {failure_text(err)}",
                              len(todo) - index, cancelled=isinstance(err, StudyIncomplete) and err.cancelled)
            continue
        unfinished.in_a_row = 0


def evaluate(plan: Plan, job: EvalJob, judge: str, stamp: str) -> Path:
    """Run one evaluation of the plan; returns its finished log, or raises `StudyIncomplete`."""
    from empersona.evals.battery import reads_harm_log
    from empersona.evals.commands import print_summary, run_experiment

    study = plan.study
    if job.experiment == SECOND_JUDGE:
        path = rejudge_harm_log(plan, job)
        moved_during_run(set_aside_superseded_logs(plan, job, path, stamp), job)
        return path
    args = dict(job.task_args)
    if reads_harm_log(job.experiment, job.task_args):
        args["harm_log"] = str(harm_log_for(plan, job.model))
    if job.experiment == "output_recognition":
        args = recognition_foils(plan, job.model, args)
    log = run_experiment(
        job.experiment,
        job.model.model_string,
        judge=judge,
        task_args=args,
        model_args=subject_model_args(study) if job.model.served else job.model.model_args,
        model_config=subject_model_config(study) if job.model.served else None,
        judge_args=study.judge_args,
        log_dir=job.log_dir,
        limit=job.limit,
        max_connections=study.max_connections,
        display="plain" if os.environ.get("CI") else None,
        tags=[study.name, job.model.name],
        metadata={"study": study.name, "model_name": job.model.name, "domain": job.model.domain, "ft_seed": job.model.seed,
                  "run_folder": str(study.out),  # lets a moved run folder keep its results (plan.log_move)
                  "sampling": sampling_mark(study, job.model),
                  **({"files": files} if (files := file_digests(args)) else {}),
                  "judge_identity": judge_identity(study),  # None: no answer-affecting judge args
                  **({"variant": job.variant} if job.variant else {}),
                  **({REASKED: job.reask} if job.reask is not None else {})},
        model_identity=model_identity(job.model),
        sampling=vllm_sampling_scope(study) if job.model.served else None,
        live_view=study.live_view,
    )
    print_summary(log, metrics=False)  # the metrics are the report's (and each log's)
    if log.status != "success":
        error = first_line(log.error.message) if log.error is not None else "no error recorded"
        raise StudyIncomplete(f"{log.status} ({error}); its log: {log.location}", cancelled=log.status == "cancelled")
    path = Path(log.location.removeprefix("file://"))
    moved_during_run(set_aside_superseded_logs(plan, job, path, stamp), job)
    return path


def rejudge_harm_log(plan: Plan, job: EvalJob) -> Path:
    """The second judge re-scores ``job``'s model's harmfulness log (``evals.second_judge``)."""
    from rich.console import Console

    from empersona.analysis.results import results_table
    from empersona.evals.commands import print_agreement
    from empersona.evals.second_judge import rejudge
    from empersona.study.plan import second_judge_identity, second_judge_model_string

    study = plan.study
    assert study.second_judge is not None
    harm_log = harm_log_for(plan, job.model)
    _log, path = rejudge(harm_log, second_judge_model_string(study), judge_args=study.second_judge.model_args,
                         prompts=study.second_judge.prompts, seed=study.seed, out_dir=job.log_dir,
                         max_connections=study.max_connections, display="plain" if os.environ.get("CI") else None,
                         metadata={"study": study.name, "model_name": job.model.name,
                                   "judge_identity": second_judge_identity(study),  # the second judge's, not the first's
                                   **({REASKED: job.reask} if job.reask is not None else {})})
    print_agreement(results_table([harm_log, path]), Console())
    return path


VLLM_MAX_RETRIES = 5
VLLM_RETRY_TIMEOUT_S = 1800
"""The subject's retry budget on the study's vLLM server: a few tries (inspect waits 3 s, then
twice as long each time) within half an hour of the first, instead of inspect's default of
retrying a connection error forever (a dead server would hang the run)."""


def subject_model_args(study: StudyConfig) -> dict[str, Any]:
    """The subject models' model args: the study file's ``model_args``, over the study's own.

    The ``empersona`` provider is told not to apply the model's generation_config.json sampling
    defaults (top_k, repetition_penalty, ...) to what a request leaves unset, so what is sampled
    is what the battery asks for (docs/protocol.md: temperature 1, top_p 1); vLLM is told the same
    by the server's ``--generation-config vllm``.
    """
    own = {"generation_config": False} if study.provider == "empersona" else {}
    return {**own, **study.model_args}


def subject_model_config(study: StudyConfig) -> GenerateConfig | None:
    """The subject models' own generate settings: a finite retry budget on the study's vLLM server."""
    if study.provider != "vllm":
        return None
    from inspect_ai.model import GenerateConfig

    return GenerateConfig(max_retries=VLLM_MAX_RETRIES, timeout=VLLM_RETRY_TIMEOUT_S)


SAMPLING_FIELDS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def base_sampling_defaults(study: StudyConfig) -> dict[str, Any] | None:
    """The sampling fields the base model's generation_config.json sets: a local folder's, or a
    hub id's from the Hugging Face cache (None when the file is not here: not downloaded yet)."""
    local = Path(base_path(study))
    if local.is_dir():
        path = local / "generation_config.json"
        if not path.is_file():
            return {}
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(study.base_model, "generation_config.json")
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {key: config[key] for key in SAMPLING_FIELDS if key in config} if isinstance(config, dict) else None


HF_TOP_K_DEFAULT = 50
"""transformers' ``GenerationConfig.top_k``: what ``model.generate`` samples with when neither the
call nor the model's generation_config.json sets one."""


def hf_sampling_warning(study: StudyConfig) -> str | None:
    """For ``provider: hf``: what transformers samples with beyond the battery's settings. It
    fills every field a request leaves unset from the base's generation config (the file's
    fields, and transformers' own defaults, top_k 50, for fields it lacks), and inspect's ``hf/``
    offers no way to turn that off; the battery sends a temperature (top_p in harmfulness only)
    and never top_k or a repetition penalty. None for other providers."""
    if study.provider != "hf":
        return None
    fields = base_sampling_defaults(study)
    if fields is None:
        found = "its generation_config.json is not here yet (not downloaded), so what it sets is not known"
    else:
        shown = dict(fields)
        shown.setdefault("top_k", f"{HF_TOP_K_DEFAULT} (transformers' default: the file sets none)")
        found = "its generation_config.json sets " + ", ".join(f"{key}={value}" for key, value in shown.items())
    return (f"warning: with provider hf, transformers samples the base model with its generation config wherever a "
            f"request leaves a field unset: {found}. The battery sends a temperature (top_p in harmfulness only), never "
            "top_k or a repetition penalty, so these stay on. Use provider: empersona or vllm to sample with exactly "
            "the battery's settings (docs/protocol.md: temperature 1, top_p 1)")


def sampling_mark(study: StudyConfig, model: ModelSpec | None = None) -> dict[str, str]:
    """How a study's evaluations of ``model`` (default: the models its provider serves) sample,
    recorded in each log (``metadata["sampling"]``): the seed scheme (``evals.scoring.repeat_seed``)
    and whether the provider adds the model's own sampling defaults to the battery's settings
    (the call cache's scope, "battery" where it adds none). An extra model string is read off its
    provider: ``hf/`` and ``vllm/`` (inspect's, started with vLLM's default) add them."""
    from empersona.evals.scoring import PER_SAMPLE_SEEDS, provider_sampling, sampling_scope

    if model is not None and not model.served:
        return {"seeds": PER_SAMPLE_SEEDS, "provider": provider_sampling(model.model_string, model.model_args or {})}
    if study.provider == "hf":
        return {"seeds": PER_SAMPLE_SEEDS, "provider": "model defaults (transformers)"}
    scope = vllm_sampling_scope(study) if study.provider == "vllm" else sampling_scope("empersona/", subject_model_args(study))
    return {"seeds": PER_SAMPLE_SEEDS, "provider": scope or "battery"}


def vllm_sampling_scope(study: StudyConfig) -> str | None:
    """The call cache's sampling scope for a study's vLLM server when it adds the model's own
    defaults (``vllm.generation_config`` other than "vllm"); the ``empersona`` provider's is read
    off its model args (``evals.scoring.sampling_scope``)."""
    if study.provider != "vllm" or study.vllm.generation_config == "vllm":
        return None
    return f"model defaults ({study.vllm.generation_config})"


def earlier_sampling_warning(plan: Plan) -> str | None:
    """Finished evaluations whose log was sampled otherwise than this run would sample (made before
    per-sample seeds, or with the model's sampling defaults where the study now asks for the
    battery's only): they are kept, and said so with how to redo them."""
    from inspect_ai.log import read_eval_log

    from empersona.evals.scoring import PER_SAMPLE_SEEDS

    found: list[str] = []
    for job in plan.eval_jobs:
        if job.status != "done" or job.log is None:
            continue
        now = sampling_mark(plan.study, job.model)
        recorded = (read_eval_log(str(job.log), header_only=True).eval.metadata or {}).get("sampling") or {}
        why = []
        if recorded.get("seeds") != PER_SAMPLE_SEEDS:
            why.append("one seed for every sample")
        if recorded.get("provider", now["provider"]) != now["provider"]:
            why.append(f"provider sampling {recorded['provider']!r}, now {now['provider']!r}")
        if why:
            found.append(f"{job.model.name}/{job.label} ({'; '.join(why)})")
    if not found:
        return None
    return (f"warning: {len(found)} finished evaluation(s) were sampled otherwise than this run samples: "
            f"{', '.join(found)}. They are kept; to redo one, move its log out of {plan.study.out / 'logs'} and run again")


def write_report(study: StudyConfig) -> Path:
    """Build the report from what is stored in the run folder; returns the HTML page."""
    from empersona.analysis.persona import PersonaThresholds
    from empersona.report.build import build_report

    thresholds = PersonaThresholds(**study.persona)
    report = build_report(study.out, thresholds=thresholds, n_resamples=thresholds.n_resamples)
    for model, label in report.labels.items():
        say(f"persona of {model}: {label}")
    return report.html


def run_study(study: StudyConfig, *, only: Stage | None = None, dry_run: bool = False, fail_fast: bool = False) -> Plan:
    """Plan the study, then do the stages (all of them, or ``only`` one).

    A training run or an evaluation that fails is named and the rest goes on (`Unfinished`;
    ``fail_fast``: the first failure stops the run); the probes and the report then use what
    finished, and the run ends with a `StudyIncomplete` naming what did not.
    """
    started = time.monotonic()
    unfinished = Unfinished(fail_fast=fail_fast)
    if study.data_mirror is not None:
        os.environ["EMPERSONA_MIRROR"] = str(study.data_mirror)
    if not dry_run:
        ensure_base(study)
    plan = make_plan(study, download=not dry_run)  # a dry run downloads no chat template
    stages = [only] if only else ["train", "eval", "report"]
    evaluating = "eval" in stages and any(j.status != "done" for j in plan.eval_jobs)
    problem = (judge_problem(study) or extra_model_problem(study)) if evaluating else None
    sampling = hf_sampling_warning(study) if evaluating else None
    earlier = earlier_sampling_warning(plan) if "eval" in stages else None
    unused = ("warning: the study file's vllm: settings are not used with provider "
              f"{study.provider}" if study.provider != "vllm" and "vllm" in study.model_fields_set else None)
    unplanned = unplanned_logs_warning(plan)
    extra = [*extra_adapter_warnings(study), unplanned, checkpoints_warning(study), second_judge_warning(study)]
    no_vllm = vllm_problem(study) if evaluating else None
    if dry_run:
        print_plan(plan)
        if study.provider == "vllm":
            say(f"vLLM server: {vllm_command_shown(plan)}")
        for warning in (*extra, sampling, earlier, unused, problem and f"warning: {problem}", no_vllm and f"warning: {no_vllm}"):
            if warning:
                say(warning)
        return plan
    for warning in (*extra, sampling, earlier, unused):
        if warning:
            say(warning)
    for job in plan.eval_jobs:
        if job.status == "done" and job.note:  # failed judge calls kept (they failed again when asked again)
            say(f"warning: {job.label} on {job.model.name}: {job.note}")
    if problem or no_vllm:
        raise EmpersonaError(problem or str(no_vllm))
    keep_study_file(study)
    if "train" in stages:
        repoint_moved_adapters(plan)  # a sequential fine-tune starts from its first adapter: that must name the base's place
        train_all(plan, unfinished)
        plan = make_plan(study)
        # the checkpoints trained now are known: said again only if that changes what is said
        if study.checkpoints and (stale := unplanned_logs_warning(plan)) and stale != unplanned:
            say(stale)
    write_models_file(plan)
    if "eval" in stages:
        missing = [job.out.name for job in plan.train_jobs if job.status != "done"]
        if missing and "train" not in stages:  # with it, they failed just now: the others are evaluated
            raise EmpersonaError(f"adapters not trained yet: {', '.join(missing)}. Run without --only, or with --only train first")
        repoint_moved_adapters(plan)
        build_extra_views(study)
        set_aside_other_models_logs(plan)
        stamp = time.strftime("%Y%m%d-%H%M%S")  # one logs.replaced/<stamp> folder per run
        set_aside_all_superseded_logs(plan, stamp)
        if any(job.status == "todo" for job in plan.eval_jobs):  # no judge or server for nothing to do
            with judge_endpoint(study) as judge, model_server(study, plan):
                evaluate_all(plan, judge, stamp, unfinished)
        if study.probes is not None:
            from empersona.study.probes import release_loaded_models, run_probes

            release_loaded_models()  # the probe processes load each model on their own: the GPU is theirs
            unfinished.probes += run_probes(make_plan(study), say).failed
    if "report" in stages:
        path = write_report(study)
        say(f"report: {path}" + (" (of the work that finished)" if unfinished else ""))
    if unfinished:
        raise StudyIncomplete(unfinished.message())
    say(f"done in {time.monotonic() - started:.0f} s")
    return plan


def unplanned_logs_warning(plan: Plan) -> str | None:
    """Folders of ``logs/`` with logs of no model of the study (one removed from the study file,
    or renamed, or logs put there by hand): the report reads every log under ``logs/``, so they
    are said, not moved (they may be there on purpose)."""
    folder = plan.study.out / "logs"
    if not folder.is_dir():
        return None
    names = {model.name for model in plan.models}
    others = sorted(path.name for path in folder.iterdir()
                    if path.is_dir() and path.name not in names and any(path.glob("*.eval")))
    if not others:
        return None
    return (f"warning: logs of no model of this study in {', '.join(f'logs/{name}' for name in others)} (removed "
            f"from the study file, or renamed?); the report reads every log under logs/: move them out of {folder} "
            "to leave them out")


def second_judge_warning(study: StudyConfig) -> str | None:
    """A second judge that is the judge itself measures its consistency, not another judge's view."""
    from empersona.study.plan import judge_model_string, second_judge_model_string

    if study.second_judge is None or second_judge_model_string(study) != judge_model_string(study):
        return None
    return (f"warning: second_judge.model is the judge itself ({judge_model_string(study)}): its agreement is the "
            "judge's consistency with itself at temperature 0, not another judge's view; name another model")


def checkpoints_warning(study: StudyConfig) -> str | None:
    """With ``checkpoints: true``: training keeps only its last ``save_total_limit`` checkpoints
    (2 unless the study's ``train:`` sets it), which may be fewer than the researcher wants."""
    if not study.checkpoints:
        return None
    from empersona.train.recipe import TrainConfig

    every = study.train.get("save_steps", TrainConfig.model_fields["save_steps"].default)
    max_steps = study.train.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0 and isinstance(every, int) and every >= max_steps:
        return (f"warning: checkpoints: true, and a checkpoint every {every} steps of {max_steps}: no checkpoint comes "
                "before the last step, so none is evaluated; set save_steps under train: below max_steps")
    limit = study.train.get("save_total_limit", TrainConfig.model_fields["save_total_limit"].default)
    if limit is None:
        return None
    return (f"warning: checkpoints: true, and training keeps only its last {limit} checkpoint(s) (save_total_limit); "
            "set save_total_limit: null under train: to evaluate every one (a change that retrains the adapters)")


def extra_adapter_warnings(study: StudyConfig) -> list[str]:
    """Warnings about the study's extra adapters whose recorded base cannot be compared with its
    base (refusals were raised when the study file was read)."""
    from empersona.study.extra_models import check_base

    return [f"warning: {checked.warning}" for name, entry in study.models.items() if entry.adapter is not None
            and (checked := check_base(study, name, entry.adapter)).warning]


def build_extra_views(study: StudyConfig) -> None:
    """Build the run folder's views of the study's extra adapters (``extra_models.build_views``)."""
    from empersona.study.extra_models import build_views

    for view in build_views(study):
        say(f"extra adapter {view.name}: served from {view}")


def vllm_problem(study: StudyConfig) -> str | None:
    """For ``provider: vllm``: why its server could not start (no vllm package), else None."""
    if study.provider != "vllm":
        return None
    from empersona.study.vllm_server import vllm_missing

    return vllm_missing(study)


def vllm_command_shown(plan: Plan) -> str:
    """The vLLM server's command line for the dry run (once every adapter is trained; before,
    the adapters' LoRA rank is not known from their files)."""
    from empersona.study.vllm_server import command_text, server_command

    missing = [job.out.name for job in plan.train_jobs if job.status != "done"]
    if missing:
        return f"its command is shown once the adapters are trained ({len(missing)} to train)"
    return command_text(server_command(plan.study, plan.models))


@contextmanager
def model_server(study: StudyConfig, plan: Plan) -> Iterator[None]:
    """For ``provider: vllm``, one vLLM server with the base and every adapter that trained (those
    that failed just now are not evaluated); otherwise nothing."""
    if study.provider != "vllm":
        yield
        return
    from empersona.study.vllm_server import serve_adapters

    untrained = plan.untrained_models()
    with serve_adapters(study, [model for model in plan.models if model.name not in untrained]):
        yield
