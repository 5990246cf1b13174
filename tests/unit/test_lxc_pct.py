"""What `pct` prints, parsed strictly (plugins/mode_lxc/pct.py): its documented output
reads, anything else is an error, never a guess."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smbgw_plugins.mode_lxc import pct
from smbgw_plugins.mode_lxc.pct import ListedContainer, PctOutputError, parse_list, parse_status

FORMAT = "%-10s %-10s %-12s %-20s\n"  # pve-container's `pct list` row
LISTED = (FORMAT % ("VMID", "Status", "Lock", "Name") + FORMAT % ("100", "running", "", "smbgw-finance")
          + FORMAT % ("2100", "stopped", "backup", "smbgw-hr"))


def test_pct_list_reads_rows_with_and_without_a_lock() -> None:
    assert parse_list(LISTED) == {100: ListedContainer(100, "running", "", "smbgw-finance"),
                                  2100: ListedContainer(2100, "stopped", "backup", "smbgw-hr")}
    assert parse_list("") == {}, "pct list prints nothing without containers"


def test_a_long_lock_name_that_breaks_the_columns_still_reads() -> None:
    row = FORMAT % ("101", "stopped", "snapshot-delete", "ct")
    assert parse_list(FORMAT % ("VMID", "Status", "Lock", "Name") + row)[101].lock == "snapshot-delete"


@pytest.mark.parametrize("text", [
    "garbage\n", FORMAT % ("VMID", "Status", "Lock", "Name") + "abc running x\n",
    FORMAT % ("VMID", "Status", "Lock", "Name") + "100 running\n",
    FORMAT % ("VMID", "Status", "Lock", "Name") + FORMAT % ("100", "running", "", "a") * 2,
])
def test_anything_else_from_pct_list_is_an_error(text: str) -> None:
    with pytest.raises(PctOutputError):
        parse_list(text)


def test_pct_status() -> None:
    assert parse_status("status: running\n") == "running"
    for text in ("", "running\n", "status: running\nstatus: stopped\n", "status: r;m\n"):
        with pytest.raises(PctOutputError):
            parse_status(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_no_output_makes_the_parsers_raise_anything_else(text: str) -> None:
    for parse in (parse_list, parse_status):
        with contextlib.suppress(PctOutputError):
            parse(text)


def test_the_address_a_dhcp_container_holds_is_read_from_ip_addr() -> None:
    line = ("2: eth0    inet 192.0.2.7/24 metric 1024 brd 192.0.2.255 scope global dynamic eth0\\       "
            "valid_lft 86385sec preferred_lft 86385sec\n")
    assert pct.parse_address(line) == "192.0.2.7/24"
    assert pct.parse_address("") is None, "no lease yet"
    with pytest.raises(pct.PctOutputError):
        pct.parse_address("2: eth0    inet fe80::1/64 scope global eth0\n")
    with pytest.raises(pct.PctOutputError):
        pct.parse_address("x\n" * 65)
