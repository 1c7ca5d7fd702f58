"""The output folder of a training run: what it holds, the record of a finished run, its checks.

``empersona.json`` (``TrainMetadata``, with ``DatasetInfo`` for the data) is written atomically
when a run finishes, so its presence marks a finished adapter; ``TRAINING_INCOMPLETE`` marks a run
still going or interrupted (it keeps the config the run started with, which a resume must match);
``checkpoints/`` holds the trainer's checkpoints. ``check_out_dir`` refuses to overwrite either
kind of folder. The record pins the dataset, the resolved config, the library versions and the git
revision of the source tree that produced the adapter.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from empersona.atomic import replace_text
from empersona.errors import EmpersonaError, located
from empersona.moved import FolderMove, run_folder_of
from empersona.train.recipe import TrainConfig

METADATA_FILE = "empersona.json"
INCOMPLETE_MARKER = "TRAINING_INCOMPLETE"
CHECKPOINTS_DIR = "checkpoints"
LIBRARIES: tuple[str, ...] = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "empersona")


class DatasetInfo(BaseModel):
    """Which data a run trained on: the source file's sha256 (of all of it) and the rows used.

    ``rows_sha256`` hashes the exact conversations trained on (after ``limit`` and the system
    prompt policy), one canonical JSON line each. ``rows_cut``: training rows longer than
    ``max_length``, cut to it (their ends, with the assistant's closing tokens, are not learned);
    ``rows_dropped``: rows the cut left with no assistant token, left out. Both None where not
    counted (packing, or runs recorded before they were).
    """

    model_config = ConfigDict(extra="forbid")

    domain: str
    source: str
    sha256: str
    rows: int
    rows_sha256: str
    train_rows: int
    holdout_rows: int
    rows_cut: int | None = None
    rows_dropped: int | None = None


class TrainMetadata(BaseModel):
    """Contents of ``empersona.json`` in a finished adapter folder."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "empersona-lora-adapter"
    base_model: str
    # a local base's files (`base_model.base_fingerprint`), None for a hub id and in older records
    base_fingerprint: str | None = None
    domain: str
    seed: int
    system_prompt_policy: str
    dataset: DatasetInfo
    config: dict[str, Any]
    init_adapter: dict[str, Any] | None
    versions: dict[str, str]
    git_revision: str
    device: str
    world_size: int
    grad_accum: int
    precision: str
    attention: str
    # the chat template the training data were rendered with: "model" (the model's own, with the
    # markers TRL adds to formats it knows) or one of empersona's (its path in the package)
    training_template: str = "model"
    steps: int
    final_loss: float | None
    mean_loss: float | None
    eval_loss: float | None
    resumed_from: str | None
    started_at: str
    finished_at: str
    wall_seconds: float


def check_out_dir(out_dir: Path, *, resume: bool) -> Path | None:
    """Refuse to overwrite; return the checkpoint to resume from (``None``: start afresh)."""
    if (out_dir / METADATA_FILE).exists():
        what = "nothing to resume" if resume else "it would be overwritten"
        raise EmpersonaError(
            f"{out_dir} already holds a finished adapter ({METADATA_FILE}); {what}. "
            "Choose another --out or remove that folder"
        )
    interrupted = (out_dir / INCOMPLETE_MARKER).exists()
    if not resume:
        if interrupted:
            raise EmpersonaError(
                f"{out_dir} holds an interrupted training run. Pass --resume to continue it, or remove the folder"
            )
        if out_dir.exists() and any(out_dir.iterdir()):
            raise EmpersonaError(f"{out_dir} exists and is not empty. Choose a new or empty --out folder")
        return None
    if not interrupted:
        raise EmpersonaError(f"--resume: {out_dir} holds no interrupted training run. Leave out --resume")
    return last_complete_checkpoint(out_dir / CHECKPOINTS_DIR)


def complete_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` written to the end, as (step, folder), oldest first.

    The trainer writes ``trainer_state.json`` last, so a checkpoint whose state file is missing or
    unreadable was cut short (the process died while saving) and is passed over.
    """
    if not checkpoints.is_dir():
        return []
    numbered = [(int(p.name.split("-")[-1]), p) for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    done = []
    for step, candidate in sorted(numbered):
        try:
            json.loads((candidate / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        done.append((step, candidate))
    return done


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest ``checkpoint-N`` that was written to the end (``complete_checkpoints``)."""
    done = complete_checkpoints(checkpoints)
    return done[-1][1] if done else None


NO_EFFECT_ON_ADAPTER = frozenset({"logging_steps", "gradient_checkpointing"})
"""Training settings that leave the trained adapter as it is (how often the loss is logged;
recomputing activations instead of keeping them): a change to them is no reason to train again."""
CHECKPOINT_SETTINGS = frozenset({"save_steps", "save_total_limit"})
"""Settings of the checkpoints alone: no reason to train again where neither run keeps its checkpoints."""


def config_changes(recorded: Mapping[str, Any], now: Mapping[str, Any], dataset_sha256: str | None = None) -> list[str]:
    """The training settings that differ between a recorded config and ``now``, but those that
    leave the adapter as it is (``NO_EFFECT_ON_ADAPTER``; ``CHECKPOINT_SETTINGS`` where neither keeps
    its checkpoints).

    A run folder that was moved or copied (another mount point, scratch space to a project
    folder) changes no setting: paths recorded inside it count as their new places (the move is
    read off ``out``). A domain file at another path counts as the same when its sha256 is the
    one the run recorded (``dataset_sha256``).
    """
    from empersona.data.fetch import sha256_file

    recorded_out, now_out = recorded.get("out"), now.get("out")
    move = (FolderMove.between(run_folder_of(recorded_out), run_folder_of(now_out))
            if isinstance(recorded_out, str) and isinstance(now_out, str) else None)
    checkpoints_kept = bool(recorded.get("keep_checkpoints")) or bool(now.get("keep_checkpoints"))
    ignored = NO_EFFECT_ON_ADAPTER if checkpoints_kept else NO_EFFECT_ON_ADAPTER | CHECKPOINT_SETTINGS
    changed = []
    for key in sorted(set(recorded) | set(now)):
        before, after = recorded.get(key), now.get(key)
        if key in ignored or before == after or (move is not None and move.same(before, after)):
            continue
        if key == "domain_path" and dataset_sha256 and after and Path(after).is_file() and sha256_file(Path(after)) == dataset_sha256:
            continue
        changed.append(key)
    return changed


def recorded_place(out_dir: Path) -> tuple[str, str] | None:
    """(adapter folder, base) as the adapter's finished run recorded them (``config.out`` and
    ``config.base`` in ``empersona.json``); None without that record."""
    path = out_dir / METADATA_FILE
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8")).get("config", {})
    out, base = config.get("out"), config.get("base")
    return (out, base) if isinstance(out, str) and isinstance(base, str) else None


def trained_run_folder(run_dir: Path) -> str | None:
    """Where a run folder was when its adapters were trained (read off an adapter's recorded
    ``out``), or None: the place of the logs that recorded no run folder of their own."""
    for record in sorted((run_dir / "adapters").glob(f"*/{METADATA_FILE}")):
        place = recorded_place(record.parent)
        if place is not None and run_folder_of(place[0]) != Path(place[0]):
            return str(run_folder_of(place[0]))
    return None


def _check_same_config(out_dir: Path, config: TrainConfig) -> None:
    """A resumed run must use the config the interrupted run started with (the folder may have moved)."""
    started = json.loads((out_dir / INCOMPLETE_MARKER).read_text(encoding="utf-8")).get("config", {})
    changed = config_changes(started, config_record(config))
    if changed:
        raise EmpersonaError(
            f"--resume: {out_dir} was started with a different config ({', '.join(changed)} differ). "
            "Resume with the same settings, or start a new run in another folder"
        )


def config_record(config: TrainConfig) -> dict[str, Any]:
    """The config as recorded: every field, with the output folder (absolute) and a local base resolved."""
    return config.model_copy(update={"out": config.output_dir().resolve(), "base": config.resolved_base()}).model_dump(mode="json")


def _init_adapter_record(path: Path) -> dict[str, Any]:
    """What sequential fine-tuning started from: the adapter path and its own record, if any."""
    if not (path / "adapter_config.json").is_file():
        raise EmpersonaError(
            located(path, None, "init_adapter", "not a LoRA adapter folder (no adapter_config.json)",
                    "Point --init-adapter at a folder written by empersona train")
        )
    record: dict[str, Any] = {"path": str(path.resolve())}
    meta = path / METADATA_FILE
    record["empersona"] = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else None
    return record


def write_metadata(out_dir: Path, metadata: TrainMetadata) -> Path:
    """Write ``empersona.json`` atomically (temporary file, then rename)."""
    return replace_text(out_dir / METADATA_FILE, metadata.model_dump_json(indent=2) + "\n")


def adapter_identity(adapter_dir: Path) -> str | None:
    """A fingerprint of one training run of an adapter folder (its ``empersona.json``), or None.

    Retraining into the same folder gives another fingerprint, so evaluations and cached model
    calls of the old adapter are not taken for the new one.
    """
    import hashlib

    path = Path(adapter_dir) / METADATA_FILE
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def read_metadata(out_dir: Path) -> TrainMetadata:
    """The record of a finished adapter folder."""
    path = Path(out_dir) / METADATA_FILE
    if not path.is_file():
        raise EmpersonaError(f"{out_dir} is not a finished empersona adapter (no {METADATA_FILE})")
    return TrainMetadata.model_validate_json(path.read_text(encoding="utf-8"))


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_revision() -> str:
    """The git commit of the empersona source tree (``+dirty`` with local changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}+dirty" if dirty else rev
