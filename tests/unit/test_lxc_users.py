"""The share's users copied into its container (plugins/proxmox/passdb.py): which names
are local users, pdbedit's smbpasswd-format entry read strictly, and no secret in a repr."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smbgw_plugins.proxmox.passdb import UserError, digest, local_names, parse_entry

LINE = "alice:1000:XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX:FB8469E6308256A9E91FC9F22950DCE4:[U          ]:LCT-6B118C75:"


def test_only_plain_names_are_local_users() -> None:
    assert local_names(["alice", "@staff", "+unix", "&nis", "CORP\\bob", "alice", "carol"]) == ["alice", "carol"]


def test_an_entry_reads_and_hides_its_hash() -> None:
    entry = parse_entry(LINE + "\n", "alice")
    assert (entry.name, entry.uid) == ("alice", 1000)
    assert "FB8469" not in repr(entry) and "FB8469" not in str(entry)
    assert digest([entry]) == digest([parse_entry(LINE, "alice")]) != digest([])


@pytest.mark.parametrize("text", [
    "", LINE + "\n" + LINE, LINE.replace("alice", "mallory"), LINE.replace(":1000:", ":x:"),
    LINE.replace("FB8469E6308256A9E91FC9F22950DCE4", "X" * 32), LINE.replace("LCT-", "LXT-"), LINE + "extra",
])
def test_anything_but_one_entry_with_an_nt_hash_is_refused(text: str) -> None:
    with pytest.raises(UserError):
        parse_entry(text, "alice")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_no_output_makes_the_reader_raise_anything_else(text: str) -> None:
    with contextlib.suppress(UserError):
        parse_entry(text, "alice")
