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
from pathlib import PurePath
from typing import Any


@dataclass(frozen=True)
class FolderMove:
    """A folder copied or moved since paths were written into it: where a recorded path is now.

    Built from one path known before and after (an adapter folder, a run folder): the trailing
    components the two share are the inside of the moved tree, what precedes them its old and new
    place. A run folder moved from ``/scratch/a/runs/x`` to ``/home/b/runs/x`` maps every path
    recorded under ``/scratch/a`` to ``/home/b``; paths elsewhere (a hub id, the data cache) stay.
    """

    old: str
    new: str

    @classmethod
    def between(cls, recorded: str | PurePath, now: str | PurePath) -> FolderMove | None:
        """The move that took ``recorded`` to ``now`` (None when they are the same path)."""
        before, after = PurePath(recorded).parts, PurePath(now).parts
        if before == after:
            return None
        shared = 0
        while shared < min(len(before), len(after)) - 1 and before[-1 - shared] == after[-1 - shared]:
            shared += 1
        return cls(str(PurePath(*before[: len(before) - shared])), str(PurePath(*after[: len(after) - shared])))

    def path(self, recorded: str) -> str:
        """Where a recorded path is now: moved with the folder if it was inside it, else as recorded."""
        path, old = PurePath(recorded), PurePath(self.old)
        if path.is_absolute() != old.is_absolute() or not path.is_relative_to(old):
            return recorded
        return str(PurePath(self.new) / path.relative_to(old))

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

    def model_string(self, recorded: str) -> str:
        """An inspect model string (``provider/path``) with its path where the move took it."""
        provider, slash, rest = recorded.partition("/")
        return f"{provider}/{self.path(rest)}" if slash and rest else recorded
