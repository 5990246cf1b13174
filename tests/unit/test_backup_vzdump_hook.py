"""The vzdump hook against vzdump's documented calls (pve-manager's vzdump-hook-script.pl
and PVE/VZDump.pm run_hook_script): every phase with and without MODE VMID, its
environment, share files and status.json mapping VMIDs to shares, smbgwctl's answers
(a recording stand-in), strict and non-strict failure, and hostile input."""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from smbgw_plugins.backup import vzdump_hook
from smbgw_plugins.backup.vzdump_hook import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    GUEST_PHASES,
    JOB_PHASES,
    Completed,
    main,
)

REPO = Path(__file__).resolve().parents[2]
TAKEN = "{share}: snapshot smbgw-2026.12.02-03.00.00 taken"


@dataclass
class FakeCtl:
    """smbgwctl as the hook sees it: records each argv; answers from `answers` (share ->
    list of Completed, used in turn, the last one repeated), else a snapshot taken."""

    answers: dict[str, list[Completed]] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    envs: list[dict[str, str]] = field(default_factory=list)

    def __call__(self, argv: Sequence[str], timeout: float, env: Mapping[str, str]) -> Completed:
        self.calls.append(list(argv))
        self.timeouts.append(timeout)
        self.envs.append(dict(env))
        share = argv[-1]
        queue = self.answers.get(share)
        if queue:
            return queue.pop(0) if len(queue) > 1 else queue[0]
        return Completed(0, TAKEN.format(share=share) + "\n", "")

    @property
    def shares(self) -> list[str]:
        return [argv[-1] for argv in self.calls]


@dataclass
class Box:
    """A --root with shares.d, agent.toml and status.json, and a PATH whose smbgwctl is a
    file of ours (so the command the hook builds is known)."""

    root: Path
    bin: Path

    @property
    def shares(self) -> Path:
        return self.root / "etc/smbgw/shares.d"

    def share(self, file: str, text: str) -> Path:
        path = self.shares / file
        path.write_text(text)
        return path

    def status(self, value: object) -> None:
        path = self.root / "run/smbgw/status.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": str(self.bin), **extra}

    def ctl(self, *argv: str) -> list[str]:
        return [str(self.bin / "smbgwctl"), "--root", str(self.root), *argv]

    def hook(self, *argv: str, ctl: FakeCtl | None = None, sleeps: list[float] | None = None,
             env: Mapping[str, str] | None = None, **environ: str) -> int:
        clock = [0.0]

        def sleep(seconds: float) -> None:
            clock[0] += seconds
            if sleeps is not None:
                sleeps.append(seconds)

        return main(["--root", str(self.root), *argv], self.env(**(env or {}), **environ), runner=ctl or FakeCtl(),
                    sleep=sleep, clock=lambda: clock[0])


BACKUP = '[backup]\nschedule = "daily"\nkeep = { last = 7 }\n'


def lxc(vmid: object, extra: str = "") -> str:
    return f'path = "/srv/ct"\nmode = "lxc"\n{extra}[lxc]\nvmid = {json.dumps(vmid)}\n{BACKUP}'


def vm(vmid: object, extra: str = "") -> str:
    return f'path = "/srv/vm"\nmode = "vm"\n{extra}[vm]\nvmid = {json.dumps(vmid)}\n{BACKUP}'


@pytest.fixture
def box(tmp_path: Path) -> Box:
    root = tmp_path / "root"
    (root / "etc/smbgw/shares.d").mkdir(parents=True)
    (root / "etc/smbgw/agent.toml").write_text('[agent]\nnode = "pve1"\n')
    binary = tmp_path / "bin"
    binary.mkdir()
    fake = binary / "smbgwctl"
    fake.write_text("#!/bin/sh\nexit 99\n")
    fake.chmod(0o755)
    return Box(root, binary)


def only_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ---- the phases vzdump calls ---------------------------------------------------------

# (argv after the script, environment) exactly as PVE/VZDump.pm run_hook_script builds them.
JOB_CALLS = [(phase, env) for phase in JOB_PHASES
             for env in ({"STOREID": "local", "DUMPDIR": "/var/lib/vz/dump"}, {"STOREID": "pbs"}, {})]
GUEST_CALLS = [(phase, mode, env) for phase in GUEST_PHASES if phase != "backup-start"
               for mode in ("stop", "suspend", "snapshot")
               for env in ({"VMTYPE": "lxc", "HOSTNAME": "ct105", "STOREID": "local", "DUMPDIR": "/d"},
                           {"VMTYPE": "qemu", "HOSTNAME": "vm105", "TARGET": "/d/vzdump-qemu-105.vma.zst",
                            "LOGFILE": "/d/vzdump-qemu-105.log"})]


def test_the_documented_phases_are_vzdumps_own() -> None:
    assert set(JOB_PHASES) == {"job-init", "job-start", "job-end", "job-abort"}
    assert set(GUEST_PHASES) == {"backup-start", "pre-stop", "pre-restart", "post-restart", "backup-end",
                                 "backup-abort", "log-end"}


@pytest.mark.parametrize(("phase", "environ"), JOB_CALLS)
def test_job_phases_do_nothing(box: Box, phase: str, environ: dict[str, str],
                               capsys: pytest.CaptureFixture[str]) -> None:
    box.share("ct.toml", lxc(105))
    ctl = FakeCtl()
    assert box.hook(phase, ctl=ctl, env=environ) == EXIT_OK
    assert box.hook(phase, "snapshot", "105", ctl=ctl, env=environ) == EXIT_OK, "extra words are no reason to act"
    assert ctl.calls == []
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(("phase", "mode", "environ"), GUEST_CALLS)
def test_guest_phases_other_than_backup_start_do_nothing(box: Box, phase: str, mode: str, environ: dict[str, str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    box.share("ct.toml", lxc(105))
    ctl = FakeCtl()
    assert box.hook(phase, mode, "105", ctl=ctl, env=environ) == EXIT_OK
    assert box.hook(phase, ctl=ctl, env=environ) == EXIT_OK, "without MODE VMID too"
    assert box.hook(phase, mode, "garbage", ctl=ctl, env=environ) == EXIT_OK
    assert ctl.calls == []
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("mode", ["stop", "suspend", "snapshot"])
def test_backup_start_snapshots_the_guests_share_in_every_mode(box: Box, mode: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    box.share("ct.toml", lxc(105))
    ctl = FakeCtl()
    assert box.hook("backup-start", mode, "105", ctl=ctl, VMTYPE="lxc", HOSTNAME="ct105", STOREID="local") == EXIT_OK
    assert ctl.calls == [box.ctl("snapshot", "ct")]
    assert ctl.timeouts == [600.0 + 60.0], "snapshot_timeout's default, and the time smbgwctl waits beyond it"
    assert ctl.envs[0]["PATH"].startswith(str(box.bin)) and "/usr/sbin" in ctl.envs[0]["PATH"]
    out, err = capsys.readouterr()
    assert only_line(out) == "smbgw-vzdump-hook: guest 105: ct: snapshot smbgw-2026.12.02-03.00.00 taken"
    assert err == ""


@pytest.mark.parametrize(("argv", "why"), [
    (["backup-start"], "needs MODE and VMID"),
    (["backup-start", "snapshot"], "needs MODE and VMID"),
    (["backup-start", "snapshot", ""], "is not a VMID"),
    (["backup-start", "snapshot", "abc"], "is not a VMID"),
    (["backup-start", "snapshot", "99"], "is not a VMID"),
    (["backup-start", "snapshot", "0105"], "is not a VMID"),
    (["backup-start", "snapshot", "+105"], "is not a VMID"),
    (["backup-start", "snapshot", " 105"], "is not a VMID"),
    (["backup-start", "snapshot", "1e3"], "is not a VMID"),
    (["backup-start", "snapshot", "1000000000"], "is not a VMID"),
    (["backup-start", "snapshot", "-105"], "is not a VMID"),
    (["backup-start", "snapshot", "105; rm -rf /"], "is not a VMID"),
    (["backup-start", "snapshot", "\u0661\u0660\u0665"], "is not a VMID"),  # Arabic-Indic digits: isdigit() says yes
])
def test_backup_start_without_a_usable_vmid_fails_strict_and_warns_otherwise(
    box: Box, argv: list[str], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    box.share("ct.toml", lxc(105))
    ctl = FakeCtl()
    assert box.hook(*argv, ctl=ctl, VMTYPE="lxc") == EXIT_USAGE
    assert why in only_line(capsys.readouterr().err)
    assert box.hook(*argv, ctl=ctl, VMTYPE="lxc", SMBGW_VZDUMP_HOOK_STRICT="0") == EXIT_OK
    assert why in only_line(capsys.readouterr().err)
    assert ctl.calls == []


@pytest.mark.parametrize(("argv", "code", "why"), [
    ([], EXIT_USAGE, "no phase given"),
    (["--root"], EXIT_USAGE, "--root needs a directory"),
    (["--root="], EXIT_USAGE, "--root needs a directory"),
    (["--verbose", "job-start"], EXIT_USAGE, "unknown option '--verbose'"),
    (["backup-begin", "snapshot", "105"], EXIT_OK, "unknown vzdump phase 'backup-begin'"),
    (["\x1b[2Jjob-start"], EXIT_OK, "unknown vzdump phase '\\x1b[2Jjob-start'"),
    (["BACKUP-START", "snapshot", "105"], EXIT_OK, "unknown vzdump phase"),
])
def test_bad_calls_give_one_line_and_the_right_status(box: Box, argv: list[str], code: int, why: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ctl = FakeCtl()
    status = main(argv, box.env(VMTYPE="lxc"), runner=ctl)
    assert status == code
    line = only_line(capsys.readouterr().err)
    assert line.startswith("smbgw-vzdump-hook: ") and why in line and "\x1b" not in line, line
    assert ctl.calls == []


def test_help_and_the_end_of_options(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], {}) == EXIT_OK
    assert "usage: smbgw-vzdump-hook [--root DIR] PHASE [MODE VMID]" in capsys.readouterr().out
    box.share("ct.toml", lxc(105))
    ctl = FakeCtl()
    assert main([f"--root={box.root}", "--", "backup-start", "stop", "105"], box.env(VMTYPE="lxc"),
                runner=ctl) == EXIT_OK
    assert ctl.shares == ["ct"]


# ---- which shares are the guest's ------------------------------------------------------

def test_vmtype_picks_the_mode_and_the_vmid_the_guest(box: Box) -> None:
    box.share("ct105.toml", lxc(105))
    box.share("ct106.toml", lxc(106))
    box.share("vm105.toml", vm(105))  # a VM's share with the same VMID: a mistake, but not this guest's
    box.share("vm107.toml", vm(107))
    box.share("native.toml", f'path = "/srv/n"\n{BACKUP}[lxc]\nvmid = 105\n')  # mode native: served by the node
    for vmtype, vmid, wanted in (("lxc", "105", ["ct105"]), ("lxc", "106", ["ct106"]), ("qemu", "105", ["vm105"]),
                                 ("qemu", "107", ["vm107"]), ("lxc", "107", []), ("qemu", "999", [])):
        ctl = FakeCtl()
        assert box.hook("backup-start", "snapshot", vmid, ctl=ctl, VMTYPE=vmtype) == EXIT_OK
        assert ctl.shares == wanted, (vmtype, vmid)
    ctl = FakeCtl()
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl) == EXIT_OK, "by hand, without VMTYPE"
    assert ctl.shares == ["ct105", "vm105"]


def test_other_guest_types_are_not_ours(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.share("ct.toml", lxc(105))
    ctl = FakeCtl()
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="openvz") == EXIT_OK
    assert ctl.calls == []
    assert "of type 'openvz'" in only_line(capsys.readouterr().out)


def test_share_names_node_and_backup_table_decide_what_is_asked(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.share("a.toml", lxc(105, 'name = "Finance"\n'))
    box.share("b.toml", lxc("105"))  # a VMID written as a string
    box.share("c.toml", lxc(105, 'node = "pve1"\n'))  # this node
    box.share("elsewhere.toml", lxc(105, 'node = "pve2"\n'))
    box.share("nobackup.toml", 'path = "/srv/x"\nmode = "lxc"\n[lxc]\nvmid = 105\n')
    box.share("string-backup.toml", lxc(105).replace("[backup]\n", "backup = 1\n[nothing]\n"))
    ctl = FakeCtl()
    assert box.hook("backup-start", "stop", "105", ctl=ctl, VMTYPE="lxc") == EXIT_OK
    assert ctl.shares == ["b", "c", "Finance"]
    out = capsys.readouterr().out
    assert "share elsewhere of guest 105 is served by node pve2, not this node (pve1): no snapshot here" in out
    assert "share nobackup of guest 105 has no [backup] table: no snapshot to take" in out


def test_agent_toml_moves_shares_dir_and_sets_the_time_limit(box: Box) -> None:
    other = box.root / "srv/conf/shares"
    other.mkdir(parents=True)
    (other / "moved.toml").write_text(lxc(105))
    box.share("ignored.toml", lxc(105))
    (box.root / "etc/smbgw/agent.toml").write_text(
        '[agent]\nnode = "pve1"\nshares_dir = "/srv/conf/shares"\n[backup]\nsnapshot_timeout = "2m"\n')
    ctl = FakeCtl()
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="lxc") == EXIT_OK
    assert ctl.shares == ["moved"] and ctl.timeouts == [120.0 + 60.0]


def test_status_json_maps_vmids_the_mode_plugins_allocated(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.share("fromfile.toml", lxc(105))
    box.share("alloc.toml", f'path = "/srv/a"\nmode = "lxc"\n{BACKUP}')  # its VMID is the plugin's
    box.share("plain.toml", 'path = "/srv/p"\nmode = "lxc"\n')  # no [backup]
    box.status({"plugins": {
        "mode_lxc": {"shares": {"alloc": {"vmid": 105}, "FROMFILE": {"vmid": 105}, "plain": {"vmid": 105},
                                "orphan": {"vmid": "105"}, "other": {"vmid": 106}, "bad": {"vmid": True},
                                "-x": {"vmid": 105}, "list": [105]}},
        "mode_vm": {"shares": {"vmshare": {"vmid": 105}}},
        "backup": {"shares": {"alloc": {"snapshots": 3}}},
    }})
    ctl = FakeCtl(answers={"orphan": [Completed(1, "", "snapshot: share orphan has no [backup] table\n")]})
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="lxc") == EXIT_OK
    assert ctl.shares == ["alloc", "fromfile", "orphan"], "each share once; status-only ones are asked"
    captured = capsys.readouterr()
    assert "share orphan of guest 105 has no [backup] table" in captured.out
    assert "share plain of guest 105 has no [backup] table" in captured.out
    assert "'-x' must not start with '.' or '-'" in captured.err
    ctl = FakeCtl()
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="qemu") == EXIT_OK
    assert ctl.shares == ["vmshare"]


# ---- smbgwctl's answers ----------------------------------------------------------------

def test_a_failed_snapshot_fails_the_guests_backup_when_strict(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.share("ct.toml", lxc(105))
    box.share("ct2.toml", lxc(105))
    box.share("ct3.toml", lxc(105))
    down = Completed(3, "", "cannot reach smbgw-agent at /run/smbgw/control.sock: [Errno 2] No such file\n")
    ctl = FakeCtl(answers={"ct2": [down]})
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="lxc") == EXIT_FAILED
    assert ctl.shares == ["ct", "ct2", "ct3"], "every share is tried"
    out, err = capsys.readouterr()
    assert out.count(" taken") == 2
    first, last = err.splitlines()
    assert first == ("smbgw-vzdump-hook: guest 105: share ct2 (ct2.toml: [lxc] vmid): snapshot FAILED: cannot reach "
                     "smbgw-agent at /run/smbgw/control.sock: [Errno 2] No such file")
    assert "no snapshot of share(s) ct2: failing this guest's backup" in last
    assert "SMBGW_VZDUMP_HOOK_STRICT=0 in /etc/default/smbgw-vzdump-hook" in last


@pytest.mark.parametrize("value", ["0", "false", "No", " off "])
def test_not_strict_only_warns(box: Box, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    box.share("ct.toml", lxc(105))
    ctl = FakeCtl(answers={"ct": [Completed(1, "", "snapshot: zfs: out of space\n")]})
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="lxc",
                    SMBGW_VZDUMP_HOOK_STRICT=value) == EXIT_OK
    err = capsys.readouterr().err
    assert "snapshot FAILED: snapshot: zfs: out of space" in err
    assert "backing the guest up anyway" in err


@pytest.mark.parametrize("value", ["1", "yes", "", "maybe"])
def test_strict_is_the_default_and_garbage_stays_strict(box: Box, value: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    box.share("ct.toml", lxc(105))
    ctl = FakeCtl(answers={"ct": [Completed(1, "", "snapshot: failed\n")]})
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="lxc",
                    SMBGW_VZDUMP_HOOK_STRICT=value) == EXIT_FAILED
    assert ("is neither 0 nor 1; staying strict" in capsys.readouterr().err) == (value == "maybe")


def test_a_running_scheduled_snapshot_is_waited_for(box: Box) -> None:
    box.share("ct.toml", lxc(105))
    busy = Completed(1, "", "snapshot: backup:snapshot:ct is already running since 03:00:00; try again when it "
                            "has finished\n")
    ctl = FakeCtl(answers={"ct": [busy, busy, Completed(0, TAKEN.format(share="ct"), "")]})
    sleeps: list[float] = []
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, sleeps=sleeps, VMTYPE="lxc") == EXIT_OK
    assert ctl.shares == ["ct", "ct", "ct"] and sleeps == [5.0, 5.0]
    # ... but not for longer than the job itself may run.
    ctl = FakeCtl(answers={"ct": [busy]})
    sleeps = []
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, sleeps=sleeps, VMTYPE="lxc") == EXIT_FAILED
    assert sum(sleeps) < 600.0 and len(ctl.calls) == len(sleeps) + 1 > 100


def test_the_real_runner_runs_smbgwctl_from_path_with_a_time_limit(box: Box, tmp_path: Path) -> None:
    box.share("ct.toml", lxc(105))
    record = tmp_path / "argv"
    (box.bin / "smbgwctl").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\necho "ct: snapshot X taken"\n')
    assert main(["--root", str(box.root), "backup-start", "stop", "105"], box.env(VMTYPE="lxc")) == EXIT_OK
    assert record.read_text().splitlines() == ["--root", str(box.root), "snapshot", "ct"]
    done = vzdump_hook.run_command(["sleep", "5"], 0.2, {"PATH": "/usr/bin:/bin"})
    assert done.returncode == 124 and "did not finish within 0.2 s" in done.stderr
    done = vzdump_hook.run_command([str(tmp_path / "missing")], 5, {})
    assert done.returncode == 127 and "cannot run" in done.stderr


def test_a_runner_that_raises_is_one_line_not_a_traceback(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.share("ct.toml", lxc(105))

    def broken(argv: Sequence[str], timeout: float, env: Mapping[str, str]) -> Completed:
        raise RuntimeError("boom\nsecond line")

    assert main(["--root", str(box.root), "backup-start", "stop", "105"], box.env(VMTYPE="lxc"),
                runner=broken) == EXIT_FAILED
    assert only_line(capsys.readouterr().err) == "smbgw-vzdump-hook: internal error: RuntimeError: boom\\x0asecond line"
    assert main(["--root", str(box.root), "backup-start", "stop", "105"],
                box.env(VMTYPE="lxc", SMBGW_VZDUMP_HOOK_STRICT="0"), runner=broken) == EXIT_OK


# ---- hostile input -----------------------------------------------------------------------

def test_unreadable_and_hostile_share_files_are_warnings_and_the_good_share_is_snapshotted(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    box.share("good.toml", lxc(105))
    box.share("syntax.toml", "path = \n[lxc\nvmid = 105\n")
    box.share("deep-arrays.toml", "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    box.share("deep-tables.toml", "x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n")
    box.share("deep-keys.toml", "x" + ".a" * 50_000 + " = 1\n")
    box.share("huge.toml", "# " + "x" * (2 << 20) + "\n")
    (box.shares / "binary.toml").write_bytes(b'path = "/srv/x"\x00\n')
    (box.shares / "latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    box.share("bigint.toml", "vmid = " + "9" * 5000 + "\n")
    unreadable = box.share("mode000.toml", lxc(105))
    unreadable.chmod(0)
    (box.shares / "link.toml").symlink_to(box.shares / "good.toml")
    (box.shares / "dir.toml").mkdir()
    os.mkfifo(box.shares / "fifo.toml")
    box.share("badname.toml", lxc(105, 'name = "-rf"\n'))
    box.share("listname.toml", lxc(105, "name = [1]\n"))
    box.share("evil\x1b[31m.toml", lxc(105, 'name = "ok\\u001b"\n'))
    box.share("types.toml", 'path = "/x"\nmode = ["lxc"]\nlxc = "105"\nnode = 5\n')
    for vmid in ("true", "105.0", "[105]", '{ a = 105 }', '"0x69"', "-105", '"105 "'):
        box.share(f"vmid-{abs(hash(vmid))}.toml", f'path = "/x"\nmode = "lxc"\n{BACKUP}[lxc]\nvmid = {vmid}\n')
    box.share(".hidden.toml", lxc(105))
    box.share("good.toml~", lxc(105))
    ctl = FakeCtl()
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="lxc") == EXIT_OK
    assert ctl.shares == ["good"]
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\x1b" not in err
    for what in ("syntax.toml", "deep-arrays.toml", "deep-tables.toml", "deep-keys.toml", "huge.toml",
                 "binary.toml", "latin1.toml", "bigint.toml", "mode000.toml", "link.toml", "dir.toml", "fifo.toml",
                 "badname.toml", "listname.toml", "evil\\x1b[31m.toml"):
        assert what in err, what
    assert all(line.startswith("smbgw-vzdump-hook: ") for line in err.splitlines())


@pytest.mark.parametrize("content", [
    b"{not json", b"[" * 200_000 + b"]" * 200_000, b'"a string"', b"[]", b'{"plugins": []}',
    b'{"plugins": {"mode_lxc": []}}', b'{"plugins": {"mode_lxc": {"shares": [1, 2]}}}',
    b'{"plugins": {"mode_lxc": {"shares": {"x": "105"}}}}', b"\xff\xfe", b"",
])
def test_hostile_status_json_is_a_warning_at_most(box: Box, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    box.share("good.toml", lxc(105))
    path = box.root / "run/smbgw/status.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    ctl = FakeCtl()
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="lxc") == EXIT_OK
    assert ctl.shares == ["good"]
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) <= 1


def test_a_broken_agent_toml_or_shares_dir_is_a_warning(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    box.share("good.toml", lxc(105))
    (box.root / "etc/smbgw/agent.toml").write_text('[agent\nnode = "pve1"\n')
    ctl = FakeCtl()
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="lxc") == EXIT_OK
    assert ctl.shares == ["good"], "the default shares directory"
    assert "TOML syntax error" in only_line(capsys.readouterr().err)
    (box.root / "etc/smbgw/agent.toml").write_text('[agent]\nshares_dir = "relative"\n[backup]\n'
                                                  'snapshot_timeout = "soon"\n')
    ctl = FakeCtl()
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="lxc") == EXIT_OK
    assert ctl.shares == ["good"] and ctl.timeouts == [660.0]
    err = capsys.readouterr().err
    assert "not an absolute path" in err and "snapshot_timeout" in err
    (box.root / "etc/smbgw/agent.toml").write_text('[agent]\nshares_dir = "/nowhere"\n')
    ctl = FakeCtl()
    assert box.hook("backup-start", "snapshot", "105", ctl=ctl, VMTYPE="lxc") == EXIT_OK
    assert ctl.calls == [], "no shares directory: no shares"
    (box.root / "etc/smbgw/agent.toml").write_text('[agent]\nshares_dir = "/etc/smbgw/agent.toml"\n')
    assert box.hook("backup-start", "snapshot", "105", ctl=FakeCtl(), VMTYPE="lxc") == EXIT_OK
    assert "cannot list" in only_line(capsys.readouterr().err)


# ---- as vzdump runs it: a process with an emptied environment ------------------------------

@functools.cache
def installed_layout() -> str:
    """A directory laid out as the package installs it (`smbgw_agent`, `smbgw_plugins`),
    for a run from the source tree under an interpreter that does not have it (make
    test-debian, the trixie pass); as PYTHONPATH it stands in for the installed package."""
    layout = Path(tempfile.mkdtemp(prefix="smbgw-layout-"))
    (layout / "smbgw_agent").symlink_to(REPO / "smbgw_agent")
    (layout / "smbgw_plugins").symlink_to(REPO / "plugins")
    return str(layout)


def run_module(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python3 -m smbgw_plugins.backup.vzdump_hook` with only what vzdump's `local %ENV` leaves
    (and PVE::Cmd::run's LC_ALL=C), plus the package where the interpreter lacks it."""
    clean = {**(env or {})}
    probe = subprocess.run([sys.executable, "-c", "import smbgw_plugins"], env={}, cwd="/", capture_output=True,
                           check=False)
    if probe.returncode != 0:
        clean["PYTHONPATH"] = installed_layout()
    return subprocess.run([sys.executable, "-m", "smbgw_plugins.backup.vzdump_hook", *argv], capture_output=True,
                          text=True, timeout=60, env=clean, cwd="/", check=False)


def test_as_a_module_with_vzdumps_empty_environment(box: Box) -> None:
    for argv in (["job-init"], ["job-start"], ["pre-stop", "stop", "105"], ["log-end", "snapshot", "105"]):
        done = run_module(*argv, env={"STOREID": "local"})
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done
    done = run_module()
    assert done.returncode == EXIT_USAGE and done.stderr.startswith("smbgw-vzdump-hook: no phase given")
    # No agent runs under this root: smbgwctl (found without PATH) cannot reach it.
    box.share("b\u00fcro.toml", lxc(105))  # a name beyond ASCII, printed under LC_ALL=C
    done = run_module("--root", str(box.root), "backup-start", "snapshot", "105",
                      env={"VMTYPE": "lxc", "HOSTNAME": "ct105", "STOREID": "local", "LC_ALL": "C"})
    assert done.returncode == EXIT_FAILED, done
    assert "Traceback" not in done.stderr
    assert ("guest 105: share b\u00fcro (b\u00fcro.toml: [lxc] vmid): snapshot FAILED: cannot reach smbgw-agent"
            in done.stderr), done.stderr
    done = run_module("--root", str(box.root), "backup-start", "snapshot", "105",
                      env={"VMTYPE": "lxc", "SMBGW_VZDUMP_HOOK_STRICT": "0"})
    assert done.returncode == EXIT_OK and "backing the guest up anyway" in done.stderr, done


def test_the_wrapper_is_a_tiny_posix_shell_script() -> None:
    wrapper = REPO / "contrib/smbgw-vzdump-hook"
    assert wrapper.stat().st_mode & stat.S_IXUSR, "executable"
    text = wrapper.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert "exec /usr/bin/python3 -I -m smbgw_plugins.backup.vzdump_hook \"$@\"" in text
    assert "/etc/default/smbgw-vzdump-hook" in text
    assert subprocess.run(["sh", "-n", str(wrapper)], check=False).returncode == 0
