"""What every hook of one reconcile pass (and of one scrape) can reach."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.idranges import IdRange
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.changes import NodeResource
from smbgw_agent.platform.guests import GuestStep
from smbgw_agent.platform.jobs import JobRunner
from smbgw_agent.platform.parameters import HOST
from smbgw_agent.platform.pluginstate import PluginState

if TYPE_CHECKING:
    from smbgw_agent.effects.services import ServiceControl, ServiceReport
    from smbgw_agent.model.shares import ShareSpec


class SmbdControl(Protocol):
    """Who keeps the node's smbd running and reloads it. The core's default goes through
    systemd (or signals smbd in a sandbox); a plugin that owns smbd (CTDB starts and stops
    it on a cluster node) provides its own with `smbgw_smbd_control`."""

    owner: str

    def ensure_running(self, ctx: PassContext) -> ServiceReport: ...

    def is_running(self, ctx: PassContext) -> bool | None: ...

    def reload(self, ctx: PassContext, smb_conf: Path) -> str: ...


class ParameterSource(Protocol):
    """The plugin host, as far as a pass's hooks may use it."""

    def share_parameters(self, ctx: PassContext, share: ShareSpec, target: str) -> list[tuple[str, str]]: ...

    def global_parameters(self, ctx: PassContext, target: str) -> list[tuple[str, str]]: ...

    def guest_id_ranges(self, ctx: PassContext, target: str) -> list[IdRange]: ...

    def guest_steps(self, ctx: PassContext, target: str) -> list[GuestStep]: ...


def _no_state(plugin: str) -> PluginState:
    return PluginState(plugin, {}, None)


@dataclass
class PassContext:
    """Per-pass view shared by core and plugins.

    `desired` and `applied` cover every share of this node (not only the ones that
    changed), so a plugin can build node-wide files such as an include list; `resources`
    and `applied_resources` do the same for node resources. `scratch` is per-plugin space
    for staging between apply and commit; it lives for one pass only, which is what makes
    a crash mid-pass harmless. What must outlive the pass goes into `plugin_state`.

    `full` is false in a file event's pass, which plans only what changed: a plugin that
    keeps a view of the node between passes (rather than reading it again) may trust it
    then, and must check it against the node when `full` is true (periodic and forced
    passes, the first pass after a start).
    """

    paths: Paths
    config: AgentConfig
    runner: Runner
    services: ServiceControl
    desired: Mapping[str, ShareSpec]
    applied: Mapping[str, ShareSpec]
    dry_run: bool = False
    full: bool = True
    resources: Mapping[str, NodeResource] = field(default_factory=dict)
    applied_resources: Mapping[str, NodeResource] = field(default_factory=dict)
    smbd: SmbdControl | None = None
    jobs: JobRunner | None = None
    host: ParameterSource | None = None
    state_of: Callable[[str], PluginState] = _no_state
    scratch: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("smbgw_agent.pass"))

    def plugin_scratch(self, plugin: str) -> dict[str, Any]:
        space: dict[str, Any] = self.scratch.setdefault(plugin, {})
        return space

    def plugin_state(self, plugin: str) -> PluginState:
        """The plugin's persistent store (a private copy in a dry run)."""
        states: dict[str, PluginState] = self.scratch.setdefault(" state", {})
        if plugin not in states:
            states[plugin] = self.state_of(plugin)
        return states[plugin]

    def share_parameters(self, share: ShareSpec, target: str = HOST) -> list[tuple[str, str]]:
        """Every plugin's parameters for `share`'s section in `target`'s smb.conf,
        merged (raises ParameterConflict when two plugins disagree)."""
        return [] if self.host is None else self.host.share_parameters(self, share, target)

    def global_parameters(self, target: str = HOST) -> list[tuple[str, str]]:
        return [] if self.host is None else self.host.global_parameters(self, target)

    def guest_id_ranges(self, target: str) -> list[IdRange]:
        """Ids every plugin wants passed through into the guest `target` (merged)."""
        return [] if self.host is None else self.host.guest_id_ranges(self, target)

    def guest_steps(self, target: str) -> list[GuestStep]:
        """Every plugin's work inside the guest `target` (`smbgw_agent.platform.guests`)."""
        return [] if self.host is None else self.host.guest_steps(self, target)


@dataclass(frozen=True)
class CollectContext:
    """What a plugin's collect hook may read at scrape time: never mutate, never block."""

    paths: Paths
    config: AgentConfig
    runner: Runner
    status: Mapping[str, Any]
