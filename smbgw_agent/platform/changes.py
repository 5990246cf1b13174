"""Typed changes and node resources: what planning returns and what the core dispatches.

A plan is a list of `Change`s, each naming the plugin that will make it, the resource it
touches, an action and a sentence for people. The core calls apply, remove and commit
only on the plugins that reported a change, which is what keeps a change to one table
from disturbing what other plugins manage (a new quota never reloads smbd).

Resources are named by id: ``share:NAME`` for a share, anything else (``vip:ADDR``,
``ctdb``, ``ad``, ``lxc:VMID``, ``snapshot:NAME``) for a node resource that a plugin
declares beside the shares.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

CREATE, UPDATE, DELETE = "create", "update", "delete"
ACTIONS = (CREATE, UPDATE, DELETE)
SHARE_PREFIX = "share:"
MAX_RESOURCE_ID = 200
MAX_DETAIL = 2000
MAX_RESOURCE_SPEC = 1 << 20  # bytes of JSON: a node resource describes, it does not carry data


def share_resource(name: str) -> str:
    """The resource id of a share; share names are case-insensitive, so is this id."""
    return SHARE_PREFIX + name.casefold()


def share_key(resource: str) -> str | None:
    """The share key a resource id names, or None for a node resource."""
    return resource[len(SHARE_PREFIX):] if resource.startswith(SHARE_PREFIX) else None


def check_resource_id(resource: str) -> str:
    """Ids reach status.json, metric labels and log lines: short, printable, no spaces,
    except the plain spaces a share's name may hold (`share:team docs`: smb.conf allows
    them in a section name, and the share model accepts them)."""
    if not isinstance(resource, str) or not 1 <= len(resource) <= MAX_RESOURCE_ID:
        raise ValueError(f"resource id must be a string of 1 to {MAX_RESOURCE_ID} characters: {resource!r}")
    name = resource[len(SHARE_PREFIX):]
    allowed_space = resource.startswith(SHARE_PREFIX) and name == name.strip()
    if not resource.isprintable() or any(c.isspace() and not (c == " " and allowed_space) for c in resource):
        raise ValueError(f"resource id {resource!r} has white space or control characters")
    return resource


@dataclass(frozen=True)
class Change:
    """One thing a plugin will change. `plugin` is filled in by the plugin host."""

    resource: str
    action: str
    detail: str
    plugin: str = ""

    def __post_init__(self) -> None:
        check_resource_id(self.resource)
        if self.action not in ACTIONS:
            raise ValueError(f"change action must be one of {', '.join(ACTIONS)}, not {self.action!r}")
        if not isinstance(self.detail, str):
            raise ValueError("change detail must be a string")

    def stamped(self, plugin: str) -> Change:
        return replace(self, plugin=plugin, detail=self.detail[:MAX_DETAIL])

    def to_dict(self) -> dict[str, str]:
        return {"plugin": self.plugin, "resource": self.resource, "action": self.action, "detail": self.detail}


@dataclass(frozen=True)
class NodeResource:
    """A resource that is not a share, declared by the plugin that manages it.

    `spec` is JSON-compatible and describes what the plugin wants; the core records the
    spec of the last successful apply and hands it back as `applied`, exactly like a
    share's declaration. Equal specs with nothing drifted plan nothing.
    """

    id: str
    spec: Mapping[str, Any] = field(default_factory=dict)
    plugin: str = ""

    def __post_init__(self) -> None:
        check_resource_id(self.id)
        if self.id.startswith(SHARE_PREFIX):
            raise ValueError(f"node resource id {self.id!r} uses the share prefix")
        if len(self.to_json()) > MAX_RESOURCE_SPEC:
            raise ValueError(f"node resource {self.id!r}: spec larger than {MAX_RESOURCE_SPEC} bytes")

    def stamped(self, plugin: str) -> NodeResource:
        return replace(self, plugin=plugin)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "plugin": self.plugin, "spec": dict(self.spec)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeResource:
        spec = data["spec"]
        if not isinstance(spec, dict):
            raise ValueError("spec is not a table")
        return cls(id=str(data["id"]), spec=spec, plugin=str(data["plugin"]))


@dataclass(frozen=True)
class Health:
    """One health finding of a plugin about one of its resources (or the plugin itself)."""

    check: str
    ok: bool
    detail: str = ""
    resource: str = ""
    plugin: str = ""

    def stamped(self, plugin: str) -> Health:
        return replace(self, plugin=plugin, detail=self.detail[:MAX_DETAIL])

    def to_dict(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "resource": self.resource, "check": self.check,
                "ok": self.ok, "detail": self.detail}
