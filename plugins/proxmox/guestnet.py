"""A guest's one network interface as a share file declares it (`[lxc]`, `[vm]`):
`address` ("ADDRESS/PREFIX" or "dhcp") and `gateway`, checked the same way for both.

The address is required: clients reach the share on the guest's own address, and an
administrator should know it before the guest exists ("dhcp" is allowed, and then the
address is read back from the guest)."""

from __future__ import annotations

import ipaddress

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import Table, address, string

DHCP = "dhcp"


def interface_address(value: object) -> str:
    """`ADDRESS/PREFIX` of the guest's interface, or "dhcp"."""
    text = string(value, "address", 64)
    if text == DHCP:
        return text
    parsed = ipaddress.ip_interface(address(text, network=True))
    if parsed.ip.is_multicast or parsed.ip.is_unspecified or parsed.ip.is_loopback:
        raise FieldError(f"{text!r} cannot be a guest's address")
    if parsed.ip == parsed.network.network_address and parsed.network.num_addresses > 2:
        raise FieldError(f"{text!r} is the network's own address, not a host in it")
    if parsed.version == 4 and parsed.ip == parsed.network.broadcast_address and parsed.network.num_addresses > 2:
        raise FieldError(f"{text!r} is the network's broadcast address")
    return str(parsed)


def check_gateway(table: Table, own: object, gateway: object) -> None:
    """The gateway must be a host of the guest's network, not the guest itself, and comes
    from DHCP when the address does."""
    if gateway is None or not isinstance(own, str):
        return
    if own == DHCP:
        table.report("gateway", "a gateway comes from DHCP with address = \"dhcp\": remove it")
    elif ipaddress.ip_address(str(gateway)) not in ipaddress.ip_interface(own).network:
        table.report("gateway", f"{gateway} is not in {ipaddress.ip_interface(own).network}, the network of "
                     f"address {own}")
    elif ipaddress.ip_address(str(gateway)) == ipaddress.ip_interface(own).ip:
        table.report("gateway", "is the guest's own address")
