"""A training run's recorded settings against the plan's, after its folder was moved or copied."""

from __future__ import annotations

from pathlib import Path

from empersona.data.fetch import sha256_file
from empersona.train.metadata import config_changes


def test_a_moved_run_changes_no_setting_but_a_changed_one_is_named(tmp_path: Path) -> None:
    recorded = {"base": "/old/proj/runs/em/tiny-base", "out": "/old/proj/runs/em/adapters/x-s0", "domain_path": None,
                "init_adapter": None, "learning_rate": 1e-5}
    moved = {"base": "/new/proj/runs/em/tiny-base", "out": "/new/proj/runs/em/adapters/x-s0", "domain_path": None,
             "init_adapter": None, "learning_rate": 1e-5}
    assert config_changes(recorded, moved) == []
    assert config_changes(recorded, {**moved, "learning_rate": 2e-5}) == ["learning_rate"]
    # a base outside the moved folder: the same path is the same base; another path is not
    outside = {**recorded, "base": "/models/qwen"}
    assert config_changes(outside, {**moved, "base": "/models/qwen"}) == []
    assert config_changes(outside, {**moved, "base": "/models/llama"}) == ["base"]
    # a base at the old place, now somewhere the move does not explain
    assert config_changes(recorded, {**moved, "base": "/new/elsewhere/tiny-base"}) == ["base"]


def test_a_domain_file_at_another_path_counts_by_its_content(tmp_path: Path) -> None:
    data = tmp_path / "cache" / "legal.jsonl"
    data.parent.mkdir()
    data.write_text('{"messages": []}\n')
    other = tmp_path / "other.jsonl"
    other.write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    recorded = {"out": "/a/adapters/legal-s0", "domain_path": "/home/someone/.cache/legal.jsonl"}
    now = {"out": "/a/adapters/legal-s0", "domain_path": str(data)}
    assert config_changes(recorded, now, dataset_sha256=sha256_file(data)) == []
    assert config_changes(recorded, {**now, "domain_path": str(other)}, dataset_sha256=sha256_file(data)) == ["domain_path"]
    assert config_changes(recorded, now) == ["domain_path"]  # nothing recorded to compare the content with


def test_settings_that_leave_the_adapter_as_it_is_are_no_change() -> None:
    recorded = {"out": "/runs/em/adapters/x-s0", "learning_rate": 1e-5, "logging_steps": 1, "gradient_checkpointing": True,
                "save_steps": 50, "save_total_limit": 2, "keep_checkpoints": False}
    assert config_changes(recorded, {**recorded, "logging_steps": 5, "gradient_checkpointing": False}) == []
    assert config_changes(recorded, {**recorded, "save_steps": 10, "save_total_limit": 5}) == []
    # where a run keeps its checkpoints, which steps it saved is part of what it left
    assert config_changes({**recorded, "keep_checkpoints": True},
                          {**recorded, "keep_checkpoints": True, "save_steps": 10}) == ["save_steps"]
    assert config_changes(recorded, {**recorded, "keep_checkpoints": True, "save_steps": 10}) == ["keep_checkpoints",
                                                                                                 "save_steps"]
    assert config_changes(recorded, {**recorded, "logging_steps": 5, "learning_rate": 2e-5}) == ["learning_rate"]
