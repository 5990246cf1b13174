"""PathMemo resolves share paths as os.path.realpath does, with parents memoised.

The scan resolves every share path through one memo; a result that differed from
realpath's would let a symbolic link slip past the path checks."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from smbgw_agent.model.paths import Paths
from smbgw_agent.model.pathsafety import PathMemo, writable_ancestors


def _tree(base: Path) -> list[str]:
    """Directories, files and every kind of link a share path can meet."""
    (base / "srv/smb/a").mkdir(parents=True)
    (base / "srv/smb/file").write_text("not a directory")
    (base / "elsewhere/deep").mkdir(parents=True)
    (base / "srv/smb/abs").symlink_to(base / "elsewhere")
    (base / "srv/smb/rel").symlink_to("../../elsewhere/deep")
    (base / "srv/smb/chain").symlink_to("rel")
    (base / "srv/smb/dangling").symlink_to("nowhere/at/all")
    (base / "srv/smb/loop1").symlink_to("loop2")
    (base / "srv/smb/loop2").symlink_to("loop1")
    (base / "srv/smb/dot").symlink_to(".")
    (base / "srv/link").symlink_to("smb")
    names = ["a", "file", "abs", "rel", "chain", "dangling", "loop1", "dot", "missing"]
    parents = [base / "srv/smb", base / "srv/link", base / "srv/smb/abs", base / "srv/smb/rel",
               base / "srv/smb/dot", base / "srv/smb/file", base / "srv/smb/missing"]
    return [str(parent / name) for parent, name in itertools.product(parents, names)]


def test_the_memo_resolves_every_path_as_realpath_does(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    memo = PathMemo()
    for _ in range(2):  # the second round is answered from the memo
        for path in paths:
            assert memo.realpath(path) == os.path.realpath(path), path


def test_a_link_changed_between_scans_is_seen_by_a_new_memo(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "parent").symlink_to("one")
    memo = PathMemo()
    assert memo.realpath(str(tmp_path / "parent/share")) == str(tmp_path / "one/share")
    (tmp_path / "parent").unlink()
    (tmp_path / "parent").symlink_to("two")
    assert PathMemo().realpath(str(tmp_path / "parent/share")) == str(tmp_path / "two/share")


def test_writable_ancestors_is_the_same_with_and_without_a_memo(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _tree(root)
    os.chmod(root / "srv", 0o777)
    os.chmod(root / "elsewhere/deep", 0o775)
    paths = Paths.under(root)
    memo = PathMemo()
    declared = [f"/srv/{p}/{n}" for p in ("smb", "link", "smb/abs", "smb/rel", "smb/missing")
                for n in ("a", "rel", "abs", "missing")]
    for path in declared * 2:
        assert writable_ancestors(path, paths, memo) == writable_ancestors(path, paths), path
    assert any(writable_ancestors(path, paths, memo) for path in declared)
