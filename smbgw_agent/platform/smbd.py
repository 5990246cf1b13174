"""The core's way of keeping smbd running and reloading it (see `SmbdControl`)."""

from __future__ import annotations

from pathlib import Path

from smbgw_agent.effects.samba import reload_command
from smbgw_agent.effects.services import ServiceReport
from smbgw_agent.platform.context import PassContext

CORE = "core"


class ServiceSmbd:
    """smbd as a systemd unit (`[samba] smbd_unit`), or signalled directly in a sandbox."""

    owner = CORE

    def ensure_running(self, ctx: PassContext) -> ServiceReport:
        return ctx.services.ensure_active(ctx.config.smbd_unit)

    def is_running(self, ctx: PassContext) -> bool | None:
        return ctx.services.is_active(ctx.config.smbd_unit)

    def reload(self, ctx: PassContext, smb_conf: Path) -> str:
        return ctx.services.reload(ctx.config.smbd_unit, reload_command(smb_conf))
