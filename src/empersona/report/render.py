"""The report as a list of blocks (heading, paragraph, table, figure) and its two renderings.

``to_markdown`` writes ``report.md`` with figures linked relative to the report folder;
``to_html`` writes one self-contained ``report.html`` with every figure embedded as a base64 PNG
and a small inline stylesheet. Both walk the same blocks, so the two files always agree.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import pandas as pd


# --------------------------------------------------------------------------- document blocks


class Heading(NamedTuple):
    level: int
    text: str


class Para(NamedTuple):
    text: str


class Table(NamedTuple):
    frame: pd.DataFrame


class Figure(NamedTuple):
    path: Path
    caption: str


Block = Heading | Para | Table | Figure


# What Markdown would read as markup inside a table cell: backslashes, backticks, asterisks, pipes;
# an underscore at a word's edge (``a_b`` is text, ``_x_`` emphasis); ``<`` opening a tag
# (``<x>``, not ``<0.1%``). Brackets stay: an interval ``[0.10, 0.93]`` is no link.
_MD_SPECIAL = re.compile(r"[\\`*|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|<(?=[A-Za-z/!?])")


def _md_cell(value: object) -> str:
    """A table cell's text as Markdown shows it literally (as the HTML table does): model names are
    free text, and ``a_b*c*<x>`` would otherwise turn into emphasis and a raw HTML tag."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), str(value)).replace("\n", " ")


def to_markdown(blocks: Sequence[Block], report_dir: Path) -> str:
    """The report as Markdown; figures are linked relative to the report folder."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Para):
            out.append(block.text)
        elif isinstance(block, Table):
            columns = [str(c) for c in block.frame.columns]
            lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.frame.itertuples(index=False)]
            out.append("\n".join(lines))
        else:
            out.append(f"![{block.caption}]({block.path.relative_to(report_dir).as_posix()})\n\n*{block.caption}*")
    return "\n\n".join(out) + "\n"


_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.86rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-style: italic; color: #555; font-size: 0.9rem; }
code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def _html_text(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: Sequence[Block], title: str) -> str:
    """The report as one HTML file with every figure embedded as a base64 PNG."""
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            body.append("".join(f"<p>{_html_text(p)}</p>" for p in block.text.split("\n\n")))
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block.frame.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                for row in block.frame.itertuples(index=False)
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
