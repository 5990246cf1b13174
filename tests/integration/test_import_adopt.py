"""`smbgwctl import --adopt`: the agent takes hand-written shares over from the smb.conf
smbd reads, with no moment in which a share is missing.

Real agent, real smbd, real testparm. While the adoption runs, a client connects to the
adopted share again and again (each smbclient is a new connection, so a new smbd process
that reads the configuration as it is at that moment); not one connection may fail.
Afterwards the section is gone from smb.conf, a timestamped backup holds the file as it
was, the agent serves the share with the same effective parameters, and a share the
share file could not carry whole (`force user`) stays in smb.conf, with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from smbgw_agent.effects.runner import Runner
from smbgw_agent.importer import adopt, adoptable, import_shares, judge
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.smbconf import read_admin_shares
from tests.integration.test_import import section_of
from tests.support.procs import RestartableAgent, smbgwctl, write_agent_toml

pytestmark = pytest.mark.integration


def admin_sections(box: Sandbox) -> str:
    return (f"\n[Projects]\n\tpath = {box.root}/srv/smb/projects\n\tcomment = Project files\n\tread only = no\n"
            f"\tvalid users = {box.user}\n\tcreate mask = 0660\n"
            f"\n[Archive]\n\tpath = {box.root}/srv/smb/archive\n\tforce user = root\n")


class Prober(threading.Thread):
    """A client that connects to `share` again and again until stopped."""

    def __init__(self, box: Sandbox, share: str) -> None:
        super().__init__(daemon=True)
        self.box, self.share = box, share
        self.stopping = threading.Event()
        self.connections = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stopping.is_set():
            done = self.box.smbclient(self.share, "ls")
            self.connections += 1
            if done.returncode != 0:
                self.failures.append((done.stdout + done.stderr).strip()[-300:])


@pytest.fixture
def adopting(sandbox: Sandbox) -> Sandbox:
    write_agent_toml(sandbox, "allow_custom_options = true")
    for name in ("projects", "archive"):
        sandbox.share_dir(name)
    with open(sandbox.smb_conf, "a") as conf:
        conf.write(admin_sections(sandbox))
    subprocess.run(["smbcontrol", "-s", str(sandbox.smb_conf), "smbd", "reload-config"], check=True, timeout=30)
    assert sandbox.smbclient("Projects", "ls").returncode == 0
    return sandbox


def test_adopt_takes_a_share_over_with_no_failed_connection(adopting: Sandbox, restartable: RestartableAgent) -> None:
    box = adopting
    restartable.start()
    original = box.smb_conf.read_text()
    before = section_of(box.smb_conf, "Projects")
    prober = Prober(box, "Projects")
    prober.start()
    try:
        done = smbgwctl(box.root, "import", "--adopt", "--json")
    finally:
        prober.stopping.set()
        prober.join(60)
    report = json.loads(done.stdout)
    print(f"\n[adopt] {prober.connections} connections to [Projects] during the adoption, "
          f"{len(prober.failures)} failed")
    assert prober.failures == [], prober.failures[:3]
    assert prober.connections >= 3
    assert done.returncode == 1, done.stdout + done.stderr  # [Archive] still needs a hand
    assert report["error"] is None and report["adopted"] == ["Projects"], report
    assert "force user" in report["kept"]["Archive"], report
    (backup,) = report["backups"]
    assert ".smbgw-adopt-" in backup and Path(backup).read_text() == original

    conf = box.smb_conf.read_text()
    assert "[Projects]" not in conf and "[Archive]" in conf and "handed over" not in conf
    share_file = box.shares_dir / "projects.toml"
    assert share_file.is_file(), sorted(p.name for p in box.shares_dir.iterdir())
    assert (restartable.status() or {})["shares"]["Projects"]["state"] == "served"
    assert section_of(box.smb_conf, "Projects") == before
    assert box.smbclient("Projects", "ls").returncode == 0
    assert box.smbclient("Archive", "ls").returncode == 0

    again = smbgwctl(box.root, "import", "--adopt", "--json")
    assert json.loads(again.stdout)["adopted"] == [], again.stdout  # nothing left to take over


def test_adopt_without_a_running_agent_changes_nothing(adopting: Sandbox) -> None:
    box = adopting
    original = box.smb_conf.read_text()
    done = smbgwctl(box.root, "import", "--adopt", "--json")
    assert done.returncode == 3 and "does not answer" in done.stderr, done.stdout + done.stderr
    assert box.smb_conf.read_text() == original
    assert not list(box.smb_conf.parent.glob("smb.conf.smbgw-adopt-*"))
    assert not list(box.shares_dir.glob("*.toml"))
    assert box.smbclient("Projects", "ls").returncode == 0


def test_adopt_refuses_another_file_and_another_directory(adopting: Sandbox, tmp_path: Path) -> None:
    other = tmp_path / "other.conf"
    other.write_text(adopting.smb_conf.read_text())
    assert smbgwctl(adopting.root, "import", "--adopt", "--from", str(other)).returncode == 2
    assert smbgwctl(adopting.root, "import", "--adopt", "--to", str(tmp_path)).returncode == 2


def test_an_agent_that_does_not_take_over_leaves_everything_as_it_was(
    adopting: Sandbox, restartable: RestartableAgent
) -> None:
    """The agent answers the first request, then stops answering (SIGSTOP) before it
    serves the adopted share: the marks come out again, the share files go, and the
    hand-written section serves as before."""
    box = adopting
    restartable.start()
    original = box.smb_conf.read_text()
    paths = Paths.under(box.root)
    imported, _ = import_shares(paths, box.smb_conf, Runner())
    chosen, _ = adoptable(imported, judge(paths, imported))
    assert [item.name for item in chosen] == ["Projects"]
    assert restartable.proc is not None
    os.kill(restartable.proc.pid, signal.SIGSTOP)
    try:
        result = adopt(paths, box.smb_conf, box.shares_dir, chosen, read_admin_shares(box.smb_conf, paths.samba_dir),
                       Runner(), wait=2)
    finally:
        os.kill(restartable.proc.pid, signal.SIGCONT)
    assert result.adopted == [] and result.error and "as it was" in result.error, result
    assert box.smb_conf.read_text() == original
    assert not list(box.shares_dir.glob("*.toml"))
    assert box.smbclient("Projects", "ls").returncode == 0
