"""The pluggy contract between the core and plugins (project name ``smbgw``).

A plugin owns tables of the input files, deployment modes and node resources. Within a
pass the core calls, in plugin order (`smbgw_order`):

    validate  smbgw_validate_agent_section, smbgw_validate_share_section, smbgw_validate_share
    plan      smbgw_plan_share, smbgw_node_resources + smbgw_plan_resource     (no effects)
    apply     smbgw_apply_share / smbgw_remove_share, smbgw_apply_resource / smbgw_remove_resource
    rollback  smbgw_rollback_share, smbgw_rollback_resource
    commit    smbgw_commit                                  (once per pass, per plugin)
    observe   smbgw_observe, smbgw_health, smbgw_schedules   (after the pass)
    collect   smbgw_collect                                 (at scrape time)

and around passes smbgw_startup / smbgw_shutdown, smbgw_live_shares after a start;
smbgw_commands adds verbs to smbgwctl, whose jobs the agent starts between passes.

Dispatch follows ownership: apply, remove, rollback and commit reach only the plugins
that reported a change for that resource in this pass; a node resource's hooks reach
only the plugin that declared it. A plugin that raises fails only the resources it was
called for; the others proceed. Every hook runs on the reconcile thread except
`smbgw_collect` (the metrics server's thread) and job functions (worker threads).

The core's documentation of this contract, with a worked example, is docs/plugins.md;
a test checks that every hook below is described there with this exact signature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from smbgw_agent.model.config import AgentConfig
    from smbgw_agent.model.idranges import IdRange
    from smbgw_agent.model.shares import ShareSpec
    from smbgw_agent.platform.changes import Change, Health, NodeResource
    from smbgw_agent.platform.commands import Command
    from smbgw_agent.platform.context import CollectContext, PassContext, SmbdControl
    from smbgw_agent.platform.guests import GuestStep
    from smbgw_agent.platform.jobs import Schedule
    from smbgw_agent.platform.parameters import Parameter

PROJECT = "smbgw"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---- what a plugin provides ----------------------------------------------------------


@hookspec
def smbgw_agent_sections() -> Sequence[str]:
    """Names of the top-level tables of agent.toml this plugin owns (e.g. ``["ad"]``).

    A table nobody claims is an error, so a typo such as ``[metrcs]`` is caught. Two
    plugins claiming one table stop the agent at start.
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
def smbgw_order() -> int:
    """This plugin's rank within every phase (lower first; see `smbgw_agent.platform.order`).

    Read once at load time; plugins that do not implement it run last.
    """


@hookspec
def smbgw_smbd_control(config: AgentConfig) -> SmbdControl | None:
    """Take over starting and reloading the node's smbd (CTDB does on a cluster node).

    Return None to leave it to the core (systemd). Two plugins taking over stop the agent
    at start.
    """


# ---- validation ----------------------------------------------------------------------


@hookspec(firstresult=True)
def smbgw_validate_agent_section(section: str, data: Mapping[str, Any]) -> Any:
    """Validate an owned agent.toml table and return its parsed value (JSON-compatible).

    Return None for tables the plugin does not own. Raise ``FieldError(message, key=...)``
    for one bad value, or use `smbgw_agent.model.fields.Table` to report every problem of
    the table with its line.
    """


@hookspec(firstresult=True)
def smbgw_validate_share_section(section: str, data: Mapping[str, Any], config: AgentConfig) -> Any:
    """Validate an owned table of a share file and return its parsed, JSON-compatible value.

    Return None for tables the plugin does not own. Errors as for agent sections.
    """


@hookspec
def smbgw_validate_share(share: ShareSpec, config: AgentConfig) -> Sequence[str]:
    """Cross-field checks on a fully parsed share; return problems as messages (empty = fine).

    Use this for rules that span sections, e.g. a mode that requires its own table.
    """


# ---- lifecycle -----------------------------------------------------------------------


@hookspec
def smbgw_startup(ctx: PassContext) -> None:
    """The agent starts (or reloads its configuration) with this plugin instance.

    Start background work here, not at import or construction: a configuration reload
    creates new instances and stops the old ones.
    """


@hookspec
def smbgw_shutdown() -> None:
    """This instance is being retired (agent stops, or a reload replaced it).

    Stop every thread and timer it started; what must survive belongs in plugin state.
    """


# ---- shares --------------------------------------------------------------------------


@hookspec
def smbgw_plan_share(
    ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
) -> Sequence[Change]:
    """What this plugin would change to make share `name` match `desired`.

    `desired` None means the share is to be removed; `applied` is what the last
    successful pass made live (None if never). Must have no effects: `smbgwctl plan`
    and every pass call it. Compare against the actual state (files, units, addresses),
    not only against `applied`, so drift is repaired. Return changes for the resource
    ``share_resource(name)``; an empty list when this plugin has nothing to do.
    """


@hookspec
def smbgw_apply_share(ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
    """Make this plugin's part of share `name` match `desired`; `changes` are the ones it
    planned. Called only when it planned a create or update. Raise to fail this share.

    Prefer staging (write to a candidate location, keep it in `ctx.plugin_scratch`) so
    that `smbgw_commit` can validate everything before it goes live.
    """


@hookspec
def smbgw_remove_share(ctx: PassContext, name: str, applied: ShareSpec | None, changes: Sequence[Change]) -> None:
    """Undo this plugin's part of share `name` (it is no longer declared here, or moved to
    another mode or table). Called only when every change it planned is a delete.
    Never delete the share's data.
    """


@hookspec
def smbgw_rollback_share(ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
    """Undo whatever apply/remove staged for `name` in this pass; `applied` is the state to
    keep. Called on the plugins that applied or removed something for the share."""


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
def smbgw_share_parameters(ctx: PassContext, share: ShareSpec, target: str) -> Sequence[Parameter]:
    """smb.conf parameters this plugin adds to `share`'s section in `target`'s smb.conf
    (``host``, or a guest such as ``lxc:2100``): e.g. ``vfs objects`` entries with a
    rank, ``dfree command``. The core merges every plugin's with the share's own;
    a conflict fails the share. Must be pure: a mode calls it while planning."""


@hookspec
def smbgw_global_parameters(ctx: PassContext, target: str) -> Sequence[Parameter]:
    """Global smb.conf parameters this plugin needs in `target`'s smb.conf. A conflict
    between plugins fails the pass's commit for that target."""


@hookspec
def smbgw_guest_id_ranges(ctx: PassContext, target: str) -> Sequence[IdRange]:
    """Ids a guest (`target`: `lxc:VMID`) must see as the host sees them, for file owners
    to read the same inside and out: the guest mode passes them through its id map
    unshifted (the domain's idmap ranges, when the node is a domain member)."""


@hookspec
def smbgw_guest_steps(ctx: PassContext, target: str) -> Sequence[GuestStep]:
    """Work this plugin does inside the guest `target` (`lxc:VMID`), which the guest's
    mode plugin runs in its job once the guest runs with its smb.conf (`GuestStep`:
    names start with the plugin's name, steps are idempotent). Must be pure: it is
    called while planning."""


# ---- node resources ------------------------------------------------------------------


@hookspec
def smbgw_node_resources(ctx: PassContext) -> Sequence[NodeResource]:
    """The node resources this plugin wants, derived from the configuration and the
    desired shares in `ctx`. Must be pure. Raising keeps this plugin's resources as they
    were applied (their last good version) and reports the error."""


@hookspec
def smbgw_plan_resource(
    ctx: PassContext, resource_id: str, desired: NodeResource | None, applied: NodeResource | None
) -> Sequence[Change]:
    """Like `smbgw_plan_share`, for a node resource this plugin declared (or applied)."""


@hookspec
def smbgw_apply_resource(ctx: PassContext, resource: NodeResource, changes: Sequence[Change]) -> None:
    """Make a node resource match `resource`. Raise to fail it (it is retried with backoff)."""


@hookspec
def smbgw_remove_resource(
    ctx: PassContext, resource_id: str, applied: NodeResource | None, changes: Sequence[Change]
) -> None:
    """A node resource no longer wanted: release it."""


@hookspec
def smbgw_rollback_resource(ctx: PassContext, resource_id: str, applied: NodeResource | None) -> None:
    """Undo what apply/remove staged for a node resource in this pass."""


# ---- the pass ------------------------------------------------------------------------


@hookspec
def smbgw_commit(ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
    """Make this pass's staged changes live, once per pass, for a plugin that applied or
    removed something (`resources` are those resource ids).

    Return ``{resource id: reason}`` for resources whose change was rejected; the core
    rolls those back on this plugin and retries them with backoff. Raising fails every
    resource this plugin touched in this pass, and no other plugin's.
    """


# ---- observing -----------------------------------------------------------------------


@hookspec
def smbgw_observe(ctx: PassContext) -> Mapping[str, Any]:
    """Report the state of what the plugin manages, for status.json and `smbgwctl status`.

    Keys become entries under ``plugins.<plugin name>``. Must be cheap.
    """


@hookspec
def smbgw_health(ctx: PassContext) -> Sequence[Health]:
    """Health findings after each pass (shown in status and as `smbgw_health_ok`). Must be
    cheap: run slow checks as a scheduled job and report its last result here."""


@hookspec
def smbgw_schedules(ctx: PassContext) -> Sequence[Schedule]:
    """Recurring jobs this plugin wants (snapshots, health checks); asked after each pass.
    They run on worker threads with their own time budget, never on the reconcile thread."""


@hookspec
def smbgw_collect(ctx: CollectContext) -> Sequence[Metric]:
    """Metric families this plugin exports, built fresh at every scrape (`smbgw_` prefix).

    Runs in the HTTP server's thread: read only `ctx.status` (the snapshot of the last
    pass) and values your plugin caches; never run a slow command here. Refresh slow
    readings in the background (`smbgw_agent.observe.background.BackgroundReading`) and
    report their health as a `smbgw_collector_success{collector=...}` family, which the
    core merges with its own. Raising marks this plugin's collector as failed for the scrape.
    """


# ---- smbgwctl ------------------------------------------------------------------------


@hookspec
def smbgw_commands() -> Sequence[Command]:
    """Verbs this plugin adds to smbgwctl (``smbgwctl snapshot SHARE``).

    Each `Command` names its positional arguments, switches (`flags`) and switches with
    a value (`options`), and a `start(ctx, arguments)` that the agent calls on the
    reconcile thread between passes; it returns the `Job` to run (or raises
    `CommandRefused` with a message for the user). smbgwctl prints the job's progress
    while it runs and its outcome when it ends. A verb of the core, or one two plugins
    claim, stops the agent at start.
    """
