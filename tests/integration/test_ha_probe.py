"""Probing and announcing on a real link: two network namespaces joined by a veth pair.

A (10.213.47.1, fd5b:9c1e:47d2::1) probes and announces; B (.2, ::2) is a Linux host that
holds its addresses. The probes run in A in a child process (`ip netns exec`), exactly
as the agent would call them; B's kernel answers them itself, which also shows that Linux
accepts our ARP probes and DAD solicitations (checksum, hop limit, addresses) as valid.
What A announces is captured by a raw socket in B and read back field by field, and B's
neighbour cache is seen to move to A's MAC (the kernel accepted the announcement).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from smbgw_plugins.linkprobe import packets

from tests.support.netns import TIMEOUT, VethPair, ip, run_python, started, veth_pair

pytestmark = pytest.mark.integration

NET4 = "10.213.47"
NET6 = "fd5b:9c1e:47d2:"
STALE_MAC = "02:00:5e:00:53:99"

PROBE = """
import ipaddress, sys
from smbgw_plugins.linkprobe.probe import ProbeError, probe
interface, address, mac = sys.argv[1], ipaddress.ip_address(sys.argv[2]), bytes.fromhex(sys.argv[3])
if len(sys.argv) > 4:  # wait for the go, so two probers start together
    print("ready", flush=True)
    sys.stdin.readline()
try:
    other = probe(interface, address, mac, **({"window": float(sys.argv[4])} if len(sys.argv) > 4 else {}))
except ProbeError as error:
    print("ProbeError:", error)
else:
    print(other.hex() if other else "free")
"""

ANNOUNCE = """
import ipaddress, sys
from smbgw_plugins.linkprobe.probe import announce
announce(sys.argv[1], ipaddress.ip_address(sys.argv[2]), bytes.fromhex(sys.argv[3]))
"""

# Prints, in hex, each gratuitous ARP or neighbour advertisement from one MAC, until it has
# seen `count` of them (or 20 s passed: the test then fails on what is missing). Only the
# socket module: what is on the wire is judged by the test, not by the code under test.
LISTEN = """
import socket, sys, time
interface, ethertype, source, count = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4])
def wanted(frame):
    if ethertype == 0x0806:
        return len(frame) >= 42 and frame[28:32] == frame[38:42]
    return len(frame) >= 78 and frame[20] == 58 and frame[54] == 136
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
    sock.bind((interface, ethertype))
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while count and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            frame, where = sock.recvfrom(65536)
        except TimeoutError:
            break
        if where[2] != socket.PACKET_OUTGOING and frame[6:12] == source and wanted(frame):
            print(frame.hex(), flush=True)
            count -= 1
"""


@pytest.fixture
def link() -> Iterator[VethPair]:
    with veth_pair("smbgwha") as pair:
        for end, host in ((pair.a, 1), (pair.b, 2)):
            ip("addr", "add", f"{NET4}.{host}/24", "dev", end.interface, namespace=end.namespace)
            ip("-6", "addr", "add", f"{NET6}:{host}/64", "dev", end.interface, "nodad", namespace=end.namespace)
        yield pair


def probe_in(namespace: str, interface: str, address: str, mac: bytes) -> str:
    done = run_python(namespace, PROBE, interface, address, mac.hex())
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("address", [f"{NET4}.50", f"{NET6}:50"])
def test_a_free_address_is_free(link: VethPair, address: str) -> None:
    assert probe_in(link.a.namespace, link.a.interface, address, link.a.mac) == "free"


@pytest.mark.parametrize("address", [f"{NET4}.2", f"{NET6}:2"])
def test_an_address_another_host_holds_names_that_host(link: VethPair, address: str) -> None:
    assert probe_in(link.a.namespace, link.a.interface, address, link.a.mac) == link.b.mac.hex()


@pytest.mark.parametrize("address", [f"{NET4}.60", f"{NET6}:60"])
def test_of_two_hosts_probing_at_once_one_backs_off(link: VethPair, address: str) -> None:
    with started(link.a.namespace, PROBE, link.a.interface, address, link.a.mac.hex(), "2.0") as a, \
            started(link.b.namespace, PROBE, link.b.interface, address, link.b.mac.hex(), "2.0") as b:
        for child in (a, b):
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
        for child in (a, b):
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        seen_by_a, _ = a.communicate(timeout=TIMEOUT)
        seen_by_b, _ = b.communicate(timeout=TIMEOUT)
    # Each names the other or found it free, and never both free: the one that opened its
    # socket later may have missed the other's first probe, and the other, having seen
    # this one's probe, stopped probing. One backing off is what RFC 5227 asks for.
    results = (seen_by_a.strip(), seen_by_b.strip())
    assert results[0] in ("free", link.b.mac.hex()) and results[1] in ("free", link.a.mac.hex())
    assert results != ("free", "free")


def captured_announcement(link: VethPair, address: str, count: int) -> list[bytes]:
    """What B's raw socket saw when A announced `address`."""
    ethertype = packets.ethertype(ip_address(address))
    with started(link.b.namespace, LISTEN, link.b.interface, str(ethertype), link.a.mac.hex(), str(count)) as b:
        assert b.stdout is not None and b.stdout.readline() == "ready\n"
        done = run_python(link.a.namespace, ANNOUNCE, link.a.interface, address, link.a.mac.hex())
        assert done.returncode == 0, done.stderr
        out, err = b.communicate(timeout=TIMEOUT)
    assert b.returncode == 0, err
    return [bytes.fromhex(line) for line in out.split()]


def neighbour_mac(link: VethPair, address: str) -> str | None:
    """B's neighbour cache entry for `address`, once it names A's MAC (or after 10 s, what it says)."""
    deadline = time.monotonic() + 10
    while True:
        entries = json.loads(ip("-j", "neigh", "show", address, "dev", link.b.interface, namespace=link.b.namespace))
        mac = entries[0].get("lladdr") if entries else None
        if mac == link.a.mac.hex(":") or time.monotonic() > deadline:
            return mac
        time.sleep(0.05)


def test_announce_ipv4_is_a_gratuitous_arp_request_and_reply(link: VethPair) -> None:
    address = f"{NET4}.100"
    ip("neigh", "replace", address, "lladdr", STALE_MAC, "dev", link.b.interface, "nud", "stale",
       namespace=link.b.namespace)
    request, reply = captured_announcement(link, address, 2)
    for frame, op, target_mac in ((request, 1, bytes(6)), (reply, 2, link.a.mac)):
        assert frame[0:6] == packets.BROADCAST and frame[6:12] == link.a.mac and frame[12:14] == b"\x08\x06"
        assert frame[14:20] == b"\x00\x01\x08\x00\x06\x04"
        assert int.from_bytes(frame[20:22], "big") == op
        assert frame[22:28] == link.a.mac and frame[32:38] == target_mac
        assert IPv4Address(frame[28:32]) == IPv4Address(frame[38:42]) == IPv4Address(address)
    parsed = packets.parse_arp(request)
    assert parsed is not None and parsed.sender_ip == parsed.target_ip == IPv4Address(address)
    assert packets.conflict(reply, link.b.mac, IPv4Address(address)) == link.a.mac
    assert neighbour_mac(link, address) == link.a.mac.hex(":")


def test_announce_ipv6_is_an_unsolicited_advertisement(link: VethPair) -> None:
    address = f"{NET6}:100"
    ip("-6", "neigh", "replace", address, "lladdr", STALE_MAC, "dev", link.b.interface, "nud", "stale",
       namespace=link.b.namespace)
    (frame,) = captured_announcement(link, address, 1)
    assert frame[0:6] == bytes.fromhex("333300000001") and frame[6:12] == link.a.mac
    assert frame[21] == 255
    assert IPv6Address(frame[22:38]) == IPv6Address(address) and IPv6Address(frame[38:54]) == packets.ALL_NODES
    neighbor = packets.parse_ndp(frame)  # checks the checksum too
    assert neighbor is not None
    assert (neighbor.kind, neighbor.flags, neighbor.target) == (136, packets.NA_OVERRIDE, IPv6Address(address))
    assert neighbor.link_layer == link.a.mac
    assert packets.conflict(frame, link.b.mac, IPv6Address(address)) == link.a.mac
    assert neighbour_mac(link, address) == link.a.mac.hex(":")


def test_a_missing_interface_is_named(link: VethPair) -> None:
    out = probe_in(link.a.namespace, "smbgwnosuch0", f"{NET4}.50", link.a.mac)
    assert out == "ProbeError: interface smbgwnosuch0 does not exist"


def test_a_down_interface_is_named(link: VethPair) -> None:
    ip("link", "set", link.a.interface, "down", namespace=link.a.namespace)
    out = probe_in(link.a.namespace, link.a.interface, f"{NET4}.50", link.a.mac)
    assert out == f"ProbeError: interface {link.a.interface} is down"


def test_without_cap_net_raw_the_capability_is_named(link: VethPair) -> None:
    drop = ["setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw", "--"]
    done = run_python(link.a.namespace, PROBE, link.a.interface, f"{NET4}.50", link.a.mac.hex(), prefix=drop)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ProbeError: sending ARP/NDP packets needs CAP_NET_RAW"


# The listener the defender keeps open, in A: what its two sockets let through in a time.
WATCH = """
import json, select, sys, time
from smbgw_plugins.linkprobe import packets, probe
interface, seconds = sys.argv[1], float(sys.argv[2])
sockets = {"arp": probe.listener(interface, packets.ETH_P_ARP), "ipv6": probe.listener(interface, packets.ETH_P_IPV6)}
print("ready", flush=True)
seen = {name: [] for name in sockets}
deadline = time.monotonic() + seconds
while (left := deadline - time.monotonic()) > 0:
    readable, _, _ = select.select(list(sockets.values()), [], [], left)
    for name, sock in sockets.items():
        if sock in readable:
            seen[name] += [frame.hex() for frame in probe.pending(sock)]
print(json.dumps(seen))
"""


SEND_UDP = """
import socket, sys, time
for address in sys.argv[1:]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for _ in range(3):
            sock.sendto(b"not for the listener", (address, 9))
            time.sleep(0.2)
"""


def test_the_held_address_listener_lets_through_only_arp_and_advertisements(link: VethPair) -> None:
    with started(link.a.namespace, WATCH, link.a.interface, "3") as a:
        assert a.stdout is not None and a.stdout.readline() == "ready\n"
        ip("neigh", "flush", "dev", link.b.interface, namespace=link.b.namespace)
        # B resolves A (an ARP request, a neighbour solicitation) and sends it UDP over both
        # families: the solicitations and the datagrams are what the filter must drop.
        sent = run_python(link.b.namespace, SEND_UDP, f"{NET4}.1", f"{NET6}:1")
        assert sent.returncode == 0, sent.stderr
        for address in (f"{NET4}.77", f"{NET6}:77"):
            done = run_python(link.b.namespace, ANNOUNCE, link.b.interface, address, link.b.mac.hex())
            assert done.returncode == 0, done.stderr
        out, _ = a.communicate(timeout=TIMEOUT)
    seen = {name: [bytes.fromhex(frame) for frame in frames] for name, frames in json.loads(out).items()}
    assert seen["arp"] and all(frame[12:14] == b"\x08\x06" for frame in seen["arp"])
    assert seen["ipv6"] and all(frame[12:14] == b"\x86\xdd" and frame[20] == 58 and frame[54] == 136
                                for frame in seen["ipv6"]), "only neighbour advertisements"
    assert not any(frame[6:12] == link.a.mac for frames in seen.values() for frame in frames), "A's own frames"
    # B's announcements are what a defender of .77 and ::77 in A would act on
    assert any(packets.held_conflict(f, link.a.mac, IPv4Address(f"{NET4}.77")) == link.b.mac for f in seen["arp"])
    assert any(packets.held_conflict(f, link.a.mac, IPv6Address(f"{NET6}:77")) == link.b.mac for f in seen["ipv6"])
