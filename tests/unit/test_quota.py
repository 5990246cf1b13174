"""The quota plugin's own logic: its tables, the mount table, btrfs output (recorded from
btrfs-progs 6.2 on a real file system), and the backend choice."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from smbgw_plugins.quota import QuotaError, backend_for, human
from smbgw_plugins.quota.btrfs import BtrfsError, parse_qgroup_show
from smbgw_plugins.quota.mounts import Mount, mount_of, parse_mountinfo

from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.paths import Paths
from smbgw_agent.platform.pluginhost import PluginHost
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
    assert mount_of("/tank/finance", MOUNTINFO).fstype == "btrfs"  # type: ignore[union-attr]
    assert mount_of("/tank/vm disks/a", MOUNTINFO).fstype == "zfs"  # type: ignore[union-attr]
    assert mount_of("/tankard", MOUNTINFO).fstype == "ext4"  # type: ignore[union-attr]
    assert mount_of("/srv/xfs/p", MOUNTINFO).has_option("prjquota")  # type: ignore[union-attr]


def test_the_backend_follows_the_file_system_and_says_what_it_cannot_do() -> None:
    btrfs = Mount("/tank", "btrfs", "/dev/loop0", "rw")
    assert backend_for({"backend": "auto"}, btrfs, "/tank/a") == "btrfs"
    with pytest.raises(QuotaError, match="backend = 'zfs', but /tank/a is on btrfs"):
        backend_for({"backend": "zfs"}, btrfs, "/tank/a")
    with pytest.raises(QuotaError, match="is on tmpfs, which has no quotas"):
        backend_for({"backend": "auto"}, Mount("/run", "tmpfs", "tmpfs", "rw"), "/run/x")
    with pytest.raises(QuotaError, match="not available in this version"):
        backend_for({"backend": "auto"}, Mount("/srv/xfs", "xfs", "/dev/sdb", "rw"), "/srv/xfs/p")
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
