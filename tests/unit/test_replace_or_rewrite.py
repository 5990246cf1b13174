"""Writing one file in a read-only directory that systemd made writable alone
(`ReadWritePaths=/etc/krb5.conf` under `ProtectSystem=full`): a rename over it fails, so
`fileio.replace_or_rewrite` rewrites it in place. Built the way systemd builds it: a
read-only tmpfs, the file bind-mounted read-write over itself."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from smbgw_agent.effects.fileio import replace_or_rewrite


@pytest.fixture
def sandboxed(tmp_path: Path) -> Iterator[Path]:
    etc = tmp_path / "etc"
    etc.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(etc)], check=True)
    mounted = [etc]
    try:
        target = etc / "krb5.conf"
        target.write_text("# the administrator's own, longer than what replaces it\n" * 3)
        # As systemd does it: the directory read-only by its mount (the file system stays
        # writable underneath), the one file bind-mounted read-write over itself.
        subprocess.run(["mount", "--bind", str(etc), str(etc)], check=True)
        mounted.append(etc)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(etc)], check=True)
        subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
        mounted.append(target)
        subprocess.run(["mount", "-o", "remount,bind,rw", str(target)], check=True)
        yield target
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_file_writable_alone_is_rewritten_in_place(sandboxed: Path) -> None:
    with pytest.raises(OSError):
        (sandboxed.parent / "other").write_text("x")  # the directory is read-only indeed
    replace_or_rewrite(sandboxed, "[libdefaults]\n\tdefault_realm = SMBGW.TEST\n")
    assert sandboxed.read_text() == "[libdefaults]\n\tdefault_realm = SMBGW.TEST\n", "cut to its new length"
    assert [p.name for p in sandboxed.parent.iterdir()] == ["krb5.conf"], "no temporary left behind"


def test_a_missing_file_in_a_read_only_directory_says_so(sandboxed: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        replace_or_rewrite(sandboxed.parent / "absent.conf", "x")


def test_a_writable_directory_gets_an_atomic_replace(tmp_path: Path) -> None:
    target = tmp_path / "krb5.conf"
    target.write_text("old\n")
    inode = target.stat().st_ino
    replace_or_rewrite(target, "new\n")
    assert target.read_text() == "new\n" and target.stat().st_ino != inode, "renamed over, not rewritten"
