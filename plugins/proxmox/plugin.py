"""The plugin that owns what both guest modes (lxc, vm) share on a node: agent.toml's
`[proxmox]` table (one owner, so either mode can be disabled without the table becoming
unknown) and `smbgwctl undrain`, which ends a drain for both (drain.py). Each mode moves
its own guests in its part of `smbgwctl drain`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from smbgw_agent.platform import order
from smbgw_agent.platform.commands import Command, CommandRefused
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import Job

from .drain import DrainRecord
from .table import SECTION, parse_agent_table

PLUGIN = "proxmox"


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

    @hookimpl
    def smbgw_commands(self) -> Sequence[Command]:
        return [Command("undrain", "put this node back in service: containers and VMs for new shares are made here "
                                   "again", self._start_undrain, shared=True)]

    def _start_undrain(self, ctx: PassContext, arguments: Mapping[str, Any]) -> Job:
        record = DrainRecord(ctx.paths.state_dir)
        try:
            was = record.clear()
        except OSError as exc:
            raise CommandRefused(f"cannot remove the drain record {record.path}: {exc}") from exc
        text = ("containers and VMs for new shares are made here again (a share that failed while the node was "
                "drained is retried at its next attempt, or at once with systemctl reload smbgw-agent)") if was else \
            "no guest mode was drained"
        return Job("proxmox:undrain", lambda _progress: {"text": text}, 10.0, "", PLUGIN)
