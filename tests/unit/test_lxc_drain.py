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


def test_a_drained_node_makes_no_container_until_undrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from smbgw_plugins.mode_lxc import plugin
    from smbgw_plugins.mode_lxc.plugin import LxcModePlugin
    from smbgw_plugins.proxmox.plugin import ProxmoxPlugin

    from tests.unit.test_lxc_plugin import context, share, vmlist

    for name in ("SUBUID", "SUBGID"):
        granted = tmp_path / name.lower()
        granted.write_text("root:100000:65536\n")
        monkeypatch.setattr(plugin, name, str(granted))
    spec = share(vmid=9000)
    ctx = context(tmp_path, spec)
    vmlist(ctx)
    subject = LxcModePlugin()
    assert subject._start_drain(ctx, {}) is None, "nothing to move: the drain is only recorded"
    record = drain.DrainRecord(ctx.paths.state_dir)
    assert record.read() is not None and record.read()["target"] is None  # type: ignore[index]
    with pytest.raises(ValueError, match=r"this node is drained \(smbgwctl drain, since \d{4}-.*smbgwctl undrain"):
        subject.plan_work(ctx, spec)
    job = ProxmoxPlugin()._start_undrain(ctx, {})
    assert "made here again" in job.run(None)["text"]  # type: ignore[arg-type]
    assert record.read() is None
    work, _ = subject.plan_work(ctx, spec)
    assert work.create
    assert "no guest mode was drained" in ProxmoxPlugin()._start_undrain(ctx, {}).run(None)["text"]  # type: ignore[arg-type]


@pytest.mark.parametrize("content", ["", "{", "[]", "\x00" * 10, '{"since": "yesterday"}'])
def test_a_drain_record_that_cannot_be_read_counts_as_drained(tmp_path: Path, content: str) -> None:
    record = drain.DrainRecord(tmp_path)
    record.path.write_text(content)
    refusal = record.refusal()
    assert refusal is not None and str(record.path) in refusal and "since unknown" in refusal
