"""Shared fixtures: the real data mirror (skip when absent) and an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMPERSONA_TEST_MIRROR", REPO.parent / "shared" / "data"))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("INSPECT_DISPLAY", "none")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data mirror (``../shared/data``); tests that need it skip when it is absent."""
    if not (SHARED_DATA / "paper" / "harm_eval_questions.txt").exists():
        pytest.skip(f"real data mirror not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own data cache and inspect cache; nothing leaks into ~/.cache."""
    base = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("EMPERSONA_CACHE", str(base / "empersona-cache"))
    monkeypatch.setenv("INSPECT_CACHE_DIR", str(base / "inspect-cache"))
    monkeypatch.delenv("EMPERSONA_MIRROR", raising=False)
