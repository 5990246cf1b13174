"""Making untrusted text safe to show on a terminal or in the journal.

File names and file contents come from people who may not be the administrator. Raw
control characters in them (an ESC sequence that rewrites the terminal, a newline that
forges a log line, a right-to-left override that hides a name's real ending) must never
reach a terminal or the journal: they are shown as escapes instead, e.g. `\\x1b`.
"""

from __future__ import annotations

import unicodedata

_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: object, keep: str = "") -> str:
    """`text` with every control, format, separator and lone-surrogate character escaped
    (except those in `keep`, e.g. "\\n" for deliberate multi-line output)."""
    value = str(text)
    if value.isprintable() and not any(unicodedata.category(c) == "Cf" for c in value):
        return value
    return "".join(
        _escape(c) if c not in keep and unicodedata.category(c) in _CATEGORIES else c for c in value
    )
