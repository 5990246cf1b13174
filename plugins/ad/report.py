"""`smbgwctl ad status` for a person: the verdict first, then one line per check."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .health import Membership
from .table import AdSettings


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))


def status_text(settings: AdSettings, view: Mapping[str, Any], membership: Membership) -> str:
    since = view.get("joined_since")
    joined = "yes" if membership.joined else "no" if membership.joined is False else "unknown"
    if since and membership.joined is not False:
        joined += f" (since {_when(float(since))})"
    lines = [f"realm {settings.realm}  workgroup {settings.workgroup}  "
             f"{'HEALTHY' if membership.healthy else 'PROBLEMS: ' + ', '.join(membership.reasons)}",
             f"  joined: {joined}",
             f"  DC in use: {membership.dc or '-'}" + (f" ({membership.dc_address})" if membership.dc_address else ""),
             f"  checked: {_when(membership.at)}"]
    for verdict in membership.verdicts:
        mark = verdict.state.upper() + (" (warning)" if verdict.warning else "")
        lines.append(f"  {verdict.check:<8} {mark:<8} {verdict.detail}")
    last = view.get("last_join")
    if isinstance(last, Mapping) and last.get("at"):
        lines.append(f"  last {last.get('kind') or 'join'}: {'ok' if last.get('ok') else 'FAILED'}: {last.get('said')}")
    for note in view.get("notes") or ():
        lines.append(f"  note: {note}")
    return "\n".join(lines)
