"""Reports rendered from the Jinja2 templates in ``templates/``: Markdown, and one self-contained HTML page.

A report's template (``run.j2``, ``sweep.j2``) lays out its sections once. It extends ``page.j2``
and takes its blocks (heading, paragraph, notice, code, table, figure) from ``blocks.j2``; these
two exist once per format, in ``templates/md`` and ``templates/html``, and the format's folder
is searched first. The HTML page needs nothing but itself: styles inline, figures embedded as
base64 PNG, no scripts, no external resources; every piece of text is escaped (autoescape). The
Markdown file links the figures by relative path, so it renders beside them (e.g. on a code host).

The report code hands the templates plain data: strings, lists, and the tables and figures made
by :func:`table`, :func:`link` and :func:`figure`.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from PIL import Image

FORMATS = ("md", "html")


def link(text: str, href: str) -> dict[str, str]:
    """A table cell that links to ``href`` (relative to the report)."""
    return {"text": text, "href": href}


def _is_number(text: str) -> bool:
    """Whether a cell shows a number: ``0.1``, ``1,234``, ``12.5%``, ``2.0s``, ``73.20% [70.4, 75.9]``."""
    text = re.sub(r"\s*\[[^\]]*\]$", "", text)  # an interval after the value
    try:
        float(text.rstrip("%s").replace(",", "").strip())
    except ValueError:
        return False
    return True


def _numeric(rows: list[list[Any]], index: int) -> bool:
    values = [row[index] for row in rows if index < len(row) and isinstance(row[index], str)]
    values = [v for v in values if v not in ("", "-")]
    return bool(values) and all(_is_number(v) for v in values)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], kinds: Sequence[str | None] = (),
          caption: str = "") -> dict[str, Any]:
    """A table: rows of cells (text, or :func:`link`); ``kinds`` (``warn``, ``failed``, ``pass``, ...)
    highlight rows in HTML and make the first cell bold in Markdown; columns of numbers align right."""
    rows = [[cell if isinstance(cell, dict) else str(cell) for cell in row] for row in rows]
    kinds = list(kinds) + [None] * (len(rows) - len(kinds))
    return {"columns": list(columns), "rows": [{"cells": row, "kind": kind} for row, kind in zip(rows, kinds)],
            "numeric": [_numeric(rows, i) for i in range(len(columns))], "caption": caption}


def figure(path: Path, caption: str, folder: Path) -> dict[str, Any]:
    """A PNG figure of a report written into ``folder`` (Markdown links it relative to there)."""
    return {"path": path, "name": path.stem, "caption": caption,
            "href": Path(os.path.relpath(path, folder)).as_posix()}


def _embedded(path: Path) -> dict[str, Any]:
    """The PNG file ``path`` as a ``data:`` URI, and its width in pixels (0 if it is no image)."""
    data = Path(path).read_bytes()
    try:
        width = Image.open(io.BytesIO(data)).width  # reads the header only
    except OSError:  # PIL's UnidentifiedImageError included
        width = 0
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return {"src": markupsafe.Markup(uri), "width": width}  # base64 holds nothing to escape


def _md_text(text: Any) -> str:
    return str(text).replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(cell: Any) -> str:
    if isinstance(cell, dict):
        return f"[{_md_cell(cell['text'])}]({cell['href']})"
    return _md_text(" ".join(str(cell).split())).replace("|", "\\|")


def _md_row(cells: Sequence[Any], bold: bool = False) -> str:
    """A Markdown table row; ``bold``: its first cell in bold."""
    texts = [_md_cell(cell) for cell in cells]
    if bold and texts:
        texts[0] = f"**{texts[0]}**"
    return "| " + " | ".join(texts) + " |"


@cache
def environment(fmt: str) -> jinja2.Environment:
    """The Jinja2 environment of the format ``fmt`` (``md`` or ``html``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; known: {', '.join(FORMATS)}")
    loader = jinja2.ChoiceLoader([jinja2.PackageLoader("advrun.reporting", f"templates/{fmt}"),
                                  jinja2.PackageLoader("advrun.reporting", "templates")])
    env = jinja2.Environment(loader=loader, autoescape=fmt == "html", trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters.update(md=_md_text, md_row=_md_row, embedded=_embedded)
    return env


def render(template: str, fmt: str, **context: Any) -> str:
    """The report ``template`` (e.g. ``run.j2``) in the format ``fmt``, from ``context``."""
    return environment(fmt).get_template(template).render(**context)
