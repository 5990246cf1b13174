"""The pluggy contract between the core and plugins (project name ``smbgw``).

A plugin owns TOML sections and deployment modes. The core calls one hook per phase:

    validate  -> smbgw_validate_agent_section, smbgw_validate_share_section, smbgw_validate_share
    plan      -> smbgw_plan_share           (pure: what would change for one share)
    apply     -> smbgw_apply_share          (effects for one share, staged where possible)
    rollback  -> smbgw_rollback_share       (undo what apply staged for a share that failed)
    recover   -> smbgw_live_shares          (what is live, read back after a restart)
    remove    -> smbgw_remove_share         (a share that is no longer declared here)
    commit    -> smbgw_commit               (once per pass: make the staged state live)
    globals   -> smbgw_smb_globals          (global smb.conf parameters)
    observe   -> smbgw_observe              (status of things the plugin manages)
    collect   -> smbgw_collect              (Prometheus metric families, at scrape time)

Hooks must not depend on the order in which other plugins run within a phase. A hook
that raises affects only the share it was called for: the reconciler isolates shares.
Every hook receives the `PassContext` of the current pass, through which it reaches the
paths, the agent configuration, the command runner and the "effects off" switch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from .config import AgentConfig
    from .context import PassContext
    from .metrics import CollectContext
    from .shares import ShareSpec

PROJECT = "smbgw"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def smbgw_agent_sections() -> Sequence[str]:
    """Names of the top-level tables of agent.toml this plugin owns (e.g. ``["ad"]``).

    A table nobody claims is an error, so a typo such as ``[metrcs]`` is caught.
    """


@hookspec(firstresult=True)
def smbgw_validate_agent_section(section: str, data: Mapping[str, Any]) -> Any:
    """Validate an owned agent.toml table and return its parsed value (JSON-compatible).

    Return None for tables the plugin does not own. Raise ``FieldError(message, key=...)``
    for a bad value; the core adds the file name and line.
    """


@hookspec
def smbgw_share_sections() -> Sequence[str]:
    """Names of the top-level tables of share files this plugin owns (e.g. ``["quota"]``).

    A share file with a table no enabled plugin owns is invalid: a declared quota that
    nothing enforces must not be silently ignored.
    """


@hookspec
def smbgw_modes() -> Sequence[str]:
    """Deployment modes this plugin serves shares in (``native``, ``lxc``, ``vm``, ...)."""


@hookspec(firstresult=True)
def smbgw_validate_share_section(
    section: str, data: Mapping[str, Any], config: AgentConfig
) -> Any:
    """Validate an owned table of a share file and return its parsed, JSON-compatible value.

    Return None for tables the plugin does not own. Raise ``FieldError(message, key=...)``.
    """


@hookspec
def smbgw_validate_share(share: ShareSpec, config: AgentConfig) -> Sequence[str]:
    """Cross-field checks on a fully parsed share; return problems as messages (empty = fine).

    Use this for rules that span sections, e.g. a mode that requires its own table.
    """


@hookspec
def smbgw_plan_share(
    ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
) -> Sequence[str]:
    """Describe what this plugin would change to make share `name` match `desired`.

    `desired` None means the share is to be removed; `applied` is what the last
    successful pass made live (None if never). Must have no effects: `smbgwctl plan`
    and every pass call it. Compare against the actual state (files, units, addresses),
    not only against `applied`, so drift is repaired. Return an empty list when in sync.
    """


@hookspec
def smbgw_apply_share(ctx: PassContext, name: str, desired: ShareSpec) -> None:
    """Make share `name` match `desired`. Raise to fail this share only.

    Prefer staging (write to a candidate location and register it with the context) so
    that `smbgw_commit` can validate everything before it goes live.
    """


@hookspec
def smbgw_remove_share(ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
    """Stop serving share `name`. Never delete the share's data directory."""


@hookspec
def smbgw_rollback_share(ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
    """Undo whatever apply/remove staged for `name` in this pass; `applied` is the state to keep."""


@hookspec
def smbgw_commit(ctx: PassContext) -> Mapping[str, str]:
    """Make this pass's staged changes live, once per pass (e.g. validate and reload smbd).

    Return ``{share name: reason}`` for shares whose staged change was rejected; the core
    rolls those back and retries them with backoff. Raising fails every share touched in
    this pass.
    """


@hookspec
def smbgw_smb_globals(config: AgentConfig) -> Sequence[tuple[str, str]]:
    """Global smb.conf parameters this plugin needs, as (name, value) pairs.

    The values are checked like every other string that reaches smb.conf.
    """


@hookspec
def smbgw_live_shares(ctx: PassContext) -> Sequence[ShareSpec]:
    """The shares this plugin serves right now, read back from what is live on the node
    (its generated files, its containers, ...), never from the state database.

    Called on the first pass after a start. The reconciler adopts every live share the
    state does not know, so a lost, zeroed or older state database never makes a live
    share look like an orphan to remove. Return only what this plugin itself created
    and can identify with certainty; must not change anything.
    """


@hookspec
def smbgw_observe(ctx: PassContext) -> Mapping[str, Any]:
    """Report the state of what the plugin manages, for status.json and `smbgwctl status`.

    Keys become top-level entries under ``plugins.<plugin name>``. Must be cheap.
    """


@hookspec
def smbgw_collect(ctx: CollectContext) -> Sequence[Metric]:
    """Metric families this plugin exports, built fresh at every scrape (`smbgw_` prefix).

    Runs in the HTTP server's thread: read only `ctx.status` (the snapshot of the last
    pass) and values your plugin caches; never run a slow command here. Refresh slow
    readings in the background (`smbgw_agent.background.BackgroundReading`) and report
    their health as a `smbgw_collector_success{collector=...}` family, which the core
    merges with its own. Raising marks this plugin's collector as failed for the scrape.
    """
