"""agent.toml `[proxmox]`, a share file's `[lxc]`, and the cluster's guest list
(`/etc/pve/.vmlist`): good values parse, bad and hostile ones are refused with the key and
the reason, and no input makes the parsers raise anything but their own errors."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smbgw_plugins.mode_lxc.table import MIB, LxcSpec
from smbgw_plugins.mode_lxc.table import parse_share_table as parse_lxc
from smbgw_plugins.proxmox.table import ProxmoxSettings
from smbgw_plugins.proxmox.table import parse_agent_table as parse_proxmox
from smbgw_plugins.proxmox.vmlist import Guest, VmlistError, allocate, parse_vmlist, read_vmlist

from smbgw_agent.model.errors import FieldError

PROXMOX = {"vmid_range": [9000, 9099], "bridge": "vmbr0", "storage": "local-lvm"}


def problems(parse: Any, data: dict[str, Any]) -> str:
    with pytest.raises(FieldError) as failed:
        parse(data)
    return str(failed.value)


def test_a_proxmox_table_parses_with_defaults() -> None:
    parsed = parse_proxmox({**PROXMOX, "lxc_template": "local:vztmpl/smbgw-debian-12_amd64.tar.zst"})
    settings = ProxmoxSettings.from_config({"proxmox": parsed})
    assert settings == ProxmoxSettings((9000, 9099), "vmbr0", "local-lvm", "local",
                                       "local:vztmpl/smbgw-debian-12_amd64.tar.zst", None, False)
    assert ProxmoxSettings.from_config({}) is None


@pytest.mark.parametrize(("change", "said"), [
    ({"vmid_range": [99, 200]}, "vmid_range: must be at least 100"),
    ({"vmid_range": [9100, 9000]}, "first (9100) is larger than last (9000)"),
    ({"vmid_range": [100, 999_999_999]}, "at most 100000"),
    ({"vmid_range": "9000-9099"}, "must be [first, last]"),
    ({"bridge": "vmbr0/../x"}, "not a network interface name"),
    ({"bridge": "a-very-long-bridge0"}, "not a network interface name"),
    ({"storage": "Local"}, "not a Proxmox storage id"),
    ({"storage": "local;rm"}, "not a Proxmox storage id"),
    ({"lxc_template": "local:iso/debian.iso"}, "not a template volume"),
    ({"lxc_template": "local:vztmpl/../../etc/shadow"}, "not a container template file name"),
    ({"lxc_template": "local:vztmpl/x.tar.zst\n"}, "lxc_template"),
    ({"vm_template": True}, "vm_template: must be an integer"),
    ({"destroy_orphans": "yes"}, "destroy_orphans: must be true or false"),
    ({"extra": 1}, "extra: unknown key"),
])
def test_bad_proxmox_values_are_refused(change: dict[str, Any], said: str) -> None:
    assert said in problems(parse_proxmox, {**PROXMOX, **change})


def test_the_proxmox_table_needs_its_ids_bridge_and_storage() -> None:
    said = problems(parse_proxmox, {})
    for key in ("vmid_range", "bridge", "storage"):
        assert f"{key}: required key is missing" in said


def test_an_lxc_table_parses_with_defaults() -> None:
    spec = LxcSpec.of(parse_lxc({"address": "192.168.10.61/24", "gateway": "192.168.10.1", "vmid": 2100}))
    assert spec == LxcSpec("192.168.10.61/24", 2100, "192.168.10.1", 1, 512 * MIB, True)
    assert spec.memory_mib == 512
    assert LxcSpec.of(parse_lxc({"address": "dhcp", "memory": "2G", "cores": 4, "autostart": False})) == \
        LxcSpec("dhcp", None, None, 4, 2048 * MIB, False)
    assert LxcSpec.of(parse_lxc({"address": "fd00::5/64"})).address == "fd00::5/64"


@pytest.mark.parametrize(("data", "said"), [
    ({}, "address: required key is missing"),
    ({"address": "192.168.10.61"}, "needs a prefix length"),
    ({"address": "192.168.10.0/24"}, "the network's own address"),
    ({"address": "192.168.10.255/24"}, "broadcast address"),
    ({"address": "127.0.0.5/8"}, "cannot be a guest's address"),
    ({"address": "dhcp", "gateway": "192.168.10.1"}, "a gateway comes from DHCP"),
    ({"address": "192.168.10.61/24", "gateway": "10.0.0.1"}, "is not in 192.168.10.0/24"),
    ({"address": "192.168.10.61/24", "gateway": "192.168.10.61"}, "the guest's own address"),
    ({"address": "192.168.10.61/24", "memory": "0"}, "memory"),
    ({"address": "192.168.10.61/24", "memory": "64M"}, "less than 128M"),
    ({"address": "192.168.10.61/24", "memory": "2T"}, "more than 1T"),
    ({"address": "192.168.10.61/24", "memory": 300_000_001}, "not a whole number of MiB"),
    ({"address": "192.168.10.61/24", "cores": 0}, "cores: must be at least 1"),
    ({"address": "192.168.10.61/24", "cores": 100_000}, "cores: must be at most 8192"),
    ({"address": "192.168.10.61/24", "vmid": 99}, "vmid: must be at least 100"),
    ({"address": "192.168.10.61/24", "vmid": "2100"}, "vmid: must be an integer"),
    ({"address": "192.168.10.61/24", "hostname": "x"}, "hostname: unknown key"),
])
def test_bad_lxc_values_are_refused(data: dict[str, Any], said: str) -> None:
    assert said in problems(parse_lxc, data)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["vmid", "address", "gateway", "cores", "memory", "autostart", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40),
                                 st.lists(st.integers(), max_size=3))))
def test_no_lxc_table_makes_the_parser_raise_anything_else(data: dict[str, Any]) -> None:
    with contextlib.suppress(FieldError):
        parse_lxc({key: value for key, value in data.items() if value is not None})


VMLIST = {"version": 12, "ids": {"100": {"node": "pve1", "type": "lxc", "version": 3},
                                 "9000": {"node": "pve2", "type": "qemu", "version": 9}}}


def test_the_vmlist_is_read_as_pmxcfs_writes_it(tmp_path: Path) -> None:
    path = tmp_path / ".vmlist"
    path.write_text(json.dumps(VMLIST))
    assert read_vmlist(path) == {100: Guest(100, "pve1", "lxc"), 9000: Guest(9000, "pve2", "qemu")}
    assert read_vmlist(tmp_path / "absent") == {}


def test_a_cluster_without_guests_has_no_ids_in_its_vmlist() -> None:
    # pmxcfs (status.c, cfs_create_vmlist_msg) writes only the version then.
    assert parse_vmlist('{\n"version": 3\n\n}\n') == {}


@pytest.mark.parametrize("text", [
    "", "[]", "{}", '{"version": true}', '{"version": 1, "ids": []}', '{"ids": {}}',
    '{"version": 1, "ids": {"abc": {"node": "a", "type": "lxc"}}}',
    '{"version": 1, "ids": {"100": {"node": 5, "type": "lxc"}}}',
    '{"version": 1, "ids": {"100": {"node": "a", "type": "openvz"}}}',
    '{"version": 1, "ids": {"1234567890": {"node": "a", "type": "lxc"}}}',
])
def test_a_vmlist_that_is_not_pmxcfs_output_is_an_error(text: str) -> None:
    with pytest.raises(VmlistError):
        parse_vmlist(text)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                  max_size=4), max_leaves=20))
def test_no_json_makes_the_vmlist_parser_raise_anything_else(value: object) -> None:
    with contextlib.suppress(VmlistError):
        parse_vmlist(json.dumps({"version": 1, "ids": value}))


def test_a_huge_vmlist_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / ".vmlist"
    with path.open("wb") as handle:
        handle.truncate(17 << 20)
    with pytest.raises(VmlistError, match="larger than"):
        read_vmlist(path)


def test_allocation_takes_the_lowest_free_id_and_knows_when_none_is_left() -> None:
    assert allocate(9000, 9003, in_use={9000}, reserved={9001}) == 9002
    assert allocate(9000, 9001, in_use={9000}, reserved={9001}) is None
