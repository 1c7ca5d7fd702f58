"""The local cache of the pinned sources: fetch from a mirror, a local file or the network.

Cache: ``$EMPERSONA_CACHE`` or ``~/.cache/empersona``; each source lives at
``data/<name>/<filename>``, uncompressed, beside a ``.sha256`` sidecar (JSON: sha256, size,
mtime_ns) so that re-checking a cached file costs a ``stat`` unless it changed.

Where a file comes from, in order: an explicit ``path`` (for the password-locked sources),
the ``mirror`` argument, ``$EMPERSONA_MIRROR``, then the pinned upstream URL. A mirror is a
folder laid out like ``../shared/data``; a ``.gz`` copy in it is accepted in place of the plain
file. Every copy is written to a temporary file, its sha256 checked (of the uncompressed bytes),
and only then renamed over the cached path: a mismatch raises an error naming the file, the
expected and the actual hash, and leaves any existing cached copy untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import IO, Literal

from empersona.atomic import replacing
from empersona.data.sources import SOURCES, Source
from empersona.errors import EmpersonaError

SourceStatus = Literal["verified", "missing", "corrupt"]

DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The cache root: ``$EMPERSONA_CACHE`` or ``~/.cache/empersona``."""
    return Path(os.environ.get("EMPERSONA_CACHE") or "~/.cache/empersona").expanduser()


def get_source(name: str) -> Source:
    """The source called ``name``, or an error listing the known names."""
    try:
        return SOURCES[name]
    except KeyError:
        raise EmpersonaError(
            f"unknown data source '{name}'. Known sources: {', '.join(SOURCES)}"
        ) from None


def cached_path(name: str) -> Path:
    """Where the verified copy of ``name`` lives in the cache (it may not exist yet)."""
    source = get_source(name)
    return cache_dir() / "data" / source.name / source.filename


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes (of the uncompressed content when it ends in ``.gz``)."""
    digest = hashlib.sha256()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path) -> dict[str, int]:
    stat = path.stat()
    # ctime cannot be set back by a tool that keeps mtimes (cp -p, rsync -t, tar), inode changes
    # when a file is replaced: a rewritten file is hashed again, not trusted by its size and mtime
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


def _cached_sha256(path: Path) -> str:
    """The file's sha256, taken from its sidecar when size, mtime, ctime and inode still match."""
    sidecar = _sidecar(path)
    key = _stat_key(path)
    try:
        recorded = json.loads(sidecar.read_text())
        if {k: recorded.get(k) for k in key} == key and isinstance(recorded.get("sha256"), str):
            return recorded["sha256"]
    except (OSError, ValueError):
        pass
    actual = sha256_file(path)
    sidecar.write_text(json.dumps({"sha256": actual, **key}))
    return actual


def source_status(name: str) -> SourceStatus:
    """``verified`` (cached and matches its pin), ``missing`` or ``corrupt``."""
    path = cached_path(name)
    if not path.is_file():
        return "missing"
    return "verified" if _cached_sha256(path) == get_source(name).sha256 else "corrupt"


def mirror_file(source: Source, mirror: Path) -> Path | None:
    """The source's file in a mirror folder: its ``mirror_path``, or the same with/without .gz."""
    first = mirror / source.mirror_path
    toggled = first.name.removesuffix(".gz") if first.suffix == ".gz" else first.name + ".gz"
    other = first.with_name(toggled)
    for candidate in (first, other):
        if candidate.is_file():
            return candidate
    return None


def _mirror_from_env() -> Path | None:
    value = os.environ.get("EMPERSONA_MIRROR")
    return Path(value).expanduser() if value else None


Writer = Callable[[IO[bytes]], None]


def _copy_verified(source: Source, origin: str, write: Writer, target: Path) -> Path:
    """Write the content to a temp file beside ``target``, check its sha256, rename it in."""
    with replacing(target) as tmp:
        with tmp.open("wb") as out:
            write(out)
        actual = sha256_file(tmp)
        if actual != source.sha256:
            kept = " The cached copy was left unchanged." if target.exists() else ""
            raise EmpersonaError(
                f"{origin}: sha256 mismatch for source '{source.name}': expected "
                f"{source.sha256}, got {actual}.{kept} Check that the file is the pinned "
                f"upstream version ({source.repo} {source.upstream_path})"
            )
    _sidecar(target).write_text(json.dumps({"sha256": actual, **_stat_key(target)}))
    return target


def _copy_local(path: Path, out: IO[bytes]) -> None:
    """Copy a local file (decompressing ``.gz``) into ``out``."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: damaged compressed data in a .gz
        raise EmpersonaError(f"{path}: cannot read it ({err}). Replace the file") from err


def _download(url: str, out: IO[bytes]) -> None:
    """GET ``url`` into ``out`` with a timeout; network problems raise ``ConnectionError``."""
    import httpx

    try:
        with httpx.stream("GET", url, timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True) as reply:
            reply.raise_for_status()
            for chunk in reply.iter_bytes(_CHUNK):
                out.write(chunk)
    except httpx.HTTPError as err:
        raise ConnectionError(str(err)) from err


def _download_or_explain(name: str, url: str, out: IO[bytes]) -> None:
    """``_download``, turning a network failure into an error that names the mirror option."""
    try:
        _download(url, out)
    except OSError as err:
        raise EmpersonaError(
            f"download of {url} failed ({err}). Without network access, copy the files from a "
            f"mirror folder laid out like ../shared/data: `empersona data fetch {name} --mirror "
            "DIR`, or set EMPERSONA_MIRROR"
        ) from err


def _download_after_mirror(absent: str, url: str, out: IO[bytes]) -> None:
    """``_download`` for a file the mirror lacks; a failure names both places."""
    try:
        _download(url, out)
    except OSError as err:
        raise EmpersonaError(f"{absent}, and the download of {url} failed ({err}). Put the upstream file "
                             "in the mirror, or fetch it where the network is reachable") from err


def _no_copy_error(source: Source, problem: str, fix: str) -> EmpersonaError:
    """An error for a copy that cannot be had; locked sources explain how to obtain them."""
    return EmpersonaError(f"{problem}. {source.how_to_obtain or fix}")


def fetch(
    name: str, *, mirror: Path | None = None, force: bool = False, path: Path | None = None
) -> Path:
    """Put a verified copy of source ``name`` in the cache and return its path.

    ``path``: a local copy (plain or ``.gz``), the way to bring in a password-locked file.
    ``mirror``: a folder laid out like ``../shared/data`` (default ``$EMPERSONA_MIRROR``).
    Without either, the pinned URL is downloaded. ``force`` re-copies a verified cached file.
    """
    source = get_source(name)
    target = cached_path(name)
    if not force and path is None and source_status(name) == "verified":
        return target
    if path is not None:
        local = Path(path).expanduser()
        if not local.is_file():
            problem = f"{local}: no such file for source '{name}'"
            raise _no_copy_error(source, problem, "Check the path")
        return _copy_verified(source, str(local), partial(_copy_local, local), target)
    mirror = mirror if mirror is not None else _mirror_from_env()
    if mirror is not None:
        found = mirror_file(source, mirror)
        absent = f"mirror {mirror} has no {source.mirror_path} (nor the same with/without .gz) for source '{name}'"
        if found is None and not source.locked and source.url is not None:  # a public file: its pinned URL
            return _copy_verified(source, source.url, partial(_download_after_mirror, absent, source.url), target)
        if found is None:
            raise _no_copy_error(source, absent, f"Put the upstream file there ({source.url})")
        return _copy_verified(source, str(found), partial(_copy_local, found), target)
    if source.locked or source.url is None:
        raise _no_copy_error(source, f"source '{name}' cannot be downloaded", "")
    download = partial(_download_or_explain, name, source.url)
    return _copy_verified(source, source.url, download, target)


def data_path(name: str) -> Path:
    """The verified cached path of ``name``, fetching it first when it is not cached yet.

    Fetching uses ``$EMPERSONA_MIRROR`` when set, else the network (not for locked files);
    the error then says to run ``empersona data fetch NAME --mirror DIR``.
    """
    if source_status(name) == "verified":
        return cached_path(name)
    source = get_source(name)
    if (source.locked or source.url is None) and _mirror_from_env() is None:
        raise EmpersonaError(
            f"source '{name}' is not in the cache ({cached_path(name)}). {source.how_to_obtain}"
        )
    return fetch(name, force=True)
