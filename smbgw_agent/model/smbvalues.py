"""Checks for strings that end up in smb.conf.

Jinja's autoescape knows HTML, not smb.conf, so nothing is escaped at render time:
instead every value is checked here before it can reach a template. smb.conf has no
quoting that survives all parameters, so the only safe policy is to refuse what could
change the file's structure: newlines and other control characters (a new line is a
new parameter or section), a trailing backslash (line continuation), brackets in names
(a new section) and `%` (Samba expands it as a macro, e.g. `%(...)` or `%m`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

from smbgw_agent.model.errors import FieldError

RESERVED_SHARE_NAMES = frozenset({"global", "homes", "printers", "ipc$", "print$"})
MAX_SHARE_NAME = 80
MAX_VALUE = 1024
# Characters Windows refuses in share names, plus the ones that are structural in smb.conf.
_FORBIDDEN_IN_NAME = set('[]/\\:*?"<>|+=;,%')
_PARAMETER_NAME = re.compile(r"^[a-z][a-z0-9 :_-]{0,62}[a-z0-9]$")
# `idmap config * : backend` and its kind: the default idmap domain is named `*`, the
# one place a parameter name needs it (smb.conf gives `*` no other meaning).
_IDMAP_DEFAULT_DOMAIN = re.compile(r"^idmap config \* : [a-z][a-z_]{0,30}[a-z]$")


def _control_characters(value: str) -> list[str]:
    return [char for char in value if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")]


def check_text(value: str, what: str, max_length: int = MAX_VALUE, allow_percent: bool = False) -> str:
    if len(value) > max_length:
        raise FieldError(f"{what} is too long ({len(value)} characters; at most {max_length})")
    bad = _control_characters(value)
    if bad:
        shown = ", ".join(sorted({f"U+{ord(c):04X}" for c in bad}))
        raise FieldError(f"{what} contains control characters ({shown}); they could inject smb.conf lines")
    if value.rstrip().endswith("\\"):
        raise FieldError(f"{what} ends with a backslash, which smb.conf reads as a line continuation")
    if not allow_percent and "%" in value:
        raise FieldError(f"{what} contains '%', which Samba would expand as a macro")
    if value != value.strip():
        raise FieldError(f"{what} has leading or trailing white space, which Samba would drop")
    return value


def check_share_name(name: str) -> str:
    if not 1 <= len(name) <= MAX_SHARE_NAME:
        raise FieldError(f"share name must be 1 to {MAX_SHARE_NAME} characters, not {len(name)}")
    check_text(name, "share name", MAX_SHARE_NAME)
    bad = sorted(set(name) & _FORBIDDEN_IN_NAME)
    if bad:
        raise FieldError(f"share name {name!r} contains forbidden characters: {' '.join(bad)}")
    if name.startswith((".", "-")) or name.endswith("."):
        raise FieldError(f"share name {name!r} must not start with '.' or '-' or end with '.'")
    if name.casefold() in RESERVED_SHARE_NAMES:
        raise FieldError(f"share name {name!r} is reserved by Samba")
    return name


def check_principal(value: str) -> str:
    """A user or group for `valid users`: `alice`, `@group`, `+group`, `DOMAIN\\user`."""
    check_text(value, "user or group name", 256)
    if not value:
        raise FieldError("user or group name is empty")
    bad = sorted(set(value) & set('",[]=;%:*?<>|'))
    if bad:
        raise FieldError(f"user or group name {value!r} contains forbidden characters: {' '.join(bad)}")
    return value


def check_parameter_name(name: str) -> str:
    if _control_characters(name):
        # Checked before white space is folded: "name\nx" must not become "name x".
        raise FieldError(f"{name!r} contains control characters; not a valid smb.conf parameter name")
    normalized = " ".join(name.lower().split())
    if not (_PARAMETER_NAME.match(normalized) or _IDMAP_DEFAULT_DOMAIN.match(normalized)):
        raise FieldError(f"{name!r} is not a valid smb.conf parameter name")
    return normalized


def format_list(values: Iterable[str]) -> str:
    """Quote list items so names with spaces (`"CORP\\Domain Users"`) stay one item."""
    return " ".join(f'"{v}"' if " " in v else v for v in values)


def safe_file_stem(name: str) -> str:
    """A file name for a share: readable where possible, collision-free always.

    Share names are case-insensitive and may contain spaces and non-ASCII letters; the
    file stem keeps `[a-z0-9._-]` and adds a short hash whenever anything was replaced,
    so `Team A` and `team_a` never share a file.
    """
    folded = name.casefold()
    kept = "".join(c if (c.isascii() and (c.isalnum() or c in "._-")) else "_" for c in folded)
    if kept != folded:
        kept += "-" + hashlib.sha256(folded.encode()).hexdigest()[:8]
    return kept
