"""Virtual IPs without CTDB, on a real link: the agent runs in network namespace A, joined
by a veth pair to B, a Linux host on the same subnet.

What B sees on the wire (gratuitous ARP, unsolicited neighbour advertisements) is read by
a raw socket there with its own few lines of parsing, not with the code under test; what
A holds is read with `ip`; conflicts are real (B's kernel answers the probe), and so are
netlink's own events (`ip monitor address` shows whether a restart removed anything).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess, wait_for
from tests.support.netns import VethPair, ip, run_python
from tests.support.viplan import (
    NET4,
    NET6,
    Wire,
    address_view,
    held,
    lan_pair,
    metrics,
    resource,
    restart,
    share,
    start_agent,
)

pytestmark = pytest.mark.integration

@pytest.fixture
def lan() -> Iterator[VethPair]:
    with lan_pair() as pair:
        yield pair


@pytest.fixture
def wire(lan: VethPair) -> Iterator[Wire]:
    heard = Wire(lan)
    try:
        yield heard
    finally:
        heard.stop()


@pytest.fixture
def vip_agent(sandbox: Sandbox, lan: VethPair) -> Iterator[AgentProcess]:
    agent = start_agent(sandbox, lan)
    try:
        yield agent
    finally:
        agent.stop()
        print(agent.log_text()[-20000:], json.dumps(agent.status(), indent=1)[:20000])  # shown when it failed


def test_claim_announce_repair_and_release(sandbox: Sandbox, lan: VethPair, wire: Wire,
                                           vip_agent: AgentProcess) -> None:
    vip = f"{NET4}.100"
    share(sandbox, "alpha", f"{vip}/24", lan.a.interface)
    share(sandbox, "beta", f"{vip}/24", lan.a.interface)
    wait_for(lambda: held(lan).get(vip) == 24, timeout=15)
    # a burst at once, and the repeat a second later
    wait_for(lambda: wire.announcements(vip) >= 6, timeout=15)
    view = wait_for(lambda: address_view(vip_agent, vip).get("present") and address_view(vip_agent, vip))
    assert view["owned"] and view["shares"] == ["alpha", "beta"] and view["interface"] == lan.a.interface
    scraped = metrics(lan)
    for name in ("alpha", "beta"):
        assert f'smbgw_vip_present{{interface="{lan.a.interface}",share="{name}",vip="{vip}"}} 1.0' in scraped
    assert f'smbgw_vip_conflict{{vip="{vip}"}} 0.0' in scraped
    assert "smbgw_node_drained 0.0" in scraped

    # removed by hand: back within a few health intervals, announced again
    before = time.time()
    ip("addr", "del", f"{vip}/24", "dev", lan.a.interface, namespace=lan.a.namespace)
    wait_for(lambda: held(lan).get(vip) == 24, timeout=15)
    wait_for(lambda: wire.announcements(vip, since=before) >= 1, timeout=10)

    # one address, two shares: it stays while either is declared
    (sandbox.shares_dir / "alpha.toml").unlink()
    wait_for(lambda: address_view(vip_agent, vip).get("shares") == ["beta"])
    assert vip in held(lan)
    (sandbox.shares_dir / "beta.toml").unlink()
    wait_for(lambda: vip not in held(lan))
    assert f"{NET4}.1" in held(lan), "the node's own address is never touched"


def test_ipv6_address_claimed_with_an_unsolicited_neighbour_advertisement(
        sandbox: Sandbox, lan: VethPair, wire: Wire, vip_agent: AgentProcess) -> None:
    vip = f"{NET6}:100"
    share(sandbox, "gamma", f"{vip}/64", lan.a.interface)
    wait_for(lambda: held(lan).get(vip) == 64, timeout=15)
    wait_for(lambda: wire.announcements(vip) >= 1, timeout=10)
    shown = json.loads(ip("-j", "-6", "addr", "show", "dev", lan.a.interface, namespace=lan.a.namespace))
    flags = next(e for link in shown for e in link["addr_info"] if e["local"] == vip)
    assert not flags.get("tentative") and not flags.get("dadfailed"), flags


def test_a_restarted_agent_keeps_its_addresses_without_a_flap(sandbox: Sandbox, lan: VethPair, wire: Wire) -> None:
    vip = f"{NET4}.110"
    agent = start_agent(sandbox, lan)
    monitor = None
    try:
        share(sandbox, "delta", f"{vip}/24", lan.a.interface)
        wait_for(lambda: held(lan).get(vip) == 24, timeout=15)
        wait_for(lambda: wire.announcements(vip) >= 6, timeout=15)  # the claim's burst and repeat are over
        monitor = subprocess.Popen(["ip", "-n", lan.a.namespace, "monitor", "address"], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        restarted_at = time.time()
        assert agent.stop() == 0
        assert held(lan).get(vip) == 24, "a stopping agent leaves its addresses"
        restart(agent)
        time.sleep(2)  # several health intervals
        assert held(lan).get(vip) == 24
        assert wire.announcements(vip, since=restarted_at) == 0, "a correct address is not announced again"
    finally:
        agent.stop()
        if monitor is not None:
            monitor.send_signal(signal.SIGTERM)
            events, _ = monitor.communicate(timeout=10)
    assert "Deleted" not in events, events


def test_an_address_another_host_answers_for_is_not_claimed(sandbox: Sandbox, lan: VethPair,
                                                            vip_agent: AgentProcess) -> None:
    vip4, vip6 = f"{NET4}.101", f"{NET6}:101"
    ip("addr", "add", f"{vip4}/24", "dev", lan.b.interface, namespace=lan.b.namespace)
    ip("-6", "addr", "add", f"{vip6}/64", "dev", lan.b.interface, "nodad", namespace=lan.b.namespace)
    share(sandbox, "eps", f"{vip4}/24", lan.a.interface)
    share(sandbox, "zeta", f"{vip6}/64", lan.a.interface)
    other = ":".join(f"{b:02x}" for b in lan.b.mac)
    for vip in (vip4, vip6):
        error = wait_for(lambda v=vip: resource(vip_agent, v).get("error"), timeout=15)
        assert "vip conflict" in error and other in error, error
        assert vip not in held(lan)
    assert f'smbgw_vip_conflict{{vip="{vip4}"}} 1.0' in metrics(lan)
    # the other host lets go: the retry (with backoff) claims it
    ip("addr", "del", f"{vip4}/24", "dev", lan.b.interface, namespace=lan.b.namespace)
    wait_for(lambda: held(lan).get(vip4) == 24, timeout=60)
    wait_for(lambda: not resource(vip_agent, vip4).get("error"))
    assert f'smbgw_vip_conflict{{vip="{vip4}"}} 0.0' in metrics(lan)
    assert vip6 not in held(lan)


# Another host starting to use an address: its own gratuitous ARP / unsolicited NA, sent
# from B with B's MAC (the frames are the ones test_ha_probe.py checks against the kernel).
CLAIM_FROM_B = """
import ipaddress, sys
from smbgw_plugins.linkprobe.probe import announce
announce(sys.argv[1], ipaddress.ip_address(sys.argv[2]), bytes.fromhex(sys.argv[3]))
"""


@pytest.mark.parametrize(("vip", "prefix"), [(f"{NET4}.170", 24), (f"{NET6}:170", 64)])
def test_a_host_that_takes_a_held_address_is_answered_then_given_way_to(
        sandbox: Sandbox, lan: VethPair, wire: Wire, vip_agent: AgentProcess, vip: str, prefix: int) -> None:
    share(sandbox, "sigma", f"{vip}/{prefix}", lan.a.interface)
    wait_for(lambda: held(lan).get(vip) == prefix, timeout=15)
    wait_for(lambda: wire.announcements(vip) >= 6, timeout=15)  # the claim's burst and repeat are over
    time.sleep(0.5)  # the pass that recorded the claim has told the defender to watch it

    def claim_from_b() -> float:
        """When B started: A's answer may come before the child has even exited."""
        began = time.time()
        done = run_python(lan.b.namespace, CLAIM_FROM_B, lan.b.interface, vip, lan.b.mac.hex())
        assert done.returncode == 0, done.stderr
        return began

    first = claim_from_b()
    # defended: one announcement from A, and A keeps the address
    wait_for(lambda: wire.announcements(vip, since=first) >= 1, timeout=5)
    assert held(lan).get(vip) == prefix
    # B insists within 10 s: A gives way, says to whom, and does not announce it again
    time.sleep(1.5)  # after the frames of B's first announcement and A's answer
    second = claim_from_b()
    wait_for(lambda: vip not in held(lan), timeout=15)
    other = ":".join(f"{b:02x}" for b in lan.b.mac)
    view = wait_for(lambda: address_view(vip_agent, vip).get("conflict") and address_view(vip_agent, vip))
    assert view["conflict"] == other and "kept using" in view["reason"], view
    assert f'smbgw_vip_conflict{{vip="{vip}"}} 1.0' in metrics(lan)
    assert wire.announcements(vip, since=second) == 0
    # B only announced it, never configured it: after the hold-down a probe finds it free
    wait_for(lambda: held(lan).get(vip) == prefix, timeout=40)
    wait_for(lambda: f'smbgw_vip_conflict{{vip="{vip}"}} 0.0' in metrics(lan), timeout=15)


def test_the_address_follows_the_nodes_ability_to_serve(sandbox: Sandbox, lan: VethPair,
                                                        vip_agent: AgentProcess) -> None:
    vip = f"{NET4}.120"
    share(sandbox, "eta", f"{vip}/24", lan.a.interface)
    wait_for(lambda: vip in held(lan), timeout=15)
    sandbox.stop_smbd()
    wait_for(lambda: vip not in held(lan), timeout=15)
    wait_for(lambda: "smbd is not running" in address_view(vip_agent, vip).get("reason", ""))
    sandbox.start_smbd()
    wait_for(lambda: vip in held(lan), timeout=15)
    # the share directory goes away (a storage failure): released, back when it is
    directory = sandbox.root / "srv/smb/eta"
    directory.rename(directory.with_name("eta.gone"))
    wait_for(lambda: vip not in held(lan), timeout=15)
    directory.with_name("eta.gone").rename(directory)
    wait_for(lambda: vip in held(lan), timeout=15)


def test_addresses_the_agent_did_not_add_are_never_touched(sandbox: Sandbox, lan: VethPair,
                                                           vip_agent: AgentProcess) -> None:
    theirs, own = f"{NET4}.150", f"{NET4}.1"
    ip("addr", "add", f"{theirs}/24", "dev", lan.a.interface, namespace=lan.a.namespace)
    share(sandbox, "theta", f"{theirs}/24", lan.a.interface)
    share(sandbox, "iota", f"{own}/24", lan.a.interface)
    assert "not added by smbgw" in wait_for(lambda: resource(vip_agent, theirs).get("error"), timeout=15)
    assert "own address" in wait_for(lambda: resource(vip_agent, own).get("error"), timeout=15)
    for name in ("theta", "iota"):
        (sandbox.shares_dir / f"{name}.toml").unlink()
    wait_for(lambda: not resource(vip_agent, theirs) and not resource(vip_agent, own))
    assert held(lan).get(theirs) == 24 and held(lan).get(own) == 24


def test_interfaces_that_cannot_take_the_address(sandbox: Sandbox, lan: VethPair, vip_agent: AgentProcess) -> None:
    ns = lan.a.namespace
    ip("link", "add", "spare0", "type", "veth", "peer", "name", "spare1", namespace=ns)  # left down
    cases = {
        f"{NET4}.130": ("kappa", f"{NET4}.130/24", "nosuch0", "does not exist"),
        f"{NET4}.131": ("lambda", f"{NET4}.131/24", "spare0", "is down"),
        f"{NET4}.132": ("mu", f"{NET4}.132/16", lan.a.interface, "but " + lan.a.interface + "'s subnet is"),
        "192.0.2.10": ("nu", "192.0.2.10/24", lan.a.interface, "outside the subnets"),
    }
    for name, vip, interface, _said in cases.values():
        share(sandbox, name, vip, interface)
    for address, (_name, _vip, _interface, said) in cases.items():
        error = wait_for(lambda a=address: resource(vip_agent, a).get("error"), timeout=15)
        assert said in error, error
        assert address not in held(lan)
    # two shares, one address, two interfaces: both report it, neither is claimed
    share(sandbox, "xi", f"{NET4}.133/24", lan.a.interface)
    share(sandbox, "omicron", f"{NET4}.133/24", "spare0")
    for name in ("xi", "omicron"):
        error = wait_for(lambda n=name: ((vip_agent.status() or {}).get("shares", {}).get(n) or {}).get("error"),
                         timeout=15)
        assert "declared differently by several shares" in error, error
    assert f"{NET4}.133" not in held(lan)


def test_drain_releases_the_addresses_and_survives_a_restart(sandbox: Sandbox, lan: VethPair) -> None:
    vip = f"{NET4}.140"
    agent = start_agent(sandbox, lan)
    try:
        share(sandbox, "pi", f"{vip}/24", lan.a.interface)
        wait_for(lambda: vip in held(lan), timeout=15)
        refused = agent.ctl("drain")
        assert refused.returncode != 0 and "--force" in refused.stderr, refused.stderr
        assert vip in held(lan)
        drained = agent.ctl("drain", "--force", "--timeout", "20s")
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert "drained after" in drained.stdout
        assert vip not in held(lan)
        assert "smbgw_node_drained 1.0" in metrics(lan)
        restart(agent)
        time.sleep(1)  # health intervals
        assert vip not in held(lan), "a drained node stays drained across a restart"
        assert address_view(agent, vip).get("reason", "").startswith("the node is drained")
        undrained = agent.ctl("undrain")
        assert undrained.returncode == 0, undrained.stderr
        wait_for(lambda: vip in held(lan), timeout=15)
    finally:
        agent.stop()


def test_without_cap_net_admin_the_error_says_so(sandbox: Sandbox, lan: VethPair) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop a capability")
    agent = start_agent(sandbox, lan, prefix=["setpriv", "--bounding-set", "-net_admin", "--"])
    try:
        share(sandbox, "rho", f"{NET4}.160/24", lan.a.interface)
        error = wait_for(lambda: resource(agent, f"{NET4}.160").get("error"), timeout=15)
        assert "CAP_NET_ADMIN" in error, error
    finally:
        agent.stop()
