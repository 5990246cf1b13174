"""What this node's agent added to its interfaces, and whether the node is drained, in a
file of its own (`/var/lib/smbgw/vip.json`).

Not in the agent's state database: that is written once per pass, at its end, and an
agent killed between adding an address and the end of that pass would forget it ever
added it; from then on the address would look like someone else's and never be removed.
The ledger is written (and synced) before an address is added and after it is removed,
so it never lacks an address the agent added: at worst it lists one it did not get to
add, which the next pass finds missing and either adds or forgets.

Read back as untrusted input: an entry that is not what the agent writes is left out, so
the address it names counts as someone else's and is never touched; a file that cannot
be read at all is reported and read as empty, with the same effect.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

from smbgw_agent.effects.fileio import atomic_write

log = logging.getLogger(__name__)
FILE = "vip.json"
MAX_BYTES = 4 << 20


def _well_formed(address: object, record: object) -> bool:
    if not isinstance(address, str) or not isinstance(record, dict) or not isinstance(record.get("interface"), str):
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    prefixlen = record.get("prefixlen")
    return (isinstance(prefixlen, int) and not isinstance(prefixlen, bool)
            and 0 <= prefixlen <= ip.max_prefixlen and str(ip) == address)


def well_formed_owned(value: object) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        return {}
    return {address: record for address, record in value.items() if _well_formed(address, record)}


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: str | None = None

    def _read(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            document = json.loads(data)
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            self.problem = None
            return {}
        except (OSError, ValueError, RecursionError) as exc:
            problem = f"{self.path} cannot be read ({exc}); addresses it recorded are left alone"
            if problem != self.problem:
                log.error("%s", problem)
            self.problem = problem
            return {}
        self.problem = None
        return document

    def owned(self) -> dict[str, dict[str, Any]]:
        return well_formed_owned(self._read().get("owned"))

    def drained(self) -> dict[str, Any] | None:
        value = self._read().get("drained")
        return value if isinstance(value, dict) else None

    def _write(self, owned: dict[str, dict[str, Any]], drained: dict[str, Any] | None) -> None:
        document = {"owned": owned, "drained": drained}
        atomic_write(self.path, json.dumps(document, sort_keys=True, indent=1) + "\n", mode=0o600)

    def set_owned(self, owned: dict[str, dict[str, Any]]) -> None:
        self._write(owned, self.drained())

    def set_drained(self, drained: dict[str, Any] | None) -> None:
        self._write(self.owned(), drained)
