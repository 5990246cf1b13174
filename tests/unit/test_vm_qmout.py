"""`qm` output as qemu-server prints it (plugins/mode_vm/qmout.py): the formats rebuilt
from its printf/JSON calls, and hostile or foreign output refused."""

from __future__ import annotations

import json

import pytest
from smbgw_plugins.mode_vm.qmout import QmOutputError, leased, parse_exec, parse_interfaces, parse_list, parse_status


def list_row(vmid: object, name: str, status: str, mem: float, disk: float, pid: object) -> str:
    return "%10s %-20s %-10s %-10s %12.2f %-10s\n" % (vmid, name, status, mem, disk, pid)  # noqa: UP031 - qm's own printf


HEADER = "%10s %-20s %-10s %-10s %12s %-10s\n" % ("VMID", "NAME", "STATUS", "MEM(MB)", "BOOTDISK(GB)", "PID")  # noqa: UP031


def test_status_is_one_word() -> None:
    assert parse_status("status: running\n") == "running"
    assert parse_status("status: stopped\n") == "stopped"
    for bad in ("", "running\n", "status: running\nstatus: stopped\n", "status: run ning\n",
                "status: " + "x" * 40 + "\n", "status: Running\n"):
        with pytest.raises(QmOutputError):
            parse_status(bad)


def test_the_list_as_qm_prints_it() -> None:
    assert parse_list("") == {}
    text = HEADER + list_row(9001, "smbgw-finance", "running", 2048, 8.0, 4242) + \
        list_row(100, "db", "stopped", 4096, 32.5, 0)
    listed = parse_list(text)
    assert listed[9001].name == "smbgw-finance" and listed[9001].status == "running" and listed[9001].pid == 4242
    assert listed[100].status == "stopped"


@pytest.mark.parametrize("text", [
    "VMID NAME STATUS\n",
    HEADER + "abc smbgw running 1 2 3\n",
    HEADER + list_row(9001, "a", "running", 1, 1, 1) * 2,
    HEADER + "9001 two words running 1 1.00 1\n",
    HEADER + "9001 n\u00e9 running 1 1.00 1\n",
])
def test_a_list_that_is_not_qms_is_refused(text: str) -> None:
    with pytest.raises(QmOutputError):
        parse_list(text)


def test_exec_results_finished_timed_out_and_foreign() -> None:
    done = json.dumps({"exitcode": 0, "exited": 1, "out-data": "Join is OK\n"}, indent=3, sort_keys=True)
    result = parse_exec(done)
    assert result.ok and result.out == "Join is OK\n" and result.err == "" and not result.truncated
    failed = parse_exec(json.dumps({"exitcode": 255, "exited": 1, "err-data": "no\n", "err-truncated": 1}))
    assert not failed.ok and failed.err == "no\n" and failed.truncated
    with pytest.raises(QmOutputError, match="did not finish in time"):
        parse_exec(json.dumps({"pid": 1234}))
    for bad in ("", "[]", "{", json.dumps({"exited": 0, "pid": 1}), json.dumps({"exited": 1, "exitcode": "0"}),
                json.dumps({"exited": 1, "exitcode": True}), json.dumps({"exited": 1, "exitcode": 0, "out-data": 5}),
                "x" * (2 << 20)):
        with pytest.raises(QmOutputError):
            parse_exec(bad)


# `qm guest cmd VMID network-get-interfaces` for a Debian guest with a lease on eth0: the
# guest agent's GuestNetworkInterface list, as qm prints it (pretty JSON, canonical order).
INTERFACES = [
    {"hardware-address": "00:00:00:00:00:00", "name": "lo",
     "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
                      {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128}]},
    {"hardware-address": "bc:24:11:42:c8:c7", "name": "eth0",
     "ip-addresses": [{"ip-address": "fe80::be24:11ff:fe42:c8c7", "ip-address-type": "ipv6", "prefix": 64},
                      {"ip-address": "169.254.7.7", "ip-address-type": "ipv4", "prefix": 16},
                      {"ip-address": "10.0.0.105", "ip-address-type": "ipv4", "prefix": 24}],
     "statistics": {"rx-bytes": 1, "rx-dropped": 0, "rx-errs": 0, "rx-packets": 1, "tx-bytes": 1,
                    "tx-dropped": 0, "tx-errs": 0, "tx-packets": 1}},
    {"name": "tunl0"},
]


def test_the_lease_is_read_on_net0s_mac_only() -> None:
    found = parse_interfaces(json.dumps(INTERFACES, indent=3, sort_keys=True))
    assert set(found) == {"bc:24:11:42:c8:c7"}, "lo (no real MAC) and an interface without one are left out"
    assert leased(found, "BC:24:11:42:C8:C7") == "10.0.0.105/24", "neither link-local nor IPv6"
    assert leased(found, "bc:24:11:00:00:01") is None, "another NIC's lease is not the VM's address"
    waiting = [{"hardware-address": "bc:24:11:42:c8:c7", "name": "eth0",
                "ip-addresses": [{"ip-address": "fe80::1", "ip-address-type": "ipv6", "prefix": 64}]}]
    assert leased(parse_interfaces(json.dumps(waiting)), "bc:24:11:42:c8:c7") is None, "no lease yet"


@pytest.mark.parametrize("text", [
    "", "[", "{}", '"eth0"', json.dumps([{"hardware-address": "bc:24:11:42:c8:c7"}]),
    json.dumps([{"name": "eth0", "ip-addresses": {}}]),
    json.dumps([{"name": "eth0", "ip-addresses": [{"ip-address": "10.0.0.1", "ip-address-type": "ipv4"}]}]),
    json.dumps([{"name": "eth0", "ip-addresses": [{"ip-address": "10.0.0.1", "ip-address-type": "ipv6",
                                                   "prefix": 24}]}]),
    json.dumps([{"name": "eth0", "ip-addresses": [{"ip-address": "10.0.0.1; rm -rf /", "ip-address-type": "ipv4",
                                                   "prefix": 24}]}]),
    json.dumps([{"name": "eth0", "ip-addresses": [{"ip-address": "10.0.0.1", "ip-address-type": "ipv4",
                                                   "prefix": True}]}]),
    json.dumps([{"name": "eth0", "ip-addresses": [{"ip-address": "10.0.0.1", "ip-address-type": "ipv4",
                                                   "prefix": 99}]}]),
    json.dumps([{"name": f"eth{n}"} for n in range(2000)]),
    "x" * (2 << 20),
])
def test_interfaces_that_are_not_a_guest_agents_answer_are_refused(text: str) -> None:
    with pytest.raises(QmOutputError):
        parse_interfaces(text)
