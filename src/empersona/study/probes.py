"""The study's probe stage (``probes:`` in a study file): `analysis.activations` on every model with
local weights, at equal class counts, after the battery.

Which models: the base, the study's fine-tunes, their checkpoints and extra adapters (the models
served on the study's base), each with its finished harmfulness log. An extra ``model:`` entry is
probed when it names a local folder (``hf/DIR``, ``empersona/DIR``). A hub id of the base is read
from the Hugging Face cache, where the battery's run put it.

Equal counts: the cosine between the harm and self directions grows with the number of answers
per class (`analysis.activations`), so every model is probed with the same number per class: the
smallest per-class count among the models that have at least ``probes.min_answers`` (20) in each
class and enough to cross-validate, at most ``MAX_ANSWERS`` (or the study's ``probes.max_answers``).
A model with fewer (a base model often has almost no harmful answers) is skipped, and the run says
so: it would drag every model's count down to a few answers.

Each model is probed by ``empersona probe`` in a process of its own (the battery's models, kept
loaded by inspect in this one, do not share the device with it; a model that fails does not stop
the others) into ``RUN_DIR/probes/<name>/`` (probe.json, probe.csv, probe.png); a model whose
probe.json was made from its current harmfulness log with the same settings and count is not
probed again, and when every model's is, no log is read. Folders of models not probed now go to
``probes.replaced/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from empersona.atomic import replace_text
from empersona.errors import EmpersonaError

if TYPE_CHECKING:
    from empersona.study.config import ProbeStage
    from empersona.study.plan import ModelSpec, Plan

MAX_ANSWERS = 200
"""Per-class cap when the study file sets none: enough for stable directions, a few minutes per model."""


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


def common_max_answers(targets: list[ProbeTarget], folds: int, seed: int, cap: int,
                       least: int = 1) -> tuple[int | None, list[str]]:
    """The per-class count every probed model gets (the smallest among those with enough answers
    to cross-validate and at least ``least`` in each class, at most ``cap``), and the models with
    too few (skipped)."""
    from empersona.analysis.activations import cross_validation_problem, harm_examples
    from empersona.evals.harm_log import read_harm_log

    counts, too_few = [], []
    for target in targets:
        examples = harm_examples(read_harm_log(target.harm_log), None, seed)
        problem = cross_validation_problem(examples.examples, folds)
        if problem is not None or min(examples.counts.high, examples.counts.low) < least:
            too_few.append(f"{target.name}: {examples.counts.high} high- and {examples.counts.low} low-harm answers, "
                           f"fewer than probes.min_answers ({least}) in a class, or too few to cross-validate with "
                           f"{folds} folds")
        else:
            counts.append(min(examples.counts.high, examples.counts.low))
    return (min([*counts, cap]) if counts else None), too_few


def stored_settings(out: Path) -> dict[str, Any] | None:
    """The settings and shape ``out/probe.json`` records (None when absent or unreadable)."""
    try:
        data = json.loads((out / "probe.json").read_text(encoding="utf-8"))
        return {**data["settings"], "num_layers": data["num_layers"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_current(stored: dict[str, Any] | None, stage: ProbeStage, seed: int, harm_log: Path,
               max_answers: int | None) -> bool:
    """Whether a probe.json was made from this harmfulness log (by file name: a moved run folder
    keeps its probes) with the stage's settings, in the precision its device runs now (a study
    resumed on a machine of the other kind: fp32 on CPU, bf16 on CUDA) and, when given, ``max_answers``."""
    from empersona.analysis.activations import parse_layers, placement

    if stored is None:
        return False
    try:
        layers = parse_layers(stage.layers, int(stored["num_layers"]))
        dtype = placement(stage.device).dtype
    except (EmpersonaError, KeyError, TypeError, ValueError):
        return False
    return (Path(str(stored.get("harm_log"))).name == harm_log.name and stored.get("layers") == layers
            and stored.get("dtype", dtype) == dtype
            and (stored.get("pool"), stored.get("folds"), stored.get("resamples"), stored.get("seed"))
            == (stage.pool, stage.folds, stage.resamples, seed)
            and (max_answers is None or stored.get("max_answers") == max_answers))


def release_loaded_models() -> None:
    """Let go of the models the battery loaded in this process before the probe processes load
    theirs: inspect keeps every model it built for the battery (``get_model`` memoizes them, and an
    ``empersona/`` model holds its engine, an ``hf/`` one its weights), so dropping the provider's
    engines alone would leave the base on the GPU beside the probe's copy."""
    import gc
    import sys

    from inspect_ai.model import _model as inspect_model  # where get_model keeps memoized models

    from empersona.provider import api

    inspect_model._models.clear()
    api.release_engines()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def probe_command_line(target: ProbeTarget, out: Path, stage: ProbeStage, seed: int, max_answers: int) -> list[str]:
    """``empersona probe`` for one model, run in a process of its own: the battery's models, which
    inspect keeps loaded in this one, do not share the device with it, and a model that fails
    (out of memory, unloadable) does not stop the others."""
    import sys

    return [sys.executable, "-m", "empersona.cli", "probe", target.model, "--harm-log", str(target.harm_log),
            "--out", str(out), "--overwrite", "--layers", stage.layers, "--pool", stage.pool, "--device", stage.device,
            "--batch-size", str(stage.batch_size), "--max-answers", str(max_answers), "--seed", str(seed),
            "--folds", str(stage.folds), "--resamples", str(stage.resamples)]


def set_aside_stale(run_folder: Path, keep: set[str], say: Any) -> list[Path]:
    """Move ``probes/<name>/`` folders of models not probed now (removed from the study, skipped,
    failed, or made at another count) to ``probes.replaced/<stamp>/``: the report reads every
    probe.json under ``probes/`` and would mix class counts."""
    import shutil
    import time

    folder = run_folder / "probes"
    stale = [path for path in sorted(folder.iterdir()) if path.is_dir() and path.name not in keep] if folder.is_dir() else []
    if not stale:
        return []
    target = run_folder / "probes.replaced" / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    moved = [Path(shutil.move(str(path), str(target / path.name))) for path in stale]
    say(f"probes: moved {len(moved)} probe folder(s) of models not probed now ({', '.join(p.name for p in moved)}) to "
        f"{target}")
    return moved


class ProbeRun(NamedTuple):
    """What `run_probes` did: the probe folders written, and ``<model>: <why>`` of each that failed."""

    written: list[Path]
    failed: list[str]


def run_probes(plan: Plan, say: Any) -> ProbeRun:
    """Probe every model of the study that has local weights (see the module docstring), each in a
    process of its own; a model whose probe fails is named and the others go on."""
    import subprocess

    from empersona.analysis.activations import default_out_dir

    stage = plan.study.probes
    assert stage is not None
    seed = plan.study.seed
    targets, skipped = probe_targets(plan)
    outs = {t.name: default_out_dir(t.harm_log, t.model) for t in targets}
    stored = {t.name: stored_settings(outs[t.name]) for t in targets}
    counts = {s.get("max_answers") for s in stored.values() if s is not None}
    shared = next(iter(counts)) if len(counts) == 1 else None
    # what decides the common count (the candidates, their logs, min_answers, the cap): unchanged since
    # the last time every model was probed, the count would come out the same, so no log need be read
    group = {"targets": sorted([t.name, t.harm_log.name] for t in targets), "min_answers": stage.min_answers,
             "cap": stage.max_answers or MAX_ANSWERS}
    marker = plan.study.out / "probes" / GROUP_FILE
    last = read_group(marker) or {}
    too_few_then = set(last.get("skipped") or ())  # too few answers then, and their logs are the same now
    if (targets and shared is not None and {k: v for k, v in last.items() if k != "skipped"} == {**group, "max_answers": shared}
            and all(is_current(stored[t.name], stage, seed, t.harm_log, shared) for t in targets if t.name not in too_few_then)):
        set_aside_stale(plan.study.out, set(outs), say)
        return ProbeRun([], [])  # every model probed with these settings, at one count: nothing to do (no log read)
    max_answers, too_few = common_max_answers(targets, stage.folds, seed, stage.max_answers or MAX_ANSWERS,
                                              stage.min_answers)
    for reason in skipped + too_few:
        say(f"probes: {reason}: not probed")
    left_out = {reason.split(":", 1)[0] for reason in too_few}
    targets = [t for t in targets if t.name not in left_out]
    if not targets or max_answers is None:
        say("probes: no model to probe")
        set_aside_stale(plan.study.out, set(), say)
        return ProbeRun([], [])
    todo = [t for t in targets if not is_current(stored[t.name], stage, seed, t.harm_log, max_answers)]
    if todo:
        say(f"probes: {len(todo)} of {len(targets)} model(s) to probe, every model at {max_answers} answers per harm "
            f"class (the smallest count among them{'' if stage.max_answers is None else ', at most probes.max_answers'}: "
            "the cosine depends on it)")
    written: list[Path] = []
    failed: list[str] = []
    reasons: list[str] = []
    for index, target in enumerate(todo, start=1):
        say(f"probe {index}/{len(todo)}: {target.name}")
        done = subprocess.run(probe_command_line(target, outs[target.name], stage, seed, max_answers), check=False)
        if done.returncode == 0:
            written.append(outs[target.name])
        else:
            failed.append(target.name)
            say(f"probes: {target.name} failed (exit code {done.returncode}; its output above); the others go on")
            reasons.append(f"{target.name}: the probe process exited with code {done.returncode} (its output is above)")
    set_aside_stale(plan.study.out, {t.name for t in targets if t.name not in failed}, say)
    if failed:
        say(f"probes: {len(failed)} model(s) not probed: {', '.join(failed)}; run the study again to retry them")
    else:
        marker.parent.mkdir(parents=True, exist_ok=True)
        replace_text(marker, json.dumps({**group, "max_answers": max_answers, "skipped": sorted(left_out)}, indent=1))
    return ProbeRun(written, reasons)


GROUP_FILE = "study.json"
"""In ``probes/``: the candidates, their harmfulness logs, ``min_answers``, the cap, the common
count and the models skipped for too few answers, of the last study run that probed every model it
could (`run_probes`' "nothing to do" needs it unchanged: a model removed, ``min_answers`` raised or
the cap moved changes the count)."""


def read_group(marker: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
