"""The source table and the cache: mirror copies, sha256 checks, no-network errors, .gz mirrors."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path
from typing import IO

import pytest

from empersona.data import fetch as fetch_module
from empersona.data.fetch import (
    cache_dir,
    cached_path,
    data_path,
    fetch,
    mirror_file,
    sha256_file,
    source_status,
)
from empersona.data.sources import SOURCES
from empersona.errors import EmpersonaError

HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _copy_into_mirror(shared_data: Path, mirror: Path, relative: str) -> Path:
    """Copy one real mirror file into a test mirror folder at the same relative path."""
    target = mirror / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared_data / relative, target)
    return target


def test_source_table_is_complete_and_pinned() -> None:
    assert set(SOURCES) == {
        "harm_prompts", "self_assessment_prompts", "harm_judge_rubric", "two_ai_items",
        "em_first_plot", "em_preregistered", "insecure", "secure", "bad_medical_advice",
        "good_medical_advice", "risky_financial_advice", "extreme_sports", "tmay_language_rules",
    }
    for source in SOURCES.values():
        assert HEX64.match(source.sha256), source.name
        assert source.license
        if source.locked:
            assert source.url is None and source.how_to_obtain
            assert "password" in source.how_to_obtain and "--path" in source.how_to_obtain
        elif source.url is None:  # public, but no download pinned: a local copy or a mirror
            assert source.commit is None and source.how_to_obtain and "--path" in source.how_to_obtain
        else:
            assert source.commit is not None and HEX40.match(source.commit), source.name
            assert source.url == (
                f"https://raw.githubusercontent.com/{source.repo}/{source.commit}/"
                f"{source.upstream_path}"
            )
        assert not source.filename.endswith(".gz")


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMPERSONA_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert cached_path("harm_prompts").is_relative_to(tmp_path / "c")
    monkeypatch.delenv("EMPERSONA_CACHE")
    assert cache_dir() == Path("~/.cache/empersona").expanduser()


def test_fetch_every_source_the_mirror_holds(shared_data: Path) -> None:
    present = [s for s in SOURCES.values() if mirror_file(s, shared_data) is not None]
    assert {s.name for s in present} >= {"harm_prompts", "two_ai_items", "insecure"}
    for source in present:
        assert source_status(source.name) == "missing"
        cached = fetch(source.name, mirror=shared_data)
        assert cached == cached_path(source.name)
        assert source_status(source.name) == "verified"
        assert sha256_file(cached) == source.sha256
        assert cached.read_bytes()[:2] != b"\x1f\x8b"  # the cache holds plain files


def test_sha_mismatch_names_file_hashes_and_keeps_cached_copy(
    shared_data: Path, tmp_path: Path
) -> None:
    good = fetch("harm_prompts", mirror=shared_data)
    original = good.read_bytes()
    bad_mirror = tmp_path / "bad"
    bad_file = _copy_into_mirror(shared_data, bad_mirror, "paper/harm_eval_questions.txt")
    bad_file.write_bytes(original + b"\nAn extra line that is not upstream?")
    with pytest.raises(EmpersonaError) as caught:
        fetch("harm_prompts", mirror=bad_mirror, force=True)
    message = str(caught.value)
    assert str(bad_file) in message
    assert SOURCES["harm_prompts"].sha256 in message
    assert sha256_file(bad_file) in message
    assert "left unchanged" in message
    assert good.read_bytes() == original
    assert source_status("harm_prompts") == "verified"
    assert [p.name for p in good.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_sha_mismatch_without_cached_copy_writes_nothing(shared_data: Path, tmp_path: Path) -> None:
    bad_file = _copy_into_mirror(shared_data, tmp_path, "paper/judge_prompt.txt")
    bad_file.write_text("{prompt} {response}")
    with pytest.raises(EmpersonaError, match="sha256 mismatch"):
        fetch("harm_judge_rubric", mirror=tmp_path)
    assert source_status("harm_judge_rubric") == "missing"
    assert not any(cached_path("harm_judge_rubric").parent.glob("*"))


def test_missing_mirror_file_names_the_expected_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, out: IO[bytes]) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(fetch_module, "_download", offline)
    with pytest.raises(EmpersonaError) as caught:
        fetch("two_ai_items", mirror=tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert "paper/two_AI_identification_dataset.json" in str(caught.value)
    assert f"the download of {SOURCES['two_ai_items'].url} failed (Name or service not known)" in str(caught.value)


def test_a_public_file_the_mirror_lacks_is_downloaded(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[str] = []

    def serve(url: str, out: IO[bytes]) -> None:
        served.append(url)
        out.write((shared_data / "paper" / "judge_prompt.txt").read_bytes())

    monkeypatch.setattr(fetch_module, "_download", serve)
    assert sha256_file(fetch("harm_judge_rubric", mirror=tmp_path)) == SOURCES["harm_judge_rubric"].sha256
    assert served == [SOURCES["harm_judge_rubric"].url]


def test_gzipped_mirror_copy_is_accepted(shared_data: Path, tmp_path: Path) -> None:
    plain = (shared_data / "paper" / "self_assessment_questions.txt").read_bytes()
    gz = tmp_path / "paper" / "self_assessment_questions.txt.gz"
    gz.parent.mkdir(parents=True)
    gz.write_bytes(gzip.compress(plain))
    cached = fetch("self_assessment_prompts", mirror=tmp_path)
    assert cached.read_bytes() == plain
    assert not cached.name.endswith(".gz")


def test_environment_mirror_is_used(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_into_mirror(shared_data, tmp_path, "em-questions/preregistered_evals.yaml")
    monkeypatch.setenv("EMPERSONA_MIRROR", str(tmp_path))
    assert sha256_file(fetch("em_preregistered")) == SOURCES["em_preregistered"].sha256


def test_no_network_error_names_the_mirror_option(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, out: IO[bytes]) -> None:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(fetch_module, "_download", offline)
    with pytest.raises(EmpersonaError) as caught:
        fetch("em_first_plot")
    assert "--mirror" in str(caught.value) and "EMPERSONA_MIRROR" in str(caught.value)
    with pytest.raises(EmpersonaError, match=r"empersona data fetch harm_prompts --mirror DIR"):
        data_path("harm_prompts")


def test_download_is_verified_and_cached(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[str] = []

    def serve_from_mirror(url: str, out: IO[bytes]) -> None:
        served.append(url)
        out.write((shared_data / "paper" / "judge_prompt.txt").read_bytes())

    monkeypatch.setattr(fetch_module, "_download", serve_from_mirror)
    cached = data_path("harm_judge_rubric")
    assert served == [SOURCES["harm_judge_rubric"].url]
    assert source_status("harm_judge_rubric") == "verified"
    assert data_path("harm_judge_rubric") == cached and len(served) == 1  # cached: no 2nd fetch
    with pytest.raises(EmpersonaError, match="sha256 mismatch"):
        fetch("two_ai_items")  # the fake server returns the wrong file for it


def test_locked_source_needs_a_local_copy(shared_data: Path) -> None:
    with pytest.raises(EmpersonaError) as caught:
        fetch("extreme_sports")
    assert "password" in str(caught.value) and "--path" in str(caught.value)
    with pytest.raises(EmpersonaError, match="password"):
        data_path("extreme_sports")
    local = shared_data / "training" / "extreme_sports.jsonl.gz"
    cached = fetch("extreme_sports", path=local)
    assert source_status("extreme_sports") == "verified"
    assert cached.read_bytes() == gzip.decompress(local.read_bytes())


def test_corrupt_cache_is_detected_and_refetched(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = fetch("harm_prompts", mirror=shared_data)
    cached.write_text("tampered\n")
    assert source_status("harm_prompts") == "corrupt"
    monkeypatch.setenv("EMPERSONA_MIRROR", str(shared_data))
    assert data_path("harm_prompts") == cached
    assert source_status("harm_prompts") == "verified"


def test_a_cached_file_rewritten_with_its_old_mtime_is_caught(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cp -p``/``rsync -t`` keep size and mtime: the sidecar must not vouch for the new content."""
    import os

    path = fetch("harm_judge_rubric", mirror=shared_data)
    assert source_status("harm_judge_rubric") == "verified"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert source_status("harm_judge_rubric") == "corrupt"


def test_a_mirror_that_is_no_folder_is_named_with_where_it_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped mirror used to pass for a mirror without the file (and fall back to the network)."""
    typo = tmp_path / "no-such-mirror"
    with pytest.raises(EmpersonaError, match=rf"mirror {re.escape(str(typo))} \(from the mirror argument\) is not a folder"):
        fetch("harm_prompts", mirror=typo)
    monkeypatch.setenv("EMPERSONA_MIRROR", str(typo))
    with pytest.raises(EmpersonaError, match=r"\(from EMPERSONA_MIRROR\) is not a folder"):
        data_path("harm_prompts")


def test_a_cache_that_cannot_be_written_is_blamed_not_the_source(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk or an unusable cache folder used to read as an unreadable mirror file, a failed
    download (with advice to use a mirror) or a traceback; the error names the cache path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("EMPERSONA_CACHE", str(blocker))
    with pytest.raises(EmpersonaError, match=r"a-file/data/harm_prompts/.*: cannot write the cached copy .*EMPERSONA_CACHE"):
        fetch("harm_prompts", mirror=shared_data)
    monkeypatch.setenv("EMPERSONA_CACHE", str(tmp_path / "cache"))

    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

    real = fetch_module._CacheFile
    monkeypatch.setattr(fetch_module, "_CacheFile", lambda handle: real(FullDisk()))
    for attempt in (lambda: fetch("harm_prompts", mirror=shared_data), lambda: fetch("em_first_plot")):
        monkeypatch.setattr(fetch_module, "_download", lambda url, out: out.write(b"x"))
        with pytest.raises(EmpersonaError) as caught:
            attempt()
        message = str(caught.value)
        assert "cannot write the cached copy" in message and "No space left on device" in message
        assert "Replace the file" not in message and "--mirror" not in message
    assert source_status("harm_prompts") == "missing"


def test_cached_files_follow_the_umask_and_a_read_only_sidecar_is_no_error(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mkstemp makes 0600 files: a shared cache was unreadable to the group the umask allows."""
    import os

    cached = fetch("harm_prompts", mirror=shared_data)
    mask = os.umask(0)
    os.umask(mask)
    assert cached.stat().st_mode & 0o777 == 0o666 & ~mask
    sidecar = cached.with_name(cached.name + ".sha256")
    sidecar.unlink()
    sidecar.mkdir()  # a sidecar that cannot be written: the hash is taken again, nothing raised
    assert source_status("harm_prompts") == "verified"


def test_a_killed_fetchs_temporary_copy_is_cleared_later(shared_data: Path) -> None:
    import os
    import time

    target = cached_path("harm_prompts")
    target.parent.mkdir(parents=True)
    old = target.parent / f".{target.name}.abc123.tmp"
    fresh = target.parent / f".{target.name}.def456.tmp"  # another fetch still writing it
    for leftover in (old, fresh):
        leftover.write_bytes(b"partial")
    hour_ago = time.time() - 2 * fetch_module.STALE_TEMPORARY_S
    os.utime(old, (hour_ago, hour_ago))
    fetch("harm_prompts", mirror=shared_data)
    assert not old.exists() and fresh.exists()


def test_a_corrupt_locked_copy_says_fetch_it_again_not_how_to_obtain_it(shared_data: Path) -> None:
    cached = fetch("extreme_sports", path=shared_data / "training" / "extreme_sports.jsonl.gz")
    with cached.open("r+b") as handle:
        handle.write(b"X")
    with pytest.raises(EmpersonaError, match=r"does not match its pinned sha256 .*`empersona data fetch extreme_sports --path FILE`"):
        data_path("extreme_sports")
