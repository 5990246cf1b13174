"""systemd calendar events (`OnCalendar=` syntax), as systemd 252 parses and evaluates them.

A share's `[backup] schedule = "..."` is written in the syntax administrators know from
systemd timers, so it must mean exactly what `systemd-analyze calendar` says it means: the
same accepted strings, the same normalized form, the same elapse times, DST quirks included.
Rather than re-deriving the semantics from the man page, this module ports systemd's
`src/shared/calendarspec.c` as built into Debian 12's systemd 252.39 (which carries the 2025
fix for zones whose winter time is the "DST" one, like Europe/Dublin), plus an emulation of
the libc functions that code leans on: glibc's `localtime()` and `mktime()`, including the
offset guess `mktime()` remembers between calls, which decides what becomes of a wall-clock
time in a DST gap or overlap. Time zones come from the system tz database through
`zoneinfo`; no systemd is needed at run time. The tests compare everything with the real
`systemd-analyze calendar`.

What that means for an admin, by systemd's rules: shorthands (minutely ... yearly,
quarterly, semiannually), weekday lists and ranges, dates and times with `*`, lists, ranges
and `/` repetitions, `~` for days before the end of the month, two-digit years (70-99 ->
19xx, 00-69 -> 20xx), `@UNIXTIME`, and a trailing `UTC`, IANA zone or local zone
abbreviation. A wall-clock time that does not exist on a DST day is skipped that day; one
that occurs twice elapses once. systemd quirks kept on purpose: `*:59/1` is invalid (a
repetition must fit twice), and in a `~` list each further entry may reach 3 days less far
back (`*-*~25,28` is refused).

Deliberate differences from systemd:
- Refused although systemd accepts them: text longer than 256 characters; more than 64
  entries in one comma list (systemd allows 240); control or non-ASCII characters (valid
  for systemd only in oddities like "@", TAB, "5"); leap-second time zones (`right/...`),
  which `zoneinfo` cannot evaluate the way glibc does.
- Sub-second parts (`*:*:0.5`, `*:*:0/0.25`) are supported exactly, in microseconds like
  systemd; `*.25` is refused, as by systemd.
- When systemd's evaluation gives up (its 1000-step loop guard, hit by a few odd schedules
  at a DST change) `next_after` returns None, as for a schedule that never elapses again;
  systemd reports an error there.
- Without a time zone in the text, the local zone is read at each call, from the TZ
  environment variable (a zone name, an absolute path, or a POSIX rule string) or else
  /etc/localtime, the way glibc sees it.
"""

from __future__ import annotations

import difflib
import math
import os
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime
from io import BytesIO
from zoneinfo import ZoneInfo

__all__ = ["MAX_LIST_ENTRIES", "MAX_TEXT_LENGTH", "CalendarError", "CalendarSpec", "parse"]

MAX_TEXT_LENGTH = 256
MAX_LIST_ENTRIES = 64

_USEC_PER_SEC = 1_000_000
_MIN_YEAR = 1970
_MAX_YEAR = 2199
_BITS_WEEKDAYS = 127
_INT_MAX = 2**31 - 1
_ULONG_MAX = 2**64 - 1
_COMPONENTS_MAX = 240
_MAX_CALENDAR_ITERATIONS = 1000
_USEC_TIMESTAMP_FORMATTABLE_MAX = 253_402_214_399_999_999
_ZONEINFO_DIR = "/usr/share/zoneinfo"
_DIGITS = "0123456789"
_ENOENT = -2
_ERANGE = -34

_WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NR = (
    ("monday", 0), ("mon", 0), ("tuesday", 1), ("tue", 1), ("wednesday", 2), ("wed", 2),
    ("thursday", 3), ("thu", 3), ("friday", 4), ("fri", 4), ("saturday", 5), ("sat", 5),
    ("sunday", 6), ("sun", 6),
)  # fmt: skip
_KEYWORDS = (
    "minutely", "hourly", "daily", "weekly", "monthly", "quarterly", "semiannually",
    "semi-annually", "biannually", "bi-annually", "yearly", "annually", "anually",
)  # fmt: skip
_MON_YDAY = (
    (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365),
    (0, 31, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335, 366),
)


class CalendarError(ValueError):
    """A schedule systemd would not accept (or smbgw refuses); the message names the culprit."""


class _Invalid(Exception):
    """Internal: where and why parsing stopped, before it becomes a CalendarError."""

    def __init__(self, message: str, pos: int = -1, guessable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.guessable = guessable  # a generic complaint that a closer look may improve on


class _NoElapse(Exception):
    """Internal: systemd's find_next() gave up (-ENOENT, or its loop guard)."""


# ---------------------------------------------------------------------------------------
# The parsed form, mirroring systemd's CalendarSpec / CalendarComponent.


@dataclass(frozen=True, order=True)
class _Component:
    # Field order is systemd's component_compare() order, so sorting matches its qsort.
    start: int
    stop: int = -1
    repeat: int = 0


_Chain = tuple[_Component, ...] | None  # None is systemd's NULL chain: "*"


@dataclass(frozen=True)
class _Rules:
    weekdays_bits: int
    year: _Chain
    month: _Chain
    day: _Chain
    hour: _Chain
    minute: _Chain
    microsecond: _Chain
    end_of_month: bool
    utc: bool
    timezone: str | None
    dst: int


@dataclass
class _Raw:
    """The mutable spec while parsing; chains are lists, as systemd builds them."""

    weekdays_bits: int = 0
    year: list[_Component] | None = None
    month: list[_Component] | None = None
    day: list[_Component] | None = None
    hour: list[_Component] | None = None
    minute: list[_Component] | None = None
    microsecond: list[_Component] | None = None
    end_of_month: bool = False
    utc: bool = False
    timezone: str | None = None
    dst: int = -1


@dataclass(frozen=True)
class CalendarSpec:
    """A parsed schedule; comparable and hashable by its text and normalized form."""

    text: str
    normalized: str
    _rules: _Rules = field(repr=False, compare=False)

    def next_after(self, when: float) -> float | None:
        """Unix time of the first elapse strictly after `when`, None if it never elapses again.

        `when` is taken to the microsecond, systemd's resolution, so feeding a result back in
        steps to the following elapse instead of returning the same one.
        """
        usec = _next_usec(self._rules, _to_usec(when))
        return None if usec is None else _from_usec(usec)

    def typical_interval(self, when: float) -> float | None:
        """Seconds between the next two elapses after `when` (None if there are fewer than two).

        Used to size retention and to warn about schedules that are too dense; computed on
        integer microseconds so sub-second schedules do not lose the gap to float rounding.
        """
        first = _next_usec(self._rules, _to_usec(when))
        if first is None:
            return None
        second = _next_usec(self._rules, first)
        if second is None:
            return None
        return (second - first) / _USEC_PER_SEC


def _to_usec(when: float) -> int:
    if not math.isfinite(when):
        raise ValueError(f"not a finite Unix time: {when!r}")
    # Round to the nearest microsecond: results are exact microseconds, and a float made from
    # one must map back onto it, or next_after(next_after(x)) would repeat the same elapse.
    # Times before 1970 are out of systemd's (unsigned) domain; they behave like the epoch.
    return max(round(when * _USEC_PER_SEC), -1)


def _from_usec(usec: int) -> float:
    sec, frac = divmod(usec, _USEC_PER_SEC)
    return sec + frac / _USEC_PER_SEC


# ---------------------------------------------------------------------------------------
# Parsing: systemd's calendar_spec_from_string() and helpers, with messages for admins.


def parse(text: str) -> CalendarSpec:
    """Parse a calendar event the way systemd 252 does; raise CalendarError if it would not."""
    if not isinstance(text, str):
        raise CalendarError(f"a schedule must be a string, not {type(text).__name__}")
    quoted = _quote(text)
    if len(text) > MAX_TEXT_LENGTH:
        raise CalendarError(f"{quoted}: too long ({len(text)} characters, at most {MAX_TEXT_LENGTH})")
    for ch in text:
        if not " " <= ch <= "~":
            raise CalendarError(f"{quoted}: contains the character U+{ord(ch):04X}; only plain ASCII is allowed")
    if not text:
        raise CalendarError('"": the schedule is empty')
    try:
        rules, tznames = _parse_rules(text)
    except _Invalid as err:
        raise CalendarError(f"{quoted}: {err.message}") from None
    return CalendarSpec(text=text, normalized=_to_string(rules, tznames), _rules=rules)


def _quote(text: str) -> str:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return '"' + "".join(ch if " " <= ch <= "~" else f"\\x{ord(ch):02x}" for ch in shown) + '"'


def _ch(s: str, i: int) -> str:
    """The character at i, or "" at the end: Python's stand-in for C's terminating NUL."""
    return s[i] if i < len(s) else ""


def _skip_spaces(s: str, i: int) -> int:
    while _ch(s, i) == " ":
        i += 1
    return i


def _local_tznames() -> tuple[str, str]:
    # systemd matches the local zone's abbreviations (e.g. "CET", "CEST") as a suffix, with
    # the names glibc's tzset() derives from TZ; Python exposes exactly those.
    time.tzset()
    std, dst = time.tzname
    return std, dst


def _parse_rules(text: str) -> tuple[_Rules, tuple[str, str]]:
    raw = _Raw()
    tznames = _local_tznames()
    p = text
    zone_word: str | None = None
    if p.lower().endswith(" utc"):
        raw.utc = True
        p = p[:-4]
    else:
        for j, name in enumerate(tznames):
            if not name or len(p) <= len(name) or not p.lower().endswith(name.lower()):
                continue
            if p[-len(name) - 1] != " ":
                continue
            raw.dst = j
            p = p[: -len(name) - 1]
            break
        else:
            last_space = p.rfind(" ")
            if last_space >= 0:
                candidate = p[last_space + 1 :]
                if _timezone_is_valid(candidate):
                    _check_zone_usable(candidate)
                    raw.timezone = candidate
                    p = p[:last_space]
                else:
                    zone_word = candidate

    if not p:
        raise _Invalid("nothing is left before the time zone")

    try:
        _parse_body(p, raw)
    except _Invalid as err:
        if zone_word is not None and _looks_like_zone(zone_word):
            try:  # does it parse without the last word? then that word is the culprit
                _parse_body(p[: -len(zone_word) - 1], _Raw())
            except _Invalid:
                pass
            else:
                raise _Invalid(f'unknown time zone "{zone_word}"') from None
        raise _explain(p, err) from None

    rules = _normalize(raw)
    problem = _validity_problem(rules)
    if problem is not None:
        raise _Invalid(problem)
    return rules, tznames


def _parse_body(p: str, raw: _Raw) -> None:
    lower = p.lower()
    zero = [_Component(0)]
    if lower == "minutely":
        raw.microsecond = list(zero)
    elif lower == "hourly":
        raw.minute, raw.microsecond = list(zero), list(zero)
    elif lower == "daily":
        raw.hour, raw.minute, raw.microsecond = list(zero), list(zero), list(zero)
    elif lower == "monthly":
        raw.day = [_Component(1)]
        raw.hour, raw.minute, raw.microsecond = list(zero), list(zero), list(zero)
    elif lower in ("annually", "yearly", "anually"):
        raw.month, raw.day = [_Component(1)], [_Component(1)]
        raw.hour, raw.minute, raw.microsecond = list(zero), list(zero), list(zero)
    elif lower == "weekly":
        raw.weekdays_bits = 1
        raw.hour, raw.minute, raw.microsecond = list(zero), list(zero), list(zero)
    elif lower == "quarterly":
        raw.month = [_Component(10), _Component(7), _Component(4), _Component(1)]
        raw.day = [_Component(1)]
        raw.hour, raw.minute, raw.microsecond = list(zero), list(zero), list(zero)
    elif lower in ("biannually", "bi-annually", "semiannually", "semi-annually"):
        raw.month = [_Component(7), _Component(1)]
        raw.day = [_Component(1)]
        raw.hour, raw.minute, raw.microsecond = list(zero), list(zero), list(zero)
    else:
        i = _parse_weekdays(p, raw)
        i, finished = _parse_date(p, i, raw)
        if not finished:
            i = _parse_calendar_time(p, i, raw)
        if i != len(p):
            raise _Invalid(f"unexpected {_at(p, i)}", i, guessable=True)


def _at(s: str, i: int) -> str:
    if i >= len(s):
        return "end"
    rest = s[i:]
    return f'"{rest}"' if len(rest) <= 20 else f'"{rest[:17]}..."'


def _word_at(s: str, i: int) -> str:
    j = i
    while j < len(s) and s[j].isalpha():
        j += 1
    return s[i:j]


def _parse_weekdays(s: str, raw: _Raw) -> int:
    i = 0
    last = -1
    first = True
    while True:
        found = next(((name, nr) for name, nr in _DAY_NR if s[i : i + len(name)].lower() == name), None)
        if found is None:
            if first:
                return 0
            word = _word_at(s, i)
            if word:
                raise _Invalid(f'unknown weekday "{word}"', i)
            raise _Invalid(f"expected a weekday at {_at(s, i)}", i)

        name, nr = found
        skip = len(name)
        following = _ch(s, i + skip)
        if following not in ("", "-", ".", ",", " "):
            word = s[i : i + skip] + _word_at(s, i + skip)
            if following.isalpha():
                raise _Invalid(f'unknown weekday "{word}"', i)
            raise _Invalid(f'unexpected "{following}" after weekday "{s[i : i + skip]}"', i + skip)

        raw.weekdays_bits |= 1 << nr
        if last >= 0:
            if last > nr:
                raise _Invalid(f'weekday range "{_WEEKDAY_NAMES[last]}..{_WEEKDAY_NAMES[nr]}" runs backwards', i)
            for j in range(last + 1, nr):
                raw.weekdays_bits |= 1 << j
        i += skip

        if i == len(s):
            return i
        if s[i] == " ":
            return _skip_spaces(s, i)
        if s[i] == ".":
            if last >= 0:
                raise _Invalid("a weekday range cannot continue into another range", i)
            if _ch(s, i + 1) != ".":
                raise _Invalid('a weekday range is written with "..", as in "Mon..Fri"', i)
            last = nr
            i += 2
        elif s[i] == "-":
            if last >= 0:
                raise _Invalid("a weekday range cannot continue into another range", i)
            last = nr
            i += 1
        elif s[i] == ",":
            last = -1
            i += 1

        if _ch(s, i) in ("", " "):
            if last >= 0:
                raise _Invalid(f'weekday range "{_WEEKDAY_NAMES[last]}.." has no end', i)
            return _skip_spaces(s, i)
        first = False


def _strtoul(s: str, i: int) -> tuple[int, int]:
    """C's strtoul(s + i, &end, 10), for `@TIMESTAMP`: leading blanks and a sign are allowed."""
    j = i
    while _ch(s, j) in (" ", "\t", "\n", "\v", "\f", "\r") and j < len(s):
        j += 1
    negative = False
    if _ch(s, j) in ("+", "-"):
        negative = s[j] == "-"
        j += 1
    k = j
    while _ch(s, k) and s[k] in _DIGITS:
        k += 1
    if k == j:
        raise _Invalid(f'expected a Unix time after "@", found {_at(s, i)}', i)
    value = int(s[j:k])
    if value > _ULONG_MAX:
        raise _Invalid(f'Unix time "{s[j:k]}" is too large', i)
    if negative:
        value = (-value) & _ULONG_MAX
    return value, k


def _parse_component_decimal(s: str, i: int, usec: bool) -> tuple[int, int]:
    if _ch(s, i) == "" or s[i] not in _DIGITS:
        raise _Invalid(f"expected a number at {_at(s, i)}", i, guessable=True)
    e = i
    while _ch(s, e) and s[e] in _DIGITS:
        e += 1
    value = int(s[i:e])
    if value > _ULONG_MAX:
        raise _Invalid(f'number "{s[i:e]}" is too large', i)
    if usec:
        value *= _USEC_PER_SEC
        if value > _ULONG_MAX:
            raise _Invalid(f'number "{s[i:e]}" is too large', i)
        if _ch(s, e) == "." and _ch(s, e + 1) != ".":
            e += 1
            if _ch(s, e) == "" or s[e] not in _DIGITS:
                raise _Invalid(f"expected digits after the decimal point at {_at(s, e)}", e)
            digits_start = e
            add = 0
            for _ in range(6):
                if _ch(s, e) == "" or s[e] not in _DIGITS:
                    add *= 10 ** (6 - (e - digits_start))
                    break
                add = add * 10 + int(s[e])
                e += 1
            if _ch(s, e) in ("5", "6", "7", "8", "9"):
                add += 1  # systemd rounds the seventh digit
            while _ch(s, e) and s[e] in _DIGITS:
                e += 1
            value += add
    if value > _INT_MAX:
        raise _Invalid(f'number "{s[i:e]}" is too large', i)
    return value, e


def _parse_chain(s: str, i: int, usec: bool) -> tuple[list[_Component] | None, int]:
    if _ch(s, i) == "*":
        return ([_Component(0, -1, _USEC_PER_SEC)] if usec else None), i + 1

    chain: list[_Component] = []
    nesting = 0
    while True:
        if nesting > _COMPONENTS_MAX or len(chain) >= MAX_LIST_ENTRIES:
            raise _Invalid(f"too many entries in one list (at most {MAX_LIST_ENTRIES})", i)
        begin = i
        start, e = _parse_component_decimal(s, i, usec)
        stop = -1
        repeat = 0
        if _ch(s, e) == "." and _ch(s, e + 1) == ".":
            e += 2
            stop, e = _parse_component_decimal(s, e, usec)
            repeat = _USEC_PER_SEC if usec else 1
        if _ch(s, e) == "/":
            e += 1
            repeat, e = _parse_component_decimal(s, e, usec)
            if repeat == 0:
                raise _Invalid(f'repetition "{s[begin:e]}" must repeat at least every 1', begin)
        else:
            if start > _INT_MAX - repeat:
                raise _Invalid(f'number "{s[begin:e]}" is too large', begin)
            if usec and stop >= 0 and start + repeat > stop:
                raise _Invalid(
                    f'seconds range "{s[begin:e]}" is shorter than a second; give a repetition like "/0.5"', begin
                )
        if _ch(s, e) not in ("", " ", ",", "-", "~", ":"):
            raise _Invalid(f"unexpected {_at(s, e)}", e, guessable=True)
        chain.insert(0, _Component(start, stop, repeat))  # systemd prepends
        i = e
        if _ch(s, i) != ",":
            return chain, i
        i += 1
        nesting += 1

def _date_separator(s: str, t: int, raw: _Raw) -> int:
    """Past the "-" (or "~": days before the end of the month) between date fields."""
    if s[t] == "~":
        raw.end_of_month = True
    elif s[t] != "-":
        raise _Invalid(f"unexpected {_at(s, t)}", t, guessable=True)
    return t + 1


def _parse_date(s: str, i: int, raw: _Raw) -> tuple[int, bool]:
    """Return where the time part starts, and whether `@TIMESTAMP` made it unnecessary."""
    if i == len(s):
        return i, False

    if s[i] == "@":
        value, t = _strtoul(s, i + 1)
        signed = value - 2**64 if value >= 2**63 else value
        days, secs = divmod(signed, 86400)
        year, month, day = _civil_from_days(days)
        raw.year, raw.month, raw.day = [_Component(year)], [_Component(month)], [_Component(day)]
        raw.hour, raw.minute = [_Component(secs // 3600)], [_Component(secs // 60 % 60)]
        raw.microsecond = [_Component(secs % 60 * _USEC_PER_SEC)]
        raw.utc = True
        return t, True

    first, t = _parse_chain(s, i, False)
    if _ch(s, t) in ("", ":"):
        return i, False  # no date: this was the hour, parse it again as a time

    t = _date_separator(s, t, raw)
    second, t = _parse_chain(s, t, False)
    if _ch(s, t) in ("", " "):
        raw.month, raw.day = first, second
        return _skip_spaces(s, t), False
    if raw.end_of_month:
        raise _Invalid('"~" (days before the end of the month) must come right before the day', t)

    t = _date_separator(s, t, raw)
    third, t = _parse_chain(s, t, False)
    if _ch(s, t) not in ("", " "):
        raise _Invalid(f"unexpected {_at(s, t)}", t, guessable=True)
    raw.year, raw.month, raw.day = first, second, third
    return _skip_spaces(s, t), False


def _parse_calendar_time(s: str, i: int, raw: _Raw) -> int:
    if i == len(s):
        raw.hour, raw.minute, raw.microsecond = [_Component(0)], [_Component(0)], [_Component(0)]
        return i
    hour, t = _parse_chain(s, i, False)
    if _ch(s, t) != ":":
        if t == len(s):
            raise _Invalid(f'"{s[i:t]}" is neither a date nor a time (a time needs a minute, as in "{s[i:t]}:00")', i)
        raise _Invalid(f"unexpected {_at(s, t)}", t, guessable=True)
    t += 1
    minute, t = _parse_chain(s, t, False)
    if t == len(s):
        raw.hour, raw.minute, raw.microsecond = hour, minute, [_Component(0)]
        return t
    if s[t] != ":":
        raise _Invalid(f"unexpected {_at(s, t)}", t, guessable=True)
    t += 1
    second, t = _parse_chain(s, t, True)
    if t != len(s):
        raise _Invalid(f"unexpected {_at(s, t)}", t, guessable=True)
    raw.hour, raw.minute, raw.microsecond = hour, minute, second
    return t


def _explain(p: str, err: _Invalid) -> _Invalid:
    """Turn a low-level parse failure into what the admin most likely got wrong."""
    if not err.guessable:
        return err
    if p.startswith(" "):
        return _Invalid("starts with a space")
    if p.endswith(" "):
        return _Invalid("ends with a space")
    if _ch(p, err.pos) == "." and err.pos > 0 and p[err.pos - 1] == "*":
        return _Invalid('"*" cannot have a fraction; write e.g. "0/0.25" for every quarter second')
    if 0 <= err.pos < len(p) and p[err.pos].isalpha():
        word = _word_at(p, err.pos)
        if err.pos == 0 and word == p:
            guess = difflib.get_close_matches(word.lower(), [*_KEYWORDS, *(n for n, _ in _DAY_NR)], n=1, cutoff=0.6)
            if guess and guess[0] in _KEYWORDS:
                return _Invalid(f'unknown keyword "{word}" (did you mean "{guess[0]}"?)')
        if err.pos == 0:
            guess = difflib.get_close_matches(word.lower(), [n for n, _ in _DAY_NR], n=1, cutoff=0.6)
            if guess or len(word) <= 3:
                return _Invalid(f'unknown weekday "{word}"')
            return _Invalid(f'"{word}" is neither a weekday nor a keyword like "daily"')
        return _Invalid(f'unexpected word "{word}"')
    return err


def _looks_like_zone(word: str) -> bool:
    if not word or not word[0].isalpha():
        return False
    lowered = word.lower()
    if lowered in _KEYWORDS or any(lowered == n for n, _ in _DAY_NR):
        return False
    return all(ch.isalnum() or ch in "-_+/" for ch in word)


def _timezone_is_valid(name: str) -> bool:
    """systemd's verify_timezone(): a safe name of a regular TZif file under /usr/share/zoneinfo."""
    if not name:
        return False
    if name == "UTC":
        return True
    if name[0] == "/":
        return False
    slash = False
    for ch in name:
        if not (ch.isascii() and (ch.isalnum() or ch in "-_+/")):
            return False
        if ch == "/":
            if slash:
                return False
            slash = True
        else:
            slash = False
    if slash:
        return False
    try:
        with open(os.path.join(_ZONEINFO_DIR, name), "rb") as f:
            if not os.path.isfile(f.name):
                return False
            return f.read(4) == b"TZif"
    except OSError:
        return False


def _check_zone_usable(name: str) -> None:
    path = os.path.join(_ZONEINFO_DIR, name)
    try:
        with open(path, "rb") as f:
            header = f.read(44)
    except OSError:
        return  # "UTC" without a tz database: handled without a file
    if len(header) >= 44 and struct.unpack(">l", header[28:32])[0] > 0:
        raise _Invalid(f'time zone "{name}" counts leap seconds, which smbgw schedules do not support')
    try:
        _zone_from_path(path)
    except (OSError, ValueError) as err:
        raise _Invalid(f'time zone "{name}" cannot be read: {err}') from None


# ---------------------------------------------------------------------------------------
# Normalization, validity and the normalized text.


def _fix_year(chain: list[_Component] | None) -> list[_Component] | None:
    if chain is None:
        return None

    def fix(v: int) -> int:
        if 0 <= v < 70:
            return v + 2000
        if 70 <= v < 100:
            return v + 1900
        return v

    return [_Component(fix(c.start), fix(c.stop) if c.stop >= 0 else c.stop, c.repeat) for c in chain]


def _normalize_chain(chain: list[_Component] | None) -> _Chain:
    if chain is None:
        return None
    out: set[_Component] = set()
    for c in chain:
        start, stop, repeat = c.start, c.stop, c.repeat
        if stop > start and repeat > 0:
            stop -= (stop - start) % repeat
        if (stop > start and repeat > 0 and start + repeat > stop) or start == stop:
            repeat = 0
            stop = -1
        out.add(_Component(start, stop, repeat))
    return tuple(sorted(out))


def _normalize(raw: _Raw) -> _Rules:
    utc, timezone = raw.utc, raw.timezone
    if timezone == "UTC":
        utc, timezone = True, None
    bits = raw.weekdays_bits
    if bits <= 0 or bits >= _BITS_WEEKDAYS:
        bits = -1
    end_of_month = raw.end_of_month and raw.day is not None
    return _Rules(
        weekdays_bits=bits,
        year=_normalize_chain(_fix_year(raw.year)),
        month=_normalize_chain(raw.month),
        day=_normalize_chain(raw.day),
        hour=_normalize_chain(raw.hour),
        minute=_normalize_chain(raw.minute),
        microsecond=_normalize_chain(raw.microsecond),
        end_of_month=end_of_month,
        utc=utc,
        timezone=timezone,
        dst=raw.dst,
    )


def _show(value: int, usec: bool) -> str:
    if not usec:
        return str(value)
    sec, frac = divmod(value, _USEC_PER_SEC)
    return f"{sec}.{frac:06d}".rstrip("0") if frac else str(sec)


def _chain_problem(chain: _Chain, what: str, low: int, high: int, end_of_month: bool = False) -> str | None:
    """systemd's chain_valid(), answering with the reason instead of false."""
    if chain is None:
        return None
    usec = what == "second"
    for c in chain:
        if end_of_month:
            # "At most 28 days back from the end of the month" -- systemd applies this by
            # lowering the bound once per list entry (its check recurses with the lowered
            # bound), so in "~01,~05" the second entry may only go back 25 days.
            high -= 3
            if not low <= c.start <= high:
                return f"day ~{c.start:02d} is out of range ~01..~{high:02d} here (days before the end of the month)"
        elif not low <= c.start <= high:
            return f"{what} {_show(c.start, usec)} is out of range {_show(low, usec)}..{_show(high, usec)}"
        if c.repeat > high - low:
            return f'{what} repetition "/{_show(c.repeat, usec)}" is too large'
        if c.stop >= 0:
            if not low <= c.stop <= high:
                prefix = "~" if end_of_month else ""
                return f"{what} {prefix}{_show(c.stop, usec)} is out of range"
            if c.start + c.repeat > c.stop:
                return f'{what} range "{_show(c.start, usec)}..{_show(c.stop, usec)}" runs backwards'
        elif end_of_month and c.start - c.repeat < low:
            return f'day repetition "~{c.start:02d}/{c.repeat}" is too large'
        elif not end_of_month and c.start + c.repeat > high:
            return (
                f'{what} repetition "{_show(c.start, usec)}/{_show(c.repeat, usec)}" does not fit in '
                f"{_show(low, usec)}..{_show(high, usec)}"
            )
    return None


def _validity_problem(r: _Rules) -> str | None:
    return (
        _chain_problem(r.year, "year", _MIN_YEAR, _MAX_YEAR)
        or _chain_problem(r.month, "month", 1, 12)
        or _chain_problem(r.day, "day", 1, 31, r.end_of_month)
        or _chain_problem(r.hour, "hour", 0, 23)
        or _chain_problem(r.minute, "minute", 0, 59)
        or _chain_problem(r.microsecond, "second", 0, 60 * _USEC_PER_SEC - 1)
    )


def _format_weekdays(bits: int) -> str:
    out: list[str] = []
    run_start = -1
    for x in range(8):
        on = x < 7 and bool(bits & (1 << x))
        if on:
            if run_start < 0:
                if out:
                    out.append(",")
                out.append(_WEEKDAY_NAMES[x])
                run_start = x
        elif run_start >= 0:
            if x > run_start + 1:
                out.append(".." if x > run_start + 2 else ",")
                out.append(_WEEKDAY_NAMES[x - 1])
            run_start = -1
    return "".join(out)


def _format_chain(chain: _Chain, width: int, usec: bool = False) -> str:
    d = _USEC_PER_SEC if usec else 1
    if chain is None or (usec and any(c.start == 0 and c.stop < 0 and c.repeat == _USEC_PER_SEC for c in chain)):
        return "*"
    parts: list[str] = []
    for c in chain:
        s = f"{c.start // d:0{width}d}"
        if c.start % d > 0:
            s += f".{c.start % d:06d}"
        if c.stop > 0:
            s += f"..{c.stop // d:0{width}d}"
            if c.stop % d > 0:
                s += f".{c.stop % d:06d}"
        if c.repeat > 0 and not (c.stop > 0 and c.repeat == d):
            s += f"/{c.repeat // d}"
        if c.repeat % d > 0:
            s += f".{c.repeat % d:06d}"
        parts.append(s)
    return ",".join(parts)


def _to_string(r: _Rules, tznames: tuple[str, str]) -> str:
    out = ""
    if 0 < r.weekdays_bits <= _BITS_WEEKDAYS:
        out += _format_weekdays(r.weekdays_bits) + " "
    out += (
        f"{_format_chain(r.year, 4)}-{_format_chain(r.month, 2)}{'~' if r.end_of_month else '-'}"
        f"{_format_chain(r.day, 2)} {_format_chain(r.hour, 2)}:{_format_chain(r.minute, 2)}:"
        f"{_format_chain(r.microsecond, 2, usec=True)}"
    )
    if r.utc:
        out += " UTC"
    elif r.timezone:
        out += " " + r.timezone
    elif r.dst in (0, 1) and tznames[r.dst]:
        out += " " + tznames[r.dst]
    return out


# ---------------------------------------------------------------------------------------
# Civil calendar arithmetic (proleptic Gregorian, unbounded, like glibc's).


def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


# ---------------------------------------------------------------------------------------
# Time zones and glibc's localtime()/mktime().


class _Zone:
    """UTC offset and DST flag of an instant: all glibc's localtime() takes from a zone."""

    def __init__(self, info: ZoneInfo | None) -> None:
        self._info = info

    def offset(self, t: int) -> tuple[int, bool]:
        if self._info is None:
            return 0, False
        dt = datetime.fromtimestamp(t, self._info)  # OverflowError/ValueError/OSError far out
        off = dt.utcoffset()
        dst = dt.dst()
        return (int(off.total_seconds()) if off is not None else 0), bool(dst)


_UTC_ZONE = _Zone(None)
_zone_cache: dict[tuple[object, ...], _Zone] = {}


def _remember(key: tuple[object, ...], zone: _Zone) -> _Zone:
    if len(_zone_cache) > 64:
        _zone_cache.clear()
    _zone_cache[key] = zone
    return zone


def _zone_from_path(path: str) -> _Zone:
    st = os.stat(path)
    key: tuple[object, ...] = ("file", path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    zone = _zone_cache.get(key)
    if zone is None:
        with open(path, "rb") as f:
            zone = _remember(key, _Zone(ZoneInfo.from_file(f, key=path)))
    return zone


def _zone_from_posix_rule(rule: str) -> _Zone:
    """A zone for a POSIX TZ rule ("CET-1CEST,M3.5.0,M10.5.0/3"), as glibc accepts in TZ.

    zoneinfo only reads such rules as the footer of a TZif file, so wrap it in a minimal one.
    """
    key: tuple[object, ...] = ("rule", rule)
    zone = _zone_cache.get(key)
    if zone is not None:
        return zone
    header = b"TZif2" + b"\0" * 15 + struct.pack(">6l", 0, 0, 0, 0, 1, 4)
    data = struct.pack(">lbB", 0, 0, 0) + b"UTC\0"
    blob = header + data + header + data + b"\n" + rule.encode("ascii", "replace") + b"\n"
    try:
        zone = _Zone(ZoneInfo.from_file(BytesIO(blob), key=rule))
    except (ValueError, IndexError):
        zone = _UTC_ZONE  # glibc falls back to UTC for a TZ it cannot make sense of
    return _remember(key, zone)


def _local_zone() -> _Zone:
    """The zone glibc's localtime() would use right now, from TZ or /etc/localtime."""
    tz = os.environ.get("TZ")
    try:
        if tz is None:
            return _zone_from_path("/etc/localtime")
        if tz.startswith(":"):
            tz = tz[1:]
        if not tz:
            return _UTC_ZONE
        path = tz if tz.startswith("/") else os.path.join(os.environ.get("TZDIR") or _ZONEINFO_DIR, tz)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                if f.read(4) == b"TZif":
                    return _zone_from_path(path)
    except (OSError, ValueError):
        return _UTC_ZONE
    return _zone_from_posix_rule(tz)


class _TM:
    """A C `struct tm`, fields as systemd uses them (year since 1900, month 0-11)."""

    __slots__ = ("hour", "isdst", "mday", "min", "mon", "sec", "wday", "yday", "year")

    def __init__(self, year: int, mon: int, mday: int, hour: int, minute: int, sec: int, isdst: int) -> None:
        self.year = year
        self.mon = mon
        self.mday = mday
        self.hour = hour
        self.min = minute
        self.sec = sec
        self.isdst = isdst
        self.wday = 0
        self.yday = 0

    def copy(self) -> _TM:
        other = _TM(self.year, self.mon, self.mday, self.hour, self.min, self.sec, self.isdst)
        other.wday, other.yday = self.wday, self.yday
        return other

    def assign(self, other: _TM) -> None:
        for name in _TM.__slots__:
            setattr(self, name, getattr(other, name))


class _Clock:
    """glibc's localtime()/mktime() (or gmtime()/timegm()) for one zone.

    mktime() keeps the offset it last found and starts its search from it; in a DST gap or
    overlap that guess decides the answer, and systemd's results depend on it, so it is kept
    here per evaluation, as a fresh systemd-analyze process would.
    """

    def __init__(self, zone: _Zone) -> None:
        self.zone = zone
        self.guess = 0  # glibc's `localtime_offset`: t - wall of the last result

    def localtime(self, t: int) -> _TM:
        off, isdst = self.zone.offset(t)
        days, secs = divmod(t + off, 86400)
        year, month, day = _civil_from_days(days)
        tm = _TM(year - 1900, month - 1, day, secs // 3600, secs // 60 % 60, secs % 60, 1 if isdst else 0)
        tm.wday = (days + 4) % 7
        tm.yday = days - _days_from_civil(year, 1, 1)
        return tm

    def mktime(self, tm: _TM) -> int:
        """glibc's __mktime_internal(): normalizes `tm` in place; -1 on failure."""
        try:
            return self._mktime(tm)
        except (OverflowError, ValueError, OSError):
            return -1

    def _mktime(self, tm: _TM) -> int:
        isdst = tm.isdst
        year = tm.year + tm.mon // 12
        yday = _MON_YDAY[_is_leap(year + 1900)][tm.mon % 12] - 1 + tm.mday
        sec_requested = tm.sec
        sec = min(max(tm.sec, 0), 59)
        wall = (_days_from_civil(year + 1900, 1, 1) + yday) * 86400 + tm.hour * 3600 + tm.min * 60 + sec

        t0 = wall + self.guess
        t = t1 = t2 = t0
        dst2 = False
        probes = 6
        while True:
            off, is_dst = self.zone.offset(t)
            dt = wall - (t + off)
            if dt == 0:
                break
            if t == t1 and t != t2 and (dst2 <= is_dst if isdst < 0 else (isdst != 0) != is_dst):
                break  # oscillating around a spring-forward gap: take this side
            probes -= 1
            if probes == 0:
                return -1
            t1, t2, t, dst2 = t2, t, t + dt, is_dst

        if dt == 0 and isdst >= 0 and (isdst != 0) != is_dst:
            # Wrong DST flag for the request: use the offset of a neighbour that has it.
            stride = 601200
            bound = 536454000 // 2 + stride
            found = False
            for delta in range(stride, bound, stride):
                for direction in (-1, 1):
                    ot = t + delta * direction
                    o_off, o_dst = self.zone.offset(ot)
                    if (isdst != 0) == o_dst:
                        t = wall - o_off
                        found = True
                        break
                if found:
                    break
            if not found:
                return -1

        self.guess = t - wall
        t += sec_requested - sec
        tm.assign(self.localtime(t))
        return t


# ---------------------------------------------------------------------------------------
# Evaluation: systemd's find_next() and calendar_spec_next_usec().


def _clock_for(r: _Rules) -> _Clock:
    if r.utc:
        return _Clock(_UTC_ZONE)
    if r.timezone:
        return _Clock(_zone_from_path(os.path.join(_ZONEINFO_DIR, r.timezone)))
    return _Clock(_local_zone())


def _next_usec(r: _Rules, usec: int) -> int | None:
    if usec > _USEC_TIMESTAMP_FORMATTABLE_MAX:
        return None
    clock = _clock_for(r)
    usec += 1
    try:
        tm = clock.localtime(usec // _USEC_PER_SEC)
        tm, tm_usec = _find_next(r, tm, usec % _USEC_PER_SEC, clock)
    except (_NoElapse, OverflowError, ValueError, OSError):
        return None  # never again, or beyond what the calendar can represent
    t = clock.mktime(tm)
    if t < 0:
        return None
    return t * _USEC_PER_SEC + tm_usec


def _find_end_of_month(clock: _Clock, tm: _TM, day: int) -> int:
    t = tm.copy()
    t.mon += 1
    t.mday = 1 - day
    if clock.mktime(t) < 0 or t.mon != tm.mon:
        return -1
    return t.mday


def _find_matching_component(
    clock: _Clock, chain: _Chain, tm: _TM, val: int, end_of_month: bool = False
) -> tuple[int, int]:
    """Earliest value >= val the chain allows: (1 if it moved, else 0; value) or (_ENOENT, val)."""
    if chain is None:
        return 0, val
    d = -1
    d_set = False
    for c in chain:
        if end_of_month:
            start = _find_end_of_month(clock, tm, c.start)
            stop = _find_end_of_month(clock, tm, c.stop)
            if stop > 0:
                start, stop = stop, start
        else:
            start, stop = c.start, c.stop
        if start >= val:
            if not d_set or start < d:
                d = start
                d_set = True
        elif c.repeat > 0:
            k = start + c.repeat * -((start - val) // c.repeat)
            if (not d_set or k < d) and (stop < 0 or k <= stop):
                d = k
                d_set = True
    if not d_set:
        return _ENOENT, val
    return (1 if val != d else 0), d


# (field, the next smaller field, what it starts over at), as systemd's tm_within_bounds().
_BOUND_FIELDS = (("year", "mon", 0), ("mon", "mday", 1), ("mday", "hour", 0), ("hour", "min", 0),
                 ("min", "sec", 0), ("sec", "", 0))


def _tm_within_bounds(clock: _Clock, tm: _TM) -> int:
    if tm.year + 1900 > _MAX_YEAR:
        return _ERANGE
    t = tm.copy()
    if clock.mktime(t) < 0:
        return _ERANGE
    # If mktime() normalized an out-of-range field, the smaller units start over: the first
    # field (largest first) that changed decides, and the next smaller one is reset.
    cmp = 0
    for name, smaller, reset in _BOUND_FIELDS:
        cmp = (getattr(t, name) > getattr(tm, name)) - (getattr(t, name) < getattr(tm, name))
        if cmp:
            if smaller:
                setattr(t, smaller, reset)
            break
    if cmp < 0:
        return -35  # -EDEADLK: refuse to go backwards
    if cmp > 0:
        tm.assign(t)
    return 1 if cmp == 0 else 0


def _matches_weekday(clock: _Clock, bits: int, tm: _TM) -> bool:
    if bits < 0 or bits >= _BITS_WEEKDAYS:
        return True
    t = tm.copy()
    if clock.mktime(t) < 0:
        return False
    k = 6 if t.wday == 0 else t.wday - 1
    return bool(bits & (1 << k))


def _find_next(r: _Rules, start: _TM, start_usec: int, clock: _Clock) -> tuple[_TM, int]:
    """systemd's find_next(), as built into Debian's 252.39.

    That build carries the negative-DST fix (systemd PR #36897, for zones like Europe/Dublin
    whose winter time is the "DST" one): once a candidate comes out earlier than the start,
    the search moves on an hour and from then on keeps mktime()'s DST flag. Read from the
    shipped binary, since the fix postdates the source that was at hand.
    """
    c = start.copy()
    tm_usec = start_usec
    keep_dst = False
    start_key = (start.year, start.mon, start.mday, start.hour, start.min, start.sec, start_usec)
    for _ in range(_MAX_CALENDAR_ITERATIONS):
        clock.mktime(c)
        if not keep_dst:
            c.isdst = r.dst

        res, year = _find_matching_component(clock, r.year, c, c.year + 1900)
        c.year = year - 1900
        if res > 0:
            c.mon, c.mday, c.hour, c.min, c.sec, tm_usec = 0, 1, 0, 0, 0, 0
        if res < 0:
            raise _NoElapse
        if _tm_within_bounds(clock, c) <= 0:
            raise _NoElapse

        res, month = _find_matching_component(clock, r.month, c, c.mon + 1)
        c.mon = month - 1
        if res > 0:
            c.mday, c.hour, c.min, c.sec, tm_usec = 1, 0, 0, 0, 0
        if res < 0 or (res := _tm_within_bounds(clock, c)) < 0:
            c.year += 1
            c.mon, c.mday, c.hour, c.min, c.sec, tm_usec = 0, 1, 0, 0, 0, 0
            continue
        if res == 0:
            continue

        res, c.mday = _find_matching_component(clock, r.day, c, c.mday, r.end_of_month)
        if res > 0:
            c.hour, c.min, c.sec, tm_usec = 0, 0, 0, 0
        if res < 0 or (res := _tm_within_bounds(clock, c)) < 0:
            c.mon += 1
            c.mday, c.hour, c.min, c.sec, tm_usec = 1, 0, 0, 0, 0
            continue
        if res == 0:
            continue

        if not _matches_weekday(clock, r.weekdays_bits, c):
            c.mday += 1
            c.hour, c.min, c.sec, tm_usec = 0, 0, 0, 0
            continue

        res, c.hour = _find_matching_component(clock, r.hour, c, c.hour)
        if res > 0:
            c.min, c.sec, tm_usec = 0, 0, 0
        if res < 0 or (res := _tm_within_bounds(clock, c)) < 0:
            c.mday += 1
            c.hour, c.min, c.sec, tm_usec = 0, 0, 0, 0
            continue
        if res == 0:
            continue  # the hour may not exist (DST): start again from the normalized time

        res, c.min = _find_matching_component(clock, r.minute, c, c.min)
        if res > 0:
            c.sec, tm_usec = 0, 0
        if res < 0 or (res := _tm_within_bounds(clock, c)) < 0:
            c.hour += 1
            c.min, c.sec, tm_usec = 0, 0, 0
            continue
        if res == 0:
            continue

        res, value = _find_matching_component(clock, r.microsecond, c, c.sec * _USEC_PER_SEC + tm_usec)
        tm_usec = value % _USEC_PER_SEC
        c.sec = value // _USEC_PER_SEC
        if res < 0 or (res := _tm_within_bounds(clock, c)) < 0:
            c.min += 1
            c.sec, tm_usec = 0, 0
            continue
        if res == 0:
            continue

        if (c.year, c.mon, c.mday, c.hour, c.min, c.sec, tm_usec) < start_key:
            c.hour += 1  # went backwards through a DST change: retry an hour on
            keep_dst = True
            continue

        return c, tm_usec
    raise _NoElapse  # systemd: "Infinite loop in calendar calculation"
