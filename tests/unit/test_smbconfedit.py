"""Editing the administrator's smb.conf for `import --adopt`: the hand-over mark, and
taking sections out, with every other byte kept."""

from __future__ import annotations

from pathlib import Path

from smbgw_agent.model.shares import admin_name_message
from smbgw_agent.model.smbconf import HANDOVER_MARK, read_admin_shares
from smbgw_agent.model.smbconfedit import mark_handed_over, remove_sections, sections_in

CONF = """\
# the admin's notes
[global]
   workgroup = HOME   ; trailing comment

[Projects]
   path = /srv/smb/projects
   valid users = alice, \\
                 [bob]
; the archive follows
[archive]
   path = /srv/smb/archive
[Team Docs]
   path = /srv/smb/team docs"""


def test_marking_adds_one_line_under_each_named_header_and_nothing_else() -> None:
    marked = mark_handed_over(CONF, ["projects", "TEAM DOCS"])
    lines = marked.splitlines()
    assert lines[lines.index("[Projects]") + 1] == HANDOVER_MARK
    assert lines[lines.index("[Team Docs]") + 1] == HANDOVER_MARK
    assert marked.count(HANDOVER_MARK) == 2
    assert [line for line in lines if line != HANDOVER_MARK] == CONF.splitlines()
    assert mark_handed_over(marked, ["Projects"]) == marked  # once


def test_a_continued_line_that_looks_like_a_header_is_not_one() -> None:
    assert sections_in(CONF) == ["global", "projects", "archive", "team docs"]
    assert "[bob]" in remove_sections(CONF, ["bob"])


def test_removing_takes_the_section_to_the_next_header() -> None:
    left = remove_sections(CONF, ["PROJECTS", "team docs"])
    assert sections_in(left) == ["global", "archive"]
    assert "alice" not in left and "[bob]" not in left and "team docs" not in left
    assert left == CONF.split("[Projects]")[0] + "[archive]\n   path = /srv/smb/archive\n"


def test_removing_a_section_that_is_not_there_changes_nothing() -> None:
    assert remove_sections(CONF, ["nothere"]) == CONF


def test_the_mark_lets_a_share_file_declare_the_name_and_only_under_its_section(tmp_path: Path) -> None:
    conf = tmp_path / "smb.conf"
    conf.write_text(CONF)
    assert admin_name_message("projects", read_admin_shares(conf, tmp_path / "smbgw"))
    conf.write_text(mark_handed_over(CONF, ["Projects"]))
    admin = read_admin_shares(conf, tmp_path / "smbgw")
    assert admin_name_message("projects", admin) is None
    assert admin_name_message("archive", admin)  # the mark is its section's, not the next one's
    conf.write_text(CONF.replace("[global]", f"[global]\n{HANDOVER_MARK}"))
    assert admin_name_message("projects", read_admin_shares(conf, tmp_path / "smbgw"))
