"""VM mode: each share served by smbd in a VM of its own, cloned from a template and made
the share's file server by cloud-init at its first boot.

Per share, the plan compares the VM (its config in /etc/pve/qemu-server, its state as the
last observation saw it, the smb.conf and user-data the agent last gave it) with what the
share file asks for. The work is a job per share (`vm:<share>`), outside the pass:

- create: the node must have virtiofs (Proxmox VE 8.4), the address must be free on the
  bridge, cloud-init must accept the user-data; then the snippet is written, the
  directory mapping made, `qm clone` and `qm set`, `qm start`, and the job waits for the
  guest agent, for cloud-init to finish and for TCP 445 on the VM's address. Only then
  is the share up. A create that fails half way stops and destroys the VM (the data is a
  host directory and is never touched).
- change: smb.conf goes in through the guest agent and smbd reloads it, without a
  reboot; options that take effect only at a boot (cores, memory, the address) are set
  and the VM is shut down and started, which the plan says.
- remove: `qm stop`, `qm destroy --purge`, the snippet and the mapping removed.

The agent never touches a VM it did not make (`proxmox/identity.py`). VMIDs come from
`[proxmox] vmid_range` counting down from its top, where the LXC mode counts up, so the
two modes do not hand out the same free id in one pass; a VMID in use by any guest of
the cluster is an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
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
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.changes import CREATE, DELETE, UPDATE, Change, Health, share_resource
from smbgw_agent.platform.commands import Command, CommandRefused
from smbgw_agent.platform.context import CollectContext, PassContext
from smbgw_agent.platform.guests import GuestStep
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import Job, JobProgress, Schedule

from ..proxmox import hamanager, identity
from ..proxmox import orphans as guest_orphans
from ..proxmox.drain import DrainRecord, check_target
from ..proxmox.guestconf import GuestConfigError, read_guest_config
from ..proxmox.guestmode import (
    PUSHED,
    STEPS,
    USERS,
    GuestModePlugin,
    answers_smb,
    check_free,
    guest_smb_conf,
    ha_change,
    wants_ha,
)
from ..proxmox.guestnet import DHCP
from ..proxmox.haresources import RESOURCES
from ..proxmox.passdb import PassdbEntry, copy_into, local_names, read_entries
from ..proxmox.passdb import digest as users_digest
from ..proxmox.storage import STORAGE_CFG, StorageError, is_shared, snippets_dir
from ..proxmox.table import ProxmoxSettings
from ..proxmox.vmlist import local_node
from . import drain, template, userdata, vmconf
from .pvesh import Pvesh, virtiofs_refusal
from .qm import RUNNING, STOPPED, GuestExecError, Qm
from .shell import VmShell
from .table import SECTION, VmSpec, parse_share_table

log = logging.getLogger(__name__)
PLUGIN = "mode_vm"
MODE_NAME = "vm"
USERDATA = "userdata"  # plugin state key: share -> digest of the user-data snippet last written
OBSERVE_JOB = "vm:observe"
HA_SECTION = "ha"
PVE = "/etc/pve"
QEMU_DIR = f"{PVE}/qemu-server"
VMLIST = f"{PVE}/.vmlist"
OBSERVE_INTERVAL = 10.0
JOB_TIMEOUT = 1800.0
CONNECT_TIMEOUT = 1.0
PROBE_WINDOW = 0.6
SMB_CONF = "/etc/samba/smb.conf"


def config_path(vmid: int) -> str:
    return f"{QEMU_DIR}/{vmid}.conf"


def spec_of(share: ShareSpec) -> VmSpec:
    return VmSpec.of(share.sections[SECTION])


def netbios_name(vmid: int) -> str:
    return f"SMBGW-{vmid}"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Observation:
    """The last background reading: VMs' states, their guest agents, smbd on 445."""

    at: float = 0.0
    status: dict[int, str] = field(default_factory=dict)
    agent: dict[int, bool] = field(default_factory=dict)
    answers: dict[int, bool] = field(default_factory=dict)
    error: str | None = None
    leased: dict[int, str] = field(default_factory=dict)  # the address a DHCP VM holds


class Observer:
    def __init__(self) -> None:
        self.value = Observation()
        self._lock = threading.Lock()

    def refresh(self, qm: Qm, vmids: Sequence[int], addresses: Mapping[int, str],
                dhcp: Mapping[int, str] | None = None) -> bool:
        """A new reading; True when it differs from the last (a pass should look). A VM of
        `dhcp` (vmid -> its NIC's MAC) is asked through its guest agent for the address
        it holds, and smbd is tried there as on a static one."""
        try:
            listed = qm.list()
            status = {vmid: row.status for vmid, row in listed.items() if vmid in vmids}
            running = [vmid for vmid in vmids if status.get(vmid) == RUNNING]
            agent = {vmid: qm.ping(vmid, timeout=15.0) for vmid in running}
            leased = {vmid: found for vmid, mac in (dhcp or {}).items() if agent.get(vmid)
                      and (found := _lease_of(qm, vmid, mac)) is not None}
            answers = {vmid: answers_smb(address) for vmid, address in {**addresses, **leased}.items()
                       if vmid in running}
            reading = Observation(time.time(), status, agent, answers, leased=leased)
        except (CommandError, ValueError) as exc:
            before = self.value
            reading = Observation(time.time(), dict(before.status), dict(before.agent), dict(before.answers), str(exc),
                                  dict(before.leased))
        with self._lock:
            before, self.value = self.value, reading
        return (before.status, before.agent, before.answers, before.error, before.leased) != \
            (reading.status, reading.agent, reading.answers, reading.error, reading.leased)


def _lease_of(qm: Qm, vmid: int, mac: str) -> str | None:
    """A DHCP VM's address, None when its agent cannot tell (one VM's garbage is not a
    failed reading of all)."""
    try:
        return qm.leased_address(vmid, mac, timeout=15.0)
    except (CommandError, ValueError) as exc:
        log.warning("vm: VM %s: its address (network-get-interfaces): %s", vmid, exc)
        return None


@dataclass(frozen=True)
class Work:
    """What a share's job does, decided in the pass."""

    share: ShareSpec
    vmid: int
    settings: ProxmoxSettings
    node: str
    create: bool = False
    template: int | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    changes: Sequence[vmconf.Difference] = ()
    start: bool = False
    smb_conf: str | None = None  # to push into a running VM
    user_data: str | None = None  # to write as the snippet
    host_path: str = ""
    mapping_paths: Mapping[str, str] = field(default_factory=dict)  # node -> the share's directory there
    snippets: str = ""  # the snippets directory of [proxmox] snippets_storage on this node
    users: Sequence[PassdbEntry] | None = None
    probe: str | None = None
    config_file: str = ""  # the VM's config on the host (its net0 MAC, for a DHCP lease)
    ha: str | None = None
    steps: Sequence[GuestStep] = ()
    step_record: Mapping[str, str] | None = None
    remove: bool = False
    teardown: Sequence[GuestStep] = ()


class VmModePlugin(GuestModePlugin):
    PLUGIN, MODE_NAME, SECTION, JOB_TIMEOUT = PLUGIN, MODE_NAME, SECTION, JOB_TIMEOUT
    JOB_PREFIX, GUEST, GUEST_TYPE, CONFIG_DIR = "vm", "VM", "qemu", "qemu-server"
    RECORDED = (PUSHED, USERS, STEPS, USERDATA)
    FORGOTTEN = (*GuestModePlugin.FORGOTTEN, USERDATA)

    def __init__(self) -> None:
        super().__init__()
        self._observer = Observer()
        self._orphans: list[guest_orphans.Orphan] = []

    # ---- tables ----------------------------------------------------------------------

    @hookimpl
    def smbgw_validate_share(self, share: ShareSpec, config: AgentConfig) -> Sequence[str]:
        has_table = SECTION in share.sections
        if share.mode != MODE_NAME:
            return ["[vm] is for mode = \"vm\" only"] if has_table else []
        problems = []
        if not has_table:
            problems.append("mode = \"vm\" needs a [vm] table with the VM's address")
        if ProxmoxSettings.from_config(config.plugin_sections) is None:
            problems.append("mode = \"vm\" needs [proxmox] in agent.toml (vmid_range, bridge, storage, "
                            "snippets_storage, vm_template)")
        return problems

    # ---- observing -------------------------------------------------------------------

    @hookimpl
    def smbgw_schedules(self, ctx: PassContext) -> Sequence[Schedule]:
        vmids = self._vmids(ctx)
        if not vmids:
            return []
        qm, observer = Qm(ctx.runner), self._observer
        addresses = {vmids[key]: spec_of(share).address for key, share in ctx.desired.items()
                     if key in vmids and share.mode == MODE_NAME and SECTION in share.sections
                     and spec_of(share).address != DHCP}
        watched = sorted(vmids.values())
        dhcp = {vmids[key]: mac for key, share in ctx.desired.items()
                if key in vmids and share.mode == MODE_NAME and SECTION in share.sections
                and spec_of(share).address == DHCP and (mac := self._mac(ctx, vmids[key])) is not None}

        def next_run(last: float | None) -> float:
            return 0.0 if last is None else last + OBSERVE_INTERVAL

        ours = {key: vmid for key, vmid in vmids.items() if key in ctx.desired and ctx.desired[key].mode == MODE_NAME}
        # Checks inside VMs whose guest agent answered the last reading: the others could
        # tell nothing.
        return [Schedule(OBSERVE_JOB, next_run, lambda _progress: observer.refresh(qm, watched, addresses, dhcp),
                         timeout=OBSERVE_INTERVAL * 6, plugin=PLUGIN, wake=bool),
                *self._checks_schedule(ctx, ours, lambda vmid: VmShell(qm, vmid),
                                       lambda: [vmid for vmid, up in observer.value.agent.items() if up])]

    # ---- planning --------------------------------------------------------------------

    def _vmid_for(self, ctx: PassContext, share: ShareSpec, settings: ProxmoxSettings) -> int:
        spec = spec_of(share)
        known = self._vmids(ctx).get(share.key)
        if spec.vmid is not None or known is not None:
            return int(spec.vmid if spec.vmid is not None else known or 0)
        planned: dict[str, int] = ctx.plugin_scratch(PLUGIN).setdefault("allocated", {})
        taken = set(self._guests(ctx)) | set(self._vmids(ctx).values()) | \
            {v for k, v in planned.items() if k != share.key} | \
            {int(spec_of(s).vmid or 0) for s in ctx.desired.values() if s.mode == MODE_NAME and SECTION in s.sections}
        low, high = settings.vmid_range
        for vmid in range(high, low - 1, -1):
            if vmid not in taken:
                planned[share.key] = vmid
                return vmid
        raise ValueError(f"no free VMID left in [proxmox] vmid_range {low}-{high}: widen it or remove shares")

    def _smb_conf(self, ctx: PassContext, share: ShareSpec, vmid: int) -> str:
        """As a container's; the share at its own path, where the guest mounts its data."""
        return guest_smb_conf(ctx, share, f"vm:{vmid}", netbios_name(vmid), f"VM {vmid}", Path(share.path))

    @staticmethod
    def _node_name(ctx: PassContext) -> str:
        return local_node(ctx.paths.host(PVE)) or ctx.config.node

    @staticmethod
    def _mac(ctx: PassContext, vmid: int) -> str | None:
        try:
            config = read_guest_config(ctx.paths.host(config_path(vmid)))
        except GuestConfigError:
            return None
        return vmconf.nic_mac(config) if config is not None else None

    def plan_work(self, ctx: PassContext, share: ShareSpec) -> tuple[Work, list[Change]]:
        settings = ProxmoxSettings.from_config(ctx.config.plugin_sections)
        if settings is None:
            raise ValueError("mode = \"vm\" needs [proxmox] in agent.toml")
        spec = spec_of(share)
        vmid = self._vmid_for(ctx, share, settings)
        node = self._node_name(ctx)
        options = vmconf.wanted_options(share.name, share.file, spec, settings.bridge, settings.snippets_storage,
                                        node)
        entries = read_entries(ctx.runner, ctx.paths.smb_conf, local_names(share.valid_users))
        smb_conf = self._smb_conf(ctx, share, vmid)
        text = userdata.UserData(share.name, share.file, node, identity.hostname(share.name),
                                 vmconf.mapping_id(share.name), share.path, smb_conf).render()
        steps = ctx.guest_steps(f"vm:{vmid}")
        step_record = {step.name: step.inputs for step in steps}
        resource = share_resource(share.name)
        state = ctx.plugin_state(PLUGIN)
        host_path = str(ctx.paths.host(share.path))
        try:
            snippets = snippets_dir(ctx.paths.host(STORAGE_CFG), settings.snippets_storage)
        except StorageError as exc:
            raise ValueError(f"[proxmox] snippets_storage: {exc}") from None
        nodes = _cluster_nodes(ctx) if wants_ha(share) else []
        paths = {name: host_path for name in {node, *nodes}}
        base = Work(share, vmid, settings, node, options=options, host_path=host_path, user_data=text,
                    step_record=step_record, snippets=snippets, mapping_paths=paths,
                    config_file=str(ctx.paths.host(config_path(vmid))))
        config = read_guest_config(ctx.paths.host(config_path(vmid)))
        if config is None:
            guests = self._guests(ctx)
            elsewhere = self._moved_to(ctx, share, vmid, spec.vmid, guests)
            self._moved.pop(share.key, None)
            if elsewhere is not None:
                # Proxmox HA (or a drain) moved it: it serves the share there. Nothing is
                # made here; edits wait until it is back.
                self._moved[share.key] = (vmid, elsewhere)
                return base, []
            if vmid in guests:
                raise ValueError(f"VMID {vmid} is in use by a {guests[vmid].type} guest on node {guests[vmid].node}: "
                                 "the agent never touches a guest it did not create")
            found = template.find(ctx.paths.host(PVE), spec.template if spec.template is not None
                                  else settings.vm_template)
            refusal = DrainRecord(ctx.paths.state_dir).refusal()
            if refusal:
                raise ValueError(refusal)
            if wants_ha(share):
                _check_shared_disks(ctx, {settings.storage} if spec.full_clone else
                                    template.disk_storages(found.config))
            work = dataclasses.replace(base, create=True, template=found.vmid, smb_conf=smb_conf, users=entries,
                                       probe=None if spec.address == DHCP else spec.address,
                                       ha="add" if wants_ha(share) else None, steps=steps)
            return work, [Change(resource, CREATE, f"clone VM {vmid} ({options['name']}) from template {found.vmid} "
                                 f"({'full' if spec.full_clone else 'linked'} clone), boot it with cloud-init and "
                                 f"serve [{share.name}] at {spec.address} from {share.path} (virtiofs mapping "
                                 f"{vmconf.mapping_id(share.name)})" + (" under Proxmox HA" if wants_ha(share) else "")
                                 + "".join(f"; {step.what}" for step in steps))]
        if not identity.belongs_to(config, share.name):
            tags = ";".join(sorted(identity.tags_of(config))) or "none"
            raise ValueError(f"VM {vmid} is not this share's (its tags: {tags}): the agent never touches a guest it "
                             "did not create; give the share another vmid")
        if wants_ha(share):
            _check_shared_disks(ctx, template.disk_storages(config))
        changes_found = vmconf.differences(config, options)
        changes = [Change(resource, UPDATE, f"VM {vmid}: {d.detail()}") for d in changes_found]
        seen = self._observer.value
        fresh_after = self._last_job_end(ctx, share.key)
        live = seen.status.get(vmid) if seen.at > fresh_after else None
        start = live == STOPPED
        if start:
            changes.append(Change(resource, UPDATE, f"start VM {vmid} (found stopped)"))
        push = (state.get(PUSHED) or {}).get(share.key) != digest(smb_conf)
        if push:
            changes.append(Change(resource, UPDATE, f"write smb.conf in VM {vmid} through the guest agent and reload "
                                  "smbd (no reboot)"))
        rewrite = (state.get(USERDATA) or {}).get(share.key) != digest(text)
        if rewrite and not push:
            changes.append(Change(resource, UPDATE, f"rewrite VM {vmid}'s cloud-init user-data snippet"))
        users = entries if (state.get(USERS) or {}).get(share.key) != users_digest(entries) else None
        if users:
            changes.append(Change(resource, UPDATE, f"copy users {', '.join(e.name for e in users)} from this "
                                  f"node's passdb into VM {vmid}"))
        ran = (state.get(STEPS) or {}).get(share.key) or {}
        due = [step for step in steps if ran.get(step.name) != step.inputs]
        changes += [Change(resource, UPDATE, f"VM {vmid}: {step.what}") for step in due]
        for step, reason in self._repairs(ctx, share.key, vmid, [s for s in steps if s not in due], fresh_after):
            due.append(step)
            changes.append(Change(resource, UPDATE, f"VM {vmid}: {step.what} again ({reason})"))
        ha = ha_change(ctx, PLUGIN, share, f"vm:{vmid}")
        if ha is not None:
            changes.append(Change(resource, UPDATE, f"{'register VM with' if ha == 'add' else 'take VM out of'} "
                                  f"Proxmox HA (ha-manager {ha} vm:{vmid})"))
        lock = config.get("lock")
        if lock and changes:
            raise ValueError(f"VM {vmid} is locked ({lock}) by Proxmox (a backup, a snapshot, a migration): its "
                             "changes wait until it is unlocked")
        probe_address = None if spec.address == DHCP else spec.address
        probe_address = probe_address if any(d.key == "ipconfig0" for d in changes_found) else None
        work = dataclasses.replace(base, changes=changes_found, start=start, smb_conf=smb_conf if push else None,
                                   user_data=text if rewrite or push else None, users=users, probe=probe_address,
                                   ha=ha, steps=due,
                                   step_record=step_record if due or ran.keys() != step_record.keys() else None)
        return work, changes

    def parse_table(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return parse_share_table(data)

    def removal_changes(self, ctx: PassContext, name: str, vmid: int, applied: ShareSpec | None) -> list[Change]:
        return [Change(share_resource(name), DELETE, f"stop and destroy VM {vmid} (qm destroy --purge), remove its "
                       f"snippet and directory mapping; the data in "
                       f"{applied.path if applied else 'the share directory'} stays")]

    def removal_work(self, ctx: PassContext, share: ShareSpec, vmid: int, teardown: Sequence[GuestStep]) -> Work:
        settings = ProxmoxSettings.from_config(ctx.config.plugin_sections) or ProxmoxSettings((0, 0), "", "")
        try:
            snippets = snippets_dir(ctx.paths.host(STORAGE_CFG), settings.snippets_storage)
        except StorageError:
            snippets = ""  # nothing of the share's can be there
        return Work(share, vmid, settings, self._node_name(ctx), remove=True, teardown=teardown, snippets=snippets)

    def job_for(self, ctx: PassContext, work: Work) -> Callable[[JobProgress], dict[str, Any]]:
        return _remove_job(ctx, work) if work.remove else _apply_job(ctx, work)

    # ---- smbgwctl drain --------------------------------------------------------------

    @hookimpl
    def smbgw_commands(self) -> Sequence[Command]:
        return [Command("drain", "relocate its VM-mode shares' VMs to --target with Proxmox HA",
                        self._start_drain, flags=(("force", "drain even if something cannot be moved (it is left "
                                                                "here)"),),
                        options=(("timeout", "how long to wait for SMB sessions to end (default 5m)"),
                                 ("target", "the node to move to: a Proxmox node name for containers and VMs; with "
                                            "CTDB, the node (pnn or private address) that takes the addresses")),
                        shared=True)]

    def _start_drain(self, ctx: PassContext, arguments: Mapping[str, Any]) -> Job | None:
        """This node's share VMs (the VMIDs recorded for shares, with a config on this
        node), checked before anything moves; from then on no VM is made here."""
        host = ctx.paths.host
        here: dict[int, tuple[str, str, str]] = {}
        left: dict[int, str] = {}
        for key, vmid in sorted(self._vmids(ctx).items()):
            if read_guest_config(host(config_path(vmid))) is None:
                continue
            share = ctx.desired.get(key)
            if share is not None and wants_ha(share):
                here[vmid] = (share.name, vmconf.mapping_id(share.name), str(host(share.path)))
            else:
                left[vmid] = f"share {key}: not under Proxmox HA ([ha] proxmox_ha = true), so its data and disks " \
                             "are not known to be on storage the target reaches"
        force, target = bool(arguments.get("force")), arguments.get("target")
        record = DrainRecord(ctx.paths.state_dir)
        if (here or left) and not target and not force:
            raise CommandRefused(f"this node runs the VMs of {len(here) + len(left)} share(s): name the node to "
                                 "move them to with --target NODE, or drain with --force to leave them here")
        if target and (here or left):
            check_target(str(target), local_node(host(PVE)), host(PVE))
        if left and not force:
            raise CommandRefused("; ".join(f"VM {vmid} ({why})" for vmid, why in sorted(left.items())) +
                                 ". Put such a share on shared storage with [ha] proxmox_ha = true, or drain with "
                                 "--force to leave it here")
        try:
            record.set(str(target) if target else None, time.time())
        except OSError as exc:
            raise CommandRefused(f"cannot record the drain in {record.path}: {exc}") from exc
        if not here or not target:
            return None
        return drain.relocate_job(ctx.runner, host(VMLIST), here, str(target), left)

    # ---- status and metrics ----------------------------------------------------------

    @hookimpl
    def smbgw_health(self, ctx: PassContext) -> Sequence[Health]:
        """VMs the agent made for shares no file declares now: reported with the command
        that removes them, never destroyed on a guess."""
        wanted = {identity.share_tag(s.name) for s in ctx.desired.values() if s.mode == MODE_NAME}
        self._orphans = guest_orphans.find(ctx.paths.host(QEMU_DIR), wanted, self._node_name(ctx))
        here = local_node(ctx.paths.host(PVE)) or "this node"
        moved = [Health("vm-moved", False, f"VM {vmid} of share {ctx.desired[key].name} runs on node {node} (moved by "
                        f"Proxmox HA or a drain) and serves the share there; edits of the share wait until it is back "
                        f"on {here} (ha-manager crm-command relocate vm:{vmid} {here})", f"vm:{vmid}")
                 for key, (vmid, node) in sorted(self._moved.items()) if key in ctx.desired]
        moved += self._check_findings(ctx)
        return moved + [Health("vm-orphan", False, f"VM {orphan.vmid} ({orphan.named()}) was made by smbgw-agent "
                               f"for a share no file declares now: remove it with qm stop {orphan.vmid} && qm "
                               f"destroy {orphan.vmid} --purge (the share's data is on the host and stays)",
                               f"vm:{orphan.vmid}")
                        for orphan in self._orphans]

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        seen = self._observer.value
        vmids = self._vmids(ctx)
        if not vmids and not seen.at:
            return {}
        return {"vms": {key: {"vmid": vmid, "status": seen.status.get(vmid), "guest_agent": seen.agent.get(vmid),
                              "smbd_answers": seen.answers.get(vmid), "address": self._address(ctx, key, vmid)}
                        for key, vmid in sorted(vmids.items())},
                "observed": seen.at or None, "error": seen.error}

    def _address(self, ctx: PassContext, key: str, vmid: int) -> str | None:
        """Where clients reach the share: its static address, or the one its VM holds by
        DHCP as its guest agent says (None until it has one)."""
        share = ctx.desired.get(key)
        if share is not None and SECTION in share.sections and spec_of(share).address != DHCP:
            return spec_of(share).address
        return self._observer.value.leased.get(vmid)

    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        shares = ctx.status.get("plugins", {}).get(PLUGIN, {}).get("vms", {})
        if not shares:
            return []
        running = GaugeMetricFamily("smbgw_vm_running", "1 if the share's VM is running", labels=["share", "vmid"])
        agent = GaugeMetricFamily("smbgw_vm_guest_agent_up", "1 if the QEMU guest agent in the share's VM answers",
                                  labels=["share", "vmid"])
        seen = self._observer.value
        for key, info in sorted(shares.items()):
            vmid = int(info.get("vmid") or 0)
            running.add_metric([key, str(vmid)], 1.0 if seen.status.get(vmid) == RUNNING else 0.0)
            agent.add_metric([key, str(vmid)], 1.0 if seen.agent.get(vmid) else 0.0)
        return [running, agent]


def _cluster_nodes(ctx: PassContext) -> list[str]:
    """The cluster's nodes, as pmxcfs lists them (/etc/pve/nodes)."""
    nodes = ctx.paths.host(PVE) / "nodes"
    return sorted(entry.name for entry in nodes.iterdir() if entry.is_dir()) if nodes.is_dir() else []


def _check_shared_disks(ctx: PassContext, storages: set[str]) -> None:
    """Proxmox HA starts the VM on another node from its config alone: every disk must be
    on storage that node reaches (a linked clone's are where the template's are)."""
    for storage in sorted(storages):
        try:
            shared = is_shared(ctx.paths.host(STORAGE_CFG), storage)
        except StorageError as exc:
            raise ValueError(f"[ha] proxmox_ha: cannot tell whether storage {storage!r} is shared: {exc}") from None
        if not shared:
            raise ValueError(f"[ha] proxmox_ha needs the VM's disks on storage every node reaches: {storage!r} is "
                             f"this node's ({STORAGE_CFG}); use a template on shared storage, or full_clone = true "
                             "with [proxmox] storage on shared storage")


# ---- the jobs (worker threads) --------------------------------------------------------


def _write_snippet(ctx: PassContext, work: Work, progress: JobProgress) -> None:
    assert work.user_data is not None
    checked = userdata.check(ctx.runner, work.user_data)
    if checked:
        progress.report(f"user-data {checked}")
        log.warning("vm: share %s: user-data %s", work.share.name, checked)
    target = ctx.paths.host(work.snippets) / vmconf.snippet_name(work.share.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, work.user_data, mode=0o600)


def _ensure_mapping(pvesh: Pvesh, work: Work, progress: JobProgress) -> None:
    """The share's directory mapping, with an entry for each node its VM may run on: this
    node, and with Proxmox HA every node of the cluster (the share's directory is then on
    storage every node mounts at the same path)."""
    mapping = vmconf.mapping_id(work.share.name)
    found = pvesh.mappings().get(mapping)
    if found is not None and not found.ours:
        raise ValueError(f"directory mapping {mapping} exists and is not smbgw-agent's: rename it or give the share "
                         "another name")
    if found is not None and found.paths == dict(work.mapping_paths):
        return
    if found is not None:
        pvesh.delete_mapping(mapping)
    progress.report(f"mapping {work.host_path} as {mapping} for node(s) {', '.join(sorted(work.mapping_paths))}")
    pvesh.create_mapping(mapping, work.mapping_paths, work.share.name)


def _await_ready(qm: Qm, work: Work, progress: JobProgress) -> None:
    """The guest agent answers, cloud-init has finished, and smbd accepts connections on
    the VM's address (a static one; with DHCP the guest's own view is asked)."""
    spec = spec_of(work.share)
    vmid, limit = work.vmid, spec.boot_timeout
    deadline = time.monotonic() + limit
    started = time.monotonic()
    while not qm.ping(vmid, timeout=20.0):
        if time.monotonic() > deadline or progress.expired:
            raise TimeoutError(f"the QEMU guest agent in VM {vmid} did not answer within {limit:g}s: is "
                               "qemu-guest-agent installed and enabled in the template?")
        progress.report(f"VM {vmid}: waiting for the guest agent ({time.monotonic() - started:.0f}s)")
        time.sleep(2.0)
    while True:
        try:
            result = qm.guest_exec(vmid, ["cloud-init", "status"], timeout=30, check=False)
            said = (result.out.strip().splitlines() or ["status: ?"])[-1]
        except GuestExecError as exc:  # the guest is busy booting: ask again
            said = f"not answering ({exc})"
        if said == "status: done":
            break
        if said in ("status: error", "status: degraded"):
            raise RuntimeError(f"cloud-init in VM {vmid} ended with {said!r}: see /var/log/cloud-init.log in the VM")
        if time.monotonic() > deadline or progress.expired:
            raise TimeoutError(f"cloud-init in VM {vmid} did not finish within {limit:g}s ({said})")
        progress.report(f"VM {vmid}: cloud-init {said.removeprefix('status: ')}")
        time.sleep(2.0)
    address = spec.address if spec.address != DHCP else _await_lease(qm, work, deadline, progress)
    while not answers_smb(address):
        if time.monotonic() > deadline or progress.expired:
            raise TimeoutError(f"smbd in VM {vmid} does not answer on {ipaddress.ip_interface(address).ip} port "
                               f"445 within {limit:g}s of the start (the guest agent and cloud-init did): is the VM "
                               f"on the right bridge, and does smbd start?")
        progress.report(f"VM {vmid}: waiting for smbd on {address}")
        time.sleep(1.0)
    progress.report(f"VM {vmid} serves {work.share.name} ({time.monotonic() - started:.0f}s after start)")


def _await_lease(qm: Qm, work: Work, deadline: float, progress: JobProgress) -> str:
    """The address a DHCP VM took, as its guest agent reports it on net0's MAC."""
    vmid, limit = work.vmid, spec_of(work.share).boot_timeout
    try:
        config = read_guest_config(Path(work.config_file))
    except GuestConfigError as exc:
        raise RuntimeError(f"VM {vmid}: {exc}") from None
    mac = vmconf.nic_mac(config) if config is not None else None
    if mac is None:
        raise RuntimeError(f"VM {vmid} has no net0 with a MAC address in {work.config_file}")
    while True:
        with contextlib.suppress(CommandError, ValueError):  # the agent busy, or not yet answering
            address = qm.leased_address(vmid, mac)
            if address is not None:
                progress.report(f"VM {vmid} took {address} by DHCP")
                return address
        if time.monotonic() > deadline or progress.expired:
            raise TimeoutError(f"VM {vmid} took no IPv4 address by DHCP on {mac} within {limit:g}s of the start: is "
                               "a DHCP server answering on the bridge?")
        progress.report(f"VM {vmid}: waiting for a DHCP lease on {mac}")
        time.sleep(2.0)


def _push_smb_conf(shell: VmShell, text: str, progress: JobProgress) -> None:
    progress.report(f"writing smb.conf in VM {shell.vmid}")
    shell.write_file(SMB_CONF, text)
    shell.run(["smbcontrol", "smbd", "reload-config"], timeout=30)


def _apply_job(ctx: PassContext, work: Work) -> Callable[[JobProgress], dict[str, Any]]:
    qm, pvesh, runner = Qm(ctx.runner), Pvesh(ctx.runner), ctx.runner
    shell = VmShell(qm, work.vmid)

    def run(progress: JobProgress) -> dict[str, Any]:
        vmid = work.vmid
        if work.create:
            refusal = virtiofs_refusal(pvesh.version())
            if refusal:
                raise ValueError(refusal)
        if work.probe is not None:
            check_free(work.settings.bridge, work.probe, progress, "VM", "vm")
        if work.user_data is not None:
            _write_snippet(ctx, work, progress)
        if work.create:
            _ensure_mapping(pvesh, work, progress)
            _create(qm, work, progress)
        else:
            if work.changes:
                progress.report(f"changing VM {vmid}")
                qm.set(vmconf.set_arguments(vmid, work.changes))
            if vmconf.needs_boot(work.changes) and not work.start:
                progress.report(f"restarting VM {vmid} ({', '.join(d.key for d in work.changes if d.at_boot)})")
                if qm.status(vmid) == RUNNING:
                    qm.shutdown(vmid)
                qm.start(vmid)
                _await_ready(qm, work, progress)
            elif work.start and qm.status(vmid) != RUNNING:
                progress.report(f"starting VM {vmid}")
                qm.start(vmid)
                _await_ready(qm, work, progress)
            if work.smb_conf is not None:
                _push_smb_conf(shell, work.smb_conf, progress)
        if work.users:
            progress.report(f"copying users into VM {vmid}")
            copy_into(shell, work.users)
        done = [f"{step.name}: {step.setup(shell, progress)}" for step in work.steps]
        for line in done:
            log.info("vm: %s", line)
        if work.ha is not None and not work.create:
            _ensure_mapping(pvesh, work, progress)
        if work.ha == "add":
            progress.report(f"registering VM {vmid} with Proxmox HA")
            hamanager.add(runner, f"vm:{vmid}", work.share.name, ctx.paths.host(RESOURCES))
        elif work.ha == "remove":
            hamanager.remove(runner, f"vm:{vmid}", ctx.paths.host(RESOURCES))
        return {"vmid": vmid, PUSHED: digest(work.smb_conf) if work.smb_conf is not None else None,
                USERDATA: digest(work.user_data) if work.user_data is not None else None,
                USERS: users_digest(work.users) if work.users is not None else None,
                STEPS: dict(work.step_record) if work.step_record is not None else None, "done": done}

    return run


def _create(qm: Qm, work: Work, progress: JobProgress) -> None:
    vmid, spec = work.vmid, spec_of(work.share)
    assert work.template is not None
    progress.report(f"cloning VM {vmid} from template {work.template}")
    qm.clone(work.template, vmid, work.options["name"], spec.full_clone, work.settings.storage)
    try:
        qm.set(vmconf.set_arguments(vmid, work.options))
        progress.report(f"starting VM {vmid}")
        qm.start(vmid)
        _await_ready(qm, work, progress)
    except Exception:
        # Half made: take it away again (the share's data is a host directory, untouched).
        progress.report(f"VM {vmid} did not come up: destroying it")
        with contextlib.suppress(CommandError, ValueError):
            if qm.status(vmid) == RUNNING:
                qm.stop(vmid)
        with contextlib.suppress(CommandError):
            qm.destroy(vmid)
        raise


def _remove_job(ctx: PassContext, work: Work) -> Callable[[JobProgress], dict[str, Any]]:
    qm, pvesh, host = Qm(ctx.runner), Pvesh(ctx.runner), ctx.paths.host

    def run(progress: JobProgress) -> dict[str, Any]:
        vmid = work.vmid
        config = read_guest_config(host(config_path(vmid)))
        if config is not None:
            if not identity.belongs_to(config, work.share.name):
                raise ValueError(f"VM {vmid} is not share {work.share.name}'s any more: left alone")
            if qm.status(vmid) == RUNNING:
                for step in work.teardown:
                    assert step.teardown is not None
                    try:
                        log.info("vm: %s: %s", step.name, step.teardown(VmShell(qm, vmid), progress))
                    except (CommandError, GuestExecError, ValueError, RuntimeError) as exc:
                        log.warning("vm: VM %s: %s failed before its removal: %s", vmid, step.name, exc)
                progress.report(f"stopping VM {vmid}")
                qm.stop(vmid)
            progress.report(f"destroying VM {vmid}")
            qm.destroy(vmid)
        mapping = vmconf.mapping_id(work.share.name)
        with contextlib.suppress(CommandError, ValueError):
            found = pvesh.mappings().get(mapping)
            if found is not None and found.ours:
                pvesh.delete_mapping(mapping)
        if work.snippets:
            with contextlib.suppress(OSError):
                (host(work.snippets) / vmconf.snippet_name(work.share.name)).unlink(missing_ok=True)
        return {"vmid": vmid, "removed": True}

    return run
