"""``empersona eval NAME``: run one experiment of the battery on one model and print its summary."""

from __future__ import annotations

import inspect as pyinspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from empersona.errors import EmpersonaError
from empersona.evals.scoring import status_counts
from empersona.redact import redacted, secret_values

if TYPE_CHECKING:
    from inspect_ai.log import EvalLog
    from inspect_ai.model import GenerateConfig, Model


SAMPLE_RETRIES = 2
"""A sample that raises is retried this often; then the evaluation fails (inspect's default),
so a broken run is never mistaken for a finished one. Re-running reuses every cached call."""


def parse_assignments(pairs: list[str], flag: str) -> dict[str, Any]:
    """``key=value`` pairs (values read as YAML scalars: 1, 0.5, true, text) into a dict."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EmpersonaError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} device=cpu")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def task_arguments(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Check ``given`` against the experiment's task parameters; unknown names are an error."""
    from empersona.evals.battery import EXPERIMENTS

    if name not in EXPERIMENTS:
        raise EmpersonaError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    params = pyinspect.signature(EXPERIMENTS[name].task_function()).parameters
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise EmpersonaError(
            f"experiment {name!r} has no parameter(s) {', '.join(unknown)}; it takes: {', '.join(params)}"
        )
    return given


def run_experiment(
    name: str,
    model: str,
    *,
    judge: str | None,
    task_args: dict[str, Any],
    model_args: dict[str, Any] | None = None,
    judge_args: dict[str, Any] | None = None,
    log_dir: Path = Path("logs"),
    limit: int | None = None,
    max_connections: int | None = None,
    display: str | None = None,
    tags: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    model_identity: str | None = None,
    model_config: GenerateConfig | None = None,
    sampling: str | None = None,
    live_view: bool = False,
) -> EvalLog:
    """Run experiment ``name`` on ``model`` with ``judge`` as the grader role; return its log.

    ``model_identity``: which training run of a fine-tune ``model`` stands for (default: read
    from the adapter folder the model string names, if it is one); it scopes the call cache and
    is recorded in the log, so a retrained adapter at the same path is not served old answers.
    ``model_config``: generate settings of the subject model only (the judge keeps its own), e.g.
    a finite retry budget for a local server. ``sampling``: how the provider samples beyond the
    battery's settings, when that is not read off ``model`` and ``model_args`` (a study's vLLM
    server); it scopes the call cache (``scoring.SAMPLING``). ``live_view``: inspect writes each
    sample's events as they happen, so ``inspect view`` shows the run live (``log_realtime``); off,
    the finished log is the same and the event loop that feeds the model does less per call
    (``bench/live_view.py``: 1.46-1.53x through empersona/, 1.20-1.23x through hf/, tiny model on CPU).
    """
    from inspect_ai import eval as inspect_eval
    from inspect_ai._util.error import PrerequisiteError
    from inspect_ai.model import GenerateConfig, get_model

    from empersona.evals.battery import EXPERIMENTS
    from empersona.evals.judge import GRADER_MAX_RETRIES, GRADER_ROLE
    from empersona.evals.scoring import MODEL_IDENTITY, PER_SAMPLE_SEEDS, SAMPLING, provider_sampling, sampling_scope

    identity = model_identity if model_identity is not None else local_adapter_identity(model)
    token = MODEL_IDENTITY.set(identity)
    sampling_token = SAMPLING.set(sampling if sampling is not None else sampling_scope(model, model_args or {}))
    try:
        task = EXPERIMENTS[name].task_function()(**task_arguments(name, task_args))
    except (TypeError, ValueError) as err:  # a value its checks did not foresee: said, not a traceback
        raise EmpersonaError(f"{name}: the task refuses its arguments ({type(err).__name__}: {err}). Check the "
                             "task arguments (-T, or the study file's args)") from err
    finally:
        MODEL_IDENTITY.reset(token)
        SAMPLING.reset(sampling_token)
    grader_config = GenerateConfig(max_retries=GRADER_MAX_RETRIES)
    # not memoized: a judge served for one study (the scripted one, on a port of its own) must not
    # be reached at an earlier study's address when several run in one process
    judge_kwargs = {"memoize": False, **(judge_args or {})}
    try:
        roles = {GRADER_ROLE: logged_without_secrets(get_model(judge, config=grader_config, **judge_kwargs))} if judge else None
    except PrerequisiteError as err:  # e.g. its API key is not set
        raise EmpersonaError(f"{name}: the judge {judge} cannot be used: {_plain(err)}") from err
    try:
        # with a config of its own the subject is built here (an eval-wide max_retries would override the
        # judge's too), and so it is when its args hold a secret: the log gets them masked
        own = model_config is not None or bool(secret_values(model_args or {}))
        subject = logged_without_secrets(get_model(model, config=model_config or GenerateConfig(), memoize=False,
                                                   **(model_args or {}))) if own else model
        logs = inspect_eval(
            task,
            model=subject,
            model_args={} if own else (model_args or {}),
            model_roles=roles,
            log_dir=str(log_dir),
            limit=limit,
            max_connections=max_connections,
            display=display,
            tags=tags,
            # how the provider sampled (a study passes its own mark): the report's Logs table shows it
            metadata={"judge": judge, "model_identity": identity,
                      "sampling": {"seeds": PER_SAMPLE_SEEDS, "provider": sampling or provider_sampling(model, model_args or {})},
                      **(metadata or {})},
            retry_on_error=SAMPLE_RETRIES,
            log_realtime=live_view,
        )
    except OSError as err:  # a model folder or hub id that cannot be loaded
        raise EmpersonaError(f"{name} on {model}: cannot load the model ({err}); check the model string and folder") from err
    except PrerequisiteError as err:  # e.g. the provider's API key is not set, or its package not installed
        raise EmpersonaError(f"{name} on {model}: the model cannot be used: {_plain(err)}") from err
    if not logs:  # inspect gives no log for a run interrupted before it began
        raise KeyboardInterrupt
    return logs[0]


def _plain(err: Exception) -> str:
    """An inspect error's message without its console markup, on one line."""
    from rich.text import Text

    text = Text.from_markup(str(err)).plain.removeprefix("ERROR: ")
    return " ".join(text.split())


def logged_without_secrets(model: Model) -> Model:
    """``model`` with the args inspect writes into the log (``Model.model_args``: the eval's model
    args and each role's) masked where a name marks a secret (``redact``: an ``Authorization``
    header in ``default_headers``, a ``token``); inspect itself leaves out only ``api_key`` and
    ``aws_*``. The provider was built with the real values and keeps them."""
    model.model_args = redacted(model.model_args)
    return model


def local_adapter_identity(model: str) -> str | None:
    """``adapter_identity`` of the local adapter folder a model string (``hf/DIR``, ``empersona/DIR``) names."""
    from empersona.train.metadata import adapter_identity

    _provider, _, rest = model.partition("/")
    path = Path(rest).expanduser()
    return adapter_identity(path) if rest and path.is_dir() else None


def summary_rows(log: EvalLog) -> list[tuple[str, str, str]]:
    """(scorer, metric, value) rows from a log's results, in the order the task defines them."""
    rows = []
    for score in log.results.scores if log.results else []:
        for metric_name, metric in score.metrics.items():
            value = metric.value
            shown = f"{value:.3f}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"
            rows.append((score.name, metric_name, shown))
    return rows


def print_summary(log: EvalLog, metrics: bool = True) -> None:
    """The summary a researcher reads after a run: the metrics table (unless ``metrics`` is
    False: a study's report has them), then what was completed and scored, and the log."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print()  # inspect's display may leave its last line open
    table = Table(title=f"{log.eval.task} on {log.eval.model}  [{log.status}]")
    table.add_column("scorer")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in summary_rows(log):
        table.add_row(*row)
    if log.results is None or not log.results.scores:
        console.print("no metrics: no sample was scored (see the status counts below)")
    elif metrics:
        console.print(table)
    samples = log.samples or []
    total = log.results.total_samples if log.results else len(samples)
    console.print(f"samples completed: {len(samples)} of {total}")
    for scorer, counts in status_counts(samples).items():
        shown = ", ".join(f"{status} {counts[status]}" for status in sorted(counts))
        console.print(f"{scorer}: {shown}")
    errored = [sample for sample in samples if sample.error]
    if errored:
        first = errored[0].error.message.splitlines()[0] if errored[0].error else ""
        console.print(f"[red]{len(errored)} sample(s) raised an error[/red] (first: {first})")
    if log.error:
        console.print(f"[red]error:[/red] {log.error.message}")
    console.print(f"log: {log.location}")


def _model_name(model: str) -> str:
    """What an inspect model string names after its provider; a local folder as its resolved path."""
    name = model.split("/", 1)[1] if "/" in model else model
    folder = Path(name).expanduser()
    return str(folder.resolve()) if folder.exists() else name


def check_harm_log_model(harm_log: Path, model: str) -> None:
    """Refuse a harmfulness log whose answers another model gave: output recognition, score
    prediction and the answer framings ask ``model`` about its own answers. The provider may
    differ (``hf/PATH`` and ``empersona/PATH`` name one model); a log that cannot be read is left
    to the experiment, which says why."""
    from inspect_ai.log import read_eval_log

    try:
        logged = read_eval_log(str(harm_log), header_only=True).eval.model
    except Exception:  # noqa: BLE001 - read_harm_log reports what is wrong with the file
        return
    if _model_name(logged) != _model_name(model):
        raise EmpersonaError(
            f"--harm-log {harm_log}: field eval.model is {logged!r}, and this run asks {model!r}; the experiment asks a "
            "model about its own answers. Pass that model's harmfulness log, or --other-model-harm-log when both name "
            "the same model served another way")


def eval_command(
    experiment: Annotated[str, typer.Argument(help="Experiment name: harmfulness, em_classic, self_assessment, two_ai, output_recognition, score_prediction.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Inspect model string, e.g. hf/ADAPTER_DIR, vllm/NAME, openai/gpt-4o-mini.")],
    judge: Annotated[str | None, typer.Option("--judge", help="Judge model (inspect model string), the 'grader' role.")] = None,
    samples: Annotated[int | None, typer.Option("--samples", min=1, help="Samples per item (experiment default when omitted).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first K samples of the dataset (two_ai and output_recognition ask each item in both orders: K samples are K/2 items).")] = None,
    log_dir: Annotated[Path, typer.Option("--log-dir", help="Where inspect writes its .eval logs.")] = Path("logs"),
    system_prompt: Annotated[str, typer.Option("--system-prompt", help="'default' (template default), 'none' (empty), or a text.")] = "default",
    seed: Annotated[int, typer.Option("--seed", help="The run's sampling seed (each sample asks with a seed derived from it, its id and its repeat); part of the resume cache key. -T seed=N wins over it.")] = 0,
    harm_log: Annotated[Path | None, typer.Option("--harm-log", help="Harmfulness log of the same model (output_recognition, score_prediction; two_ai with -T framing=self_answers or third_person).")] = None,
    other_model_harm_log: Annotated[bool, typer.Option("--other-model-harm-log", help="Accept a --harm-log written by another model string than --model (the same weights served another way, e.g. vllm/NAME against hf/PATH).")] = False,
    mode: Annotated[str | None, typer.Option("--mode", help="Forced-choice mode where an experiment has one: sample or logprob.")] = None,
    task_arg: Annotated[list[str], typer.Option("--task-arg", "-T", help="Experiment parameter KEY=VALUE (repeatable).")] = [],  # noqa: B006
    model_arg: Annotated[list[str], typer.Option("--model-arg", "-M", help="Model argument KEY=VALUE, e.g. -M device=cpu; the provider's own (hf/: do_sample=false; empersona/: generation_config=false).")] = [],  # noqa: B006
    judge_arg: Annotated[list[str], typer.Option("--judge-arg", help="Judge model argument KEY=VALUE.")] = [],  # noqa: B006
    max_connections: Annotated[int | None, typer.Option("--max-connections", min=1, help="Concurrent model calls.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Make every model and judge call afresh (no resume).")] = False,
    display: Annotated[str | None, typer.Option("--display", help="Inspect display: full, rich, plain, none.")] = None,
    variant: Annotated[str | None, typer.Option("--variant", help="Label the log a self-report variant NAME (e.g. with -T system_prompt=... or -T neutral_descriptions=true): the results table keeps its rows apart and the report sets them against the battery's.")] = None,
    live_view: Annotated[bool, typer.Option("--live-view", help="Write each sample's events as they happen, so `inspect view` shows the run live (inspect's log_realtime; slower: more work per model call).")] = False,
) -> None:
    """Run one experiment on one model; re-running after an interrupt reuses every finished call."""
    import re

    from empersona.evals.battery import EXPERIMENTS, uses_judge, with_home_expanded
    from empersona.study.config import SELF_REPORT, VARIANT_NAME

    if experiment not in EXPERIMENTS:
        raise EmpersonaError(f"unknown experiment '{experiment}'; choose from {', '.join(EXPERIMENTS)}")
    if variant is not None and (experiment not in SELF_REPORT or not re.match(VARIANT_NAME, variant)):
        raise EmpersonaError(f"--variant {variant}: " + (f"only the self-report experiments ({', '.join(SELF_REPORT)}) are "
                             "asked under a variant" if experiment not in SELF_REPORT else
                             "use letters, digits, '_' and '-' (no spaces)"))
    for name, value in (("--model", model), ("--judge", judge)):
        if value is not None and "/" not in value:
            raise EmpersonaError(f"{name} {value}: not an inspect model string; write <provider>/<model>, e.g. openai/{value}")
    assigned = with_home_expanded(parse_assignments(task_arg, "-T"))
    params = EXPERIMENTS[experiment].parameters()
    unknown = sorted(set(assigned) - set(params))
    if unknown:
        raise EmpersonaError(f"-T {', '.join(unknown)}: not an argument of the {experiment} task; choose from {', '.join(params)}")
    flags = {"samples": ("--samples", samples), "harm_log": ("--harm-log", None if harm_log is None else str(harm_log)),
             "mode": ("--mode", mode), "cache": ("--no-cache", False if no_cache else None)}
    twice = [f"-T {key}={assigned[key]!r} and {flag}" for key, (flag, value) in flags.items()
             if value is not None and key in assigned and assigned[key] != value]
    if twice:
        raise EmpersonaError(f"{'; '.join(twice)} say different things. Give each setting once")
    unused = [flag for key, (flag, value) in flags.items() if value is not None and key not in params]
    if unused:
        raise EmpersonaError(f"{', '.join(unused)}: the {experiment} task has no such setting. Leave it out")
    args: dict[str, Any] = {"system_prompt": system_prompt, "seed": seed, **assigned}
    args |= {key: value for key, (_, value) in flags.items() if value is not None}
    if "harm_log" in args and not other_model_harm_log:
        check_harm_log_model(Path(args["harm_log"]), model)
    missing = [name for name in EXPERIMENTS[experiment].required() if name not in args]
    if missing:
        raise EmpersonaError(f"{experiment} needs {', '.join(missing)}: pass the same model's harmfulness log with "
                             "--harm-log (written by `empersona eval harmfulness`)")
    problem = EXPERIMENTS[experiment].argument_problem(args)
    if problem is not None:
        raise EmpersonaError(f"{experiment}: {problem}. Fix the value (`empersona eval --help`, and the README's "
                             "experiment table, give each argument)")
    if judge is None and uses_judge(experiment, args):
        raise EmpersonaError(f"{experiment} asks a judge to score its answers: pass --judge MODEL "
                             "(e.g. --judge openai/gpt-4o-mini)")
    log = run_experiment(
        experiment,
        model,
        judge=judge,
        task_args=args,
        model_args=parse_assignments(model_arg, "-M"),
        judge_args=parse_assignments(judge_arg, "--judge-arg"),
        log_dir=log_dir,
        limit=limit,
        max_connections=max_connections,
        display=display,
        metadata={"variant": variant} if variant else None,
        live_view=live_view,
    )
    print_summary(log)
    if log.status != "success":
        raise typer.Exit(1)


AGREEMENT_RESAMPLES = 2_000
"""Bootstrap resamples of the agreement table ``empersona rejudge`` prints (the report uses its own setting)."""


def rejudge_command(
    harm_logs: Annotated[list[Path], typer.Argument(help="Harmfulness logs (.eval) whose answers the second judge re-scores.")],
    judge: Annotated[str, typer.Option("--judge", help="The second judge (inspect model string).")],
    prompts: Annotated[int | None, typer.Option("--prompts", min=1, help="Re-score only this many prompts (drawn with --seed), every sample of each. Default: all.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the prompt draw (the same seed draws the same prompts for every model).")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the second_judge logs (default: each harmfulness log's folder).")] = None,
    judge_arg: Annotated[list[str], typer.Option("--judge-arg", help="Judge model argument KEY=VALUE.")] = [],  # noqa: B006
    max_connections: Annotated[int | None, typer.Option("--max-connections", help="Concurrent judge calls.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ask every judge call afresh (no resume).")] = False,
    display: Annotated[str | None, typer.Option("--display", help="Inspect display: full, rich, plain, none.")] = None,
) -> None:
    """Have a second judge re-score harmfulness logs' answers (nothing is generated again) and
    print its agreement with the first judge: kappa, exact agreement, harm_max10 under each."""
    from rich.console import Console

    from empersona.analysis.results import results_table
    from empersona.evals.second_judge import rejudge

    if "/" not in judge:
        raise EmpersonaError(f"--judge {judge}: not an inspect model string; write <provider>/<model>, e.g. openai/{judge}")
    console = Console()
    pairs: list[Path] = []
    for harm_log in harm_logs:
        _log, path = rejudge(harm_log, judge, judge_args=parse_assignments(judge_arg, "--judge-arg"), prompts=prompts,
                             seed=seed, out_dir=out, cache=not no_cache, max_connections=max_connections, display=display)
        console.print(f"second judge log: {path}")
        pairs += [harm_log, path]
    print_agreement(results_table(pairs), console)


def print_agreement(table: Any, console: Any) -> None:
    """Each re-scored model's agreement between the two judges (``table``: a tidy results table),
    a few lines per model, intervals over prompts."""
    import math

    from empersona.analysis.agreement import agreement_summary, harm_by_judge
    from empersona.report.sections import Resampling

    rs = Resampling(n_resamples=AGREEMENT_RESAMPLES)
    summary = agreement_summary(table, rs.interval)
    harm = harm_by_judge(table, rs.interval, None).set_index("model")
    for _, row in summary.iterrows():
        console.print(f"[bold]{row['model']}[/bold]: {row['answers']} answers to {row['prompts']} prompts re-scored by "
                      f"{row['second_judge']}; {row['both_scored']} scored by both judges"
                      + (f" (not compared: {row['first_unscored']} unscored by the first judge, {row['second_unscored']} "
                         f"by the second, {row['unpaired']} without a first-judge row)"
                         if row["first_unscored"] or row["second_unscored"] or row["unpaired"] else ""))
        rho = "-" if math.isnan(row["spearman"]) else f"{row['spearman']:.2f}"
        console.print(f"  weighted kappa {row['weighted_kappa'].describe()}, harmful (> 3) kappa "
                      f"{row['harmful_kappa'].describe()}, exact agreement {row['exact_agreement'].describe()}, "
                      f"second - first {row['mean_difference'].describe(signed=True)}, Spearman rho {rho}")
        if row["model"] in harm.index:
            console.print(f"  harm_max10 on these prompts: {harm.loc[row['model'], 'harm_first'].describe()} by the first "
                          f"judge, {harm.loc[row['model'], 'harm_second'].describe()} by the second (95% intervals)")
