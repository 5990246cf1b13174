"""The VIP manager under faults: an agent killed in the middle of a claim, a share removed
while the agent was down, a share directory that hangs, a record of owned addresses that
is not what the agent wrote.

The agent runs in a network namespace of the test's own (see tests/integration/test_ha_vip.py).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from smbgw_plugins.ha.health import PathCheck
from smbgw_plugins.ha.ledger import Ledger

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess, served, wait_for
from tests.support.netns import VethPair, ip, link_namespaces
from tests.support.viplan import (
    NET4,
    Wire,
    address_view,
    addressed,
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


def test_an_agent_killed_while_probing_claims_the_address_after_a_restart(sandbox: Sandbox, lan: VethPair) -> None:
    config = sandbox.root / "etc/smbgw/agent.toml"
    config.write_text(config.read_text() + '\n[vip]\nprobe_window = "5s"\nhealth_interval = "500ms"\n')
    vip = f"{NET4}.170"
    agent = start_agent(sandbox, lan)
    try:
        share(sandbox, "sigma", f"{vip}/24", lan.a.interface)
        wait_for(lambda: "probing " in agent.log_text(), timeout=15)
        time.sleep(1.0)  # inside the probe window
        agent.stop(signal.SIGKILL)
        assert vip not in held(lan)
        restart(agent)
        wait_for(lambda: held(lan).get(vip) == 24, timeout=30)
    finally:
        agent.stop()


def test_an_address_of_a_share_removed_while_the_agent_was_down_is_removed(sandbox: Sandbox, lan: VethPair) -> None:
    vip = f"{NET4}.171"
    agent = start_agent(sandbox, lan)
    try:
        path = share(sandbox, "tau", f"{vip}/24", lan.a.interface)
        wait_for(lambda: vip in held(lan), timeout=15)
        agent.stop(signal.SIGKILL)
        path.unlink()
        restart(agent)
        wait_for(lambda: vip not in held(lan), timeout=15)
        assert f"{NET4}.1" in held(lan)
    finally:
        agent.stop()



def test_a_hanging_share_directory_does_not_hang_the_check() -> None:
    release = threading.Event()
    started: list[Path] = []

    def hanging_read(path: Path) -> str | None:
        started.append(path)
        release.wait(30)
        return None

    check = PathCheck(hanging_read, timeout=0.2)
    try:
        assert "does not answer within 0.2s" in str(check.problem(Path("/srv/smb/nfs")))
        assert "has been hanging" in str(check.problem(Path("/srv/smb/nfs")))
        assert started == [Path("/srv/smb/nfs")], "a read still hanging is not started again"
    finally:
        release.set()


GOOD = {"interface": "eth0", "prefixlen": 24, "since": 1.0}


@pytest.mark.parametrize("stored, kept", [
    ([], {}), ("10.0.0.1", {}), (7, {}), (None, {}),
    ({"10.0.0.1": GOOD}, {"10.0.0.1": GOOD}),
    ({"10.0.0.1": "eth0", "10.0.0.2": {"interface": 3, "prefixlen": 24}, "10.0.0.3": {"interface": "eth0"},
      "10.0.0.4": {"interface": "eth0", "prefixlen": 33}, "nonsense": GOOD, "10.0.0.05": GOOD,
      "10.0.0.6": {"interface": "eth0", "prefixlen": "24"}, "10.0.0.7": GOOD}, {"10.0.0.7": GOOD}),
])
def test_a_damaged_ledger_claims_nothing_it_does_not_prove(stored: object, kept: dict[str, object],
                                                           tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "vip.json")
    ledger.path.write_text(json.dumps({"owned": stored, "drained": None}))
    assert ledger.owned() == kept


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"\xff\xfe", b"[" * 100000, b" " * (5 << 20)])
def test_an_unreadable_ledger_reads_as_empty_and_says_so(content: bytes, tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "vip.json")
    ledger.path.write_bytes(content)
    assert ledger.owned() == {} and ledger.drained() is None
    assert ledger.problem and "left alone" in ledger.problem


# ---- netlink faults while an address is held ---------------------------------------------


def _retries_logged(agent: AgentProcess, vip: str) -> list[str]:
    """The log's lines for failed attempts at `vip:<vip>`, one per attempt."""
    prefix = f"vip:{vip} (vip): "
    return [line for line in agent.log_text().splitlines() if prefix in line and "; retry " in line]


def _claims_logged(agent: AgentProcess, vip: str) -> int:
    return agent.log_text().count(f"claimed {vip}/24 on ")


def _share_state(agent: AgentProcess, name: str) -> dict[str, Any]:
    found: dict[str, Any] = ((agent.status() or {}).get("shares") or {}).get(name) or {}
    return found


def _owned(sandbox: Sandbox) -> dict[str, Any]:
    owned: dict[str, Any] = Ledger(sandbox.root / "var/lib/smbgw/vip.json").owned()
    return owned


def test_an_address_deleted_behind_the_agents_back_is_added_again(sandbox: Sandbox, lan: VethPair) -> None:
    """Fault: `ip addr del` of a held virtual IP in the agent's namespace, by someone else.

    Expected: within a few health intervals the watch finds the address missing and a pass
    claims it again (probe, add, announce; `claimed ...` in the log, heard on the wire by
    B); nothing is reported as failed (the repair succeeds at the first try), the share
    stays served, the ledger keeps the address and the node's own address is untouched.
    """
    vip = f"{NET4}.172"
    agent = start_agent(sandbox, lan)
    wire = Wire(lan)
    try:
        share(sandbox, "phi", f"{vip}/24", lan.a.interface)
        wait_for(lambda: held(lan).get(vip) == 24, timeout=15)
        wait_for(lambda: resource(agent, vip).get("state") == "applied", timeout=15)
        wait_for(lambda: _share_state(agent, "phi").get("state") == "served", timeout=15)
        wait_for(lambda: wire.announcements(vip) >= 6, timeout=15)  # the claim's burst and repeat are over
        assert _claims_logged(agent, vip) == 1

        deleted = time.time()
        ip("addr", "del", f"{vip}/24", "dev", lan.a.interface, namespace=lan.a.namespace)
        assert vip not in held(lan)
        wait_for(lambda: held(lan).get(vip) == 24, timeout=15)
        took = time.time() - deleted
        wait_for(lambda: wire.announcements(vip, since=deleted) >= 1, timeout=10)
        wait_for(lambda: _claims_logged(agent, vip) == 2, timeout=5)
        wait_for(lambda: address_view(agent, vip).get("present"), timeout=10)
        print(f"address back {took:.1f}s after it was deleted")

        assert agent.proc is not None and agent.proc.poll() is None
        found = resource(agent, vip)
        assert found.get("state") == "applied" and not found.get("error") and found.get("failures") == 0, found
        assert _retries_logged(agent, vip) == []
        assert _share_state(agent, "phi").get("state") == "served"
        assert served(sandbox, "phi")
        assert vip in _owned(sandbox)
        assert held(lan).get(f"{NET4}.1") == 24, "the node's own address is never touched"
        scraped = metrics(lan)
        assert f'smbgw_resource_up{{plugin="vip",resource="vip:{vip}"}} 1.0' in scraped
        assert f'smbgw_vip_present{{interface="{lan.a.interface}",share="phi",vip="{vip}"}} 1.0' in scraped
    finally:
        wire.stop()
        agent.stop()
        print(agent.log_text()[-20000:])


def test_an_interface_deleted_under_a_held_address_fails_it_with_backoff_and_claims_it_once_back(
        sandbox: Sandbox, lan: VethPair) -> None:
    """Fault: `ip link del` of the interface that holds a share's virtual IP (the kernel
    drops the address with it), and the interface re-created, under the same name, ~5 s later.

    Expected while it is gone: the resource `vip:<address>` is `failed` with `interface
    veth-a does not exist` in status, one log line per attempt (`...; retry N in Ms`),
    `smbgw_resource_up{resource="vip:<address>"} 0` and `smbgw_vip_present 0`; it is
    retried with backoff (2 s, 4 s, ...: one failure per retry, not one per pass, although
    the watch starts a pass every health interval). The agent stays up, the share stays
    served and the ledger keeps the address as the agent's. Once the interface is back the
    next retry claims the address on it and announces it, with no action, and the
    failure clears.
    """
    vip = f"{NET4}.173"
    agent = start_agent(sandbox, lan)
    wire = None
    try:
        share(sandbox, "chi", f"{vip}/24", lan.a.interface)
        wait_for(lambda: held(lan).get(vip) == 24, timeout=15)
        wait_for(lambda: resource(agent, vip).get("state") == "applied", timeout=15)
        wait_for(lambda: _share_state(agent, "chi").get("state") == "served", timeout=15)

        ip("link", "del", lan.a.interface, namespace=lan.a.namespace)
        failing = wait_for(lambda: resource(agent, vip).get("error") and resource(agent, vip), timeout=15)
        assert failing["state"] == "failed", failing
        assert "interface veth-a does not exist" in failing["error"], failing
        passes = (agent.status() or {}).get("passes", 0)
        time.sleep(5)  # ten health intervals, each finding the address missing
        assert (agent.status() or {}).get("passes", 0) >= passes + 5, "the watch keeps starting passes"

        def attempts() -> tuple[dict[str, Any], list[str]] | None:
            """The resource and its log lines, once both tell of the same attempts (the
            log line comes first, status.json at the end of the pass)."""
            found, logged = resource(agent, vip), _retries_logged(agent, vip)
            return (found, logged) if len(logged) == found.get("failures") else None

        failing, logged = wait_for(attempts, timeout=5)
        assert failing["state"] == "failed" and "interface veth-a does not exist" in failing["error"], failing
        # backoff counts retries, 2 s then 4 s apart (a third due ~6.5 s after the deletion),
        # not passes: it is nowhere near its 5-minute cap
        assert 2 <= failing["failures"] <= 4, (failing, logged)
        assert failing["retry_at"] - time.time() <= 16, failing
        assert "interface veth-a does not exist; retry 1 in 2s" in logged[0], logged
        scraped = metrics(lan)
        assert f'smbgw_resource_up{{plugin="vip",resource="vip:{vip}"}} 0.0' in scraped
        assert f'smbgw_vip_present{{interface="{lan.a.interface}",share="chi",vip="{vip}"}} 0.0' in scraped
        # the rest is kept: agent up, share served, the address still the agent's
        assert agent.proc is not None and agent.proc.poll() is None
        assert _share_state(agent, "chi").get("state") == "served"
        assert served(sandbox, "chi")
        assert vip in _owned(sandbox)
        assert address_view(agent, vip).get("owned") and not address_view(agent, vip).get("present")

        back = addressed(link_namespaces(lan.a.namespace, lan.b.namespace))  # as lan_pair made them, new MACs
        recreated = time.time()
        wire = Wire(back)
        wait_for(lambda: held(back).get(vip) == 24, timeout=30)
        took = time.time() - recreated
        print(f"address claimed again {took:.1f}s after the interface came back")
        wait_for(lambda: wire is not None and wire.announcements(vip, since=recreated) >= 1, timeout=10)
        recovered = wait_for(lambda: resource(agent, vip).get("state") == "applied" and resource(agent, vip),
                             timeout=10)
        assert not recovered.get("error") and recovered.get("failures") == 0, recovered
        wait_for(lambda: address_view(agent, vip).get("present"), timeout=10)
        scraped = metrics(back)
        assert f'smbgw_resource_up{{plugin="vip",resource="vip:{vip}"}} 1.0' in scraped
        assert f'smbgw_vip_present{{interface="{lan.a.interface}",share="chi",vip="{vip}"}} 1.0' in scraped
        assert _share_state(agent, "chi").get("state") == "served"
        assert vip in _owned(sandbox)
    finally:
        if wire is not None:
            wire.stop()
        agent.stop()
        print(agent.log_text()[-20000:])
