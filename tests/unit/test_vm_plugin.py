"""The VM mode's planning without a VM (plugins/mode_vm): the template it clones and the
ones it refuses, VMIDs, a VM that is someone else's, what an edit needs (a reload, or a
reboot, said in the plan), the user-data it renders (cloud-init reads back exactly the
values, whatever characters a share's name holds), and what it reads from pvesh and
storage.cfg."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from smbgw_plugins.mode_vm import pvesh, template, userdata, vmconf
from smbgw_plugins.mode_vm.plugin import PLUGIN, USERDATA, VmModePlugin, config_path, digest, spec_of
from smbgw_plugins.mode_vm.table import parse_share_table
from smbgw_plugins.proxmox.guestconf import parse_guest_config
from smbgw_plugins.proxmox.guestmode import PUSHED, VMIDS
from smbgw_plugins.proxmox.passdb import digest as users_digest
from smbgw_plugins.proxmox.storage import StorageError, snippets_dir
from smbgw_plugins.proxmox.table import parse_agent_table

from smbgw_agent.effects.runner import Runner
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.changes import CREATE, UPDATE
from smbgw_agent.platform.context import PassContext

PROXMOX = {"vmid_range": [9000, 9009], "bridge": "vmbr0", "storage": "local-lvm", "snippets_storage": "local"}
STORAGE_CFG = "dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,snippets\n"
CLOUDINIT_TEMPLATE = """name: smbgw-template
template: 1
tags: smbgw-template
ide2: local:8000/vm-8000-cloudinit.qcow2,media=cdrom
virtio0: local:8000/base-8000-disk-0.qcow2,size=3G
"""


def share(name: str = "finance", **vm: Any) -> ShareSpec:
    table = parse_share_table({"address": "10.0.0.71/24", **vm})
    return ShareSpec(name=name, file=f"{name}.toml", path=f"/srv/{name}", mode="vm", sections={"vm": table})


def context(tmp_path: Path, *shares: ShareSpec, proxmox: dict[str, Any] | None = None) -> Any:
    paths = Paths.under(tmp_path / "root")
    for spec in shares:
        paths.host(spec.path).mkdir(parents=True, exist_ok=True)
    sections = {"proxmox": parse_agent_table(proxmox or PROXMOX)}
    config = AgentConfig(node="pve1", allowed_roots=("/srv",), plugin_sections=sections)
    storage = paths.host("/etc/pve/storage.cfg")
    storage.parent.mkdir(parents=True, exist_ok=True)
    storage.write_text(STORAGE_CFG)
    return PassContext(paths=paths, config=config, runner=Runner(), services=None,  # type: ignore[arg-type]
                       desired={s.key: s for s in shares}, applied={})


def vm_config(ctx: Any, vmid: int, text: str, node: str = "pve1") -> None:
    path = ctx.paths.host(f"/etc/pve/nodes/{node}/qemu-server/{vmid}.conf")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    link = ctx.paths.host("/etc/pve/qemu-server")
    if not link.exists() and node == "pve1":
        link.symlink_to(f"nodes/{node}/qemu-server")


def plan(subject: VmModePlugin, ctx: Any, spec: ShareSpec) -> list[tuple[str, str]]:
    return [(c.action, c.detail) for c in subject.smbgw_plan_share(ctx, spec.name, spec, None)]


def live_vm(ctx: Any, spec: ShareSpec, vmid: int, **changes: str) -> None:
    """The config `qm clone` + `qm set` would have left for `spec`, with `changes`."""
    options = vmconf.wanted_options(spec.name, spec.file, spec_of(spec), "vmbr0", "local", "pve1")
    options["net0"] = "virtio=BC:24:11:00:00:01,bridge=vmbr0"
    options.update(changes)
    lines = [f"#{options.pop('description').replace(':', '%3A')}"]
    lines += [f"{key}: {value}" for key, value in sorted(options.items())]
    vm_config(ctx, vmid, "\n".join(lines) + "\n")


def test_a_new_share_is_cloned_from_the_tagged_template_with_the_top_free_vmid(tmp_path: Path) -> None:
    spec = share()
    ctx = context(tmp_path, spec)
    vm_config(ctx, 8000, CLOUDINIT_TEMPLATE)
    [(action, detail)] = plan(VmModePlugin(), ctx, spec)
    assert action == CREATE
    assert "clone VM 9009 (smbgw-finance) from template 8000 (linked clone)" in detail
    assert "virtiofs mapping smbgw-finance" in detail and "10.0.0.71/24" in detail


@pytest.mark.parametrize(("config", "wanted", "reason"), [
    (None, 8000, "VM template 8000 does not exist"),
    (CLOUDINIT_TEMPLATE.replace("template: 1\n", ""), 8000, "VM 8000 is not a template"),
    (CLOUDINIT_TEMPLATE.replace("ide2: local:8000/vm-8000-cloudinit.qcow2,media=cdrom\n", ""), 8000,
     "has no cloud-init drive"),
    (CLOUDINIT_TEMPLATE.replace("tags: smbgw-template\n", ""), None, "no VM template to clone"),
])
def test_a_template_that_cannot_serve_is_refused_before_anything_is_made(
        tmp_path: Path, config: str | None, wanted: int | None, reason: str) -> None:
    spec = share(**({"template": wanted} if wanted else {}))
    ctx = context(tmp_path, spec)
    if config is not None:
        vm_config(ctx, 8000, config)
    with pytest.raises(ValueError, match=reason):
        plan(VmModePlugin(), ctx, spec)


def test_two_tagged_templates_are_ambiguous(tmp_path: Path) -> None:
    ctx = context(tmp_path, share())
    vm_config(ctx, 8000, CLOUDINIT_TEMPLATE)
    vm_config(ctx, 8001, CLOUDINIT_TEMPLATE, node="pve2")
    with pytest.raises(template.TemplateError, match="8000, 8001 are all tagged"):
        template.find(ctx.paths.host("/etc/pve"), None)


def test_a_vmid_in_use_by_another_guest_is_refused(tmp_path: Path) -> None:
    spec = share(vmid=9003)
    ctx = context(tmp_path, spec)
    vm_config(ctx, 8000, CLOUDINIT_TEMPLATE)
    path = ctx.paths.host("/etc/pve/.vmlist")
    path.write_text(json.dumps({"version": 1, "ids": {"9003": {"node": "pve2", "type": "qemu", "version": 1}}}))
    with pytest.raises(ValueError, match="VMID 9003 is in use by a qemu guest on node pve2"):
        plan(VmModePlugin(), ctx, spec)


def test_a_vm_without_the_shares_tags_is_never_touched(tmp_path: Path) -> None:
    spec = share(vmid=9003)
    ctx = context(tmp_path, spec)
    vm_config(ctx, 9003, "name: web\ntags: prod\nmemory: 4096\n")
    with pytest.raises(ValueError, match="VM 9003 is not this share's"):
        plan(VmModePlugin(), ctx, spec)


def settled(ctx: Any, spec: ShareSpec, vmid: int) -> VmModePlugin:
    """A plugin whose state says the VM got the current smb.conf and user-data."""
    subject = VmModePlugin()
    state = ctx.plugin_state(PLUGIN)
    state.set(VMIDS, {spec.key: vmid})
    subject.plan_work(ctx, spec)
    work = ctx.plugin_scratch(PLUGIN)
    work.clear()
    smb_conf = subject._smb_conf(ctx, spec, vmid)
    text = userdata.UserData(spec.name, spec.file, "pve1", "smbgw-finance", "smbgw-finance", spec.path,
                             smb_conf).render()
    state.set(PUSHED, {spec.key: digest(smb_conf)})
    state.set(USERDATA, {spec.key: digest(text)})
    return subject


def test_a_vm_that_matches_needs_nothing_and_an_edit_is_a_reload(tmp_path: Path) -> None:
    spec = share()
    ctx = context(tmp_path, spec)
    live_vm(ctx, spec, 9009)
    subject = settled(ctx, spec, 9009)
    ctx.plugin_state(PLUGIN).set("users", {spec.key: users_digest([])})
    assert plan(subject, ctx, spec) == []
    edited = ShareSpec(name=spec.name, file=spec.file, path=spec.path, mode="vm", sections=spec.sections,
                       comment="Finance team", read_only=True)
    [(action, detail)] = plan(subject, ctx, edited)
    assert action == UPDATE
    assert "write smb.conf in VM 9009 through the guest agent and reload smbd (no reboot)" in detail


def test_more_memory_says_it_needs_a_reboot(tmp_path: Path) -> None:
    spec = share()
    ctx = context(tmp_path, spec)
    live_vm(ctx, spec, 9009, memory="1024")
    details = [detail for _action, detail in plan(VmModePlugin(), ctx, spec)]
    assert any("set memory 1024 -> 2048 (needs a reboot" in detail for detail in details)


def test_a_changed_bridge_keeps_the_mac_proxmox_gave_the_nic(tmp_path: Path) -> None:
    config = parse_guest_config("net0: virtio=BC:24:11:00:00:01,bridge=vmbr1\n")
    [change] = [d for d in vmconf.differences(config, {"net0": "bridge=vmbr0"})]
    assert change.wanted == "virtio=BC:24:11:00:00:01,bridge=vmbr0" and not change.at_boot
    assert vmconf.set_arguments(9000, {"net0": "bridge=vmbr0"}) == ["set", "9000", "--net0", "virtio,bridge=vmbr0"]


@pytest.mark.parametrize("name", ["finance", "Q3 \"plans\": #1 {draft}", "it's [not] 'quoted'", "ünïcødé & <tag>"])
def test_user_data_holds_exactly_the_values_whatever_a_name_holds(name: str) -> None:
    smb_conf = f"[global]\n\tserver role = standalone server\n[{name}]\n\tpath = /srv/x\n"
    text = userdata.UserData(name, "x.toml", "pve1", "smbgw-x", "smbgw-x", f"/srv/{name}", smb_conf).render()
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert data["hostname"] == "smbgw-x"
    assert data["mounts"] == [["smbgw-x", f"/srv/{name}", "virtiofs", "defaults,nofail", "0", "0"]]
    written = {item["path"]: item for item in data["write_files"]}
    assert base64.b64decode(written["/etc/samba/smb.conf"]["content"]).decode() == smb_conf
    assert f"RequiresMountsFor=/srv/{name}\n" in written["/etc/systemd/system/smbd.service.d/smbgw-share.conf"][
        "content"]
    assert set(data) == {"hostname", "preserve_hostname", "manage_etc_hosts", "locale", "package_update",
                         "package_upgrade", "mounts", "write_files", "runcmd"}


def test_user_data_without_cloud_init_on_the_node_is_said_to_be_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert userdata.check(Runner(), "#cloud-config\n") == "unchecked: this node has no cloud-init command"


def test_pvesh_version_and_the_node_without_virtiofs() -> None:
    assert pvesh.parse_version('{"version": "8.4.1", "release": "8.4", "repoid": "2a5fa54a"}') == (8, 4)
    assert pvesh.virtiofs_refusal((8, 4)) is None and pvesh.virtiofs_refusal((9, 0)) is None
    refusal = pvesh.virtiofs_refusal((8, 3))
    assert refusal is not None and "Proxmox VE 8.4 or later" in refusal and "8.3" in refusal
    for bad in ("", "[]", '{"release": "8"}', '{"release": "8.x"}', '{"release": 8.4}', "x" * (5 << 20)):
        with pytest.raises(pvesh.PveshError):
            pvesh.parse_version(bad)


def test_pvesh_directory_mappings_are_read_strictly() -> None:
    text = json.dumps([{"id": "smbgw-finance", "description": "smbgw-agent share finance: managed by smbgw-agent",
                        "map": ["node=pve1,path=/tank/finance", "node=pve2,path=/tank/finance"]},
                       {"id": "isos", "map": ["node=pve1,path=/srv/iso"]}])
    found = pvesh.parse_mappings(text)
    assert found["smbgw-finance"].ours and found["smbgw-finance"].paths == {"pve1": "/tank/finance",
                                                                             "pve2": "/tank/finance"}
    assert not found["isos"].ours
    for bad in ("{}", '[{"map": []}]', '[{"id": "a", "map": ["node"]}]', "not json"):
        with pytest.raises(pvesh.PveshError):
            pvesh.parse_mappings(bad)


def test_snippets_storage_must_be_a_directory_storage_with_snippets(tmp_path: Path) -> None:
    cfg = tmp_path / "storage.cfg"
    cfg.write_text("dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup\n\n"
                   "lvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n\n"
                   "nfs: shared\n\tserver 192.0.2.5\n\texport /x\n\tcontent snippets,images\n")
    with pytest.raises(StorageError, match="pvesm set local --content backup,iso,snippets,vztmpl"):
        snippets_dir(cfg, "local")
    with pytest.raises(StorageError, match="holds no files"):
        snippets_dir(cfg, "local-lvm")
    with pytest.raises(StorageError, match="not defined"):
        snippets_dir(cfg, "nope")
    assert snippets_dir(cfg, "shared") == "/mnt/pve/shared/snippets"
    cfg.write_text("dir: local\n\tpath /var/lib/vz\n\tcontent iso,snippets\n")
    assert snippets_dir(cfg, "local") == "/var/lib/vz/snippets"


def test_a_removed_share_plans_the_vm_destroyed_and_its_data_kept(tmp_path: Path) -> None:
    spec = share()
    ctx = context(tmp_path)
    ctx.plugin_state(PLUGIN).set(VMIDS, {spec.key: 9009})
    [change] = VmModePlugin().smbgw_plan_share(ctx, spec.name, None, spec)
    assert "stop and destroy VM 9009 (qm destroy --purge)" in change.detail
    assert "the data in /srv/finance stays" in change.detail


def test_config_path_is_this_nodes() -> None:
    assert config_path(9000) == "/etc/pve/qemu-server/9000.conf"


def test_a_snippets_storage_without_snippets_is_refused_in_the_plan(tmp_path: Path) -> None:
    spec = share()
    ctx = context(tmp_path, spec)
    vm_config(ctx, 8000, CLOUDINIT_TEMPLATE)
    ctx.paths.host("/etc/pve/storage.cfg").write_text("dir: local\n\tpath /var/lib/vz\n\tcontent iso\n")
    with pytest.raises(ValueError, match=r"snippets_storage: storage 'local' does not allow snippets: add them "
                                         r"\(pvesm set local --content iso,snippets\)"):
        plan(VmModePlugin(), ctx, spec)


def test_a_vm_made_for_a_share_no_file_declares_is_reported_never_destroyed(tmp_path: Path) -> None:
    spec = share("old")
    ctx = context(tmp_path)
    live_vm(ctx, spec, 9007)
    visitor = share("visitor")  # made by node pve2's agent, moved here: not this node's orphan
    options = vmconf.wanted_options(visitor.name, visitor.file, spec_of(visitor), "vmbr0", "local", "pve2")
    lines = [f"#{options.pop('description').replace(':', '%3A')}", *(f"{k}: {v}" for k, v in sorted(options.items()))]
    vm_config(ctx, 9006, "\n".join(lines) + "\n")
    [finding] = VmModePlugin().smbgw_health(ctx)
    assert finding.check == "vm-orphan" and not finding.ok
    assert "VM 9007 (share-old)" in finding.detail and "qm destroy 9007 --purge" in finding.detail
    assert vm_conf_exists(ctx, 9007)


def vm_conf_exists(ctx: Any, vmid: int) -> bool:
    return bool(ctx.paths.host(f"/etc/pve/nodes/pve1/qemu-server/{vmid}.conf").exists())


SHARED_STORAGE_CFG = STORAGE_CFG + "\ndir: shared-dir\n\tpath /mnt/pve/shared-dir\n\tcontent images,snippets\n" \
    "\tshared 1\n\nlvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n"
SHARED_TEMPLATE = CLOUDINIT_TEMPLATE.replace("local:8000", "shared-dir:8000")


def ha_share(name: str = "finance", **vm: Any) -> ShareSpec:
    spec = share(name, **vm)
    return ShareSpec(name=spec.name, file=spec.file, path=spec.path, mode="vm",
                     sections={**spec.sections, "ha": {"proxmox_ha": True}})


def test_proxmox_ha_needs_the_vms_disks_on_shared_storage(tmp_path: Path) -> None:
    spec = ha_share()
    ctx = context(tmp_path, spec)
    vm_config(ctx, 8000, CLOUDINIT_TEMPLATE)
    with pytest.raises(ValueError, match="needs the VM's disks on storage every node reaches: 'local' is this node's"):
        plan(VmModePlugin(), ctx, spec)
    ctx.paths.host("/etc/pve/storage.cfg").write_text(SHARED_STORAGE_CFG)
    vm_config(ctx, 8000, SHARED_TEMPLATE)
    ctx.paths.host("/etc/pve/nodes/pve2").mkdir(parents=True)
    subject = VmModePlugin()
    [(action, detail)] = plan(subject, ctx, spec)
    assert action == CREATE and "under Proxmox HA" in detail
    work = ctx.plugin_scratch(PLUGIN)["planned"]["finance"]
    assert work.ha == "add"
    host_path = str(ctx.paths.host("/srv/finance"))
    assert work.mapping_paths == {"pve1": host_path, "pve2": host_path}, "HA may start it on any node"
    full = ha_share(full_clone=True)  # a full clone's disk goes to [proxmox] storage, which is local-lvm here
    full_ctx = context(tmp_path / "full", full)
    full_ctx.paths.host("/etc/pve/storage.cfg").write_text(SHARED_STORAGE_CFG)
    vm_config(full_ctx, 8000, SHARED_TEMPLATE)
    with pytest.raises(ValueError, match="'local-lvm' is this node's"):
        plan(VmModePlugin(), full_ctx, full)


def test_drain_relocates_ha_vms_and_refuses_the_others_unless_forced(tmp_path: Path) -> None:
    from smbgw_agent.platform.commands import CommandRefused

    ha, plain = ha_share("finance"), share("hr")
    ctx = context(tmp_path, ha, plain)
    for node in ("pve1", "pve2"):
        ctx.paths.host(f"/etc/pve/nodes/{node}").mkdir(parents=True, exist_ok=True)
    ctx.paths.host("/etc/pve/local").symlink_to("nodes/pve1")
    live_vm(ctx, ha, 9009)
    live_vm(ctx, plain, 9008)
    ctx.plugin_state(PLUGIN).set(VMIDS, {"finance": 9009, "hr": 9008})
    subject = VmModePlugin()
    with pytest.raises(CommandRefused, match="name the node to move them to with --target"):
        subject._start_drain(ctx, {})
    with pytest.raises(CommandRefused, match=r"VM 9008 \(share hr: not under Proxmox HA"):
        subject._start_drain(ctx, {"target": "pve2"})
    with pytest.raises(CommandRefused, match="no such node"):
        subject._start_drain(ctx, {"target": "pve7", "force": True})
    job = subject._start_drain(ctx, {"target": "pve2", "force": True})
    assert job is not None and job.id == "vm:drain"
    # From now on no VM is made here for a new share.
    new = share("sales", vmid=9001)
    vm_config(ctx, 8000, CLOUDINIT_TEMPLATE)
    with pytest.raises(ValueError, match=r"this node is drained \(smbgwctl drain"):
        plan(VmModePlugin(), context(tmp_path, new), new)


class CheckedSteps:
    """The plugin host answering `ctx.guest_steps` with the domain's step, which has a
    check (as plugins/ad/guest.py gives), and the member server's globals."""

    def __init__(self) -> None:
        from smbgw_agent.platform.guests import GuestStep
        self.step = GuestStep("ad:join", "v1", lambda shell, progress: "joined", what="make it a member of SMBGW.TEST",
                              check=lambda shell: None, check_interval=60.0, repair_min_interval=3600.0)

    def guest_steps(self, ctx: Any, target: str) -> list[Any]:
        return [self.step]

    def share_parameters(self, ctx: Any, share: ShareSpec, target: str) -> list[tuple[str, str]]:
        return []

    def global_parameters(self, ctx: Any, target: str) -> list[tuple[str, str]]:
        return [("server role", "member server"), ("security", "ADS")]


def test_a_failed_check_inside_the_vm_runs_its_step_again_once_per_repair_interval(tmp_path: Path) -> None:
    """A VM's machine account deleted in the domain: the check (run by the VM mode's
    checks job through the guest agent) finds it, the next plan runs the join again, and
    a second finding within `repair_min_interval` is reported, not looped."""
    import time

    from smbgw_plugins.proxmox.guestchecks import CheckReading
    from smbgw_plugins.proxmox.guestmode import STEPS

    spec = share()
    ctx = context(tmp_path, spec)
    ctx.host = CheckedSteps()
    live_vm(ctx, spec, 9009)
    subject = settled(ctx, spec, 9009)
    state = ctx.plugin_state(PLUGIN)
    state.set("users", {spec.key: users_digest([])})
    state.set(STEPS, {spec.key: {"ad:join": "v1"}})
    assert plan(subject, ctx, spec) == [], "joined, nothing found: nothing to do"
    subject._checks.value = CheckReading(time.time(), {9009: {"ad:join": "the domain no longer accepts it"}})
    work, changes = subject.plan_work(ctx, spec)
    assert [step.name for step in work.steps] == ["ad:join"]
    assert "VM 9009: make it a member of SMBGW.TEST again (the domain no longer accepts it)" in \
        [change.detail for change in changes]
    found = subject.smbgw_health(ctx)
    assert any(f.check == "vm-guest" and "VM 9009 of share finance: ad:join: the domain no longer accepts it"
               in f.detail for f in found), found
    work, _changes = subject.plan_work(ctx, spec)
    assert not work.steps, "run again once within the interval: reported, not looped"


def test_net0s_mac_is_read_from_the_vm_config() -> None:
    assert vmconf.nic_mac(parse_guest_config("net0: virtio=BC:24:11:42:C8:C7,bridge=vmbr0,firewall=1\n")) == \
        "bc:24:11:42:c8:c7"
    assert vmconf.nic_mac(parse_guest_config("net0: e1000=BC:24:11:00:00:01,bridge=vmbr0\n")) == "bc:24:11:00:00:01"
    assert vmconf.nic_mac(parse_guest_config("net0: bridge=vmbr0\n")) is None
    assert vmconf.nic_mac(parse_guest_config("cores: 2\n")) is None


def test_the_checks_look_only_into_vms_whose_agent_answers_and_whose_job_is_not_at_work(tmp_path: Path) -> None:
    """A check during the share's own job would find a join half done: it waits."""
    from smbgw_plugins.mode_vm.plugin import Observation

    from smbgw_agent.platform.jobs import RUNNING, SUCCEEDED, JobRecord

    looked: list[str] = []

    class Host(CheckedSteps):
        def __init__(self) -> None:
            from smbgw_agent.platform.guests import GuestStep
            self.step = GuestStep("ad:join", "v1", lambda shell, progress: "joined", what="join",
                                  check=lambda shell: looked.append(shell.target), check_interval=0.0)

    class Jobs:
        state = RUNNING

        def record(self, job_id: str) -> JobRecord | None:
            return JobRecord(job_id, PLUGIN, "share:finance", state=self.state) if job_id == "vm:finance" else None

    spec, other = share(), share("sales", vmid=9008)
    ctx = context(tmp_path, spec, other)
    ctx.host, ctx.jobs = Host(), Jobs()
    ctx.plugin_state(PLUGIN).set(VMIDS, {"finance": 9009, "sales": 9008})
    subject = VmModePlugin()
    subject._observer.value = Observation(at=1.0, status={9009: "running", 9008: "running"},
                                          agent={9009: True, 9008: False})
    [checks] = [s for s in subject.smbgw_schedules(ctx) if s.id == "vm:guest-checks"]
    checks.run(None)  # type: ignore[arg-type]
    assert looked == [], "9009's job is at work in it; 9008's guest agent does not answer"
    Jobs.state = SUCCEEDED
    checks.run(None)  # type: ignore[arg-type]
    assert looked == ["vm:9009"]
