"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML page.

The HTML page needs nothing but itself: styles inline, figures embedded as base64 PNG, no
scripts, no external resources; every piece of text is escaped. The Markdown file links the
figures by relative path, so it renders beside them (e.g. on a code host).
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Notice:
    """A highlighted paragraph: ``kind`` is ``error`` or ``warn``."""

    text: str
    kind: str = "error"


@dataclass
class Code:
    text: str
    language: str = ""


@dataclass
class Link:
    """A table cell or paragraph part that links to ``href`` (relative to the report)."""

    text: str
    href: str


Cell = Union[str, Link]


@dataclass
class Table:
    """Rows of cells; ``row_kinds`` (``warn``, ``failed``, ``pass``, ...) highlight rows in HTML
    and are written as the first column's suffix in Markdown, so the highlight survives there too."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    row_kinds: Sequence[str | None] = field(default_factory=list)
    caption: str = ""


@dataclass
class Figure:
    """A PNG figure; ``path`` absolute, shown relative to the report's folder in Markdown."""

    path: Path
    caption: str = ""


Block = Union[Heading, Paragraph, Notice, Code, Table, Figure]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 75em;
       padding: 0 1.5em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; }
div.table { overflow-x: auto; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f2f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.warn td { background: #fff3cd; }
tr.failed td, tr.incomplete td { background: #f8d7da; }
tr.pass td:first-child, tr.ok td:first-child { border-left: 4px solid #2e7d32; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: .85em; padding-top: .3em; }
pre { background: #f6f8fa; border: 1px solid #ddd; padding: .8em; overflow-x: auto; font-size: .85em; }
.notice { padding: .7em 1em; border-radius: 4px; margin: 1em 0; white-space: pre-wrap; }
.notice.error { background: #f8d7da; border: 1px solid #e0a0a8; }
.notice.warn { background: #fff3cd; border: 1px solid #e6d08a; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figure img.small { width: 12em; image-rendering: pixelated; }
figcaption { color: #444; font-size: .9em; }
"""


def _is_number(text: str) -> bool:
    stripped = text.rstrip("%s").replace(",", "").strip()
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def _md_text(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, Link):
        return f"[{_md_cell(cell.text)}]({cell.href})"
    return _md_text(" ".join(str(cell).split())).replace("|", "\\|")


def to_markdown(title: str, blocks: Sequence[Block], folder: Path) -> str:
    """The report as Markdown; figures link to their files relative to ``folder``."""
    lines = [f"# {_md_text(title)}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + _md_text(block.text), ""]
        elif isinstance(block, Paragraph):
            lines += [_md_text(block.text), ""]
        elif isinstance(block, Notice):
            lines += ["> **" + ("Error" if block.kind == "error" else "Warning") + ":** "
                      + _md_text(block.text).replace("\n", "\n> "), ""]
        elif isinstance(block, Code):
            fence = "````" if "```" in block.text else "```"
            lines += [fence + block.language, block.text.rstrip("\n"), fence, ""]
        elif isinstance(block, Table):
            kinds = list(block.row_kinds) + [None] * (len(block.rows) - len(block.row_kinds))
            lines.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
            lines.append("|" + "|".join("---:" if i and _numeric_column(block, i) else "---"
                                        for i in range(len(block.columns))) + "|")
            for row, kind in zip(block.rows, kinds):
                cells = [_md_cell(c) for c in row]
                if kind in ("warn", "failed", "incomplete") and cells:
                    cells[0] = f"**{cells[0]}**"
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
            if block.caption:
                lines += [_md_text(block.caption), ""]
        elif isinstance(block, Figure):
            relative = Path(os.path.relpath(block.path, folder)).as_posix()
            lines += [f"![{block.path.stem.replace('_', ' ')}]({relative})", ""]
            if block.caption:
                lines += [f"*{_md_text(block.caption)}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _numeric_column(table: Table, index: int) -> bool:
    values = [row[index] for row in table.rows if index < len(row) and not isinstance(row[index], Link)]
    values = [str(v) for v in values if str(v) not in ("", "-")]
    return bool(values) and all(_is_number(v) for v in values)


def _html_cell(cell: Cell, numeric: bool) -> str:
    if isinstance(cell, Link):
        return f'<td><a href="{html.escape(cell.href, quote=True)}">{html.escape(cell.text)}</a></td>'
    return f'<td class="num">{html.escape(str(cell))}</td>' if numeric else f"<td>{html.escape(str(cell))}</td>"


def embedded_png(data: bytes) -> str:
    """A ``data:`` URI holding the PNG file contents ``data``."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png_width(data: bytes) -> int:
    """The width in pixels of a PNG (from its IHDR chunk), 0 if ``data`` is no PNG."""
    return int.from_bytes(data[16:20], "big") if data[:8] == b"\x89PNG\r\n\x1a\n" else 0


def to_html(title: str, blocks: Sequence[Block]) -> str:
    """The report as one HTML page (styles inline, figures embedded, no scripts)."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 2), 6)
            parts.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            parts.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Notice):
            parts.append(f'<div class="notice {html.escape(block.kind, quote=True)}">{html.escape(block.text)}</div>')
        elif isinstance(block, Code):
            parts.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, Table):
            numeric = [_numeric_column(block, i) for i in range(len(block.columns))]
            kinds = list(block.row_kinds) + [None] * (len(block.rows) - len(block.row_kinds))
            parts.append('<div class="table"><table>')
            if block.caption:
                parts.append(f"<caption>{html.escape(block.caption)}</caption>")
            parts.append("<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in block.columns)
                         + "</tr></thead><tbody>")
            for row, kind in zip(block.rows, kinds):
                attribute = f' class="{html.escape(kind, quote=True)}"' if kind else ""
                parts.append(f"<tr{attribute}>" + "".join(_html_cell(c, n) for c, n in zip(row, numeric)) + "</tr>")
            parts.append("</tbody></table></div>")
        elif isinstance(block, Figure):
            caption = block.caption or block.path.stem
            data = block.path.read_bytes()
            small = ' class="small"' if png_width(data) < 200 else ""  # e.g. a patch: enlarged, pixels kept sharp
            parts.append(f'<figure><img{small} src="{embedded_png(data)}" alt="{html.escape(caption, quote=True)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
