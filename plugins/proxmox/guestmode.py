"""What the two guest modes (lxc, vm) do alike, around the guest itself: the VMIDs they
recorded, the cluster's guest list read once a pass, Proxmox HA registration, the checks
before a guest takes an address, whether smbd answers, and the globals of the smb.conf
inside a guest. Each function takes the mode's plugin name or words, so the messages say
"container" or "VM" as the administrator sees it."""

from __future__ import annotations

import ipaddress
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from smbgw_agent.effects import netlink
from smbgw_agent.effects.samba import run_testparm
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform import order
from smbgw_agent.platform.changes import Change, Health, share_resource
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.guests import GuestShell, GuestStep
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.jobs import FINISHED, SUCCEEDED, Job, JobProgress, Schedule
from smbgw_agent.platform.jobs import RUNNING as JOB_RUNNING

from ..linkprobe import probe
from ..sambaconf import render_share, security_globals
from . import hamanager, identity
from .guestchecks import TICK, GuestChecks
from .guestconf import GuestConfigError, read_guest_config
from .haresources import RESOURCES, read_resources
from .storage import STORAGE_CFG, StorageError, is_shared
from .table import ProxmoxSettings
from .vmlist import Guest, local_node, read_vmlist

# Plugin state keys, each share -> its value: the VMID recorded for it; digests of the
# smb.conf and the users last given to its guest; its guest steps' inputs when they last
# ran; the end of its last job whose outcome was read; when a failed check last ran each
# guest step again.
VMIDS, PUSHED, USERS, STEPS, ABSORBED, REPAIRS = "vmids", "pushed", "users", "steps", "absorbed", "repairs"
VMLIST = "/etc/pve/.vmlist"
HA_SECTION = "ha"
CONNECT_TIMEOUT = 1.0
PROBE_WINDOW = 0.6  # RFC 5227 asks for 1-2 s; the virtual-IP claim's default, proven on real links


def recorded_vmids(ctx: PassContext, plugin: str) -> dict[str, int]:
    found = ctx.plugin_state(plugin).get(VMIDS) or {}
    return {str(key): int(value) for key, value in found.items()} if isinstance(found, Mapping) else {}


def cluster_guests(ctx: PassContext, plugin: str) -> dict[int, Guest]:
    """The cluster's guests (/etc/pve/.vmlist), read once a pass: allocation and the
    check that a VMID is free both ask, for every new share."""
    scratch = ctx.plugin_scratch(plugin)
    if "guests" not in scratch:
        scratch["guests"] = read_vmlist(ctx.paths.host(VMLIST))
    guests: dict[int, Guest] = scratch["guests"]
    return guests


def wants_ha(share: ShareSpec) -> bool:
    """`[ha] proxmox_ha = true` in the share file (the table is the VIP manager's; for a
    guest it holds only this switch)."""
    return bool((share.sections.get(HA_SECTION) or {}).get("proxmox_ha"))


def check_shared_storage(ctx: PassContext, settings: ProxmoxSettings, guest: str) -> None:
    """Proxmox HA starts a guest on another node from its config alone: its disk must be
    on storage that node reaches, or the guest is stranded there."""
    try:
        shared = is_shared(ctx.paths.host(STORAGE_CFG), settings.storage)
    except StorageError as exc:
        raise ValueError(f"[ha] proxmox_ha: cannot tell whether [proxmox] storage is shared: {exc}") from None
    if not shared:
        raise ValueError(f"[ha] proxmox_ha needs the {guest}'s disk on storage every node reaches: [proxmox] "
                         f"storage {settings.storage!r} is this node's ({STORAGE_CFG}); Proxmox HA would move the "
                         f"{guest}'s config to another node but not its disk")


def ha_change(ctx: PassContext, plugin: str, share: ShareSpec, sid: str) -> str | None:
    """"add" when the share asks for Proxmox HA and the guest (`sid`, `ct:VMID` or
    `vm:VMID`) is not registered; "remove" when it no longer asks and the agent registered
    it (a registration made by hand, without the agent's comment, is the administrator's)."""
    scratch = ctx.plugin_scratch(plugin)
    if "ha" not in scratch:
        scratch["ha"] = read_resources(ctx.paths.host(RESOURCES))
    registered = scratch["ha"].get(sid)
    if wants_ha(share):
        return None if registered is not None else "add"
    if registered is not None and registered.properties.get("comment", "").startswith(hamanager.comment("")):
        return "remove"
    return None


def answers_smb(address: str) -> bool:
    """Something accepts a TCP connection on port 445 at `address` (an interface
    address, its prefix ignored)."""
    host = str(ipaddress.ip_interface(address).ip)
    try:
        with socket.create_connection((host, 445), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def check_free(bridge: str, address: str, progress: JobProgress, guest: str, table: str) -> None:
    """Nobody holds `address` on the bridge (an RFC 5227 ARP probe, IPv6 duplicate address
    detection), before a guest takes it: two hosts answering for one address split the
    share's clients between them."""
    progress.report(f"checking that {address} is free on {bridge}")
    ip = ipaddress.ip_interface(address).ip
    try:
        other = probe.holder(bridge, ip, netlink.links(), window=PROBE_WINDOW)
    except (probe.ProbeError, netlink.NetlinkError) as exc:
        raise RuntimeError(f"cannot check that {address} is free on {bridge}: {exc}") from exc
    if other is not None:
        raise ValueError(f"address {address} is in use on {bridge} by {other}: the {guest} does not take it; "
                         f"give the share another address in its [{table}] table")


def guest_smb_conf(ctx: PassContext, share: ShareSpec, target: str, netbios: str, where: str, path: Path) -> str:
    """The guest's own globals, then the security profile's, then every plugin's for
    `target` (the domain's make it a member server): a later one of the same name
    replaces an earlier one in place, so each parameter is written once. Then the share,
    as the native mode renders it, at `path` inside the guest.

    `netbios` is the guest's name in a domain (its machine account, its DNS name): made
    of the VMID, which the cluster keeps unique and which always fits NetBIOS' 15
    characters, where a share's name may not."""
    parameters = dict([("server role", "standalone server"), ("netbios name", netbios),
                       ("disable netbios", "yes"), ("smb ports", "445")])
    parameters.update(security_globals(ctx.config))
    parameters.update(ctx.global_parameters(target))
    head = f"# Generated by smbgw-agent for share {share.name} in {where}; edits are overwritten.\n"
    head += "[global]\n" + "".join(f"\t{name} = {value}\n" for name, value in parameters.items())
    return head + render_share(share, path, ctx.share_parameters(share, target))


class GuestModePlugin:
    """The hooks both guest modes implement the same way; a mode subclasses it and fills
    in its table, its planning and its jobs.

    The shape: the plan decides per share what its job does (`plan_work`), apply checks
    the guest's smb.conf with testparm and records the share's VMID at once (no other
    share gets it, even before the job runs), commit starts the jobs of the shares the
    pass kept, and the next plan of the share reads its job's outcome once (`_absorb`):
    recorded when it worked, raised when it did not (the share fails and is retried
    with back-off). A removal forgets the share's records at commit: the share is gone
    from the pass's record, so nothing would plan it again to read them.

    A subclass sets the class attributes and implements `parse_table`, `plan_work`,
    `removal_changes`, `removal_work` and `job_for`. A work item has `share`, `vmid`,
    `remove` and `smb_conf` (None: nothing to check)."""

    PLUGIN: ClassVar[str]
    MODE_NAME: ClassVar[str]
    SECTION: ClassVar[str]
    JOB_PREFIX: ClassVar[str]  # job ids and guest targets: "lxc" -> lxc:SHARE, lxc:VMID
    GUEST: ClassVar[str]  # what the administrator calls the guest: "container", "VM"
    GUEST_TYPE: ClassVar[str]  # its type in /etc/pve/.vmlist: "lxc", "qemu"
    CONFIG_DIR: ClassVar[str]  # its configs' directory under /etc/pve/nodes/NODE: "lxc", "qemu-server"
    JOB_TIMEOUT: ClassVar[float]
    RECORDED: ClassVar[tuple[str, ...]] = (PUSHED, USERS, STEPS)  # job result keys kept per share
    FORGOTTEN: ClassVar[tuple[str, ...]] = (VMIDS, PUSHED, USERS, ABSORBED, STEPS, REPAIRS)

    def __init__(self) -> None:
        self._checks = GuestChecks(self.GUEST)
        self._moved: dict[str, tuple[int, str]] = {}  # share -> (vmid, node): its guest runs elsewhere

    # ---- what a mode fills in --------------------------------------------------------

    def parse_table(self, data: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def plan_work(self, ctx: PassContext, share: ShareSpec) -> tuple[Any, list[Change]]:
        raise NotImplementedError

    def removal_changes(self, ctx: PassContext, name: str, vmid: int, applied: ShareSpec | None) -> list[Change]:
        raise NotImplementedError

    def removal_work(self, ctx: PassContext, share: ShareSpec, vmid: int, teardown: Sequence[GuestStep]) -> Any:
        raise NotImplementedError

    def job_for(self, ctx: PassContext, work: Any) -> Callable[[JobProgress], dict[str, Any]]:
        raise NotImplementedError

    # ---- shared ----------------------------------------------------------------------

    def job_id(self, key: str) -> str:
        return f"{self.JOB_PREFIX}:{key}"

    def _vmids(self, ctx: PassContext) -> dict[str, int]:
        return recorded_vmids(ctx, self.PLUGIN)

    def _guests(self, ctx: PassContext) -> dict[int, Guest]:
        return cluster_guests(ctx, self.PLUGIN)

    def _moved_to(self, ctx: PassContext, share: ShareSpec, vmid: int, declared: int | None,
                  guests: Mapping[int, Guest]) -> str | None:
        """The node the share's own guest now runs on, when that is not this node: the
        VMID is the one recorded (or declared) for the share, the cluster lists it on
        another node, and its config there carries the share's tags. (Moved there by
        Proxmox HA or a drain: it serves the share there, and nothing is made here.)"""
        owner = guests.get(vmid)
        here = local_node(ctx.paths.host("/etc/pve"))
        if owner is None or owner.type != self.GUEST_TYPE or here is None or owner.node == here:
            return None
        if self._vmids(ctx).get(share.key) != vmid and declared != vmid:
            return None
        try:
            remote = read_guest_config(ctx.paths.host(f"/etc/pve/nodes/{owner.node}/{self.CONFIG_DIR}/{vmid}.conf"))
        except GuestConfigError:
            return None
        if remote is None:
            return None
        return owner.node if identity.belongs_to(remote, share.name) else None

    def _checks_schedule(self, ctx: PassContext, vmids: Mapping[str, int], shell_for: Callable[[int], GuestShell],
                         running: Callable[[], Sequence[int]]) -> list[Schedule]:
        """The job that runs the guest steps' checks (guestchecks.py) in the share guests
        that run, when any step has a check."""
        checked = {vmid: [step for step in ctx.guest_steps(f"{self.JOB_PREFIX}:{vmid}") if step.check is not None]
                   for vmid in vmids.values()}
        checked = {vmid: steps for vmid, steps in checked.items() if steps}
        if not checked:
            return []
        checks, jobs = self._checks, ctx.jobs
        job_of = {vmid: self.job_id(key) for key, vmid in vmids.items()}

        def idle() -> list[int]:
            """The running guests whose share job is not at work in them now (a join
            half done is no finding)."""
            busy = {vmid for vmid, job in job_of.items()
                    if jobs is not None and (record := jobs.record(job)) is not None and record.state == JOB_RUNNING}
            return [vmid for vmid in running() if vmid not in busy]

        return [Schedule(f"{self.JOB_PREFIX}:guest-checks", lambda last: 0.0 if last is None else last + TICK,
                         lambda _progress: checks.run(shell_for, checked, idle()),
                         timeout=self.JOB_TIMEOUT, plugin=self.PLUGIN, wake=bool)]

    def _last_job_end(self, ctx: PassContext, key: str) -> float:
        record = ctx.jobs.record(self.job_id(key)) if ctx.jobs is not None else None
        return record.finished if record is not None and record.finished is not None else 0.0

    def _broken(self, vmid: int, after: float) -> Mapping[str, str]:
        """What the checks found wrong inside guest `vmid`, if they looked after `after`
        (the end of the share's last job, which may have repaired it)."""
        reading = self._checks.value
        return reading.broken.get(vmid, {}) if reading.at > after else {}

    def _repairs(self, ctx: PassContext, key: str, vmid: int, steps: Sequence[GuestStep],
                 after: float) -> list[tuple[GuestStep, str]]:
        """Steps whose check failed, to run again now: not one that a failed check ran
        again within its `repair_min_interval` (reported by the health check instead)."""
        broken = self._broken(vmid, after)
        state = ctx.plugin_state(self.PLUGIN)
        repaired = dict((state.get(REPAIRS) or {}).get(key) or {})
        now, found = time.time(), []
        for step in steps:
            reason = broken.get(step.name)
            if reason and now - float(repaired.get(step.name) or 0.0) >= step.repair_min_interval:
                found.append((step, reason))
                repaired[step.name] = now
        if found:
            state.set(REPAIRS, {**(state.get(REPAIRS) or {}), key: repaired})
        return found

    def _check_findings(self, ctx: PassContext) -> list[Health]:
        """`PREFIX-guest`: what a check found wrong inside a share's guest, until a job
        repaired it."""
        findings = []
        for key, vmid in sorted(self._vmids(ctx).items()):
            if key not in ctx.desired:
                continue
            for name, reason in sorted(self._broken(vmid, self._last_job_end(ctx, key)).items()):
                findings.append(Health(f"{self.JOB_PREFIX}-guest", False, f"{self.GUEST} {vmid} of share "
                                       f"{ctx.desired[key].name}: {name}: {reason}", f"{self.JOB_PREFIX}:{vmid}"))
        return findings

    def _absorb(self, ctx: PassContext, key: str) -> None:
        record = ctx.jobs.record(self.job_id(key)) if ctx.jobs is not None else None
        state = ctx.plugin_state(self.PLUGIN)
        absorbed = dict(state.get(ABSORBED) or {})
        if record is None or record.state not in FINISHED or absorbed.get(key) == record.finished:
            return
        absorbed[key] = record.finished
        state.set(ABSORBED, absorbed)
        if record.state != SUCCEEDED:
            raise RuntimeError(f"{self.GUEST} job failed: {record.error or record.state}")
        result = record.result if isinstance(record.result, Mapping) else {}
        if result.get("removed"):
            self._forget(ctx, key, (VMIDS, *self.RECORDED))
            return
        for name in self.RECORDED:
            if result.get(name) is not None:
                state.set(name, {**(state.get(name) or {}), key: result[name]})

    def _forget(self, ctx: PassContext, key: str, entries: Sequence[str]) -> None:
        state = ctx.plugin_state(self.PLUGIN)
        for entry in entries:
            remaining = dict(state.get(entry) or {})
            if remaining.pop(key, None) is not None:
                state.set(entry, remaining)

    @hookimpl
    def smbgw_modes(self) -> Sequence[str]:
        return [self.MODE_NAME]

    @hookimpl
    def smbgw_share_sections(self) -> Sequence[str]:
        return [self.SECTION]

    @hookimpl
    def smbgw_order(self) -> int:
        return order.MODE

    @hookimpl
    def smbgw_validate_share_section(self, section: str, data: Mapping[str, Any], config: AgentConfig) -> Any:
        return self.parse_table(data) if section == self.SECTION else None

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        mine = desired is not None and desired.mode == self.MODE_NAME
        was = applied is not None and applied.mode == self.MODE_NAME
        key = name.casefold()
        if not (mine or was or key in self._vmids(ctx)):
            return []
        self._absorb(ctx, key)
        if mine:
            assert desired is not None
            work, changes = self.plan_work(ctx, desired)
            # By share, under a key of its own: a share may be named "submit" or "guests".
            ctx.plugin_scratch(self.PLUGIN).setdefault("planned", {})[key] = work
            return changes
        vmid = self._vmids(ctx).get(key)
        return [] if vmid is None else self.removal_changes(ctx, name, vmid, applied)

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        key = name.casefold()
        work = ctx.plugin_scratch(self.PLUGIN).get("planned", {}).get(key)
        if work is None:
            raise RuntimeError(f"share {name}: nothing planned to apply")
        if work.smb_conf is not None:
            with tempfile.TemporaryDirectory(prefix="smbgw-guest-") as folder:
                candidate = Path(folder) / "smb.conf"
                candidate.write_text(work.smb_conf)
                result = run_testparm(ctx.runner, candidate)
            if not result.ok:
                raise ValueError(f"testparm refuses the {self.GUEST}'s smb.conf: "
                                 f"{'; '.join(result.errors)[:500]}")
        vmids = self._vmids(ctx)
        vmids[key] = work.vmid  # reserved now: no other share gets it, even before the job runs
        ctx.plugin_state(self.PLUGIN).set(VMIDS, vmids)
        ctx.plugin_scratch(self.PLUGIN).setdefault("submit", {})[key] = work

    @hookimpl
    def smbgw_remove_share(
        self, ctx: PassContext, name: str, applied: ShareSpec | None, changes: Sequence[Change]
    ) -> None:
        key = name.casefold()
        vmid = self._vmids(ctx).get(key)
        if vmid is None:
            return
        share = applied or ShareSpec(name=name, file="", path="/")
        # The guest's steps as they are now (the domain it would leave): none when the
        # plugin behind them is gone too.
        teardown = [step for step in ctx.guest_steps(f"{self.JOB_PREFIX}:{vmid}") if step.teardown is not None]
        ctx.plugin_scratch(self.PLUGIN).setdefault("submit", {})[key] = self.removal_work(ctx, share, vmid, teardown)

    @hookimpl
    def smbgw_rollback_share(self, ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
        ctx.plugin_scratch(self.PLUGIN).get("submit", {}).pop(name.casefold(), None)

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        """The jobs start only now, for the shares the pass kept."""
        staged: dict[str, Any] = ctx.plugin_scratch(self.PLUGIN).pop("submit", {})
        if ctx.jobs is None:
            return {share_resource(key): "this agent runs no jobs" for key in staged}
        for key, work in staged.items():
            ctx.jobs.submit(Job(self.job_id(key), self.job_for(ctx, work), self.JOB_TIMEOUT,
                                share_resource(work.share.name), self.PLUGIN))
            if work.remove:
                # A removal that fails leaves a guest with the share's tags, for an admin.
                self._forget(ctx, key, self.FORGOTTEN)
        return {}
