"""Fault kits for the reliability suite: broken tools, full disks, a stepped clock.

Every plugin runs external tools. `ToolShed` gives the agent a PATH of its own where each
tool is the real one or a fault of one of the classes every plugin must survive:

    missing   the tool is not installed
    failing   it exits 1 with a message
    hanging   it never returns
    garbage   it exits 0 with random bytes on stdout and stderr
    flood     it writes without end (hundreds of MB if nobody stops it)

Each fault script records its calls in `<shed>/calls.log`, so a test can count them.
Plugins declare the tools they run in `PLUGIN_TOOLS`; a new plugin adds its own and the
fault matrix in `test_tool_faults.py` covers it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

FAULT_KINDS = ("missing", "failing", "hanging", "garbage", "flood")

# The external tools each plugin runs, by the plugin's entry-point name.
PLUGIN_TOOLS: dict[str, tuple[str, ...]] = {
    "mode_native": ("testparm", "smbcontrol", "smbstatus"),
    # btrfs first: the agent-level matrix runs it on a real file system (test_quota_faults).
    "quota": ("btrfs", "zfs", "xfs_quota", "chattr", "setquota", "repquota"),
    # btrfs and restic run through the whole agent (test_backup_faults); zfs at the
    # backend's boundary; proxmox-backup-client through its test stand-in.
    "backup": ("btrfs", "restic", "zfs", "proxmox-backup-client"),
    # At the plugin's boundary (test_ctdb_faults): the agent-level matrix would need a
    # cluster. The plugin's testparm calls are mode_native's case above.
    "ctdb": ("ctdb",),
    # At the plugin's boundary (test_ad_faults): the agent-level matrix would need a DC.
    "ad": ("net", "wbinfo", "dig"),
    # At the plugin's boundary (test_lxc_faults): pct is Proxmox's; through its test
    # stand-in the whole mode runs in test_mode_lxc. pdbedit reads the node's passdb;
    # ha-manager registers a container with Proxmox HA.
    "mode_lxc": ("pct", "pdbedit", "ha-manager"),
    # At the plugin's boundary (test_vm_faults): qm and pvesh are Proxmox's; through their
    # test stand-ins the whole mode runs in test_mode_vm. Its pdbedit and ha-manager calls
    # are the shared code of mode_lxc's case.
    "mode_vm": ("qm", "pvesh", "cloud-init"),
}

_SCRIPTS = {
    "failing": 'echo "fault injected: {tool} failed" >&2\nexit 1\n',
    "hanging": "exec sleep 3600\n",
    "garbage": "head -c 4096 /dev/urandom\nhead -c 2048 /dev/urandom >&2\nexit 0\n",
    "flood": 'exec yes "fault injected: garbage line from {tool}"\n',
}


class ToolShed:
    """A directory to use as the agent's whole PATH: real tools linked, faults swapped in."""

    def __init__(self, directory: Path, tools: tuple[str, ...]) -> None:
        self.directory = directory
        self.tools = tools
        self.calls = directory / "calls.log"
        directory.mkdir(parents=True, exist_ok=True)
        for tool in (*tools, "sh", "sleep", "head", "yes", "cat"):
            self.restore(tool)

    @property
    def path(self) -> str:
        return str(self.directory)

    def restore(self, tool: str) -> None:
        real = shutil.which(tool, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        if real is None:
            raise RuntimeError(f"{tool} is not installed on this machine")
        target = self.directory / tool
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        target.symlink_to(real)

    def break_tool(self, tool: str, kind: str) -> None:
        target = self.directory / tool
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        if kind == "missing":
            return
        body = _SCRIPTS[kind].format(tool=tool)
        target.write_text(f'#!/bin/sh\necho "{tool} $*" >> {self.calls}\n{body}')
        target.chmod(0o755)

    def count(self, tool: str) -> int:
        if not self.calls.exists():
            return 0
        return sum(1 for line in self.calls.read_text().splitlines() if line.split(" ", 1)[0] == tool)


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "1m") -> Iterator[Path]:
    """Mount a tmpfs of `size` on `where` (created if needed); unmounted however the test
    ends. Used to make a directory the agent writes to fill up."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode == 0:
                break
            subprocess.run(["sleep", "0.1"], check=False)
        else:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system holding `directory` to the last byte; returns the filler file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 64, 1):  # big writes first, then the last crumbs
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler

