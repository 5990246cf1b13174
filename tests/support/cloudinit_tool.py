"""TEST FIXTURE: Debian's own `cloud-init` command, unpacked (not installed) on the test
machine, for `cloud-init schema`.

Why not install it: the package's systemd units would run cloud-init at this machine's
next boot. A Proxmox node is in the same position, which is why the VM mode runs
`cloud-init schema` only where the administrator put the command on the node
(plugins/mode_vm/userdata.py). Here the package is fetched with `apt-get download`,
unpacked with `dpkg-deb -x` into a cache named by its version, and run from there by a
small wrapper on PATH with the host's python3 and the Python packages cloud-init imports
(python3-configobj, -jsonschema, -jsonpatch, -netifaces, -yaml: Makefile's APT_PACKAGES).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path("/var/cache/smbgw-test/cloud-init")
PACKAGE = "cloud-init"
_WRAPPER = """#!/bin/sh
# TEST FIXTURE (tests/support/cloudinit_tool.py): Debian's cloud-init, unpacked, not installed.
PYTHONPATH="{root}/usr/lib/python3/dist-packages" exec /usr/bin/python3 "{root}/usr/bin/cloud-init" "$@"
"""


def _candidate_version() -> str:
    out = subprocess.run(["apt-cache", "policy", PACKAGE], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return version
    raise RuntimeError(f"apt knows no {PACKAGE} package (apt-get update?)")


def ensure_cloud_init() -> Path:
    """A directory holding a `cloud-init` command: put it first on PATH."""
    version = _candidate_version()
    folder = CACHE / version.replace(":", "_").replace("/", "_")
    wrapper = folder / "bin" / "cloud-init"
    if wrapper.exists():
        return wrapper.parent
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if wrapper.exists():
            return wrapper.parent
        work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=CACHE))
        try:
            subprocess.run(["apt-get", "download", f"{PACKAGE}={version}"], cwd=work, check=True,
                           capture_output=True, timeout=300)
            [deb] = list(work.glob("*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True, capture_output=True)
            deb.unlink()
            (work / "bin").mkdir()
            (work / "bin" / "cloud-init").write_text(_WRAPPER.format(root=folder / "root"))
            (work / "bin" / "cloud-init").chmod(0o755)
            os.replace(work, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return wrapper.parent
