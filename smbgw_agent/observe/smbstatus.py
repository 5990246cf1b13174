"""Parsing `smbstatus --json` (Samba 4.16+) into per-share sessions and open files.

The output is parsed defensively: it is another program's output, its shape has changed
between Samba releases, and a broken or huge document must give a clear error rather
than wrong numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smbgw_agent.model.printable import printable


class SmbstatusError(ValueError):
    """The output is not the JSON document smbstatus is documented to print."""


@dataclass
class ShareActivity:
    sessions: dict[str, int] = field(default_factory=dict)  # share (as smbd names it) -> sessions
    open_files: dict[str, int] = field(default_factory=dict)  # service path -> open files
    total_sessions: int = 0
    clients: list[str] = field(default_factory=list)  # "user from address", one per session


def _table(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = document.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SmbstatusError(f"'{key}' is a {type(value).__name__}, expected an object")
    return value


def _client(session: object) -> str:
    """Who holds a session, for a person to read: "alice from 192.0.2.7"."""
    if not isinstance(session, dict):
        raise SmbstatusError("a session entry is not an object")
    user = session.get("username") or f"uid {session.get('uid', '?')}"
    where = str(session.get("remote_machine") or session.get("hostname") or "?")
    for prefix in ("ipv4:", "ipv6:"):
        if where.startswith(prefix):  # smbd writes "ipv4:192.0.2.7:51234"
            where = where[len(prefix):].rsplit(":", 1)[0]
    return printable(f"{user} from {where}")[:200]


def parse_smbstatus(text: str) -> ShareActivity:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise SmbstatusError(f"not JSON: {str(exc)[:200]}") from exc
    if not isinstance(document, dict):
        raise SmbstatusError(f"top level is a {type(document).__name__}, expected an object")
    activity = ShareActivity()
    sessions_by_share: dict[str, set[str]] = {}
    for tcon in _table(document, "tcons").values():
        if not isinstance(tcon, dict):
            raise SmbstatusError("a tree connect entry is not an object")
        service, session = tcon.get("service"), tcon.get("session_id")
        if not isinstance(service, str) or not isinstance(session, (str, int)):
            raise SmbstatusError("a tree connect lacks 'service' or 'session_id'")
        sessions_by_share.setdefault(service.casefold(), set()).add(str(session))
    activity.sessions = {share: len(ids) for share, ids in sessions_by_share.items()}
    sessions = _table(document, "sessions")
    activity.total_sessions = len(sessions)
    activity.clients = sorted(_client(entry) for entry in sessions.values())
    for entry in _table(document, "open_files").values():
        if not isinstance(entry, dict):
            raise SmbstatusError("an open file entry is not an object")
        path = entry.get("service_path")
        if isinstance(path, str):
            opens = entry.get("opens", {})
            count = len(opens) if isinstance(opens, dict) and opens else 1
            activity.open_files[path] = activity.open_files.get(path, 0) + count
    return activity
