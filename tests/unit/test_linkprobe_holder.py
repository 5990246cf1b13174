"""Who holds an address a new guest would take (`smbgw_plugins.linkprobe.probe.holder`):
the node itself, checked from its own interfaces, before anything is put on the link.
The probe on a real link: tests/integration/test_ha_probe.py and test_mode_lxc.py."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from smbgw_plugins.linkprobe import probe

from smbgw_agent.effects import netlink

MAC = bytes.fromhex("020000000001")


def link(name: str, *addresses: str, up: bool = True, mac: bytes = MAC) -> netlink.Link:
    held = tuple(netlink.Address(text, 24) for text in addresses)
    return netlink.Link(3, name, netlink.IFF_UP if up else 0, mac, held)


def test_an_address_of_the_node_itself_is_in_use_on_any_interface() -> None:
    links = [link("vmbr0", "10.0.0.1"), link("eth1", "10.0.0.21")]
    assert probe.holder("vmbr0", ip_address("10.0.0.21"), links) == "this node (eth1)"


def test_a_bridge_that_is_missing_or_down_is_said_so() -> None:
    with pytest.raises(probe.ProbeError, match="vmbr9 does not exist"):
        probe.holder("vmbr9", ip_address("10.0.0.21"), [link("vmbr0")])
    with pytest.raises(probe.ProbeError, match="vmbr0 is down"):
        probe.holder("vmbr0", ip_address("10.0.0.21"), [link("vmbr0", up=False)])


def test_a_bridge_without_ports_has_nobody_on_it() -> None:
    """The kernel gives a bridge 00:00:00:00:00:00 when its last port leaves; nothing is
    sent (a frame from that address would be invalid) and the address is free."""
    assert probe.holder("vmbr1", ip_address("10.0.0.21"), [link("vmbr1", mac=bytes(6))]) is None
