"""Whether a container's Samba has the VFS modules its smb.conf names.

smbd loads a share's `vfs objects` at tree connect, not at start: a module the container
lacks (Debian's `samba` package leaves most of them to `samba-vfs-modules`, which a
template built without recommended packages does not have) makes every connection to
the share fail with NT_STATUS_BAD_NETWORK_NAME while port 445 answers as ever. testparm
does not look either. So before the agent writes an smb.conf into a container it asks
the container's smbd where its modules are (`smbd -b`: MODULESDIR and the built-in
modules) and checks each one named, refusing with the package to install.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .pct import Pct

PACKAGE = "samba-vfs-modules"
_VFS_LINE = re.compile(r"^\s*vfs objects\s*=\s*(.*)$", re.IGNORECASE | re.MULTILINE)
MAX_BUILD_INFO = 1 << 20


class VfsError(ValueError):
    """The container's Samba cannot load a module the share needs, or cannot say."""


def wanted(smb_conf: str) -> list[str]:
    """The modules every `vfs objects` line of an smb.conf names, in order, once each."""
    names: dict[str, None] = {}
    for match in _VFS_LINE.finditer(smb_conf):
        for name in re.split(r"[\s,]+", match.group(1).strip()):
            if name:
                names[name] = None
    return list(names)


def parse_build_info(text: str) -> tuple[str, set[str]]:
    """`smbd -b`: its MODULESDIR and its built-in modules (`vfs_default`, ...)."""
    if len(text) > MAX_BUILD_INFO:
        raise VfsError("smbd -b printed more than 1 MiB")
    folder = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                   if line.strip().startswith("MODULESDIR:")), "")
    if not folder.startswith("/") or any(part == ".." for part in folder.split("/")) or not folder.isprintable():
        raise VfsError("smbd -b names no MODULESDIR")
    builtin: set[str] = set()
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() == "Builtin modules:":
            for following in lines[index + 1:]:
                if not following.startswith((" ", "\t")):
                    break
                builtin.update(following.split())
    return folder, builtin


def missing(installed: Iterable[str], builtin: set[str], names: Iterable[str]) -> list[str]:
    """Of `names`, the ones neither built in (`vfs_NAME`) nor installed (`NAME.so`)."""
    present = set(installed)
    return [name for name in names if f"vfs_{name}" not in builtin and f"{name}.so" not in present]


def check(pct: Pct, vmid: int, smb_conf: str) -> None:
    """Raise VfsError unless container `vmid`'s Samba can load every module `smb_conf` names."""
    names = wanted(smb_conf)
    if not names:
        return
    info = pct.exec(vmid, ["smbd", "-b"], check=False)
    if info.returncode != 0:
        raise VfsError(f"container {vmid}: smbd -b failed (exit {info.returncode}): cannot check its VFS modules")
    folder, builtin = parse_build_info(info.stdout)
    listed = pct.exec(vmid, ["ls", "-1", f"{folder}/vfs"], check=False)
    gone = missing(listed.stdout.split() if listed.returncode == 0 else (), builtin, names)
    if gone:
        raise VfsError(f"container {vmid} has no Samba VFS module {', '.join(gone)} (the share's vfs objects): "
                       f"install {PACKAGE} in its template (docs/lxc.md); its smb.conf is left as it was")
