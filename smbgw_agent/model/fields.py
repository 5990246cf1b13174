"""The field kit: typed readers for the values of one TOML table, collecting every problem.

The core's own tables and every plugin's use it, so all of them report alike: each
problem names its key (dotted below nested tables, e.g. ``thresholds.warning``), the
caller adds the file and line, unknown keys are errors, and one bad value never hides the
next. A reader returns the default for a bad value, records why, and `Table.done()` raises
`FieldProblems` carrying all of them.

    table = Table(data)
    size = table.size("size")                       # required
    shared = table.boolean("shared", default=False)
    backend = table.choice("backend", ("auto", "zfs", "btrfs"), default="auto")
    levels = table.table("thresholds")
    warning = levels.integer("warning", default=75, minimum=1, maximum=100)
    table.done()                                    # raises if anything was wrong
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from smbgw_agent.model.errors import FieldError, Problem, UnsafeValueError
from smbgw_agent.model.smbvalues import check_text
from smbgw_agent.model.tomlsource import TomlDocument, display_key
from smbgw_agent.model.units import parse_duration, parse_size

T = TypeVar("T")
MAX_LIST = 256


class _Missing:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Missing()


class FieldProblems(FieldError):
    """Every problem of a table: (message, dotted key, security-relevant)."""

    def __init__(self, problems: Sequence[tuple[str, str | None, bool]]) -> None:
        super().__init__("; ".join(f"{key}: {message}" if key else message for message, key, _ in problems),
                         key=problems[0][1] if problems else None)
        self.problems = list(problems)


def typename(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"must be true or false, not {typename(value)}")
    return value


def string(value: object, what: str = "value", max_length: int = 1024) -> str:
    """A string that may reach smb.conf or a log line: no control characters."""
    if not isinstance(value, str):
        raise FieldError(f"must be a string, not {typename(value)}")
    return check_text(value, what, max_length)


def integer(value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"must be an integer, not {typename(value)}")
    if minimum is not None and value < minimum:
        raise FieldError(f"must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise FieldError(f"must be at most {maximum}, not {value}")
    return value


def address(value: object, network: bool = False) -> str:
    """An IPv4 or IPv6 address (`network`: with a prefix length, `192.0.2.10/24`)."""
    text = string(value, "address", 64)
    try:
        parsed = ipaddress.ip_interface(text) if network else ipaddress.ip_address(text)
    except ValueError as exc:
        raise FieldError(f"{text!r} is not an IP {'address with prefix' if network else 'address'}") from exc
    if network and "/" not in text:
        raise FieldError(f"{text!r} needs a prefix length, e.g. {text}/24")
    return str(parsed)


class Table:
    def __init__(self, data: Mapping[str, Any], path: tuple[str, ...] = (),
                 problems: list[tuple[str, str | None, bool]] | None = None) -> None:
        if not isinstance(data, Mapping):
            raise FieldError(f"must be a table, not {typename(data)}")
        self.data = data
        self.path = path
        self.problems: list[tuple[str, str | None, bool]] = [] if problems is None else problems
        self._read: set[str] = set()
        self._children: list[Table] = []

    def _key(self, key: str) -> str:
        return ".".join((*self.path, key))

    def report(self, key: str | None, message: str, security: bool = False) -> None:
        """Record a problem found by the caller's own rules (e.g. two keys that conflict)."""
        dotted = self._key(key) if key else (".".join(self.path) or None)
        self.problems.append((message, dotted, security))

    def value(self, key: str, parse: Callable[[Any], T], default: T) -> T:
        """Read `key` with `parse` (which raises FieldError); `REQUIRED` as default makes
        a missing key a problem."""
        self._read.add(key)
        if key not in self.data:
            if default is REQUIRED:
                self.report(key, "required key is missing")
            return default
        try:
            return parse(self.data[key])
        except FieldError as exc:
            nested = f"{key}.{exc.key}" if exc.key else key
            if isinstance(exc, FieldProblems):
                for message, sub, security in exc.problems:
                    self.problems.append((message, self._key(f"{key}.{sub}" if sub else key), security))
            else:
                self.problems.append((str(exc), self._key(nested), isinstance(exc, UnsafeValueError)))
            return default

    def boolean(self, key: str, default: bool = REQUIRED) -> bool:
        return self.value(key, boolean, default)

    def text(self, key: str, default: str = REQUIRED, max_length: int = 1024) -> str:
        return self.value(key, lambda v: string(v, key, max_length), default)

    def choice(self, key: str, choices: Sequence[str], default: str = REQUIRED) -> str:
        def parse(value: object) -> str:
            text = string(value, key, 64)
            if text not in choices:
                raise FieldError(f"{text!r} must be one of: {', '.join(choices)}")
            return text
        return self.value(key, parse, default)

    def integer(self, key: str, default: int = REQUIRED, minimum: int | None = None,
                maximum: int | None = None) -> int:
        return self.value(key, lambda v: integer(v, minimum, maximum), default)

    def size(self, key: str, default: int = REQUIRED) -> int:
        """Bytes: an integer, or K/M/G/T (binary) as a string."""
        return self.value(key, parse_size, default)

    def duration(self, key: str, default: float = REQUIRED, minimum: float = 0.0,
                 maximum: float = 86400.0 * 366) -> float:
        """Seconds: a number, or `ms`/`s`/`m`/`h`/`d` as a string."""
        return self.value(key, lambda v: parse_duration(v, minimum, maximum), default)

    def address(self, key: str, default: str = REQUIRED, network: bool = False) -> str:
        return self.value(key, lambda v: address(v, network), default)

    def list_of(self, key: str, item: Callable[[Any], T], default: Sequence[T] = REQUIRED,
             max_items: int = MAX_LIST) -> tuple[T, ...]:
        """A list whose items `item` parses; a problem names the item's index."""
        def parse(value: object) -> tuple[T, ...]:
            if not isinstance(value, list):
                raise FieldError(f"must be a list, not {typename(value)}")
            if len(value) > max_items:
                raise FieldError(f"has {len(value)} entries; at most {max_items}")
            items, problems = [], []
            for index, entry in enumerate(value):
                try:
                    items.append(item(entry))
                except FieldError as exc:
                    problems.append((f"entry {index + 1}: {exc}", None, isinstance(exc, UnsafeValueError)))
            if problems:
                raise FieldProblems(problems)
            return tuple(items)
        fallback: tuple[T, ...] = REQUIRED if isinstance(default, _Missing) else tuple(default)
        return self.value(key, parse, fallback)

    def table(self, key: str, required: bool = False) -> Table:
        """A nested table read with the same rules; its problems join this table's."""
        self._read.add(key)
        value = self.data.get(key)
        if value is None and required:
            self.report(key, "required table is missing")
        elif value is not None and not isinstance(value, Mapping):
            self.report(key, f"must be a table, not {typename(value)}")
        child = Table(value if isinstance(value, Mapping) else {}, (*self.path, key), self.problems)
        self._children.append(child)
        return child

    def unknown(self) -> list[str]:
        return sorted(k for k in self.data if k not in self._read)

    def done(self) -> None:
        """Report unknown keys (with the known ones), then raise if anything was wrong."""
        for key in self.unknown():
            self.report(key, f"unknown key (known: {', '.join(sorted(self._read))})")
        for child in self._children:
            child.done()
        if self.problems and not self.path:
            raise FieldProblems(self.problems)


def table_problems(doc: TomlDocument, table: str, exc: FieldError) -> list[Problem]:
    """A table's problems (one FieldError, or all of a FieldProblems) with their lines."""
    found = exc.problems if isinstance(exc, FieldProblems) else [
        (str(exc), exc.key, isinstance(exc, UnsafeValueError))
    ]
    result = []
    for message, nested, security in found:
        shown = ".".join(display_key(part) for part in (table, nested) if part)
        result.append(Problem(doc.path, message, shown, doc.line_of_path(table, nested), security))
    return result
