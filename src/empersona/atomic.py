"""Files replaced whole or not at all: what a run keeps on disk (adapter metadata, the results
table, cached downloads) is written beside its target and renamed over it, so an interrupt or a
full disk leaves the previous version, never half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp's own is 0600


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``target`` (same folder, so the rename is atomic) that
    replaces ``target`` when the block ends without an error; on an error it is removed and
    ``target`` is left as it was. The file gets the mode a plain ``open`` would give it (a
    shared cache stays readable by the group its umask allows)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        try:
            os.chmod(tmp, _FILE_MODE)
        except OSError:  # a file system that keeps its own modes
            pass
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def stale_temporaries(target: Path, older_than_s: float) -> list[Path]:
    """Temporary files ``replacing`` left beside ``target`` when its process was killed
    (SIGKILL, or SIGTERM without a handler, skip the clean-up) and not touched for
    ``older_than_s`` seconds: a writer still at work keeps its file's mtime fresh."""
    import time

    now = time.time()
    found = []
    for path in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            if now - path.stat().st_mtime > older_than_s:
                found.append(path)
        except OSError:  # removed meanwhile
            continue
    return found


def replace_text(target: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with replacing(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
