"""Interfaces and their addresses, read and changed over netlink (pyroute2), never by
running `ip`: no output format to parse, errors come back as errno values, and one socket
answers in microseconds.

Only what a virtual-IP manager needs: look an interface up (index, state, MAC, its
addresses), add an address, remove one. Errors become `NetlinkError` with a sentence an
administrator can act on (EPERM: the agent lacks CAP_NET_ADMIN).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# pyroute2 logs every netlink message it sends and receives at DEBUG: at the agent's
# --log-level debug that is pages per pass, drowning what the agent itself says.
logging.getLogger("pyroute2").setLevel(logging.INFO)

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40


class NetlinkError(Exception):
    """A netlink request failed; the message says what to do about it."""


@dataclass(frozen=True)
class Address:
    address: str
    prefixlen: int
    flags: int = 0

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(f"{self.address}/{self.prefixlen}")

    @property
    def secondary(self) -> bool:
        """An IPv4 address added beside another one of the same subnet (not the node's own)."""
        return bool(self.flags & IFA_F_SECONDARY)

    @property
    def dad_failed(self) -> bool:
        return bool(self.flags & IFA_F_DADFAILED)


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    flags: int
    mac: bytes
    addresses: tuple[Address, ...]

    @property
    def up(self) -> bool:
        """Administratively up (`ip link set X up`)."""
        return bool(self.flags & IFF_UP)

    @property
    def carrier(self) -> bool:
        return bool(self.flags & IFF_LOWER_UP)

    def find(self, address: str) -> Address | None:
        wanted = ipaddress.ip_address(address)
        return next((a for a in self.addresses if ipaddress.ip_address(a.address) == wanted), None)


def _explain(exc: Exception, doing: str) -> NetlinkError:
    code = getattr(exc, "code", None)
    if code in (errno.EPERM, errno.EACCES):
        return NetlinkError(f"{doing}: not permitted (the agent needs CAP_NET_ADMIN)")
    if code == errno.ENODEV:
        return NetlinkError(f"{doing}: no such interface")
    text = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    detail = f"{text} {exc}".strip() if text else str(exc)
    return NetlinkError(f"{doing}: {detail}")


@contextmanager
def _route() -> Iterator[Any]:
    """One netlink socket per use: nothing long-lived to go stale across a namespace or
    a network restart, and opening one costs well under a millisecond."""
    from pyroute2 import IPRoute  # noqa: PLC0415

    try:
        ipr = IPRoute()
    except OSError as exc:
        raise _explain(exc, "opening a netlink socket") from exc
    try:
        yield ipr
    finally:
        ipr.close()


def _mac(text: object) -> bytes:
    if not isinstance(text, str):
        return b""
    try:
        return bytes.fromhex(text.replace(":", ""))
    except ValueError:
        return b""


def _addresses(ipr: Any, index: int) -> tuple[Address, ...]:
    found = []
    for message in ipr.get_addr(index=index):
        text = message.get_attr("IFA_ADDRESS")
        if message["family"] == socket.AF_INET:
            text = message.get_attr("IFA_LOCAL") or text  # on point-to-point links ADDRESS is the peer
        flags = message.get_attr("IFA_FLAGS")
        if isinstance(text, str):
            found.append(Address(text, int(message["prefixlen"]),
                                 int(flags) if flags is not None else int(message["flags"])))
    return tuple(found)


def _link(ipr: Any, message: Any) -> Link:
    index = int(message["index"])
    return Link(index, str(message.get_attr("IFLA_IFNAME")), int(message["flags"]),
                _mac(message.get_attr("IFLA_ADDRESS")), _addresses(ipr, index))


def link(name: str) -> Link | None:
    """The interface called `name`, or None when there is none."""
    doing = f"reading interface {name}"
    try:
        with _route() as ipr:
            indexes = ipr.link_lookup(ifname=name)
            if not indexes:
                return None
            return _link(ipr, ipr.get_links(indexes[0])[0])
    except NetlinkError:
        raise
    except Exception as exc:  # pyroute2 raises its own NetlinkError and OSErrors
        raise _explain(exc, doing) from exc


def links() -> list[Link]:
    """Every interface of the node's network namespace, with its addresses."""
    try:
        with _route() as ipr:
            return [_link(ipr, message) for message in ipr.get_links()]
    except NetlinkError:
        raise
    except Exception as exc:
        raise _explain(exc, "listing interfaces") from exc


def add_address(index: int, address: str, prefixlen: int, name: str = "", nodad: bool = False) -> None:
    """Add `address/prefixlen` to the interface; `nodad` for an IPv6 address that was
    already checked for duplicates (the kernel would otherwise hold it tentative for a
    second). An address that is already there is not an error."""
    doing = f"adding {address}/{prefixlen} to {name or index}"
    try:
        with _route() as ipr:
            ipr.addr("add", index=index, address=address, prefixlen=prefixlen, flags=IFA_F_NODAD if nodad else 0)
    except NetlinkError:
        raise
    except Exception as exc:
        if getattr(exc, "code", None) == errno.EEXIST:
            return
        raise _explain(exc, doing) from exc


def remove_address(index: int, address: str, prefixlen: int, name: str = "") -> bool:
    """Remove the address; False if it was not there (someone removed it already)."""
    doing = f"removing {address}/{prefixlen} from {name or index}"
    try:
        with _route() as ipr:
            ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
    except NetlinkError:
        raise
    except Exception as exc:
        if getattr(exc, "code", None) in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ESRCH):
            return False
        raise _explain(exc, doing) from exc
    return True
