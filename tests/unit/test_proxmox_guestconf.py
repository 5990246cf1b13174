"""Reading a Proxmox guest config file (plugins/proxmox/guestconf.py) as pve-container
writes it: the description's encoding, repeated raw lxc.* lines, snapshots left out,
property strings; broken and huge files are errors, never a wrong reading."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smbgw_plugins.proxmox.guestconf import (
    GuestConfigError,
    parse_guest_config,
    parse_property_string,
    property_string,
    read_guest_config,
)

# As pve-container 5 writes a container's config: description lines first, encoded by
# pve-common's encode_text (':' and non-ASCII percent-encoded), then the keys sorted,
# raw lxc.* lines last, then snapshot sections.
CONFIG = """#smbgw-agent share finance%3A /etc/smbgw/shares.d/finance.toml
#Gr%C3%BC%C3%9Fe
arch: amd64
cores: 1
hostname: smbgw-finance
memory: 512
mp0: /tank/finance,mp=/srv/share
net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:5E:00:01,ip=192.168.10.61/24,gw=192.168.10.1,type=veth
onboot: 1
ostype: debian
rootfs: local-lvm:vm-2100-disk-0,size=4G
swap: 512
tags: smbgw;finance
unprivileged: 1
lxc.idmap: u 0 100000 1000
lxc.idmap: u 1000 1000 1
lxc.idmap: u 1001 101001 64535

[before-upgrade]
cores: 4
snaptime: 1700000000
"""


def test_a_container_config_reads_as_proxmox_wrote_it() -> None:
    config = parse_guest_config(CONFIG)
    assert config.description == "smbgw-agent share finance: /etc/smbgw/shares.d/finance.toml\nGrüße"
    assert config.get("cores") == "1", "the snapshot's cores = 4 is not the current config"
    assert config.tags == ["smbgw", "finance"]
    assert config.raw_values("lxc.idmap") == ["u 0 100000 1000", "u 1000 1000 1", "u 1001 101001 64535"]
    assert "snaptime" not in config.options


def test_property_strings_round_trip() -> None:
    net = parse_property_string(parse_guest_config(CONFIG).options["net0"])
    assert net["ip"] == "192.168.10.61/24" and net["bridge"] == "vmbr0"
    mount = parse_property_string("/tank/finance,mp=/srv/share", "volume")
    assert mount == {"volume": "/tank/finance", "mp": "/srv/share"}
    assert property_string(mount, "volume") == "/tank/finance,mp=/srv/share"


@pytest.mark.parametrize("text", ["cores 1\n", ": 1\n", "co res: 1\n", "cores: 1\ncores: 2\n"])
def test_a_broken_config_is_an_error(text: str) -> None:
    with pytest.raises(GuestConfigError):
        parse_guest_config(text)


@pytest.mark.parametrize("text", ["a=1,a=2", "a=1,bare"])
def test_a_broken_property_string_is_an_error(text: str) -> None:
    with pytest.raises(GuestConfigError):
        parse_property_string(text, "volume")


def test_files_absent_huge_or_unreadable(tmp_path: Path) -> None:
    assert read_guest_config(tmp_path / "2100.conf") is None
    huge = tmp_path / "huge.conf"
    with huge.open("wb") as handle:
        handle.truncate(2 << 20)
    with pytest.raises(GuestConfigError, match="larger than"):
        read_guest_config(huge)
    with pytest.raises(GuestConfigError, match="cannot read"):
        read_guest_config(tmp_path)  # a directory


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_no_text_makes_the_reader_raise_anything_else(text: str) -> None:
    with contextlib.suppress(GuestConfigError):
        parse_guest_config(text)
