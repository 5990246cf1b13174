"""The `[ha]` and `[vip]` tables, and the pure planning of virtual IPs: which addresses a
node should hold, and whether an interface can take one."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smbgw_plugins.ha.claim import Announcer
from smbgw_plugins.ha.drain import DrainTimeout, DrainWait
from smbgw_plugins.ha.table import VipSettings, parse_agent_table, parse_share_table
from smbgw_plugins.ha.vips import Vip, declared, foreign_problem, interface_problem, subnet_problem

from smbgw_agent.effects.deadline import Deadline
from smbgw_agent.effects.netlink import IFA_F_SECONDARY, IFF_UP, Address, Link
from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.jobs import JobProgress, JobRecord


def problems(data: dict[str, Any], clustered: bool = False) -> str:
    with pytest.raises(FieldError) as caught:
        parse_share_table(data, clustered)
    return str(caught.value)


def test_a_vip_with_its_interface() -> None:
    assert parse_share_table({"vip": "192.0.2.50/24", "interface": "vmbr0"}, False) == \
        {"vip": "192.0.2.50/24", "interface": "vmbr0", "proxmox_ha": False}
    assert parse_share_table({"vip": "2001:db8::50/64", "interface": "vmbr0"}, False)["vip"] == "2001:db8::50/64"


def test_the_interface_is_required_without_ctdb_and_defaults_with_it() -> None:
    assert "interface" in problems({"vip": "192.0.2.50/24"})
    assert parse_share_table({"vip": "192.0.2.50/24"}, True)["interface"] is None


def test_a_guest_share_may_have_the_proxmox_ha_switch_alone_and_a_native_share_needs_a_vip() -> None:
    from smbgw_plugins.ha import VipPlugin

    from smbgw_agent.model.config import AgentConfig
    for on in (True, False):
        assert parse_share_table({"proxmox_ha": on}, False) == {"vip": None, "interface": None, "proxmox_ha": on}
    assert "vip: required key is missing" in problems({})
    config = AgentConfig(node="n1")

    def said(mode: str, table: dict[str, Any]) -> list[str]:
        spec = ShareSpec(name="s", file="s.toml", path="/srv/s", mode=mode, sections={"ha": table})
        return list(VipPlugin().smbgw_validate_share(spec, config))

    assert said("lxc", {"vip": None, "interface": None, "proxmox_ha": True}) == []
    assert "needs vip" in said("native", {"vip": None, "interface": None, "proxmox_ha": False})[0]
    assert "guest's own address" in said("lxc", {"vip": "192.0.2.50/24", "interface": "vmbr0",
                                                 "proxmox_ha": False})[0]


@pytest.mark.parametrize("vip, said", [
    ("192.0.2.0/24", "network address"),
    ("192.0.2.255/24", "broadcast address"),
    ("2001:db8::/64", "network address"),
    ("127.0.0.5/8", "loopback"),
    ("224.0.0.5/4", "multicast"),
    ("169.254.1.1/16", "link-local"),
    ("fe80::1/64", "link-local"),
    ("0.0.0.0/8", "unspecified"),
    ("192.0.2.50", "prefix length"),
    ("192.0.2.500/24", "not an IP"),
    ("vmbr0", "not an IP"),
    ("192.0.2.50/24\n[global]", "control characters"),
])
def test_addresses_no_client_can_use_are_refused(vip: str, said: str) -> None:
    assert said in problems({"vip": vip, "interface": "vmbr0"})


@pytest.mark.parametrize("vip", ["192.0.2.0/31", "192.0.2.1/31", "192.0.2.7/32", "2001:db8::/127"])
def test_point_to_point_prefixes_have_no_network_or_broadcast_address(vip: str) -> None:
    assert parse_share_table({"vip": vip, "interface": "eth0"}, False)["vip"] == vip


@pytest.mark.parametrize("name", ["", "a" * 16, "eth0:1", "a/b", "a b", ".", "..", "eth\x00", 7, ["eth0"]])
def test_interface_names_the_kernel_would_refuse(name: object) -> None:
    assert "interface" in problems({"vip": "192.0.2.50/24", "interface": name})


def test_every_problem_of_the_table_is_reported() -> None:
    said = problems({"vip": "192.0.2.0/24", "interface": "a/b", "proxmox_ha": "yes", "vrrp": 1})
    for part in ("network address", "interface", "proxmox_ha", "unknown key"):
        assert part in said, said


@given(st.dictionaries(st.sampled_from(["vip", "interface", "proxmox_ha", "x"]),
                       st.one_of(st.text(max_size=80), st.integers(), st.booleans(), st.none(),
                                 st.lists(st.text(max_size=5), max_size=3))))
def test_any_table_is_parsed_or_refused_with_a_field_error(data: dict[str, Any]) -> None:
    with contextlib.suppress(FieldError):  # anything else (TypeError, KeyError) fails the test
        parse_share_table(data, False)


def test_agent_table_defaults_and_bounds() -> None:
    assert VipSettings.from_config({"vip": parse_agent_table({})}) == VipSettings()
    tuned = parse_agent_table({"probe_window": "0", "announce_repeat": "10s", "health_interval": "1s"})
    assert VipSettings.from_config({"vip": tuned}).probe_window == 0.0
    with pytest.raises(FieldError) as caught:
        parse_agent_table({"probes": 0, "health_interval": "10ms", "probe_window": "1h", "x": 1})
    for part in ("probes", "health_interval", "probe_window", "unknown key"):
        assert part in str(caught.value)


# ---- which addresses ------------------------------------------------------------------


def share(name: str, vip: str | None, interface: str = "eth0", mode: str = "native") -> ShareSpec:
    sections = {"ha": {"vip": vip, "interface": interface, "proxmox_ha": False}} if vip else {}
    return ShareSpec(name=name, file=f"{name}.toml", path=f"/srv/{name}", mode=mode, sections=sections)


def test_one_address_serves_several_shares() -> None:
    found = declared({s.key: s for s in [share("b", "192.0.2.50/24"), share("a", "192.0.2.50/24"),
                                         share("c", "192.0.2.51/24"), share("d", None)]})
    assert found.vips["192.0.2.50"] == Vip("192.0.2.50", 24, "eth0", ("a", "b"))
    assert found.vips["192.0.2.51"].shares == ("c",)
    assert found.disagreements == {}


def test_shares_that_disagree_about_an_address_both_report_it_and_neither_wins() -> None:
    found = declared({s.key: s for s in [share("a", "192.0.2.50/24", "eth0"), share("b", "192.0.2.50/24", "eth1"),
                                         share("c", "192.0.2.50/25", "eth0")]})
    assert "192.0.2.50" not in found.vips
    assert set(found.disagreements) == {"a", "b", "c"}
    assert "eth1" in found.disagreements["a"] and "/25" in found.disagreements["a"]


def test_guests_carry_their_own_address() -> None:
    assert declared({"g": share("g", "192.0.2.50/24", mode="lxc")}).vips == {}


def test_ipv6_addresses_are_written_one_way() -> None:
    found = declared({"a": share("a", "2001:db8:0::0050/64")})
    assert list(found.vips) == ["2001:db8::50"]


# ---- can this interface take it --------------------------------------------------------


def link(name: str = "eth0", *addresses: Address, up: bool = True) -> Link:
    return Link(3, name, IFF_UP if up else 0, bytes.fromhex("020000000001"), tuple(addresses))


VIP = Vip("192.0.2.50", 24, "eth0", ("a",))


def test_interface_missing_down_or_in_another_subnet() -> None:
    assert "does not exist" in str(interface_problem(VIP, None))
    assert "is down" in str(interface_problem(VIP, link(up=False)))
    assert "outside the subnets of eth0 (198.51.100.0/24)" in str(
        interface_problem(VIP, link("eth0", Address("198.51.100.1", 24))))
    assert "prefix /24 but eth0's subnet is 192.0.2.0/25" in str(
        subnet_problem(VIP, link("eth0", Address("192.0.2.1", 25))))
    assert interface_problem(VIP, link("eth0", Address("192.0.2.1", 24), Address("fe80::1", 64))) is None
    assert subnet_problem(VIP, link("eth0")) is None  # nothing to compare with


def test_an_address_the_agent_did_not_add_is_left_alone() -> None:
    own = [link("eth0", Address("192.0.2.50", 24))]
    assert "this node's own address on eth0" in str(foreign_problem(VIP, own, owned=False))
    secondary = [link("eth0", Address("192.0.2.1", 24), Address("192.0.2.50", 24, IFA_F_SECONDARY))]
    said = str(foreign_problem(VIP, secondary, owned=False))
    assert "not added by smbgw" in said and "ip addr del 192.0.2.50/24 dev eth0" in said
    elsewhere = [link("eth0"), link("eth1", Address("192.0.2.50", 24, IFA_F_SECONDARY))]
    assert "eth1" in str(foreign_problem(VIP, elsewhere, owned=False))
    assert foreign_problem(VIP, secondary, owned=True) is None
    assert foreign_problem(VIP, [link("eth0", Address("192.0.2.1", 24))], owned=False) is None


# ---- drain ----------------------------------------------------------------------------


def progress(lines: list[str]) -> JobProgress:
    record = JobRecord("vip:drain", "vip", "")

    class Recording(JobProgress):
        def report(self, message: str) -> None:
            lines.append(message)

    return Recording(record, Deadline(3600.0))


def test_drain_waits_until_nothing_is_held_and_nobody_connected() -> None:
    held = [["192.0.2.50 on eth0"], [], []]
    connected = [["alice from 192.0.2.7"], ["alice from 192.0.2.7"], []]
    now = [0.0]
    wait = DrainWait(lambda: held.pop(0), lambda: connected.pop(0), timeout=60,
                     clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    lines: list[str] = []
    result = wait(progress(lines))
    assert result["held"] == [] and "drained after 2s" in result["text"]
    assert lines == ["waiting: 1 address(es) still held (192.0.2.50 on eth0), 1 SMB session(s) "
                     "(alice from 192.0.2.7) [0s of 60s]",
                     "waiting: 1 SMB session(s) (alice from 192.0.2.7) [1s of 60s]"]


def test_a_drain_that_runs_out_of_time_names_who_is_still_connected() -> None:
    now = [0.0]
    clients = [f"user{i} from 192.0.2.{i}" for i in range(12)]
    wait = DrainWait(lambda: [], lambda: clients, timeout=3,
                     clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    with pytest.raises(DrainTimeout) as caught:
        wait(progress([]))
    assert "user0 from 192.0.2.0" in str(caught.value) and "and 2 more" in str(caught.value)


# ---- announcements ----------------------------------------------------------------------


def test_a_claim_announces_at_once_then_a_burst_and_a_repeat_unless_released() -> None:
    sent: list[tuple[str, str]] = []
    done = threading.Event()

    def send(interface: str, address: str, mac: bytes) -> None:
        sent.append((interface, address))
        if len(sent) == 6:
            done.set()

    announcer = Announcer(VipSettings(announce_count=3, announce_repeat=0.3), send)
    announcer.start()
    try:
        announcer.claimed("192.0.2.50", "eth0", b"\x02" * 6)
        assert sent == [("eth0", "192.0.2.50")]  # the first before the claim returns
        assert done.wait(10)
        announcer.claimed("192.0.2.51", "eth0", b"\x02" * 6)
        announcer.cancel("192.0.2.51")
        time.sleep(0.6)
        assert sent.count(("eth0", "192.0.2.51")) == 1
        assert sent.count(("eth0", "192.0.2.50")) == 6
    finally:
        announcer.stop()


def test_observing_with_no_address_opens_no_netlink_socket(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node with no virtual IP never talks netlink: pyroute2's import alone was 9 MiB of
    the agent's 64 MiB at 2,000 shares (every plugin enabled), and a netlink socket
    each pass is work for nothing. With an address declared, the links are read."""
    from smbgw_plugins import ha
    from smbgw_plugins.ha.vips import PREFIX

    from smbgw_agent.effects import netlink
    from smbgw_agent.model.config import AgentConfig
    from smbgw_agent.model.paths import Paths
    from smbgw_agent.platform.changes import NodeResource
    from smbgw_agent.platform.context import PassContext

    calls: list[str] = []

    def links() -> list[Link]:
        calls.append("links")
        return []

    monkeypatch.setattr(netlink, "links", links)
    paths = Paths.under(tmp_path)
    ctx: Any = PassContext(paths=paths, config=AgentConfig(node="n1"), runner=None, services=None,  # type: ignore[arg-type]
                           desired={}, applied={}, dry_run=True)
    view = ha.VipPlugin().smbgw_observe(ctx)
    assert calls == [] and view["addresses"] == {}
    vip = Vip("192.0.2.10", 24, "eth0", ("a",))
    resource = NodeResource(vip.resource_id, {"address": "192.0.2.10", "prefixlen": 24, "interface": "eth0",
                                              "shares": ["a"]}, plugin="vip")
    assert vip.resource_id.startswith(PREFIX)
    ctx = PassContext(paths=paths, config=AgentConfig(node="n1"), runner=None, services=None,  # type: ignore[arg-type]
                      desired={}, applied={}, dry_run=True, resources={vip.resource_id: resource})
    view = ha.VipPlugin().smbgw_observe(ctx)
    assert calls == ["links"] and view["addresses"]["192.0.2.10"]["present"] is False


def test_the_netlink_module_imports_pyroute2_only_when_a_socket_is_opened() -> None:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    probe = ("import sys\nfrom smbgw_agent.platform.pluginhost import map_source_tree_plugins\n"
             "map_source_tree_plugins()\nimport smbgw_agent.effects.netlink, smbgw_plugins.ha\n"
             "print('pyroute2' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                          cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.stdout.strip() == "False"
