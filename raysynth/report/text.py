"""Strings from data or config (class names, preset, file names, table keys) made safe for each
output the report writes: a terminal or log line, Markdown, and chart text.

Every output first goes through :func:`printable`: control characters (ESC sequences that
recolour or rewrite a terminal, carriage returns, newlines that break a table row) and the
invisible bidirectional overrides become visible escapes (``\\x1b``, ``\\n``, ``\\u202e``), so a
name shows as what it is and never acts on the output. :func:`md_text` then escapes what
Markdown (and the HTML a Markdown renderer passes through) would read as markup; the HTML page
escapes with :func:`html.escape` after :func:`printable`. Charts never parse mathtext (``$…$``):
see :func:`raysynth.report.charts.plain_text`.
"""

from __future__ import annotations

import re
from typing import Any

from raysynth.text import printable

# what Markdown reads as markup anywhere in a line: emphasis, code, links, raw HTML, entities,
# table cells, headings, block quotes, strike-through, math ($ on GitHub), and the backslash
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~$&!{}])")
_MD_LIST_START = re.compile(r"^(\s*)([-+=]|\d+[.)])")


def md_text(value: Any, line_start: bool = False) -> str:
    """``value`` as Markdown text that renders as exactly these characters: :func:`printable`,
    then every Markdown special (and ``<``, ``&`` for raw HTML) backslash-escaped; with
    ``line_start`` (text that begins a line) a leading list or numbering marker is escaped too,
    so the line never turns into a list."""
    s = _MD_SPECIAL.sub(r"\\\1", printable(value))
    m = _MD_LIST_START.match(s) if line_start else None
    if m:
        marker = m.group(2)
        s = f"{m.group(1)}{marker[:-1]}\\{marker[-1]}{s[m.end():]}"
    return s


def md_code(value: Any) -> str:
    """``value`` as a Markdown code span: shown verbatim (after :func:`printable`) whatever
    backticks it holds — the fence is one backtick longer than its longest run of them."""
    s = printable(value)
    longest = max((len(r) for r in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{fence}{pad}{s}{pad}{fence}"
