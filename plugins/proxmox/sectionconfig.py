"""pve-common's SectionConfig text format, which Proxmox uses for its cluster-wide lists
(/etc/pve/storage.cfg, /etc/pve/ha/resources.cfg, ...): a `TYPE: ID` header line per
section, then one `key value` line per property indented by white space, sections apart
by a blank line; `#` starts a comment line.

```
dir: local
	path /var/lib/vz
	content iso,vztmpl,backup
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HEADER = re.compile(r"^(?P<type>[a-z][a-z0-9_-]*):\s*(?P<id>\S+)\s*$")
_PROPERTY = re.compile(r"^\s+(?P<key>[a-z][a-z0-9_-]*)(?:\s+(?P<value>.*?))?\s*$")


class SectionConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Section:
    type: str
    id: str
    properties: dict[str, str] = field(default_factory=dict)


def parse_sections(text: str, name: str) -> list[Section]:
    """Sections in file order. A line that fits no form is an error (`name` says which
    file): a file that is not understood must not read as an empty list."""
    found: list[Section] = []
    current: Section | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            current = None
            continue
        if line.lstrip().startswith("#"):
            continue
        header = _HEADER.match(line)
        if header:
            current = Section(header["type"], header["id"])
            found.append(current)
            continue
        prop = _PROPERTY.match(line)
        if prop and current is not None:
            current.properties[prop["key"]] = prop["value"] or ""
            continue
        raise SectionConfigError(f"{name} line {number}: cannot read {line[:80]!r}")
    return found
