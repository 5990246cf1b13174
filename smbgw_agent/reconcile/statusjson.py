"""status.json, written after every pass without re-encoding what did not change.

At 10,000 shares the snapshot holds 20,000 per-share and per-file entries, and encoding
them all took a third of a one-change pass. The reconciler reuses an entry's dict while
nothing about that share changed, so an entry's encoding can be reused too: it is kept
with the dict it was made from and used again only for that very object (identity, not
equality, so a reused id of a freed dict can never hand back a stale text).

The output is byte-identical to ``json.dumps(snapshot, separators=(",", ":"))``.
"""

from __future__ import annotations

import json
from typing import Any

# The snapshot's maps that grow with the number of shares.
LARGE_MAPS = ("shares", "files")

_encode = json.JSONEncoder(separators=(",", ":")).encode


class StatusEncoder:
    """Encodes successive snapshots, remembering each large map entry's text (`"name":{...}`)."""

    def __init__(self) -> None:
        self._memo: dict[str, dict[str, tuple[object, str]]] = {section: {} for section in LARGE_MAPS}

    def encode(self, snapshot: dict[str, Any]) -> str:
        parts = []
        for key, value in snapshot.items():
            text = self._encode_map(key, value) if key in LARGE_MAPS else _encode(value)
            parts.append(f"{_encode(key)}:{text}")
        return "{" + ",".join(parts) + "}"

    def _encode_map(self, section: str, entries: object) -> str:
        if not isinstance(entries, dict):
            return _encode(entries)
        memo, fresh = self._memo[section], {}
        parts = []
        for name, entry in entries.items():
            known = memo.get(name)
            if known is None or known[0] is not entry:
                known = (entry, f"{_encode(name)}:{_encode(entry)}")
            fresh[name] = known
            parts.append(known[1])
        self._memo[section] = fresh
        return "{" + ",".join(parts) + "}"
