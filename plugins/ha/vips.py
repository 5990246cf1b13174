"""Which virtual IPs this node should hold, and whether an interface can take one: pure
planning over share declarations and what netlink reported, no effects.

One address may serve several shares (reference counted: it stays while any of them is
declared and healthy). Two shares that give one address different interfaces or prefix
lengths disagree; neither declaration wins, both shares report it, and the address
keeps what was last applied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smbgw_agent.effects.netlink import Address, Link
from smbgw_agent.model.shares import ShareSpec

SECTION = "ha"
PREFIX = "vip:"
MODES = ("native",)  # guests (lxc, vm) carry their own address; their modes handle [ha]


@dataclass(frozen=True)
class Vip:
    """One address this node should hold, and the shares behind it."""

    address: str
    prefixlen: int
    interface: str
    shares: tuple[str, ...]

    @property
    def resource_id(self) -> str:
        return resource_id(self.address)

    @property
    def text(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.address)

    def spec(self, hold: bool, reason: str = "") -> dict[str, Any]:
        return {"address": self.address, "prefixlen": self.prefixlen, "interface": self.interface,
                "shares": list(self.shares), "hold": hold, "reason": reason}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Vip:
        return cls(str(spec["address"]), int(spec["prefixlen"]), str(spec["interface"]),
                   tuple(str(s) for s in spec.get("shares", ())))


def resource_id(address: str) -> str:
    return PREFIX + address


def address_of(share: ShareSpec) -> str | None:
    """The address of a share's `[ha] vip`, written one way (whatever the mode)."""
    table = share.sections.get(SECTION)
    return str(ipaddress.ip_interface(table["vip"]).ip) if table and table.get("vip") else None


def vip_of(share: ShareSpec) -> tuple[str, int, str] | None:
    """(address, prefix length, interface) a native share asks for, or None."""
    table = share.sections.get(SECTION)
    if not table or share.mode not in MODES or not table.get("interface") or not table.get("vip"):
        return None
    interface = ipaddress.ip_interface(table["vip"])
    return str(interface.ip), interface.network.prefixlen, str(table["interface"])


@dataclass(frozen=True)
class Declared:
    vips: dict[str, Vip]          # by address
    disagreements: dict[str, str]  # share key -> why its [ha] is not used


def declared(shares: Mapping[str, ShareSpec]) -> Declared:
    by_address: dict[str, list[tuple[ShareSpec, int, str]]] = {}
    for spec in shares.values():
        wanted = vip_of(spec)
        if wanted is not None:
            address, prefixlen, interface = wanted
            by_address.setdefault(address, []).append((spec, prefixlen, interface))
    vips: dict[str, Vip] = {}
    disagreements: dict[str, str] = {}
    for address, claims in sorted(by_address.items()):
        shapes = sorted({(prefixlen, interface) for _spec, prefixlen, interface in claims})
        if len(shapes) > 1:
            said = "; ".join(f"{spec.name} ({spec.file}): {address}/{prefixlen} on {interface}"
                             for spec, prefixlen, interface in sorted(claims, key=lambda c: c[0].key))
            for spec, _prefixlen, _interface in claims:
                disagreements[spec.key] = (f"[ha] vip {address} is declared differently by several shares ({said}); "
                                           "one address has one interface and prefix length")
            continue
        prefixlen, interface = shapes[0]
        names = tuple(sorted(spec.name for spec, _p, _i in claims))
        vips[address] = Vip(address, prefixlen, interface, names)
    return Declared(vips, disagreements)


def _same_family(vip: Vip, addresses: Iterable[Address]) -> list[Address]:
    return [a for a in addresses
            if ipaddress.ip_address(a.address).version == vip.ip.version
            and not ipaddress.ip_address(a.address).is_link_local
            and ipaddress.ip_address(a.address) != vip.ip]


def subnet_problem(vip: Vip, link: Link) -> str | None:
    """A VIP belongs in one of its interface's subnets, with that subnet's prefix: else
    the node would answer for it but route the replies elsewhere, or announce a subnet
    that is not there. An interface with no address of the family has nothing to say."""
    own = _same_family(vip, link.addresses)
    if not own:
        return None
    containing = [a for a in own if vip.ip in a.interface.network]
    if not containing:
        subnets = ", ".join(sorted({str(a.interface.network) for a in own}))
        return f"{vip.text} lies outside the subnets of {link.name} ({subnets})"
    if all(a.prefixlen != vip.prefixlen for a in containing):
        subnet = containing[0].interface.network
        return f"{vip.text} has prefix /{vip.prefixlen} but {link.name}'s subnet is {subnet}"
    return None


def foreign_problem(vip: Vip, links: Sequence[Link], owned: bool) -> str | None:
    """An address the agent did not add is never touched: if the node already has it (its
    own address, or one an administrator or keepalived added), say so and leave it."""
    if owned:
        return None
    for link in links:
        found = link.find(vip.address)
        if found is None:
            continue
        if not found.secondary:
            return f"{vip.address} is this node's own address on {link.name}; a virtual IP must be a separate address"
        return (f"{vip.address} is already configured on {link.name} and was not added by smbgw; it is left alone "
                f"(remove it by hand, `ip addr del {found.address}/{found.prefixlen} dev {link.name}`, "
                "to let the agent manage it)")
    return None


def interface_problem(vip: Vip, link: Link | None) -> str | None:
    if link is None:
        return f"interface {vip.interface} does not exist"
    if not link.up:
        return f"interface {vip.interface} is down"
    return subnet_problem(vip, link)


def held_on(vip: Vip, links: Sequence[Link]) -> list[tuple[Link, Address]]:
    """Where the node has the address now (normally one place, or none)."""
    return [(link, found) for link in links if (found := link.find(vip.address)) is not None]
