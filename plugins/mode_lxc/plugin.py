"""LXC mode: each share served by smbd inside its own unprivileged Proxmox container.

Per share, the plan compares the container (its config file in /etc/pve, its state as
the last observation saw it, the smb.conf the agent last pushed into it) with what the
share file asks for. The work is done by a job per share (`lxc:<share>`), outside the
pass and its command cap: create (`pct create`, the id map written into the config,
`pct start`, systemd awaited, smb.conf pushed and smbd reloaded), change (`pct set`,
a restart at the end when an option takes effect only at a start, smb.conf pushed),
start a container found stopped, remove (`pct stop`, `pct destroy --purge`; the share's
data is a bind mount and is never touched). While a job runs, the share is "pending"; a
failed job fails the share, which is retried with the usual back-off, and a create that
fails half way destroys what it created.

The agent never touches a guest it did not create: a container is the share's only if
its config carries the `smbgw` tag and the share's own tag. A VMID in use by anything
else (any node, container or VM: /etc/pve/.vmlist) is an error. VMIDs the agent
allocates from `[proxmox] vmid_range` are recorded in its state, so a share keeps its
container and no two shares get the same id.

Every `observe_interval` a background reading lists the node's containers (`pct list`)
and connects to TCP 445 on each share's address: metrics, status and drift repair (a
container stopped by hand is started again unless `autostart = false`; smbd not
answering in a running container is restarted) come from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from smbgw_agent.effects.fileio import atomic_write
from smbgw_agent.effects.runner import CommandError
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.idranges import IdRange
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.changes import CREATE, DELETE, UPDATE, Change, Health, share_resource
from smbgw_agent.platform.commands import Command, CommandRefused
from smbgw_agent.platform.context import CollectContext, PassContext
from smbgw_agent.platform.guests import GuestStep
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import Job, JobProgress, Schedule

from ..proxmox import hamanager, identity
from ..proxmox import orphans as guest_orphans
from ..proxmox.guestconf import GuestConfig, GuestConfigError, parse_property_string, read_guest_config
from ..proxmox.guestmode import (
    PUSHED,
    STEPS,
    USERS,
    GuestModePlugin,
    answers_smb,
    check_free,
    check_shared_storage,
    guest_smb_conf,
    ha_change,
    wants_ha,
)
from ..proxmox.guestnet import DHCP
from ..proxmox.haresources import RESOURCES
from ..proxmox.passdb import PassdbEntry, copy_into, local_names, read_entries
from ..proxmox.passdb import digest as users_digest
from ..proxmox.table import ProxmoxSettings
from ..proxmox.vmlist import allocate, local_node
from . import drain, guest, orphans, vfs
from .idmap import IdMapError, MapLine, base_of, build, missing, parse_subid, subid_lines
from .pct import RUNNING, STOPPED, Pct
from .shell import ContainerShell
from .table import SECTION, LxcSpec, parse_share_table

log = logging.getLogger(__name__)
MODE = PLUGIN = "mode_lxc"
MODE_NAME = "lxc"
OBSERVE_JOB = "lxc:observe"
HA_SECTION = "ha"
ORPHANS_JOB = "lxc:orphans"
ORPHANS_RETRY = 60.0
PVE = "/etc/pve"
LXC_DIR = f"{PVE}/lxc"
OBSERVE_INTERVAL = 10.0
JOB_TIMEOUT = 900.0
BOOT_TIMEOUT = 120.0
CONNECT_TIMEOUT = 1.0
PROBE_WINDOW = 0.6  # RFC 5227 asks for 1-2 s; the virtual-IP claim's default, proven on real links
SMB_CONF = "/etc/samba/smb.conf"
# The node's own files, never a sandbox's copy: LXC's newuidmap reads them.
SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"
VMLIST = "/etc/pve/.vmlist"


def config_path(vmid: int) -> str:
    return f"{LXC_DIR}/{vmid}.conf"


def _local_node(ctx: PassContext) -> str | None:
    """This node's name in the cluster (/etc/pve/local); None off a Proxmox node."""
    return local_node(ctx.paths.host(PVE))


def _wanted_tags(ctx: PassContext) -> set[str]:
    return {identity.share_tag(share.name) for share in ctx.desired.values() if share.mode == MODE_NAME}


def spec_of(share: ShareSpec) -> LxcSpec:
    return LxcSpec.of(share.sections[SECTION])


def netbios_name(vmid: int) -> str:
    return f"SMBGW-{vmid}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Observation:
    """The last background reading: containers' states and whether smbd answers."""

    at: float = 0.0
    status: dict[int, str] = field(default_factory=dict)
    answers: dict[int, bool] = field(default_factory=dict)
    leased: dict[int, str] = field(default_factory=dict)  # the address a DHCP container holds
    error: str | None = None


class Observer:
    def __init__(self) -> None:
        self.value = Observation()
        self._lock = threading.Lock()

    def refresh(self, pct: Pct, addresses: Mapping[int, str], keep_running: Sequence[int] = (),
                dhcp: Sequence[int] = ()) -> bool:
        """A new reading; True when a pass should look at it: it differs from the last, or
        it finds something to repair (a container of `keep_running` stopped, smbd not
        answering). Change alone is not enough: a reading taken while a container was
        being created says "stopped", and so does the next one after someone stopped it.
        A container of `dhcp` is asked inside for the address it holds, and smbd is tried
        there; one that holds none yet is not tried."""
        try:
            listed = pct.list()
            status = {vmid: row.status for vmid, row in listed.items()}
            leased = {vmid: address for vmid in dhcp if status.get(vmid) == RUNNING
                      and (address := pct.address(vmid)) is not None}
            answers = {vmid: answers_smb(address) for vmid, address in {**addresses, **leased}.items()
                       if status.get(vmid) == RUNNING}
            reading = Observation(time.time(), status, answers, leased)
        except (CommandError, ValueError) as exc:
            reading = Observation(time.time(), dict(self.value.status), dict(self.value.answers),
                                  dict(self.value.leased), str(exc))
        with self._lock:
            before, self.value = self.value, reading
        for vmid in sorted(set(reading.status) | set(before.status)):
            if before.at and reading.status.get(vmid) != before.status.get(vmid):
                log.info("lxc: container %d is %s (was %s)", vmid, reading.status.get(vmid, "gone"),
                         before.status.get(vmid, "absent"))
        repair = any(reading.status.get(vmid) == STOPPED for vmid in keep_running) or \
            any(answer is False for answer in reading.answers.values())
        return repair or (before.status, before.answers, before.leased, before.error) != \
            (reading.status, reading.answers, reading.leased, reading.error)


@dataclass(frozen=True)
class Work:
    """What a share's job does, decided in the pass."""

    share: ShareSpec
    vmid: int
    create: bool
    settings: ProxmoxSettings
    options: Mapping[str, str]
    idmap: Sequence[MapLine]
    changes: Sequence[guest.Difference] = ()
    start: bool = False
    restart_smbd: bool = False
    smb_conf: str | None = None  # to push
    remove: bool = False
    users: Sequence[PassdbEntry] | None = None  # to copy in (None: nothing to do)
    probe: str | None = None  # an address the container takes now: checked free on the bridge first
    ha: str | None = None  # "add" or "remove": the container's Proxmox HA registration
    recreate: bool = False  # a half-made container (an interrupted create) is destroyed first
    steps: Sequence[GuestStep] = ()  # other plugins' work inside the container, run at the end
    step_record: Mapping[str, str] | None = None  # every current step's inputs, recorded when the job worked
    teardown: Sequence[GuestStep] = ()  # before a removal destroys the container


class LxcModePlugin(GuestModePlugin):
    PLUGIN, MODE_NAME, SECTION, JOB_TIMEOUT = PLUGIN, MODE_NAME, SECTION, JOB_TIMEOUT
    JOB_PREFIX, GUEST, GUEST_TYPE, CONFIG_DIR = "lxc", "container", "lxc", "lxc"

    def __init__(self) -> None:
        super().__init__()
        self._observer = Observer()
        self._orphans: list[guest_orphans.Orphan] = []  # as the last pass's health check found them
        self._destroy_orphans = False

    # ---- tables ----------------------------------------------------------------------

    @hookimpl
    def smbgw_validate_share(self, share: ShareSpec, config: AgentConfig) -> Sequence[str]:
        has_table = SECTION in share.sections
        if share.mode != MODE_NAME:
            return ["[lxc] is for mode = \"lxc\" only"] if has_table else []
        problems = []
        if not has_table:
            problems.append("mode = \"lxc\" needs an [lxc] table with the container's address")
        settings = ProxmoxSettings.from_config(config.plugin_sections)
        if settings is None:
            problems.append("mode = \"lxc\" needs [proxmox] in agent.toml (vmid_range, bridge, storage, "
                            "lxc_template)")
        elif settings.lxc_template is None:
            problems.append("mode = \"lxc\" needs [proxmox] lxc_template in agent.toml")
        return problems

    # ---- observing -------------------------------------------------------------------

    @hookimpl
    def smbgw_schedules(self, ctx: PassContext) -> Sequence[Schedule]:
        if not any(share.mode == MODE_NAME for share in ctx.desired.values()) and not self._vmids(ctx) \
                and not self._orphans:
            return []
        pct, observer = Pct(ctx.runner), self._observer
        vmids = self._vmids(ctx)
        ours = {vmids[key]: spec_of(share) for key, share in ctx.desired.items()
                if share.mode == MODE_NAME and SECTION in share.sections and key in vmids}
        addresses = {vmid: spec.address for vmid, spec in ours.items() if spec.address != DHCP}
        keep_running = [vmid for vmid, spec in ours.items() if spec.autostart]
        dhcp = [vmid for vmid, spec in ours.items() if spec.address == DHCP]

        def next_run(last: float | None) -> float:
            return 0.0 if last is None else last + OBSERVE_INTERVAL

        schedules = [Schedule(OBSERVE_JOB, next_run,
                              lambda _progress: observer.refresh(pct, addresses, keep_running, dhcp),
                              timeout=OBSERVE_INTERVAL * 6, plugin=PLUGIN, wake=bool)]
        schedules += self._checks_schedule(
            ctx, {key: vmid for key, vmid in vmids.items() if vmid in ours}, lambda vmid: ContainerShell(pct, vmid),
            lambda: [vmid for vmid, status in observer.value.status.items() if status == RUNNING])
        if self._destroy_orphans and self._orphans:
            run = orphans.destroy_job(pct, ctx.paths.host(LXC_DIR), list(self._orphans), _wanted_tags(ctx),
                                      ctx.paths.host(ctx.config.shares_dir), self._node_name(ctx))
            schedules.append(Schedule(ORPHANS_JOB, lambda last: 0.0 if last is None else last + ORPHANS_RETRY, run,
                                      timeout=JOB_TIMEOUT, plugin=PLUGIN,
                                      wake=lambda result: bool(result.get("destroyed"))))
        return schedules

    # ---- planning --------------------------------------------------------------------

    def _vmid_for(self, ctx: PassContext, share: ShareSpec, settings: ProxmoxSettings) -> int:
        spec = spec_of(share)
        if spec.vmid is not None:
            return spec.vmid
        known = self._vmids(ctx).get(share.key)
        if known is not None:
            return known
        # Ids other shares hold, or were given earlier in this pass (two new shares
        # planned in one pass must not both get the lowest free one).
        planned: dict[str, int] = ctx.plugin_scratch(PLUGIN).setdefault("allocated", {})
        reserved = set(self._vmids(ctx).values()) | {v for k, v in planned.items() if k != share.key}
        for other in ctx.desired.values():
            if other.mode == MODE_NAME and SECTION in other.sections and spec_of(other).vmid is not None:
                reserved.add(int(spec_of(other).vmid or 0))
        vmid = allocate(*settings.vmid_range, in_use=set(self._guests(ctx)), reserved=reserved)
        if vmid is None:
            low, high = settings.vmid_range
            raise ValueError(f"no free VMID left in [proxmox] vmid_range {low}-{high}: widen it or remove shares")
        planned[share.key] = vmid
        return vmid

    def _idmap(self, ctx: PassContext, share: ShareSpec, user_ids: Sequence[int] = (),
               vmid: int | None = None) -> list[MapLine]:
        """Container ids shifted as Proxmox does, with the owner of the share's directory,
        the share's users (`user_ids`) and the ids plugins ask for (the domain's idmap
        ranges) passed through (`idmap.py` says why); checked against /etc/subuid and
        /etc/subgid."""
        asked = ctx.guest_id_ranges(f"lxc:{vmid}" if vmid is not None else "lxc")
        try:
            owner = ctx.paths.host(share.path).stat()
            uid, gid = owner.st_uid, owner.st_gid
        except FileNotFoundError:
            uid = gid = 0  # made by the agent at apply, owned by root: nothing to pass through
        lines = []
        for kind, own_id, subid in (("u", uid, SUBUID), ("g", gid, SUBGID)):
            try:
                granted = parse_subid(Path(subid).read_text(errors="replace"))
            except FileNotFoundError:
                granted = []
            base = base_of(granted)
            if base is None:
                raise ValueError(f"{subid} grants root no range of 65536 ids for containers (Proxmox's default "
                                 "is root:100000:65536): add one")
            ids = {own_id, *user_ids} if kind == "u" else {own_id}
            through = [IdRange(one, one) for one in sorted(ids) if one != 0] + list(asked)
            try:
                kind_lines = build(kind, base, through)
            except IdMapError as exc:
                raise ValueError(f"the id map of {share.name}'s container: {exc}") from None
            gaps = missing(kind_lines, granted)
            if gaps:
                raise ValueError(f"{subid} does not let root map {', '.join(map(str, gaps))} into a container "
                                 f"(the owner of {share.path}): add {subid_lines(gaps)}")
            lines += kind_lines
        return lines

    def _smb_conf(self, ctx: PassContext, share: ShareSpec, vmid: int) -> str:
        return guest_smb_conf(ctx, share, f"lxc:{vmid}", netbios_name(vmid), f"container {vmid}",
                              Path(guest.SHARE_MOUNT))

    def plan_work(self, ctx: PassContext, share: ShareSpec) -> tuple[Work, list[Change]]:
        settings = ProxmoxSettings.from_config(ctx.config.plugin_sections)
        if settings is None or settings.lxc_template is None:
            raise ValueError("mode = \"lxc\" needs [proxmox] with lxc_template in agent.toml")
        spec = spec_of(share)
        vmid = self._vmid_for(ctx, share, settings)
        host_path = str(ctx.paths.host(share.path))
        if wants_ha(share):
            check_shared_storage(ctx, settings, "container")
        options = guest.wanted_options(share.name, share.file, spec, settings.bridge, host_path, wants_ha(share),
                                       self._node_name(ctx))
        entries = read_entries(ctx.runner, ctx.paths.smb_conf, local_names(share.valid_users))
        idmap = self._idmap(ctx, share, [entry.uid for entry in entries], vmid)
        smb_conf = self._smb_conf(ctx, share, vmid)
        steps = ctx.guest_steps(f"lxc:{vmid}")
        step_record = {step.name: step.inputs for step in steps}
        resource = share_resource(share.name)
        config = read_guest_config(ctx.paths.host(config_path(vmid)))

        def create(recreate: bool) -> Work:
            """A new container: its address probed first, under HA if the share asks;
            none on a drained node."""
            refusal = drain.DrainRecord(ctx.paths.state_dir).refusal()
            if refusal:
                raise ValueError(refusal)
            return Work(share, vmid, True, settings, options, idmap, smb_conf=smb_conf, users=entries,
                        probe=None if spec.address == DHCP else spec.address,
                        ha="add" if wants_ha(share) else None, recreate=recreate, steps=steps, step_record=step_record)

        if config is None:
            guests = self._guests(ctx)
            elsewhere = self._moved_to(ctx, share, vmid, spec_of(share).vmid, guests)
            self._moved.pop(share.key, None)
            if elsewhere is not None:
                # Proxmox HA (or someone with pct migrate) moved it: it serves the share
                # there. Nothing is made here; edits wait until it is back.
                self._moved[share.key] = (vmid, elsewhere)
                return Work(share, vmid, False, settings, options, idmap), []
            if vmid in guests:
                raise ValueError(f"VMID {vmid} is in use by a {guests[vmid].type} guest on node {guests[vmid].node}: "
                                 "the agent never touches a guest it did not create")
            return create(False), [Change(resource, CREATE, f"create container {vmid} ({options['hostname']}) from "
                                          f"{settings.lxc_template} on {settings.storage}, start it and serve "
                                          f"[{share.name}] at {spec.address}"
                                          + (" under Proxmox HA" if wants_ha(share) else "")
                                          + "".join(f"; {step.what}" for step in steps))]
        if _half_made(config) and self._vmids(ctx).get(share.key) == vmid:
            return create(True), [Change(resource, CREATE, f"container {vmid} was left half made (lock: create: "
                                         "its pct create was interrupted): destroy it and create it again")]
        self._check_ours(config, share, vmid)
        differences = guest.differences(config, options, idmap)
        changes = [Change(resource, UPDATE, f"container {vmid}: {d.detail()}") for d in differences]
        seen = self._observer.value
        # A reading taken before the share's last job ended says nothing about now.
        fresh_after = self._last_job_end(ctx, share.key)
        fresh = seen.at > fresh_after
        state = seen.status.get(vmid) if fresh else None
        start = state == STOPPED and spec.autostart
        if start:
            changes.append(Change(resource, UPDATE, f"start container {vmid} (found stopped)"))
        restart_smbd = state == RUNNING and seen.answers.get(vmid) is False
        if restart_smbd:
            changes.append(Change(resource, UPDATE, f"restart smbd in container {vmid} ({spec.address} port 445 "
                                  "does not answer)"))
        pushed = (ctx.plugin_state(PLUGIN).get(PUSHED) or {}).get(share.key)
        push = pushed != digest(smb_conf)
        if push:
            changes.append(Change(resource, UPDATE, f"write smb.conf in container {vmid} and reload smbd"))
        copied = (ctx.plugin_state(PLUGIN).get(USERS) or {}).get(share.key)
        users = entries if copied != users_digest(entries) else None
        if users is not None and entries:
            changes.append(Change(resource, UPDATE, f"copy users {', '.join(e.name for e in entries)} from this "
                                  f"node's passdb into container {vmid}"))
        ran = (ctx.plugin_state(PLUGIN).get(STEPS) or {}).get(share.key) or {}
        # Inside a container that runs or is started now; one left stopped is done later.
        due = [step for step in steps if ran.get(step.name) != step.inputs] \
            if state != STOPPED or start else []
        for step in due:
            changes.append(Change(resource, UPDATE, f"container {vmid}: {step.what}"))
        for step, reason in self._repairs(ctx, share.key, vmid, [s for s in steps if s not in due], fresh_after):
            due.append(step)
            changes.append(Change(resource, UPDATE, f"container {vmid}: {step.what} again ({reason})"))
        ha = ha_change(ctx, PLUGIN, share, f"ct:{vmid}")
        if ha == "add":
            changes.append(Change(resource, UPDATE, f"register container {vmid} with Proxmox HA (ha-manager add "
                                  f"ct:{vmid} --state started)"))
        elif ha == "remove":
            changes.append(Change(resource, UPDATE, f"take container {vmid} out of Proxmox HA (ha-manager remove "
                                  f"ct:{vmid}); it keeps running"))
        lock = config.get("lock")
        if lock and changes:
            raise ValueError(f"container {vmid} is locked ({lock}) by Proxmox (a backup, a snapshot, a migration): "
                             "its changes wait until it is unlocked")
        work = Work(share, vmid, False, settings, options, idmap, differences, start, restart_smbd,
                    smb_conf if push or differences else None, users=users, probe=_new_address(config, spec), ha=ha,
                    steps=due, step_record=step_record if due or ran.keys() != step_record.keys() else None)
        return work, changes

    @staticmethod
    def _node_name(ctx: PassContext) -> str:
        """This node as the cluster names it (/etc/pve/local), else the agent's node name."""
        return _local_node(ctx) or ctx.config.node

    @staticmethod
    def _check_ours(config: GuestConfig, share: ShareSpec, vmid: int) -> None:
        if not identity.belongs_to(config, share.name):
            tags = ";".join(sorted(identity.tags_of(config))) or "none"
            raise ValueError(f"container {vmid} is not this share's (its tags: {tags}): "
                             "the agent never touches a guest it did not create; give the share another vmid")

    def parse_table(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return parse_share_table(data)

    def removal_changes(self, ctx: PassContext, name: str, vmid: int, applied: ShareSpec | None) -> list[Change]:
        if read_guest_config(ctx.paths.host(config_path(vmid))) is None:
            return []
        return [Change(share_resource(name), DELETE, f"stop and destroy container {vmid} (pct destroy --purge); "
                       f"the data in {applied.path if applied else 'the share directory'} stays")]

    def removal_work(self, ctx: PassContext, share: ShareSpec, vmid: int, teardown: Sequence[GuestStep]) -> Work:
        settings = ProxmoxSettings.from_config(ctx.config.plugin_sections) or ProxmoxSettings((0, 0), "", "")
        return Work(share, vmid, False, settings, {}, (), remove=True, teardown=teardown)

    def job_for(self, ctx: PassContext, work: Work) -> Callable[[JobProgress], dict[str, Any]]:
        return _remove_job(ctx, work) if work.remove else _apply_job(ctx, work)

    # ---- smbgwctl drain ----------------------------------------------------------------

    @hookimpl
    def smbgw_commands(self) -> Sequence[Command]:
        return [Command("drain", "take this node out of service: migrate its LXC-mode containers to --target "
                                 "(pct migrate --restart)", self._start_drain,
                        flags=(("force", "drain even if something cannot be moved (it is left here)"),),
                        options=(("timeout", "how long to wait for SMB sessions to end (default 5m)"),
                                 ("target", "the node to move to: a Proxmox node name for containers; with CTDB, "
                                            "the node (pnn or private address) that takes the addresses")),
                        shared=True)]

    def _start_drain(self, ctx: PassContext, arguments: Mapping[str, Any]) -> Job | None:
        """This node's share containers (the VMIDs recorded for shares, with a config on
        this node), checked before anything moves."""
        host = ctx.paths.host
        here: dict[int, str] = {}
        left: dict[int, str] = {}
        for key, vmid in sorted(self._vmids(ctx).items()):
            try:
                config = read_guest_config(host(config_path(vmid)))
            except GuestConfigError as exc:
                raise CommandRefused(f"cannot read container {vmid}'s config: {exc}") from None
            if config is None:
                continue
            if drain.movable(config):
                here[vmid] = key
            else:
                left[vmid] = f"share {key}: its data is a local bind mount, which pct migrate refuses"
        force, target = bool(arguments.get("force")), arguments.get("target")
        record = drain.DrainRecord(ctx.paths.state_dir)
        if not here and not left:
            self._record_drain(record, None)
            return None
        if not target:
            if force:
                self._record_drain(record, None)
                return None
            raise CommandRefused(f"this node runs the containers of {len(here) + len(left)} share(s): name the "
                                 "node to move them to with --target NODE, or drain with --force to leave them here")
        drain.check_target(str(target), _local_node(ctx), host(PVE))
        if left and not force:
            raise CommandRefused("; ".join(f"container {vmid} ({why})" for vmid, why in sorted(left.items())) +
                                 ". Put such a share on storage every node mounts with [ha] proxmox_ha = true, "
                                 "or drain with --force to leave it here")
        self._record_drain(record, str(target))
        return drain.migrate_job(Pct(ctx.runner), host(VMLIST), here, str(target), left)

    @staticmethod
    def _record_drain(record: drain.DrainRecord, target: str | None) -> None:
        """Before anything moves: from now on no container is made here."""
        try:
            record.set(target, time.time())
        except OSError as exc:
            raise CommandRefused(f"cannot record the drain in {record.path}: {exc}") from exc

    # ---- status and metrics ----------------------------------------------------------

    @hookimpl
    def smbgw_health(self, ctx: PassContext) -> Sequence[Health]:
        """Containers the agent made for shares no file declares now (orphans.py): reported
        with what to do; destroyed by a job only with `[proxmox] destroy_orphans = true`."""
        found = guest_orphans.find(ctx.paths.host(LXC_DIR), _wanted_tags(ctx), self._node_name(ctx))
        settings = ProxmoxSettings.from_config(ctx.config.plugin_sections)
        self._orphans = found
        self._destroy_orphans = settings is not None and settings.destroy_orphans
        if self._destroy_orphans:
            what = "the agent destroys it ([proxmox] destroy_orphans = true) when its share file is gone"
        else:
            what = "remove it with pct destroy {vmid} --purge, or set [proxmox] destroy_orphans = true"
        findings = [Health("lxc-orphan", False, f"container {orphan.vmid} ({orphan.named()}) was made by smbgw-agent "
                           f"for a share no file declares now: {what.format(vmid=orphan.vmid)} (the share's data "
                           "is on the host and stays)", f"lxc:{orphan.vmid}") for orphan in found]
        findings += self._check_findings(ctx)
        here = _local_node(ctx) or "this node"
        for key, (vmid, node) in sorted(self._moved.items()):
            if key in ctx.desired:
                findings.append(Health("lxc-moved", False, f"container {vmid} of share {ctx.desired[key].name} runs "
                                       f"on node {node} (moved by Proxmox HA or a migration) and serves the share "
                                       f"there; edits of the share wait until it is back on {here} (ha-manager "
                                       f"migrate ct:{vmid} {here}, or pct migrate {vmid} {here} --restart)",
                                       f"lxc:{vmid}"))
        return findings

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        seen = self._observer.value
        vmids = self._vmids(ctx)
        if not vmids and not seen.at:
            return {}
        return {"containers": {key: {"vmid": vmid, "status": seen.status.get(vmid),
                                     "smbd_answers": seen.answers.get(vmid), "address": self._address(ctx, key, vmid)}
                               for key, vmid in sorted(vmids.items())},
                "observed": seen.at or None, "error": seen.error}

    def _address(self, ctx: PassContext, key: str, vmid: int) -> str | None:
        """Where clients reach the share: its static address, or the one its container
        holds by DHCP (None until it has one)."""
        share = ctx.desired.get(key)
        if share is not None and SECTION in share.sections and spec_of(share).address != DHCP:
            return spec_of(share).address
        return self._observer.value.leased.get(vmid)

    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        shares = ctx.status.get("plugins", {}).get(PLUGIN, {}).get("containers", {})
        if not shares:
            return []
        running = GaugeMetricFamily("smbgw_lxc_container_running", "1 if the share's container is running",
                                    labels=["share", "vmid"])
        seen = self._observer.value
        for key, info in sorted(shares.items()):
            vmid = int(info.get("vmid") or 0)
            running.add_metric([key, str(vmid)], 1.0 if seen.status.get(vmid) == RUNNING else 0.0)
        return [running]


# ---- the jobs (worker threads) --------------------------------------------------------


def _half_made(config: GuestConfig) -> bool:
    """A config `pct create` took the id with and never finished: only its lock. Whose it
    is comes from the agent's record of the VMID it was creating it under."""
    return config.get("lock") == "create" and not config.tags and config.get("hostname") is None


def _new_address(config: GuestConfig, spec: LxcSpec) -> str | None:
    """The share's static address when the container does not have it yet (an address
    edited in the share file); None when it keeps its address or takes one by DHCP."""
    if spec.address == DHCP:
        return None
    try:
        live = parse_property_string(config.get("net0") or "", None).get("ip", "")
        if ipaddress.ip_interface(live).ip == ipaddress.ip_interface(spec.address).ip:
            return None
    except (GuestConfigError, ValueError):
        pass
    return spec.address


def _apply_job(ctx: PassContext, work: Work) -> Callable[[JobProgress], dict[str, Any]]:
    pct, host, runner = Pct(ctx.runner), ctx.paths.host, ctx.runner
    shell = ContainerShell(pct, work.vmid)

    def run(progress: JobProgress) -> dict[str, Any]:
        vmid = work.vmid
        if work.probe is not None:
            check_free(work.settings.bridge, work.probe, progress, "container", "lxc")
        if work.recreate:
            progress.report(f"destroying the half-made container {vmid}")
            pct.unlock(vmid)
            pct.destroy(vmid)
        if work.create:
            _create(pct, host, work, progress)
            if work.users:
                progress.report(f"copying users into container {vmid}")
                copy_into(shell, work.users)
        else:
            at_start = [d for d in work.changes if d.at_start]
            if work.changes:
                progress.report(f"changing container {vmid}")
                pct.set(guest.set_arguments(vmid, work.changes))
                if any(d.key == "lxc.idmap" for d in work.changes):
                    write_idmap(host(config_path(vmid)), work.idmap)
            if at_start and not work.start:
                progress.report(f"restarting container {vmid} ({', '.join(d.key for d in at_start)})")
                if pct.status(vmid) == RUNNING:  # stopped meanwhile (by hand, or a crash of the host)
                    pct.stop(vmid)
                pct.start(vmid)
                _await_boot(pct, vmid, progress)
            elif work.start and pct.status(vmid) != RUNNING:
                progress.report(f"starting container {vmid}")
                pct.start(vmid)
                _await_boot(pct, vmid, progress)
        if work.users and not work.create:
            progress.report(f"copying users into container {vmid}")
            copy_into(shell, work.users)
        if work.smb_conf is not None:
            vfs.check(pct, vmid, work.smb_conf)
            _push_smb_conf(pct, vmid, work.smb_conf, progress)
        if work.restart_smbd:
            progress.report(f"restarting smbd in container {vmid}")
            pct.exec(vmid, ["systemctl", "restart", "smbd"], timeout=60.0)
        done = [f"{step.name}: {step.setup(shell, progress)}" for step in work.steps]
        for line in done:
            log.info("lxc: %s", line)
        if work.ha == "add":
            progress.report(f"registering container {vmid} with Proxmox HA")
            hamanager.add(runner, f"ct:{vmid}", work.share.name, host(RESOURCES))
        elif work.ha == "remove":
            progress.report(f"taking container {vmid} out of Proxmox HA")
            hamanager.remove(runner, f"ct:{vmid}", host(RESOURCES))
        return {"vmid": vmid, PUSHED: digest(work.smb_conf) if work.smb_conf is not None else None,
                USERS: users_digest(work.users) if work.users is not None else None,
                STEPS: dict(work.step_record) if work.step_record is not None else None, "done": done}

    return run


def _remove_job(ctx: PassContext, work: Work) -> Callable[[JobProgress], dict[str, Any]]:
    pct, host = Pct(ctx.runner), ctx.paths.host

    def run(progress: JobProgress) -> dict[str, Any]:
        vmid = work.vmid
        config = read_guest_config(host(config_path(vmid)))
        if config is not None and _half_made(config):
            pct.unlock(vmid)  # its create was interrupted: it holds nothing yet
        elif config is not None:
            LxcModePlugin._check_ours(config, work.share, vmid)
            if pct.status(vmid) == RUNNING:
                for step in work.teardown:
                    assert step.teardown is not None
                    try:
                        log.info("lxc: %s: %s", step.name, step.teardown(ContainerShell(pct, vmid), progress))
                    except Exception as exc:
                        log.warning("lxc: container %s: %s failed before its removal: %s", vmid, step.name, exc)
                progress.report(f"stopping container {vmid}")
                pct.stop(vmid)
            progress.report(f"destroying container {vmid}")
            pct.destroy(vmid)
        return {"vmid": vmid, "removed": True}

    return run


def _create(pct: Pct, host: Callable[[str], Path], work: Work, progress: JobProgress) -> None:
    vmid, settings = work.vmid, work.settings
    assert settings.lxc_template is not None
    progress.report(f"creating container {vmid} from {settings.lxc_template}")
    try:
        pct.create(guest.create_arguments(vmid, settings.lxc_template, settings.storage, work.options))
    except CommandError:
        # pct cleans up after its own errors; a pct that was killed leaves the config it
        # took the id with, holding only its lock.
        with contextlib.suppress(CommandError, GuestConfigError):
            config = read_guest_config(host(config_path(vmid)))
            if config is not None and _half_made(config):
                pct.unlock(vmid)
                pct.destroy(vmid)
        raise
    try:
        write_idmap(host(config_path(vmid)), work.idmap)
        progress.report(f"starting container {vmid}")
        pct.start(vmid)
        _await_boot(pct, vmid, progress)
    except Exception:
        # Half made: take it away again (the share's data is a bind mount, untouched).
        with contextlib.suppress(CommandError, ValueError):
            if pct.status(vmid) == RUNNING:
                pct.stop(vmid)
        with contextlib.suppress(CommandError):
            pct.unlock(vmid)  # an interrupted create leaves its lock, which destroy refuses
            pct.destroy(vmid)
        raise


def _await_boot(pct: Pct, vmid: int, progress: JobProgress) -> None:
    """systemd inside has finished starting (running, or degraded: a unit failed that
    smbd may not need)."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    said = ""
    while time.monotonic() < deadline and not progress.expired:
        result = pct.exec(vmid, ["systemctl", "is-system-running"], timeout=30.0, check=False)
        said = result.stdout.strip()
        if said in ("running", "degraded"):
            return
        progress.report(f"container {vmid}: systemd {said or 'starting'}")
        time.sleep(0.3)
    raise TimeoutError(f"container {vmid} did not finish starting within {BOOT_TIMEOUT:g}s (systemd: {said or '?'})")


def _push_smb_conf(pct: Pct, vmid: int, text: str, progress: JobProgress) -> None:
    progress.report(f"writing smb.conf in container {vmid}")
    with tempfile.TemporaryDirectory(prefix="smbgw-lxc-") as folder:
        source = Path(folder) / "smb.conf"
        source.write_text(text)
        pct.push(vmid, str(source), SMB_CONF)
    pct.exec(vmid, ["systemctl", "enable", "--now", "smbd"], timeout=60.0)
    pct.exec(vmid, ["smbcontrol", "smbd", "reload-config"], timeout=30.0)


def write_idmap(path: Path, idmap: Sequence[MapLine]) -> None:
    """The container's `lxc.idmap` lines, in its config file's current section (before
    any snapshot), replacing the ones there: Proxmox has no `pct set` for them."""
    text = path.read_text()
    head, sep, snapshots = text.partition("\n[")
    kept = [line for line in head.splitlines() if not line.startswith("lxc.idmap:")]
    body = "\n".join(kept + guest.idmap_config_lines(idmap)) + "\n"
    atomic_write(path, body + (("\n[" + snapshots) if sep else ""), mode=0o640)
