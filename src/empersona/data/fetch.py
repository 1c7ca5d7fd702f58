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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from pathlib import Path
from typing import IO, Literal, cast

from empersona.atomic import replacing, stale_temporaries
from empersona.data.sources import SOURCES, Source
from empersona.errors import DataUnavailable

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
        raise DataUnavailable(
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
    _write_sidecar(path, actual, key)
    return actual


def _write_sidecar(path: Path, sha256: str, key: dict[str, int]) -> None:
    """Record the hash beside the file; a cache that cannot take it (read-only, shared) only
    costs hashing the file again next time."""
    try:
        _sidecar(path).write_text(json.dumps({"sha256": sha256, **key}))
    except OSError:
        pass


def source_status(name: str) -> SourceStatus:
    """``verified`` (cached and matches its pin), ``missing`` or ``corrupt``."""
    path = cached_path(name)
    if not path.is_file():
        return "missing"
    try:
        actual = _cached_sha256(path)
    except OSError as err:  # e.g. a shared cache whose file another user wrote
        raise DataUnavailable(
            f"{path}: cannot read the cached copy of source '{name}' ({err}). Fix its permissions, "
            "or set EMPERSONA_CACHE to a folder of your own"
        ) from err
    return "verified" if actual == get_source(name).sha256 else "corrupt"


def mirror_file(source: Source, mirror: Path) -> Path | None:
    """The source's file in a mirror folder: its ``mirror_path``, or the same with/without .gz."""
    first = mirror / source.mirror_path
    toggled = first.name.removesuffix(".gz") if first.suffix == ".gz" else first.name + ".gz"
    other = first.with_name(toggled)
    for candidate in (first, other):
        if candidate.is_file():
            return candidate
    return None


def checked_mirror(mirror: Path, given_by: str) -> Path:
    """``mirror`` when it is a folder; else an error naming it and where it was given."""
    if not mirror.is_dir():
        raise DataUnavailable(
            f"mirror {mirror} (from {given_by}) is not a folder. Point it at a folder laid out like "
            "../shared/data, or leave it out to download"
        )
    return mirror


def mirror_from_env() -> Path | None:
    """``$EMPERSONA_MIRROR`` as a folder (an error naming it when it is not one), or None when unset."""
    value = os.environ.get("EMPERSONA_MIRROR")
    return checked_mirror(Path(value).expanduser(), "EMPERSONA_MIRROR") if value else None


Writer = Callable[[IO[bytes]], None]
STALE_TEMPORARY_S = 3600.0  # a temporary copy untouched this long belongs to a killed fetch


class _CacheWriteError(Exception):
    """Writing into the cache failed (disk full, no permission): the cache's fault, not the source's."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _CacheFile:
    """A file being written into the cache, whose write errors say so (a full disk is not
    reported as an unreadable mirror file or a failed download)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    def write(self, data: bytes) -> int:
        try:
            return self._handle.write(data)
        except OSError as err:
            raise _CacheWriteError(err) from err


def _copy_verified(source: Source, origin: str, write: Writer, target: Path) -> Path:
    """Write the content to a temp file beside ``target``, check its sha256, rename it in."""
    for leftover in stale_temporaries(target, STALE_TEMPORARY_S):
        leftover.unlink(missing_ok=True)
    try:
        with replacing(target) as tmp:
            with tmp.open("wb") as out:
                write(cast(IO[bytes], _CacheFile(out)))
            actual = sha256_file(tmp)
            if actual != source.sha256:
                kept = " The cached copy was left unchanged." if target.exists() else ""
                raise DataUnavailable(
                    f"{origin}: sha256 mismatch for source '{source.name}': expected "
                    f"{source.sha256}, got {actual}.{kept} Check that the file is the pinned "
                    f"upstream version ({source.repo} {source.upstream_path})"
                )
    except (_CacheWriteError, OSError) as err:
        cause = err.error if isinstance(err, _CacheWriteError) else err
        raise DataUnavailable(
            f"{target}: cannot write the cached copy of source '{source.name}' ({cause}). Free disk space or "
            "fix the folder's permissions, or set EMPERSONA_CACHE to another folder"
        ) from err
    _write_sidecar(target, actual, _stat_key(target))
    return target


def _copy_local(path: Path, out: IO[bytes]) -> None:
    """Copy a local file (decompressing ``.gz``) into ``out``."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: damaged compressed data in a .gz
        raise DataUnavailable(f"{path}: cannot read it ({err}). Replace the file") from err


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
        raise DataUnavailable(
            f"download of {url} failed ({err}). Without network access, copy the files from a "
            f"mirror folder laid out like ../shared/data: `empersona data fetch {name} --mirror "
            "DIR`, or set EMPERSONA_MIRROR"
        ) from err


def _download_after_mirror(absent: str, url: str, out: IO[bytes]) -> None:
    """``_download`` for a file the mirror lacks; a failure names both places."""
    try:
        _download(url, out)
    except OSError as err:
        raise DataUnavailable(f"{absent}, and the download of {url} failed ({err}). Put the upstream file "
                             "in the mirror, or fetch it where the network is reachable") from err


def _no_copy_error(source: Source, problem: str, fix: str) -> DataUnavailable:
    """An error for a copy that cannot be had; locked sources explain how to obtain them."""
    return DataUnavailable(f"{problem}. {source.how_to_obtain or fix}")


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
    mirror = checked_mirror(mirror, "the mirror argument") if mirror is not None else mirror_from_env()
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


_NO_DOWNLOAD: ContextVar[tuple[Path | None] | None] = ContextVar("empersona_no_download", default=None)


@contextmanager
def without_download(mirror: Path | None) -> Iterator[None]:
    """Within the block `data_path` takes a file from the cache or from ``mirror`` (a local folder)
    only, and raises `DataUnavailable` where it would download: a study file's checks use it, so
    reading the file never waits on the network (the run fetches what is missing first)."""
    token = _NO_DOWNLOAD.set((mirror,))
    try:
        yield
    finally:
        _NO_DOWNLOAD.reset(token)


def data_path(name: str) -> Path:
    """The verified cached path of ``name``, fetching it first when it is not cached yet.

    Fetching uses ``$EMPERSONA_MIRROR`` when set, else the network (not for locked files);
    the error then says to run ``empersona data fetch NAME --mirror DIR``.
    """
    status = source_status(name)
    if status == "verified":
        return cached_path(name)
    source = get_source(name)
    local = _NO_DOWNLOAD.get()
    if local is not None:
        mirror = local[0] or mirror_from_env()
        if mirror is None or mirror_file(source, mirror) is None:
            raise DataUnavailable(f"source '{name}' is not in the cache yet (the run fetches it)")
        return fetch(name, mirror=mirror, force=True)
    if (source.locked or source.url is None) and mirror_from_env() is None:
        if status == "corrupt":
            raise DataUnavailable(
                f"{cached_path(name)}: the cached copy of source '{name}' does not match its pinned sha256 (was it "
                f"edited?). Fetch it again: `empersona data fetch {name} --path FILE`"
            )
        raise DataUnavailable(
            f"source '{name}' is not in the cache ({cached_path(name)}). {source.how_to_obtain}"
        )
    return fetch(name, force=True)
