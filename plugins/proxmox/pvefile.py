"""Reading a file Proxmox keeps (on pmxcfs, /etc/pve): bounded, decoded, and every way it
can fail turned into the reader's own error, so a caller handles one kind."""

from __future__ import annotations

from pathlib import Path

from smbgw_agent.effects.fileio import TooLarge, read_limited


def read_pve_file(path: Path, limit: int, error: type[ValueError]) -> str | None:
    """The text of `path`, None when it does not exist; `error` when it is larger than
    `limit` bytes or cannot be read."""
    try:
        data = read_limited(path, limit)
    except TooLarge as exc:
        raise error(str(exc)) from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None
    return None if data is None else data.decode("utf-8", errors="replace")
