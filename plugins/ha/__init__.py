"""Virtual IPs for shares without CTDB: the node that serves a share holds its address.

A share file's `[ha] vip = "192.0.2.50/24"` and `interface = "vmbr0"` give the share an
address of its own, which clients use instead of the node's; moving the share to another
node (its `node` placement) moves the address with it. The plugin (entry point `vip`,
table `[ha]`, agent.toml `[vip]`) keeps the node's addresses as declared, the way
keepalived would for one holder, without an election of its own:

- **claim**: probe (RFC 5227 ARP probe, IPv6 duplicate address detection) and never take
  an address another host answers for (`vip conflict`, retried with backoff); add it
  over netlink; announce it (gratuitous ARP / unsolicited NA), a burst and a repeat;
- **health-gated**: the address is held only while the node can serve a share behind
  it (smbd runs, the share directory reads); otherwise it is released, with the reason,
  and claimed again once healthy. A watch every `health_interval` notices within seconds;
- **conflicts while held**: another host that starts using a held address is answered
  with an announcement; if it insists, the address is ceded and reported (`defend.py`);
- **drift**: an address removed by hand comes back; one the agent added for a share that
  is gone is removed; an address the agent did not add is never touched (what it added
  is recorded in its ledger, `/var/lib/smbgw/vip.json`, before it adds it);
- **restart-safe**: a restarted agent finds its addresses in place and leaves them
  (no remove-and-add, no announcement storm);
- **drain**: `smbgwctl drain` releases every address and waits for sessions to end.

With CTDB (`[ctdb]` in agent.toml) CTDB moves the addresses and this plugin stands down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from smbgw_agent.effects import netlink
from smbgw_agent.effects.netlink import Link
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.model.units import parse_duration
from smbgw_agent.platform import order
from smbgw_agent.platform.changes import CREATE, DELETE, UPDATE, Change, Health, NodeResource
from smbgw_agent.platform.commands import Command, CommandRefused
from smbgw_agent.platform.context import CollectContext, PassContext
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import Job, JobProgress, Schedule

from . import claim, defend
from . import vips as addresses
from .drain import DEFAULT_TIMEOUT, DrainWait, cluster_drain, cluster_undrain, sessions
from .health import PathCheck, smbd_problem
from .ledger import FILE, Ledger
from .table import VipSettings, parse_agent_table, parse_share_table
from .vips import MODES, PREFIX, SECTION, Declared, Vip, declared, foreign_problem, held_on, interface_problem

log = logging.getLogger(__name__)
PLUGIN = "vip"
AGENT_SECTION = "vip"
CLUSTER_SECTION = "ctdb"
WATCH_JOB = "vip:watch"
DRAINED_REASON = "the node is drained (smbgwctl drain)"


class VipError(Exception):
    """An address cannot be held as declared; the message says why and what to do."""


def clustered(config: AgentConfig) -> bool:
    """CTDB runs the node's addresses (its plugin parsed `[ctdb]`)."""
    return CLUSTER_SECTION in config.plugin_sections


class VipPlugin:
    def __init__(self) -> None:
        self._paths = PathCheck()
        self._announcer: claim.Announcer | None = None
        self._conflicts: dict[str, str] = {}  # address -> MAC of the other holder
        self._ceded: dict[str, tuple[str, float]] = {}  # address -> (other MAC, when), given up to it
        self._defender: defend.Defender | None = None
        self._lock = threading.Lock()
        self._expected: dict[str, tuple[Vip, bool]] = {}  # what the last pass decided, for the watch
        self._stopped = False

    # ---- tables ----------------------------------------------------------------------

    @hookimpl
    def smbgw_share_sections(self) -> Sequence[str]:
        return [SECTION]

    @hookimpl
    def smbgw_agent_sections(self) -> Sequence[str]:
        return [AGENT_SECTION]

    @hookimpl
    def smbgw_order(self) -> int:
        return order.ADDRESS

    @hookimpl
    def smbgw_validate_share_section(self, section: str, data: Mapping[str, Any], config: AgentConfig) -> Any:
        return parse_share_table(data, clustered(config)) if section == SECTION else None

    @hookimpl
    def smbgw_validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        return parse_agent_table(data) if section == AGENT_SECTION else None

    @hookimpl
    def smbgw_validate_share(self, share: ShareSpec, config: AgentConfig) -> Sequence[str]:
        table = share.sections.get(SECTION)
        if table and table.get("proxmox_ha") and share.mode == "native":
            return ["[ha] proxmox_ha registers a guest with Proxmox HA; a native share has no guest "
                    "(use mode = \"lxc\" or \"vm\", or drop proxmox_ha)"]
        if table and not table.get("vip") and share.mode in MODES:
            return ["[ha] on a native share needs vip: the address clients reach the share on"]
        if table and table.get("vip") and share.mode not in MODES:
            return [f"[ha] vip is for native shares: a share in mode = \"{share.mode}\" is reached on its guest's "
                    "own address, which Proxmox HA moves with the guest ([ha] proxmox_ha = true)"]
        return []

    # ---- lifecycle -------------------------------------------------------------------

    @hookimpl
    def smbgw_startup(self, ctx: PassContext) -> None:
        self._stopped = False
        self._announcer = claim.Announcer(VipSettings.from_config(ctx.config.plugin_sections))
        self._announcer.start()
        self._defender = defend.Defender(claim.announce_now, self._cede)
        self._defender.start()

    @hookimpl
    def smbgw_shutdown(self) -> None:
        """Addresses stay where they are: a stopping agent is not a failing node, and the
        next start keeps what is still correct."""
        self._stopped = True
        if self._announcer is not None:
            self._announcer.stop()
        if self._defender is not None:
            self._defender.stop()
            self._defender = None

    def _cede(self, address: str, other: str) -> None:
        """The defender gave `address` up to `other` (on its thread): the watch sees the node
        may no longer hold it and starts a pass, which releases it."""
        with self._lock:
            self._ceded[address] = (other, time.monotonic())
            self._conflicts[address] = other

    def _ceded_to(self, address: str) -> str | None:
        """The host `address` was ceded to, while the hold-down after ceding lasts."""
        with self._lock:
            found = self._ceded.get(address)
            if found is not None and time.monotonic() - found[1] >= defend.DEFEND_INTERVAL:
                del self._ceded[address]  # a probe decides now whether it is free again
                found = None
        return found[0] if found else None

    @staticmethod
    def _ledger(ctx: PassContext) -> Ledger:
        return Ledger(ctx.paths.state_dir / FILE)

    # ---- planning --------------------------------------------------------------------

    def _declared(self, ctx: PassContext) -> Declared:
        scratch = ctx.plugin_scratch(PLUGIN)
        if "declared" not in scratch:
            scratch["declared"] = declared(ctx.desired)
        found: Declared = scratch["declared"]
        return found

    def _links(self, ctx: PassContext) -> list[Link]:
        scratch = ctx.plugin_scratch(PLUGIN)
        if "links" not in scratch:
            scratch["links"] = netlink.links()
        links: list[Link] = scratch["links"]
        return links

    def _hold(self, vip: Vip, desired: Mapping[str, ShareSpec], paths: Paths, drained: bool,
              smbd: str | None) -> str:
        """Why the node must not hold `vip` now ("" if it may): drained, smbd down, or no
        share behind it can be read. The pass and the watch both ask this."""
        if drained:
            return DRAINED_REASON
        other = self._ceded_to(vip.address)
        if other:
            return (f"vip conflict: another host ({other}) kept using {vip.address} while this node held it; "
                    "released, and claimed again once a probe finds it free")
        if smbd:
            return smbd
        problems = [self._paths.problem(paths.host(desired[name.casefold()].path))
                    for name in vip.shares if name.casefold() in desired]
        if problems and all(problems):
            return "; ".join(p for p in problems if p)
        return ""

    @hookimpl
    def smbgw_node_resources(self, ctx: PassContext) -> Sequence[NodeResource]:
        if clustered(ctx.config):
            return []
        vips = self._declared(ctx).vips
        smbd = smbd_problem(ctx) if vips else None
        drained = bool(self._ledger(ctx).drained()) if vips else False
        resources = []
        for vip in vips.values():
            reason = self._hold(vip, ctx.desired, ctx.paths, drained, smbd)
            resources.append(NodeResource(vip.resource_id, vip.spec(not reason, reason)))
        # An address this agent added that nothing declares and the core has no record of
        # (the agent was killed after adding it, before the pass was recorded, and the share
        # went away meanwhile): declared as one to release, so it does not linger.
        for address, record in sorted(self._ledger(ctx).owned().items()):
            if address not in vips and addresses.resource_id(address) not in ctx.applied_resources:
                orphan = Vip(address, int(record["prefixlen"]), str(record["interface"]), ())
                resources.append(NodeResource(orphan.resource_id, orphan.spec(False, "no share declares it")))
        return resources

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        if desired is not None and not clustered(ctx.config):
            disagreement = self._declared(ctx).disagreements.get(desired.key)
            if disagreement:
                raise VipError(disagreement)
        return []

    @hookimpl
    def smbgw_plan_resource(
        self, ctx: PassContext, resource_id: str, desired: NodeResource | None, applied: NodeResource | None
    ) -> Sequence[Change]:
        owned = self._ledger(ctx).owned()
        links = self._links(ctx)
        if desired is None:
            return self._plan_removal(resource_id, owned, links)
        vip = Vip.from_spec(desired.spec)
        here = held_on(vip, links)
        if not desired.spec.get("hold"):
            if vip.address in owned and here:
                return [Change(resource_id, UPDATE, f"release {vip.text} from {vip.interface}: "
                                                    f"{desired.spec.get('reason')}")]
            return []
        problem = foreign_problem(vip, links, vip.address in owned) or \
            interface_problem(vip, next((link for link in links if link.name == vip.interface), None))
        if problem:
            raise VipError(problem)
        if [(link.name, found.prefixlen) for link, found in here] == [(vip.interface, vip.prefixlen)]:
            return []
        settings = VipSettings.from_config(ctx.config.plugin_sections)
        if here:
            was = ", ".join(f"{found.address}/{found.prefixlen} on {link.name}" for link, found in here)
            return [Change(resource_id, UPDATE, f"move {vip.text} to {vip.interface} (now {was})")]
        probing = f"probe {settings.probe_window:g}s, " if settings.probe_window > 0 else ""
        shares = ", ".join(vip.shares)
        return [Change(resource_id, CREATE, f"claim {vip.text} on {vip.interface} for {shares} "
                                            f"({probing}add, announce)")]

    @staticmethod
    def _plan_removal(resource_id: str, owned: Mapping[str, Any], links: Sequence[Link]) -> list[Change]:
        address = resource_id[len(PREFIX):]
        record = owned.get(address)
        if record is None:
            return []  # never added by this agent: never touched
        vip = Vip(address, int(record["prefixlen"]), str(record["interface"]), ())
        if held_on(vip, links):
            return [Change(resource_id, DELETE, f"remove {vip.text} from {vip.interface} (no share declares it)")]
        return [Change(resource_id, DELETE, f"forget {vip.address}: it is no longer on {vip.interface}")]

    # ---- applying: staged, made live in commit (after the shares it serves are) -------

    @hookimpl
    def smbgw_apply_resource(self, ctx: PassContext, resource: NodeResource, changes: Sequence[Change]) -> None:
        ctx.plugin_scratch(PLUGIN).setdefault("staged", {})[resource.id] = dict(resource.spec)

    @hookimpl
    def smbgw_remove_resource(
        self, ctx: PassContext, resource_id: str, applied: NodeResource | None, changes: Sequence[Change]
    ) -> None:
        ctx.plugin_scratch(PLUGIN).setdefault("staged", {})[resource_id] = None

    @hookimpl
    def smbgw_rollback_resource(self, ctx: PassContext, resource_id: str, applied: NodeResource | None) -> None:
        ctx.plugin_scratch(PLUGIN).setdefault("staged", {}).pop(resource_id, None)

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        """Releases first (a moved address leaves its old place before it is claimed),
        then every claim probed at once, added and announced."""
        staged: dict[str, dict[str, Any] | None] = ctx.plugin_scratch(PLUGIN).pop("staged", {})
        ledger = self._ledger(ctx)
        settings = VipSettings.from_config(ctx.config.plugin_sections)
        links = netlink.links()
        rejected: dict[str, str] = {}
        claims: list[tuple[str, Vip, Link]] = []
        for resource_id, spec in sorted(staged.items()):
            address = resource_id[len(PREFIX):]
            try:
                self._release_other_places(ledger, address, spec, links)
                if spec is not None and spec.get("hold"):
                    vip = Vip.from_spec(spec)
                    link = next((link for link in links if link.name == vip.interface), None)
                    if link is None:
                        raise VipError(f"interface {vip.interface} does not exist")
                    if not link.find(vip.address):
                        claims.append((resource_id, vip, link))
            except (claim.ClaimError, VipError) as exc:
                rejected[resource_id] = str(exc)
        if claims and settings.probe_window > 0:
            log.info("probing %s for %gs before claiming", ", ".join(f"{vip.address} on {link.name}"
                                                                  for _id, vip, link in claims), settings.probe_window)
        outcomes = claim.probe_all([(vip, link) for _id, vip, link in claims], settings)
        for resource_id, vip, link in claims:
            error = outcomes.get(vip.address)
            try:
                if error is not None:
                    raise error
                self._claim(ledger, vip, link, probed=settings.probe_window > 0)
            except claim.ClaimError as exc:
                rejected[resource_id] = str(exc)
                if exc.conflict:
                    self._conflicts[vip.address] = exc.conflict
                log.error("%s", exc)
        return rejected

    def _release_other_places(self, ledger: Ledger, address: str, spec: Mapping[str, Any] | None,
                              links: Sequence[Link]) -> None:
        """Remove the address from everywhere it should not be (all places when it is
        released, the old interface or prefix when it moves), if this agent added it."""
        owned = ledger.owned()
        if address not in owned:
            return
        keep = (spec["interface"], int(spec["prefixlen"])) if spec is not None and spec.get("hold") else None
        vip = Vip(address, int(owned[address]["prefixlen"]), str(owned[address]["interface"]), ())
        for link, found in held_on(vip, links):
            if (link.name, found.prefixlen) != keep:
                claim.release(vip, link, found.prefixlen)
                log.info("released %s/%s from %s", address, found.prefixlen, link.name)
        if keep is None:
            if self._announcer is not None:
                self._announcer.cancel(address)
            owned.pop(address)
            ledger.set_owned(owned)
            with self._lock:
                if address not in self._ceded:
                    self._conflicts.pop(address, None)

    def _claim(self, ledger: Ledger, vip: Vip, link: Link, probed: bool) -> None:
        owned = ledger.owned()
        owned[vip.address] = {"interface": vip.interface, "prefixlen": vip.prefixlen, "since": time.time()}
        try:
            ledger.set_owned(owned)  # recorded before it exists: a crash in between leaves no stray address
        except OSError as exc:
            raise claim.ClaimError(f"cannot record {vip.address} in {ledger.path} before adding it: {exc}") from exc
        try:
            claim.add(vip, link, probed)
        except claim.ClaimError:
            owned.pop(vip.address)
            ledger.set_owned(owned)
            raise
        self._conflicts.pop(vip.address, None)
        if self._announcer is not None:
            try:
                self._announcer.claimed(vip.address, link.name, link.mac)
            except Exception as exc:  # the address is ours; a lost announcement is repeated by the burst
                log.warning("announcing %s on %s: %s", vip.address, link.name, exc)
        log.info("claimed %s on %s for %s", vip.text, link.name, ", ".join(vip.shares))

    # ---- observing -------------------------------------------------------------------

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        ledger = self._ledger(ctx)
        drained = ledger.drained()
        if clustered(ctx.config):
            return {"mode": "ctdb"}
        ours = [resource for resource_id, resource in sorted(ctx.resources.items())
                if resource_id.startswith(PREFIX) and resource.plugin in ("", PLUGIN)]
        links: list[Link] = []
        if ours:  # with no address to look for, no netlink socket (nor pyroute2's import)
            try:
                links = netlink.links()
            except netlink.NetlinkError as exc:
                return {"error": str(exc), "drained": bool(drained)}
        owned = ledger.owned()
        view: dict[str, Any] = {}
        expected: dict[str, tuple[Vip, bool]] = {}
        watched: list[defend.Held] = []
        for resource in ours:
            vip = Vip.from_spec(resource.spec)
            link = next((link for link, _found in held_on(vip, links) if link.name == vip.interface), None)
            present = link is not None
            hold = bool(resource.spec.get("hold"))
            expected[vip.address] = (vip, hold)
            if link is not None and hold and vip.address in owned:
                watched.append(defend.Held(vip.address, link.name, link.mac))
            view[vip.address] = {"prefixlen": vip.prefixlen, "interface": vip.interface, "shares": list(vip.shares),
                                 "hold": hold, "reason": resource.spec.get("reason", ""), "present": present,
                                 "owned": vip.address in owned, "conflict": self._conflicts.get(vip.address)}
        if not ctx.dry_run:
            with self._lock:
                self._expected = expected
            if self._defender is not None:
                self._defender.watch(watched)
        return {"mode": "single", "drained": bool(drained), "drained_since": (drained or {}).get("since"),
                "addresses": view, "ledger_problem": ledger.problem}

    @hookimpl
    def smbgw_health(self, ctx: PassContext) -> Sequence[Health]:
        findings = []
        with self._lock:
            expected = dict(self._expected)
        for address, (vip, hold) in expected.items():
            resource = vip.resource_id
            if address in self._conflicts:
                findings.append(Health("vip", False, f"vip conflict: {self._conflicts[address]} answers for "
                                                     f"{address}", resource))
            elif not hold:
                reason = (ctx.resources.get(resource) or NodeResource(resource)).spec.get("reason", "")
                findings.append(Health("vip", reason == DRAINED_REASON, f"not held: {reason}", resource))
        return findings

    @hookimpl
    def smbgw_schedules(self, ctx: PassContext) -> Sequence[Schedule]:
        """A cheap watch every `health_interval`: a pass only when what the node could
        serve, or what it holds, differs from what the last pass decided."""
        if clustered(ctx.config) or not any(rid.startswith(PREFIX) for rid in ctx.resources):
            return []
        settings = VipSettings.from_config(ctx.config.plugin_sections)
        interval = settings.health_interval
        return [Schedule(WATCH_JOB, lambda last: (last or 0.0) + interval, self._watch(ctx), timeout=30.0,
                         wake=bool)]

    def _watch(self, ctx: PassContext) -> Callable[[JobProgress], Any]:
        desired, paths, ledger = dict(ctx.desired), ctx.paths, self._ledger(ctx)

        def run(progress: JobProgress) -> str:
            with self._lock:
                expected = dict(self._expected)
            smbd, drained = smbd_problem(ctx), bool(ledger.drained())
            links = netlink.links()
            for vip, hold in expected.values():
                healthy = not self._hold(vip, desired, paths, drained, smbd)
                present = any(link.name == vip.interface for link, _found in held_on(vip, links))
                if healthy != hold:
                    return f"{vip.address}: the node {'can' if healthy else 'cannot'} serve its shares now"
                if hold and not present:
                    return f"{vip.address} is missing from {vip.interface}"
            return ""

        return run

    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        view = ctx.status.get("plugins", {}).get(PLUGIN, {}) if isinstance(ctx.status, Mapping) else {}
        if clustered(ctx.config):
            return []  # CTDB holds the addresses: its plugin reports them
        present = GaugeMetricFamily("smbgw_vip_present", "1 if the share's [ha] vip is configured on its interface "
                                    "on this node", labels=["share", "vip", "interface"])
        conflict = GaugeMetricFamily("smbgw_vip_conflict", "1 while another host answers for the address, so "
                                     "this node does not claim it", labels=["vip"])
        drained = GaugeMetricFamily("smbgw_node_drained", "1 while the node is drained (smbgwctl drain)")
        for address, entry in sorted((view.get("addresses") or {}).items()):
            for share in entry.get("shares", ()):
                present.add_metric([share, address, entry.get("interface", "")], 1.0 if entry.get("present") else 0.0)
            conflict.add_metric([address], 1.0 if entry.get("conflict") else 0.0)
        if view.get("mode") == "single":
            drained.add_metric([], 1.0 if view.get("drained") else 0.0)
        return [present, conflict, drained]

    # ---- smbgwctl drain / undrain ----------------------------------------------------

    @hookimpl
    def smbgw_commands(self) -> Sequence[Command]:
        return [
            Command("drain", "take this node out of service: release its addresses and wait for SMB sessions "
                             "to end", self._start_drain, flags=(("force", "drain even if an address is left "
                                                                          "with no node to hold it"),),
                    options=(("timeout", "how long to wait for sessions to end (default 5m)"),
                             ("target", "the node to move addresses to (CTDB only)")), shared=True),
            Command("undrain", "put this node back in service", self._start_undrain, shared=True),
        ]

    def _held(self, ctx: PassContext) -> Callable[[], list[str]]:
        ledger = self._ledger(ctx)

        def held() -> list[str]:
            owned, links = ledger.owned(), netlink.links()
            return sorted(f"{address} on {record['interface']}" for address, record in owned.items()
                          if held_on(Vip(address, int(record["prefixlen"]), str(record["interface"]), ()), links))
        return held

    def _start_drain(self, ctx: PassContext, arguments: Mapping[str, Any]) -> Job:
        timeout = _duration(arguments.get("timeout"), DEFAULT_TIMEOUT)
        if clustered(ctx.config):
            return cluster_drain(ctx, timeout, arguments.get("target"), bool(arguments.get("force")))
        # Without CTDB, --target is for the guests another plugin moves (`drain` is a shared
        # verb): each address stays with the node its shares are placed on.
        held = self._held(ctx)()
        if held and not arguments.get("force"):
            raise CommandRefused(
                f"draining releases {', '.join(held)}, and without CTDB no other node takes an address over: "
                "its shares become unreachable there. Place the shares on another node first (node = ... in "
                "their files), or drain with --force")
        ledger = self._ledger(ctx)
        if not ledger.drained():
            try:
                ledger.set_drained({"since": time.time()})
            except OSError as exc:
                raise CommandRefused(f"cannot record the drain in {ledger.path}: {exc}") from exc
            log.warning("node drained by smbgwctl: releasing %s", ", ".join(held) or "no address")
        paths, runner = ctx.paths, ctx.runner
        wait = DrainWait(self._held(ctx), lambda: sessions(paths, runner), timeout)
        return Job("vip:drain", wait, timeout + 60.0, "", PLUGIN)

    def _start_undrain(self, ctx: PassContext, arguments: Mapping[str, Any]) -> Job:
        if clustered(ctx.config):
            return cluster_undrain(ctx)
        ledger = self._ledger(ctx)
        was = ledger.drained()
        try:
            ledger.set_drained(None)
        except OSError as exc:
            raise CommandRefused(f"cannot record the undrain in {ledger.path}: {exc}") from exc
        if was:
            log.warning("node undrained by smbgwctl: addresses are claimed again at the next pass")
        text = "undrained: the next pass claims this node's addresses" if was else "the node was not drained"
        return Job("vip:undrain", lambda _progress: {"text": text}, 10.0, "", PLUGIN)


def _duration(text: object, default: float) -> float:
    if text is None:
        return default
    try:
        return parse_duration(text, 0.0, 86400.0)
    except FieldError as exc:
        raise CommandRefused(f"--timeout: {exc}") from exc

