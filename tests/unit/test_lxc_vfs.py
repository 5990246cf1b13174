"""The check that a container's Samba has the VFS modules its smb.conf names
(plugins/mode_lxc/vfs.py): `smbd -b` as Samba 4.17 (Debian 12) prints it, built-in
modules, a missing module refused with the package to install, hostile output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from smbgw_plugins.mode_lxc import vfs
from smbgw_plugins.mode_lxc.pct import Pct

from smbgw_agent.effects.runner import Completed

# Excerpt of `smbd -b` of Debian 12's samba 4.17.12 (the lines the check reads, in place).
BUILD_INFO = """Build environment:
   Built by:    buildd@x86-conova-01
Paths:
   SBINDIR: /usr/sbin
   MODULESDIR: /usr/lib/x86_64-linux-gnu/samba
   SHLIBEXT: so
   LOCKDIR: /run/samba
Builtin modules:
   vfs_default vfs_not_implemented vfs_posixacl auth_builtin auth_sam auth_winbind pdb_smbpasswd pdb_tdbsam
"""
SMB_CONF = """[global]
\tserver role = standalone server
[finance]
\tpath = /srv/share
\tvfs objects = shadow_copy2 recycle,posixacl
\tVFS Objects = shadow_copy2
"""


class Runner:
    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], **_: Any) -> Completed:
        self.calls.append(list(argv))
        code, out = self.answers[argv[4]]
        return Completed(tuple(argv), code, out, "", 0.0)


def test_the_modules_named_are_read_once_each_in_order() -> None:
    assert vfs.wanted(SMB_CONF) == ["shadow_copy2", "recycle", "posixacl"]
    assert vfs.wanted("[x]\n\tpath = /srv\n") == []


def test_smbd_build_info_gives_the_module_folder_and_the_built_in_modules() -> None:
    folder, builtin = vfs.parse_build_info(BUILD_INFO)
    assert folder == "/usr/lib/x86_64-linux-gnu/samba"
    assert {"vfs_default", "vfs_posixacl"} <= builtin and "auth_sam" in builtin


@pytest.mark.parametrize("text", ["", "MODULESDIR: relative/path\n", "   MODULESDIR: /usr/../etc\n",
                                  "x" * (2 << 20)])
def test_build_info_without_a_sane_module_folder_is_refused(text: str) -> None:
    with pytest.raises(vfs.VfsError):
        vfs.parse_build_info(text)


def test_a_missing_module_is_refused_with_the_package_and_nothing_is_asked_without_modules() -> None:
    runner = Runner({"smbd": (0, BUILD_INFO), "ls": (0, "recycle.so\nacl_xattr.so\n")})
    with pytest.raises(vfs.VfsError, match=r"container 9000 has no Samba VFS module shadow_copy2 .*samba-vfs-modules"):
        vfs.check(Pct(runner), 9000, SMB_CONF)  # type: ignore[arg-type]
    assert runner.calls[1][-1] == "/usr/lib/x86_64-linux-gnu/samba/vfs"
    runner = Runner({"smbd": (0, BUILD_INFO), "ls": (0, "recycle.so\nshadow_copy2.so\n")})
    vfs.check(Pct(runner), 9000, SMB_CONF)  # type: ignore[arg-type]  # posixacl is built in
    runner = Runner({})
    vfs.check(Pct(runner), 9000, "[x]\n\tpath = /srv\n")  # type: ignore[arg-type]
    assert runner.calls == []
    with pytest.raises(vfs.VfsError, match="smbd -b failed"):
        vfs.check(Pct(Runner({"smbd": (127, "")})), 9000, SMB_CONF)  # type: ignore[arg-type]
