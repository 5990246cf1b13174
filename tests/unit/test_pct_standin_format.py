"""The `pct` test stand-in's argv parsing and output formats, without LXC (fast).

The stand-in (tests/support/pct_standin, a TEST FIXTURE, never shipped) must read the
command lines and print the formats Proxmox VE 8's `pct` does, or the LXC-mode plugin's
tests prove nothing about the real tool. The expected strings below were written from
pve-container 5.2.6, libpve-common-perl 8.3.1 and pmxcfs (see the stand-in's docstring),
not from the stand-in's output. The real thing, over LXC, is
tests/integration/test_pct_standin.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pct_standin import pct

TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
BIN = Path(pct.__file__).with_name("bin") / "pct"


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A node root with a (tiny, fake) template directory; no LXC is ever started."""
    template = tmp_path / "var/lib/vz/template/cache/debian-12-standard_12.7-1_amd64.tar.zst"
    (template / "etc").mkdir(parents=True)
    (template / "etc/debian_version").write_text("12.7\n")
    monkeypatch.setenv("SMBGW_PCT_ROOT", str(tmp_path))
    monkeypatch.setenv("SMBGW_PCT_NODE", "pve1")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = pct.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- argv


def test_options_may_follow_arguments_and_take_both_spellings() -> None:
    opts = pct.parse_argv("push", ["100", "/tmp/a", "/etc/b", "--perms", "644", "-user=alice"])
    assert opts == {"vmid": 100, "file": "/tmp/a", "destination": "/etc/b", "perms": "644", "user": "alice"}


def test_a_boolean_without_value_is_true_and_words_are_booleans() -> None:
    assert pct.parse_argv("destroy", ["100", "--purge"]) == {"vmid": 100, "purge": 1}
    assert pct.parse_argv("destroy", ["100", "--purge", "no", "--force=yes"]) == {"vmid": 100, "purge": 0,
                                                                                  "force": 1}


def test_unique_abbreviations_are_accepted_like_getopt_long() -> None:
    assert pct.parse_argv("shutdown", ["100", "--time", "5"]) == {"vmid": 100, "timeout": 5}


def test_exec_takes_everything_after_the_double_dash() -> None:
    opts = pct.parse_argv("exec", ["100", "--", "sh", "-c", "echo --purge"])
    assert opts == {"vmid": 100, "extra-args": ["sh", "-c", "echo --purge"]}


def test_unknown_option_is_getopts_error_then_400(capsys: pytest.CaptureFixture[str], node: Path) -> None:
    code, out, err = run(capsys, "create", "100", TEMPLATE, "--bogus", "1")
    assert (code, out) == (255, "")
    assert err == "Unknown option: bogus\n400 unable to parse option\npct create <vmid> <ostemplate> [OPTIONS]\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status"], "400 not enough arguments\n"),
        (["status", "100", "101"], "400 too many arguments\n"),
        (["list", "x"], "400 too many arguments\n"),
        (["status", "99"], "400 Parameter verification failed.\nvmid: value must have a minimum value of 100\n"),
        (["status", "abc"], "400 Parameter verification failed.\nvmid: type check ('integer') failed - got 'abc'\n"),
        (["destroy", "100", "--purge", "maybe"], "400 unable to parse boolean option\n"),
    ],
)
def test_argument_errors_exit_255_with_the_usage_line(
    capsys: pytest.CaptureFixture[str], node: Path, argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 255
    assert err.startswith(message)
    assert err.endswith(pct.usage_line(argv[0]))


def test_unknown_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "frobnicate")
    assert code == 255
    assert err.startswith("ERROR: unknown command 'pct frobnicate'\n")


# --------------------------------------------------------------------------- formats


def test_encode_text_escapes_controls_non_ascii_colon_and_percent() -> None:
    assert pct.encode_text("a: 100%\nü") == "a%3A 100%25%0A%C3%BC"
    assert pct.decode_text(pct.encode_text("a: 100%\nü")) == "a: 100%\nü"


@pytest.mark.parametrize(("size", "text"), [(4 * 1024**3, "4G"), (512 * 1024**2, "512M"), (1536, "1536"),
                                            (2048, "2K"), (1024**4, "1T")])
def test_format_size_uses_the_largest_exact_unit(size: int, text: str) -> None:
    assert pct.format_size(size) == text


def test_net_prints_name_first_then_sorted_and_gets_a_fixed_mac() -> None:
    text = pct.canonical_net(101, "net0", "ip=10.0.0.2/24,bridge=vmbr0,name=eth0,gw=10.0.0.1")
    mac = pct.generated_hwaddr(101, 0)
    assert text == f"name=eth0,bridge=vmbr0,gw=10.0.0.1,hwaddr={mac},ip=10.0.0.2/24,type=veth"
    assert mac.startswith("BC:24:11:") and mac == mac.upper() and len(mac) == 17
    assert pct.generated_hwaddr(101, 0) == mac != pct.generated_hwaddr(102, 0)
    given = pct.canonical_net(101, "net0", "name=eth0,bridge=vmbr0,hwaddr=bc:24:11:00:00:01")
    assert "hwaddr=BC:24:11:00:00:01" in given


def test_mount_points_print_the_volume_bare_then_mp_then_options() -> None:
    assert pct.canonical_mp("mp0", "backup=no,mp=/srv/share,/tank/share") == "/tank/share,mp=/srv/share,backup=0"
    assert pct.allocate_rootfs(100, "local-lvm:4") == "local-lvm:vm-100-disk-0,size=4G"
    assert pct.allocate_rootfs(100, "local:0.5") == "local:100/vm-100-disk-0.raw,size=512M"


def test_tags_are_lowercased_sorted_unique() -> None:
    assert pct.get_unique_tags("b;A,a c") == "a;b;c"


def test_vmlist_is_pmxcfs_output_byte_for_byte() -> None:
    assert pct.render_vmlist(3, {}) == '{\n"version": 3\n\n}\n'
    text = pct.render_vmlist(7, {101: ("pve1", "lxc", 7), 100: ("pve1", "lxc", 5)})
    assert text == ('{\n"version": 7,\n"ids": {\n'
                    '"100": { "node": "pve1", "type": "lxc", "version": 5 },\n'
                    '"101": { "node": "pve1", "type": "lxc", "version": 7 }}\n\n}\n')
    assert json.loads(text)["ids"]["101"] == {"node": "pve1", "type": "lxc", "version": 7}


def test_list_columns_are_printf_padded_with_trailing_spaces() -> None:
    assert pct.render_list([]) == ""
    assert pct.render_list([(1000, "running", "", "web"), (101, "stopped", "backup", "db")]) == (
        "VMID       Status     Lock         Name                \n"
        "101        stopped    backup       db                  \n"
        "1000       running                 web                 \n"
    )


def test_config_file_keeps_description_comments_sorted_keys_and_raw_lxc_lines() -> None:
    text = ("#first%3A line\n#second\narch: amd64\nhostname: ct\n"
            "lxc.idmap: u 0 100000 1000\nlxc.idmap = g 0 100000 1000\n")
    config = pct.Config.parse(text)
    assert config.description == "first: line\nsecond\n"
    assert config.lxc == [("lxc.idmap", "u 0 100000 1000"), ("lxc.idmap", "g 0 100000 1000")]
    assert config.render() == text.replace("lxc.idmap = g", "lxc.idmap: g")
    assert config.show() == ("arch: amd64\ndescription: first%3A line%0Asecond%0A\nhostname: ct\n"
                             "lxc.idmap: u 0 100000 1000\nlxc.idmap: g 0 100000 1000\n")


# --------------------------------------------------------------------------- commands without LXC


def test_create_writes_proxmox_config_vmlist_and_symlink(capsys: pytest.CaptureFixture[str], node: Path) -> None:
    code, out, err = run(capsys, "create", "101", TEMPLATE, "--rootfs", "local-lvm:4", "--unprivileged", "1",
                         "--net0", "name=eth0,bridge=vmbr0,ip=10.0.0.2/24,gw=10.0.0.1", "--tags", "smbgw;Test",
                         "--mp0", "/tank/share,mp=/srv/share,backup=0", "--description", "made by: tests",
                         "--cores", "2", "--onboot", "1", "--timezone", "UTC", "--features", "nesting=1")
    assert (code, out, err) == (0, "", "")
    conf = node / "etc/pve/nodes/pve1/lxc/101.conf"
    mac = pct.generated_hwaddr(101, 0)
    assert conf.read_text() == (
        "#made by%3A tests\n"
        "arch: amd64\ncores: 2\nfeatures: nesting=1\nhostname: CT101\nmemory: 512\n"
        "mp0: /tank/share,mp=/srv/share,backup=0\n"
        f"net0: name=eth0,bridge=vmbr0,gw=10.0.0.1,hwaddr={mac},ip=10.0.0.2/24,type=veth\n"
        "onboot: 1\nostype: debian\nrootfs: local-lvm:vm-101-disk-0,size=4G\nswap: 512\ntags: smbgw;test\n"
        "timezone: UTC\nunprivileged: 1\n"
    )
    assert os.readlink(node / "etc/pve/lxc") == "nodes/pve1/lxc"
    assert (node / "etc/pve/lxc/101.conf").read_text() == conf.read_text()
    assert (node / "etc/pve/.vmlist").read_text() == (
        '{\n"version": 1,\n"ids": {\n"101": { "node": "pve1", "type": "lxc", "version": 1 }}\n\n}\n')
    code, out, _ = run(capsys, "list")
    assert out == ("VMID       Status     Lock         Name                \n"
                   "101        stopped                 CT101               \n")
    code, out, _ = run(capsys, "status", "101")
    assert (code, out) == (0, "status: stopped\n")


def test_create_errors_are_the_real_messages(capsys: pytest.CaptureFixture[str], node: Path) -> None:
    assert run(capsys, "create", "101", TEMPLATE)[0] == 0
    assert run(capsys, "create", "101", TEMPLATE) == (255, "", "CT 101 already exists on node 'pve1'\n")
    code, _, err = run(capsys, "create", "102", "local:vztmpl/missing.tar.zst")
    missing = node / "var/lib/vz/template/cache/missing.tar.zst"
    assert (code, err) == (255, f"unable to create CT 102 - failed to open '{missing}': No such file or directory\n")
    assert not (node / "etc/pve/lxc/102.conf").exists()
    code, _, err = run(capsys, "create", "102", TEMPLATE, "--mp0", "/x,mp=/y")
    assert (code, err) == (255, "mount points configured, but 'rootfs' not set - aborting\n")


def test_set_and_delete_and_config(capsys: pytest.CaptureFixture[str], node: Path) -> None:
    assert run(capsys, "create", "101", TEMPLATE, "--hostname", "a")[0] == 0
    assert run(capsys, "set", "101", "--hostname", "b", "--memory", "1024", "--delete", "swap,cores") == (
        0, "", "cannot delete 'cores' - not set in current configuration!\n")
    code, out, _ = run(capsys, "config", "101", "--current")
    assert (code, out) == (0, "arch: amd64\nhostname: b\nmemory: 1024\nostype: debian\n"
                              "rootfs: local:101/vm-101-disk-0.raw,size=4G\n")
    assert run(capsys, "set", "101", "--delete", "memory") == (255, "", "unable to delete required option 'memory'\n")
    assert run(capsys, "set", "101", "--unprivileged", "1") == (
        255, "", "unable to modify read-only option: 'unprivileged'\n")


def test_missing_container_and_missing_bridge(capsys: pytest.CaptureFixture[str], node: Path) -> None:
    for argv in (["status", "999"], ["config", "999"], ["start", "999"], ["destroy", "999"], ["exec", "999", "ls"]):
        assert run(capsys, *argv) == (255, "", "Configuration file 'nodes/pve1/lxc/999.conf' does not exist\n")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    assert run(capsys, "create", "101", TEMPLATE, "--net0", "name=eth0,bridge=nosuchbr9")[0] == 0
    assert run(capsys, "start", "101") == (
        255, "", "bridge 'nosuchbr9' does not exist\nstartup for container '101' failed\n")
    assert run(capsys, "exec", "101", "--", "true") == (255, "", "container '101' not running!\n")
    assert run(capsys, "stop", "101") == (255, "", "CT 101 not running\n")


def test_destroy_removes_config_and_vmlist_entry(capsys: pytest.CaptureFixture[str], node: Path) -> None:
    assert run(capsys, "create", "101", TEMPLATE)[0] == 0
    assert run(capsys, "create", "102", TEMPLATE)[0] == 0
    assert run(capsys, "destroy", "101", "--purge") == (0, "", "")
    assert not (node / "etc/pve/lxc/101.conf").exists()
    assert not (node / "var/lib/lxc/101").exists()
    vmlist = json.loads((node / "etc/pve/.vmlist").read_text())
    assert vmlist["version"] == 3 and list(vmlist["ids"]) == ["102"]


def test_the_wrapper_script_runs_the_stand_in(node: Path) -> None:
    env = {**os.environ, "SMBGW_PCT_PYTHON": sys.executable}
    done = subprocess.run([str(BIN), "list"], capture_output=True, text=True, env=env, check=False, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    done = subprocess.run([str(BIN), "status", "100"], capture_output=True, text=True, env=env, check=False,
                          timeout=60)
    assert (done.returncode, done.stderr) == (255, "Configuration file 'nodes/pve1/lxc/100.conf' does not exist\n")
