"""The snapshot retention policy: its `keep = {...}` table, hand-worked cases, and the real
restic (`restic forget --dry-run --json`) as the oracle for which snapshots a policy keeps.

The oracle runs restic (with TZ=UTC, as decide is given UTC) in a throw-away repository
with 40 backups at chosen times. Every restic call pays for its password's key derivation
(about 0.5 s of CPU), so the backups are spread over a few repositories and gathered with
`restic copy`, the `forget --dry-run` calls run a few at a time, and each distinct policy
asks restic once.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smbgw_plugins.backup.retention import MAX_COUNT, RULES, Decision, KeepPolicy, decide, parse_keep

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import FieldProblems, Table

BERLIN = ZoneInfo("Europe/Berlin")


def snaps(*stamps: str) -> list[tuple[str, datetime]]:
    """Snapshots named by their time; a stamp without an offset is UTC."""
    result = []
    for stamp in stamps:
        when = datetime.fromisoformat(stamp)
        result.append((stamp, when if when.tzinfo else when.replace(tzinfo=UTC)))
    return result


def problems_of(exc: FieldProblems) -> list[tuple[str | None, str]]:
    return [(key, message) for message, key, _ in exc.problems]


# --- parse_keep ---------------------------------------------------------------------------

def test_a_good_table_parses_and_describes_itself() -> None:
    policy = parse_keep({"last": 3, "hourly": 24, "daily": 14})
    assert policy == KeepPolicy(last=3, hourly=24, daily=14)
    assert policy.as_dict() == {"last": 3, "hourly": 24, "daily": 14}
    assert list(policy.as_dict()) == ["last", "hourly", "daily"]
    assert policy.describe() == "last 3, hourly 24, daily 14"
    every = parse_keep(dict(zip(RULES, range(1, 7), strict=True)))
    assert every == KeepPolicy(1, 2, 3, 4, 5, 6)
    assert every.describe() == "last 1, hourly 2, daily 3, weekly 4, monthly 5, yearly 6"
    assert parse_keep({"yearly": MAX_COUNT, "daily": 0}) == KeepPolicy(yearly=MAX_COUNT)


def test_the_rules_are_in_restic_order_and_the_dataclass_follows_them() -> None:
    assert RULES == ("last", "hourly", "daily", "weekly", "monthly", "yearly")
    assert KeepPolicy(1, 2, 3, 4, 5, 6).as_dict() == dict(zip(RULES, range(1, 7), strict=True))
    assert KeepPolicy().as_dict() == {} and KeepPolicy().describe() == "nothing"


@pytest.mark.parametrize(("data", "expected"), [
    ({"dialy": 7}, [("dialy", "unknown key (known: daily, hourly, last, monthly, weekly, yearly)")]),
    ({"daily": -1}, [("daily", "must be at least 0, not -1")]),
    ({"daily": 7.0}, [("daily", "must be an integer, not a number")]),
    ({"daily": "7"}, [("daily", "must be an integer, not a string")]),
    ({"daily": True}, [("daily", "must be an integer, not a boolean")]),
    ({"weekly": False}, [("weekly", "must be an integer, not a boolean")]),
    ({"daily": [7]}, [("daily", "must be an integer, not a list")]),
    ({"monthly": MAX_COUNT + 1}, [("monthly", f"must be at most {MAX_COUNT}, not {MAX_COUNT + 1}")]),
    ({"hourly": 10**30}, [("hourly", f"must be at most {MAX_COUNT}, not {10**30}")]),
    # every problem at once, none hiding the next; a valid rule next to them does not help
    ({"daily": -1, "weekly": True, "last": 2, "keep_daily": 3}, [
        ("daily", "must be at least 0, not -1"), ("weekly", "must be an integer, not a boolean"),
        ("keep_daily", "unknown key (known: daily, hourly, last, monthly, weekly, yearly)"),
    ]),
], ids=["unknown", "negative", "float", "string", "true", "false", "list", "too-large", "absurd", "several"])
def test_each_bad_value_is_reported_with_its_key(data: dict[str, object],
                                                 expected: list[tuple[str, str]]) -> None:
    with pytest.raises(FieldProblems) as caught:
        parse_keep(data)
    assert problems_of(caught.value) == expected


@pytest.mark.parametrize("data", ["7", 7, True, ["daily", 7], None])
def test_a_value_that_is_not_a_table_is_refused(data: object) -> None:
    with pytest.raises(FieldProblems) as caught:
        parse_keep(data)
    [(key, message)] = problems_of(caught.value)
    assert key is None
    assert message.startswith("must be a table, e.g. { daily = 7, weekly = 4 }, not ")


@pytest.mark.parametrize("data", [{}, {"daily": 0}, dict.fromkeys(RULES, 0)])
def test_a_policy_that_keeps_nothing_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(FieldProblems) as caught:
        parse_keep(data)
    [(key, message)] = problems_of(caught.value)
    assert key is None
    assert "would delete every snapshot the agent made" in message
    assert "last, hourly, daily, weekly, monthly, yearly" in message


def test_problems_are_named_below_the_path_the_caller_gives() -> None:
    where = ("backup", "keep")
    with pytest.raises(FieldProblems) as caught:
        parse_keep({"dialy": 7, "weekly": -2}, path=where)
    assert [key for key, _ in problems_of(caught.value)] == ["backup.keep.weekly", "backup.keep.dialy"]
    with pytest.raises(FieldProblems) as caught:
        parse_keep({}, path=where)
    assert [key for key, _ in problems_of(caught.value)] == ["backup.keep"]
    with pytest.raises(FieldProblems) as caught:
        parse_keep("daily", path=where)
    assert [key for key, _ in problems_of(caught.value)] == ["backup.keep"]
    assert caught.value.key == "backup.keep"
    assert str(caught.value).startswith("backup.keep: must be a table")


def test_a_caller_reading_its_own_table_gets_the_keep_problems_nested() -> None:
    """The other way to nest: the caller's Table reads `keep` with parse_keep as the parser."""
    backup = Table({"keep": {"dialy": 7}}, ("backup",))
    assert backup.value("keep", parse_keep, KeepPolicy(daily=7)) == KeepPolicy(daily=7)
    assert [key for _, key, _ in backup.problems] == ["backup.keep.dialy"]
    backup = Table({"keep": {}})
    backup.value("keep", parse_keep, None)
    assert [key for _, key, _ in backup.problems] == ["keep"]
    assert isinstance(FieldProblems([]), FieldError)


# --- decide, by hand ------------------------------------------------------------------------

def test_last_keeps_the_newest_whatever_the_input_order() -> None:
    listed = snaps("2026-05-01T10:00", "2026-05-03T10:00", "2026-05-02T10:00", "2026-05-04T10:00",
                   "2026-05-02T09:00")
    random.Random(7).shuffle(listed)
    result = decide(listed, KeepPolicy(last=2), UTC)
    assert result.keep == ("2026-05-04T10:00", "2026-05-03T10:00")
    assert result.remove == ("2026-05-02T10:00", "2026-05-02T09:00", "2026-05-01T10:00")
    assert dict(result.reasons) == {"2026-05-04T10:00": ("last",), "2026-05-03T10:00": ("last",)}


def test_a_period_keeps_its_newest_snapshot_and_empty_periods_cost_nothing() -> None:
    listed = snaps("2026-01-31T23:00", "2026-01-05T01:00", "2026-03-02T00:00", "2026-03-01T08:00",
                   "2026-07-15T12:00", "2025-12-31T23:59:59")
    result = decide(listed, KeepPolicy(monthly=3), UTC)
    # seven months from March to July hold three snapshots' months: July, March, January
    assert result.keep == ("2026-07-15T12:00", "2026-03-02T00:00", "2026-01-31T23:00")
    assert result.remove == ("2026-03-01T08:00", "2026-01-05T01:00", "2025-12-31T23:59:59")


def test_ties_in_time_are_ordered_by_name_descending() -> None:
    same = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    listed = [("snap-a", same), ("snap-c", same), ("snap-b", same), ("older", same - timedelta(hours=1))]
    result = decide(listed, KeepPolicy(last=1), UTC)
    assert result == decide(list(reversed(listed)), KeepPolicy(last=1), UTC)
    assert result.keep == ("snap-c",) and result.remove == ("snap-b", "snap-a", "older")
    hourly = decide(listed, KeepPolicy(hourly=2), UTC)
    assert hourly.keep == ("snap-c", "older") and hourly.remove == ("snap-b", "snap-a")
    # the same instant written in two offsets is a tie too
    berlin = same.astimezone(BERLIN)
    assert decide([("x", berlin), ("y", same)], KeepPolicy(last=1)).keep == ("y",)


def test_a_snapshot_kept_by_two_rules_names_both_and_uses_up_both() -> None:
    listed = snaps("2026-05-04T10:00", "2026-05-04T09:00", "2026-05-03T10:00", "2026-05-02T10:00",
                   "2026-05-01T10:00")
    result = decide(listed, KeepPolicy(last=1, daily=2), UTC)
    assert result.keep == ("2026-05-04T10:00", "2026-05-03T10:00")
    assert dict(result.reasons) == {"2026-05-04T10:00": ("last", "daily"), "2026-05-03T10:00": ("daily",)}


def test_rules_count_on_their_own_unlike_proxmox_backup_server() -> None:
    """`last 3, daily 3` with three snapshots today: restic (and we) keep three days in all;
    PBS would skip today for `daily` (already covered) and keep today plus three more days."""
    listed = snaps("2026-05-04T12:00", "2026-05-04T11:00", "2026-05-04T10:00", "2026-05-03T10:00",
                   "2026-05-02T10:00", "2026-05-01T10:00")
    result = decide(listed, KeepPolicy(last=3, daily=3), UTC)
    assert result.keep == ("2026-05-04T12:00", "2026-05-04T11:00", "2026-05-04T10:00", "2026-05-03T10:00",
                           "2026-05-02T10:00")
    assert result.remove == ("2026-05-01T10:00",)
    assert result.reasons["2026-05-04T12:00"] == ("last", "daily")
    assert result.reasons["2026-05-04T10:00"] == ("last",)
    assert result.reasons["2026-05-02T10:00"] == ("daily",)


def test_counts_larger_than_the_history_keep_every_period() -> None:
    listed = snaps("2026-05-04T12:00", "2026-05-04T11:00", "2026-05-03T10:00")
    assert decide(listed, KeepPolicy(daily=MAX_COUNT), UTC).keep == ("2026-05-04T12:00", "2026-05-03T10:00")
    assert decide(listed, KeepPolicy(last=MAX_COUNT), UTC).remove == ()


def test_the_hour_summer_time_ends_is_one_bucket_in_berlin() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET, so 02:xx happens twice in Berlin
    listed = snaps("2026-10-25T00:10+00:00",   # 02:10 CEST
                   "2026-10-25T00:50+00:00",   # 02:50 CEST
                   "2026-10-25T01:10+00:00",   # 02:10 CET
                   "2026-10-25T01:50+00:00",   # 02:50 CET
                   "2026-10-25T02:10+00:00")   # 03:10 CET
    berlin = decide(listed, KeepPolicy(hourly=10), BERLIN)
    assert berlin.keep == ("2026-10-25T02:10+00:00", "2026-10-25T01:50+00:00")
    assert berlin.remove == ("2026-10-25T01:10+00:00", "2026-10-25T00:50+00:00", "2026-10-25T00:10+00:00")
    utc = decide(listed, KeepPolicy(hourly=10), UTC)
    assert utc.keep == ("2026-10-25T02:10+00:00", "2026-10-25T01:50+00:00", "2026-10-25T00:50+00:00")
    # the time's own offset does not matter, only the zone decide is given
    shifted = [(name, when.astimezone(timezone(timedelta(hours=-7)))) for name, when in listed]
    assert decide(shifted, KeepPolicy(hourly=10), BERLIN) == berlin


def test_days_follow_the_berlin_calendar_across_the_start_of_summer_time() -> None:
    # 2026-03-29: 02:00 CET becomes 03:00 CEST
    listed = snaps("2026-03-29T01:30+00:00",   # 03:30 CEST, 29 March
                   "2026-03-29T00:30+00:00",   # 01:30 CET, 29 March
                   "2026-03-28T23:30+00:00",   # 00:30 CET, 29 March in Berlin, 28 March in UTC
                   "2026-03-28T22:30+00:00")   # 23:30 CET, 28 March
    berlin = decide(listed, KeepPolicy(daily=5, hourly=5), BERLIN)
    assert berlin.keep == tuple(name for name, _ in listed)  # four distinct hours: 03, 01, 00, 23
    assert [berlin.reasons[name] for name, _ in listed] == [
        ("hourly", "daily"), ("hourly",), ("hourly",), ("hourly", "daily")]
    assert decide(listed, KeepPolicy(daily=5), BERLIN).keep == ("2026-03-29T01:30+00:00", "2026-03-28T22:30+00:00")
    assert decide(listed, KeepPolicy(daily=5), UTC).keep == ("2026-03-29T01:30+00:00", "2026-03-28T23:30+00:00")
    # in summer Berlin is two hours ahead of UTC
    summer = snaps("2026-07-01T22:30+00:00", "2026-07-01T21:30+00:00")
    assert decide(summer, KeepPolicy(daily=5), BERLIN).keep == ("2026-07-01T22:30+00:00", "2026-07-01T21:30+00:00")
    assert decide(summer, KeepPolicy(daily=5), UTC).keep == ("2026-07-01T22:30+00:00",)


def test_iso_weeks_cross_the_year_boundary() -> None:
    listed = snaps("2027-01-04T12:00",   # Monday, 2027-W01
                   "2027-01-01T12:00",   # Friday, 2026-W53, the year 2027
                   "2026-12-31T12:00",   # Thursday, 2026-W53, the year 2026
                   "2026-12-27T12:00")   # Sunday, 2026-W52
    weekly = decide(listed, KeepPolicy(weekly=10), UTC)
    assert weekly.keep == ("2027-01-04T12:00", "2027-01-01T12:00", "2026-12-27T12:00")
    assert weekly.remove == ("2026-12-31T12:00",)
    assert decide(listed, KeepPolicy(yearly=10), UTC).keep == ("2027-01-04T12:00", "2026-12-31T12:00")
    assert decide(listed, KeepPolicy(monthly=10), UTC).keep == ("2027-01-04T12:00", "2026-12-31T12:00")
    # the other way round: 2019-12-30 is in the year 2019 but in week 2020-W01
    early = snaps("2020-01-05T12:00", "2019-12-30T12:00", "2019-12-29T12:00")
    assert decide(early, KeepPolicy(weekly=10), UTC).keep == ("2020-01-05T12:00", "2019-12-29T12:00")
    assert decide(early, KeepPolicy(yearly=10), UTC).keep == ("2020-01-05T12:00", "2019-12-30T12:00")


@pytest.fixture
def berlin_is_local() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_without_a_zone_the_local_calendar_counts(berlin_is_local: None) -> None:
    listed = snaps("2026-03-29T01:30+00:00", "2026-03-28T23:30+00:00", "2026-03-28T22:30+00:00")
    local = decide(listed, KeepPolicy(daily=5))
    assert local == decide(listed, KeepPolicy(daily=5), BERLIN)
    assert local.keep == ("2026-03-29T01:30+00:00", "2026-03-28T22:30+00:00")


def test_nothing_in_nothing_out_and_the_reasons_are_read_only() -> None:
    assert decide([], KeepPolicy(last=1)) == Decision((), (), {})
    result = decide(snaps("2026-05-04T12:00"), KeepPolicy(yearly=1), UTC)
    with pytest.raises(TypeError):
        cast(Any, result.reasons)["2026-05-04T12:00"] = ()


@pytest.mark.parametrize(("listed", "policy", "message"), [
    ([("a", datetime(2026, 5, 1, 10, 0))], KeepPolicy(last=1), "'a': time 2026-05-01T10:00:00 has no time zone"),
    (snaps("2026-05-01T10:00") * 2, KeepPolicy(last=1), "'2026-05-01T10:00' is listed twice"),
    (snaps("2026-05-01T10:00"), KeepPolicy(), "an empty keep policy would remove every snapshot"),
], ids=["naive", "twice", "empty"])
def test_what_decide_refuses(listed: list[tuple[str, datetime]], policy: KeepPolicy, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        decide(listed, policy, UTC)


# --- decide, by property ----------------------------------------------------------------------

# a rule is off half the time, so sparse policies (where rules share fewer snapshots) are common
COUNTS = st.just(0) | st.integers(min_value=1, max_value=5)
POLICIES = st.builds(KeepPolicy, *[COUNTS] * len(RULES)).filter(lambda policy: bool(policy.as_dict()))
TIMES = st.lists(
    st.datetimes(min_value=datetime(2019, 12, 1), max_value=datetime(2022, 2, 1), timezones=st.just(UTC)),
    max_size=40)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(times=TIMES, policy=POLICIES)
def test_a_policy_is_the_union_of_its_rules(times: list[datetime], policy: KeepPolicy) -> None:
    """Each rule counts on its own: a policy keeps exactly what its single rules keep."""
    listed = [(f"s{index:02}", when) for index, when in enumerate(times)]
    result = decide(listed, policy, BERLIN)
    assert sorted(result.keep + result.remove) == sorted(name for name, _ in listed)
    order = {name: (when, name) for name, when in listed}
    assert [order[name] for name in result.keep] == sorted((order[n] for n in result.keep), reverse=True)
    assert [order[name] for name in result.remove] == sorted((order[n] for n in result.remove), reverse=True)
    assert set(result.reasons) == set(result.keep)
    for rule, count in policy.as_dict().items():
        alone = decide(listed, KeepPolicy(**{rule: count}), BERLIN)
        assert len(alone.keep) <= count
        assert set(alone.keep) == {name for name, rules in result.reasons.items() if rule in rules}


# --- restic as the oracle ---------------------------------------------------------------------

# Irregular times over two years: hours apart, days apart, twice in one hour, and both kinds
# of ISO year boundary (a week of the new year starting in December, a week 53 running into
# January). All distinct: restic orders equal times by the order it happened to read them.
BACKUP_TIMES = (
    "2019-12-28 09:00:00",  # Saturday, 2019-W52
    "2019-12-30 09:00:00",  # Monday: week 2020-W01, year 2019
    "2019-12-31 23:30:00",
    "2020-01-01 00:15:00",
    "2020-01-01 00:45:00",  # the same hour as the one before
    "2020-01-05 12:00:00",  # Sunday, 2020-W01
    "2020-01-06 12:00:00",  # Monday, 2020-W02
    "2020-02-29 08:00:00",
    "2020-03-01 08:00:00",
    "2020-03-01 08:59:59",
    "2020-04-17 17:17:17",
    "2020-06-10 01:00:00",
    "2020-06-10 03:00:00",
    "2020-06-10 03:40:00",
    "2020-06-10 07:00:00",
    "2020-06-10 23:59:59",
    "2020-06-11 00:00:00",
    "2020-08-31 23:00:00",
    "2020-09-01 01:00:00",
    "2020-11-15 10:00:00",
    "2020-12-27 10:00:00",  # Sunday, 2020-W52
    "2020-12-28 10:00:00",  # Monday, 2020-W53
    "2020-12-31 10:00:00",
    "2021-01-01 10:00:00",  # week 2020-W53, year 2021
    "2021-01-03 22:00:00",  # Sunday, 2020-W53
    "2021-01-04 06:00:00",  # Monday, 2021-W01
    "2021-02-14 14:00:00",
    "2021-03-31 23:59:00",
    "2021-04-01 00:01:00",
    "2021-05-20 12:00:00",
    "2021-05-20 12:30:00",
    "2021-05-21 12:00:00",
    "2021-05-22 12:00:00",
    "2021-07-04 04:00:00",
    "2021-09-15 15:00:00",
    "2021-10-31 01:30:00",
    "2021-12-24 18:00:00",
    "2021-12-31 23:00:00",  # Friday, 2021-W52
    "2022-01-01 01:00:00",  # Saturday, 2021-W52, year 2022
    "2022-01-03 09:00:00",  # Monday, 2022-W01
)
SNAPSHOTS = [(stamp, datetime.fromisoformat(stamp).replace(tzinfo=UTC)) for stamp in BACKUP_TIMES]
CORES = os.cpu_count() or 2
REPOSITORIES = min(CORES + 1, 4)  # a restic backup is idle for about a third of its run
FLAGS = {rule: f"--keep-{rule}" for rule in RULES}
REASON = re.compile(r"(?:oldest )?(last|hourly|daily|weekly|monthly|yearly) snapshot")


@dataclass(frozen=True)
class Verdict:
    """What restic (or decide, in restic's terms) says: times kept, removed, and why."""

    keep: tuple[datetime, ...]
    remove: tuple[datetime, ...]
    reasons: dict[datetime, tuple[str, ...]]


@dataclass
class Restic:
    binary: str
    env: dict[str, str]
    version: tuple[int, ...]
    answers: dict[KeepPolicy, tuple[dict[str, Any], Verdict]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, *args: str, repository: Path | None = None) -> str:
        env = self.env if repository is None else {**self.env, "RESTIC_REPOSITORY": str(repository)}
        done = subprocess.run([self.binary, "--no-cache", *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode:
            raise AssertionError(f"restic {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def forget_json(self, policy: KeepPolicy) -> dict[str, Any]:
        """restic's one group for `policy`; `--no-lock` (with `--dry-run`) lets several run at once."""
        self.forget(policy)
        return self.answers[policy][0]

    def forget(self, policy: KeepPolicy) -> Verdict:
        with self.lock:
            if policy in self.answers:
                return self.answers[policy][1]
        flags = [text for rule, count in policy.as_dict().items() for text in (FLAGS[rule], str(count))]
        groups = json.loads(self.run("--no-lock", "--json", "forget", "--dry-run", *flags))
        assert len(groups) == 1 and groups[0]["host"] == "smbgw-test", groups
        [group] = groups

        def times(items: Sequence[dict[str, Any]] | None) -> tuple[datetime, ...]:
            return tuple(datetime.fromisoformat(item["time"]) for item in items or ())

        reasons = {}
        for reason in group["reasons"]:
            rules = []
            for match in reason["matches"]:
                parsed = REASON.fullmatch(match)
                assert parsed, f"restic gave a reason this test does not know: {match!r}"
                rules.append(parsed.group(1))
            reasons[datetime.fromisoformat(reason["snapshot"]["time"])] = tuple(rules)
        verdict = Verdict(times(group["keep"]), times(group["remove"]), reasons)
        with self.lock:
            self.answers[policy] = (group, verdict)
        return verdict

    def forget_all(self, policies: Sequence[KeepPolicy]) -> list[Verdict]:
        with ThreadPoolExecutor(max_workers=CORES) as pool:
            return list(pool.map(self.forget, policies))


def expected_from(policy: KeepPolicy, version: tuple[int, ...]) -> Verdict:
    """decide's answer in restic's terms.

    restic 0.16 and later also keep the oldest snapshot for every rule that has counts
    left when it gets there (restic commit 182b979, "oldest ..." reasons from 0.18); our
    policy keeps 0.14's rule, so for those versions the difference is added here. Derived
    from restic's source: the Debian 12 machine these tests were written on has 0.14.
    """
    result = decide(SNAPSHOTS, policy, UTC)
    when = dict(SNAPSHOTS)
    reasons = {when[name]: rules for name, rules in result.reasons.items()}
    if version >= (0, 16):
        oldest = min(when.values())
        left = tuple(rule for rule, count in policy.as_dict().items()
                     if sum(rule in rules for at, rules in reasons.items() if at != oldest) < count)
        if left:
            reasons[oldest] = left
    keep = tuple(sorted(reasons, reverse=True))
    return Verdict(keep, tuple(sorted(set(when.values()) - set(keep), reverse=True)), reasons)


TABLE_POLICIES = [
    KeepPolicy(last=1), KeepPolicy(last=7), KeepPolicy(last=100),
    KeepPolicy(hourly=5), KeepPolicy(hourly=1000),
    KeepPolicy(daily=1), KeepPolicy(daily=12),
    KeepPolicy(weekly=6),
    KeepPolicy(monthly=4), KeepPolicy(monthly=MAX_COUNT),
    KeepPolicy(yearly=10),
    KeepPolicy(1, 1, 1, 1, 1, 1),
    KeepPolicy(last=3, daily=3),
    KeepPolicy(last=2, daily=3, weekly=2, monthly=3, yearly=5),
    KeepPolicy(hourly=4, daily=4, weekly=4),
]


@pytest.fixture(scope="module")
def restic(tmp_path_factory: pytest.TempPathFactory) -> Restic:
    """One repository holding a snapshot at each of BACKUP_TIMES, and restic's answers for
    TABLE_POLICIES.

    restic 0.14 cannot run backups into one repository at once (one may list another's lock
    file just before it is removed, then retry for up to a minute), so each worker backs up
    into a repository of its own, one backup after the other, and `restic copy` gathers
    the snapshots (with their times, host and paths) into the first.
    """
    binary = shutil.which("restic")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("restic is not installed; the retention oracle needs it under CI (apt install restic)")
        pytest.skip("restic is not installed (apt install restic)")
    base = tmp_path_factory.mktemp("restic")
    password = base / "password"
    descriptor = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write("retention-oracle\n")
    repositories = [base / f"repo{index}" for index in range(REPOSITORIES)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), "TZ": "UTC",
           "RESTIC_REPOSITORY": str(repositories[0]), "RESTIC_PASSWORD_FILE": str(password)}
    version_text = subprocess.run([binary, "version"], env=env, capture_output=True, text=True,
                                  check=True, timeout=30).stdout
    found = re.match(r"restic (\d+)\.(\d+)\.(\d+)", version_text)
    assert found, version_text
    oracle = Restic(binary, env, tuple(int(part) for part in found.groups()))
    share = base / "share"
    share.mkdir()
    (share / "report.txt").write_text("quarterly numbers\n")

    def fill(index: int) -> None:
        oracle.run("init", repository=repositories[index])
        for stamp in BACKUP_TIMES[index::REPOSITORIES]:
            oracle.run("-q", "backup", "--time", stamp, "--host", "smbgw-test", str(share),
                       repository=repositories[index])

    with ThreadPoolExecutor(max_workers=REPOSITORIES) as pool:
        list(pool.map(fill, range(REPOSITORIES)))
    for other in repositories[1:]:
        oracle.run("-q", "copy", "--from-repo", str(other), "--from-password-file", str(password))
    oracle.forget_all(TABLE_POLICIES)  # all at once, in parallel; the tests below read the answers
    return oracle


def test_the_repository_holds_every_backup_once(restic: Restic) -> None:
    everything = restic.forget(KeepPolicy(last=100))
    assert everything.keep == tuple(sorted((when for _, when in SNAPSHOTS), reverse=True))
    assert everything.remove == ()


def test_restic_json_is_a_list_of_groups_with_keep_remove_and_reasons(restic: Restic) -> None:
    """What the oracle parses, pinned so a change in restic's output shows up here first."""
    group = restic.forget_json(KeepPolicy(last=3, daily=3))
    assert set(group) == {"tags", "host", "paths", "keep", "remove", "reasons"}
    assert group["host"] == "smbgw-test" and group["tags"] is None and len(group["paths"]) == 1
    assert [item["time"] for item in group["keep"]] == [
        "2022-01-03T09:00:00Z", "2022-01-01T01:00:00Z", "2021-12-31T23:00:00Z"]
    assert {"time", "tree", "paths", "hostname", "username", "id", "short_id"} <= set(group["keep"][0])
    assert len(group["remove"]) == len(BACKUP_TIMES) - 3
    assert [(r["snapshot"]["time"], r["matches"]) for r in group["reasons"]] == [
        ("2022-01-03T09:00:00Z", ["last snapshot", "daily snapshot"]),
        ("2022-01-01T01:00:00Z", ["last snapshot", "daily snapshot"]),
        ("2021-12-31T23:00:00Z", ["last snapshot", "daily snapshot"]),
    ]
    if "counters" in group["reasons"][0]:  # restic 0.14 (Debian 12); trixie's 0.18 leaves it out
        assert group["reasons"][0]["counters"] == {"last": 2, "daily": 2}  # counts left, zero omitted
        assert group["reasons"][2]["counters"] == {}


@pytest.mark.parametrize("policy", TABLE_POLICIES, ids=[p.describe().replace(", ", "+") for p in TABLE_POLICIES])
def test_decide_agrees_with_restic(restic: Restic, policy: KeepPolicy) -> None:
    assert expected_from(policy, restic.version) == restic.forget(policy)


BATCH = 4  # policies per example, asked of restic in parallel


@settings(max_examples=12, deadline=None, derandomize=True)
@given(batch=st.lists(POLICIES, min_size=BATCH, max_size=BATCH))
def test_random_policies_agree_with_restic(restic: Restic, batch: list[KeepPolicy]) -> None:
    for policy, verdict in zip(batch, restic.forget_all(batch), strict=True):
        assert expected_from(policy, restic.version) == verdict, policy.describe()
