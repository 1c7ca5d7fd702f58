"""The study's probe stage (``probes:`` in a study file): `analysis.activations` on every model with
local weights, at equal class counts, after the battery.

Which models: the base, the study's fine-tunes, their checkpoints and extra adapters (the models
served on the study's base), each with its finished harmfulness log. An extra ``model:`` entry is
probed when it names a local folder (``hf/DIR``, ``empersona/DIR``). A hub id of the base is read
from the Hugging Face cache, where the battery's run put it.

Equal counts: the cosine between the harm and self directions grows with the number of answers
per class (`analysis.activations`), so every model is probed with the same number per class: the
smallest per-class count among the models that have enough answers to cross-validate, at most
``MAX_ANSWERS`` (or the study's ``probes.max_answers``). A model with too few harmful or harmless
answers (a base model often has almost no harmful ones) is skipped, and the run says so.

Each model's results go to ``RUN_DIR/probes/<name>/`` (probe.json, probe.csv, probe.png); a model
whose probe.json was made from its current harmfulness log with the same settings is not probed again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from empersona.errors import EmpersonaError

if TYPE_CHECKING:
    from empersona.analysis.activations import ProbePlan
    from empersona.study.plan import ModelSpec, Plan

MAX_ANSWERS = 200
"""Per-class cap when the study file sets none: enough for stable directions, a few minutes per model."""
SAME_RUN_FREE = ("model", "batch_size", "device", "dtype")
"""Settings a probe.json may differ in and still stand for the study's current probe."""


@dataclass(frozen=True)
class ProbeTarget:
    """One model to probe: its study name, the MODEL argument, its harmfulness log."""

    name: str
    model: str
    harm_log: Path


def local_model(spec: ModelSpec) -> str | None:
    """The MODEL argument for ``spec`` (an adapter folder, the base folder or hub id, a local
    ``model:`` folder), or None when it has no local weights."""
    if spec.adapter is not None:
        return str(spec.adapter)
    if spec.kind == "base":
        return spec.base_model
    provider, _, rest = spec.model_string.partition("/")
    if provider in ("hf", "empersona") and Path(rest).expanduser().is_dir():
        return rest
    return None


def probe_targets(plan: Plan) -> tuple[list[ProbeTarget], list[str]]:
    """The models to probe, with their finished harmfulness logs, and why others are not probed."""
    from empersona.study.plan import finished_log, judge_model_string

    skipped, targets = [], []
    harm = {job.model.name: job for job in plan.eval_jobs if job.experiment == "harmfulness"}
    for spec in plan.models:
        model = local_model(spec)
        job = harm.get(spec.name)
        if model is None:
            skipped.append(f"{spec.name}: no local weights ({spec.model_string})")
            continue
        log = None if job is None else finished_log(job.log_dir, "harmfulness", job.task_args, job.limit, spec,
                                                    judge_model_string(plan.study), plan.study.out)
        if log is None:
            skipped.append(f"{spec.name}: no finished harmfulness log")
            continue
        targets.append(ProbeTarget(spec.name, model, log))
    return targets, skipped


def common_max_answers(targets: list[ProbeTarget], folds: int, seed: int, cap: int) -> tuple[int | None, list[str]]:
    """The per-class count every probed model gets (the smallest among those with enough answers
    to cross-validate, at most ``cap``), and the models with too few (skipped)."""
    from empersona.analysis.activations import cross_validation_problem, harm_examples
    from empersona.evals.harm_log import read_harm_log

    counts, too_few = [], []
    for target in targets:
        examples = harm_examples(read_harm_log(target.harm_log), None, seed)
        problem = cross_validation_problem(examples.examples, folds)
        if problem is not None:
            too_few.append(f"{target.name}: {examples.counts.high} high- and {examples.counts.low} low-harm answers, "
                           f"too few to cross-validate with {folds} folds")
        else:
            counts.append(min(examples.counts.high, examples.counts.low))
    return (min([*counts, cap]) if counts else None), too_few


def _done(out: Path, plan: ProbePlan) -> bool:
    """Whether ``out/probe.json`` was made from this log with these settings (``SAME_RUN_FREE`` aside)."""
    path = out / "probe.json"
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    now = plan.settings.model_dump()
    return all(old.get(key) == value for key, value in now.items() if key not in SAME_RUN_FREE)


def run_probes(plan: Plan, say: Any) -> list[Path]:
    """Probe every model of the study that has local weights (see the module docstring); returns
    the probe.json files written now."""
    from empersona.analysis.activations import default_out_dir, measure_probe, plan_probe
    from empersona.analysis.probe_command import print_table, progress_bars, write_outputs

    settings = plan.study.probes
    assert settings is not None
    targets, skipped = probe_targets(plan)
    seed = plan.study.seed
    max_answers, too_few = common_max_answers(targets, settings.folds, seed, settings.max_answers or MAX_ANSWERS)
    for reason in skipped + too_few:
        say(f"probes: {reason}: not probed")
    left_out = {reason.split(":", 1)[0] for reason in too_few}
    targets = [t for t in targets if t.name not in left_out]
    if not targets or max_answers is None:
        say("probes: no model to probe")
        return []
    say(f"probes: {len(targets)} model(s) at {max_answers} answers per harm class each (the smallest count among them"
        f"{'' if settings.max_answers is None else ', at most probes.max_answers'}: the cosine depends on it)")
    written = []
    for index, target in enumerate(targets, start=1):
        try:
            probe = plan_probe(target.model, target.harm_log, layers=settings.layers, pool=settings.pool,
                               device=settings.device, batch_size=settings.batch_size, max_answers=max_answers,
                               seed=seed, folds=settings.folds, resamples=settings.resamples)
        except EmpersonaError as err:
            say(f"probes: {target.name}: not probed: {err}")
            continue
        out = default_out_dir(target.harm_log, target.model)
        if _done(out, probe):
            continue
        say(f"probe {index}/{len(targets)}: {target.name}")
        with progress_bars() as start_bar:
            result = measure_probe(probe, start_bar)
        print_table(result)
        written.append(write_outputs(result, out)[0])
    return written
