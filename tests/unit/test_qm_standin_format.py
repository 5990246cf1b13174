"""The qm/pvesh TEST STAND-IN's formats (tests/support/qm_standin), checked against what
qemu-server 8.4.10 and pve-manager 8.4 print, and against the plugin's own parser
(plugins/mode_vm/qmout.py), so the two can never drift apart."""

from __future__ import annotations

import pytest

from plugins.mode_vm import qmout
from tests.support.pct_standin.pct import PctError
from tests.support.qm_standin import formats, pvesh, qm


def test_net_is_printed_model_equals_mac_first_then_sorted() -> None:
    value = formats.canonical_net(9001, "net0", "virtio,bridge=vmbr0,firewall=1")
    assert value.startswith("virtio=BC:24:11:") and value.endswith(",bridge=vmbr0,firewall=1")
    assert formats.canonical_net(9001, "net0", "virtio,bridge=vmbr0") == \
        formats.canonical_net(9001, "net0", "virtio,bridge=vmbr0")  # derived from the VMID, not random
    assert formats.canonical_net(9001, "net0", "model=e1000,macaddr=bc:24:11:aa:bb:cc") == "e1000=BC:24:11:AA:BB:CC"
    with pytest.raises(PctError):
        formats.parse_net("bridge=vmbr0")


def test_ipconfig_and_agent_and_virtiofs_and_cicustom_formats() -> None:
    assert formats.parse_ipconfig("ip=10.0.0.5/24,gw=10.0.0.1") == {"ip": "10.0.0.5/24", "gw": "10.0.0.1"}
    assert formats.parse_ipconfig("ip=dhcp") == {"ip": "dhcp"}
    for bad in ("ip=10.0.0.5", "gw=10.0.0.1", "ip=dhcp,foo=1"):
        with pytest.raises(PctError):
            formats.parse_ipconfig(bad)
    assert formats.agent_enabled("1") and formats.agent_enabled("enabled=1,type=virtio")
    assert not formats.agent_enabled("0") and not formats.agent_enabled(None)
    assert formats.parse_virtiofs("share1,cache=always") == {"dirid": "share1", "cache": "always"}
    with pytest.raises(PctError):
        formats.parse_virtiofs("share1,cache=sometimes")
    assert formats.parse_cicustom("user=local:snippets/a.yaml") == {"user": "local:snippets/a.yaml"}
    with pytest.raises(PctError):
        formats.parse_cicustom("user=a.yaml")


def test_nocloud_network_config_is_cloudinit_pm_s() -> None:
    config = {"net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0", "ipconfig0": "ip=10.98.1.50/24,gw=10.98.1.1",
              "nameserver": "10.98.1.1", "searchdomain": "smbgw.test", "net1": "virtio=BC:24:11:AA:BB:CD"}
    assert formats.nocloud_network(config, "host.example", ["192.0.2.53"]) == (
        "version: 1\nconfig:\n"
        "    - type: physical\n      name: eth0\n      mac_address: 'bc:24:11:aa:bb:cc'\n      subnets:\n"
        "      - type: static\n        address: '10.98.1.50'\n        netmask: '255.255.255.0'\n"
        "        gateway: '10.98.1.1'\n"
        "    - type: nameserver\n      address:\n      - '10.98.1.1'\n      search:\n      - 'smbgw.test'\n")
    # without nameserver/searchdomain in the config: the host's resolver
    assert "      - '192.0.2.53'\n      search:\n      - 'host.example'\n" in formats.nocloud_network(
        {"net0": "virtio=BC:24:11:AA:BB:CC", "ipconfig0": "ip=dhcp"}, "host.example", ["192.0.2.53"])
    assert formats.nocloud_metadata("u", "n").startswith("instance-id: ") and "hostname" not in \
        formats.nocloud_metadata("u", "n")


def test_qm_list_is_read_back_by_the_plugin() -> None:
    text = formats.render_qm_list([(9001, "smbgw-vm1", "running", 1024, 3.0, 4242), (8000, "tmpl", "stopped", 512,
                                                                                          3.0, 0)])
    assert text.splitlines()[0] == "      VMID NAME                 STATUS     MEM(MB)    BOOTDISK(GB) PID       "
    assert text.splitlines()[1] == "      8000 tmpl                 stopped    512                3.00 0         "
    rows = qmout.parse_list(text)
    assert rows[9001].pid == 4242 and rows[8000].status == "stopped"
    assert formats.render_qm_list([]) == ""


def test_exec_status_output_is_perl_pretty_json_the_plugin_reads() -> None:
    status = qm._exec_status({"exited": True, "exitcode": 0, "out-data": "aGVsbG8K", "out-truncated": False})
    text = formats.perl_pretty_json(status)
    assert text == '{\n   "exitcode" : 0,\n   "exited" : 1,\n   "out-data" : "hello\\n",\n   "out-truncated" : 0\n}\n'
    assert qmout.parse_exec(text) == qmout.ExecResult(0, "hello\n", "")
    # bytes, as Perl's JSON (utf8) prints a byte string: non-ASCII comes out encoded twice
    assert qm._exec_status({"exited": True, "exitcode": 0, "out-data": "w6kK"})["out-data"] == "Ã©\n"


def test_directory_mapping_section_config_round_trips() -> None:
    text = "share1\n\tdescription a share\n\tmap node=pve-test,path=/srv/a\n\tmap node=pve2,path=/srv/b\n\n"
    parsed = formats.parse_dir_mappings(text)
    assert parsed == {"share1": {"description": "a share", "map": ["node=pve-test,path=/srv/a",
                                                                   "node=pve2,path=/srv/b"]}}
    assert formats.render_dir_mappings(parsed) == text
    assert formats.node_mapping(parsed["share1"], "pve2") == [{"node": "pve2", "path": "/srv/b"}]


def test_an_older_node_has_no_virtiofs_option(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMBGW_PVE_VERSION", "8.3.5")
    from pathlib import Path
    version, text, _ = pvesh.node_version(Path(str(tmp_path)))
    assert version == (8, 3, 5) and text == "8.3.5"
    assert "virtiofs0" not in qm.cli_for(version).commands["set"].options
    assert "virtiofs0" in qm.cli_for((8, 4, 1)).commands["set"].options
