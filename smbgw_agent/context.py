"""What every hook of one reconcile pass can reach."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import AgentConfig
from .paths import Paths
from .runner import Runner

if TYPE_CHECKING:
    from .services import ServiceControl
    from .shares import ShareSpec


@dataclass
class PassContext:
    """Per-pass view shared by core and plugins.

    `desired` and `applied` cover every share of this node (not only the ones that
    changed), so a plugin can build node-wide files such as an include list.
    `scratch` is per-plugin space for staging between apply and commit; it lives for
    one pass only, which is what makes a crash mid-pass harmless.
    """

    paths: Paths
    config: AgentConfig
    runner: Runner
    services: ServiceControl
    desired: Mapping[str, ShareSpec]
    applied: Mapping[str, ShareSpec]
    hook: Any = None
    dry_run: bool = False
    scratch: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("smbgw_agent.pass"))

    def plugin_scratch(self, plugin: str) -> dict[str, Any]:
        space: dict[str, Any] = self.scratch.setdefault(plugin, {})
        return space
