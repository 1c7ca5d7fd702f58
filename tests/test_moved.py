"""Paths recorded in a run folder, read at their places after the folder was moved or copied."""

from __future__ import annotations

from empersona.moved import FolderMove


def test_a_move_is_read_off_one_path_known_before_and_after() -> None:
    move = FolderMove.between("/scratch/ana/runs/em/adapters/insecure-s0", "/home/ana/project/runs/em/adapters/insecure-s0")
    assert move == FolderMove("/scratch/ana", "/home/ana/project")
    assert FolderMove.between("/a/runs/em", "/a/runs/em") is None
    # a renamed run folder: the adapters below it are what the two paths share
    assert FolderMove.between("/a/runs/em/adapters/x-s0", "/a/runs/em2/adapters/x-s0") == FolderMove("/a/runs/em", "/a/runs/em2")
    # the root shared, nothing else: everything recorded under it moves
    assert FolderMove.between("/runs/em", "/home/runs/em") == FolderMove("/", "/home")


def test_paths_inside_the_moved_folder_move_and_others_stay() -> None:
    move = FolderMove("/scratch/ana", "/home/ana/project")
    assert move.path("/scratch/ana/runs/em/tiny-base") == "/home/ana/project/runs/em/tiny-base"
    assert move.path("/scratch/ana") == "/home/ana/project"
    assert move.path("/scratch/anabel/base") == "/scratch/anabel/base"  # a sibling with a longer name
    assert move.path("/models/qwen") == "/models/qwen"
    assert move.path("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"  # a hub id is not a path here
    assert FolderMove("/", "/home").path("/models/qwen") == "/home/models/qwen"


def test_same_accepts_a_moved_path_or_model_string_and_nothing_else() -> None:
    move = FolderMove("/old", "/new")
    assert move.same("/old/run/logs/base/h.eval", "/new/run/logs/base/h.eval")
    assert move.same("empersona//old/run/adapters/x-s0", "empersona//new/run/adapters/x-s0")
    assert move.same("hf/Qwen/Qwen2.5-7B-Instruct", "hf/Qwen/Qwen2.5-7B-Instruct")
    assert move.same(3, 3) and move.same(None, None)
    assert not move.same("/old/run/adapters/x-s0", "/new/run/adapters/y-s0")
    assert not move.same("empersona//old/run/adapters/x-s0", "hf//new/run/adapters/x-s0")  # another provider
    assert not move.same("/elsewhere/base", "/new/base")
    assert not move.same("", "/new")
