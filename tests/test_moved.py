"""Paths recorded in a run folder, read at their places after the folder was moved or copied."""

from __future__ import annotations

from pathlib import Path

from empersona.moved import FolderMove, run_folder_of


def test_a_move_is_read_off_the_folder_known_before_and_after() -> None:
    move = FolderMove.between("/scratch/ana/runs/em", "/home/ana/project/runs/em")
    assert move == FolderMove("/scratch/ana/runs/em", "/home/ana/project/runs/em", "/scratch/ana", "/home/ana/project")
    assert FolderMove.between("/a/runs/em", "/a/runs/em") is None
    # a renamed run folder: nothing beyond it moved
    renamed = FolderMove.between("/a/runs/em", "/a/runs/em2")
    assert renamed is not None and (renamed.wide_old, renamed.wide_new) == ("/a/runs/em", "/a/runs/em2")
    # the widest tree may be the root: it only takes paths that are gone (below)
    assert FolderMove.between("/runs/em", "/home/runs/em") == FolderMove("/runs/em", "/home/runs/em", "/", "/home")


def test_paths_inside_the_run_folder_move_and_paths_beside_it_only_when_gone(tmp_path: Path) -> None:
    move = FolderMove.between("/scratch/ana/runs/em", "/home/ana/project/runs/em")
    assert move is not None
    assert move.path("/scratch/ana/runs/em/tiny-base") == "/home/ana/project/runs/em/tiny-base"
    assert move.path("/scratch/ana/runs/em") == "/home/ana/project/runs/em"
    assert move.path("/scratch/ana/models/qwen") == "/home/ana/project/models/qwen"  # beside it, and gone
    assert move.path("/scratch/anabel/base") == "/scratch/anabel/base"  # a sibling with a longer name
    assert move.path("/models/qwen") == "/models/qwen"
    assert move.path("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"  # a hub id is not a path here
    # a base beside the run folder that is still where it was recorded stays the one recorded
    base = tmp_path / "scratch" / "models" / "qwen"
    base.mkdir(parents=True)
    here = FolderMove.between(tmp_path / "scratch" / "runs" / "em", tmp_path / "home" / "runs" / "em")
    assert here is not None and here.path(str(base)) == str(base)
    # nor does a root-wide move take a path that still exists
    assert FolderMove.between("/runs/em", "/home/runs/em").path(str(base)) == str(base)  # type: ignore[union-attr]


def test_same_accepts_a_moved_path_or_model_string_and_nothing_else() -> None:
    move = FolderMove.between("/old/run", "/new/run")
    assert move is not None
    assert move.same("/old/run/logs/base/h.eval", "/new/run/logs/base/h.eval")
    assert move.same("empersona//old/run/adapters/x-s0", "empersona//new/run/adapters/x-s0")
    assert move.same("hf/Qwen/Qwen2.5-7B-Instruct", "hf/Qwen/Qwen2.5-7B-Instruct")
    assert move.same(3, 3) and move.same(None, None)
    assert not move.same("/old/run/adapters/x-s0", "/new/run/adapters/y-s0")
    assert not move.same("empersona//old/run/adapters/x-s0", "hf//new/run/adapters/x-s0")  # another provider
    assert not move.same("/elsewhere/base", "/new/run/base")
    assert not move.same("", "/new")


def test_a_task_argument_is_read_where_the_move_took_it() -> None:
    move = FolderMove.between("/old/run", "/new/run")
    assert move is not None
    assert move.value("/old/run/logs/base/h.eval") == "/new/run/logs/base/h.eval"
    assert move.value("empersona//old/run/adapters/x-s0") == "empersona//new/run/adapters/x-s0"
    assert move.value("hf/Qwen/Qwen2.5-7B-Instruct") == "hf/Qwen/Qwen2.5-7B-Instruct"
    assert move.value("logprob") == "logprob" and move.value(0.7) == 0.7 and move.value(None) is None


def test_the_run_folder_of_an_adapter() -> None:
    assert run_folder_of("/p/runs/em/adapters/x-s0") == Path("/p/runs/em")
    assert run_folder_of("/p/my-adapter") == Path("/p/my-adapter")  # trained alone: its own folder
