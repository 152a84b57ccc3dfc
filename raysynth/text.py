"""Strings from data or config (class names, file names, preset names) made safe for a terminal
or a log line: control characters (ESC sequences that recolour or rewrite a terminal, carriage
returns, newlines that forge a log line) and the invisible bidirectional overrides become visible
escapes (``\\x1b``, ``\\n``, ``\\u202e``), so a name shows as what it is and never acts on the
output. The report builds its Markdown and HTML escaping on :func:`printable`
(``raysynth.report.text``)."""

from __future__ import annotations

import logging
import unicodedata
from typing import Any

# bidirectional embeddings/overrides/isolates and line/paragraph separators: invisible, and they
# reorder or break the text around them
_INVISIBLE = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)}
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


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


class PrintableFilter(logging.Filter):
    """A logging filter that makes every record's message :func:`printable` (install it on the
    handlers that write to a terminal or a log file: a class name or file name in a message can
    then not move the cursor, recolour the terminal or forge a log line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = printable(record.getMessage())
        record.args = None
        return True
