"""The `[ha]` table of a share file and the `[vip]` table of agent.toml: what they may say,
every problem with its line.

A virtual IP is checked here as far as it can be without looking at the node: it must be a
unicast address a client can reach (not a network's own address, not its broadcast, not
loopback, link-local or multicast) with a prefix length. What depends on the node (the
interface exists and is up, the address lies in its subnet, it is not the node's own
address) is checked when the address is planned (`plugins.ha.vips`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import Table, address

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IFNAMSIZ = 16  # the kernel's limit, with the terminating NUL
_BAD_IFNAME = re.compile(r"[/:\s]")


def interface_name(value: object) -> str:
    """A Linux interface name as the kernel accepts one (`dev_valid_name`)."""
    if not isinstance(value, str):
        raise FieldError("must be an interface name such as vmbr0")
    if not 1 <= len(value) < IFNAMSIZ or value in (".", "..") or _BAD_IFNAME.search(value) or not value.isprintable():
        raise FieldError(f"{value[:40]!r} is not an interface name (1 to {IFNAMSIZ - 1} characters, no '/', ':' "
                         "or spaces)")
    return value


def vip_problem(vip: IPInterface) -> str | None:
    """Why `vip` cannot be a share's address, or None. A client reaches a unicast host
    address; the subnet's own address and broadcast are not that (except on /31 and /32,
    RFC 3021 point-to-point links where every address is a host)."""
    ip, network = vip.ip, vip.network
    for kind, bad in (("loopback", ip.is_loopback), ("multicast", ip.is_multicast),
                      ("link-local", ip.is_link_local), ("unspecified", ip.is_unspecified)):
        if bad:
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{vip.with_prefixlen} is {article} {kind} address; a virtual IP must be one clients can reach"
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "255.255.255.255 is the limited broadcast address"
    if network.num_addresses > 2:
        if ip == network.network_address:
            return (f"{vip.with_prefixlen} is the network address of {network}; "
                    "pick a host address inside it")
        if isinstance(ip, ipaddress.IPv4Address) and ip == network.broadcast_address:
            return f"{vip.with_prefixlen} is the broadcast address of {network}; pick a host address inside it"
    return None


def _vip(value: object) -> str:
    text = address(value, network=True)
    problem = vip_problem(ipaddress.ip_interface(text))
    if problem:
        raise FieldError(problem)
    return text


def parse_share_table(data: Mapping[str, Any], clustered: bool) -> dict[str, Any]:
    """`[ha]` of a share file. `clustered`: the node runs CTDB, which names the interface
    of every public address itself (`[ctdb] public_interface` by default). A share served
    by a guest may have `proxmox_ha` alone: its address is the guest's own."""
    table = Table(data)
    vip = table.value("vip", _vip, None)
    interface = table.value("interface", interface_name, None)
    proxmox_ha = table.boolean("proxmox_ha", default=False)
    if "vip" not in data and "proxmox_ha" not in data:
        table.report("vip", "required key is missing")
    if "vip" in data and "interface" not in data and not clustered:
        table.report("interface", "required key is missing")
    table.done()
    return {"vip": vip, "interface": interface, "proxmox_ha": proxmox_ha}


@dataclass(frozen=True)
class VipSettings:
    """agent.toml `[vip]`: how the VIP manager claims and watches addresses.

    `probe_window`: how long the RFC 5227 probe (IPv6: duplicate address detection)
    listens for another holder before an address is claimed (0 claims without probing);
    `probes`: how many probes are sent in that window; `announce_repeat`: when the second
    burst of gratuitous ARPs / unsolicited neighbour advertisements follows the first
    (0: no repeat); `health_interval`: how often the node checks that it can still serve
    the shares behind its addresses (and that nobody removed one by hand)."""

    probe_window: float = 0.6
    probes: int = 3
    announce_count: int = 3
    announce_repeat: float = 3.0
    health_interval: float = 2.0

    @classmethod
    def from_config(cls, sections: Mapping[str, Any]) -> VipSettings:
        data = sections.get("vip") or {}
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def parse_agent_table(data: Mapping[str, Any]) -> dict[str, Any]:
    table = Table(data)
    defaults = VipSettings()
    parsed = {
        "probe_window": table.duration("probe_window", defaults.probe_window, maximum=10.0),
        "probes": table.integer("probes", defaults.probes, minimum=1, maximum=10),
        "announce_count": table.integer("announce_count", defaults.announce_count, minimum=1, maximum=10),
        "announce_repeat": table.duration("announce_repeat", defaults.announce_repeat, maximum=60.0),
        "health_interval": table.duration("health_interval", defaults.health_interval, minimum=0.5, maximum=300.0),
    }
    table.done()
    return parsed
