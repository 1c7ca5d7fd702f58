"""Run folders that were moved or copied: where a path recorded inside one is now.

A study writes absolute paths into what it keeps: the training config in each adapter's
``empersona.json``, the base folder in ``adapter_config.json``, model strings and the
harmfulness logs read by later experiments in each evaluation log. Moving or copying the run
folder (another mount point; a cluster's scratch space to a project folder) changes all of them
and none of the results. `FolderMove` reads a recorded path at its new place, so the plan, a
resumed training and the results table see the same models and settings as before the move.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any


@dataclass(frozen=True)
class FolderMove:
    """A folder copied or moved since paths were written into it: where a recorded path is now.

    Built from the folder known to have moved, before and after (a run folder; for a lone
    adapter, its own folder). Paths recorded inside it are read at its new place. Paths beside
    it move too when they are gone from where they were recorded and sit in the widest tree the
    two places allow (their shared ending removed): a project folder ``/scratch/p`` holding
    ``runs/x`` and ``models/base``, moved to ``/home/p``, takes ``/scratch/p/models/base`` with
    it; a base still at its recorded place stays the one recorded. Hub ids and paths elsewhere
    (the data cache) stay as they are.
    """

    old: str
    new: str
    wide_old: str
    wide_new: str

    @classmethod
    def between(cls, recorded: str | PurePath, now: str | PurePath) -> FolderMove | None:
        """The move that took the folder ``recorded`` to ``now`` (None when they are the same path)."""
        before, after = PurePath(recorded).parts, PurePath(now).parts
        if before == after:
            return None
        shared = 0
        while shared < min(len(before), len(after)) - 1 and before[-1 - shared] == after[-1 - shared]:
            shared += 1
        return cls(str(PurePath(recorded)), str(PurePath(now)),
                   str(PurePath(*before[: len(before) - shared])), str(PurePath(*after[: len(after) - shared])))

    def path(self, recorded: str) -> str:
        """Where a recorded path is now (as recorded when the move did not take it)."""
        inside = _under(recorded, self.old, self.new)
        if inside is not None:
            return inside
        beside = _under(recorded, self.wide_old, self.wide_new)
        return beside if beside is not None and not Path(recorded).exists() else recorded

    def same(self, recorded: Any, now: Any) -> bool:
        """Whether a recorded value names ``now``: equal, or a path (or ``provider/path`` model
        string) that the move took to ``now``."""
        if recorded == now:
            return True
        if not (isinstance(recorded, str) and isinstance(now, str)) or not recorded:
            return False
        if self.path(recorded) == now:
            return True
        return self.model_string(recorded) == now

    def value(self, recorded: Any) -> Any:
        """A recorded setting where the move took it: an absolute path, or a ``provider/path``
        model string (a task argument such as the foil model); anything else as recorded."""
        if not isinstance(recorded, str) or not recorded:
            return recorded
        return self.path(recorded) if PurePath(recorded).is_absolute() else self.model_string(recorded)

    def model_string(self, recorded: str) -> str:
        """An inspect model string (``provider/path``) with its path where the move took it."""
        provider, slash, rest = recorded.partition("/")
        return f"{provider}/{self.path(rest)}" if slash and rest else recorded


def _under(recorded: str, old: str, new: str) -> str | None:
    """``recorded`` re-rooted from ``old`` to ``new``, or None when it is not under ``old``."""
    path, root = PurePath(recorded), PurePath(old)
    if path.is_absolute() != root.is_absolute() or not path.is_relative_to(root):
        return None
    return str(PurePath(new) / path.relative_to(root))


def run_folder_of(adapter: str | PurePath) -> PurePath:
    """The run folder an adapter folder lies in (``<run>/adapters/<name>``), or the adapter
    folder itself when it lies elsewhere (``empersona train --out DIR``)."""
    path = PurePath(adapter)
    return path.parents[1] if path.parent.name == "adapters" and len(path.parents) > 1 else path
