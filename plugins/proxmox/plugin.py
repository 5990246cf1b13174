"""The plugin that owns agent.toml's `[proxmox]` table, which both guest modes (lxc, vm)
read: one owner, so either mode can be disabled without the table becoming unknown, and
the table is checked the same way whichever modes run. It does nothing else."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from smbgw_agent.platform import order
from smbgw_agent.platform.hookspecs import hookimpl

from .table import SECTION, parse_agent_table


class ProxmoxPlugin:
    @hookimpl
    def smbgw_agent_sections(self) -> Sequence[str]:
        return [SECTION]

    @hookimpl
    def smbgw_order(self) -> int:
        return order.MODE

    @hookimpl
    def smbgw_validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        return parse_agent_table(data) if section == SECTION else None
