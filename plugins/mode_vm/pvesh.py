"""The two things the VM mode asks Proxmox's API for through `pvesh`: the node's version
(virtiofs needs Proxmox VE 8.4) and the cluster's directory mappings, which give a VM a
host directory by name (`qm set --virtiofs0 MAPPING`).

Formats (pve-manager's API schema, the same in Proxmox VE 8.4 and 9):

- `pvesh get /version --output-format json`: `{"version": "8.4.1", "release": "8.4",
  "repoid": "..."}`.
- `pvesh get /cluster/mapping/dir --output-format json`: a list of `{"id": ID,
  "description": TEXT, "map": ["node=NODE,path=/dir", ...]}`.
- `pvesh create /cluster/mapping/dir --id ID --map node=NODE,path=/dir --description T`,
  `pvesh delete /cluster/mapping/dir/ID`.

A mapping is cluster-wide with one entry per node; the agent makes one per share
(`smbgw-<share>`) with this node's entry, and removes it with the share. One it finds
under its id that it did not make (no smbgw-agent description) is the administrator's:
the share fails instead of taking it over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smbgw_agent.effects.runner import Runner

from ..proxmox.guestconf import GuestConfigError, parse_property_string

PVESH = "pvesh"
TIMEOUT = 60.0
MAX_OUTPUT = 4 << 20
VIRTIOFS_SINCE = (8, 4)
DESCRIPTION = "smbgw-agent share {share}: managed by smbgw-agent"


class PveshError(ValueError):
    """pvesh printed something that is not what the API returns."""


@dataclass(frozen=True)
class DirMapping:
    id: str
    description: str
    paths: dict[str, str]  # node -> path

    @property
    def ours(self) -> bool:
        return self.description.startswith("smbgw-agent share ")


def _json(text: str, what: str) -> Any:
    if len(text) > MAX_OUTPUT:
        raise PveshError(f"pvesh get {what} printed more than 4 MiB")
    try:
        return json.loads(text)
    except ValueError:
        raise PveshError(f"pvesh get {what} printed {text[:80]!r}, not JSON") from None


def parse_version(text: str) -> tuple[int, int]:
    data = _json(text, "/version")
    release = data.get("release") if isinstance(data, dict) else None
    parts = release.split(".") if isinstance(release, str) else []
    if len(parts) != 2 or not all(part.isascii() and part.isdigit() and len(part) <= 4 for part in parts):
        raise PveshError(f"pvesh get /version printed release {release!r}, not MAJOR.MINOR")
    return int(parts[0]), int(parts[1])


def parse_mappings(text: str) -> dict[str, DirMapping]:
    data = _json(text, "/cluster/mapping/dir")
    if not isinstance(data, list):
        raise PveshError("pvesh get /cluster/mapping/dir printed JSON that is not a list")
    found = {}
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise PveshError("a directory mapping without an id")
        paths: dict[str, str] = {}
        for item in entry.get("map") or []:
            try:
                values = parse_property_string(str(item))
            except GuestConfigError as exc:
                raise PveshError(f"directory mapping {entry['id']}: {exc}") from None
            if "node" in values and "path" in values:
                paths[values["node"]] = values["path"]
        found[entry["id"]] = DirMapping(entry["id"], str(entry.get("description") or ""), paths)
    return found


class Pvesh:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def version(self) -> tuple[int, int]:
        return parse_version(self.runner.run([PVESH, "get", "/version", "--output-format", "json"],
                                             timeout=TIMEOUT).stdout)

    def mappings(self) -> dict[str, DirMapping]:
        return parse_mappings(self.runner.run([PVESH, "get", "/cluster/mapping/dir", "--output-format", "json"],
                                              timeout=TIMEOUT).stdout)

    def create_mapping(self, mapping: str, paths: Mapping[str, str], share: str) -> None:
        """`paths`: node -> the share's directory there (one entry per node the VM may run on)."""
        maps = [arg for node, path in sorted(paths.items()) for arg in ("--map", f"node={node},path={path}")]
        self.runner.run([PVESH, "create", "/cluster/mapping/dir", "--id", mapping, *maps, "--description",
                         DESCRIPTION.format(share=share)], timeout=TIMEOUT)

    def delete_mapping(self, mapping: str) -> None:
        self.runner.run([PVESH, "delete", f"/cluster/mapping/dir/{mapping}"], timeout=TIMEOUT)


def virtiofs_refusal(version: tuple[int, int]) -> str | None:
    """Why this node cannot give a VM a host directory, or None."""
    if version >= VIRTIOFS_SINCE:
        return None
    return (f"this node runs Proxmox VE {version[0]}.{version[1]}: a VM-mode share reaches its data through "
            "virtiofs directory mappings, which need Proxmox VE 8.4 or later; upgrade the node, or serve the "
            "share in mode \"lxc\" or \"native\"")
