"""Which snapshots of a share to keep: restic's `forget --keep-*` rules, as a pure function.

Administrators who already prune restic repositories (or read restic's documentation)
should get the same answer from `keep = { daily = 7, weekly = 4 }` here, so the rules are
restic's, checked against the real restic in the tests:

- `last N` keeps the N newest snapshots;
- `hourly`, `daily`, `weekly`, `monthly`, `yearly N` each walk the snapshots from newest
  to oldest and keep a snapshot whenever its period (the hour, the calendar day, the ISO
  week, the month, the year, all as wall-clock time in one time zone) differs from the
  period of the snapshot that rule kept last, until the rule has kept N;
- every rule counts on its own: a snapshot another rule already keeps still uses up a
  count of this rule (so `last 3, daily 3` with three snapshots today keeps three days,
  not four), and a snapshot is kept if any rule keeps it.

The ISO week is why a week is not a calendar week: 2026-12-31 and 2027-01-01 are the same
week (2026-W53) but different years; 2019-12-30 is in week 2020-W01 but the year 2019.
Buckets are wall-clock time in `tz` (default: the local zone), so in Europe/Berlin the
hour 02:00-03:00 on the night summer time ends is one hour bucket that lasts two hours.

Where this differs from the tools it follows, on purpose:

- restic itself (0.14, Debian 12's, the version this is tested against) reads each
  snapshot's time in the UTC offset recorded when the snapshot was made; here every
  snapshot is placed in the one zone given, so a node that changed its zone does not get
  two overlapping calendars. With one zone throughout, both agree.
- restic from 0.16 on also keeps the oldest snapshot when a rule still has counts left
  after walking all of them (shown as "oldest daily snapshot" from 0.18). We keep the
  0.14 rule: a rule keeps one snapshot per period and nothing else.
- an empty policy: restic keeps everything ("policy is empty"); by the rules above it
  would keep nothing. `parse_keep` refuses it and `decide` raises rather than pick either.
- ties in time (restic orders them by whatever order it read them in) are broken by name,
  descending, so the same input always gives the same answer.

Proxmox Backup Server's prune (pbs-datastore/src/prune.rs, `compute_prune_info`) uses the
same rule names but does not count the rules independently: it applies them in the order
last, hourly, daily, weekly, monthly, yearly, and a later rule skips every period already
covered by a snapshot an earlier rule kept, without using up a count for it; a snapshot
that an earlier rule passed over within its own period is marked for removal and later
rules do not consider it either. So PBS, with `keep-last 3, keep-daily 3` and three
snapshots today, keeps today plus three earlier days, where restic (and this agent) keeps
three days in all. PBS always uses the server's local zone.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from types import MappingProxyType

from smbgw_agent.model.fields import FieldProblems, Table, typename

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
# Generous for any schedule (a million hourly snapshots is over a century), small enough
# that a typo with extra digits is caught.
MAX_COUNT = 1_000_000


@dataclass(frozen=True)
class KeepPolicy:
    """How many periods of each kind to keep; 0 turns a rule off."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def as_dict(self) -> dict[str, int]:
        return {rule: count for rule in RULES if (count := getattr(self, rule))}

    def describe(self) -> str:
        """For logs and `smbgwctl`, e.g. "last 3, hourly 24, daily 14"."""
        return ", ".join(f"{rule} {count}" for rule, count in self.as_dict().items()) or "nothing"


def parse_keep(data: object, path: tuple[str, ...] = ()) -> KeepPolicy:
    """Read `keep = { ... }`; every problem names its key below `path` (e.g. `backup.keep`).

    An empty policy is refused here, where the administrator can still fix the file: a
    policy that keeps nothing would delete every snapshot the agent made on its next run.
    """
    if not isinstance(data, Mapping):
        raise FieldProblems([(f"must be a table, e.g. {{ daily = 7, weekly = 4 }}, not {typename(data)}",
                              ".".join(path) or None, False)])
    table = Table(data, path)
    counts = {rule: table.integer(rule, default=0, minimum=0, maximum=MAX_COUNT) for rule in RULES}
    table.done()  # below the top level, done() records but leaves raising to the caller
    if not table.problems and not any(counts.values()):
        table.report(None, "keeps no snapshot, which would delete every snapshot the agent made; "
                           f"set at least one of {', '.join(RULES)} (e.g. {{ daily = 7 }})")
    if table.problems:
        raise FieldProblems(table.problems)
    return KeepPolicy(**counts)


@dataclass(frozen=True)
class Decision:
    """The outcome of `decide`, newest first, with each kept snapshot's rules for the log."""

    keep: tuple[str, ...]
    remove: tuple[str, ...]
    reasons: Mapping[str, tuple[str, ...]]


def _period(rule: str, index: int, wall: datetime) -> Hashable:
    """The bucket of one rule; `last` gives every snapshot its own, so it keeps the N newest."""
    if rule == "hourly":
        return wall.year, wall.month, wall.day, wall.hour
    if rule == "daily":
        return wall.year, wall.month, wall.day
    if rule == "weekly":
        year, week, _ = wall.isocalendar()
        return year, week
    if rule == "monthly":
        return wall.year, wall.month
    if rule == "yearly":
        return wall.year
    return index


def decide(snapshots: Iterable[tuple[str, datetime]], policy: KeepPolicy,
           tz: tzinfo | None = None) -> Decision:
    """Apply `policy` to (name, aware time) pairs; `tz` is the zone whose calendar counts."""
    counts = policy.as_dict()
    if not counts:
        raise ValueError("an empty keep policy would remove every snapshot; refusing")
    seen: set[str] = set()
    ordered: list[tuple[str, datetime]] = []
    for name, when in snapshots:
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"snapshot {name!r}: time {when.isoformat()} has no time zone")
        if name in seen:
            raise ValueError(f"snapshot {name!r} is listed twice")
        seen.add(name)
        ordered.append((name, when))
    ordered.sort(key=lambda item: (item[1], item[0]), reverse=True)

    left = dict(counts)
    last_kept: dict[str, Hashable] = {}
    keep: list[str] = []
    remove: list[str] = []
    reasons: dict[str, tuple[str, ...]] = {}
    for index, (name, when) in enumerate(ordered):
        wall = when.astimezone(tz)
        matched: list[str] = []
        for rule in counts:  # RULES order, as restic lists its reasons
            if not left[rule]:
                continue
            bucket = _period(rule, index, wall)
            if rule not in last_kept or bucket != last_kept[rule]:
                last_kept[rule] = bucket
                left[rule] -= 1
                matched.append(rule)
        if matched:
            keep.append(name)
            reasons[name] = tuple(matched)
        else:
            remove.append(name)
    return Decision(tuple(keep), tuple(remove), MappingProxyType(reasons))
