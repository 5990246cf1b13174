"""The `[quota]` tables: what a share file and agent.toml may say, every problem with its line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import Table, integer

BACKENDS = ("auto", "btrfs", "zfs", "xfs", "ext4")
LEVELS = ("warning", "high", "critical")
DEFAULT_THRESHOLDS = {"warning": 75, "high": 85, "critical": 95}
DEFAULT_PROJECT_IDS = (100000, 199999)
MAX_PROJECT_ID = (1 << 32) - 2  # 2^32 - 1 is "no project" to the kernel


@dataclass(frozen=True)
class QuotaSettings:
    """agent.toml [quota]."""

    btrfs_enable_quotas: bool = False
    project_id_range: tuple[int, int] = DEFAULT_PROJECT_IDS
    refresh_interval: float = 60.0

    @classmethod
    def from_config(cls, sections: Mapping[str, Any]) -> QuotaSettings:
        data = sections.get("quota") or {}
        ids = data.get("project_id_range", DEFAULT_PROJECT_IDS)
        return cls(bool(data.get("btrfs_enable_quotas", False)),
                   (int(ids[0]), int(ids[1])),
                   float(data.get("refresh_interval", 60.0)))


def parse_share_table(data: Mapping[str, Any]) -> dict[str, Any]:
    table = Table(data)
    size = table.size("size")
    backend = table.choice("backend", BACKENDS, default="auto")
    enforce = table.boolean("enforce", default=True)
    levels = table.table("thresholds")
    thresholds = {level: levels.integer(level, DEFAULT_THRESHOLDS[level], minimum=1, maximum=100)
                  for level in LEVELS}
    if not thresholds["warning"] < thresholds["high"] < thresholds["critical"]:
        shown = ", ".join(f"{level} = {thresholds[level]}" for level in LEVELS)
        table.report("thresholds", f"must rise from warning to high to critical ({shown})")
    table.done()
    return {"size": size, "backend": backend, "enforce": enforce, "thresholds": thresholds}


def _id_range(value: object) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise FieldError("must be [first, last], e.g. [100000, 199999]")
    first, last = (integer(v, 1, MAX_PROJECT_ID) for v in value)
    if first > last:
        raise FieldError(f"first ({first}) is larger than last ({last})")
    return first, last


def parse_agent_table(data: Mapping[str, Any]) -> dict[str, Any]:
    table = Table(data)
    enable = table.boolean("btrfs_enable_quotas", default=False)
    ids = table.value("project_id_range", _id_range, DEFAULT_PROJECT_IDS)
    refresh = table.duration("refresh_interval", default=60.0, minimum=5.0, maximum=86400.0)
    table.done()
    return {"btrfs_enable_quotas": enable, "project_id_range": list(ids), "refresh_interval": refresh}
