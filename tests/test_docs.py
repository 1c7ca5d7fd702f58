"""The protocol the code, README and reports cite is in the repository, with every section they cite."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(r"docs/protocol\.md,?(?: section)? (\d+(?:\.\d+)?)")


def test_every_cited_protocol_section_exists() -> None:
    text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", text, flags=re.MULTILINE))
    assert {"1", "2", "3", "3.1", "3.2", "3.3", "3.4", "3.5", "4", "5"} <= headings
    files = [REPO / "README.md", *sorted((REPO / "src").rglob("*.py")), *sorted((REPO / "configs").glob("*.yaml"))]
    cited = {(path.relative_to(REPO).as_posix(), number) for path in files
             for number in CITED.findall(path.read_text(encoding="utf-8"))}
    assert cited, "no citation found: the pattern no longer matches how the code cites the protocol"
    missing = sorted((where, number) for where, number in cited if number not in headings)
    assert not missing, f"cited sections that docs/protocol.md does not have: {missing}"
    assert not [p for p in files if "PROTOCOLS.md" in p.read_text(encoding="utf-8")]  # the developers' notes are not shipped
