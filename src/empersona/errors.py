"""The one exception type the CLI turns into a clean message (exit code 2).

Messages say what was wrong, where (file, line, field) and what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class EmpersonaError(Exception):
    """A problem the user can fix; the message is shown without a traceback."""


class DataUnavailable(EmpersonaError):
    """A pinned data file cannot be had here (not cached, not in the mirror, no network, not the
    pinned version, a cache that cannot be written): a study's checks at load leave it to the run,
    which fetches the data first."""


def located(path: str | Path, line: int | None, field: str | None, problem: str, fix: str) -> str:
    """Format ``file:line: field: problem. fix`` the same way everywhere."""
    where = str(path)
    if line is not None:
        where += f":{line}"
    if field:
        where += f": field '{field}'"
    return f"{where}: {problem}. {fix}"
