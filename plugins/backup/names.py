"""Names of the snapshots this agent makes: its prefix and the UTC time of the snapshot.

`smbgw-2026.12.02-03.00.00` is what `vfs_shadow_copy2` parses with `shadow:format =
smbgw-%Y.%m.%d-%H.%M.%S` and `shadow:localtime = no`, so Windows shows each snapshot as a
Previous Version at the right time, and it is how the agent tells its own snapshots from
an administrator's (only names of this exact shape are ever pruned).

Names never repeat and never go back in time: a clock stepped backwards (a bad NTP
source, a VM restored from a snapshot) would otherwise give a new snapshot an old name,
or the name of one that exists, and retention would prune the newest data as if it were
old. The next name is therefore one second after the newest existing one when the clock
says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

PREFIX = "smbgw-"
TIME_FORMAT = "%Y.%m.%d-%H.%M.%S"
SHADOW_FORMAT = PREFIX + TIME_FORMAT
_NAME = re.compile(r"smbgw-(\d{4})\.(\d{2})\.(\d{2})-(\d{2})\.(\d{2})\.(\d{2})")


def name_at(when: datetime) -> str:
    return PREFIX + when.astimezone(UTC).strftime(TIME_FORMAT)


def time_of(name: str) -> datetime | None:
    """The UTC time in one of our names; None for any other name (an admin's snapshot)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None  # 2026.02.30: not a time, so not ours


def ours(names: Iterable[str]) -> dict[str, datetime]:
    """Our snapshots among `names`, with their times."""
    found = {}
    for name in names:
        when = time_of(name)
        if when is not None:
            found[name] = when
    return found


def next_name(now: float, existing: Iterable[str]) -> tuple[str, datetime, bool]:
    """The name for a snapshot taken at `now`: (name, its time, True if the clock was
    behind the newest snapshot and the name was moved past it)."""
    when = datetime.fromtimestamp(int(now), UTC)
    newest = max(ours(existing).values(), default=None)
    if newest is not None and when <= newest:
        return name_at(newest + timedelta(seconds=1)), newest + timedelta(seconds=1), True
    return name_at(when), when, False
