"""The node as a member of a CTDB cluster (agent.toml `[ctdb]`): clustered Samba, with the
public addresses moved by CTDB, never by the agent.

With `[ctdb]` the agent keeps CTDB's configuration as declared and leaves the cluster's
decisions to CTDB: it renders `/etc/ctdb/ctdb.conf`, `ctdb.tunables`, `nodes` (a change
that would move a live node to another line is refused: CTDB knows nodes by their line)
and `public_addresses` (from the `[ha] vip` of every share), enables CTDB's own
`50.samba` event script (so CTDB starts smbd, and marks a node whose smbd does not serve
unhealthy, which moves its addresses away), sets `clustering = yes`, and enables and
starts `ctdb.service` over D-Bus. A changed nodes or addresses file is loaded with
`ctdb reloadnodes` / `ctdb reloadips`, changed keepalive tunables with `ctdb setvar`; a
changed ctdb.conf (cluster lock, log level) takes a restart of ctdb, which fails the
node's addresses over, so the agent does not do it behind the administrator's back: it
says so in status until ctdb is restarted.

Every node serves every share: a share's `node` placement is an error here. The cluster
is read every few seconds in the background (`ctdb -X status`, `ctdb -X ip`) for
status and metrics; a scrape never waits for ctdb.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from smbgw_agent.effects.fileio import atomic_write
from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.effects.samba import reload_command
from smbgw_agent.effects.services import ServiceError, ServiceReport
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.observe.background import BackgroundReading
from smbgw_agent.platform import order
from smbgw_agent.platform.changes import CREATE, UPDATE, Change, Health, NodeResource
from smbgw_agent.platform.context import CollectContext, PassContext
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import FINISHED, SUCCEEDED, Job, JobProgress
from smbgw_agent.platform.parameters import HOST, Parameter

from .. import vips
from . import render, tool
from .status import STATES
from .table import CtdbSettings, parse_agent_table

log = logging.getLogger(__name__)
PLUGIN = SECTION = RESOURCE = "ctdb"
CTDB_UNIT = "ctdb.service"
CONF, TUNABLES, NODES, PUBLIC = ("/etc/ctdb/ctdb.conf", "/etc/ctdb/ctdb.tunables", "/etc/ctdb/nodes",
                                 "/etc/ctdb/public_addresses")
SAMBA_SCRIPT = "/etc/ctdb/events/legacy/50.samba.script"
SAMBA_SCRIPT_TARGET = "/usr/share/ctdb/events/legacy/50.samba.script"
READ_INTERVAL = 5.0
START_JOB = "ctdb:start"
START_TIMEOUT = 180.0
MAX_FILE = 1 << 20


def configured(config: AgentConfig) -> bool:
    return SECTION in config.plugin_sections


def _read(path: Path) -> str | None:
    """A file we wrote, read back as input: bounded, and undecodable means "different"."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"<unreadable: {exc}>"
    return data.decode("utf-8", errors="replace")


def clustering_live(runner: Runner, smb_conf: Path) -> bool:
    """The live smb.conf, as Samba reads it (includes and all), says `clustering = yes`."""
    try:
        result = runner.run(["testparm", "-s", "--parameter-name", "clustering", str(smb_conf)], timeout=30)
    except CommandError:
        return False
    return result.stdout.strip().casefold() == "yes"


def public_entries(shares: Mapping[str, ShareSpec], settings: CtdbSettings) -> list[tuple[str, str]]:
    entries = []
    for spec in shares.values():
        table = spec.sections.get(vips.SECTION)
        if table:
            interface = table.get("interface") or settings.public_interface
            if interface:
                entries.append((str(table["vip"]), str(interface)))
    return entries


class CtdbSmbd:
    """smbd on a cluster node belongs to CTDB (its 50.samba event script starts, stops and
    monitors it): the agent reloads it but never starts it."""

    owner = PLUGIN

    def ensure_running(self, ctx: PassContext) -> ServiceReport:
        unit = ctx.config.smbd_unit
        running = ctx.services.is_active(unit)
        detail = "managed by CTDB" if running else "not running: CTDB starts it once the node is healthy"
        return ServiceReport(unit, "ctdb", running, detail)

    def is_running(self, ctx: PassContext) -> bool | None:
        return ctx.services.is_active(ctx.config.smbd_unit)

    def reload(self, ctx: PassContext, smb_conf: Path) -> str:
        return ctx.services.reload(ctx.config.smbd_unit, reload_command(smb_conf))


class CtdbPlugin:
    def __init__(self) -> None:
        self._reading: BackgroundReading[tool.Cluster] | None = None
        self._failure_seen: float | None = None  # the failed start job already reported
        self._shares: dict[str, tuple[str, str]] = {}  # share -> (vip, interface), for metrics

    # ---- tables and validation -------------------------------------------------------

    @hookimpl
    def smbgw_agent_sections(self) -> Sequence[str]:
        return [SECTION]

    @hookimpl
    def smbgw_order(self) -> int:
        return order.CLUSTER

    @hookimpl
    def smbgw_validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        return parse_agent_table(data) if section == SECTION else None

    @hookimpl
    def smbgw_validate_share(self, share: ShareSpec, config: AgentConfig) -> Sequence[str]:
        if not configured(config):
            return []
        problems = []
        if share.node:
            problems.append(f"node = {share.node!r}: in a CTDB cluster every node serves every share and CTDB "
                            "places the addresses; remove the placement")
        table = share.sections.get(vips.SECTION)
        settings = CtdbSettings.from_config(config.plugin_sections)
        if table and not table.get("interface") and not settings.public_interface:
            problems.append("[ha] needs an interface: set it here or [ctdb] public_interface in agent.toml")
        return problems

    @hookimpl
    def smbgw_global_parameters(self, ctx: PassContext, target: str) -> Sequence[Parameter]:
        return [Parameter("clustering", "yes")] if configured(ctx.config) and target == HOST else []

    @hookimpl
    def smbgw_smbd_control(self, config: AgentConfig) -> CtdbSmbd | None:
        return CtdbSmbd() if configured(config) else None

    # ---- lifecycle -------------------------------------------------------------------

    @hookimpl
    def smbgw_startup(self, ctx: PassContext) -> None:
        if configured(ctx.config):
            runner = ctx.runner
            self._reading = BackgroundReading(PLUGIN, lambda: tool.read_cluster(runner), interval=READ_INTERVAL)
            self._reading.start()

    @hookimpl
    def smbgw_shutdown(self) -> None:
        if self._reading is not None:
            self._reading.stop()

    # ---- the ctdb node resource ------------------------------------------------------

    @staticmethod
    def wanted_files(ctx: PassContext) -> dict[str, str]:
        settings = CtdbSettings.from_config(ctx.config.plugin_sections)
        return {
            CONF: render.ctdb_conf(settings),
            TUNABLES: render.tunables(settings),
            NODES: render.nodes_file(settings.nodes),
            PUBLIC: render.public_addresses(public_entries(ctx.desired, settings)),
        }

    @hookimpl
    def smbgw_node_resources(self, ctx: PassContext) -> Sequence[NodeResource]:
        if not configured(ctx.config):
            return []
        return [NodeResource(RESOURCE, {"files": self.wanted_files(ctx), "event_script": SAMBA_SCRIPT_TARGET})]

    @hookimpl
    def smbgw_plan_resource(
        self, ctx: PassContext, resource_id: str, desired: NodeResource | None, applied: NodeResource | None
    ) -> Sequence[Change]:
        if desired is None:
            # The node leaves the cluster only by the administrator's hand: the files stay.
            return []
        changes = []
        nodes = CtdbSettings.from_config(ctx.config.plugin_sections).nodes
        for path, text in sorted(desired.spec["files"].items()):
            current = _read(ctx.paths.host(path))
            if current == text:
                continue
            if path == NODES:
                problem = render.nodes_change_problem(current, nodes)
                if problem:
                    raise ValueError(f"{NODES}: {problem}")
            changes.append(Change(RESOURCE, CREATE if current is None else UPDATE, f"write {path}"))
        if _link_target(ctx.paths.host(SAMBA_SCRIPT)) != SAMBA_SCRIPT_TARGET:
            changes.append(Change(RESOURCE, CREATE, "enable CTDB's 50.samba event script (CTDB starts and "
                                                    "monitors smbd)"))
        if ctx.services.is_active(CTDB_UNIT) is False:
            record = ctx.jobs.record(START_JOB) if ctx.jobs is not None else None
            if record is not None and record.state not in FINISHED:
                return changes  # starting
            if record is not None and record.state != SUCCEEDED and record.finished != self._failure_seen:
                self._failure_seen = record.finished
                raise ServiceError(f"starting {CTDB_UNIT} failed: {record.error}")
            changes.append(Change(RESOURCE, UPDATE, f"enable and start {CTDB_UNIT}"))
        return changes

    @hookimpl
    def smbgw_apply_resource(self, ctx: PassContext, resource: NodeResource, changes: Sequence[Change]) -> None:
        ctx.plugin_scratch(PLUGIN)["staged"] = dict(resource.spec)

    @hookimpl
    def smbgw_rollback_resource(self, ctx: PassContext, resource_id: str, applied: NodeResource | None) -> None:
        ctx.plugin_scratch(PLUGIN).pop("staged", None)

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        staged = ctx.plugin_scratch(PLUGIN).pop("staged", None)
        if staged is None:
            return {}
        try:
            self._make_live(ctx, staged)
        except (OSError, ServiceError, tool.CtdbError) as exc:
            log.error("ctdb: %s", exc)
            return {RESOURCE: str(exc)}
        return {}

    def _make_live(self, ctx: PassContext, spec: Mapping[str, Any]) -> None:
        changed = set()
        for path, text in sorted(spec["files"].items()):
            target = ctx.paths.host(path)
            if _read(target) != text:
                atomic_write(target, text, mode=0o644)
                changed.add(path)
                log.info("wrote %s", path)
        _link(ctx.paths.host(SAMBA_SCRIPT), SAMBA_SCRIPT_TARGET)
        if not ctx.services.is_active(CTDB_UNIT):
            if ctx.jobs is not None:
                ctx.jobs.submit(Job(START_JOB, self._start_job(ctx), START_TIMEOUT, RESOURCE, PLUGIN))
            return
        if NODES in changed:
            tool.reload_nodes(ctx.runner)
        if PUBLIC in changed:
            tool.reload_addresses(ctx.runner)
        if TUNABLES in changed:
            settings = CtdbSettings.from_config(ctx.config.plugin_sections)
            tool.set_tunables(ctx.runner, [("KeepaliveInterval", settings.keepalive_interval),
                                           ("KeepaliveLimit", settings.keepalive_limit)])
        if CONF in changed:
            log.warning("%s changed while ctdb runs: it takes effect when ctdb restarts", CONF)

    @staticmethod
    def _start_job(ctx: PassContext) -> Callable[[JobProgress], dict[str, Any]]:
        """Start ctdb once the live smb.conf says `clustering = yes`: CTDB's 50.samba
        (re)starts smbd when ctdb starts, and an smbd started before the include that
        turns clustering on (written by the mode's commit, later in this pass) would run
        unclustered. On a worker thread: ctdb takes seconds to start."""
        services, runner, smb_conf = ctx.services, ctx.runner, ctx.paths.smb_conf

        def run(progress: JobProgress) -> dict[str, Any]:
            while not clustering_live(runner, smb_conf):
                if progress.expired:
                    raise ServiceError(f"{smb_conf} does not say clustering = yes; ctdb was not started")
                progress.report(f"waiting for {smb_conf} to say clustering = yes")
                time.sleep(0.5)
            services.ensure_enabled(CTDB_UNIT)
            report = services.ensure_active(CTDB_UNIT)
            if report.active is False:
                raise ServiceError(f"{CTDB_UNIT} does not start: {report.detail} (journalctl -u ctdb)")
            log.info("started %s", CTDB_UNIT)
            return {"text": f"started {CTDB_UNIT}"}

        return run

    # ---- observing -------------------------------------------------------------------

    def _restart_pending(self, ctx: PassContext) -> str | None:
        """ctdb.conf is newer than the running ctdbd: CTDB reads it only when it starts, so
        the change (cluster lock, log level) is not in force yet. Worked out from the file
        and the process each time, so it clears when ctdb restarts, whoever restarts it."""
        cluster = self._cluster()
        if cluster is None or cluster.started_at is None:
            return None
        try:
            changed = ctx.paths.host(CONF).stat().st_mtime
        except OSError:
            return None
        if changed <= cluster.started_at:
            return None
        return (f"{CONF} changed after ctdb started: it takes effect when ctdb restarts (systemctl restart ctdb, "
                "which moves this node's addresses to the others; do it in a maintenance window)")

    def _cluster(self) -> tool.Cluster | None:
        return self._reading.value if self._reading is not None and self._reading.ok else None

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        if not configured(ctx.config):
            return {}
        settings = CtdbSettings.from_config(ctx.config.plugin_sections)
        self._shares = {spec.name: (address, interface) for spec in ctx.desired.values()
                        if (address := vips.address_of(spec)) and (interface := _interface(spec, settings))}
        cluster = self._cluster()
        view: dict[str, Any] = {"restart_pending": self._restart_pending(ctx),
                                "error": self._reading.error if self._reading is not None else None}
        if cluster is not None:
            view.update({"pnn": cluster.pnn, "recovery": cluster.recovery,
                         "nodes": [node.to_dict() for node in cluster.nodes],
                         "addresses": {address: holder for address, holder in sorted(cluster.addresses.items())}})
        return view

    @hookimpl
    def smbgw_health(self, ctx: PassContext) -> Sequence[Health]:
        if not configured(ctx.config):
            return []
        findings = []
        pending = self._restart_pending(ctx)
        if pending:
            findings.append(Health("ctdb-config", False, pending, RESOURCE))
        cluster = self._cluster()
        if cluster is None:
            error = self._reading.error if self._reading is not None else "not read yet"
            return [*findings, Health("ctdb", False, f"cannot read the cluster: {error}", RESOURCE)]
        this = cluster.this
        if this is not None and this.state not in ("ok", "disabled"):
            findings.append(Health("ctdb", False, f"this node (pnn {this.pnn}) is {this.state}", RESOURCE))
        for address, holder in sorted(cluster.addresses.items()):
            if holder < 0:
                findings.append(Health("ctdb", False, f"public address {address} is held by no node", RESOURCE))
        return findings

    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        if not configured(ctx.config):
            return []
        success = GaugeMetricFamily("smbgw_collector_success", "1 if the collector's last reading worked",
                                    labels=["collector"])
        success.add_metric([PLUGIN], 1.0 if self._reading is not None and self._reading.ok else 0.0)
        cluster = self._cluster()
        if cluster is None:
            return [success]
        healthy = GaugeMetricFamily("smbgw_ctdb_node_healthy", "1 if the CTDB node is OK (connected, healthy, "
                                    "not banned, stopped or disabled)", labels=["pnn"])
        state = GaugeMetricFamily("smbgw_ctdb_node_state", "1 for the CTDB node's current state",
                                  labels=["pnn", "state"])
        for node in cluster.nodes:
            healthy.add_metric([str(node.pnn)], 1.0 if node.state == "ok" else 0.0)
            for name in STATES:
                state.add_metric([str(node.pnn), name], 1.0 if node.state == name else 0.0)
        recovery = GaugeMetricFamily("smbgw_ctdb_recovery_mode", "1 while the CTDB cluster is in recovery "
                                     "(databases frozen, clients wait)")
        recovery.add_metric([], 1.0 if cluster.recovery else 0.0)
        holder = GaugeMetricFamily("smbgw_vip_holder", "1 for the node (pnn) holding the public address; "
                                   "pnn -1: no node holds it", labels=["vip", "pnn"])
        for address, pnn in sorted(cluster.addresses.items()):
            holder.add_metric([address, str(pnn)], 1.0)
        present = GaugeMetricFamily("smbgw_vip_present", "1 if the share's [ha] vip is configured on its "
                                    "interface on this node", labels=["share", "vip", "interface"])
        for share, (address, interface) in sorted(self._shares.items()):
            present.add_metric([share, address, interface], 1.0 if cluster.addresses.get(address) == cluster.pnn
                               else 0.0)
        drained = GaugeMetricFamily("smbgw_node_drained", "1 while the node is drained (smbgwctl drain)")
        this = cluster.this
        drained.add_metric([], 1.0 if this is not None and this.disabled else 0.0)
        return [success, healthy, state, recovery, holder, present, drained]


def _interface(spec: ShareSpec, settings: CtdbSettings) -> str | None:
    table = spec.sections.get(vips.SECTION)
    return (table.get("interface") or settings.public_interface) if table else None


def _link_target(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _link(path: Path, target: str) -> None:
    """Point `path` at `target` (what `ctdb event script enable` does), replacing it whole."""
    if _link_target(path) == target:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.smbgw")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, path)

