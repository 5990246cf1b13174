"""ARP and NDP frames of the virtual-IP claim (`smbgw_plugins.linkprobe.packets`).

The builders are read back field by field at their RFC offsets (not through the module's
own parser), ICMPv6 checksums are verified by an independent method, builder -> parser
round trips find the other host's MAC and never our own, and the parsers survive what
anyone on the link can send: random bytes, truncations and mutations of valid frames,
64 KiB frames. The probe loop of `smbgw_plugins.linkprobe.probe` runs here on a fake socket and a
fake clock (when it sends, that a flood of frames ends with the window, which frames it
ignores) and its errors are read as an administrator would; on a real link it runs in
tests/integration/test_ha_probe.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smbgw_plugins.linkprobe import packets
from smbgw_plugins.linkprobe import probe as probe_module

OURS = bytes.fromhex("02000000000a")
THEIRS = bytes.fromhex("02000000000b")
V4 = IPv4Address("10.213.47.100")
V6 = IPv6Address("fd5b:9c1e:47d2::64")

EXAMPLES = int(os.environ.get("SMBGW_PROPERTY_EXAMPLES", "150"))
PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, derandomize="SMBGW_PROPERTY_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow], database=None,
)


def pseudo_header(source: IPv6Address, destination: IPv6Address, message: bytes) -> bytes:
    return source.packed + destination.packed + len(message).to_bytes(4, "big") + b"\x00\x00\x00\x3a"


def independent_checksum(source: IPv6Address, destination: IPv6Address, message: bytes) -> int:
    """The ICMPv6 checksum without adding 16-bit words: as 2**16 == 1 (mod 0xffff), the data read
    as one big number is congruent to the one's complement sum of its words."""
    data = pseudo_header(source, destination, message)
    data += message + b"\x00" * (len(message) % 2)
    return -int.from_bytes(data, "big") % 0xFFFF


def intact(frame: bytes) -> bool:
    """The ICMPv6 message of an Ethernet/IPv6 frame sums to zero with its checksum."""
    length = int.from_bytes(frame[18:20], "big")
    source, destination = IPv6Address(frame[22:38]), IPv6Address(frame[38:54])
    data = pseudo_header(source, destination, frame[54:54 + length]) + frame[54:54 + length]
    return int.from_bytes(data, "big") % 0xFFFF == 0


def nd_frame(kind: int, source: IPv6Address, destination: IPv6Address, target: IPv6Address, *,
             flags: int = 0, options: bytes = b"", src_mac: bytes = THEIRS, dst_mac: bytes | None = None,
             hop_limit: int = 255, checksum: int | None = None) -> bytes:
    """An NS or NA built here, independently of the module's builders."""
    body = bytes([kind, 0, 0, 0, flags, 0, 0, 0]) + target.packed + options
    value = independent_checksum(source, destination, body) if checksum is None else checksum
    body = body[:2] + value.to_bytes(2, "big") + body[4:]
    dst_mac = dst_mac or b"\x33\x33" + destination.packed[12:]
    ipv6 = bytes([0x60, 0, 0, 0]) + len(body).to_bytes(2, "big") + bytes([58, hop_limit])
    return dst_mac + src_mac + b"\x86\xdd" + ipv6 + source.packed + destination.packed + body


def arp_frame(op: int, sha: bytes, spa: str, tha: bytes, tpa: str, *, destination: bytes = b"\xff" * 6) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + IPv4Address(spa).packed + tha + IPv4Address(tpa).packed
    return destination + sha + b"\x08\x06" + body


def tlla(mac: bytes) -> bytes:
    return b"\x02\x01" + mac


def with_vlan(frame: bytes, vid: int = 10) -> bytes:
    return frame[:12] + b"\x81\x00" + vid.to_bytes(2, "big") + frame[12:]


# ---- builders, field by field ---------------------------------------------------------------


def test_arp_probe_fields() -> None:
    frame = packets.arp_probe(OURS, V4)
    assert len(frame) == 42
    assert frame[0:6] == b"\xff" * 6 and frame[6:12] == OURS and frame[12:14] == b"\x08\x06"
    assert frame[14:16] == b"\x00\x01" and frame[16:18] == b"\x08\x00"  # Ethernet, IPv4
    assert frame[18] == 6 and frame[19] == 4
    assert frame[20:22] == b"\x00\x01"  # request
    assert frame[22:28] == OURS
    assert frame[28:32] == bytes(4)  # sender IP 0.0.0.0
    assert frame[32:38] == bytes(6)
    assert frame[38:42] == V4.packed


@pytest.mark.parametrize(("reply", "op", "target_mac"), [(False, 1, bytes(6)), (True, 2, OURS)])
def test_arp_announcement_fields(reply: bool, op: int, target_mac: bytes) -> None:
    frame = packets.arp_announcement(OURS, V4, reply=reply)
    assert len(frame) == 42
    assert frame[0:6] == b"\xff" * 6 and frame[6:12] == OURS and frame[12:14] == b"\x08\x06"
    assert frame[14:20] == b"\x00\x01\x08\x00\x06\x04"
    assert int.from_bytes(frame[20:22], "big") == op
    assert frame[22:28] == OURS
    assert frame[28:32] == V4.packed and frame[38:42] == V4.packed  # gratuitous: sender IP = target IP
    assert frame[32:38] == target_mac


def test_solicited_node_address() -> None:
    # RFC 4291 2.7.1: the low 24 bits of the address after ff02::1:ff00:0/104
    assert packets.solicited_node(IPv6Address("fe80::2aa:ff:fe28:9c5a")) == IPv6Address("ff02::1:ff28:9c5a")
    assert packets.solicited_node(V6) == IPv6Address("ff02::1:ff00:64")
    assert packets.multicast_mac(IPv6Address("ff02::1:ff28:9c5a")) == bytes.fromhex("3333ff289c5a")


def test_dad_solicitation_fields() -> None:
    address = IPv6Address("fd5b:9c1e:47d2::ab:cdef")
    frame = packets.ndp_dad_solicitation(OURS, address)
    assert len(frame) == 14 + 40 + 24  # no options at all
    assert frame[0:6] == bytes.fromhex("3333ffabcdef") and frame[6:12] == OURS and frame[12:14] == b"\x86\xdd"
    assert frame[14:18] == b"\x60\x00\x00\x00"  # version 6, traffic class 0, flow label 0
    assert int.from_bytes(frame[18:20], "big") == 24
    assert frame[20] == 58 and frame[21] == 255  # ICMPv6, hop limit 255
    assert IPv6Address(frame[22:38]) == IPv6Address("::")
    assert IPv6Address(frame[38:54]) == IPv6Address("ff02::1:ffab:cdef")
    assert frame[54] == 135 and frame[55] == 0
    assert frame[58:62] == bytes(4)  # reserved
    assert IPv6Address(frame[62:78]) == address
    assert int.from_bytes(frame[56:58], "big") == independent_checksum(
        IPv6Address("::"), IPv6Address("ff02::1:ffab:cdef"), frame[54:56] + b"\x00\x00" + frame[58:])
    assert intact(frame)


def test_unsolicited_advertisement_fields() -> None:
    frame = packets.ndp_unsolicited_advertisement(OURS, V6)
    assert len(frame) == 14 + 40 + 24 + 8
    assert frame[0:6] == bytes.fromhex("333300000001") and frame[6:12] == OURS and frame[12:14] == b"\x86\xdd"
    assert frame[14:18] == b"\x60\x00\x00\x00"
    assert int.from_bytes(frame[18:20], "big") == 32
    assert frame[20] == 58 and frame[21] == 255
    assert IPv6Address(frame[22:38]) == V6
    assert IPv6Address(frame[38:54]) == IPv6Address("ff02::1")
    assert frame[54] == 136 and frame[55] == 0
    assert frame[58] == 0x20  # Override; Router and Solicited clear
    assert frame[59:62] == bytes(3)
    assert IPv6Address(frame[62:78]) == V6
    assert frame[78:86] == b"\x02\x01" + OURS  # target link-layer address option
    assert int.from_bytes(frame[56:58], "big") == independent_checksum(
        V6, IPv6Address("ff02::1"), frame[54:56] + b"\x00\x00" + frame[58:])
    assert intact(frame)


def test_checksum_is_the_one_the_module_verifies() -> None:
    frame = packets.ndp_unsolicited_advertisement(OURS, V6)
    assert packets.icmpv6_checksum(V6, packets.ALL_NODES, frame[54:]) == 0
    broken = bytearray(frame)
    broken[80] ^= 0x01
    assert not intact(bytes(broken))
    assert packets.parse_ndp(bytes(broken)) is None


def test_either_family() -> None:
    assert packets.ethertype(V4) == 0x0806 and packets.ethertype(V6) == 0x86DD
    assert packets.probe_frame(OURS, V4) == packets.arp_probe(OURS, V4)
    assert packets.probe_frame(OURS, V6) == packets.ndp_dad_solicitation(OURS, V6)
    assert packets.announcement_frames(OURS, V4) == [
        packets.arp_announcement(OURS, V4), packets.arp_announcement(OURS, V4, reply=True)]
    assert packets.announcement_frames(OURS, V6) == [packets.ndp_unsolicited_advertisement(OURS, V6)]


@pytest.mark.parametrize("mac", [b"", bytes(5), bytes(7), bytes(6), b"\x01\x00\x5e\x00\x00\x01", b"\xff" * 6])
def test_builders_refuse_a_mac_no_host_has(mac: bytes) -> None:
    for build in (packets.arp_probe, packets.arp_announcement):
        with pytest.raises(ValueError, match="unicast Ethernet"):
            build(mac, V4)
    for build6 in (packets.ndp_dad_solicitation, packets.ndp_unsolicited_advertisement):
        with pytest.raises(ValueError, match="unicast Ethernet"):
            build6(mac, V6)


def test_builders_refuse_the_other_family() -> None:
    with pytest.raises(TypeError):
        packets.arp_probe(OURS, V6)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        packets.ndp_dad_solicitation(OURS, V4)  # type: ignore[arg-type]


# ---- round trips and what counts as a conflict ----------------------------------------------


def test_arp_parser_reads_the_builders() -> None:
    arp = packets.parse_arp(packets.arp_probe(OURS, V4))
    assert arp == packets.Arp(OURS, packets.BROADCAST, 1, OURS, IPv4Address(0), bytes(6), V4)
    assert arp is not None and arp.is_probe
    reply = packets.parse_arp(packets.arp_announcement(OURS, V4, reply=True))
    assert reply == packets.Arp(OURS, packets.BROADCAST, 2, OURS, V4, OURS, V4)
    assert reply is not None and not reply.is_probe


@pytest.mark.parametrize("frame", [
    packets.arp_probe(THEIRS, V4),  # a simultaneous probe
    packets.arp_announcement(THEIRS, V4),
    packets.arp_announcement(THEIRS, V4, reply=True),
    # Linux's answer to a probe: a reply to 0.0.0.0, unicast to the prober
    arp_frame(2, THEIRS, str(V4), OURS, "0.0.0.0", destination=OURS),
    # the holder asking for someone else: its sender IP is the candidate
    arp_frame(1, THEIRS, str(V4), bytes(6), "10.213.47.1"),
    arp_frame(1, THEIRS, str(V4), bytes(6), "10.213.47.1") + bytes(18),  # padded to 60 bytes
])
def test_arp_conflicts(frame: bytes) -> None:
    assert packets.arp_conflict(frame, OURS, V4) == THEIRS
    assert packets.conflict(frame, OURS, V4) == THEIRS


@pytest.mark.parametrize("frame", [
    packets.arp_probe(OURS, V4),  # our own, looped back
    packets.arp_announcement(OURS, V4, reply=True),
    packets.arp_probe(THEIRS, IPv4Address("10.213.47.101")),  # another address
    arp_frame(1, THEIRS, "10.213.47.7", bytes(6), str(V4)),  # someone merely asks who has it
    arp_frame(2, THEIRS, "10.213.47.7", OURS, str(V4)),
    arp_frame(1, b"\x03\x00\x00\x00\x00\x0b", str(V4), bytes(6), str(V4)),  # a group MAC is no host
    arp_frame(1, bytes(6), str(V4), bytes(6), str(V4)),
    arp_frame(3, THEIRS, str(V4), bytes(6), str(V4)),  # RARP op
    with_vlan(packets.arp_announcement(THEIRS, V4)),  # another VLAN
    packets.arp_announcement(THEIRS, V4)[:41],
])
def test_arp_non_conflicts(frame: bytes) -> None:
    assert packets.arp_conflict(frame, OURS, V4) is None


def test_ndp_parser_reads_the_builders() -> None:
    ns = packets.parse_ndp(packets.ndp_dad_solicitation(OURS, V6))
    group = packets.solicited_node(V6)
    assert ns == packets.Neighbor(OURS, packets.multicast_mac(group), IPv6Address("::"), group, 135, 0, V6, None)
    na = packets.parse_ndp(packets.ndp_unsolicited_advertisement(OURS, V6))
    assert na == packets.Neighbor(OURS, bytes.fromhex("333300000001"), V6, packets.ALL_NODES, 136, 0x20, V6, OURS)


HOLDER_LL = IPv6Address("fe80::b")


@pytest.mark.parametrize(("frame", "other"), [
    (packets.ndp_unsolicited_advertisement(THEIRS, V6), THEIRS),
    (packets.ndp_dad_solicitation(THEIRS, V6), THEIRS),  # a simultaneous DAD
    # Linux's answer to DAD: to all nodes, Solicited clear, with its link-layer address
    (nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, flags=0x20, options=tlla(THEIRS)), THEIRS),
    # the option names the holder; the frame came through something else (a proxy)
    (nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, flags=0x20, options=tlla(THEIRS),
              src_mac=bytes.fromhex("02000000000c")), THEIRS),
    # no option: the Ethernet source
    (nd_frame(136, HOLDER_LL, IPv6Address("fe80::a"), V6, flags=0x60, dst_mac=OURS), THEIRS),
    # unknown options are skipped
    (nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, options=b"\x0e\x02" + bytes(14) + tlla(THEIRS)), THEIRS),
    (packets.ndp_unsolicited_advertisement(THEIRS, V6) + bytes(30), THEIRS),  # trailing bytes
])
def test_ndp_conflicts(frame: bytes, other: bytes) -> None:
    assert packets.ndp_conflict(frame, OURS, V6) == other
    assert packets.conflict(frame, OURS, V6) == other


@pytest.mark.parametrize("frame", [
    packets.ndp_dad_solicitation(OURS, V6),  # our own
    packets.ndp_unsolicited_advertisement(OURS, V6),
    packets.ndp_unsolicited_advertisement(THEIRS, IPv6Address("fd5b:9c1e:47d2::65")),  # another address
    nd_frame(135, HOLDER_LL, packets.solicited_node(V6), V6, options=b"\x01\x01" + THEIRS),  # merely asks
    nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, options=tlla(OURS)),  # says it is us
    nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, options=tlla(b"\x01" + bytes(5))),  # group MAC
    nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, options=tlla(THEIRS), hop_limit=254),  # routed
    nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, options=tlla(THEIRS), checksum=0x1234),
    nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, flags=0x40, options=tlla(THEIRS)),  # solicited to multicast
    nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, options=b"\x02\x00" + THEIRS),  # zero-length option
    nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, options=b"\x02\x02" + THEIRS + bytes(8)),  # 16-byte TLLA
    nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, options=tlla(THEIRS)[:6]),  # option runs past the end
    nd_frame(136, HOLDER_LL, packets.ALL_NODES, IPv6Address("ff02::1"), options=tlla(THEIRS)),  # multicast target
    nd_frame(135, IPv6Address("::"), packets.ALL_NODES, V6),  # DAD not to the solicited-node group
    nd_frame(135, IPv6Address("::"), packets.solicited_node(V6), V6, options=b"\x01\x01" + THEIRS),  # DAD with SLLA
    nd_frame(134, HOLDER_LL, packets.ALL_NODES, V6),  # a router advertisement
    with_vlan(packets.ndp_unsolicited_advertisement(THEIRS, V6)),
])
def test_ndp_non_conflicts(frame: bytes) -> None:
    assert packets.ndp_conflict(frame, OURS, V6) is None


@pytest.mark.parametrize(("frame", "address"), [
    (packets.arp_announcement(THEIRS, V4), V4),
    (packets.arp_announcement(THEIRS, V4, reply=True), V4),
    (arp_frame(1, THEIRS, str(V4), bytes(6), "10.213.47.1"), V4),  # it asks for its gateway from our address
    (packets.ndp_unsolicited_advertisement(THEIRS, V6), V6),
    (nd_frame(136, HOLDER_LL, IPv6Address("fe80::a"), V6, flags=0x60, dst_mac=OURS), V6),
])
def test_a_held_address_conflicts_with_another_host_using_it(frame: bytes, address: IPv4Address | IPv6Address) -> None:
    assert packets.held_conflict(frame, OURS, address) == THEIRS


@pytest.mark.parametrize(("frame", "address"), [
    (packets.arp_probe(THEIRS, V4), V4),  # it asks; our kernel answers and it backs off
    (packets.ndp_dad_solicitation(THEIRS, V6), V6),
    (packets.arp_announcement(OURS, V4), V4),  # our own
    (packets.ndp_unsolicited_advertisement(OURS, V6), V6),
    (arp_frame(1, THEIRS, "10.213.47.7", bytes(6), str(V4)), V4),  # someone asks who has it
    (arp_frame(1, bytes(6), str(V4), bytes(6), "10.213.47.1"), V4),  # no host has a zero MAC
    (packets.arp_announcement(THEIRS, IPv4Address("10.213.47.101")), V4),
    (nd_frame(135, HOLDER_LL, packets.solicited_node(V6), V6, options=b"\x01\x01" + THEIRS), V6),
    (with_vlan(packets.arp_announcement(THEIRS, V4)), V4),
    (packets.arp_announcement(THEIRS, V4), V6),  # the other family
])
def test_a_held_address_does_not_conflict_with_asking(frame: bytes, address: IPv4Address | IPv6Address) -> None:
    assert packets.held_conflict(frame, OURS, address) is None


def test_ndp_lengths_must_agree() -> None:
    frame = bytearray(packets.ndp_unsolicited_advertisement(THEIRS, V6))
    frame[18:20] = (33).to_bytes(2, "big")  # says one byte more than there is
    assert packets.parse_ndp(bytes(frame)) is None
    frame[18:20] = (23).to_bytes(2, "big")  # shorter than an NA
    assert packets.parse_ndp(bytes(frame)) is None
    other_next_header = bytearray(packets.ndp_unsolicited_advertisement(THEIRS, V6))
    other_next_header[20] = 0  # hop-by-hop options: not followed
    assert packets.parse_ndp(bytes(other_next_header)) is None
    version4 = bytearray(packets.ndp_unsolicited_advertisement(THEIRS, V6))
    version4[14] = 0x40
    assert packets.parse_ndp(bytes(version4)) is None


def test_parsers_ignore_the_other_family() -> None:
    assert packets.conflict(packets.arp_announcement(THEIRS, V4), OURS, V6) is None
    assert packets.conflict(packets.ndp_unsolicited_advertisement(THEIRS, V6), OURS, V4) is None


# ---- hostile input ------------------------------------------------------------------------


unicast_macs = st.binary(min_size=6, max_size=6).map(lambda b: bytes([b[0] & 0xFC | 0x02]) + b[1:])


def valid_frames() -> list[bytes]:
    return [
        packets.arp_probe(THEIRS, V4), packets.arp_announcement(THEIRS, V4),
        packets.arp_announcement(THEIRS, V4, reply=True),
        packets.ndp_dad_solicitation(THEIRS, V6), packets.ndp_unsolicited_advertisement(THEIRS, V6),
        nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, options=b"\x0e\x02" + bytes(14) + tlla(THEIRS)),
    ]


def survives(frame: bytes) -> None:
    """Every parser answers None or a well-formed value, and raises nothing."""
    for address in (V4, V6):
        for check in (packets.conflict, packets.held_conflict):
            other = check(frame, OURS, address)
            assert other is None or (packets.is_unicast_mac(other) and other != OURS)
    arp = packets.parse_arp(frame)
    assert arp is None or len(arp.sender_mac) == 6
    neighbor = packets.parse_ndp(frame)
    assert neighbor is None or neighbor.link_layer is None or len(neighbor.link_layer) == 6


@PROPERTY
@given(st.binary(max_size=2048))
def test_random_bytes(frame: bytes) -> None:
    survives(frame)


@PROPERTY
@given(st.sampled_from(valid_frames()), st.data())
def test_truncations(frame: bytes, data: st.DataObject) -> None:
    survives(frame[:data.draw(st.integers(0, len(frame)))])


@PROPERTY
@given(st.sampled_from(valid_frames()), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.binary(max_size=64))
def test_mutations(frame: bytes, changes: list[tuple[int, int]], tail: bytes) -> None:
    mutated = bytearray(frame)
    for position, value in changes:
        if position < len(mutated):
            mutated[position] = value
    survives(bytes(mutated) + tail)


@PROPERTY
@given(st.sampled_from(valid_frames()), st.integers(0, 0xFFFF), st.binary(max_size=16))
def test_huge_frames(frame: bytes, payload_length: int, filler: bytes) -> None:
    big = bytearray(frame + (filler or b"\x00") * (65536 // max(len(filler), 1)))[:65536]
    survives(bytes(big))
    big[18:20] = payload_length.to_bytes(2, "big")  # an IPv6 payload length anywhere up to 64 KiB
    survives(bytes(big))


def test_a_64_kib_advertisement_is_read_to_its_length() -> None:
    options = b"\x0e\xff" + bytes(8 * 255 - 2)
    count = (65535 - 24 - 8) // len(options)
    frame = nd_frame(136, HOLDER_LL, packets.ALL_NODES, V6, options=options * count + tlla(THEIRS))
    assert len(frame) > 65000
    assert packets.ndp_conflict(frame, OURS, V6) == THEIRS


@PROPERTY
@given(st.ip_addresses().filter(lambda a: a.version == 4 or not a.is_multicast), unicast_macs, unicast_macs)
def test_round_trips(address: IPv4Address | IPv6Address, ours: bytes, theirs: bytes) -> None:
    probe = packets.probe_frame(theirs, address)
    announcements = packets.announcement_frames(theirs, address)
    other = None if theirs == ours else theirs
    for frame in [probe, *announcements]:
        assert packets.conflict(frame, ours, address) == other
    for frame in announcements:
        assert packets.held_conflict(frame, ours, address) == (None if address.is_unspecified else other)
    assert packets.held_conflict(probe, ours, address) is None
    assert packets.conflict(probe, theirs, address) is None
    if isinstance(address, IPv6Address):
        assert intact(probe) and all(intact(frame) for frame in announcements)
    neighbour = type(address)(int(address) ^ 1)
    assert packets.conflict(probe, ours, neighbour) is None


# ---- the probe loop, on a fake socket and a fake clock ------------------------------------


Received = tuple[bytes, list[tuple[int, int, bytes]], int, tuple[object, ...]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLink:
    """A packet socket whose frames arrive at fixed times on the fake clock."""

    def __init__(self, clock: FakeClock, arrivals: list[tuple[float, bytes, int, bytes]], *,
                 flood: bytes | None = None) -> None:
        self.clock, self.arrivals, self.flood = clock, sorted(arrivals, key=lambda a: a[0]), flood
        self.sent: list[tuple[float, bytes]] = []
        self.timeouts: list[float] = []

    def send(self, frame: bytes) -> int:
        self.sent.append((self.clock.now - 1000.0, frame))
        return len(frame)

    def settimeout(self, value: float) -> None:
        self.timeouts.append(value)

    def recvmsg(self, size: int, ancillary_size: int) -> Received:
        until = self.clock.now + self.timeouts[-1]
        if self.arrivals and self.arrivals[0][0] + 1000.0 <= until:
            at, frame, pkttype, aux = self.arrivals.pop(0)
            self.clock.now = max(self.clock.now, at + 1000.0)
            ancillary = [(probe_module.SOL_PACKET, probe_module.PACKET_AUXDATA, aux)] if aux else []
            return frame, ancillary, 0, ("veth-a", 0x0806, pkttype, 1, THEIRS)
        if self.flood is not None:  # an unrelated frame every millisecond
            self.clock.now += 0.001
            return self.flood, [], 0, ("veth-a", 0x0806, 0, 1, THEIRS)
        self.clock.now = until
        raise TimeoutError


def auxdata(status: int, tci: int) -> bytes:
    return struct.pack("=IIIHHHH", status, 42, 42, 0, 14, tci, 0x8100)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FakeLink]]:
    clock = FakeClock()
    monkeypatch.setattr(probe_module.time, "monotonic", clock)
    made: list[FakeLink] = []

    def make(arrivals: list[tuple[float, bytes, int, bytes]], **kwargs: Any) -> FakeLink:
        link = FakeLink(clock, arrivals, **kwargs)
        made.append(link)

        @contextlib.contextmanager
        def opened(interface: str, address: object) -> Iterator[FakeLink]:
            yield link

        monkeypatch.setattr(probe_module, "_link", opened)
        return link

    yield make


def test_probe_spreads_its_probes_and_listens_the_whole_window(fake: Callable[..., FakeLink]) -> None:
    link = fake([])
    assert probe_module.probe("veth-a", V4, OURS) is None
    assert [round(at, 6) for at, _ in link.sent] == [0.0, 0.2, 0.4]
    assert all(frame == packets.arp_probe(OURS, V4) for _, frame in link.sent)
    assert all(0 < timeout <= 0.2 + 1e-9 for timeout in link.timeouts)
    assert round(link.clock.now - 1000.0, 6) == 0.6


def test_a_flood_does_not_stretch_the_window(fake: Callable[..., FakeLink]) -> None:
    link = fake([], flood=packets.arp_probe(THEIRS, IPv4Address("10.213.47.9")))
    assert probe_module.probe("veth-a", V4, OURS, window=1.0, probes=2) is None
    assert len(link.sent) == 2
    assert link.clock.now - 1000.0 < 1.0 + 0.002  # ends with the window, on the fake clock
    assert all(0 < timeout <= 1.0 for timeout in link.timeouts)


def test_probe_returns_the_first_conflict(fake: Callable[..., FakeLink]) -> None:
    link = fake([(0.3, packets.arp_announcement(THEIRS, V4, reply=True), 0, b"")])
    assert probe_module.probe("veth-a", V4, OURS) == THEIRS
    assert len(link.sent) == 2


@pytest.mark.parametrize(("pkttype", "aux", "found"), [
    (4, b"", None),  # PACKET_OUTGOING: a frame this host sent
    (0, auxdata(0x10, 10), None),  # tagged VLAN 10, tag taken off by the kernel: another VLAN
    (0, auxdata(0x10, 0x6000), THEIRS),  # priority tag only (VLAN 0): this link
    (0, auxdata(0x00, 0), THEIRS),
])
def test_probe_ignores_frames_not_from_this_link(fake: Callable[..., FakeLink], pkttype: int, aux: bytes,
                                                found: bytes | None) -> None:
    fake([(0.1, packets.ndp_unsolicited_advertisement(THEIRS, V6), pkttype, aux)])
    assert probe_module.probe("veth-a", V6, OURS) == found


def test_probe_refuses_nonsense_arguments() -> None:
    with pytest.raises(ValueError):
        probe_module.probe("veth-a", V4, OURS, probes=0)
    with pytest.raises(ValueError):
        probe_module.probe("veth-a", V4, OURS, window=0)
    with pytest.raises(ValueError):
        probe_module.probe("veth-a", V4, bytes(6))


@pytest.mark.parametrize(("number", "message"), [
    (errno.EPERM, "sending ARP/NDP packets needs CAP_NET_RAW"),
    (errno.EACCES, "sending ARP/NDP packets needs CAP_NET_RAW"),
    (errno.ENODEV, "interface vmbr9 does not exist"),
    (errno.ENETDOWN, "interface vmbr9 is down"),
    (errno.ENOBUFS, f"probing {V4} on vmbr9 failed: No buffer space available"),
])
def test_errors_are_said_plainly(monkeypatch: pytest.MonkeyPatch, number: int, message: str) -> None:
    @contextlib.contextmanager
    def failing(interface: str, address: object) -> Iterator[None]:
        raise OSError(number, os.strerror(number))
        yield

    monkeypatch.setattr(probe_module, "_link", failing)
    with pytest.raises(probe_module.ProbeError) as caught:
        probe_module.probe("vmbr9", V4, OURS)
    assert str(caught.value) == message
    with pytest.raises(probe_module.ProbeError) as caught:
        probe_module.announce("vmbr9", V4, OURS)
    assert str(caught.value) == message.replace("probing", "announcing")


@pytest.mark.parametrize("name", ["", "a" * 16, "eth\x000"])
def test_impossible_interface_names_do_not_exist(name: str) -> None:
    with pytest.raises(probe_module.ProbeError, match="does not exist"):
        probe_module.probe(name, V4, OURS)
