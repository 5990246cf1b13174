"""The `[vm]` share table (plugins/mode_vm/table.py): defaults, limits, the network
checks it shares with `[lxc]`, and hostile values."""

from __future__ import annotations

from typing import Any

import pytest
from smbgw_plugins.mode_vm.table import DEFAULT_MEMORY, MIB, VmSpec, parse_share_table

from smbgw_agent.model.errors import FieldError


def test_defaults_and_a_full_table() -> None:
    spec = VmSpec.of(parse_share_table({"address": "192.168.10.71/24"}))
    assert spec == VmSpec("192.168.10.71/24", cores=2, memory=DEFAULT_MEMORY, full_clone=False)
    spec = VmSpec.of(parse_share_table({"vmid": 3100, "template": 9000, "address": "dhcp", "cores": 4,
                                        "memory": "4G", "full_clone": True}))
    assert (spec.vmid, spec.template, spec.address, spec.cores, spec.memory_mib, spec.full_clone) == \
        (3100, 9000, "dhcp", 4, 4096, True)


@pytest.mark.parametrize(("table", "words"), [
    ({}, "address"),
    ({"address": "192.168.10.71/24", "memory": "256M"}, "less than 512M"),
    ({"address": "192.168.10.71/24", "memory": "0"}, "memory"),
    ({"address": "192.168.10.71/24", "memory": "5T"}, "more than 4T"),
    ({"address": "192.168.10.71/24", "memory": "1000.5M"}, "memory"),
    ({"address": "192.168.10.71/24", "cores": 0}, "cores"),
    ({"address": "192.168.10.71/24", "vmid": 50}, "vmid"),
    ({"address": "192.168.10.71/24", "vmid": 9000, "template": 9000}, "is the template's VMID"),
    ({"address": "dhcp", "gateway": "192.168.10.1"}, "comes from DHCP"),
    ({"address": "192.168.10.71/24", "gateway": "10.0.0.1"}, "is not in 192.168.10.0/24"),
    ({"address": "127.0.0.5/8"}, "cannot be a guest's address"),
    ({"address": "192.168.10.71/24", "full_clone": "yes"}, "full_clone"),
    ({"address": "192.168.10.71/24", "disk": "32G"}, "disk"),
    ({"address": "192.168.10.71/24\n[global]"}, "address"),
])
def test_bad_values_are_refused_with_the_key(table: dict[str, Any], words: str) -> None:
    with pytest.raises(FieldError, match=words):
        parse_share_table(table)


def test_memory_is_whole_mib() -> None:
    assert parse_share_table({"address": "192.168.10.71/24", "memory": "768M"})["memory"] == 768 * MIB
