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

import pytest
from smbgw_plugins.ha.health import PathCheck
from smbgw_plugins.ha.ledger import Ledger

from devtools.sandbox import Sandbox
from tests.support.agent import wait_for
from tests.support.netns import VethPair
from tests.support.viplan import NET4, held, lan_pair, restart, share, start_agent

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
