"""Error types that carry enough context for an administrator to fix the input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file.

    Kept as data (not only as an exception) because one file usually has several
    problems and the administrator should see all of them in one `smbgwctl validate`.
    """

    file: Path
    message: str
    key: str | None = None
    line: int | None = None
    # Security-relevant (a path that escapes, a name that would take over the admin's
    # share): the share goes down at once instead of keeping its last good version.
    security: bool = False

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {
            "file": str(self.file), "key": self.key, "line": self.line, "message": self.message,
            "security": self.security,
        }


class ConfigError(Exception):
    """An input file is unusable; carries every problem found in it."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class FieldError(ValueError):
    """A single value is invalid; the caller adds file and line.

    `key` is set when the value is nested below the key the caller validated, e.g. a
    plugin validating `[quota]` names `size`, and the caller reports `quota.size`.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class UnsafeValueError(FieldError):
    """A value that would expose what must not be served (a path that escapes its
    allowed roots, a system directory, a name the administrator's own share has).

    Unlike an ordinary mistake, which keeps a share on its last good version, this
    takes the share down: the last good version may be exactly what became unsafe.
    """
