"""The share's container as Proxmox options (plugins/mode_lxc/guest.py): what `pct create`
is told, and how a live config differs, each difference marked live or at the next start."""

from __future__ import annotations

from smbgw_plugins.mode_lxc import guest
from smbgw_plugins.mode_lxc.idmap import IdRange, build
from smbgw_plugins.mode_lxc.table import MIB, LxcSpec
from smbgw_plugins.proxmox import identity
from smbgw_plugins.proxmox.guestconf import parse_guest_config

SPEC = LxcSpec("192.168.10.61/24", 2100, "192.168.10.1", 1, 512 * MIB, True)
IDMAP = build("u", 100000, [IdRange(1000, 1000)]) + build("g", 100000, [IdRange(1000, 1000)])
WANTED = guest.wanted_options("Finance Team", "/etc/smbgw/shares.d/finance.toml", SPEC, "vmbr0", "/tank/finance")


def live_config(**changes: str) -> str:
    options = {**WANTED, "net0": WANTED["net0"] + ",hwaddr=02:AA:BB:CC:DD:EE,type=veth", "arch": "amd64",
               "rootfs": "local-lvm:vm-2100-disk-0,size=4G", "swap": "512", **changes}
    text = "#" + options.pop("description").replace(":", "%3A") + "\n"
    text += "".join(f"{key}: {value}\n" for key, value in sorted(options.items()))
    return text + "".join(f"{line}\n" for line in guest.idmap_config_lines(IDMAP))


def test_the_names_are_dns_labels_and_tags() -> None:
    assert WANTED["hostname"] == "smbgw-finance-team"
    assert WANTED["tags"] == "share-finance-team;smbgw", "sorted, as Proxmox keeps tags"
    assert identity.label("ÄÖ!!") == "share" and len(identity.label("x" * 200)) == 50
    assert guest.mac_address(2100) == guest.mac_address(2100) != guest.mac_address(2101)
    assert guest.mac_address(2100).startswith("02:")


def test_create_is_told_everything_and_does_not_start() -> None:
    argv = guest.create_arguments(2100, "local:vztmpl/smbgw.tar.zst", "local-lvm", WANTED)
    assert argv[:7] == ["create", "2100", "local:vztmpl/smbgw.tar.zst", "--rootfs", "local-lvm:4", "--start", "0"]
    net = argv[argv.index("--net0") + 1]
    assert net == f"name=eth0,bridge=vmbr0,ip=192.168.10.61/24,gw=192.168.10.1,hwaddr={guest.mac_address(2100)}," \
                  "type=veth"
    assert argv[argv.index("--mp0") + 1] == "/tank/finance,mp=/srv/share"
    assert argv[argv.index("--unprivileged") + 1] == "1"


def test_a_container_as_created_has_no_differences() -> None:
    assert guest.differences(parse_guest_config(live_config()), WANTED, IDMAP) == []
    assert guest.differences(parse_guest_config(live_config(tags="SMBGW;share-finance-team")), WANTED, IDMAP) == []


def test_memory_applies_live_and_the_network_at_a_restart() -> None:
    config = parse_guest_config(live_config(memory="256"))
    (memory,) = guest.differences(config, WANTED, IDMAP)
    assert (memory.key, memory.live, memory.wanted, memory.at_start) == ("memory", "256", "512", False)
    moved = guest.wanted_options("Finance Team", "/etc/smbgw/shares.d/finance.toml",
                                 LxcSpec("192.168.10.62/24", 2100, "192.168.10.1"), "vmbr0", "/tank/finance")
    (net,) = guest.differences(parse_guest_config(live_config()), moved, IDMAP)
    assert net.at_start and "ip=192.168.10.62/24" in (net.wanted or "")
    assert "hwaddr=02:AA:BB:CC:DD:EE" in (net.wanted or ""), "the MAC Proxmox keeps survives the change"
    assert guest.set_arguments(2100, [net]) == ["set", "2100", "--net0", net.wanted]


def test_a_changed_id_map_or_a_hand_edit_is_found() -> None:
    other = build("u", 100000, []) + build("g", 100000, [])
    (idmap,) = guest.differences(parse_guest_config(live_config()), WANTED, other)
    assert idmap.key == "lxc.idmap" and idmap.at_start
    (description,) = guest.differences(parse_guest_config(live_config(description="my notes")), WANTED, IDMAP)
    assert description.key == "description" and not description.at_start
