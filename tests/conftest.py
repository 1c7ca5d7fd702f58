"""Shared fixtures: the real data mirror (skip when absent) and an isolated cache."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMPERSONA_TEST_MIRROR", REPO.parent / "shared" / "data")).resolve()  # tests chdir

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


@pytest.fixture(autouse=True)
def _unfrozen_gc() -> Iterator[None]:
    """The ``empersona/`` provider freezes the collector's heap on load; a test process loads
    many models, so hand frozen objects back to the collector after each test."""
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 chat model (hidden 64, 2 layers) with Qwen's tokenizer setup, built once."""
    from empersona.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "base", seed=0)


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two LoRA adapters (seeds 1 and 2) on ``tiny_model``, each saved with the tokenizer."""
    from empersona.testing.tiny import build_tiny_adapter

    root = tmp_path_factory.mktemp("tiny-adapters")
    return (
        build_tiny_adapter(tiny_model, root / "adapter-1", seed=1),
        build_tiny_adapter(tiny_model, root / "adapter-2", seed=2),
    )
