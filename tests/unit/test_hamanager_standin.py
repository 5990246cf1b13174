"""The `ha-manager` test stand-in (tests/support/pct_standin/hamanager.py, a TEST FIXTURE):
its argv, messages and exit codes as pve-ha-manager's, and a resource list the plugin's
reader (plugins/proxmox/haresources.py) reads as it reads Proxmox's own."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from smbgw_plugins.proxmox.haresources import parse_resources

from tests.support.pct_standin import pct

BIN = Path(pct.__file__).with_name("bin") / "ha-manager"


def ha(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SMBGW_PCT_ROOT": str(root)})


def test_add_config_set_remove_as_pve_ha_manager(tmp_path: Path) -> None:
    (tmp_path / "etc/pve").mkdir(parents=True)
    (tmp_path / "etc/pve/.vmlist").write_text(json.dumps({"version": 1, "ids": {
        "9000": {"node": "pve1", "type": "lxc", "version": 1}}}))
    assert ha(tmp_path, "add", "ct:9000", "--state", "started", "--comment", "smbgw-agent share a").returncode == 0
    text = (tmp_path / "etc/pve/ha/resources.cfg").read_text()
    assert text == "ct: 9000\n\tcomment smbgw-agent share a\n\tstate started\n\n"
    assert parse_resources(text)["ct:9000"].state == "started"
    again = ha(tmp_path, "add", "9000")  # a bare id is looked up in the guest list
    assert (again.returncode, again.stderr) == (255, "resource ID 'ct:9000' already defined\n")
    assert ha(tmp_path, "set", "ct:9000", "--state", "stopped").returncode == 0
    assert ha(tmp_path, "config").stdout == "ct:9000\n\tcomment smbgw-agent share a\n\tstate stopped\n\n"
    bad = ha(tmp_path, "set", "ct:9000", "--state", "running")
    assert bad.returncode == 255 and "enumeration" in bad.stderr
    unknown = ha(tmp_path, "add", "ct:9001", "--sate", "started")
    assert unknown.returncode == 255 and "Unknown option: sate" in unknown.stderr
    assert ha(tmp_path, "remove", "ct:9000").returncode == 0
    assert parse_resources((tmp_path / "etc/pve/ha/resources.cfg").read_text()) == {}
    gone = ha(tmp_path, "remove", "ct:9000")
    assert gone.returncode == 255 and "not HA managed" in gone.stderr
