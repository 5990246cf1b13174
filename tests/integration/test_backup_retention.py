"""Retention with a controlled clock: ~20 snapshots taken by the agent at chosen times
(a test stand-in moves its wall clock, tests/support/clock) are pruned to exactly what `restic forget` keeps with
the same policy; `smbgwctl plan` lists a prune before it happens; a clock stepped back
gives no old or repeated name and prunes nothing new."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import Sandbox, free_port
from tests.support.agent import wait_for
from tests.support.procs import RestartableAgent, wait_served
from tests.support.storage import btrfs_image

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CLOCK = REPO / "tests/support/clock"
NAME = re.compile(r"smbgw-(\d{4})\.(\d\d)\.(\d\d)-(\d\d)\.(\d\d)\.(\d\d)")
POLICY = {"last": 2, "daily": 4, "weekly": 3, "monthly": 2}
# Irregular times over five months: the same hour twice, the same day several times,
# whole weeks and months without any.
TIMES = ["2026-01-02 09:00", "2026-01-02 09:40", "2026-01-02 18:00", "2026-01-03 08:00", "2026-01-09 12:00",
         "2026-01-20 07:00", "2026-01-31 23:00", "2026-02-01 00:30", "2026-02-14 10:00", "2026-03-01 06:00",
         "2026-03-02 06:00", "2026-03-03 06:00", "2026-03-03 22:00", "2026-04-10 13:00", "2026-04-11 13:00",
         "2026-04-11 13:20", "2026-05-04 08:00", "2026-05-05 08:00", "2026-05-06 08:00", "2026-05-06 09:00"]


def when_of(name: str) -> datetime:
    match = NAME.fullmatch(name)
    assert match, name
    return datetime(*(int(g) for g in match.groups()), tzinfo=UTC)  # type: ignore[misc]


def set_clock(file: Path, moment: str) -> None:
    """Move the agent's wall clock to `moment` (UTC)."""
    wanted = datetime.strptime(moment, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()
    file.write_text(f"{wanted - time.time():.3f}\n")


def newest_seen(status: dict[str, Any]) -> str | None:
    """The newest snapshot of `finance` the agent listed in its last pass."""
    share = ((status.get("plugins") or {}).get("backup") or {}).get("shares", {}).get("finance") or {}
    return share.get("newest")


def ours(data: Path) -> list[str]:
    return sorted(n for n in os.listdir(data / ".snapshots") if NAME.fullmatch(n))


def restic_keeps(times: list[datetime], tmp: Path) -> set[datetime]:
    """What `restic forget --keep-...` keeps of backups made at `times` (the oracle)."""
    tmp.mkdir(parents=True, exist_ok=True)
    password = tmp / "password"
    password.write_text("oracle\n")
    password.chmod(0o600)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "TZ": "UTC", "RESTIC_REPOSITORY": str(tmp / "repo"),
           "RESTIC_PASSWORD_FILE": str(password)}
    source = tmp / "source"
    source.mkdir()
    (source / "f").write_text("x")

    def restic(*args: str) -> str:
        return subprocess.run(["restic", "--no-cache", *args], env=env, capture_output=True, text=True, check=True,
                              timeout=120).stdout

    restic("init")
    for moment in times:
        restic("backup", "--quiet", "--host", "oracle", "--time", moment.strftime("%Y-%m-%d %H:%M:%S"), str(source))
    rules = [arg for rule, count in POLICY.items() for arg in (f"--keep-{rule}", str(count))]
    groups = json.loads(restic("forget", "--dry-run", "--json", *rules))
    return {datetime.fromisoformat(s["time"].replace("Z", "+00:00")).astimezone(UTC).replace(microsecond=0)
            for group in groups for s in group["keep"]}


def test_retention_over_twenty_snapshots_is_restics_and_a_clock_step_back_prunes_nothing_new(
    sandbox: Sandbox, restartable: RestartableAgent, tmp_path: Path
) -> None:
    box = sandbox
    clock = box.root / "clock-offset"
    set_clock(clock, "2026-01-01 12:00")
    (box.root / "etc/smbgw/agent.toml").write_text(
        f'[agent]\nnode = "sandbox"\nallowed_roots = ["/srv"]\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    keep = ", ".join(f"{rule} = {count}" for rule, count in POLICY.items())
    with btrfs_image(box.root / "srv/smb/pool", quotas=False) as pool:
        data = pool / "finance"
        subprocess.run(["btrfs", "subvolume", "create", str(data)], check=True, capture_output=True)
        restartable.env = {"PYTHONPATH": f"{CLOCK}:{REPO}", "SMBGW_TEST_CLOCK_FILE": str(clock), "TZ": "UTC"}
        restartable.start(wait=False)  # its wall clock is months back: status.json looks old
        restartable.wait_status(lambda s: s.get("pass") is not None)
        # A schedule that never comes due in these months: every snapshot here is one we ask for.
        (box.shares_dir / "finance.toml").write_text(
            f'path = "/srv/smb/pool/finance"\n[backup]\nschedule = "*-12-31 23:00"\nkeep = {{ {keep} }}\n')
        wait_served(box, "finance")
        taken = []
        for moment in TIMES:
            set_clock(clock, moment)
            done = restartable.ctl("snapshot", "finance")
            assert done.returncode == 0, done.stdout + done.stderr
            taken.append(NAME.search(done.stdout)[0])  # type: ignore[index]
            # The job's end runs a pass that records it and prunes: wait for that pass.
            restartable.wait_status(lambda s, name=taken[-1]: newest_seen(s) == name, timeout=20)
        assert len(set(taken)) == len(TIMES)
        time.sleep(1)
        restartable.ctl("reconcile")
        kept = ours(data)
        oracle = restic_keeps([when_of(n) for n in taken], tmp_path / "oracle")
        assert {when_of(n) for n in kept} == oracle, (kept, sorted(oracle))
        assert 6 <= len(kept) < len(TIMES)

        # The clock steps back ten days: the next name is one second after the newest,
        # never an old or repeated one, and it is kept (it is the newest).
        newest = max(kept)
        set_clock(clock, "2026-04-26 08:00")
        done = restartable.ctl("snapshot", "finance")
        assert done.returncode == 0 and "the clock was behind" in done.stdout, done.stdout
        name = NAME.search(done.stdout)[0]  # type: ignore[index]
        assert when_of(name) == when_of(newest) + timedelta(seconds=1), (newest, name)
        restartable.ctl("reconcile")
        assert name in ours(data) and newest in ours(data)

        # A prune is planned before it happens: with the agent stopped, a tighter keep
        # shows in `smbgwctl plan`, and the restarted agent deletes exactly that.
        restartable.stop()
        before = ours(data)
        (box.shares_dir / "finance.toml").write_text(
            'path = "/srv/smb/pool/finance"\n[backup]\nschedule = "*-12-31 23:00"\nkeep = { last = 2 }\n')
        plan = restartable.ctl("plan")
        planned = sorted(re.findall(r"prune snapshot (smbgw-\S+) \(no keep rule wants it\)", plan.stdout))
        assert planned == sorted(before)[:-2], plan.stdout
        assert ours(data) == before, "planning deletes nothing"
        restartable.start(wait=False)
        wait_for(lambda: ours(data) == sorted(before)[-2:], timeout=30)
        for snapshot in ours(data):
            subprocess.run(["btrfs", "subvolume", "delete", str(data / ".snapshots" / snapshot)], check=False,
                           capture_output=True)


def test_a_slot_comes_due_by_the_clock_and_runs_missed_while_down_run_once_at_start(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    clock = box.root / "clock-offset"
    clock.write_text("0\n")
    (box.root / "etc/smbgw/agent.toml").write_text(
        f'[agent]\nnode = "sandbox"\nallowed_roots = ["/srv"]\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')
    with btrfs_image(box.root / "srv/smb/pool", quotas=False) as pool:
        data = pool / "finance"
        subprocess.run(["btrfs", "subvolume", "create", str(data)], check=True, capture_output=True)
        restartable.env = {"PYTHONPATH": f"{CLOCK}:{REPO}", "SMBGW_TEST_CLOCK_FILE": str(clock)}
        restartable.start()
        (box.shares_dir / "finance.toml").write_text(
            'path = "/srv/smb/pool/finance"\n[backup]\nschedule = "hourly"\nkeep = { last = 10 }\n')
        wait_served(box, "finance")
        time.sleep(3)
        assert ours(data) == [] if (data / ".snapshots").exists() else True, "nothing before the first slot"
        shown = restartable.ctl("status").stdout
        assert re.search(r"finance: backup: 0 snapshot\(s\), last never, next \d{4}-\d\d-\d\d \d\d:00", shown), shown

        # The next hour comes (the clock moves): the slot runs, without anyone asking.
        clock.write_text("3600\n")
        wait_for(lambda: (data / ".snapshots").is_dir() and len(ours(data)) == 1, timeout=30)

        # Down for five slots: one run at start, not five.
        restartable.stop()
        clock.write_text(f"{3600 * 6}\n")
        restartable.start(wait=False)
        wait_for(lambda: len(ours(data)) == 2, timeout=30)
        time.sleep(5)
        assert len(ours(data)) == 2, ours(data)
        restartable.stop()
        for snapshot in ours(data):
            subprocess.run(["btrfs", "subvolume", "delete", str(data / ".snapshots" / snapshot)], check=False,
                           capture_output=True)
