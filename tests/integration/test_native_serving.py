"""Drop a file, smbd serves it: the product's core promise, with real smbd and smbclient."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from devtools.sandbox import Sandbox
from smbgw_agent.observe.smbstatus import ShareActivity, parse_smbstatus
from tests.support.agent import AgentProcess, served, wait_for, write_share

pytestmark = pytest.mark.integration


def test_plain_write_is_served_and_writable(sandbox: Sandbox, agent: AgentProcess) -> None:
    data = sandbox.share_dir("finance")
    write_share(sandbox, "finance.toml", 'path = "/srv/smb/finance"\ncomment = "Finance"\n')
    wait_for(lambda: served(sandbox, "finance"))
    (sandbox.root / "upload.txt").write_text("hello smb\n")
    upload, download = sandbox.root / "upload.txt", sandbox.root / "down.txt"
    result = sandbox.smbclient("finance", f"put {upload} up.txt; get up.txt {download}")
    assert result.returncode == 0, result.stderr + result.stdout
    assert (data / "up.txt").read_text() == "hello smb\n"
    assert (sandbox.root / "down.txt").read_text() == "hello smb\n"


def test_write_then_rename_and_mv_in(sandbox: Sandbox, agent: AgentProcess) -> None:
    sandbox.share_dir("editor")
    sandbox.share_dir("moved")
    temp = sandbox.shares_dir / ".editor.toml.swp"
    temp.write_text('path = "/srv/smb/editor"\n')
    os.rename(temp, sandbox.shares_dir / "editor.toml")
    outside = sandbox.root / "moved.toml"
    outside.write_text('path = "/srv/smb/moved"\n')
    subprocess.run(["mv", str(outside), str(sandbox.shares_dir / "moved.toml")], check=True)
    wait_for(lambda: served(sandbox, "editor") and served(sandbox, "moved"))


def test_edit_changes_what_is_served_and_delete_keeps_data(sandbox: Sandbox, agent: AgentProcess) -> None:
    data = sandbox.share_dir("docs")
    (data / "keep.txt").write_text("precious")
    path = write_share(sandbox, "docs.toml", 'path = "/srv/smb/docs"\n')
    wait_for(lambda: served(sandbox, "docs"))
    path.write_text('path = "/srv/smb/docs"\nread_only = true\n')
    (sandbox.root / "x.txt").write_text("x")

    def write_refused() -> bool:
        result = sandbox.smbclient("docs", f"put {sandbox.root / 'x.txt'} x.txt")
        return result.returncode != 0 and "ACCESS_DENIED" in result.stdout + result.stderr

    wait_for(write_refused)
    path.unlink()
    wait_for(lambda: not served(sandbox, "docs"))
    assert (data / "keep.txt").read_text() == "precious"


def test_shares_dir_removed_and_recreated(sandbox: Sandbox, agent: AgentProcess) -> None:
    sandbox.share_dir("one")
    write_share(sandbox, "one.toml", 'path = "/srv/smb/one"\n')
    wait_for(lambda: served(sandbox, "one"))
    shutil.rmtree(sandbox.shares_dir)
    # A vanished shares.d (e.g. /etc/pve not mounted) keeps what is live.
    wait_for(lambda: "does not exist" in " ".join((agent.status() or {}).get("pass", {}).get("errors", [])))
    assert served(sandbox, "one")
    sandbox.shares_dir.mkdir()
    sandbox.share_dir("two")
    write_share(sandbox, "two.toml", 'path = "/srv/smb/two"\n')
    wait_for(lambda: served(sandbox, "two"))
    wait_for(lambda: not served(sandbox, "one"))


def test_this_sambas_smbstatus_json_is_understood(sandbox: Sandbox, agent: AgentProcess) -> None:
    """`smbstatus --json` changes between Samba releases (4.17 on PVE 8, 4.22 on PVE 9):
    whatever this node's Samba prints for a held session with an open file parses to the
    right numbers (the release passes run this with each release's own Samba)."""
    data = sandbox.share_dir("live")
    (data / "big.bin").write_bytes(b"x" * (4 << 20))
    write_share(sandbox, "live.toml", 'path = "/srv/smb/live"\n')
    wait_for(lambda: served(sandbox, "live"))
    holder = subprocess.Popen(
        ["smbclient", "-p", str(sandbox.port), "//127.0.0.1/live", "-U", f"{sandbox.user}%{sandbox.password}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert holder.stdin is not None
        # `open` keeps a handle until `close`: an open file smbstatus must list.
        holder.stdin.write("open big.bin\n")
        holder.stdin.flush()

        def reading() -> ShareActivity | None:
            out = subprocess.run(["smbstatus", "-s", str(sandbox.smb_conf), "--json"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout
            activity = parse_smbstatus(out)
            return activity if activity.open_files and activity.sessions else None

        activity = wait_for(reading, timeout=20)
        assert activity.sessions == {"live": 1}, activity
        assert activity.open_files == {str(data): 1}, activity
        assert activity.total_sessions == 1
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(15)
