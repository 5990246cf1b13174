"""Put the frames of `plugins.linkprobe.packets` on a link: probe before claiming, announce after.

Raw AF_PACKET sockets (CAP_NET_RAW), because the kernel does neither job for an address
it does not hold yet: Linux has no duplicate address detection for IPv4 at all, and its
IPv6 DAD runs only after the address is configured, when clients may already be using it.
Each probe or announcement opens its own socket bound to one interface and one EtherType,
and closes it; a `listener` stays open, filtered down to what watching a held address needs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import socket
import struct
import time
from collections import deque
from collections.abc import Iterator, Sequence

from smbgw_agent.effects import netlink

from . import packets
from .packets import Address

# <linux/if_packet.h>: the Python socket module does not name these.
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
_ANCILLARY_SIZE = socket.CMSG_SPACE(_AUXDATA.size)
MAX_FRAME = 65536
IFNAMSIZ = 16


class ProbeError(Exception):
    """A probe or an announcement could not be made; the message is for the administrator."""


def _problem(error: OSError, interface: str, address: Address, doing: str) -> ProbeError:
    """Say what an administrator can act on, not an errno."""
    if error.errno in (errno.EPERM, errno.EACCES):
        return ProbeError("sending ARP/NDP packets needs CAP_NET_RAW")
    if error.errno in (errno.ENODEV, errno.ENXIO):
        return ProbeError(f"interface {interface} does not exist")
    if error.errno == errno.ENETDOWN:
        return ProbeError(f"interface {interface} is down")
    return ProbeError(f"{doing} {address} on {interface} failed: {error.strerror or error}")


@contextlib.contextmanager
def _errors(interface: str, address: Address, doing: str) -> Iterator[None]:
    # A name the kernel cannot have would otherwise surface as Python's own ValueError or
    # an OSError without errno.
    if not interface or len(interface.encode(errors="replace")) >= IFNAMSIZ or "\0" in interface:
        raise ProbeError(f"interface {interface} does not exist")
    try:
        yield
    except OSError as error:
        raise _problem(error, interface, address, doing) from error


@contextlib.contextmanager
def _link(interface: str, address: Address) -> Iterator[socket.socket]:
    """A packet socket on `interface` for the frames of `address`'s family.

    Opened with protocol 0 (it receives nothing) and given the EtherType only by bind, so
    no frame from another interface is queued in between.
    """
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.bind((interface, packets.ethertype(address)))
        yield sock


# Classic BPF (<linux/filter.h>): what a long-lived listener lets through. Bound to IPv6,
# a packet socket would otherwise be handed a copy of every IPv6 frame the interface
# carries, SMB traffic included; neighbour advertisements are a trickle of it.
SO_ATTACH_FILTER = 26
_BPF_LDH_ABS, _BPF_LDB_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x28, 0x30, 0x15, 0x06
_ONLY_ADVERTISEMENTS = (
    (_BPF_LDH_ABS, 0, 0, 12), (_BPF_JEQ_K, 0, 5, packets.ETH_P_IPV6),   # EtherType IPv6
    (_BPF_LDB_ABS, 0, 0, 20), (_BPF_JEQ_K, 0, 3, packets.ICMPV6),       # next header ICMPv6
    (_BPF_LDB_ABS, 0, 0, 54), (_BPF_JEQ_K, 0, 1, packets.NEIGHBOR_ADVERTISEMENT),
    (_BPF_RET_K, 0, 0, MAX_FRAME), (_BPF_RET_K, 0, 0, 0),
)
_ONLY_ARP = ((_BPF_LDH_ABS, 0, 0, 12), (_BPF_JEQ_K, 0, 1, packets.ETH_P_ARP),
             (_BPF_RET_K, 0, 0, MAX_FRAME), (_BPF_RET_K, 0, 0, 0))


def _attach_filter(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    code = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(code)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }; the kernel
    # copies the program during the call, so the buffer only has to outlive it.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HP", len(program), ctypes.addressof(buffer)))


def listener(interface: str, ethertype: int) -> socket.socket:
    """A packet socket on `interface` that receives only ARP, or only IPv6 neighbour
    advertisements, for watching held addresses. Filtered before it is bound, so nothing
    else is ever queued. The caller closes it."""
    address: Address = ipaddress.IPv4Address(0) if ethertype == packets.ETH_P_ARP else ipaddress.IPv6Address(0)
    with _errors(interface, address, "watching"):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            _attach_filter(sock, _ONLY_ARP if ethertype == packets.ETH_P_ARP else _ONLY_ADVERTISEMENTS)
            sock.bind((interface, ethertype))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock


def pending(sock: socket.socket) -> Iterator[bytes]:
    """The frames another host sent that wait on a non-blocking `sock`, until none is left."""
    while True:
        try:
            frame, ancillary, flags, source = sock.recvmsg(MAX_FRAME, _ANCILLARY_SIZE)
        except BlockingIOError:
            return
        if _from_another_host(ancillary, flags, source):
            yield frame


def _vlan_tagged(ancillary: list[tuple[int, int, bytes]]) -> bool:
    """Whether the kernel took a VLAN tag off the frame: it was on another VLAN.

    With VLAN offload a tagged frame reaches a socket on the parent interface untagged,
    its tag only in the auxiliary data. Priority tags (VLAN 0) are this VLAN.
    """
    for level, kind, data in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
            status, _len, _snaplen, _mac, _net, tci, _tpid = _AUXDATA.unpack_from(data)
            return bool(status & TP_STATUS_VLAN_VALID) and tci & 0x0FFF != 0
    return False


def _receive(sock: socket.socket) -> bytes | None:
    """The next frame another host sent us within the socket's timeout, else None."""
    try:
        frame, ancillary, flags, source = sock.recvmsg(MAX_FRAME, _ANCILLARY_SIZE)
    except TimeoutError:
        return None
    return frame if _from_another_host(ancillary, flags, source) else None


def _from_another_host(ancillary: list[tuple[int, int, bytes]], flags: int, source: tuple[object, ...]) -> bool:
    """A whole frame another host sent on this link: not our own going out, not cut short,
    not from another VLAN."""
    return source[2] != socket.PACKET_OUTGOING and not flags & socket.MSG_TRUNC and not _vlan_tagged(ancillary)


def _listen(sock: socket.socket, frame: bytes, sends: deque[float], deadline: float, mac: bytes,
            address: Address) -> bytes | None:
    """Send `frame` at each time in `sends` and listen until `deadline` (monotonic)."""
    while True:
        now = time.monotonic()
        while sends and sends[0] <= now:
            sends.popleft()
            sock.send(frame)
        if now >= deadline:
            return None
        sock.settimeout(min(sends[0], deadline) - now if sends else deadline - now)
        received = _receive(sock)
        other = None if received is None else packets.conflict(received, mac, address)
        if other is not None:
            return other


def probe(interface: str, address: Address, mac: bytes, window: float = 0.6, probes: int = 3) -> bytes | None:
    """The MAC of a host on `interface` that holds or is claiming `address`; None if it is free.

    Sends `probes` ARP probes or DAD solicitations spread evenly over `window` seconds,
    the first at once, and listens for the whole window: a host slow to answer still holds
    the address. The first conflict ends it, as one is proof enough. Timeouts come from
    the monotonic clock, so neither a clock step nor a flood of unrelated frames stretches
    the window. `mac` is the interface's own address, the one our frames carry.
    """
    if probes < 1 or not window > 0:
        raise ValueError("probe needs at least one probe and a positive window")
    frame = packets.probe_frame(mac, address)
    with _errors(interface, address, "probing"), _link(interface, address) as sock:
        start = time.monotonic()
        sends = deque(start + window * i / probes for i in range(probes))
        return _listen(sock, frame, sends, start + window, mac, address)


def announce(interface: str, address: Address, mac: bytes) -> None:
    """Tell the link that `address` is now at `mac`: a gratuitous ARP request and reply, or an
    unsolicited neighbour advertisement. Callers repeat it to survive a lost frame."""
    frames = packets.announcement_frames(mac, address)
    with _errors(interface, address, "announcing"), _link(interface, address) as sock:
        for frame in frames:
            sock.send(frame)


def holder(interface: str, address: Address, links: Sequence[netlink.Link], window: float = 0.6) -> str | None:
    """Who already has `address` where a new guest would take it on `interface` (a
    bridge): "this node (IFACE)" when one of the node's own interfaces holds it, "the host
    at MAC" when something on the link answers the probe, None when it is free. The node
    is asked first: Linux answers ARP for its own addresses on any interface, but not
    always on the one being probed."""
    for link in links:
        if link.find(str(address)) is not None:
            return f"this node ({link.name})"
    bridge = next((link for link in links if link.name == interface), None)
    if bridge is None:
        raise ProbeError(f"interface {interface} does not exist")
    if not bridge.up:
        raise ProbeError(f"interface {interface} is down")
    if not packets.is_unicast_mac(bridge.mac):
        # A Linux bridge takes the lowest MAC of its ports, and 00:00:00:00:00:00 when the
        # last port leaves (an internal bridge whose guests are all stopped): with no port,
        # nobody else is on the link to hold the address.
        return None
    other = probe(interface, address, bridge.mac, window=window)
    return None if other is None else f"the host at {packets.mac_text(other)}"
