"""The LXC mode's planning without a container (plugins/mode_lxc/plugin.py): what it plans
for a share whose container is missing, matches, has drifted or is someone else's; how it
allocates VMIDs; and what it refuses. Containers themselves: tests/integration/test_mode_lxc.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from smbgw_plugins.mode_lxc import guest, orphans, plugin
from smbgw_plugins.mode_lxc.plugin import PLUGIN, LxcModePlugin, Observation, config_path
from smbgw_plugins.mode_lxc.table import parse_share_table
from smbgw_plugins.proxmox import identity
from smbgw_plugins.proxmox import orphans as guest_orphans
from smbgw_plugins.proxmox.guestmode import PUSHED, STEPS, VMIDS
from smbgw_plugins.proxmox.table import parse_agent_table

from smbgw_agent.effects.deadline import Deadline
from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.changes import CREATE, UPDATE
from smbgw_agent.platform.context import PassContext
from smbgw_agent.platform.jobs import JobProgress, JobRecord

PROXMOX = {"vmid_range": [9000, 9002], "bridge": "vmbr0", "storage": "local-lvm",
           "lxc_template": "local:vztmpl/smbgw.tar.zst"}


@pytest.fixture(autouse=True)
def subids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, attribute in (("subuid", "SUBUID"), ("subgid", "SUBGID")):
        path = tmp_path / name
        path.write_text("root:100000:65536\n")
        monkeypatch.setattr(plugin, attribute, str(path))


def share(name: str = "finance", **lxc: Any) -> ShareSpec:
    table = parse_share_table({"address": "10.0.0.21/24", **lxc})
    return ShareSpec(name=name, file=f"{name}.toml", path=f"/srv/{name}", mode="lxc", sections={"lxc": table})


def context(tmp_path: Path, *shares: ShareSpec) -> Any:
    paths = Paths.under(tmp_path / "root")
    for spec in shares:
        paths.host(spec.path).mkdir(parents=True, exist_ok=True)
    config = AgentConfig(node="pve1", allowed_roots=("/srv",), plugin_sections={"proxmox": parse_agent_table(PROXMOX)})
    return PassContext(paths=paths, config=config, runner=Runner(), services=None,  # type: ignore[arg-type]
                       desired={s.key: s for s in shares}, applied={})


def vmlist(ctx: Any, **guests: str) -> None:
    path = ctx.paths.host("/etc/pve/.vmlist")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "ids": {vmid.removeprefix("v"): {"node": node, "type": "lxc",
                                                                                 "version": 1}
                                                      for vmid, node in guests.items()}}))


def live_container(ctx: Any, spec: ShareSpec, vmid: int, **changes: str) -> None:
    """The config pct create would have written for `spec`, with `changes`."""
    subject = LxcModePlugin()
    options = guest.wanted_options(spec.name, spec.file, plugin.spec_of(spec), "vmbr0",
                                   str(ctx.paths.host(spec.path)), node="pve1")
    options = {**options, **changes}
    lines = [f"#{options.pop('description').replace(':', '%3A')}"]
    lines += [f"{key}: {value}" for key, value in sorted(options.items())]
    lines += guest.idmap_config_lines(subject._idmap(ctx, spec))
    path = ctx.paths.host(config_path(vmid))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def plan(subject: LxcModePlugin, ctx: Any, spec: ShareSpec) -> list[tuple[str, str]]:
    return [(c.action, c.detail) for c in subject.smbgw_plan_share(ctx, spec.name, spec, None)]


def test_a_new_share_gets_the_lowest_free_vmid_and_a_create(tmp_path: Path) -> None:
    spec = share()
    ctx = context(tmp_path, spec)
    vmlist(ctx, v9000="pve2")  # a guest of another node holds the first id
    [(action, detail)] = plan(LxcModePlugin(), ctx, spec)
    assert action == CREATE and detail.startswith("create container 9001 (smbgw-finance)")


def test_no_free_vmid_is_an_error_that_names_the_range(tmp_path: Path) -> None:
    spec = share()
    ctx = context(tmp_path, spec)
    vmlist(ctx, v9000="pve1", v9001="pve1", v9002="pve2")
    with pytest.raises(ValueError, match="no free VMID left in \\[proxmox\\] vmid_range 9000-9002"):
        plan(LxcModePlugin(), ctx, spec)


def test_a_fixed_vmid_of_another_guest_is_refused(tmp_path: Path) -> None:
    spec = share(vmid=9002)
    ctx = context(tmp_path, spec)
    vmlist(ctx, v9002="pve2")
    with pytest.raises(ValueError, match="VMID 9002 is in use by a lxc guest on node pve2"):
        plan(LxcModePlugin(), ctx, spec)


def test_a_container_without_the_shares_tags_is_never_touched(tmp_path: Path) -> None:
    spec = share(vmid=9000)
    ctx = context(tmp_path, spec)
    live_container(ctx, spec, 9000, tags="database;production")
    with pytest.raises(ValueError, match=r"not this share's .*database;production"):
        plan(LxcModePlugin(), ctx, spec)


def test_a_container_as_wanted_needs_nothing_and_drift_is_planned(tmp_path: Path) -> None:
    spec = share(vmid=9000)
    ctx = context(tmp_path, spec)
    live_container(ctx, spec, 9000)
    subject = LxcModePlugin()
    smb_conf = subject._smb_conf(ctx, spec, 9000)
    ctx.plugin_state(PLUGIN).set(PUSHED, {"finance": plugin.digest(smb_conf)})
    ctx.plugin_state(PLUGIN).set(VMIDS, {"finance": 9000})
    assert plan(subject, ctx, spec) == []
    subject._observer.value = Observation(at=1e12, status={9000: "stopped"})
    assert plan(subject, ctx, spec) == [(UPDATE, "start container 9000 (found stopped)")]
    subject._observer.value = Observation(at=1e12, status={9000: "running"}, answers={9000: False})
    assert plan(subject, ctx, spec) == [(UPDATE, "restart smbd in container 9000 (10.0.0.21/24 port 445 does not "
                                                 "answer)")]


def test_an_edit_changes_smb_conf_and_memory_in_place(tmp_path: Path) -> None:
    spec = share(vmid=9000)
    ctx = context(tmp_path, spec)
    live_container(ctx, spec, 9000, memory="256")
    ctx.plugin_state(PLUGIN).set(PUSHED, {"finance": "an older smb.conf"})
    changes = plan(LxcModePlugin(), ctx, spec)
    assert (UPDATE, "container 9000: set memory 256 -> 512") in changes
    assert (UPDATE, "write smb.conf in container 9000 and reload smbd") in changes


def test_smb_conf_inside_has_the_security_profile_and_the_share_at_its_mount(tmp_path: Path) -> None:
    spec = share(vmid=9000)
    ctx = context(tmp_path, spec)
    text = LxcModePlugin()._smb_conf(ctx, spec, 9000)
    assert "\tserver role = standalone server\n" in text and "\trestrict anonymous = 2\n" in text
    assert "[finance]\n\tpath = /srv/share\n" in text


def test_a_subuid_without_the_owners_id_is_refused_with_the_line_to_add(tmp_path: Path) -> None:
    spec = share(vmid=9000)
    ctx = context(tmp_path, spec)
    os.chown(ctx.paths.host(spec.path), 1000, 1000)
    with pytest.raises(ValueError, match="add root:1000:1"):
        plan(LxcModePlugin(), ctx, spec)


def test_the_share_table_belongs_to_lxc_mode_only() -> None:
    subject = LxcModePlugin()
    config = AgentConfig(node="pve1", allowed_roots=("/srv",), plugin_sections={"proxmox": parse_agent_table(PROXMOX)})
    native = ShareSpec(name="x", file="x.toml", path="/srv/x", sections={"lxc": {"address": "10.0.0.2/24"}})
    assert subject.smbgw_validate_share(native, config) == ["[lxc] is for mode = \"lxc\" only"]
    bare = ShareSpec(name="x", file="x.toml", path="/srv/x", mode="lxc")
    assert "needs an [lxc] table" in subject.smbgw_validate_share(bare, config)[0]
    assert any("needs [proxmox]" in problem for problem in subject.smbgw_validate_share(
        share(), AgentConfig(node="pve1", allowed_roots=("/srv",))))


def test_a_removed_share_gives_its_vmid_back_when_the_removal_is_committed(tmp_path: Path) -> None:
    from smbgw_agent.platform.jobs import JobRunner

    spec = share(vmid=9000)
    ctx = context(tmp_path, spec)
    ctx.jobs = JobRunner()
    live_container(ctx, spec, 9000)
    state = ctx.plugin_state(PLUGIN)
    state.set(VMIDS, {"finance": 9000, "hr": 9001})
    state.set(PUSHED, {"finance": "x"})
    subject = LxcModePlugin()
    [change] = subject.smbgw_plan_share(ctx, "finance", None, spec)
    assert change.detail.startswith("stop and destroy container 9000")
    subject.smbgw_remove_share(ctx, "finance", spec, [change])
    subject.smbgw_commit(ctx, ["share:finance"])
    assert state.get(VMIDS) == {"hr": 9001} and state.get(PUSHED) == {}
    ctx.jobs.stop()


def test_a_container_of_an_undeclared_share_is_reported_never_destroyed(tmp_path: Path) -> None:
    kept, gone = share("finance", vmid=9000), share("hr", vmid=9001)
    ctx = context(tmp_path, kept, gone)
    live_container(ctx, kept, 9000)
    live_container(ctx, gone, 9001)
    live_container(ctx, kept, 9002, tags="database")  # not the agent's
    ctx.desired = {kept.key: kept}
    [finding] = LxcModePlugin().smbgw_health(ctx)
    assert (finding.check, finding.ok, finding.resource) == ("lxc-orphan", False, "lxc:9001")
    assert "share-hr" in finding.detail and "pct destroy 9001 --purge" in finding.detail
    assert ctx.paths.host(config_path(9001)).exists()


def test_two_new_shares_in_one_pass_get_two_vmids_and_any_name_is_fine(tmp_path: Path) -> None:
    first, second = share("submit"), share("guests")  # names that once were scratch keys
    ctx = context(tmp_path, first, second)
    subject = LxcModePlugin()
    [(_, one)] = plan(subject, ctx, first)
    [(_, two)] = plan(subject, ctx, second)
    assert one.startswith("create container 9000") and two.startswith("create container 9001")
    subject.smbgw_apply_share(ctx, "submit", first, subject.smbgw_plan_share(ctx, "submit", first, None))
    assert ctx.plugin_state(PLUGIN).get(VMIDS) == {"submit": 9000}


class RecordingPct:
    """Records what the orphan job asks of pct (the real tool: tests/integration)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def status(self, vmid: int) -> str:
        self.calls.append(("status", vmid))
        return "running"

    def stop(self, vmid: int) -> None:
        self.calls.append(("stop", vmid))

    def destroy(self, vmid: int) -> None:
        self.calls.append(("destroy", vmid))


def test_destroy_orphans_destroys_only_a_container_whose_share_file_is_gone(tmp_path: Path) -> None:
    kept, gone, editing = share("finance", vmid=9000), share("hr", vmid=9001), share("legal", vmid=9002)
    ctx = context(tmp_path, kept, gone, editing)
    for spec, vmid in ((kept, 9000), (gone, 9001), (editing, 9002)):
        live_container(ctx, spec, vmid)
    live_container(ctx, gone, 9003, description="made by hand")  # tagged, but not the agent's words
    moved_here = share("sales", vmid=9004)
    live_container(ctx, moved_here, 9004, description=identity.description("sales", "sales.toml", "pve2"))
    shares_dir = ctx.paths.host(ctx.config.shares_dir)
    shares_dir.mkdir(parents=True)
    (shares_dir / "legal.toml").write_text("mode = \"lxc\"\npath = \n")  # being edited: does not parse
    ctx.desired = {kept.key: kept}
    folder = ctx.paths.host("/etc/pve/lxc")
    found = guest_orphans.find(folder, {"share-finance"}, "pve1")
    assert [(o.vmid, o.shares, o.file) for o in found] == [(9001, ("share-hr",), "hr.toml"),
                                                           (9002, ("share-legal",), "legal.toml"),
                                                           (9003, ("share-hr",), None)]
    pct = RecordingPct()
    assert 9004 not in [o.vmid for o in found], "another node's, moved here: not an orphan of this node"
    job = orphans.destroy_job(pct, folder, found, {"share-finance"}, shares_dir, "pve1")  # type: ignore[arg-type]
    result = job(JobProgress(JobRecord(plugin.ORPHANS_JOB, PLUGIN, ""), Deadline(60.0)))
    assert result["destroyed"] == [9001] and pct.calls == [("status", 9001), ("stop", 9001), ("destroy", 9001)]
    assert "still there" in result["kept"][9002] and "description" in result["kept"][9003]


def test_destroy_orphans_is_asked_for_in_agent_toml_and_said_in_the_finding(tmp_path: Path) -> None:
    gone = share("hr", vmid=9001)
    ctx = context(tmp_path, gone)
    live_container(ctx, gone, 9001)
    ctx.desired = {}
    subject = LxcModePlugin()
    [finding] = subject.smbgw_health(ctx)
    assert "destroy_orphans = true" in finding.detail and "pct destroy 9001" in finding.detail
    assert plugin.ORPHANS_JOB not in [s.id for s in subject.smbgw_schedules(ctx)], "reported, not destroyed"
    ctx.config = AgentConfig(node="pve1", allowed_roots=("/srv",), plugin_sections={
        "proxmox": parse_agent_table({**PROXMOX, "destroy_orphans": True})})
    [finding] = subject.smbgw_health(ctx)
    assert "the agent destroys it" in finding.detail
    assert plugin.ORPHANS_JOB in [s.id for s in subject.smbgw_schedules(ctx)]


def test_only_an_address_the_container_does_not_have_yet_is_probed(tmp_path: Path) -> None:
    spec = share("finance", vmid=9000)
    ctx = context(tmp_path, spec)
    live_container(ctx, spec, 9000)
    subject = LxcModePlugin()
    config = plugin.read_guest_config(ctx.paths.host(config_path(9000)))
    assert config is not None
    assert plugin._new_address(config, plugin.spec_of(spec)) is None, "its own address: no probe"
    moved = share("finance", vmid=9000, address="10.0.0.22/24")
    assert plugin._new_address(config, plugin.spec_of(moved)) == "10.0.0.22/24"
    assert plugin._new_address(config, plugin.spec_of(share("finance", address="dhcp"))) is None
    wider = share("finance", vmid=9000, address="10.0.0.21/16")
    assert plugin._new_address(config, plugin.spec_of(wider)) is None, "same address, another prefix"
    vmlist(ctx)
    work = subject.plan_work(ctx, share("new", vmid=9001))[0]
    assert work.create and work.probe == "10.0.0.21/24"


def with_ha(spec: ShareSpec, on: bool = True) -> ShareSpec:
    return ShareSpec(name=spec.name, file=spec.file, path=spec.path, mode="lxc",
                     sections={**spec.sections, "ha": {"vip": None, "interface": None, "proxmox_ha": on}})


STORAGE_CFG = """dir: local
	path /var/lib/vz
	content iso,vztmpl,backup

lvmthin: local-lvm
	thinpool data
	vgname pve
	content rootdir,images

rbd: ceph-vm
	content rootdir,images
	krbd 0
	pool vm
"""


def on_shared_storage(ctx: Any) -> None:
    """storage.cfg as a Proxmox node with Ceph has it, and [proxmox] storage on Ceph."""
    path = ctx.paths.host("/etc/pve/storage.cfg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STORAGE_CFG)
    ctx.config = AgentConfig(node="pve1", allowed_roots=("/srv",), plugin_sections={
        "proxmox": parse_agent_table({**PROXMOX, "storage": "ceph-vm"})})


def ha_resources(ctx: Any, text: str) -> None:
    path = ctx.paths.host("/etc/pve/ha/resources.cfg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def ha_plan(ctx: Any, spec: ShareSpec) -> list[str]:
    return [detail for _action, detail in plan(LxcModePlugin(), ctx, spec) if "Proxmox HA" in detail]


def test_proxmox_ha_registers_the_container_and_takes_out_only_what_the_agent_put_in(tmp_path: Path) -> None:
    spec = with_ha(share("finance", vmid=9000))
    ctx = context(tmp_path, spec)
    vmlist(ctx)
    on_shared_storage(ctx)
    work, changes = LxcModePlugin().plan_work(ctx, spec)
    assert work.options["mp0"].endswith(",shared=1"), "Proxmox migrates a bind mount only when it says so"
    assert work.create and work.ha == "add" and changes[0].detail.endswith("under Proxmox HA")
    live_container(ctx, spec, 9000)
    ctx.scratch.pop(PLUGIN, None)  # a new pass: read again
    [detail] = ha_plan(ctx, spec)
    assert detail == "register container 9000 with Proxmox HA (ha-manager add ct:9000 --state started)"
    ha_resources(ctx, "ct: 9000\n\tcomment smbgw-agent share finance\n\tstate started\n\n")
    ctx.scratch.pop(PLUGIN, None)  # a new pass: read again
    assert ha_plan(ctx, spec) == [], "registered: nothing to do"
    off = with_ha(spec, on=False)
    ctx.scratch.pop(PLUGIN, None)  # a new pass: read again
    [detail] = ha_plan(ctx, off)
    assert detail.startswith("take container 9000 out of Proxmox HA (ha-manager remove ct:9000)")
    ha_resources(ctx, "ct: 9000\n\tstate started\n\n")  # registered by hand: the administrator's
    ctx.scratch.pop(PLUGIN, None)  # a new pass: read again
    assert ha_plan(ctx, off) == []


def test_an_ha_resource_list_that_cannot_be_read_fails_the_share(tmp_path: Path) -> None:
    spec = with_ha(share("finance", vmid=9000))
    ctx = context(tmp_path, spec)
    vmlist(ctx, v9000="pve1")
    on_shared_storage(ctx)
    live_container(ctx, spec, 9000)
    ha_resources(ctx, "ct: 9000\nstate started\n")  # a property line without its indentation
    with pytest.raises(ValueError, match="line 2: cannot read"):
        plan(LxcModePlugin(), ctx, spec)


def test_a_container_moved_to_another_node_is_left_there_and_reported(tmp_path: Path) -> None:
    """Proxmox HA started the share's container on pve2 after pve1 failed: pve1's agent
    finds its recorded VMID there, makes nothing, and says where the share is served."""
    spec = share("finance")
    ctx = context(tmp_path, spec)
    ctx.plugin_state(PLUGIN).set(VMIDS, {"finance": 9000})
    pve = ctx.paths.host("/etc/pve")
    (pve / "nodes/pve1/lxc").mkdir(parents=True)
    (pve / "local").symlink_to("nodes/pve1")
    live_container(ctx, spec, 9000)  # written through /etc/pve/lxc: moved by hand below
    (pve / "lxc").mkdir(exist_ok=True)
    (pve / "nodes/pve2/lxc").mkdir(parents=True)
    ctx.paths.host(config_path(9000)).rename(pve / "nodes/pve2/lxc/9000.conf")
    vmlist(ctx, v9000="pve2")
    subject = LxcModePlugin()
    assert plan(subject, ctx, spec) == []
    [finding] = [f for f in subject.smbgw_health(ctx) if f.check == "lxc-moved"]
    assert "runs on node pve2" in finding.detail and "ha-manager migrate ct:9000 pve1" in finding.detail
    (pve / "nodes/pve2/lxc/9000.conf").write_text("hostname: database\n")  # not the share's any more
    ctx.scratch.pop(PLUGIN, None)  # a new pass: read again
    with pytest.raises(ValueError, match="VMID 9000 is in use by a lxc guest on node pve2"):
        plan(subject, ctx, spec)
    assert not [f for f in subject.smbgw_health(ctx) if f.check == "lxc-moved"]


def test_proxmox_ha_on_a_local_root_disk_storage_is_refused(tmp_path: Path) -> None:
    spec = with_ha(share("finance", vmid=9000))
    ctx = context(tmp_path, spec)
    vmlist(ctx)
    with pytest.raises(ValueError, match="is this a Proxmox VE node"):
        LxcModePlugin().plan_work(ctx, spec)
    on_shared_storage(ctx)
    ctx.config = context(tmp_path, spec).config  # back to local-lvm
    with pytest.raises(ValueError, match="storage 'local-lvm' is this node's"):
        LxcModePlugin().plan_work(ctx, spec)


def test_switching_proxmox_ha_changes_the_mount_at_the_next_restart(tmp_path: Path) -> None:
    spec = share("finance", vmid=9000)
    ctx = context(tmp_path, spec)
    vmlist(ctx, v9000="pve1")
    live_container(ctx, spec, 9000)
    on_shared_storage(ctx)
    config = plugin.read_guest_config(ctx.paths.host(config_path(9000)))
    assert config is not None
    host_path = str(ctx.paths.host(spec.path))
    on = guest.wanted_options("finance", "finance.toml", plugin.spec_of(spec), "vmbr0", host_path, True)
    [mount] = [d for d in guest.differences(config, on, plugin.LxcModePlugin()._idmap(ctx, spec)) if d.key == "mp0"]
    assert mount.at_start and mount.wanted == f"{host_path},mp=/srv/share,shared=1"
    live_container(ctx, spec, 9000, mp0=mount.wanted)
    config = plugin.read_guest_config(ctx.paths.host(config_path(9000)))
    assert config is not None
    off = guest.wanted_options("finance", "finance.toml", plugin.spec_of(spec), "vmbr0", host_path, False)
    [mount] = [d for d in guest.differences(config, off, plugin.LxcModePlugin()._idmap(ctx, spec)) if d.key == "mp0"]
    assert mount.wanted == f"{host_path},mp=/srv/share", "shared=1 taken away again"


def test_a_locked_container_waits_and_a_half_made_one_is_made_again(tmp_path: Path) -> None:
    spec = share("finance", vmid=9000)
    ctx = context(tmp_path, spec)
    vmlist(ctx, v9000="pve1")
    live_container(ctx, spec, 9000, lock="backup", memory="1024")
    with pytest.raises(ValueError, match=r"container 9000 is locked \(backup\)"):
        plan(LxcModePlugin(), ctx, spec)
    ctx.paths.host(config_path(9000)).write_text("lock: create\n")  # an interrupted pct create
    with pytest.raises(ValueError, match="is not this share's"):
        plan(LxcModePlugin(), ctx, spec)  # whose it is comes from the agent's record only
    ctx.plugin_state(PLUGIN).set(VMIDS, {"finance": 9000})
    [(action, detail)] = plan(LxcModePlugin(), ctx, spec)
    assert action == CREATE and "left half made" in detail
    work = ctx.plugin_scratch(PLUGIN)["planned"]["finance"]
    assert work.create and work.recreate


def test_a_container_smb_conf_testparm_refuses_is_never_pushed(tmp_path: Path) -> None:
    """The container's smb.conf is checked with the host's testparm (the same Samba as
    the template's) before any job starts: refused, the share fails and nothing runs."""
    import dataclasses

    spec = share("finance", vmid=9000)
    ctx = context(tmp_path, spec)
    vmlist(ctx)
    subject = LxcModePlugin()
    changes = subject.smbgw_plan_share(ctx, "finance", spec, None)
    planned = ctx.plugin_scratch(PLUGIN)["planned"]
    planned["finance"] = dataclasses.replace(planned["finance"], smb_conf=planned["finance"].smb_conf.replace(
        "[finance]", "[finance]\n\tread only = maybe"))
    with pytest.raises(ValueError, match=r"testparm refuses the container's smb\.conf: .*not boolean"):
        subject.smbgw_apply_share(ctx, "finance", spec, changes)
    assert "submit" not in ctx.plugin_scratch(PLUGIN) and ctx.plugin_state(PLUGIN).get(VMIDS) is None


class Ranges:
    """The plugin host as far as `ctx.guest_id_ranges` asks it (the ad plugin's answer)."""

    def __init__(self, *ranges: tuple[int, int]) -> None:
        from smbgw_agent.model.idranges import IdRange
        self.ranges = [IdRange(low, high) for low, high in ranges]
        self.targets: list[str] = []

    def guest_id_ranges(self, ctx: Any, target: str) -> list[Any]:
        self.targets.append(target)
        return self.ranges

    def share_parameters(self, ctx: Any, share: ShareSpec, target: str) -> list[tuple[str, str]]:
        return []

    def global_parameters(self, ctx: Any, target: str) -> list[tuple[str, str]]:
        return []

    def guest_steps(self, ctx: Any, target: str) -> list[Any]:
        return []


def test_the_domain_ranges_are_passed_through_and_must_not_meet_the_containers_own(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    spec = share("finance", vmid=9000)
    ctx = context(tmp_path, spec)
    vmlist(ctx)
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text("root:100000:65536\nroot:200000:800000\nroot:70000:10000\n")
    ctx.host = Ranges((200000, 999999), (70000, 79999))
    work, _ = LxcModePlugin().plan_work(ctx, spec)
    lines = [line.config_value() for line in work.idmap]
    for kind in "ug":
        assert f"{kind} 70000 70000 10000" in lines and f"{kind} 200000 200000 800000" in lines, lines
    assert ctx.host.targets == ["lxc:9000"]
    ctx.host = Ranges((100000, 999999))  # overlaps root's 100000-165535
    with pytest.raises(ValueError, match="overlap 100000-165535"):
        LxcModePlugin().plan_work(ctx, spec)
    ctx.host = Ranges((2000000, 2999999))  # not in /etc/subuid
    with pytest.raises(ValueError, match="add root:2000000:1000000"):
        LxcModePlugin().plan_work(ctx, spec)


class Steps(Ranges):
    """The plugin host answering `ctx.guest_steps` with one step and the domain's globals."""

    def __init__(self, inputs: str = "v1") -> None:
        super().__init__()
        from smbgw_agent.platform.guests import GuestStep
        self.ran: list[str] = []
        self.step = GuestStep("ad:join", inputs, lambda shell, progress: self.ran.append(shell.target) or "joined",
                              what="make it a member of SMBGW.TEST")

    def guest_steps(self, ctx: Any, target: str) -> list[Any]:
        return [self.step]

    def global_parameters(self, ctx: Any, target: str) -> list[tuple[str, str]]:
        return [("server role", "member server"), ("security", "ADS")]


def test_a_guest_step_runs_on_create_and_again_only_when_its_inputs_change(tmp_path: Path) -> None:
    spec = share(vmid=9000)
    ctx = context(tmp_path, spec)
    vmlist(ctx)
    ctx.host = Steps()
    work, changes = LxcModePlugin().plan_work(ctx, spec)
    assert work.create and [s.name for s in work.steps] == ["ad:join"] and work.step_record == {"ad:join": "v1"}
    assert changes[0].detail.endswith("; make it a member of SMBGW.TEST")
    # The container exists and the step ran with these inputs: nothing to do.
    live_container(ctx, spec, 9000)
    vmlist(ctx, v9000="pve1")
    ctx.plugin_state(PLUGIN).set(STEPS, {"finance": {"ad:join": "v1"}})
    work, changes = LxcModePlugin().plan_work(ctx, spec)
    assert not work.steps and work.step_record is None
    assert not any("member" in c.detail for c in changes)
    # The password file was replaced: the step's inputs differ, so it runs again.
    ctx.host = Steps("v2")
    work, changes = LxcModePlugin().plan_work(ctx, spec)
    assert [s.inputs for s in work.steps] == ["v2"] and work.step_record == {"ad:join": "v2"}
    assert [c.detail for c in changes if "member" in c.detail] == ["container 9000: make it a member of SMBGW.TEST"]
    # Stopped and left stopped (autostart = false): the step waits until it runs.
    ctx.plugin_state(PLUGIN).set(STEPS, {})
    stopped = share(vmid=9000, autostart=False)
    subject = LxcModePlugin()
    subject._observer.value = Observation(at=1e12, status={9000: plugin.STOPPED})
    work, _ = subject.plan_work(ctx, stopped)
    assert not work.steps


def test_the_domains_globals_replace_the_containers_own_in_place(tmp_path: Path) -> None:
    spec = share(vmid=9000)
    ctx = context(tmp_path, spec)
    ctx.host = Steps()
    text = LxcModePlugin()._smb_conf(ctx, spec, 9000)
    head = text.split("[finance]")[0]
    assert head.count("server role =") == 1 and "\tserver role = member server\n" in head, head
    assert head.index("server role") < head.index("netbios name = SMBGW-9000") < head.index("security = ADS")


def test_the_container_shell_runs_through_pct_exec_with_the_guests_own_path() -> None:
    from smbgw_plugins.mode_lxc.pct import Pct
    from smbgw_plugins.mode_lxc.shell import ContainerShell

    from smbgw_agent.effects.runner import Completed

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[list[str], str | None, list[str]]] = []

        def run(self, argv: Any, *, timeout: Any = None, check: bool = True, stdin: str | None = None,
                secrets: Any = (), env: Any = None) -> Completed:
            self.calls.append((list(argv), stdin, list(secrets)))
            return Completed(tuple(argv), 0, "", "", 0.0)

    recorder = Recorder()
    shell = ContainerShell(Pct(recorder), 9000)  # type: ignore[arg-type]
    shell.run(["net", "ads", "join"], stdin="pw\n", secrets=["pw"], env={"PATH": "/opt/node/bin", "LANG": "C"})
    argv, stdin, secrets = recorder.calls[0]
    assert argv[1:4] == ["exec", "9000", "--"], argv
    assert argv[argv.index("--") + 1:] == ["env", "LANG=C", "net", "ads", "join"], argv
    assert "/opt/node/bin" not in " ".join(argv) and stdin == "pw\n" and secrets == ["pw"]
    shell.run(["testparm", "-s"])
    assert recorder.calls[1][0][-3:] == ["--", "testparm", "-s"], "no env: the argv as it is"


def checked_step(found: list[str | None], interval: float = 60.0, repair: float = 3600.0) -> Any:
    from smbgw_agent.platform.guests import GuestStep

    def check(shell: Any) -> str | None:
        reason = found.pop(0)
        if reason == "raise":
            raise RuntimeError("the check itself broke")
        return reason

    return GuestStep("ad:join", "v1", lambda shell, progress: "joined", what="make it a member of SMBGW.TEST",
                     check=check, check_interval=interval, repair_min_interval=repair)


def test_guest_checks_run_at_their_interval_in_running_containers_only() -> None:
    from smbgw_plugins.proxmox.guestchecks import GuestChecks

    checks = GuestChecks("container")
    found: list[str | None] = ["trust broken", "raise"]
    step = checked_step(found, interval=60.0)
    shells: list[int] = []

    def shell_for(vmid: int) -> Any:
        shells.append(vmid)
        return None

    assert checks.run(shell_for, {9000: [step], 9001: [step]}, [9000], clock=1000.0)
    assert checks.value.broken == {9000: {"ad:join": "trust broken"}} and found == ["raise"], "9001 is stopped"
    assert not checks.run(shell_for, {9000: [step]}, [9000], clock=1030.0)
    assert found == ["raise"], "not due yet: the last finding stands"
    assert checks.run(shell_for, {9000: [step]}, [9000], clock=1061.0)
    assert shells == [9000, 9000], "only in the running container, only when due"
    assert checks.value.broken == {}, "a check that raises is no evidence"


def test_a_failed_check_runs_the_step_again_once_per_repair_interval(tmp_path: Path) -> None:
    from smbgw_plugins.proxmox.guestchecks import CheckReading

    spec = share(vmid=9000)
    ctx = context(tmp_path, spec)
    live_container(ctx, spec, 9000)
    vmlist(ctx, v9000="pve1")
    ctx.plugin_state(PLUGIN).set(STEPS, {"finance": {"ad:join": "v1"}})
    ctx.plugin_state(PLUGIN).set(VMIDS, {"finance": 9000})
    host = Steps()
    host.step = checked_step([], repair=3600.0)
    ctx.host = host
    subject = LxcModePlugin()
    subject._observer.value = Observation(at=time.time(), status={9000: plugin.RUNNING}, answers={9000: True})
    subject._checks.value = CheckReading(time.time(), {9000: {"ad:join": "the domain no longer accepts it"}})
    work, changes = subject.plan_work(ctx, spec)
    assert [s.name for s in work.steps] == ["ad:join"]
    assert "container 9000: make it a member of SMBGW.TEST again (the domain no longer accepts it)" in \
        [c.detail for c in changes]
    found = subject.smbgw_health(ctx)
    assert any(f.check == "lxc-guest" and "no longer accepts" in f.detail for f in found), found
    work, changes = subject.plan_work(ctx, spec)
    assert not work.steps, "repaired once within the interval: reported, not looped"
    # A reading taken before the share's last job ended (the repair) says nothing.
    subject._checks.value = CheckReading(100.0, {9000: {"ad:join": "old news"}})
    assert subject._broken(9000, after=150.0) == {}, "the job that ended at 150 may have repaired it"
    assert subject._broken(9000, after=50.0) == {"ad:join": "old news"}
