"""Static checks of the Debian package and the systemd unit (no container needed).

The package is built from the tree by `make deb` (as CI does from a clean checkout),
then: what it contains and depends on, lintian at every level (only explained
overrides), `systemd-analyze verify` of the unit as shipped, and the unit's
`systemd-analyze security` exposure (printed; at most 4.0). The man pages are checked
against the real command line parsers, so an option added to the CLI without its man
page entry fails here.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess

import pytest

from smbgw_agent import __version__
from smbgw_agent.cli import build_parser
from smbgw_agent.daemon import parse_args
from tests.support import debpkg
from tests.support.debpkg import REPO, UNIT_SOURCE, BuildResult

pytestmark = pytest.mark.integration

MAX_EXPOSURE = 4.0
DEBIAN_PYTHON_DEPENDENCIES = (
    "python3-pluggy", "python3-prometheus-client", "python3-pydbus", "python3-pyroute2",
    "python3-watchdog", "python3-jinja2",
)


@pytest.fixture(scope="module")
def build() -> BuildResult:
    missing = debpkg.have_tools("make", "dpkg-buildpackage", "dpkg-deb", "lintian", "systemd-analyze", "unshare")
    if missing:
        pytest.skip("packaging tools missing: " + ", ".join(missing))
    return debpkg.ensure_deb()


def test_package_builds_with_the_expected_metadata(build: BuildResult, capsys: pytest.CaptureFixture[str]) -> None:
    deb = build.deb
    with capsys.disabled():
        how = f"built in {build.seconds:.1f} s" if build.seconds else "up to date, reused"
        print(f"\n[smbgw-agent .deb] {deb.relative_to(REPO)} ({deb.stat().st_size // 1024} KiB, {how})")
    assert deb.name == f"smbgw-agent_{__version__}-1_all.deb"
    assert debpkg.deb_field(deb, "Package") == "smbgw-agent"
    assert debpkg.deb_field(deb, "Architecture") == "all"
    depends = [d.strip() for d in debpkg.deb_field(deb, "Depends").split(",")]
    for package in (*DEBIAN_PYTHON_DEPENDENCIES, "samba"):
        assert package in depends, depends
    # tomli only where Python is older than 3.11 (dh_python3 from the environment marker).
    assert "python3-tomli | python3 (>> 3.11)" in depends, depends
    suggests = {s.strip() for s in debpkg.deb_field(deb, "Suggests").split(",")}
    assert {"ctdb", "winbind", "btrfs-progs", "zfsutils-linux"} <= suggests

    contents = set(debpkg.deb_contents(deb))
    for path in (
        "/usr/sbin/smbgw-agent", "/usr/sbin/smbgwctl", "/usr/lib/systemd/system/smbgw-agent.service",
        "/etc/smbgw/agent.toml", "/etc/smbgw/shares.d/",
        "/usr/share/doc/smbgw-agent/examples/agent.toml",
        "/usr/share/doc/smbgw-agent/examples/example.toml.sample",
        "/usr/share/doc/smbgw-agent/README.md", "/usr/share/doc/smbgw-agent/copyright",
        "/usr/share/man/man8/smbgw-agent.8.gz", "/usr/share/man/man8/smbgwctl.8.gz",
        "/usr/lib/python3/dist-packages/smbgw_agent/daemon.py",
        "/usr/lib/python3/dist-packages/smbgw_plugins/mode_native.py",
        "/usr/lib/python3/dist-packages/smbgw_plugins/templates/share.conf.j2",
    ):
        assert path in contents, path
    assert not [p for p in contents if p.startswith("/etc/smbgw/shares.d/") and p != "/etc/smbgw/shares.d/"]
    assert not [p for p in contents if "__pycache__" in p]

    control = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True, check=True)
    assert control.stdout.split() == ["/etc/smbgw/agent.toml"]
    with debpkg.extracted(deb) as root:
        shipped = (root / "usr/lib/systemd/system/smbgw-agent.service").read_text()
        assert shipped == UNIT_SOURCE.read_text()
        entry_points = next(root.glob("usr/lib/python3/dist-packages/smbgw_agent-*.dist-info/entry_points.txt"))
        assert "mode_native = smbgw_plugins.mode_native:NativeModePlugin" in entry_points.read_text()


def test_maintainer_scripts_leave_systemctl_to_debhelper() -> None:
    """Only dh_installsystemd's generated snippets enable, start, restart and stop the unit."""
    scripts = [p for p in (REPO / "debian").iterdir() if re.search(r"\.(pre|post)(inst|rm)$", p.name)]
    for script in scripts:
        text = script.read_text()
        assert "#DEBHELPER#" in text, script
        assert not re.search(r"\b(systemctl|deb-systemd-invoke|deb-systemd-helper|invoke-rc\.d)\b",
                             "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))), script


def test_lintian_is_clean(build: BuildResult, capsys: pytest.CaptureFixture[str]) -> None:
    result = debpkg.run_lintian(build.changes)
    overrides = debpkg.lintian_overrides(build.changes)
    shown = [line for line in result.output.splitlines() if not line.startswith("running with root")]
    with capsys.disabled():
        print(f"\n[smbgw-agent .deb] {' '.join(result.argv[:-1])} {build.changes.name}: exit {result.returncode}")
        for line in shown:
            print(f"[smbgw-agent .deb]   {line}")
        for line in overrides.output.splitlines():
            if line.startswith(("O:", "N:")):
                print(f"[smbgw-agent .deb]   {line}")
    assert result.returncode == 0, result.output
    assert not [line for line in shown if re.match(r"[EW]: ", line)], result.output
    assert "unused-override" not in result.output, result.output


def test_every_lintian_override_is_explained() -> None:
    for path in (REPO / "debian").rglob("*lintian-overrides"):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip() and not line.startswith("#"):
                assert number > 0 and lines[number - 1].startswith("#"), f"{path}:{number + 1} has no explanation"


def test_unit_verifies(build: BuildResult) -> None:
    result = debpkg.verify_unit(build.deb)
    assert result.returncode == 0 and result.output == "", result.output


def test_unit_security_exposure(build: BuildResult, capsys: pytest.CaptureFixture[str]) -> None:
    score, result = debpkg.security_exposure(UNIT_SOURCE)
    with debpkg.extracted(build.deb) as root:
        shipped_score, _ = debpkg.security_exposure(root / "usr/lib/systemd/system/smbgw-agent.service")
    with capsys.disabled():
        print(f"\n[smbgw-agent .deb] systemd-analyze security --offline=true {UNIT_SOURCE.relative_to(REPO)}: "
              f"overall exposure {score} (at most {MAX_EXPOSURE}; lower is better)")
        for line in result.output.splitlines():
            if line.startswith("✗"):
                print(f"[smbgw-agent .deb]   {' '.join(line.split())}")
    assert shipped_score == score
    assert score <= MAX_EXPOSURE, result.output


def _directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_unit_contract_and_every_privilege_is_explained() -> None:
    text = UNIT_SOURCE.read_text()
    unit = _directives(text)
    assert unit["Type"] == ["notify"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ExecStart"] == ["/usr/sbin/smbgw-agent"]
    assert unit["WatchdogSec"] and unit["Documentation"]
    assert "network-online.target" in " ".join(unit["After"]) and "network-online.target" in unit["Wants"][0]
    assert "smbd.service" in " ".join(unit["After"])
    # Restarting the agent must never propagate to Samba.
    for key in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert key not in unit, key
    assert unit["KillMode"] in (["mixed"], ["process"])
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["RuntimeDirectoryPreserve"] == ["yes"]
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for capability in unit["CapabilityBoundingSet"][0].split():
        assert re.search(rf"^#\s+{capability}\s+\S", comments, re.MULTILINE), f"{capability} is not explained"
    for family in unit["RestrictAddressFamilies"][0].split():
        assert re.search(rf"^#\s+.*\b{family}\b", comments, re.MULTILINE), f"{family} is not explained"
    for path in " ".join(unit["ReadWritePaths"]).split():
        assert re.search(rf"^# {re.escape(path.lstrip('-'))}\b", comments, re.MULTILINE), f"{path} is not explained"


def _man(name: str) -> str:
    return (REPO / "docs" / name).read_text()


def test_man_pages_render_without_warnings() -> None:
    for page in ("smbgw-agent.8", "smbgwctl.8"):
        proc = subprocess.run(
            ["man", "--warnings", "-l", str(REPO / "docs" / page)], capture_output=True, text=True, check=False,
            env={"PATH": debpkg.CLEAN_PATH, "MANWIDTH": "80", "LANG": "C.UTF-8", "MAN_KEEP_STDERR": "1"},
        )
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert f"smbgw-agent {__version__}" in proc.stdout, "man page version out of date"


def test_man_pages_cover_every_option_and_command() -> None:
    agent_page = _man("smbgw-agent.8").replace("\\-", "-")
    usage = io.StringIO()
    with contextlib.redirect_stdout(usage), pytest.raises(SystemExit):
        parse_args(["--help"])
    daemon_options = set(re.findall(r"--[a-z][a-z-]+", usage.getvalue()))
    assert "--root" in daemon_options and "--once" in daemon_options, usage.getvalue()
    for option in daemon_options:
        assert option in agent_page, f"smbgw-agent(8) does not document {option}"

    ctl_page = _man("smbgwctl.8").replace("\\-", "-")
    parser = build_parser()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in ctl_page, f"smbgwctl(8) does not document {option}"
        for command, sub in (getattr(action, "choices", None) or {}).items():
            assert re.search(rf"^\.(TP|B|BR|BI)\b.*\b{command}\b", ctl_page, re.MULTILINE), command
            for sub_action in sub._actions:
                for option in sub_action.option_strings:
                    assert option in ctl_page, f"smbgwctl(8) does not document {command} {option}"


def test_readme_documents_the_package() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Debian package and systemd unit", 1)
    assert len(section) == 2, "README.md lacks the Debian package section"
    for needle in ("make deb", "apt install ./", "systemctl reload smbgw-agent", "WatchdogSec", "ProtectSystem",
                   "ReadWritePaths", "CapabilityBoundingSet"):
        assert needle in section[1], needle


def test_deb_is_built_inside_the_repository_without_leftovers(build: BuildResult) -> None:
    assert build.deb.parent == REPO / "build" / "deb"
    assert sorted(p.name for p in build.deb.parent.iterdir()) == sorted(
        [build.deb.name, build.changes.name, build.changes.name.replace(".changes", ".buildinfo")]
    )
    for leftover in ("debian/.debhelper", "debian/smbgw-agent", "debian/files", ".pybuild", "build/deb/src"):
        assert not (REPO / leftover).exists(), leftover
    assert (REPO / "debian" / "rules").stat().st_mode & 0o111, "debian/rules must be executable"
