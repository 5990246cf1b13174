"""Reading TOML input files defensively, and finding the line of a key for messages.

tomllib gives no positions, but administrators need "file:line: key: why". A key's
line is found by scanning the text for its table header and assignment, which is
exact for the flat files this project reads (tables and key = value lines).
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):  # noqa: UP036 - tomli fallback for older Pythons
    import tomllib
else:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

from smbgw_agent.model.errors import Problem

MAX_FILE_BYTES = 1 << 20
_KEY_PART = r"(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)"
_KEY_PATH = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*\[\[?\s*({_KEY_PATH})\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_KEY_PATH})\s*=")
_PARTS = re.compile(_KEY_PART)  # the parts of a dotted key; a quoted part may hold dots
_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")
# tomllib keeps O(depth^2) bookkeeping per dotted key (`a.b.c...`), so a few hundred KB
# of deeply dotted keys take gigabytes: refuse such keys before handing the text over.
# A segment is a bare key or a quoted one; the look-behinds and possessive quantifiers
# keep the search linear (no segment is re-scanned from inside a word or after `\`).
MAX_KEY_DEPTH = 16
_SEGMENT = r"""(?:(?<![A-Za-z0-9_\-"'])[A-Za-z0-9_\-]++|(?<!\\)"(?:[^"\\\n]|\\.)*+"|'[^'\n]*+')"""
_DEEP_KEY = re.compile(rf"(?:{_SEGMENT}[ \t]*+\.[ \t]*+){{{MAX_KEY_DEPTH}}}{_SEGMENT}")


@dataclass
class TomlDocument:
    path: Path
    data: dict[str, Any]
    text: str
    _lines: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)

    def line_of(self, table: str, key: str | None = None) -> int | None:
        """Line of `key` inside `[table]` ("" = top level); the header's line if key is None."""
        if not self._lines:
            self._index()
        line = self._lines.get((table, key or ""))
        if line is None and not table and key:
            line = self._lines.get((key, ""))  # `key` is itself a table
        return line

    def line_of_path(self, table: str, dotted: str | None) -> int | None:
        """Line of a nested key (`thresholds.warning` in `[quota]`) whichever way the file
        wrote it: `[quota.thresholds]` + `warning =`, `thresholds.warning =`, or an inline
        table (then the line of `thresholds`); the nearest enclosing key's line otherwise."""
        parts = [part for part in (dotted or "").split(".") if part]
        for length in range(len(parts), 0, -1):
            for split in range(length - 1, -1, -1):
                inner = ".".join(filter(None, (table, *parts[:split])))
                line = self._lines_for(inner, ".".join(parts[split:length]))
                if line is not None:
                    return line
        return self.line_of(table)

    def _lines_for(self, table: str, key: str) -> int | None:
        if not self._lines:
            self._index()
        return self._lines.get((table, key))

    def _index(self) -> None:
        table = ""
        for number, line in enumerate(self.text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                table = ".".join(_unquote(part) for part in _PARTS.findall(header.group(1)))
                self._lines.setdefault((table, ""), number)
                continue
            assign = _ASSIGN.match(line)
            if assign:
                # `a.b.c = 1` defines key `a` (a table) here too: problems about `a` need a line.
                parts = [_unquote(part) for part in _PARTS.findall(assign.group(1))]
                for depth in range(1, len(parts) + 1):
                    self._lines.setdefault((table, ".".join(parts[:depth])), number)
                if len(parts) > 1:
                    self._lines.setdefault((".".join(filter(None, (table, parts[0]))), ""), number)

    def problem(self, message: str, table: str = "", key: str | None = None) -> Problem:
        dotted = ".".join(display_key(part) for part in (table, key) if part) or None
        return Problem(self.path, message, key=dotted, line=self.line_of(table, key))


def _unquote(part: str) -> str:
    """A key as TOML reads it: basic strings have escapes (`"name\\nx"` is `name` NL `x`)."""
    if part.startswith('"') and part.endswith('"') and len(part) >= 2:
        try:
            value = json.loads(part)  # TOML's basic-string escapes are JSON's (plus \\U, rare)
            return value if isinstance(value, str) else part.strip('"')
        except ValueError:
            return part.strip('"')
    return part.strip("'")


def display_key(key: str) -> str:
    """A key as shown in messages: quoted TOML keys may hold newlines or terminal escapes."""
    return key if key.isprintable() and len(key) <= 128 else repr(key[:128])


def read_toml(path: Path, max_bytes: int = MAX_FILE_BYTES) -> TomlDocument:
    """Read one input file, refusing anything that is not a small, regular, UTF-8 text file.

    Raises ConfigError-compatible `Problem` wrapped in InputFileError; never reads more
    than `max_bytes + 1` bytes, so a huge or endless file cannot exhaust memory.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError as exc:
        raise InputFileError(Problem(path, "file does not exist")) from exc
    except OSError as exc:
        raise InputFileError(Problem(path, f"cannot stat: {exc.strerror}")) from exc
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(path)
        raise InputFileError(
            Problem(path, f"is a symbolic link (to {target}); share files must be regular files")
        )
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError(Problem(path, "is a directory, not a file"))
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(Problem(path, "is not a regular file"))
    if info.st_mode & 0o444 == 0:
        raise InputFileError(
            Problem(path, "is not readable (mode 000); refusing to read it even as root")
        )
    if info.st_size > max_bytes:
        raise InputFileError(
            Problem(path, f"is too large ({info.st_size} bytes; the limit is {max_bytes})")
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputFileError(Problem(path, f"cannot open: {exc.strerror}")) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the lstat (a FIFO, a device)
            raise InputFileError(Problem(path, "is not a regular file"))
        raw = _read_at_most(fd, info.st_size, max_bytes + 1)
    except OSError as exc:
        raise InputFileError(Problem(path, f"cannot read: {exc.strerror}")) from exc
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise InputFileError(Problem(path, f"is too large (over {max_bytes} bytes)"))
    return parse_toml(path, raw)


def _read_at_most(fd: int, size: int, limit: int) -> bytes:
    """At most `limit` bytes of a regular file whose stat said `size` (it may have grown
    since). Sized by that: a buffer of `limit` (1 MiB) for a 60-byte share file made the
    allocator map and unmap a megabyte per file, a sixth of parsing a cold start's files."""
    chunks: list[bytes] = []
    total = 0
    want = min(limit, size + 1)
    while total < limit:
        chunk = os.read(fd, want)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = min(limit - total, 1 << 16)
    return b"".join(chunks)


def parse_toml(path: Path, raw: bytes) -> TomlDocument:
    if b"\x00" in raw:
        raise InputFileError(Problem(path, "contains NUL bytes; not a text file"))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(
            Problem(path, f"is not valid UTF-8 text (bad byte at offset {exc.start})")
        ) from exc
    if text.count(".") >= MAX_KEY_DEPTH:
        deep = _DEEP_KEY.search(text)
        if deep:
            deep_line = text.count("\n", 0, deep.start()) + 1
            raise InputFileError(
                Problem(path, f"a dotted key has more than {MAX_KEY_DEPTH} parts; nesting is too deep", line=deep_line)
            )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        line = int(position.group(1)) if position else None
        if line is None and "(at end of document)" in message:
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
            message = message.replace("(at end of document)", "at the end of the file")
        message = _TOML_POSITION.sub("", message).strip()
        raise InputFileError(Problem(path, f"TOML syntax error: {message}", line=line)) from exc
    except RecursionError as exc:
        raise InputFileError(Problem(path, "TOML nesting is too deep")) from exc
    except ValueError as exc:  # e.g. an integer literal beyond Python's 4300-digit limit
        raise InputFileError(Problem(path, f"TOML value cannot be read: {str(exc)[:120]}")) from exc
    return TomlDocument(path=path, data=data, text=text)


class InputFileError(Exception):
    """The file could not be read or parsed at all."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem
