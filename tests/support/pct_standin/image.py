"""TEST STAND-IN (never shipped): the container root file system behind the `pct` stand-in's templates.

Real Proxmox templates are tarballs (`local:vztmpl/debian-12-standard_..._amd64.tar.zst`)
that `pct create` unpacks into the container's volume. Unpacking ~400 MB per container
would cost the tests tens of seconds each, so the stand-in's "template" is a directory
holding a ready root file system, which every container overlays (lower layer) instead.
:func:`ensure_template` puts one at ``ROOT/var/lib/vz/template/cache/NAME`` (a symlink to
a directory shared by every test on the machine), keeping the real-looking file name so
the plugin under test passes the same `--ostemplate local:vztmpl/NAME` it would on a node.

Why the image looks the way it does (measured on this test bed with LXC 5.0, systemd
and smbd):

* debootstrap minbase plus systemd, dbus, Samba and the few tools the tests use;
  built once (~70 s), cached under /var/lib/machines with a hash of everything that shapes
  it in the directory name, built in a temporary directory and renamed into place, and
  builders in concurrent processes serialise on a lock (tests/support/nspawn.py's
  machinery, reused).
* Units that fight a container or wake up at random times are masked (nmbd wants
  NetBIOS, samba-ad-dc conflicts with smbd, timers, wait-online waits for networkd that
  does not manage eth0, sys-kernel-debug.mount fails in a user namespace).
* No ``/etc/hostname`` (LXC sets the UTS name; debootstrap copied the build host's), no
  name server in ``/etc/resolv.conf`` and ``libnss-myhostname``: smbd resolves its own
  name on every connection, and with an unreachable resolver clients time out
  (NT_STATUS_IO_TIMEOUT although port 445 accepts).
* smbd enabled, so a started container serves as soon as systemd is up.
* winbind and libnss-winbind installed (Debian's package adds winbind to nsswitch.conf)
  but winbind not enabled: a container joins a domain only when the node has `[ad]`,
  and the agent's step enables winbind then.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.support import nspawn

PACKAGES: tuple[str, ...] = (
    "systemd", "systemd-sysv", "dbus", "samba", "smbclient", "iproute2", "procps", "libnss-myhostname",
    "winbind", "libnss-winbind", "samba-vfs-modules",
)
SUITE = "bookworm"
DEFAULT_NAME = "smbgw-debian-12_amd64.tar.zst"
TEMPLATE_DIR = "var/lib/vz/template/cache"
# Masked on top of nspawn's own list; every *.timer is masked by nspawn._prepare_image too.
LXC_MASKED: tuple[str, ...] = (
    "nmbd.service", "samba-ad-dc.service", "systemd-networkd-wait-online.service", "sys-kernel-debug.mount",
    "e2scrub_all.timer", "fstrim.timer", "apt-daily.timer", "apt-daily-upgrade.timer",
)
# Bump when _prepare below changes, so an image prepared the old way is never reused.
_RECIPE = "1"
_MARKER = ".smbgw-pct-template.json"


def image_path() -> Path:
    """Where the prepared root lives: its name hashes the package list and this recipe."""
    key = nspawn.image_key(PACKAGES, SUITE)
    return nspawn.MACHINES_DIR / f"smbgw-lxc-{key}-r{_RECIPE}"


def _prepare(root: Path) -> None:
    etc_units = root / "etc/systemd/system"
    etc_units.mkdir(parents=True, exist_ok=True)
    for unit in LXC_MASKED:
        link = etc_units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    wants = etc_units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    smbd = wants / "smbd.service"
    if not (smbd.is_symlink() or smbd.exists()):
        smbd.symlink_to("/lib/systemd/system/smbd.service")
    winbind = wants / "winbind.service"
    if winbind.is_symlink() or winbind.exists():
        winbind.unlink()  # a standalone server needs none; the domain's step enables it
    hostname = root / "etc/hostname"
    if hostname.is_symlink() or hostname.exists():
        hostname.unlink()
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# no name server on purpose: smbd looks its own name up per connection\n")
    (root / "etc/machine-id").write_text("")


def ensure_image(timeout: float = 1800.0) -> Path:
    """The prepared root file system, built (debootstrap, then :func:`_prepare`) if missing."""
    final = image_path()
    if (final / _MARKER).is_file():
        return final
    base = nspawn.ensure_base_image(PACKAGES, SUITE, timeout=timeout)
    with nspawn._locked(nspawn.MACHINES_DIR / f".{final.name}.lock", timeout):
        if (final / _MARKER).is_file():
            return final
        for stale in nspawn.MACHINES_DIR.glob(f".{final.name}.tmp-*"):
            nspawn._remove_tree(stale)
        if final.exists():
            nspawn._remove_tree(final)
        tmp = nspawn.MACHINES_DIR / f".{final.name}.tmp-{os.getpid()}"
        try:
            # A copy, not the nspawn base itself: that one stays as nspawn.py prepares it.
            subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(tmp)], check=True,
                                  capture_output=True, timeout=timeout)
            _prepare(tmp)
            (tmp / _MARKER).write_text(json.dumps({"base": base.name, "built": time.time()}) + "\n")
            os.sync()
            os.rename(tmp, final)
        except BaseException:
            nspawn._remove_tree(tmp)
            raise
    return final


def ensure_template(root: Path, name: str = DEFAULT_NAME) -> Path:
    """Make ``root/var/lib/vz/template/cache/NAME`` a ready root file system (a symlink to
    the shared image) and return that path, as `local:vztmpl/NAME` resolves to it."""
    image = ensure_image()
    cache = root / TEMPLATE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    link = cache / name
    if link.is_symlink() and Path(os.readlink(link)) == image:
        return link
    if link.is_symlink() or link.is_file():
        link.unlink()
    link.symlink_to(image)
    return link


__all__ = ["DEFAULT_NAME", "PACKAGES", "ensure_image", "ensure_template", "image_path"]
