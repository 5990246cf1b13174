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

from dataclasses import dataclass, field
from pathlib import Path

from .pvefile import read_pve_file
from .sectionconfig import SectionConfigError, parse_sections

RESOURCES = "/etc/pve/ha/resources.cfg"
MAX_SIZE = 4 << 20


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
    """Resources by id (`TYPE:ID`)."""
    try:
        sections = parse_sections(text, RESOURCES)
    except SectionConfigError as exc:
        raise HaConfigError(str(exc)) from None
    return {f"{s.type}:{s.id}": HaResource(f"{s.type}:{s.id}", s.properties) for s in sections}


def read_resources(path: Path) -> dict[str, HaResource]:
    text = read_pve_file(path, MAX_SIZE, HaConfigError)
    return {} if text is None else parse_resources(text)
