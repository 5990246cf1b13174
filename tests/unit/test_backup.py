"""The backup plugin's pure parts: names, tables, the snapshot directory's safety rules."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from smbgw_plugins.backup import names
from smbgw_plugins.backup.snapshots import BtrfsSnapshots, Place, SnapshotError, ZfsSnapshots, parse_zfs_snapshots
from smbgw_plugins.backup.table import parse_agent_table, parse_share_table

from smbgw_agent.effects.mounts import Mount
from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.fields import FieldProblems


def at(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


def test_names_carry_utc_time_in_shadow_copy2_format_and_only_ours_parse() -> None:
    when = datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC)
    assert names.name_at(when) == "smbgw-2026.12.02-03.04.05"
    assert names.time_of("smbgw-2026.12.02-03.04.05") == when
    assert datetime.strptime("smbgw-2026.12.02-03.04.05", names.SHADOW_FORMAT).replace(tzinfo=UTC) == when
    for other in ("before-upgrade", "smbgw-2026.13.01-00.00.00", "smbgw-2026.02.30-00.00.00",
                  "smbgw-2026.12.02-03.04.05 ", "xsmbgw-2026.12.02-03.04.05", "smbgw-2026.12.02-03.04.05/..",
                  "@GMT-2026.12.02-03.04.05", ""):
        assert names.time_of(other) is None, other


def test_a_clock_stepped_back_never_gives_an_old_or_repeated_name() -> None:
    existing = ["smbgw-2026.12.02-03.00.00", "before-upgrade", "smbgw-2026.12.01-03.00.00"]
    assert names.next_name(at("2026-12-02 04:00:00"), existing) == (
        "smbgw-2026.12.02-04.00.00", datetime(2026, 12, 2, 4, tzinfo=UTC), False)
    name, _when, behind = names.next_name(at("2026-11-30 04:00:00"), existing)  # two days back
    assert (name, behind) == ("smbgw-2026.12.02-03.00.01", True)
    name, _when, behind = names.next_name(at("2026-12-02 03:00:00"), existing)  # the same second
    assert name == "smbgw-2026.12.02-03.00.01" and behind


def problems(parse: object, data: dict[str, object]) -> dict[str, str]:
    with pytest.raises(FieldProblems) as caught:
        parse(data)  # type: ignore[operator]
    return {str(key): message for message, key, _security in caught.value.problems}


def test_the_share_table_refuses_bad_schedules_keeps_and_targets_with_their_keys() -> None:
    good = parse_share_table({"schedule": "Mon..Fri 18:00", "keep": {"daily": 7, "weekly": 4}})
    assert good == {"schedule": "Mon..Fri 18:00", "keep": {"daily": 7, "weekly": 4}, "previous_versions": True,
                    "target": None, "verify": None}
    found = problems(parse_share_table, {"schedule": "Mon..Fry 18:00", "keep": {"dialy": 7, "weekly": -1},
                                         "target": "off site", "verify": "sometimes", "extra": 1})
    assert set(found) == {"schedule", "keep.dialy", "keep.weekly", "target", "verify", "extra"}, found
    assert "Fry" in found["schedule"]
    assert "every snapshot" in problems(parse_share_table, {"schedule": "daily", "keep": {"last": 0}})["keep"]
    assert "once a minute" in problems(parse_share_table, {"schedule": "*:*:0/10", "keep": {"last": 1}})["schedule"]
    assert "never fires again" in problems(parse_share_table, {"schedule": "2020-01-01", "keep": {"last": 1}})[
        "schedule"]
    assert set(problems(parse_share_table, {})) == {"schedule", "keep"}
    assert "needs a target" in problems(parse_share_table, {"schedule": "daily", "keep": {"last": 1},
                                                            "verify": "weekly"})["verify"]


def test_the_agent_table_checks_targets() -> None:
    good = parse_agent_table({"max_parallel": 2, "targets": {
        "offsite": {"type": "restic", "repository": "/mnt/backup/restic", "password_file": "/etc/smbgw/secrets/r"},
        "pbs1": {"type": "pbs", "repository": "smbgw@pbs!agent@pbs1.example:store1", "namespace": "pve1",
                 "fingerprint": ":".join(["AB"] * 32), "credential": "pbs1", "keep": {"daily": 7}}}})
    assert good["targets"]["pbs1"]["keep"] == {"daily": 7} and good["max_parallel"] == 2
    found = problems(parse_agent_table, {"max_parallel": 0, "retry_initial": "10m", "retry_max": "1m", "targets": {
        "a": {"type": "ftp", "repository": "x", "password_file": "relative"},
        "b": {"type": "pbs", "repository": "x", "password_file": "/p", "credential": "c", "fingerprint": "AA:BB"},
        "c d": {"type": "restic"}}})
    assert {"max_parallel", "retry_max", "targets.a.type", "targets.a.password_file", "targets.b",
            "targets.b.fingerprint", "targets.c d"} <= set(found), found


def place_in(tmp_path: Path) -> Place:
    return Place("finance", "/srv/finance", tmp_path, Mount(str(tmp_path), "btrfs", "/dev/loop0", "rw"))


def test_a_snapshot_directory_a_user_made_or_linked_is_not_used(tmp_path: Path) -> None:
    snaps = BtrfsSnapshots(Runner())
    place = place_in(tmp_path)
    assert snaps.names(place) == [] and snaps.snapdir_missing(place)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".snapshots").symlink_to(elsewhere)
    with pytest.raises(SnapshotError) as caught:
        snaps.names(place)
    assert caught.value.security and "not a directory" in str(caught.value)
    (tmp_path / ".snapshots").unlink()
    (tmp_path / ".snapshots").mkdir(mode=0o777)
    os.chmod(tmp_path / ".snapshots", 0o777)
    with pytest.raises(SnapshotError, match="writable by others"):
        snaps.take(place, "smbgw-2026.12.02-03.00.00")
    os.chmod(tmp_path / ".snapshots", 0o755)
    (tmp_path / ".snapshots/smbgw-2026.12.02-03.00.00").mkdir()  # a plain directory with our name
    assert snaps.names(place) == [], "only subvolumes are snapshots"
    with pytest.raises(SnapshotError, match="not a snapshot"):
        snaps.delete(place, "smbgw-2026.12.02-03.00.00")
    with pytest.raises(SnapshotError, match="not a snapshot name of this agent"):
        snaps.delete(place, "../../etc")


def test_zfs_listing_is_parsed_strictly_and_a_directory_inside_a_dataset_is_refused(tmp_path: Path) -> None:
    assert parse_zfs_snapshots("tank/finance@smbgw-2026.12.02-03.00.00\ntank/finance@manual\ntank@x\n") == {
        "tank/finance": ["smbgw-2026.12.02-03.00.00", "manual"], "tank": ["x"]}
    for garbage in ("no at sign here", "tank/finance@", "@name", "tank finance@x"):
        with pytest.raises(SnapshotError) as caught:
            parse_zfs_snapshots(garbage)
        assert caught.value.reason == "garbage"
    inside = Place("finance", "/tank/finance", tmp_path / "finance", Mount(str(tmp_path), "fuse.zfs", "tank", "rw"))
    with pytest.raises(SnapshotError, match="not a dataset of its own"):
        ZfsSnapshots.dataset(inside)
    ext4 = Place("finance", "/srv/finance", tmp_path, Mount(str(tmp_path), "ext4", "/dev/sda1", "rw"))
    with pytest.raises(SnapshotError, match=r"on ext4 .* no snapshots"):
        BtrfsSnapshots(Runner()).check(ext4)


def test_a_target_that_names_no_table_of_agent_toml_is_refused() -> None:
    from smbgw_plugins.backup import BackupPlugin

    from smbgw_agent.model.config import AgentConfig
    from smbgw_agent.model.shares import ShareSpec

    plugin = BackupPlugin()
    backup = parse_share_table({"schedule": "daily", "keep": {"last": 3}, "target": "offsite"})
    share = ShareSpec("finance", "finance.toml", "/srv/finance", sections={"backup": backup})
    none = AgentConfig(node="pve1")
    assert plugin.smbgw_validate_share(share, none) == [
        "[backup] target = 'offsite' names no [backup.targets.offsite] table in agent.toml"]
    agent = parse_agent_table({"targets": {"offsite": {"type": "restic", "repository": "/r", "credential": "r"}}})
    assert plugin.smbgw_validate_share(share, AgentConfig(node="pve1", plugin_sections={"backup": agent})) == []


def test_a_zfs_listing_is_read_again_after_a_snapshot_is_taken_or_destroyed(tmp_path: Path) -> None:
    """One `zfs list` per pool and pass, but never a stale one: the snapshot job reads the
    listing back after it took a snapshot."""
    listed: list[str] = ["tank/finance@smbgw-2026.12.01-03.00.00"]
    calls: list[list[str]] = []

    class Recorder(Runner):
        def run(self, argv: Any, **_kwargs: Any) -> Any:  # type: ignore[override]
            calls.append(list(argv))
            if argv[1] == "snapshot":
                listed.append(argv[2])
            if argv[1] == "destroy":
                listed.remove(argv[2])
            return subprocess.CompletedProcess(argv, 0, "\n".join(listed) + "\n", "")

    place = Place("finance", "/tank/finance", Path("/tank/finance"), Mount("/tank/finance", "zfs", "tank/finance",
                                                                             "rw"))
    subject = ZfsSnapshots(Recorder())
    assert subject.names(place) == ["smbgw-2026.12.01-03.00.00"]
    assert subject.names(place) == ["smbgw-2026.12.01-03.00.00"] and len(calls) == 1, "listed once"
    subject.take(place, "smbgw-2026.12.02-03.00.00")
    assert subject.names(place) == ["smbgw-2026.12.01-03.00.00", "smbgw-2026.12.02-03.00.00"]
    subject.delete(place, "smbgw-2026.12.01-03.00.00")
    assert subject.names(place) == ["smbgw-2026.12.02-03.00.00"]
