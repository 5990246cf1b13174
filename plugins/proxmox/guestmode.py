"""What the two guest modes (lxc, vm) do alike, around the guest itself: the VMIDs they
recorded, the cluster's guest list read once a pass, Proxmox HA registration, the checks
before a guest takes an address, whether smbd answers, and the globals of the smb.conf
inside a guest. Each function takes the mode's plugin name or words, so the messages say
"container" or "VM" as the administrator sees it."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path

from smbgw_agent.effects import netlink
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.jobs import JobProgress

from ..linkprobe import probe
from ..sambaconf import render_share, security_globals
from . import hamanager
from .haresources import RESOURCES, read_resources
from .storage import STORAGE_CFG, StorageError, is_shared
from .table import ProxmoxSettings
from .vmlist import Guest, read_vmlist

VMIDS = "vmids"  # plugin state key: share -> the VMID recorded for it
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
