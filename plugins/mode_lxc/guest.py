"""The container a share asks for, as Proxmox options, and how a live container differs.

Pure: from the share, its `[lxc]` table, `[proxmox]` and the id map, `wanted_options`
gives what `pct create` (and later `pct set`) is told; `differences` compares that with
the container's config file and says, per option, whether Proxmox applies the change to
a running container or it takes effect only at the next start (the plan says which, and
the mode restarts the container at the end of the pass).

What the agent sets, and why:

- `hostname` `smbgw-<share>` (a DNS label made of the share's name), `tags` `smbgw` and
  the share's tag, and a `description` naming the share, its file and the node whose
  agent manages it: the container is
  recognisable in the GUI and by the agent, which never touches a container without its
  tag and its share's name.
- `unprivileged 1` with `features nesting=1` (systemd inside an unprivileged container
  needs it on Proxmox VE 7 and later), `ostype debian`.
- `net0` on `[proxmox] bridge` with the share's address, and a MAC address derived from
  the VMID (locally administered, `02:` first): a container created again under the same
  VMID keeps its MAC, so switches and clients do not hold a stale ARP entry.
- `mp0` the share's directory bound at `/srv/share`: the data stays on the host.
- `onboot 1` unless `autostart = false`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..proxmox.guestconf import GuestConfig, OwnedKeys, merged_option, property_string, same_option, tags_equal
from ..proxmox.guestnet import DHCP
from ..proxmox.identity import TAG, description, hostname, share_tag
from .idmap import MapLine
from .table import LxcSpec

SHARE_MOUNT = "/srv/share"
ROOTFS_GIB = 4
# Options Proxmox applies to a running container; the rest wait for its next start.
LIVE = frozenset({"cores", "memory", "description", "tags", "onboot"})
# Compared as property strings, key by key (hwaddr and type are Proxmox's to keep).
OWNED = {"net0": OwnedKeys(("name", "bridge", "ip", "gw")),
         "mp0": OwnedKeys(("volume", "mp", "shared"), "volume", {"shared": "0"}),  # Proxmox's default
         "features": OwnedKeys(("nesting",))}


def mac_address(vmid: int) -> str:
    digest = hashlib.sha256(f"smbgw-lxc-{vmid}".encode()).digest()
    return "02:" + ":".join(f"{byte:02X}" for byte in digest[:5])


@dataclass(frozen=True)
class Difference:
    key: str
    live: str | None
    wanted: str | None
    at_start: bool  # True: takes effect at the next start (the container is restarted)

    def detail(self) -> str:
        when = " (at a restart of the container)" if self.at_start else ""
        if self.key == "lxc.idmap":
            return f"change the id map{when}"
        return f"set {self.key} {self.live or '-'} -> {self.wanted or '-'}{when}"


def network(spec: LxcSpec, bridge: str) -> dict[str, str]:
    values = {"name": "eth0", "bridge": bridge, "ip": spec.address}
    if spec.gateway:
        values["gw"] = spec.gateway
    if spec.address == DHCP:
        values["ip"] = "dhcp"
    return values


def wanted_options(share: str, file: str, spec: LxcSpec, bridge: str, host_path: str,
                   shared_data: bool = False, node: str = "") -> dict[str, str]:
    """The options of the share's container as `pct` takes them (without `rootfs`,
    which only `create` gives, and without `net0`'s hwaddr, which `create` adds).
    `shared_data`: the share's directory is on storage every node mounts at the same
    path (the share asks for Proxmox HA), so `mp0` says `shared=1`, without which
    Proxmox refuses to migrate a container with a bind mount."""
    mount = {"volume": host_path, "mp": SHARE_MOUNT, **({"shared": "1"} if shared_data else {})}
    return {
        "hostname": hostname(share),
        "cores": str(spec.cores),
        "memory": str(spec.memory_mib),
        "net0": property_string(network(spec, bridge)),
        "mp0": property_string(mount, "volume"),
        "onboot": "1" if spec.autostart else "0",
        "tags": ";".join(sorted({TAG, share_tag(share)})),  # as Proxmox keeps them: sorted
        "description": description(share, file, node),
        "unprivileged": "1",
        "features": "nesting=1",
        "ostype": "debian",
    }


def create_arguments(vmid: int, template: str, storage: str, options: Mapping[str, str]) -> list[str]:
    """`pct create` argv after the program name: every option, the network with a fixed
    MAC, the root disk, and --start 0 (the id map goes into the config before the first
    start)."""
    argv = ["create", str(vmid), template, "--rootfs", f"{storage}:{ROOTFS_GIB}", "--start", "0"]
    for key, value in options.items():
        argv += [f"--{key}", f"{value},hwaddr={mac_address(vmid)},type=veth" if key == "net0" else value]
    return argv


def set_arguments(vmid: int, differences: Sequence[Difference]) -> list[str]:
    argv = ["set", str(vmid)]
    for difference in differences:
        if difference.key != "lxc.idmap" and difference.wanted is not None:
            argv += [f"--{difference.key}", difference.wanted]
    return argv


def _same(key: str, live: str | None, wanted: str) -> bool:
    if key == "tags":  # Proxmox lower-cases, sorts and de-duplicates them
        return tags_equal(live, wanted)
    return same_option(live, wanted, OWNED.get(key))


def differences(config: GuestConfig, wanted: Mapping[str, str], idmap: Sequence[MapLine]) -> list[Difference]:
    """How the live container differs from `wanted` and the id map, option by option."""
    found = []
    for key, value in wanted.items():
        live = config.description if key == "description" else config.get(key)
        if key == "description" and live is not None:
            live = live.strip()
        if not _same(key, live, value):
            found.append(Difference(key, live, merged_option(live, value, OWNED.get(key)), key not in LIVE))
    lines = [line.config_value() for line in idmap]
    if config.raw_values("lxc.idmap") != lines:
        found.append(Difference("lxc.idmap", "; ".join(config.raw_values("lxc.idmap")) or None,
                                "; ".join(lines), True))
    return found


def idmap_config_lines(idmap: Sequence[MapLine]) -> list[str]:
    """The `lxc.idmap: ...` lines for the container's config file."""
    return [f"lxc.idmap: {line.config_value()}" for line in idmap]
