"""A file event's pass does work in proportion to the change, not to the number of shares:
the scanner reads only the names inotify reported (plus the files whose verdict depends on
the file system), statuses and specs are reused by identity, and the watcher turns events
into those names. Each test fails if that shortcut drops or misreads a change."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
)

from smbgw_agent.effects.watcher import _Handler
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.reconcile.desired import resolve_desired
from smbgw_agent.reconcile.scanner import MAX_SHARE_FILES, ShareScanner
from smbgw_agent.reconcile.state import StateStore
from tests.unit.test_desired import NODE, Node


def test_only_the_named_files_are_read_again(tmp_path: Path) -> None:
    shares = Node(tmp_path)
    shares.write("a.toml", 'path = "/tank/a"\n')
    shares.write("b.toml", 'path = "/tank/b"\n')
    first = shares.scanner.scan()
    shares.write("a.toml", 'path = "/tank/a"\ncomment = "changed"\n')
    second = shares.scanner.scan(changed={"a.toml"})
    assert list(second.files) == ["a.toml", "b.toml"]
    assert second.files["b.toml"] is first.files["b.toml"]
    spec = second.files["a.toml"].spec
    assert spec is not None and spec.comment == "changed"
    assert shares.scanner.fresh == {"a.toml"}
    # A name that is no share file is ignored; nothing named, nothing read.
    third = shares.scanner.scan(changed={".a.toml.swp", "notes.txt"})
    assert third.files == second.files and shares.scanner.fresh == set()


def test_files_created_removed_or_replaced_are_seen_without_their_events(tmp_path: Path) -> None:
    """inotify drops events when its queue is full (a burst of thousands of changes),
    and Debian's watchdog does not say so: the directory's names and inodes still tell."""
    shares = Node(tmp_path)
    shares.write("a.toml", 'path = "/tank/a"\n')
    shares.write("b.toml", 'path = "/tank/b"\n')
    shares.scanner.scan()
    shares.write("c.toml", 'path = "/tank/c"\n')
    (shares.directory / "b.toml").unlink()
    (shares.directory / ".a.toml.new").write_text('path = "/tank/a"\ncomment = "saved"\n')
    (shares.directory / ".a.toml.new").rename(shares.directory / "a.toml")
    scan = shares.scanner.scan(changed=())
    assert list(scan.files) == ["a.toml", "c.toml"] and shares.scanner.fresh == {"a.toml", "c.toml"}
    spec = scan.files["a.toml"].spec
    assert spec is not None and spec.comment == "saved"
    # What only the full pass catches: a write in place (same inode) nobody reported.
    shares.write("c.toml", 'path = "/tank/c"\ncomment = "in place"\n')
    assert shares.scanner.scan(changed=()).files["c.toml"] is scan.files["c.toml"]
    shares.scanner.forget()
    spec = shares.scanner.scan().files["c.toml"].spec
    assert spec is not None and spec.comment == "in place"


def test_a_file_whose_verdict_depends_on_the_file_system_is_read_every_time(tmp_path: Path) -> None:
    shares = Node(tmp_path)
    (tmp_path / "tank/late").symlink_to("/etc")
    shares.write("late.toml", 'path = "/tank/late/share"\n')
    assert not shares.scanner.scan().files["late.toml"].valid  # a link out of the allowed roots
    (tmp_path / "tank/late").unlink()
    (tmp_path / "tank/late").mkdir()
    assert shares.scanner.scan(changed=()).files["late.toml"].valid  # no event named it
    assert shares.scanner.fresh == {"late.toml"}


def test_an_edit_of_smb_conf_reads_every_file_again(tmp_path: Path) -> None:
    """Even where smb.conf did not exist at first (its creation used to go unnoticed
    until the next full pass)."""
    shares = Node(tmp_path)
    shares.write("public.toml", 'path = "/tank/public"\n')
    assert shares.scanner.scan().files["public.toml"].valid
    smb_conf = shares.paths.smb_conf
    smb_conf.parent.mkdir(parents=True, exist_ok=True)
    smb_conf.write_text("[global]\n[public]\npath = /srv/public\n")
    result = shares.scanner.scan(changed=()).files["public.toml"]
    assert not result.valid and "smb.conf" in str(result.problems[0])


@pytest.mark.parametrize("changed", [None, {"x.toml"}])
def test_a_listing_is_made_where_names_cannot_tell(tmp_path: Path, changed: set[str] | None) -> None:
    """No last scan (the first pass, after `forget`), or no names (polling, an event about
    shares.d itself): the directory is listed."""
    shares = Node(tmp_path)
    shares.write("a.toml", 'path = "/tank/a"\n')
    shares.scanner.scan()
    shares.write("b.toml", 'path = "/tank/b"\n')
    shares.scanner.forget()
    assert set(shares.scanner.scan(changed=changed).files) == {"a.toml", "b.toml"}


def test_a_missing_directory_is_listed_again_until_it_is_back(tmp_path: Path) -> None:
    shares = Node(tmp_path)
    shares.write("a.toml", 'path = "/tank/a"\n')
    moved = tmp_path / "moved"
    shares.directory.rename(moved)
    assert shares.scanner.scan().directory_problem is not None
    moved.rename(shares.directory)
    assert set(shares.scanner.scan(changed=()).files) == {"a.toml"}


def test_a_file_name_that_is_not_text_stays_reported_until_its_event_lists_again(tmp_path: Path) -> None:
    shares = Node(tmp_path)
    raw = os.path.join(os.fsencode(shares.directory), b"bad\xff.toml")
    with open(raw, "wb") as handle:
        handle.write(b'path = "/tank/x"\n')
    shown = "bad\\udcff.toml"
    assert not shares.scanner.scan().files[shown].valid
    shares.write("a.toml", 'path = "/tank/a"\n')
    assert set(shares.scanner.scan(changed={"a.toml"}).files) == {shown, "a.toml"}
    os.unlink(raw)
    assert set(shares.scanner.scan(changed={os.fsdecode(b"bad\xff.toml")}).files) == {"a.toml"}


def test_too_many_files_fall_back_to_the_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shares = Node(tmp_path)
    monkeypatch.setattr("smbgw_agent.reconcile.scanner.MAX_SHARE_FILES", 2)
    shares.write("a.toml", 'path = "/tank/a"\n')
    shares.write("b.toml", 'path = "/tank/b"\n')
    assert shares.scanner.scan().directory_problem is None
    shares.write("c.toml", 'path = "/tank/c"\n')
    scan = shares.scanner.scan(changed={"c.toml"})
    assert scan.directory_problem is not None and "only the first 2" in scan.directory_problem
    assert MAX_SHARE_FILES > 2  # the module's own limit is untouched


# ---- statuses and specs reused by identity -----------------------------------------


def test_statuses_are_reused_and_never_changed_in_place(tmp_path: Path) -> None:
    shares = Node(tmp_path)
    shares.write("a.toml", 'path = "/tank/a"\n')
    shares.write("b.toml", 'path = "/tank/b"\n')
    scan = shares.scanner.scan()
    first = resolve_desired(scan, shares.directory, {}, {}, NODE)
    again = resolve_desired(shares.scanner.scan(changed=()), shares.directory, {}, {}, NODE,
                            reuse=first.reusable)
    assert again.files["a.toml"] is first.files["a.toml"]
    # A copy of a under another file name: both are now in conflict, with new statuses;
    # the reused ones still say what they said.
    shares.write("a-copy.toml", 'name = "a"\npath = "/tank/a"\n')
    conflict = resolve_desired(shares.scanner.scan(changed={"a-copy.toml"}), shares.directory, {}, {}, NODE,
                               reuse=again.reusable)
    assert not conflict.files["a.toml"].valid and "a-copy.toml" in conflict.files["a.toml"].problems[0].message
    assert first.files["a.toml"].valid and first.files["a.toml"].problems == []
    assert "a.toml" not in conflict.reusable
    # Placed on another node (not a member): a new status with the warning, the old intact.
    shares.write("b.toml", 'path = "/tank/b"\nnode = "pve9"\n')
    placed = resolve_desired(shares.scanner.scan(changed={"b.toml"}), shares.directory, {}, {}, NODE,
                             ("pve1", "pve2"), reuse=conflict.reusable)
    status = placed.files["b.toml"]
    assert status.serving == "other-node" and "pve9" in status.warnings[0].message
    assert conflict.files["b.toml"].serving == "current" and conflict.files["b.toml"].warnings == []


def test_specs_read_back_from_the_database_are_replaced_by_the_scanners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a restart the state holds equal specs that are other objects: they are taken
    over once (no write), so later passes compare them by identity."""
    shares = Node(tmp_path)
    shares.write("a.toml", 'path = "/tank/a"\n')
    spec = shares.scanner.scan().files["a.toml"].spec
    assert spec is not None
    before = StateStore(tmp_path / "state")
    before.load()
    before.set_applied(spec)
    before.set_lastgood(spec)
    before.close()
    state = StateStore(tmp_path / "state")  # the agent restarted
    state.load()
    read_back = state.applied["a"]
    assert read_back == spec and read_back is not spec
    desired = resolve_desired(shares.scanner.scan(changed=()), shares.directory, state.lastgood, state.applied, NODE)
    assert desired.lastgood_updates == [] and desired.lastgood_same == [spec]
    writes: list[Any] = []
    monkeypatch.setattr(state, "_write", lambda *args: writes.append(args))
    state.set_applied(spec)
    state.set_lastgood(spec)
    assert state.applied["a"] is spec and state.lastgood["a.toml"] is spec and writes == []
    changed = ShareSpec.from_dict({**spec.to_dict(), "comment": "changed"})
    state.set_applied(changed)
    assert state.applied["a"] is changed and len(writes) == 1


# ---- the watcher's names ---------------------------------------------------------------


def _names(directory: Path, *events: Any) -> list[set[str] | None]:
    heard: list[set[str] | None] = []
    handler = _Handler(directory, lambda names: heard.append(None if names is None else set(names)))
    for event in events:
        handler.on_any_event(event)
    return heard


def test_events_name_the_files_they_touch(tmp_path: Path) -> None:
    d = tmp_path / "shares.d"
    assert _names(
        d,
        FileCreatedEvent(str(d / "a.toml")),
        FileModifiedEvent(str(d / "a.toml")),
        FileDeletedEvent(str(d / "b.toml")),
        FileMovedEvent(str(d / ".a.toml.swp"), str(d / "a.toml")),  # an editor's save
        FileMovedEvent(str(d / "c.toml"), str(tmp_path / "elsewhere.toml")),  # mv out
        FileMovedEvent(str(tmp_path / "incoming.toml"), str(d / "incoming.toml")),  # mv in
    ) == [{"a.toml"}, {"a.toml"}, {"b.toml"}, {".a.toml.swp", "a.toml"}, {"c.toml"}, {"incoming.toml"}]


def test_events_about_shares_d_itself_name_everything(tmp_path: Path) -> None:
    d = tmp_path / "shares.d"
    heard = _names(
        d,
        DirModifiedEvent(str(d)),  # comes with every file's own event: wakes, names nothing
        DirDeletedEvent(str(d)),
        DirCreatedEvent(str(d)),
        FileCreatedEvent(str(tmp_path / "sibling.toml")),  # beside shares.d: not heard
        FileCreatedEvent(str(d / "sub" / "deep.toml")),  # below it: not read, not heard
    )
    assert heard == [set(), None, None]


# ---- the names say enough: any sequence of file operations -------------------------

FILE_NAMES = ("a.toml", "b.toml", "c.toml", ".b.toml.swp", "notes.txt")
OPERATIONS = st.one_of(
    st.tuples(st.just("valid"), st.sampled_from(FILE_NAMES), st.sampled_from(["", "x", "y"])),
    st.tuples(st.just("broken"), st.sampled_from(FILE_NAMES), st.just("")),
    st.tuples(st.just("same name"), st.sampled_from(FILE_NAMES), st.just("")),
    st.tuples(st.just("delete"), st.sampled_from(FILE_NAMES), st.just("")),
    st.tuples(st.just("rename"), st.sampled_from(FILE_NAMES), st.sampled_from(FILE_NAMES)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.lists(OPERATIONS, max_size=4), max_size=6))
def test_reading_the_named_files_gives_what_listing_the_directory_gives(
    tmp_path_factory: pytest.TempPathFactory, steps: list[list[tuple[str, str, str]]],
) -> None:
    """Between two scans, files are written, broken, given a taken name, deleted and
    renamed; the scan told the names they touched equals a scan of a fresh scanner."""
    shares = Node(tmp_path_factory.mktemp("shares"))
    shares.scanner.scan()
    for operations in steps:
        touched: set[str] = set()
        for kind, name, extra in operations:
            path = shares.directory / name
            if kind == "valid":
                shares.write(name, f'path = "/tank/{name.strip(".")[:1]}"\ncomment = "{extra}"\n')
            elif kind == "broken":
                shares.write(name, "path = \n")
            elif kind == "same name":
                shares.write(name, 'name = "a"\npath = "/tank/a"\n')
            elif kind == "delete":
                path.unlink(missing_ok=True)
            elif path.exists():
                path.rename(shares.directory / extra)
                touched.add(extra)
            touched.add(name)
        told = shares.scanner.scan(changed=touched)
        listed = ShareScanner(shares.paths, shares.scanner.plugins, shares.scanner.config).scan()
        assert told == listed and list(told.files) == list(listed.files)
