"""`smbgwctl import`: an administrator's existing smb.conf, read through the real
`testparm -s`, becomes share files; the agent serves them; and `testparm -s
--section-name X` of the agent's configuration shows every effective parameter the
original section had (the share's path under the sandbox's root), except those the
import said it left out.

The smb.conf files are written by hand for this test in the styles administrators
arrive with: a Proxmox host's, OpenMediaVault's, TrueNAS's and a plain Debian one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import REPO, AgentProcess, wait_served

pytestmark = pytest.mark.integration

CONFIGS = {
    "proxmox": """[global]
   workgroup = WORKGROUP
   server role = standalone server
   map to guest = never
[backups]
   comment = vzdump target
   path = /srv/smb/backups
   read only = no
   valid users = backup
   create mask = 0600
   directory mask = 0700
[iso]
   path = /srv/smb/iso
   browseable = yes
   read only = yes
""",
    "omv": """[global]
   workgroup = WORKGROUP
   server string = %h server
   log level = 1
   min protocol = SMB2
[Media]
   path = /srv/smb/media
   comment = Films and music
   browseable = yes
   writeable = yes
   valid users = "CORP\\Domain Users", @family
   create mask = 0664
   directory mask = 0775
   force user = media
   hide dot files = yes
   inherit permissions = yes
[homes]
   browseable = no
""",
    "truenas": """[global]
   server min protocol = SMB2_10
   server multi channel support = yes
[projects]
   path = /srv/smb/projects
   comment = Project data
   browsable = no
   read only = no
   ea support = yes
   strict sync = no
   access based share enum = yes
   nt acl support = yes
   vfs objects = streams_xattr zfsacl
[Team Docs]
   path = /srv/smb/team docs
   oplocks = no
   level2 oplocks = no
""",
    "debian": """[global]
   workgroup = HOME
[public]
   path = /srv/smb/public
   guest ok = yes
   read only = yes
[scans]
   path = /srv/smb/scans
   writable = yes
   valid users = scanner, @office
   veto files = /*.tmp/Thumbs.db/
   delete veto files = yes
[printers]
   printable = yes
   path = /var/spool/samba
""",
}
AGENT_TOML = ('[agent]\nnode = "sandbox"\nallowed_roots = ["/srv"]\nallow_custom_options = true\n'
              'resync_interval = "60s"\n\n[metrics]\nenabled = false\n')


def section_of(conf: Path, name: str) -> dict[str, str]:
    done = subprocess.run(["testparm", "-s", "--section-name", name, str(conf)], capture_output=True, text=True,
                          timeout=60, check=False)
    found = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep:
            found[key] = value
    return found


@pytest.mark.parametrize("style", sorted(CONFIGS))
def test_import_then_serve_keeps_the_effective_parameters(sandbox: Sandbox, tmp_path: Path, style: str) -> None:
    (sandbox.root / "etc/smbgw/agent.toml").write_text(AGENT_TOML)
    source = tmp_path / f"{style}.conf"
    source.write_text(CONFIGS[style])
    done = subprocess.run([str(REPO / ".venv/bin/smbgwctl") if (REPO / ".venv/bin/smbgwctl").exists()
                           else "smbgwctl", "--root", str(sandbox.root), "import", "--from", str(source),
                           "--to", str(sandbox.shares_dir), "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    shares = [s for s in report["shares"] if s["text"] is not None]
    assert shares and len(report["written"]) == len(shares), report
    for share in shares:
        assert not share["problems"], share
    agent = AgentProcess(sandbox)
    agent.start()
    try:
        for share in shares:
            (sandbox.root / section_of(source, share["name"])["path"].lstrip("/")).mkdir(parents=True,
                                                                                            exist_ok=True)
        for share in shares:
            wait_served(agent, share["name"], timeout=30)
        for share in shares:
            original = section_of(source, share["name"])
            served = section_of(sandbox.smb_conf, share["name"])
            left_out = {line.split(" = ", 1)[0] for line in share["left_out"]}
            for key, value in original.items():
                if key in left_out:
                    continue
                if key == "path":
                    assert served[key] == str(sandbox.root) + value, (key, served)
                else:
                    assert served.get(key) == value, f"[{share['name']}] {key}: {served.get(key)!r} != {value!r}"
        print(f"\n[import] {style}: {len(shares)} shares served with their parameters; left out: "
              f"{sum(len(s['left_out']) for s in report['shares'])}")
    finally:
        agent.stop()
