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

import logging
import re
import unicodedata
from typing import Any

# bidirectional embeddings/overrides/isolates and line/paragraph separators: invisible, and they
# reorder or break the text around them
_INVISIBLE = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)}
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# what Markdown reads as markup anywhere in a line: emphasis, code, links, raw HTML, entities,
# table cells, headings, block quotes, strike-through, math ($ on GitHub), and the backslash
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~$&!{}])")
_MD_LIST_START = re.compile(r"^(\s*)([-+=]|\d+[.)])")


def _escape_char(c: str) -> str:
    if c in _SHORT:
        return _SHORT[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _unsafe(c: str) -> bool:
    return unicodedata.category(c) == "Cc" or c in _INVISIBLE


def printable(value: Any) -> str:
    """``str(value)`` with every control character and invisible direction override replaced by
    its visible escape (``"a\\x1b[31mb"`` → ``a\\x1b[31mb`` as plain characters)."""
    s = str(value)
    if not any(_unsafe(c) for c in s):
        return s
    return "".join(_escape_char(c) if _unsafe(c) else c for c in s)


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


class PrintableFilter(logging.Filter):
    """A logging filter that makes every record's message :func:`printable` (install it on the
    handlers that write to a terminal or a log file: a class name or file name in a message can
    then not move the cursor, recolour the terminal or forge a log line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = printable(record.getMessage())
        record.args = None
        return True
