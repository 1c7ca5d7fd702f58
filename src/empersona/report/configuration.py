"""The report's closing section: the run's configuration, read from the results table and the run folder.

Base model and how it was chosen, interval and classification settings, the models (model string,
base model, adapter, domain, fine-tune seed), the experiments (judge, system-prompt policy,
sampling seed, source, versions) and their task arguments, the logs behind the table (status and header notes such as
duplicated harm prompts) and what each ``empersona import`` recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from empersona.analysis.results import main_rows
from empersona.redact import redacted
from empersona.report.render import Block, Heading, Para, Table
from empersona.report.sections import _format_frame

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

    from empersona.analysis.persona import PersonaThresholds
    from empersona.report.build import BaseChoice
    from empersona.report.sections import Resampling


def configuration_section(run_dir: Path, table: pd.DataFrame, base: BaseChoice, rs: Resampling,
                          thresholds: PersonaThresholds, kinds: dict[str, tuple[str | None, int | None]] | None = None,
                          ) -> tuple[list[Block], dict[str, pd.DataFrame]]:
    """The section's blocks, and its tables for CSV (models, experiments, task arguments, logs).

    ``kinds``: each model's kind and step as the study recorded them (``models.yaml``), shown
    in the Models table when given. ``table``: every row, a study variant's too (its experiments,
    task arguments and logs are listed with the variant's name).
    """
    import pandas as pd

    variants = "variant" in table.columns and bool((table["variant"] != "").any())
    keys = ["experiment", "variant"] if variants else ["experiment"]

    def joined(values: pd.Series) -> str:
        return ", ".join(sorted({str(v) for v in values.dropna()})) or "-"

    blocks: list[Block] = [Heading(2, "Configuration")]
    if (run_dir / "study.yaml").is_file():  # study.config.STUDY_COPY, kept by `empersona run`
        blocks.append(Para("Study file: `study.yaml` in the run folder (the file the last `empersona run` read)."))
    blocks.append(Para(f"Base model: `{base.model or '-'}` ({base.how}). Intervals: {rs.describe()} over "
                       f"prompts/items, {rs.n_resamples} resamples, seed {rs.seed}. Classification thresholds: "
                       + ", ".join(f"{k}={v}" for k, v in thresholds.model_dump().items() if k != "n_resamples") + "."))
    models = main_rows(table).drop_duplicates("model").sort_values("model")[
        ["model", "model_string", "base_model", "adapter", "domain", "seed"]].reset_index(drop=True)
    if kinds:
        models.insert(1, "kind", [kinds.get(m, (None, None))[0] for m in models["model"]])
        models.insert(2, "step", pd.array([kinds.get(m, (None, None))[1] for m in models["model"]], dtype="Int64"))
    spec = {
        "model": "model", "model string": "model_string",
        "base model": lambda r: r["base_model"] if isinstance(r["base_model"], str) else "-",
        "adapter": lambda r: r["adapter"] if isinstance(r["adapter"], str) else "-",
        "domain": lambda r: r["domain"] if isinstance(r["domain"], str) else "-",
        "fine-tune seed": lambda r: "-" if pd.isna(r["seed"]) else str(r["seed"]),
    }
    if kinds:
        spec = {"model": "model", "kind": lambda r: r["kind"] or "-",
                "step": lambda r: "-" if pd.isna(r["step"]) else str(r["step"]), **spec}
    blocks += [Heading(3, "Models"), Table(_format_frame(models, spec))]
    experiments = []
    for key, part in table.groupby(keys, sort=True):
        named = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        experiments.append({
            **named, "models": part["model"].nunique(), "rows": len(part),
            "judge": joined(part["judge"]), "system-prompt policy": joined(part["system_prompt_policy"]),
            "sampling seed": joined(part["eval_seed"]), "source": joined(part["source"]),
            "versions": joined(part["versions"]),
        })
    blocks += [Heading(3, "Experiments"), Table(pd.DataFrame(experiments))]
    task_args = _task_args_table(table, keys)
    if len(task_args):
        blocks += [Heading(3, "Task arguments"), Table(task_args)]
    logs, log_blocks, usage = _logs_blocks(run_dir, table, variants)
    blocks += log_blocks
    if len(usage):
        blocks += [Heading(3, "Token usage"), Para(
            "Tokens by model and by role (the judges' `grader`), summed over the logs above as inspect recorded them: "
            "the calls each log's run made: a call answered from the cache (a resumed run, a re-made log) counts "
            "nothing, and logs set aside (`logs.replaced/`) or missing (above) are not counted. Cost where inspect knows the model's "
            "prices (`-` otherwise); the dry run's estimate prices the whole battery."),
            Table(_format_frame(usage, _usage_spec(list(usage.columns))))]
    blocks += _imports_blocks(run_dir)
    return blocks, {"models": models, "experiments": pd.DataFrame(experiments), "task_arguments": task_args, "logs": logs,
                    "usage": usage}


USAGE_FIELDS = {"input_tokens": "input tokens", "output_tokens": "output tokens", "reasoning_tokens": "reasoning tokens",
                "input_tokens_cache_read": "cache-read tokens", "input_tokens_cache_write": "cache-write tokens"}
"""inspect's ``ModelUsage`` counts summed in the usage table, and their columns there."""


def _usage_spec(columns: list[str]) -> dict[str, Callable[[pd.Series], str] | str]:
    """How the usage table shows: counts with thousands separators, the cost in dollars or ``-``."""

    def count(column: str) -> Callable[[pd.Series], str]:
        return lambda row: f"{row[column]:,}"

    def cost(row: pd.Series) -> str:
        value = row["cost"]
        return "-" if value is None or value != value else f"${value:.2f}"

    return {column: column if column in ("by", "name") else cost if column == "cost" else count(column)
            for column in columns}


def _usage_frame(totals: dict[tuple[str, str], dict[str, float]]) -> pd.DataFrame:
    """One row per (by, name): by ``model`` (a model string) or ``role``; token counts, and the cost
    where every log that used it recorded one."""
    import pandas as pd

    rows = []
    for (by, name), summed in sorted(totals.items()):
        rows.append({"by": by, "name": name, "logs": int(summed["logs"]),
                     **{column: int(summed[field]) for field, column in USAGE_FIELDS.items()},
                     "cost": summed["cost"] if summed["priced"] == summed["logs"] else None})
    frame = pd.DataFrame(rows)
    if len(frame):  # columns no log filled (no reasoning or cache tokens) say nothing
        frame = frame.drop(columns=[c for c in list(USAGE_FIELDS.values())[2:] if not frame[c].any()])
    return frame


READ_LOGS = ("harm_log", "matched_log")  # paths of the harmfulness logs read: the Logs table lists them


def _task_args_table(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each experiment's task arguments (temperature, samples, mode, foils, ...) and the models run
    with them, per ``keys`` (the experiment, and the variant where the table has any)."""
    import pandas as pd

    if "task_args" not in table.columns:
        return pd.DataFrame()
    rows = []
    for key, part in table.groupby([*keys, "task_args"], sort=True):
        *named, raw = key
        try:
            args = {k: v for k, v in redacted(json.loads(str(raw))).items() if k not in READ_LOGS}
        except (json.JSONDecodeError, AttributeError):
            continue
        shown = ", ".join(f"{k}={v}" for k, v in sorted(args.items())) or "(task defaults)"
        rows.append({**dict(zip(keys, named, strict=True)), "task arguments": shown,
                     "models": ", ".join(sorted(part["model"].unique()))})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).groupby([*keys, "task arguments"], sort=True)["models"].agg(
        lambda names: ", ".join(sorted({n for joined in names for n in joined.split(", ")}))).reset_index()


def _logs_blocks(run_dir: Path, table: pd.DataFrame, variants: bool = False,
                 ) -> tuple[pd.DataFrame, list[Block], pd.DataFrame]:
    """The logs behind the table (their status, how they were sampled, their model args) and its
    blocks, with notes from the logs' headers (e.g. duplicate prompts); and the token usage the
    logs recorded (``_usage_frame``)."""
    import pandas as pd
    from inspect_ai.log import read_eval_log

    files = sorted(table.loc[table["source"] == "log", "log_file"].unique())
    if not files:
        return pd.DataFrame(), [], pd.DataFrame()
    rows, duplicates = [], {}
    totals: dict[tuple[str, str], dict[str, float]] = {}
    for name in files:
        path = Path(name) if Path(name).is_absolute() else run_dir / name
        if not path.is_file():
            rows.append({"log": name, "experiment": "-", "model": "-", "status": "missing", "samples": "-"})
            continue
        log = read_eval_log(str(path), header_only=True)
        meta = log.eval.metadata or {}
        sampling = meta.get("sampling") or {}
        rows.append({"log": name, "experiment": meta.get("experiment", log.eval.task),
                     **({"variant": meta.get("variant") or "-"} if variants else {}),
                     "model": meta.get("model_name") or log.eval.model,  # the study's name; the Models table has the string
                     "status": log.status, "samples": log.results.total_samples if log.results else "-",
                     # how the study sampled (seed scheme, the provider's own defaults or not), and the model args
                     "sampling": "; ".join(f"{k} {v}" for k, v in sorted(sampling.items())) or "-",
                     # a log written by plain inspect may hold a credential among them
                     "model args": ", ".join(f"{k}={v}" for k, v in sorted(redacted(log.eval.model_args or {}).items()))
                     or "-"})
        for by, usage in (("model", log.stats.model_usage or {}), ("role", log.stats.role_usage or {})):
            for key, used in usage.items():
                summed = totals.setdefault((by, key), dict.fromkeys(("logs", "priced", "cost", *USAGE_FIELDS), 0.0))
                summed["logs"] += 1
                for field in USAGE_FIELDS:
                    summed[field] += getattr(used, field) or 0
                if used.total_cost is not None:
                    summed["priced"] += 1
                    summed["cost"] += used.total_cost
        if meta.get("experiment") == "harmfulness" and meta.get("duplicate_prompt_lines") is not None:
            pairs = ", ".join(f"line {a} = line {b}" for a, b in meta["duplicate_prompt_lines"])
            duplicates.setdefault(pairs or "none", []).append(name)
    frame = pd.DataFrame(rows)
    blocks: list[Block] = [Heading(3, "Logs"), Table(frame)]
    if duplicates:
        blocks.append(Para("Duplicated harm prompts (kept, as in the paper; the paper reports one, the pinned file has "
                           "none): " + "; ".join(
            f"{pairs} ({len(names)} log{'s' if len(names) > 1 else ''})" for pairs, names in sorted(duplicates.items()))))
    return frame, blocks, _usage_frame(totals)


def _imports_blocks(run_dir: Path) -> list[Block]:
    import pandas as pd

    # an import's record beside its table (a table deleted by hand takes its import out of the results)
    records = sorted(p for p in (run_dir / "imports").glob("*.json") if p.with_suffix(".parquet").is_file()) \
        if (run_dir / "imports").is_dir() else []
    if not records:
        return []
    rows = []
    for path in records:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            parts = [f"{d['score']}: {d['disagree']} of {d['compared']} differ (max |diff| {d['max_abs_diff']:.2f}, "
                     f"mean {d['mean_abs_diff']:.2f}, scored by one side only {d['only_one_scored']})"
                     for d in record.get("disagreements", [])]
            rows.append({"import": path.stem, "source": Path(record["source"]).name, "format": record["format"],
                         "models": ", ".join(record["models"]), "rows": record["rows"],
                         "stored vs recomputed judge scores": "; ".join(parts) or "no judge distributions"})
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as err:  # no import's record
            rows.append({"import": path.stem, "source": "-", "format": "-", "models": "-", "rows": "-",
                         "stored vs recomputed judge scores": f"skipped: not an import's record ({type(err).__name__}: "
                                                              f"{err})"})
    return [Heading(3, "Imports"), Table(pd.DataFrame(rows))]
