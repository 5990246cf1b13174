"""`smbgwctl drain` in a CTDB cluster, with a stand-in for the `ctdb` tool: the order of
its commands, and a move that fails (a control timing out on a loaded node) not stopping
the drain half way. The real cluster drains in tests/integration/test_ctdb_cluster.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from smbgw_plugins.ha import drain
from smbgw_plugins.ha.ctdb import tool

from smbgw_agent.effects.runner import Completed, Runner
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.commands import CommandRefused
from smbgw_agent.platform.context import PassContext

VIP = "10.211.33.100"
STATUS = ("|Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|\n"
          "|0|10.211.33.11|0|0|0|{disabled}|0|0|0|0|Y|\n|1|10.211.33.12|0|0|0|0|{sick}|0|0|0|N|\n"
          "|2|10.211.33.13|0|0|0|0|{sick}|0|0|0|N|\n")
NO_SESSIONS = '{"sessions": {}, "tcons": {}, "open_files": {}}'


class Cluster(Runner):
    """Node 0's `ctdb`, holding VIP; `moveip` fails when told to, `disable` moves the
    address as CTDB's takeover run would."""

    def __init__(self, move_fails: bool = False, others_sick: bool = False) -> None:
        super().__init__()
        self.ran: list[str] = []
        self.holder = 0
        self.disabled = False
        self.move_fails = move_fails
        self.others_sick = others_sick

    def run(self, argv: Sequence[str], **_kwargs: Any) -> Completed:  # type: ignore[override]
        command = " ".join(argv[1:])
        if argv[0] == "smbstatus":
            return Completed(tuple(argv), 0, NO_SESSIONS, "", 0.0)
        answers = {"pnn": "0\n", "status": "Recovery mode:NORMAL (0)\n", "getpid": "4242\n",
                   "-X status": STATUS.format(disabled=int(self.disabled), sick=int(self.others_sick)),
                   "-X ip": f"|Public IP|Node|\n|{VIP}|{self.holder}|\n", "leader": "1\n",
                   "-X getcapabilities": "|LEADER|LMASTER|\n|1|1|\n"}
        if command in answers:
            return Completed(tuple(argv), 0, answers[command], "", 0.0)
        self.ran.append(command)
        if "moveip" in argv:
            if self.move_fails:
                return Completed(tuple(argv), 1, "", "Failed to move IP 10.211.33.100 to node 1\n", 2.0)
            self.holder = int(argv[-1])
        elif command == "disable":
            self.disabled = True
            if self.holder == 0 and not self.others_sick:  # CTDB gives it to a healthy node
                self.holder = 1
        return Completed(tuple(argv), 0, "", "", 0.0)


class Progress:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.expired = False

    def report(self, message: str) -> None:
        self.lines.append(message)


def context(tmp_path: Path, runner: Runner) -> PassContext:
    return PassContext(paths=Paths.under(tmp_path), config=AgentConfig(node="node1"), runner=runner,
                       services=None, desired={}, applied={})  # type: ignore[arg-type]


def run_drain(tmp_path: Path, runner: Cluster, **options: Any) -> tuple[dict[str, Any], Progress]:
    job = drain.cluster_drain(context(tmp_path, runner), options.get("timeout", 5.0), options.get("target"),
                              options.get("force", False))
    progress = Progress()
    return job.run(progress), progress  # type: ignore[arg-type]


def test_each_address_is_moved_first_then_the_node_disabled(tmp_path: Path) -> None:
    cluster = Cluster()
    result, progress = run_drain(tmp_path, cluster)
    assert cluster.ran == [f"-t {tool.MOVE_TIME_LIMIT} moveip {VIP} 1", "disable"]
    assert progress.lines[:2] == [f"moving {VIP} to node 1", "ctdb disable"]
    assert result["text"].startswith("drained after") and result["held"] == []


def test_a_move_that_fails_does_not_stop_the_drain(tmp_path: Path) -> None:
    cluster = Cluster(move_fails=True)
    result, progress = run_drain(tmp_path, cluster)
    assert cluster.ran == [f"-t {tool.MOVE_TIME_LIMIT} moveip {VIP} 1", "disable"]
    assert any("Failed to move IP" in line and "ctdb disable moves" in line for line in progress.lines), \
        progress.lines
    assert cluster.holder == 1 and result["held"] == []


def test_target_names_the_node_to_move_to(tmp_path: Path) -> None:
    cluster = Cluster()
    run_drain(tmp_path, cluster, target="10.211.33.13")
    assert cluster.ran[0] == f"-t {tool.MOVE_TIME_LIMIT} moveip {VIP} 2"


@pytest.mark.parametrize(("target", "said"), [
    ("10.211.33.99", "no such node in the cluster"), ("0", "is this node"),
])
def test_a_target_that_cannot_take_the_address_is_refused(tmp_path: Path, target: str, said: str) -> None:
    with pytest.raises(CommandRefused, match=said):
        run_drain(tmp_path, Cluster(), target=target)


def test_no_healthy_node_to_take_over_needs_force(tmp_path: Path) -> None:
    with pytest.raises(CommandRefused, match="--force"):
        run_drain(tmp_path, Cluster(others_sick=True))
    cluster = Cluster(others_sick=True)
    with pytest.raises(drain.DrainTimeout):  # forced: disabled, and nobody takes the address
        run_drain(tmp_path, cluster, force=True, timeout=0.0)
    assert cluster.ran == ["disable"]
