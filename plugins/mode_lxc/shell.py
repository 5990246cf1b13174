"""A container as other plugins reach it (`smbgw_agent.platform.guests.GuestShell`):
commands through `pct exec`, files through `pct push`.

`pct exec` starts the command with a clean environment of Proxmox's choosing (its own
PATH, no locale); the environment a tool asks for is added with `env NAME=VALUE` in front
of its argv, except PATH, which is the node's and names the node's directories."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from smbgw_agent.effects.runner import Completed

from .pct import QUICK_TIMEOUT, Pct


class ContainerShell:
    def __init__(self, pct: Pct, vmid: int) -> None:
        self.pct = pct
        self.vmid = vmid
        self.target = f"lxc:{vmid}"

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            stdin: str | None = None, secrets: Iterable[str] = (), env: dict[str, str] | None = None) -> Completed:
        settings = [f"{name}={value}" for name, value in (env or {}).items() if name != "PATH"]
        command = ["env", *settings, *argv] if settings else list(argv)
        return self.pct.exec(self.vmid, command, timeout=QUICK_TIMEOUT if timeout is None else timeout, stdin=stdin,
                             check=check, secrets=secrets)

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        with tempfile.TemporaryDirectory(prefix="smbgw-lxc-") as folder:
            source = Path(folder) / "file"
            source.write_text(text)
            self.pct.push(self.vmid, str(source), path, perms=f"{mode:04o}")
