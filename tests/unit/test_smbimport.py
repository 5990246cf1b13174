"""`smbgwctl import`'s pure part (smbgw_agent/model/smbimport.py): testparm's output read
back, Samba lists split as Samba does, TOML strings that read back exactly whatever they
hold, and each section mapped to a share file or left out with the reason."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smbgw_agent.model.smbimport import Section, parse_testparm, split_list, to_share_file, toml_string
from smbgw_agent.platform.changes import check_resource_id, share_resource

TESTPARM = """# Global parameters
[global]
\tserver string = %h server
\tidmap config * : backend = tdb


[Media]
\tcomment = Films = music
\tcreate mask = 0664
\tforce user = media
\tpath = /srv/smb/media
\tread only = No
\tvalid users = alice "CORP\\Domain Users" @family
\tbrowseable = No


[homes]
\tbrowseable = No


[laser]
\tpath = /var/spool/samba
\tprintable = Yes


[Team A]
\tpath = /srv/smb/team a
\tvfs objects = shadow_copy2
\tcomment =
"""


def test_testparm_output_is_read_as_sections_with_their_parameters() -> None:
    sections = parse_testparm(TESTPARM)
    assert [s.name for s in sections] == ["global", "Media", "homes", "laser", "Team A"]
    media = sections[1].parameters
    assert media["comment"] == "Films = music" and media["valid users"].startswith("alice ")
    assert sections[4].parameters["comment"] == ""


def test_samba_lists_split_on_commas_and_spaces_with_quotes_keeping_one_item() -> None:
    assert split_list('alice "CORP\\Domain Users" @family') == ["alice", "CORP\\Domain Users", "@family"]
    assert split_list("a, b,c  d") == ["a", "b", "c", "d"]
    assert split_list("") == []


@given(st.text(max_size=200))
def test_toml_strings_read_back_exactly(value: str) -> None:
    assert tomllib.loads(f"x = {toml_string(value)}\n")["x"] == value


def test_a_share_becomes_a_share_file_and_what_cannot_be_said_is_listed() -> None:
    media = to_share_file(parse_testparm(TESTPARM)[1], "/etc/samba/smb.conf")
    assert media.file == "media.toml" and media.uses_options
    assert media.text is not None
    data = tomllib.loads(media.text)
    assert data["name"] == "Media" and data["path"] == "/srv/smb/media" and data["comment"] == "Films = music"
    assert data["read_only"] is False and data["browseable"] is False
    assert data["valid_users"] == ["alice", "CORP\\Domain Users", "@family"]
    assert data["options"] == {"create mask": "0664"}
    assert [line.split(":")[0] for line in media.left_out] == ["force user = media"]


@pytest.mark.parametrize(("index", "said"), [(2, "not a file share"), (3, "a printer")])
def test_homes_and_printers_stay_in_smb_conf(index: int, said: str) -> None:
    imported = to_share_file(parse_testparm(TESTPARM)[index], "smb.conf")
    assert imported.text is None and said in imported.left_out[0]


@pytest.mark.parametrize(("section", "said"), [
    (Section("nopath", {"comment": "x"}), "no path"),
    (Section("a" * 81, {"path": "/srv/x"}), "stays in smb.conf"),
    (Section("bad[name]", {"path": "/srv/x"}), "stays in smb.conf"),
])
def test_a_section_the_model_cannot_hold_is_left_out_whole(section: Section, said: str) -> None:
    imported = to_share_file(section, "smb.conf")
    assert imported.text is None and said in imported.left_out[0]


def test_hostile_values_and_forbidden_parameters_never_reach_the_file_unquoted() -> None:
    section = Section("evil", {"path": '/srv/a"\nroot preexec = /bin/sh', "root preexec": "/bin/sh -c id",
                               "read only": "maybe", "valid users": "ok",
                               "x\ny": "1", "map archive": 'no" \n[global]'})
    imported = to_share_file(section, "smb.conf")
    assert imported.text is not None
    data = tomllib.loads(imported.text)
    assert data["path"] == '/srv/a"\nroot preexec = /bin/sh', "a string, whole: the parser refuses it later"
    assert data["options"] == {"map archive": 'no" \n[global]'}
    assert "root preexec" not in data.get("options", {}) and data["valid_users"] == ["ok"]
    left = " | ".join(imported.left_out)
    assert "root preexec" in left and "read only = maybe: not yes or no" in left


@pytest.mark.parametrize("users", ["ok bad\x01user", "%S"])
def test_a_valid_users_item_that_cannot_be_carried_keeps_the_whole_section(users: str) -> None:
    """Dropping it would admit users the section keeps out; all users, when none is left."""
    imported = to_share_file(Section("team", {"path": "/srv/team", "valid users": users}), "smb.conf")
    assert imported.text is None and "would admit more users" in imported.left_out[0]


@pytest.mark.parametrize(("global_lines", "read_only", "browseable"), [
    ("", True, True),  # Samba's defaults: a share that never says `read only` is read-only
    ("\tread only = No\n\tbrowseable = No\n", False, False),  # [global]'s, for every share
])
def test_read_only_and_browseable_are_written_as_the_section_has_them_in_effect(
        global_lines: str, read_only: bool, browseable: bool) -> None:
    # testparm leaves out what equals the default, and a share file's read_only defaults to
    # false: an [iso] with `read only = yes` (Samba's default) must not become writable.
    sections = parse_testparm(f"[global]\n{global_lines}\n[iso]\n\tpath = /srv/smb/iso\n"
                              "[own]\n\tpath = /srv/smb/own\n\tread only = No\n\tbrowseable = Yes\n")
    assert sections[1].inherited == sections[0].parameters
    iso, own = (to_share_file(section, "smb.conf") for section in sections[1:])
    assert iso.text is not None and own.text is not None
    data = tomllib.loads(iso.text)
    assert (data["read_only"], data["browseable"]) == (read_only, browseable) and not iso.left_out
    assert tomllib.loads(own.text)["read_only"] is False and tomllib.loads(own.text)["browseable"] is True


def test_values_with_samba_macros_are_left_out_and_a_macro_path_keeps_its_section() -> None:
    # The model refuses `%` (Samba expands it per client): written, the whole file would be
    # refused; left out, the rest of the share is imported.
    media = to_share_file(Section("media", {
        "comment": "Jellyfin library on %h", "path": "/srv/smb/media", "recycle:keeptree": "yes",
        "recycle:repository": ".recycle/%U", "root postexec": "/usr/local/bin/notify %S"}), "smb.conf")
    assert media.text is not None and "%" not in media.text
    data = tomllib.loads(media.text)
    assert "comment" not in data and data["options"] == {"recycle:keeptree": "yes"}
    assert [line.split(" = ")[0] for line in media.left_out] == ["comment", "recycle:repository", "root postexec"]
    assert "Samba macro" in media.left_out[1] and "may not set it" in media.left_out[2]
    private = to_share_file(Section("private", {"path": "/srv/smb/private/%U"}), "smb.conf")
    assert private.text is None and "Samba macro" in private.left_out[0] and "stays in smb.conf" in private.left_out[0]


def test_a_share_name_with_spaces_has_a_resource_id_and_node_ids_still_have_none() -> None:
    assert check_resource_id(share_resource("Team Docs")) == "share:team docs"
    for bad in ("vip: 10.0.0.1", "share: lead", "share:trail ", "share:tab\there", "ad\n"):
        with pytest.raises(ValueError):
            check_resource_id(bad)
