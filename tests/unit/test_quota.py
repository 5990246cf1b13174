"""The quota plugin's own logic: its tables, the mount table, the backends' tool output
(recorded from btrfs-progs 6.2, zfs-fuse 0.7, xfsprogs 6.1 and quota 4.06 on real file
systems), project id allocation, and the backend choice."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from smbgw_plugins.quota import QuotaError, backend_name, human
from smbgw_plugins.quota.backend import Reading
from smbgw_plugins.quota.btrfs import BtrfsError, parse_qgroup_show
from smbgw_plugins.quota.project import ProjectError, ProjectIds, parse_repquota_csv, parse_xfs_report
from smbgw_plugins.quota.zfs import ZfsError, parse_zfs_get

from smbgw_agent.effects.mounts import Mount, mount_of, parse_mountinfo
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.pluginhost import PluginHost
from smbgw_agent.platform.pluginstate import PluginState
from smbgw_agent.reconcile.scanner import ShareScanner

DATA = Path(__file__).resolve().parents[1] / "data"
MOUNTINFO = textwrap.dedent("""\
    22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
    30 22 7:0 / /tank rw,relatime shared:5 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
    31 30 0:40 / /tank/vm\\040disks rw,relatime - zfs tank/vm rw,xattr,noacl
    32 22 0:41 / /srv/xfs rw,relatime - xfs /dev/sdb rw,attr2,inode64,prjquota
    garbage line without separator
""")


def test_the_recorded_qgroup_output_parses() -> None:
    groups = parse_qgroup_show((DATA / "btrfs-6.2-qgroup-show.txt").read_text())
    assert groups["0/256"].referenced == 3162112 and groups["0/256"].max_referenced == 10485760
    assert groups["0/5"].max_referenced is None


@pytest.mark.parametrize("text", [
    "", "ERROR: something\n", "Qgroupid Referenced\n0/5 1\n",
    "Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path\n0/5 lots 1 none none x\n",
    "Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path\nfive 1 1 none none x\n",
])
def test_garbage_qgroup_output_is_a_clear_error(text: str) -> None:
    with pytest.raises(BtrfsError):
        parse_qgroup_show(text)


def test_the_mount_holding_a_path_is_the_longest_prefix(tmp_path: Path) -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.point for m in mounts] == ["/", "/tank", "/tank/vm disks", "/srv/xfs"]
    assert mount_of("/tank/finance", mounts).fstype == "btrfs"  # type: ignore[union-attr]
    assert mount_of("/tank/vm disks/a", mounts).source == "tank/vm"  # type: ignore[union-attr]
    assert mount_of("/tankard", mounts).fstype == "ext4"  # type: ignore[union-attr]
    assert mount_of("/srv/xfs/p", mounts).has_option("prjquota")  # type: ignore[union-attr]


def test_the_backend_follows_the_file_system_and_says_what_it_cannot_do() -> None:
    btrfs = Mount("/tank", "btrfs", "/dev/loop0", "rw")
    assert backend_name({"backend": "auto"}, btrfs, "/tank/a") == "btrfs"
    assert backend_name({}, Mount("/z", "fuse.zfs", "z", "rw"), "/z/a") == "zfs"
    assert backend_name({"backend": "xfs"}, Mount("/srv/xfs", "xfs", "/dev/sdb", "rw"), "/srv/xfs/p") == "xfs"
    with pytest.raises(QuotaError, match="backend = 'zfs', but /tank/a is on btrfs"):
        backend_name({"backend": "zfs"}, btrfs, "/tank/a")
    with pytest.raises(QuotaError, match=r"is on tmpfs .* which has no quotas"):
        backend_name({"backend": "auto"}, Mount("/run", "tmpfs", "tmpfs", "rw"), "/run/x")
    with pytest.raises(QuotaError, match="is on nfs4"):
        backend_name({"backend": "auto"}, Mount("/mnt", "nfs4", "nas:/x", "rw"), "/mnt/x")
    assert human(8 << 20) == "8M" and human(None) == "no limit" and human(1000) == "1000 bytes"


@pytest.fixture
def scanner(tmp_path: Path) -> ShareScanner:
    (tmp_path / "srv").mkdir()
    (tmp_path / "etc/smbgw/shares.d").mkdir(parents=True)
    host = PluginHost({"mode_native": "smbgw_plugins.mode_native:NativeModePlugin",
                       "quota": "smbgw_plugins.quota:QuotaPlugin"})
    return ShareScanner(Paths.under(tmp_path), host, AgentConfig(node="n1", allowed_roots=("/srv",)))


def problems(scanner: ShareScanner, text: str) -> dict[str | None, tuple[int | None, str]]:
    file = scanner.directory / "s.toml"
    file.write_text(textwrap.dedent(text))
    return {p.key: (p.line, p.message) for p in scanner.read_one(file).problems}


def test_every_problem_of_a_quota_table_has_its_line(scanner: ShareScanner) -> None:
    found = problems(scanner, """\
        path = "/srv/a"
        [quota]
        size = "500GB"
        backend = "ntfs"
        enforce = "yes"
        colour = "red"
        [quota.thresholds]
        warning = 90
        high = 85
        critical = 101
    """)
    assert found["quota.size"][0] == 3 and "sizes are binary" in found["quota.size"][1]
    assert found["quota.backend"][0] == 4 and "must be one of: auto, btrfs, zfs, xfs, ext4" in found["quota.backend"][1]
    assert found["quota.enforce"][0] == 5
    assert found["quota.colour"][0] == 6 and "unknown key" in found["quota.colour"][1]
    assert found["quota.thresholds.critical"][0] == 10
    assert "must rise" in found["quota.thresholds"][1]


@pytest.mark.parametrize(("size", "message"), [
    ("0", "out of range"), ("-5", "out of range"), ('"10 G"', "no space"), ('"1e3G"', "not a size"),
    ('"500GB"', "sizes are binary"), ("1.5", "must be a size string or integer"), ('"12.5"', "whole number"),
])
def test_bad_sizes(scanner: ShareScanner, size: str, message: str) -> None:
    found = problems(scanner, f'path = "/srv/a"\n[quota]\nsize = {size}\n')
    assert message in found["quota.size"][1], found


def test_a_good_table_and_its_defaults(scanner: ShareScanner) -> None:
    file = scanner.directory / "s.toml"
    file.write_text('path = "/srv/a"\n[quota]\nsize = "500G"\nthresholds = { warning = 70 }\n')
    spec = scanner.read_one(file).spec
    assert spec is not None
    assert spec.sections["quota"] == {"size": 500 << 30, "backend": "auto", "enforce": True,
                                      "thresholds": {"warning": 70, "high": 85, "critical": 95}}


def test_the_agent_table(tmp_path: Path) -> None:
    from smbgw_agent.assembly import load_plugins_and_config
    from smbgw_agent.model.errors import ConfigError

    (tmp_path / "etc/smbgw").mkdir(parents=True)
    agent = tmp_path / "etc/smbgw/agent.toml"
    agent.write_text('[quota]\nbtrfs_enable_quotas = true\nproject_id_range = [200000, 299999]\n')
    _, config = load_plugins_and_config(Paths.under(tmp_path))
    assert config.plugin_sections["quota"] == {"btrfs_enable_quotas": True, "project_id_range": [200000, 299999],
                                               "refresh_interval": 60.0}
    agent.write_text('[quota]\nproject_id_range = [5, 1]\nrefresh_interval = "1s"\n')
    with pytest.raises(ConfigError) as caught:
        load_plugins_and_config(Paths.under(tmp_path))
    assert {(p.key, p.line) for p in caught.value.problems} == {
        ("quota.project_id_range", 2), ("quota.refresh_interval", 3),
    }


def test_the_usage_reading_becomes_metrics() -> None:
    from prometheus_client.core import Metric
    from smbgw_plugins.quota import QuotaPlugin, Usage

    from smbgw_agent.observe.background import BackgroundReading

    plugin = QuotaPlugin()
    reading: BackgroundReading[dict[str, Usage]] = BackgroundReading(
        "quota", lambda: {"finance": Usage("Finance", "btrfs", 8 << 20, 6 << 20, {"warning": 70, "high": 85,
                                                                                   "critical": 95})})
    reading.refresh_now()
    plugin._reading = reading
    plugin._watched = {"finance": ("Finance", Path("/x"), {})}
    families: dict[str, Metric] = {f.name: f for f in plugin.smbgw_collect(ctx=None)}  # type: ignore[arg-type]

    def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(s.labels.items())): s.value for s in families[name].samples}

    assert samples("smbgw_share_quota_bytes") == {(("share", "Finance"),): float(8 << 20)}
    assert samples("smbgw_share_used_bytes") == {(("share", "Finance"),): float(6 << 20)}
    assert samples("smbgw_share_quota_threshold_ratio")[(("level", "warning"), ("share", "Finance"))] == 0.70
    assert samples("smbgw_quota_backend") == {(("backend", "btrfs"), ("share", "Finance")): 1.0}
    assert samples("smbgw_collector_success") == {(("collector", "quota"),): 1.0}


# ---- ZFS ------------------------------------------------------------------------------

def test_the_recorded_zfs_get_output_parses() -> None:
    readings = parse_zfs_get((DATA / "zfs-fuse-0.7-get-refquota-referenced.txt").read_text())
    assert readings == {"ztest": Reading(None, 135168), "ztest/finance": Reading(10485760, 1433600)}


@pytest.mark.parametrize("text", [
    "ztest refquota 0\n",  # spaces, not tabs
    "ztest\trefquota\tlots\n", "ztest\tquota\t0\nztest\treferenced\t1\n", "ztest\trefquota\t0\n",
    "\trefquota\t0\n\treferenced\t0\n",
])
def test_garbage_zfs_output_is_a_clear_error(text: str) -> None:
    with pytest.raises(ZfsError):
        parse_zfs_get(text)


# ---- XFS and ext4 project quotas ----------------------------------------------------------

def test_the_recorded_project_reports_parse() -> None:
    xfs = parse_xfs_report((DATA / "xfsprogs-6.1-report-p-b-n-N.txt").read_text())
    ext4 = parse_repquota_csv((DATA / "quota-4.06-repquota-P-n-csv.txt").read_text())
    assert xfs == {0: Reading(None, 0), 100001: Reading(8 << 20, 6144 << 10)}
    assert ext4 == {0: Reading(None, 13 << 10), 100000: Reading(8 << 20, 8189 << 10)}


@pytest.mark.parametrize("text", ["", "#1 lots 0 0\n", "user 1 0 0\n", "#1 1\n"])
def test_garbage_xfs_reports_are_clear_errors(text: str) -> None:
    if text == "":
        assert parse_xfs_report(text) == {}  # no projects at all is a valid answer
        return
    with pytest.raises(ProjectError):
        parse_xfs_report(text)


@pytest.mark.parametrize("text", [
    "", "Project,Used\n#1,2\n", "Project,BlockStatus,BlockUsed,BlockHardLimit\nx,ok,1,2\n",
    "Project,BlockStatus,BlockUsed,BlockHardLimit\n#1,ok,1\n",
])
def test_garbage_repquota_output_is_a_clear_error(text: str) -> None:
    with pytest.raises(ProjectError):
        parse_repquota_csv(text)


def project_ids(tmp_path: Path, first: int = 10, last: int = 12) -> ProjectIds:
    return ProjectIds(PluginState("quota", {}, lambda *_: None), first, last,
                      tmp_path / "etc/projects", tmp_path / "etc/projid")


def test_project_ids_are_stable_skip_foreign_ids_and_run_out_clearly(tmp_path: Path) -> None:
    ids = project_ids(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/projects").write_text("# the administrator's own\n10:/srv/other\n")
    (tmp_path / "etc/projid").write_text("other:10\nbroken line\n")
    assert ids.allocate("Finance", "/srv/finance") == 11
    assert ids.allocate("finance", "/srv/finance") == 11  # share names are case-insensitive
    assert ids.allocate("HR dept", "/srv/hr dept") == 12
    with pytest.raises(QuotaError, match=r"range \[10, 12\] is exhausted .* widen"):
        ids.allocate("third", "/srv/third")
    ids.write_files()
    assert (tmp_path / "etc/projects").read_text() == (
        "# the administrator's own\n10:/srv/other\n11:/srv/finance\n12:/srv/hr dept\n")
    assert (tmp_path / "etc/projid").read_text() == "other:10\nbroken line\nsmbgw-Finance:11\nsmbgw-HR_dept:12\n"
    ids.allocate("Finance", "/srv/moved")  # a share moved: its line follows, once
    ids.write_files()
    assert (tmp_path / "etc/projects").read_text().count("11:") == 1
    assert "11:/srv/moved" in (tmp_path / "etc/projects").read_text()


def test_a_huge_projects_file_is_refused_not_rewritten(tmp_path: Path) -> None:
    ids = project_ids(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/projects").write_bytes(b"1:/x\n" * (1 << 20))
    with pytest.raises(QuotaError, match="larger than"):
        ids.allocate("a", "/srv/a")
