"""Files replaced whole or not at all: what a run keeps on disk (adapter metadata, the results
table, cached downloads) is written beside its target and renamed over it, so an interrupt or a
full disk leaves the previous version, never half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A fresh temporary path beside ``target`` (same folder, so the rename is atomic) that
    replaces ``target`` when the block ends without an error; on an error it is removed and
    ``target`` is left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def replace_text(target: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with replacing(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target
