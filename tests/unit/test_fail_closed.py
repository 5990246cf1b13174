"""Unit tests for the fail-closed parts: the admin's smb.conf reader, ownership checks,
the share guard, escaping for terminals, the runner's bounds, the state store on a full
disk, monotonic backoff, and what `smbgwctl status` counts as a problem."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smbgw_agent.cli import status_problems
from smbgw_agent.effects import deadline as pass_deadline
from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.effects.samba import run_testparm
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.pathsafety import writable_ancestors
from smbgw_agent.model.printable import printable
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.model.smbconf import AdminShares, read_admin_shares
from smbgw_agent.platform.pluginhost import PluginHost
from smbgw_agent.reconcile.guard import STORAGE_MISSING, UNSAFE, ShareGuard
from smbgw_agent.reconcile.scanner import ShareScanner
from smbgw_agent.reconcile.state import StateStore

# ---- the admin's smb.conf ------------------------------------------------------------------------


def test_admin_sections_are_found_case_insensitively_with_their_lines(tmp_path: Path) -> None:
    conf = tmp_path / "smb.conf"
    conf.write_text(
        "[global]\n\tworkgroup = X\n# [Commented]\n; [AlsoCommented]\n"
        "[Payroll]\n\tpath = /a\n  [ spaced ]  \n[homes]\n"
    )
    found = read_admin_shares(conf, tmp_path / "smbgw")
    assert set(found.sections) == {"payroll", "spaced", "homes"}
    assert found.get("PAYROLL") is not None and found.get("PAYROLL").line == 5  # type: ignore[union-attr]
    assert found.get("global") is None and found.get("commented") is None


def test_includes_are_followed_except_ours_macros_and_loops(tmp_path: Path) -> None:
    managed = tmp_path / "smbgw"
    managed.mkdir()
    (managed / "globals.conf").write_text("[ours]\n")
    (tmp_path / "extra.conf").write_text("[Extra]\ninclude = smb.conf\n")  # a loop back
    (tmp_path / "machine.conf").write_text("[PerMachine]\n")
    conf = tmp_path / "smb.conf"
    conf.write_text(
        f"include = extra.conf\ninclude = {managed}/globals.conf\ninclude = {tmp_path}/machine.%m\n"
        f"include = {tmp_path}/missing.conf\n[Own]\n"
    )
    found = read_admin_shares(conf, managed)
    assert {"extra", "own"} <= set(found.sections)
    assert "ours" not in found.sections and "permachine" not in found.sections
    assert any("nested more than" in p for p in found.problems)
    assert any("missing.conf: included but missing" in p for p in found.problems)


def test_continuation_lines_join_like_samba(tmp_path: Path) -> None:
    conf = tmp_path / "smb.conf"
    conf.write_text("[A]\n\tcomment = one \\\n[NotASection]\n[B]\n")
    found = read_admin_shares(conf, tmp_path / "smbgw")
    assert set(found.sections) == {"a", "b"}



@pytest.mark.parametrize(("text", "reads"), [
    ("[global]\n\tregistry shares = yes\n", True),
    ("[global]\n\tRegistry Shares = True\n", True),
    ("[global]\n\tinclude = registry\n", True),
    ("[global]\n\tconfig backend = registry\n", True),
    ("registry shares = on\n[data]\n\tpath = /srv\n", True),  # before any section: global
    ("[global]\n\tregistry shares = no\n", False),
    ("[data]\n\tregistry shares = yes\n", False),  # a global parameter in a share means nothing
    ("[global]\n\tinclude = @INC@\n", True),  # in a file included from [global]
    ("[data]\n\tinclude = @INC@\n", False),  # ... but not from a share's section
])
def test_a_configuration_that_serves_registry_shares_is_recognised(tmp_path: Path, text: str, reads: bool) -> None:
    """smbd then also serves shares no file holds: the scanner must ask `net conf` for
    their names, or a share file could take over an administrator's registry share."""
    included = tmp_path / "inc.conf"
    included.write_text("registry shares = yes\n")
    conf = _conf(tmp_path, text.replace("@INC@", str(included)))
    assert read_admin_shares(conf, tmp_path / "smbgw").reads_registry is reads


def test_registry_shares_count_as_the_administrators_and_a_file_section_wins(tmp_path: Path) -> None:
    admin = read_admin_shares(_conf(tmp_path, "[global]\n\tinclude = registry\n[Both]\n\tpath = /srv\n"),
                              tmp_path / "smbgw")
    merged = admin.with_registry(["RegDocs", "both", "global"], problem="net timed out")
    assert sorted(merged.sections) == ["both", "regdocs"], "the registry's [global] is no share"
    assert merged.get("REGDOCS") is not None and merged.get("REGDOCS").where() == "Samba's registry (net conf)"
    assert merged.get("both").where().endswith("smb.conf:3"), "the file's section is the one reported"
    assert merged.problems[-1] == "net timed out"
    assert admin.sections.keys() == {"both"}, "the original is not changed"

def test_a_missing_smb_conf_defines_nothing(tmp_path: Path) -> None:
    assert read_admin_shares(tmp_path / "nope.conf", tmp_path).sections == {}


# ---- ownership along the path ---------------------------------------------------------------------


def test_writable_ancestors_names_each_risky_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "srv/a/b/share").mkdir(parents=True)
    paths = Paths.under(root)
    assert writable_ancestors("/srv/a/b/share", paths) == []
    os.chown(root / "srv/a", 1000, 0)
    (root / "srv/a/b").chmod(0o777)
    (root / "srv/a/b/share").chmod(0o777)  # the share directory itself is the owner's business
    findings = writable_ancestors("/srv/a/b/share", paths)
    assert findings == ["/srv/a is writable by its owner (uid 1000)", "/srv/a/b is writable by everyone"]
    os.chown(root / "srv/a", 0, 0)
    (root / "srv/a/b").chmod(0o775)
    os.chown(root / "srv/a/b", 0, 1000)
    assert writable_ancestors("/srv/a/b/share", paths) == ["/srv/a/b is writable by group gid 1000"]
    os.chown(root / "srv/a/b", 0, 0)
    (root / "srv/a/b").chmod(0o1777)
    assert "sticky" in writable_ancestors("/srv/a/b/share", paths)[0]


# ---- the guard -------------------------------------------------------------------------------------


def spec(name: str, path: str) -> ShareSpec:
    return ShareSpec(name=name, file=f"{name}.toml", path=path)


def test_the_guard_holds_unsafe_and_missing_storage_and_notices_changes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "srv/data").mkdir(parents=True)
    (root / "etc").mkdir()
    paths = Paths.under(root)
    config = AgentConfig(node="n", allowed_roots=("/srv",), require_mounts=("/srv/pool",))
    guard = ShareGuard(paths, config)
    shares = {
        "data": spec("data", "/srv/data"),
        "gone": spec("gone", "/srv/gone/x"),
        "pool": spec("pool", "/srv/pool/x"),
        "admins": spec("Admins", "/srv/data"),
    }
    admin = AdminShares(sections={})
    admin_with = read_admin_shares(_conf(tmp_path, "[ADMINS]\n"), tmp_path / "managed")
    held = guard.check(shares, admin)
    assert set(held) == {"gone", "pool"} and all(h.kind == STORAGE_MISSING for h in held.values())
    assert "/srv/pool is not mounted" in held["pool"].reason
    assert guard.poll(shares.values()) == set()
    # A directory swapped for a link to /etc: seen by poll, held as unsafe by check.
    os.rename(root / "srv/data", root / "srv/data.old")
    os.symlink(root / "etc", root / "srv/data")
    assert guard.poll(shares.values()) == {"data", "admins"}
    held = guard.check(shares, admin)
    assert held["data"].kind == UNSAFE and "system directory" in held["data"].reason
    # The admin's smb.conf defines [ADMINS]: that share is refused.
    (root / "srv/data").unlink()
    os.rename(root / "srv/data.old", root / "srv/data")
    held = guard.check(shares, admin_with)
    assert held["admins"].kind == UNSAFE and "data" not in held
    # Missing storage appears: poll notices.
    (root / "srv/gone").mkdir()
    assert "gone" in guard.poll(shares.values())
    assert "gone" not in guard.check(shares, admin_with)


def _conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "admin-smb.conf"
    path.write_text(text)
    return path


# ---- terminal escaping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain é ü", "plain é ü"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("line\nforged", "line\\x0aforged"),
        ("name\u202eexe.txt", "name\\u202eexe.txt"),
        ("bad\udcffname", "bad\\udcffname"),
        ("bell\x07", "bell\\x07"),
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert printable(raw) == shown


# ---- the runner ------------------------------------------------------------------------------------------


def test_a_command_that_floods_is_stopped_at_the_cap() -> None:
    started = time.monotonic()
    with pytest.raises(CommandError, match="more than 10000 bytes") as caught:
        Runner().run(["yes"], timeout=20, max_output=10000)
    assert caught.value.failed_to_run and time.monotonic() - started < 5


def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    with pytest.raises(CommandError, match="timed out") as caught:
        Runner().run(["sh", "-c", f"sleep 60 & echo $! > {marker}; wait"], timeout=1)
    assert caught.value.failed_to_run
    child = int(marker.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_commands_share_the_pass_deadline_and_feed_its_heartbeat() -> None:
    beats: list[float] = []
    budget = pass_deadline.Deadline(2.5, heartbeat=lambda: beats.append(time.monotonic()))
    runner = Runner()
    started = time.monotonic()
    with pass_deadline.bounded(budget):
        with pytest.raises(CommandError, match=r"timed out after 2\.5"):
            runner.run(["sleep", "30"], timeout=30)
        with pytest.raises(CommandError, match="not started: the pass used up"):
            runner.run(["true"])
    assert time.monotonic() - started < 4
    assert len(beats) >= 2  # fed while the command ran, not only before it
    assert runner.run(["true"]).ok  # outside the pass: no deadline


def test_large_stdin_and_output_both_ways() -> None:
    data = "x" * 300_000
    result = Runner().run(["cat"], stdin=data, max_output=1 << 20)
    assert result.stdout == data


def test_testparm_without_an_answer_is_unavailable_not_a_verdict(tmp_path: Path) -> None:
    conf = tmp_path / "smb.conf"
    conf.write_text("[global]\n")
    assert run_testparm(Runner(), conf).ok
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "testparm").write_text("#!/bin/sh\necho garbage\nexit 0\n")
    (fake / "testparm").chmod(0o755)
    env_path = os.environ["PATH"]
    os.environ["PATH"] = f"{fake}:{env_path}"
    try:
        result = run_testparm(Runner(), conf)
    finally:
        os.environ["PATH"] = env_path
    assert not result.ok and result.unavailable and "no recognisable answer" in result.errors[0]


# ---- the state store on a full disk ---------------------------------------------------------------------


def test_a_full_database_never_raises_and_everything_is_written_once_it_fits(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.load()
    store.set_applied(spec("first", "/srv/first"))
    store.commit()
    db = store._connect()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "database or disk is full"
    for index in range(200):
        store.set_applied(spec(f"share{index}", f"/srv/{'x' * 500}{index}"))
    store.commit()
    assert store.unsaved and store.error and "full" in store.error
    assert len(store.applied) == 201  # memory is the truth meanwhile
    store._connect().execute("PRAGMA max_page_count=1073741823")
    store.commit()
    assert not store.unsaved and store.error is None
    store.close()
    again = StateStore(tmp_path)
    again.load()
    assert len(again.applied) == 201 and not again.lost


@pytest.mark.parametrize("damage", ["zeroed", "truncated", "deleted"])
def test_lost_state_is_told_apart_from_a_first_start(tmp_path: Path, damage: str) -> None:
    fresh = StateStore(tmp_path)
    fresh.load()
    assert fresh.lost  # a first start looks the same from inside; the reconciler adopts what is live
    fresh.set_applied(spec("a", "/srv/a"))
    fresh.close()
    kept = StateStore(tmp_path)
    kept.load()
    assert not kept.lost and "a" in kept.applied
    kept.close()
    database = tmp_path / "state.sqlite"
    if damage == "deleted":
        database.unlink()
    elif damage == "truncated":
        database.write_bytes(b"")
    else:
        database.write_bytes(b"\0" * 8192)
    lost = StateStore(tmp_path)
    lost.load()
    assert lost.lost and lost.applied == {}
    assert lost.adopt(spec("a", "/srv/a")) and not lost.adopt(spec("a", "/srv/a"))
    assert "a.toml" in lost.lastgood


# ---- monotonic backoff -----------------------------------------------------------------------------------


def test_a_wall_clock_step_does_not_move_a_retry(tmp_path: Path) -> None:
    from smbgw_agent.reconcile.backoff import Backoff

    backoff = Backoff()
    monotonic = 100.0
    attempt = backoff.failed("x", monotonic, "boom")
    assert attempt.retry_at == 102.0
    # The reconciler asks with the monotonic clock only; the wall clock is not an input.
    assert backoff.waiting("x", 101.0) and not backoff.waiting("x", 102.0)


# ---- what status calls a problem --------------------------------------------------------------------------


def test_status_problems_cover_every_kind_of_trouble() -> None:
    healthy = {"pass": {"ok": True}, "config": {"problems": []}, "degraded": {},
               "shares": {"a": {"state": "served"}}, "files": {"a.toml": {"valid": True}}}
    assert status_problems(healthy) == []
    assert status_problems({**healthy, "pass": {"ok": False}})
    assert status_problems({**healthy, "config": {"problems": ["x"]}})
    assert status_problems({**healthy, "degraded": {"state": "disk full"}})
    for state in ("failed", "refused", "storage-missing"):
        assert status_problems({**healthy, "shares": {"a": {"state": state}}})
    assert status_problems({**healthy, "files": {"a.toml": {"valid": False}}})
    # Garbage in a status file is a problem, not a crash.
    assert status_problems({"pass": "x", "shares": [1], "files": {"f": 3}}) == ["f is invalid"]


def test_sqlite_reports_full_as_operational_error(tmp_path: Path) -> None:
    """The store tells a full disk (retry) from a corrupt file (set aside) by error class."""
    db = sqlite3.connect(tmp_path / "x.sqlite")
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("PRAGMA max_page_count=2")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 4000,)] * 10)
    (tmp_path / "bad.sqlite").write_bytes(b"\0" * 4096)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        sqlite3.connect(tmp_path / "bad.sqlite").execute("SELECT 1 FROM sqlite_master").fetchall()
    assert not isinstance(caught.value, sqlite3.OperationalError)


def test_the_agent_process_raises_its_own_file_limit(tmp_path: Path) -> None:
    code = (
        "import resource; from smbgw_agent.daemon import raise_file_limit; raise_file_limit(); "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    result = subprocess.run(
        ["prlimit", "--nofile=1024:8192", "--", sys.executable, "-c", code],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )
    assert int(result.stdout) == 8192


# ---- the metrics server's bounds ---------------------------------------------------------------------------


def test_the_metrics_server_caps_connections_and_cuts_slow_ones() -> None:
    import socket

    from prometheus_client import CollectorRegistry

    from smbgw_agent.observe.metrics_http import ExpositionApp, MetricsServer

    app = ExpositionApp(CollectorRegistry(), lambda: 1)
    server = MetricsServer(app, "127.0.0.1", 0, max_connections=3, request_deadline=1.5)
    server.start()
    try:
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
        for sock in slow:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        extra.settimeout(2)
        assert extra.recv(1) == b""  # over the cap: closed at once
        extra.close()
        time.sleep(2.0)  # past the request deadline: the reaper cut the slow ones
        cut = 0
        for sock in slow:
            sock.settimeout(1)
            try:
                if sock.recv(65536) == b"":
                    cut += 1
            except ConnectionResetError:
                cut += 1
            sock.close()
        assert cut == 3 and server.server.reaped >= 3 and server.server.refused >= 1
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as ok:
            ok.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert ok.recv(12).startswith(b"HTTP/1.0 200")
    finally:
        server.stop()


# ---- native mode: what is live can be read back, caches follow the shares ------------------------------------


def test_a_fragment_carries_its_declaration() -> None:
    from smbgw_agent.platform.pluginhost import load_target

    native = load_target("smbgw_plugins.mode_native:NativeModePlugin")  # also from a bare checkout
    module = sys.modules[type(native).__module__]
    live_spec, render_share = module.live_spec, module.render_share

    share = ShareSpec(name="Fin", file="fin.toml", path="/srv/fin", comment="x [y] z", valid_users=("a",))
    text = render_share(share, Path("/root/srv/fin"))
    assert live_spec(text) == share
    assert live_spec(text.replace("smbgw-spec: {", "smbgw-spec: {broken")) is None
    assert live_spec("[x]\npath = /a\n") is None


# ---- no exception escapes a pass -----------------------------------------------------------------


def test_an_internal_error_is_counted_and_the_next_pass_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smbgw_agent.effects.services import ServiceControl
    from smbgw_agent.platform.pluginhost import PluginHost
    from smbgw_agent.reconcile.reconciler import Reconciler

    root = tmp_path / "root"
    (root / "etc/smbgw/shares.d").mkdir(parents=True)
    runner = Runner()
    rec = Reconciler(
        Paths.under(root), AgentConfig(node="n"), PluginHost({}), ServiceControl(runner, use_systemd=False), runner,
    )

    def explode() -> None:
        raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(rec.scanner, "scan", explode)
    report = rec.run_pass()
    assert not report.ok and "internal error" in report.errors[0]
    assert rec.internal_errors == 1 and rec.snapshot is not None and rec.snapshot["internal_errors"] == 1
    monkeypatch.undo()
    assert rec.run_pass().ok


def test_a_registry_that_cannot_be_listed_keeps_the_last_listing_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`net conf listshares` failing, hanging or missing is an ordinary error: share names
    are still checked against the registry's last good listing (not against none, which
    would let a share file take a registry share's name), and the log says so once."""
    paths = Paths.under(tmp_path)
    paths.smb_conf.parent.mkdir(parents=True)
    paths.smb_conf.write_text("[global]\n\tinclude = registry\n")
    answers: list[list[str] | Exception] = [
        ["RegDocs"], CommandError("net conf listshares: timed out after 10s"),
        CommandError("net conf listshares: timed out after 10s"), ["Other"],
    ]

    def listing() -> list[str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    scanner = ShareScanner(paths, PluginHost({}), AgentConfig(node="n", allowed_roots=("/srv",)), listing)
    seen = []
    for _ in range(4):
        scanner.forget()  # what every full pass does
        seen.append(sorted(scanner.admin_shares().sections))
    assert seen == [["regdocs"], ["regdocs"], ["regdocs"], ["other"]]
    failures = [r.getMessage() for r in caplog.records
                if "cannot list the shares of Samba's registry" in r.getMessage()]
    assert len(failures) == 1 and "timed out" in failures[0] and "(1 shares)" in failures[0], failures
    assert any("listed again" in r.getMessage() for r in caplog.records)
    paths.smb_conf.write_text("[global]\n\tregistry shares = no\n")
    scanner.forget()
    assert scanner.admin_shares().sections == {} and answers == [], "not asked when the registry is not read"
