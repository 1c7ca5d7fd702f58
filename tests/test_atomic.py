"""Files replaced whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from empersona.atomic import replace_text, replacing


def test_a_file_is_replaced_whole_and_an_error_leaves_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "empersona.json"
    replace_text(target, "first\n")
    assert target.read_text(encoding="utf-8") == "first\n"
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("interrupted")
    assert target.read_text(encoding="utf-8") == "first\n"
    assert [p.name for p in target.parent.iterdir()] == ["empersona.json"]  # no temporary file left
    replace_text(target, "second\n")
    assert target.read_text(encoding="utf-8") == "second\n" and len(list(target.parent.iterdir())) == 1
