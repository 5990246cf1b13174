"""The desired set: what survives a broken or conflicting file, and what is placed here.

The pure rules (smbgw_agent.reconcile.desired) are tested with hand-made scan results; the end of
the file runs the real scanner over a real shares.d so the rules are seen as a pass
sees them (file edits, last-good bookkeeping, duplicates).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import Problem
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.pluginhost import PluginHost
from smbgw_agent.reconcile.desired import Desired, FileStatus, resolve_desired
from smbgw_agent.reconcile.scanner import FileResult, ScanResult, ShareScanner, is_share_file_name

DIR = Path("/etc/smbgw/shares.d")
NODE = "pve1"


def spec(
    name: str, file: str | None = None, path: str | None = None, node: str | None = None, comment: str = ""
) -> ShareSpec:
    return ShareSpec(
        name=name, file=file or f"{name.lower()}.toml", path=path or f"/tank/{name.lower()}", node=node,
        comment=comment,
    )


def valid(s: ShareSpec) -> FileResult:
    return FileResult(s.file, s)


def invalid(file: str, message: str = "read_only: must be true or false") -> FileResult:
    return FileResult(file, None, [Problem(DIR / file, message, "read_only", 2)])


def resolve(
    results: list[FileResult],
    lastgood: dict[str, ShareSpec] | None = None,
    applied: dict[str, ShareSpec] | None = None,
    node: str = NODE,
    cluster: tuple[str, ...] = (),
) -> Desired:
    scan = ScanResult({r.file: r for r in results})
    return resolve_desired(scan, DIR, lastgood or {}, applied or {}, node, cluster)


# ---- valid and invalid files --------------------------------------------------------


def test_valid_file_is_served_and_remembered() -> None:
    finance = spec("finance")
    desired = resolve([valid(finance)])
    assert desired.shares == {"finance": finance}
    assert desired.files["finance.toml"] == FileStatus("finance.toml", True, "finance", [], "current")
    assert desired.lastgood_updates == [finance]
    assert desired.lastgood_drops == [] and desired.other_node == {}


def test_unchanged_last_good_is_not_rewritten() -> None:
    finance = spec("finance")
    assert resolve([valid(finance)], lastgood={"finance.toml": finance}).lastgood_updates == []
    changed = spec("finance", comment="new")
    assert resolve([valid(changed)], lastgood={"finance.toml": finance}).lastgood_updates == [changed]


def test_invalid_file_keeps_its_last_good_spec() -> None:
    good = spec("finance", comment="before the bad edit")
    desired = resolve([invalid("finance.toml")], lastgood={"finance.toml": good}, applied={"finance": good})
    assert desired.shares == {"finance": good}
    status = desired.files["finance.toml"]
    assert (status.valid, status.share, status.serving) == (False, "finance", "last-good")
    assert [p.key for p in status.problems] == ["read_only"]
    assert desired.lastgood_updates == [] and desired.lastgood_drops == []


def test_invalid_file_keeps_last_good_even_if_nothing_was_applied_yet() -> None:
    # e.g. the agent restarted with an already-broken file: the last good spec is served.
    good = spec("finance")
    desired = resolve([invalid("finance.toml")], lastgood={"finance.toml": good})
    assert desired.shares == {"finance": good}
    assert desired.files["finance.toml"].serving == "last-good"


def test_invalid_file_without_history_serves_nothing() -> None:
    desired = resolve([invalid("new.toml"), valid(spec("other"))])
    assert set(desired.shares) == {"other"}
    status = desired.files["new.toml"]
    assert (status.valid, status.share, status.serving) == (False, None, "none")


def test_last_good_under_a_new_name_is_kept_by_file() -> None:
    # The file once declared "old"; now it is broken. Its last good spec is what stays.
    good = spec("old", file="team.toml")
    desired = resolve([invalid("team.toml")], lastgood={"team.toml": good}, applied={"old": good})
    assert desired.shares == {"old": good}
    assert desired.files["team.toml"].share == "old"


def test_valid_claim_wins_over_someone_elses_last_good() -> None:
    stale = spec("finance", file="old.toml", path="/tank/old")
    fresh = spec("finance", file="finance.toml")
    desired = resolve([invalid("old.toml"), valid(fresh)], lastgood={"old.toml": stale})
    assert desired.shares == {"finance": fresh}
    assert desired.files["old.toml"].serving == "none"
    assert desired.files["finance.toml"].serving == "current"


def test_removed_files_drop_their_last_good() -> None:
    kept, gone = spec("kept"), spec("gone")
    desired = resolve([invalid("kept.toml")], lastgood={"kept.toml": kept, "gone.toml": gone})
    assert desired.lastgood_drops == ["gone.toml"]
    assert "gone" not in desired.shares and desired.shares["kept"] == kept


# ---- duplicates ---------------------------------------------------------------------


@pytest.mark.parametrize("other_name", ["finance", "FINANCE", "Finance"])
def test_duplicates_are_reported_on_both_files_and_keep_the_applied_spec(other_name: str) -> None:
    live = spec("finance", comment="live")
    edited = spec("finance", comment="edited meanwhile")
    copy = spec(other_name, file="copy.toml", path="/tank/elsewhere")
    desired = resolve([valid(edited), valid(copy)], lastgood={"finance.toml": live}, applied={"finance": live})
    assert desired.shares == {"finance": live}  # neither file wins; what is live stays
    for file, other in (("finance.toml", "copy.toml"), ("copy.toml", "finance.toml")):
        status = desired.files[file]
        assert status.valid is False
        (problem,) = status.problems
        assert problem.file == DIR / file and problem.key == "name"
        assert other in problem.message and "also declared" in problem.message
    assert desired.files["finance.toml"].serving == "applied"
    assert desired.files["copy.toml"].serving == "none"
    assert desired.lastgood_updates == []  # a conflict records no new last-good spec


def test_a_duplicate_name_is_a_problem_of_the_line_that_sets_it() -> None:
    """Found by the generated-input suite: the conflict was reported without a line."""
    named = FileResult("copy.toml", spec("finance", file="copy.toml"), name_line=3)
    desired = resolve([valid(spec("finance")), named])
    assert desired.files["copy.toml"].problems[0].line == 3
    assert desired.files["finance.toml"].problems[0].line is None  # its name is its file's


def test_new_duplicates_serve_nothing() -> None:
    desired = resolve([valid(spec("data", file="a.toml")), valid(spec("DATA", file="b.toml"))])
    assert desired.shares == {}
    assert not desired.files["a.toml"].valid and not desired.files["b.toml"].valid
    assert desired.lastgood_updates == []


def test_three_way_duplicate_names_the_other_two() -> None:
    files = [valid(spec("data", file=f"{n}.toml", path=f"/tank/{n}")) for n in "abc"]
    desired = resolve(files)
    message = desired.files["a.toml"].problems[0].message
    assert "b.toml" in message and "c.toml" in message and "a.toml" not in message


def test_duplicate_resolved_when_one_file_goes() -> None:
    live = spec("finance")
    desired = resolve([valid(spec("finance", comment="edited"))], applied={"finance": live})
    assert desired.shares["finance"].comment == "edited"
    assert desired.files["finance.toml"].valid


def test_duplicate_of_a_share_applied_from_a_vanished_file_on_a_renamed_node() -> None:
    # The applied spec's file is gone and it names another node now: no KeyError.
    applied = {"x": spec("x", file="gone.toml", node="pve1")}
    desired = resolve(
        [valid(spec("x", file="b.toml", node="pve1")), valid(spec("X", file="c.toml", node="pve1"))],
        applied=applied, node="pve2",
    )
    assert desired.shares == {}
    assert desired.other_node == {"x": "pve1"}
    assert not desired.files["b.toml"].valid and not desired.files["c.toml"].valid


# ---- node placement -----------------------------------------------------------------


def test_node_placement() -> None:
    here, there, anywhere = spec("here", node=NODE), spec("there", node="pve2"), spec("anywhere")
    desired = resolve([valid(here), valid(there), valid(anywhere)])
    assert set(desired.shares) == {"here", "anywhere"}
    assert desired.other_node == {"there": "pve2"}
    assert desired.files["there.toml"].serving == "other-node"
    assert desired.files["there.toml"].valid  # placed elsewhere is not an error
    assert there in desired.lastgood_updates  # still remembered, for when it moves here


def test_a_share_placed_on_a_node_outside_the_cluster_is_reported() -> None:
    """With the cluster's members known (pmxcfs' .members), a node that is not one of
    them serves nothing: the file says so (a warning: it stays valid, on no node)."""
    typo, there = spec("typo", node="pve9"), spec("there", node="pve2")
    desired = resolve([valid(typo), valid(there)], cluster=(NODE, "pve2", "pve3"))
    [warning] = desired.files["typo.toml"].warnings
    assert warning.key == "node" and "'pve9' is not a node of this cluster" in warning.message
    assert "pve2, pve3" in warning.message and desired.files["typo.toml"].valid
    assert not desired.files["there.toml"].warnings
    assert not resolve([valid(typo)]).files["typo.toml"].warnings, "members unknown: no guess"


def test_last_good_placed_on_another_node_is_not_served_here() -> None:
    good = spec("finance", node="pve2")
    desired = resolve([invalid("finance.toml")], lastgood={"finance.toml": good})
    assert desired.shares == {}
    assert desired.files["finance.toml"].serving == "other-node"


def test_status_dict() -> None:
    desired = resolve([invalid("bad.toml", "boom")])
    assert desired.files["bad.toml"].to_dict() == {
        "valid": False, "share": None, "serving": "none",
        "problems": [{
            "file": str(DIR / "bad.toml"), "key": "read_only", "line": 2, "message": "boom",
            "security": False,
        }],
        "warnings": [],
    }


# ---- with the real scanner ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "is_share"),
    [
        ("finance.toml", True),
        ("a.b.toml", True),
        (".finance.toml", False),
        (".finance.toml.swp", False),
        ("finance.toml~", False),
        ("#finance.toml#", False),
        ("~finance.toml", False),
        (".#finance.toml", False),
        ("finance.toml.bak", False),
        ("finance.TOML", False),
        ("finance", False),
        (".toml", False),
    ],
)
def test_share_file_names(name: str, is_share: bool) -> None:
    assert is_share_file_name(name) is is_share


class Node:
    """A shares.d under a sandbox root plus the bookkeeping a pass keeps."""

    def __init__(self, root: Path) -> None:
        self.paths = Paths.under(root)
        self.directory = self.paths.host("/etc/smbgw/shares.d")
        self.directory.mkdir(parents=True)
        (root / "tank").mkdir()
        config = AgentConfig(node=NODE, allowed_roots=("/tank",))
        plugins = PluginHost({"mode_native": "smbgw_plugins.mode_native:NativeModePlugin"})
        self.scanner = ShareScanner(self.paths, plugins, config)
        self.lastgood: dict[str, ShareSpec] = {}
        self.applied: dict[str, ShareSpec] = {}

    def write(self, file: str, text: str) -> None:
        path = self.directory / file
        if path.exists():
            # Another size or mtime so the cache notices even within one clock tick.
            os.utime(path, ns=(1, 1))
        path.write_text(text)

    def run(self) -> Desired:
        desired = resolve_desired(self.scanner.scan(), self.directory, self.lastgood, self.applied, NODE)
        for update in desired.lastgood_updates:
            self.lastgood[update.file] = update
        for file in desired.lastgood_drops:
            self.lastgood.pop(file, None)
        self.applied = dict(desired.shares)
        return desired


def test_broken_edit_serves_last_good_and_recovers(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("finance.toml", 'path = "/tank/finance"\ncomment = "v1"\n')
    assert node.run().shares["finance"].comment == "v1"
    node.write("finance.toml", 'path = "/tank/finance"\ncomment = "v2"\nread_only = "yes"\n')
    desired = node.run()
    assert desired.shares["finance"].comment == "v1"
    status = desired.files["finance.toml"]
    assert (status.valid, status.serving) == (False, "last-good")
    assert status.problems[0].key == "read_only" and status.problems[0].line == 3
    node.write("finance.toml", 'path = "/tank/finance"\ncomment = "v3"\n')
    desired = node.run()
    assert desired.shares["finance"].comment == "v3"
    assert desired.files["finance.toml"].serving == "current"


def test_file_replaced_by_unreadable_things_keeps_last_good(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("finance.toml", 'path = "/tank/finance"\n')
    good = node.run().shares["finance"]
    target = node.directory / "finance.toml"

    def to_directory() -> None:
        target.unlink()
        target.mkdir()

    def to_symlink() -> None:
        target.rmdir()
        target.symlink_to("/etc/shadow")

    for breaker, reason in (
        (lambda: target.write_bytes(b"\x00\x01garbage"), "NUL"),
        (lambda: target.chmod(0), "not readable"),
        (to_directory, "directory"),
        (to_symlink, "symbolic link"),
    ):
        breaker()
        desired = node.run()
        assert desired.shares == {"finance": good}, reason
        status = desired.files["finance.toml"]
        assert (status.valid, status.serving) == (False, "last-good")
        assert reason in status.problems[0].message
    target.unlink()
    desired = node.run()
    assert desired.shares == {} and desired.lastgood_drops == ["finance.toml"]


def test_copying_a_file_creates_a_reported_duplicate_and_keeps_the_live_share(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("finance.toml", 'path = "/tank/finance"\n')
    live = node.run().shares["finance"]
    node.write("finance-copy.toml", 'name = "FINANCE"\npath = "/tank/other"\nread_only = true\n')
    desired = node.run()
    assert desired.shares == {"finance": live}
    assert not desired.files["finance.toml"].valid and not desired.files["finance-copy.toml"].valid
    assert "finance-copy.toml" in desired.files["finance.toml"].problems[0].message
    assert "finance.toml" in desired.files["finance-copy.toml"].problems[0].message
    (node.directory / "finance-copy.toml").unlink()
    desired = node.run()
    assert desired.files["finance.toml"].valid and desired.shares == {"finance": live}


def test_scanner_rereads_only_changed_files(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("a.toml", 'path = "/tank/a"\n')
    first = node.scanner.scan().files["a.toml"]
    assert node.scanner.scan().files["a.toml"] is first  # cached
    node.write("a.toml", 'path = "/tank/a"\ncomment = "changed"\n')
    second = node.scanner.scan().files["a.toml"]
    assert second is not first and second.spec is not None and second.spec.comment == "changed"
    node.scanner.forget()
    assert node.scanner.scan().files["a.toml"] is not second


def test_an_smb_conf_created_after_the_first_scan_is_read(tmp_path: Path) -> None:
    """Its creation used to go unnoticed (no file of it had been read) until the next
    full pass: a share file could keep a name the administrator's new smb.conf defines."""
    node = Node(tmp_path)
    node.write("public.toml", 'path = "/tank/public"\n')
    assert node.scanner.scan().files["public.toml"].valid
    node.paths.smb_conf.parent.mkdir(parents=True, exist_ok=True)
    node.paths.smb_conf.write_text("[global]\n[public]\npath = /srv/public\n")
    result = node.scanner.scan().files["public.toml"]
    assert not result.valid and "smb.conf" in str(result.problems[0])


def test_missing_directory_is_a_problem_not_an_empty_set(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.directory.rmdir()
    scan = node.scanner.scan()
    assert scan.files == {} and scan.directory_problem is not None
    assert "does not exist" in scan.directory_problem
