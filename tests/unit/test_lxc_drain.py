"""`smbgwctl drain --target` as the LXC mode reads it (plugins/mode_lxc/drain.py): the
target is input, checked before anything moves. The migration itself:
tests/integration/test_mode_lxc.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from smbgw_plugins.mode_lxc import drain

from smbgw_agent.platform.commands import CommandRefused


@pytest.mark.parametrize("target", ["../pve2", "pve2/lxc", "-pve2", "pve2-", "a" * 64, "pve 2", "pve2\n", "",
                                    ".", "pve2;rm"])
def test_a_target_that_is_not_a_node_name_is_refused(tmp_path: Path, target: str) -> None:
    (tmp_path / "nodes" / "pve2").mkdir(parents=True)
    with pytest.raises(CommandRefused, match="is not a Proxmox node name"):
        drain.check_target(target, "pve1", tmp_path)


def test_a_target_must_be_another_node_of_the_cluster(tmp_path: Path) -> None:
    (tmp_path / "nodes" / "pve2").mkdir(parents=True)
    drain.check_target("pve2", "pve1", tmp_path)
    with pytest.raises(CommandRefused, match="is this node"):
        drain.check_target("pve1", "pve1", tmp_path)
    with pytest.raises(CommandRefused, match="no such node"):
        drain.check_target("pve3", "pve1", tmp_path)
