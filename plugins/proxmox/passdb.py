"""The share's local users inside its guest (container or VM), copied from the node's own Samba passdb.

Why copy: an administrator manages a share's local users once, on the node, with
`smbpasswd -a` (as for a native share). The container gets exactly the users of the
share's `valid_users` that are plain names (not `@group`, not `DOMAIN\\user`), each:

- as a Unix user with the node's uid for that name (the id map passes those uids
  through, so a file the user writes is the user's on the host too);
- with the node's passdb entry (the NT hash), imported by `pdbedit` from a 0600 file
  pushed into the container and removed right after. No password is ever in clear, on a
  command line, in a log, in status or in metrics: `pdbedit -L -w -u NAME` on the node
  gives the entry in smbpasswd format, which `pdbedit -i smbpasswd:FILE` reads inside.

A name in `valid_users` without a passdb entry on the node fails the share with the
command that adds it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.platform.guests import GuestShell

PASSDB_IMPORT = "/root/.smbgw-passdb"
GUEST_PASSDB = "tdbsam:/var/lib/samba/private/passdb.tdb"
_HASH = re.compile(r"^(?:[0-9A-F]{32}|X{32})$")
_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$")


class UserError(ValueError):
    """A share user cannot be copied into its container."""


@dataclass(frozen=True)
class PassdbEntry:
    name: str
    uid: int
    line: str  # smbpasswd format: the secret part; never logged

    def __repr__(self) -> str:
        return f"PassdbEntry({self.name!r}, uid={self.uid})"


def local_names(valid_users: Iterable[str]) -> list[str]:
    """The plain user names of `valid_users`: no groups (@, +, &), no domain users."""
    return sorted({name for name in valid_users if name and name[0] not in "@+&" and "\\" not in name})


def parse_entry(text: str, name: str) -> PassdbEntry:
    """One line of `pdbedit -L -w -u NAME` (smbpasswd format:
    name:uid:LM hash:NT hash:[flags]:LCT-hex:)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise UserError(f"pdbedit printed {len(lines)} lines for {name}, not one")
    fields = lines[0].split(":")
    if len(fields) != 7 or fields[0] != name or not (fields[1].isascii() and fields[1].isdigit()) \
            or len(fields[1]) > 10 or not _HASH.match(fields[2]) or not re.match(r"^[0-9A-F]{32}$", fields[3]) \
            or not fields[4].startswith("[") or not fields[5].startswith("LCT-") or fields[6] != "":
        raise UserError(f"pdbedit's entry for {name} is not in smbpasswd format (or has no NT hash)")
    return PassdbEntry(name, int(fields[1]), lines[0])


def read_entries(runner: Runner, smb_conf: Path, names: Sequence[str]) -> list[PassdbEntry]:
    entries = []
    for name in names:
        if not _NAME.match(name):
            raise UserError(f"{name!r} cannot be copied into a container as a Unix user name")
        try:
            result = runner.run(["pdbedit", "-s", str(smb_conf), "-L", "-w", "-u", name], timeout=30)
        except CommandError as exc:
            raise UserError(f"user {name} of valid_users is not in this node's Samba passdb ({exc}): add it with "
                            f"smbpasswd -a {name}; the agent copies it into the container") from None
        entries.append(parse_entry(result.stdout, name))
    return entries


def digest(entries: Sequence[PassdbEntry]) -> str:
    return hashlib.sha256("\n".join(sorted(entry.line for entry in entries)).encode()).hexdigest()


def copy_into(shell: GuestShell, entries: Sequence[PassdbEntry]) -> None:
    """Unix users with the node's uids, then their passdb entries, inside the guest."""
    for entry in entries:
        found = shell.run(["id", "-u", entry.name], check=False)
        if found.returncode != 0:
            shell.run(["useradd", "--no-create-home", "--uid", str(entry.uid), "--shell", "/usr/sbin/nologin",
                       entry.name])
        elif found.stdout.strip() != str(entry.uid):
            raise UserError(f"guest {shell.target} has a user {entry.name} with uid {found.stdout.strip()[:12]}, the "
                            f"node has uid {entry.uid}: remove that user inside")
    if not entries:
        return
    shell.write_file(PASSDB_IMPORT, "".join(f"{entry.line}\n" for entry in entries), mode=0o600)
    try:
        shell.run(["pdbedit", "-i", f"smbpasswd:{PASSDB_IMPORT}", "-e", GUEST_PASSDB])
    finally:
        shell.run(["rm", "-f", PASSDB_IMPORT], check=False)
