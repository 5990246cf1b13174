"""The node's own files the plugin reads or writes: /etc/krb5.conf (written in place
where the unit may not replace it) and the local ids of /etc/passwd and /etc/group."""

from __future__ import annotations

import errno
from pathlib import Path

from smbgw_agent.effects.fileio import replace_or_rewrite

from . import render

MAX_ID_FILE = 16 << 20


def write_system_file(target: Path, data: str | bytes) -> None:
    """krb5.conf: atomically where /etc is writable, else in place (see
    `fileio.replace_or_rewrite`), with what to do when the file does not exist yet."""
    try:
        replace_or_rewrite(target, data)
    except FileNotFoundError:
        raise OSError(errno.ENOENT, f"{target} does not exist and the agent may not create it (its unit may "
                      f"write only an existing {target}): install krb5-config, or create the file, and restart "
                      "smbgw-agent; or set manage_krb5_conf = false") from None


def generated_by_us(text: str) -> bool:
    """The krb5.conf is the one the plugin wrote (its header), not an administrator's."""
    return text.startswith(render.KRB5_HEADER)


def local_ids(path: Path) -> list[int]:
    """The third field (uid or gid) of /etc/passwd or /etc/group, bounded and tolerant:
    a line that is not an entry is skipped."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_ID_FILE)
    except OSError:
        return []
    ids = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit() and len(fields[2]) <= 10:
            ids.append(int(fields[2]))
    return ids
