"""The checks every string passes before it can reach smb.conf."""

from __future__ import annotations

import pytest

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.smbvalues import (
    MAX_SHARE_NAME,
    MAX_VALUE,
    RESERVED_SHARE_NAMES,
    check_parameter_name,
    check_principal,
    check_share_name,
    check_text,
    format_list,
    safe_file_stem,
)

# Characters that would start a new smb.conf line or hide one: C0/C1 controls, DEL,
# Unicode line/paragraph separators and invisible format characters (bidi overrides).
CONTROL_CHARACTERS = [
    "\n", "\r", "\x00", "\t", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029",
    "\u200b", "\u202e", "\ufeff",
]


@pytest.mark.parametrize("char", CONTROL_CHARACTERS, ids=lambda c: f"U+{ord(c):04X}")
def test_check_text_refuses_control_characters(char: str) -> None:
    with pytest.raises(FieldError, match="control characters") as info:
        check_text(f"before{char}after", "comment")
    assert f"U+{ord(char):04X}" in str(info.value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("ends with \\", "backslash"),
        ("ends with \\   ", "backslash"),
        ("100%", "'%'"),
        ("%m", "'%'"),
        ("%(echo)", "'%'"),
        (" leading", "white space"),
        ("trailing ", "white space"),
        ("x" * (MAX_VALUE + 1), "too long"),
    ],
)
def test_check_text_refuses(value: str, reason: str) -> None:
    with pytest.raises(FieldError) as info:
        check_text(value, "comment")
    assert reason in str(info.value)
    assert "comment" in str(info.value)


@pytest.mark.parametrize(
    "value",
    ["Finance team", "a \\ in the middle", "[brackets] mid-line", "# not a comment", "x" * MAX_VALUE, "Dépôt ü €", ""],
)
def test_check_text_accepts(value: str) -> None:
    assert check_text(value, "comment") == value


def test_check_text_percent_only_when_allowed() -> None:
    assert check_text("50%", "value", allow_percent=True) == "50%"
    with pytest.raises(FieldError):
        check_text("50%", "value")


def test_check_text_max_length_is_configurable() -> None:
    assert check_text("abc", "x", max_length=3) == "abc"
    with pytest.raises(FieldError, match="too long"):
        check_text("abcd", "x", max_length=3)


VALID_NAMES = [
    "finance", "a", "x" * MAX_SHARE_NAME, "Team A", "Dépôt", "data$", "a.b", "a-b", "a_b", "123", "homes2",
    "global-data", "ipc", "printers$",
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_share_names_accepted(name: str) -> None:
    assert check_share_name(name) == name


INVALID_NAMES = [
    ("", "1 to 80"),
    ("x" * (MAX_SHARE_NAME + 1), "1 to 80"),
    ("x" * 1000, "1 to 80"),
    ("global", "reserved"),
    ("GLOBAL", "reserved"),
    ("Global", "reserved"),
    ("homes", "reserved"),
    ("HOMES", "reserved"),
    ("printers", "reserved"),
    ("Printers", "reserved"),
    ("ipc$", "reserved"),
    ("IPC$", "reserved"),
    ("print$", "reserved"),
    ("a[b", "forbidden characters"),
    ("a]b", "forbidden characters"),
    ("[global]", "forbidden characters"),
    ("a/b", "forbidden characters"),
    ("a\\b", "forbidden characters"),
    ("a:b", "forbidden characters"),
    ("a;b", "forbidden characters"),
    ("a=b", "forbidden characters"),
    ("a,b", "forbidden characters"),
    ('a"b', "forbidden characters"),
    ("a*b", "forbidden characters"),
    ("a?b", "forbidden characters"),
    ("a<b", "forbidden characters"),
    ("a|b", "forbidden characters"),
    ("a+b", "forbidden characters"),
    ("a%b", "'%'"),
    ("a\nb", "control characters"),
    ("a\rb", "control characters"),
    ("a\u2028b", "control characters"),
    ("a\x00b", "control characters"),
    ("a\tb", "control characters"),
    ("a\x1bb", "control characters"),
    ("a\u202eb", "control characters"),
    (".hidden", "must not start"),
    ("-dash", "must not start"),
    ("dot.", "must not start"),
    (" lead", "white space"),
    ("trail ", "white space"),
]


@pytest.mark.parametrize(("name", "reason"), INVALID_NAMES, ids=[repr(n)[:30] for n, _ in INVALID_NAMES])
def test_share_names_refused(name: str, reason: str) -> None:
    with pytest.raises(FieldError) as info:
        check_share_name(name)
    assert reason in str(info.value)


def test_reserved_names_cover_design() -> None:
    assert {"global", "homes", "printers", "ipc$"} <= RESERVED_SHARE_NAMES


@pytest.mark.parametrize(
    "principal", ["alice", "@CORP\\finance", "+staff", "&group", "CORP\\Domain Users", "bob@corp.example", "Jürgen"]
)
def test_principals_accepted(principal: str) -> None:
    assert check_principal(principal) == principal


@pytest.mark.parametrize(
    ("principal", "reason"),
    [
        ("", "empty"),
        ("bob]", "forbidden characters"),
        ("[global]", "forbidden characters"),
        ("a,b", "forbidden characters"),
        ('a"b', "forbidden characters"),
        ("a=b", "forbidden characters"),
        ("a;b", "forbidden characters"),
        ("a%b", "'%'"),
        ("a:b", "forbidden characters"),
        ("bob\ninclude = /etc/passwd", "control characters"),
        ("bob\r", "control characters"),
        ("bob\u2028", "control characters"),
        ("bob\x00", "control characters"),
        ("CORP\\", "backslash"),
        (" bob", "white space"),
        ("x" * 257, "too long"),
    ],
)
def test_principals_refused(principal: str, reason: str) -> None:
    with pytest.raises(FieldError) as info:
        check_principal(principal)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("hide dot files", "hide dot files"),
        ("Hide   Dot  Files", "hide dot files"),
        ("  veto files ", "veto files"),
        ("shadow:format", "shadow:format"),
        ("acl_xattr:ignore system acls", "acl_xattr:ignore system acls"),
        ("ea support", "ea support"),
        ("idmap config CORP : range", "idmap config corp : range"),
        ("idmap config * : backend", "idmap config * : backend"),  # the default domain is named *
        ("IDMAP  CONFIG *  :  range", "idmap config * : range"),
    ],
)
def test_parameter_names_normalized(raw: str, normalized: str) -> None:
    assert check_parameter_name(raw) == normalized


@pytest.mark.parametrize(
    "raw", ["", "x", "[global]", "a=b", "1abc", "path\x00", "a%b", "ends-", "x" * 70, "a;b", "a/b", "dépôt", "a.b",
            "* : backend", "veto*files", "idmap config ** : backend", "idmap config *x : backend",
            "idmap config * : ", "idmap config * : back end", "idmap config * : range=1", "idmap config *"]
)
def test_parameter_names_refused(raw: str) -> None:
    with pytest.raises(FieldError, match=r"not a valid smb\.conf parameter name"):
        check_parameter_name(raw)


def test_format_list_quotes_items_with_spaces() -> None:
    assert format_list(["alice", "@CORP\\finance", "CORP\\Domain Users"]) == (
        'alice @CORP\\finance "CORP\\Domain Users"'
    )
    assert format_list([]) == ""


def test_safe_file_stem_is_case_insensitive_and_collision_free() -> None:
    assert safe_file_stem("Finance") == safe_file_stem("finance") == "finance"
    assert safe_file_stem("Team A") != safe_file_stem("team_a")
    assert safe_file_stem("a/b") != safe_file_stem("a_b")
    for name in ("Team A", "Dépôt", "../../etc/passwd", "x" * 80, "data$"):
        stem = safe_file_stem(name)
        assert stem == safe_file_stem(name)
        assert "/" not in stem
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in stem), stem
