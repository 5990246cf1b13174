"""ARP and NDP frames for claiming an address: ask the link first, tell it afterwards.

Two nodes answering for one address split the clients between them, which is worse than
no answer at all, so before a node takes a share's address it asks whether anyone holds
it: ARP probes for IPv4 (RFC 5227) and duplicate address detection for IPv6 (RFC 4862).
After taking it, the node announces it (a gratuitous ARP, an unsolicited neighbour
advertisement) so switches and clients stop sending to the node that held it before
instead of waiting minutes for their caches to expire.

Pure code, frames in and frames out; `plugins.linkprobe.probe` sends and listens. The parsers
read frames anyone on the link can send, so every length and field is checked and
anything unexpected is None, never an exception. Frames are untagged Ethernet: a frame
with an 802.1Q tag belongs to another VLAN and is not about this link.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

ETH_P_ARP = 0x0806
ETH_P_IPV4 = 0x0800
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ZERO_MAC = bytes(6)
ALL_NODES = IPv6Address("ff02::1")
UNSPECIFIED_V4 = IPv4Address(0)
UNSPECIFIED_V6 = IPv6Address(0)

ARP_REQUEST = 1
ARP_REPLY = 2
HTYPE_ETHERNET = 1

ICMPV6 = 58
ND_HOP_LIMIT = 255  # RFC 4861: a node accepts ND only with 255, proof it was not routed
NEIGHBOR_SOLICITATION = 135
NEIGHBOR_ADVERTISEMENT = 136
NA_ROUTER = 0x80
NA_SOLICITED = 0x40
NA_OVERRIDE = 0x20
OPTION_SOURCE_LINK_LAYER = 1
OPTION_TARGET_LINK_LAYER = 2

Address = IPv4Address | IPv6Address

_ETHERNET = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_ND = struct.Struct("!BBHB3x16s")  # type, code, checksum, flags (NA) or reserved (NS), target
_LINK_LAYER_OPTION = struct.Struct("!BB6s")


@dataclass(frozen=True)
class Arp:
    """An Ethernet/IPv4 ARP packet as received."""

    source: bytes
    destination: bytes
    op: int
    sender_mac: bytes
    sender_ip: IPv4Address
    target_mac: bytes
    target_ip: IPv4Address

    @property
    def is_probe(self) -> bool:
        """RFC 5227's probe: a request from a host that holds no address yet."""
        return self.op == ARP_REQUEST and self.sender_ip == UNSPECIFIED_V4


@dataclass(frozen=True)
class Neighbor:
    """A neighbour solicitation or advertisement that passed RFC 4861's validity checks.

    `link_layer` is the source link-layer option of a solicitation, the target
    link-layer option of an advertisement, None when the message carries none.
    """

    source_mac: bytes
    destination_mac: bytes
    source: IPv6Address
    destination: IPv6Address
    kind: int
    flags: int
    target: IPv6Address
    link_layer: bytes | None


def mac_text(mac: bytes) -> str:
    """`02:00:00:aa:bb:cc`, as `ip link` shows it."""
    return ":".join(f"{b:02x}" for b in mac)


def is_unicast_mac(mac: bytes) -> bool:
    """A MAC a single host can have: six bytes, group bit clear, not all zero."""
    return len(mac) == 6 and not mac[0] & 1 and mac != ZERO_MAC


def _check(mac: bytes, address: Address, version: int) -> None:
    """Refuse what would build a wrong frame silently (struct truncates and pads)."""
    if not is_unicast_mac(mac):
        raise ValueError(f"not a unicast Ethernet address: {mac.hex(':')}")
    if address.version != version:
        raise TypeError(f"{address} is not an IPv{version} address")


def _ethernet(destination: bytes, source: bytes, ethertype: int) -> bytes:
    return _ETHERNET.pack(destination, source, ethertype)


# ---- IPv4: ARP ----------------------------------------------------------------------------


def _arp(mac: bytes, destination: bytes, op: int, sender_ip: IPv4Address, target_mac: bytes,
         target_ip: IPv4Address) -> bytes:
    body = _ARP.pack(HTYPE_ETHERNET, ETH_P_IPV4, 6, 4, op, mac, sender_ip.packed, target_mac, target_ip.packed)
    return _ethernet(destination, mac, ETH_P_ARP) + body


def arp_probe(mac: bytes, address: IPv4Address) -> bytes:
    """RFC 5227 2.1.1's probe: sender IP 0.0.0.0 so no neighbour caches the candidate."""
    _check(mac, address, 4)
    return _arp(mac, BROADCAST, ARP_REQUEST, UNSPECIFIED_V4, ZERO_MAC, address)


def arp_announcement(mac: bytes, address: IPv4Address, *, reply: bool = False) -> bytes:
    """A gratuitous ARP: sender IP and target IP both `address`, to broadcast.

    The request form is RFC 5227's announcement (target MAC zero). The reply form sets the
    target MAC to ours as RFC 5944 4.6 says, which Linux requires before it treats a reply
    as gratuitous; some hosts and switches update their caches only from replies.
    """
    _check(mac, address, 4)
    if reply:
        return _arp(mac, BROADCAST, ARP_REPLY, address, mac, address)
    return _arp(mac, BROADCAST, ARP_REQUEST, address, ZERO_MAC, address)


def parse_arp(frame: bytes) -> Arp | None:
    """An untagged Ethernet ARP packet for IPv4, or None (trailing padding is ignored)."""
    if len(frame) < _ETHERNET.size + _ARP.size:
        return None
    destination, source, ethertype = _ETHERNET.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETHERNET.size)
    if (htype, ptype, hlen, plen) != (HTYPE_ETHERNET, ETH_P_IPV4, 6, 4) or op not in (ARP_REQUEST, ARP_REPLY):
        return None
    return Arp(source, destination, op, sha, IPv4Address(spa), tha, IPv4Address(tpa))


def arp_conflict(frame: bytes, mac: bytes, address: IPv4Address) -> bytes | None:
    """The MAC of another host that `frame` shows uses or wants `address` (RFC 5227 2.1.1).

    Any ARP packet whose sender IP is the candidate, or a probe for the candidate (another
    host claiming it at the same moment), from a sender MAC that is not ours. Our own
    frames, looped back, are not a conflict.
    """
    arp = parse_arp(frame)
    if arp is None or arp.sender_mac == mac or not is_unicast_mac(arp.sender_mac):
        return None
    if arp.sender_ip == address or (arp.is_probe and arp.target_ip == address):
        return arp.sender_mac
    return None


# ---- IPv6: neighbour discovery ------------------------------------------------------------


def solicited_node(address: IPv6Address) -> IPv6Address:
    """ff02::1:ffXX:XXXX: the group every holder of `address` listens on (RFC 4291 2.7.1)."""
    return IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + address.packed[13:])


def multicast_mac(group: IPv6Address) -> bytes:
    """33:33 and the group's last four bytes (RFC 2464 7)."""
    return b"\x33\x33" + group.packed[12:]


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def icmpv6_checksum(source: IPv6Address, destination: IPv6Address, message: bytes) -> int:
    """RFC 4443 2.3's checksum over the pseudo-header and `message`.

    With the checksum field zeroed this is the value to put there; over a received
    message, checksum included, it is 0 when the message is intact.
    """
    pseudo = source.packed + destination.packed + struct.pack("!I3xB", len(message), ICMPV6)
    return ~_sum16(pseudo + message) & 0xFFFF


def _nd(mac: bytes, destination_mac: bytes, source: IPv6Address, destination: IPv6Address,
        message: bytes) -> bytes:
    checksum = icmpv6_checksum(source, destination, message)
    message = message[:2] + struct.pack("!H", checksum) + message[4:]
    header = _IPV6.pack(6 << 28, len(message), ICMPV6, ND_HOP_LIMIT, source.packed, destination.packed)
    return _ethernet(destination_mac, mac, ETH_P_IPV6) + header + message


def ndp_dad_solicitation(mac: bytes, address: IPv6Address) -> bytes:
    """RFC 4862 5.4.2's DAD probe: from ::, to the candidate's solicited-node group.

    No source link-layer option: a message from :: must not carry one (RFC 4861 7.1.1).
    """
    _check(mac, address, 6)
    group = solicited_node(address)
    message = _ND.pack(NEIGHBOR_SOLICITATION, 0, 0, 0, address.packed)
    return _nd(mac, multicast_mac(group), UNSPECIFIED_V6, group, message)


def ndp_unsolicited_advertisement(mac: bytes, address: IPv6Address) -> bytes:
    """RFC 4861 7.2.6's announcement: to all nodes, Override set so caches take our MAC."""
    _check(mac, address, 6)
    option = _LINK_LAYER_OPTION.pack(OPTION_TARGET_LINK_LAYER, 1, mac)
    message = _ND.pack(NEIGHBOR_ADVERTISEMENT, 0, 0, NA_OVERRIDE, address.packed) + option
    return _nd(mac, multicast_mac(ALL_NODES), address, ALL_NODES, message)


def _options(data: bytes) -> dict[int, bytes] | None:
    """The link-layer options (first of each kind), or None when any option is malformed."""
    found: dict[int, bytes] = {}
    offset = 0
    while offset < len(data):
        if len(data) - offset < 2:
            return None
        kind, units = data[offset], data[offset + 1]
        end = offset + 8 * units
        if units == 0 or end > len(data):
            return None  # RFC 4861 4.6: a zero length must be discarded
        if kind in (OPTION_SOURCE_LINK_LAYER, OPTION_TARGET_LINK_LAYER):
            if units != 1:
                return None  # an Ethernet address option is exactly 8 bytes (RFC 2464 6)
            found.setdefault(kind, bytes(data[offset + 2:end]))
        offset = end
    return found


def _icmpv6(frame: bytes) -> tuple[bytes, bytes, IPv6Address, IPv6Address, bytes] | None:
    """Ethernet addresses, IPv6 addresses and the ICMPv6 message of a hop-limit-255 packet."""
    if len(frame) < _ETHERNET.size + _IPV6.size + _ND.size:
        return None
    destination_mac, source_mac, ethertype = _ETHERNET.unpack_from(frame)
    first, length, next_header, hop_limit, source, destination = _IPV6.unpack_from(frame, _ETHERNET.size)
    start = _ETHERNET.size + _IPV6.size
    if (ethertype != ETH_P_IPV6 or first >> 28 != 6 or next_header != ICMPV6 or hop_limit != ND_HOP_LIMIT
            or length < _ND.size or start + length > len(frame)):
        return None
    return destination_mac, source_mac, IPv6Address(source), IPv6Address(destination), frame[start:start + length]


def _valid(kind: int, flags: int, source: IPv6Address, destination: IPv6Address, target: IPv6Address,
           options: dict[int, bytes]) -> bool:
    """RFC 4861 7.1's checks that depend on the message kind."""
    if target.is_multicast:
        return False
    if kind == NEIGHBOR_ADVERTISEMENT:
        return not (destination.is_multicast and flags & NA_SOLICITED)
    if source == UNSPECIFIED_V6:
        return destination == solicited_node(target) and OPTION_SOURCE_LINK_LAYER not in options
    return True


def parse_ndp(frame: bytes) -> Neighbor | None:
    """A valid neighbour solicitation or advertisement, checksum verified, or None.

    Extension headers are not followed: neighbour discovery does not use them.
    """
    packet = _icmpv6(frame)
    if packet is None:
        return None
    destination_mac, source_mac, source, destination, message = packet
    kind, code, _, flags, target_bytes = _ND.unpack_from(message)
    if kind not in (NEIGHBOR_SOLICITATION, NEIGHBOR_ADVERTISEMENT) or code != 0:
        return None
    options = _options(message[_ND.size:])
    target = IPv6Address(target_bytes)
    if options is None or icmpv6_checksum(source, destination, message) != 0:
        return None
    if not _valid(kind, flags, source, destination, target, options):
        return None
    wanted = OPTION_TARGET_LINK_LAYER if kind == NEIGHBOR_ADVERTISEMENT else OPTION_SOURCE_LINK_LAYER
    flags = flags if kind == NEIGHBOR_ADVERTISEMENT else 0
    return Neighbor(source_mac, destination_mac, source, destination, kind, flags, target, options.get(wanted))


def ndp_conflict(frame: bytes, mac: bytes, address: IPv6Address) -> bytes | None:
    """The MAC of another host that `frame` shows uses or wants `address` (RFC 4862 5.4.3-4).

    An advertisement for the candidate (its target link-layer option, else the Ethernet
    source), or a DAD solicitation for it from :: (another host claiming it at the same
    moment), from a MAC that is not ours.
    """
    neighbor = parse_ndp(frame)
    if neighbor is None or neighbor.target != address:
        return None
    if neighbor.kind == NEIGHBOR_ADVERTISEMENT:
        other = neighbor.link_layer or neighbor.source_mac
    elif neighbor.source == UNSPECIFIED_V6:
        other = neighbor.source_mac
    else:
        return None  # an ordinary solicitation: someone asks, nobody claims
    return other if other != mac and is_unicast_mac(other) else None


# ---- either family ------------------------------------------------------------------------


def ethertype(address: Address) -> int:
    """The EtherType of the frames that probe for and announce `address`."""
    return ETH_P_ARP if isinstance(address, IPv4Address) else ETH_P_IPV6


def probe_frame(mac: bytes, address: Address) -> bytes:
    """An ARP probe or a DAD solicitation for `address`."""
    if isinstance(address, IPv4Address):
        return arp_probe(mac, address)
    return ndp_dad_solicitation(mac, address)


def announcement_frames(mac: bytes, address: Address) -> list[bytes]:
    """One announcement: gratuitous ARP request and reply, or an unsolicited advertisement."""
    if isinstance(address, IPv4Address):
        return [arp_announcement(mac, address), arp_announcement(mac, address, reply=True)]
    return [ndp_unsolicited_advertisement(mac, address)]


def conflict(frame: bytes, mac: bytes, address: Address) -> bytes | None:
    """The MAC of another host that `frame` shows uses or probes for `address`, else None."""
    if isinstance(address, IPv4Address):
        return arp_conflict(frame, mac, address)
    return ndp_conflict(frame, mac, address)


def held_conflict(frame: bytes, mac: bytes, address: Address) -> bytes | None:
    """The MAC of another host that `frame` shows uses `address` while we hold it, else None.

    Narrower than :func:`conflict`: an ARP packet whose sender IP is the address (RFC 5227
    2.4), or a neighbour advertisement for it (RFC 4862 5.4.4), from a MAC that is not
    ours. A probe or a DAD solicitation from another host is that host asking; our kernel
    answers it for an address we hold, and the asker backs off.
    """
    if address.is_unspecified:  # the sender of every probe; no host holds it
        return None
    if isinstance(address, IPv4Address):
        arp = parse_arp(frame)
        if arp is None or arp.sender_ip != address:
            return None
        other = arp.sender_mac
    else:
        neighbor = parse_ndp(frame)
        if neighbor is None or neighbor.kind != NEIGHBOR_ADVERTISEMENT or neighbor.target != address:
            return None
        other = neighbor.link_layer or neighbor.source_mac
    return other if other != mac and is_unicast_mac(other) else None
