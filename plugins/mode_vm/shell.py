"""A VM as other plugins reach it (`smbgw_agent.platform.guests.GuestShell`): commands and
files through the QEMU guest agent (`qm guest exec`).

A file is written by `sh -c` reading it from stdin into a temporary file beside the
target and renaming it into place: a guest that crashes mid-write keeps the old file,
and the content (a passdb entry) is never in argv."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence

from smbgw_agent.effects.runner import CommandError, Completed

from .qm import EXEC_TIMEOUT, Qm

_WRITE = 'umask 077; t="$1.smbgw-new"; cat > "$t" && chmod "$2" "$t" && mv -f "$t" "$1"'


class VmShell:
    def __init__(self, qm: Qm, vmid: int) -> None:
        self.qm = qm
        self.vmid = vmid
        self.target = f"vm:{vmid}"

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            stdin: str | None = None, secrets: Iterable[str] = (), env: dict[str, str] | None = None) -> Completed:
        settings = [f"{name}={value}" for name, value in (env or {}).items() if name != "PATH"]
        command = ["env", *settings, *argv] if settings else list(argv)
        limit = EXEC_TIMEOUT if timeout is None else max(1, int(timeout))
        result = self.qm.guest_exec(self.vmid, command, stdin=stdin, timeout=limit, check=False, secrets=secrets)
        completed = Completed(argv=tuple(command), returncode=result.exitcode, stdout=result.out, stderr=result.err,
                              duration=0.0)
        if check and not completed.ok:
            said = (result.err.strip() or result.out.strip()).splitlines()[-3:]
            raise CommandError(f"{shlex.join(command)[:200]} in VM {self.vmid}: exit {result.exitcode}: "
                               f"{' / '.join(said) or 'no output'}", completed)
        return completed

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        self.qm.guest_exec(self.vmid, ["sh", "-c", _WRITE, "sh", path, f"{mode:04o}"], stdin=text)
