"""Proxmox HA's resource list, `/etc/pve/ha/resources.cfg`, read as pve-ha-manager writes
it (a pve-common SectionConfig: a `TYPE: NAME` header per resource, then one tab-indented
`key value` line per property, sections apart by a blank line):

```
ct: 9000
	comment smbgw-agent share finance
	state started
```

The resource id is `TYPE:NAME` (`ct:9000`, `vm:3100`). Read directly rather than through
`ha-manager config`: one small file, no Perl start, and the same answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .pvefile import read_pve_file

RESOURCES = "/etc/pve/ha/resources.cfg"
MAX_SIZE = 4 << 20
_HEADER = re.compile(r"^(?P<type>[a-z]+):\s*(?P<name>\S+)\s*$")
_PROPERTY = re.compile(r"^\s+(?P<key>[a-z_]+)(?:\s+(?P<value>.*?))?\s*$")


class HaConfigError(ValueError):
    pass


@dataclass(frozen=True)
class HaResource:
    sid: str  # "ct:9000"
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return self.properties.get("state", "started")  # pve-ha-manager's default


def parse_resources(text: str) -> dict[str, HaResource]:
    """Resources by id; a line that fits neither form is an error (a file we do not
    understand is not read as "nothing is HA-managed")."""
    found: dict[str, HaResource] = {}
    current: HaResource | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            if not line.strip():
                current = None
            continue
        header = _HEADER.match(line)
        if header:
            current = HaResource(f"{header['type']}:{header['name']}")
            found[current.sid] = current
            continue
        prop = _PROPERTY.match(line)
        if prop and current is not None:
            current.properties[prop["key"]] = prop["value"] or ""
            continue
        raise HaConfigError(f"{RESOURCES} line {number}: cannot read {line[:80]!r}")
    return found


def read_resources(path: Path) -> dict[str, HaResource]:
    text = read_pve_file(path, MAX_SIZE, HaConfigError)
    return {} if text is None else parse_resources(text)
