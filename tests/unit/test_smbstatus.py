"""Parsing smbstatus --json: recorded real output, plus broken, hostile and huge documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smbgw_agent.observe.smbstatus import SmbstatusError, parse_smbstatus

DATA = Path(__file__).resolve().parents[1] / "data"


def test_recorded_samba_417_output() -> None:
    activity = parse_smbstatus((DATA / "smbstatus-4.17-one-session.json").read_text())
    assert activity.sessions == {"x": 1}
    assert activity.total_sessions == 1
    assert activity.open_files == {}


def test_sessions_are_counted_per_share_and_distinct() -> None:
    doc = {
        "sessions": {"1": {}, "2": {}},
        "tcons": {
            "a": {"service": "Finance", "session_id": "1"},
            "b": {"service": "finance", "session_id": "1"},
            "c": {"service": "finance", "session_id": "2"},
            "d": {"service": "docs", "session_id": "2"},
        },
        "open_files": {
            "f1": {"service_path": "/srv/finance", "opens": {"x": {}, "y": {}}},
            "f2": {"service_path": "/srv/finance", "opens": {"z": {}}},
        },
    }
    activity = parse_smbstatus(json.dumps(doc))
    assert activity.sessions == {"finance": 2, "docs": 1}
    assert activity.open_files == {"/srv/finance": 3}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '"string"',
        '{"tcons": []}',
        '{"tcons": {"a": 5}}',
        '{"tcons": {"a": {"service": 1, "session_id": "1"}}}',
        '{"tcons": {"a": {"service": "x"}}}',
        '{"open_files": {"a": []}}',
        '{"sessions": "many"}',
        "[" * 100000,
        '{"tcons": {' + "}" * 10,
    ],
)
def test_broken_output_is_a_clear_error(text: str) -> None:
    with pytest.raises(SmbstatusError):
        parse_smbstatus(text)


def test_empty_server_and_missing_tables() -> None:
    assert parse_smbstatus("{}").sessions == {}
    assert parse_smbstatus('{"tcons": null, "open_files": null}').total_sessions == 0


def test_huge_output_is_parsed_in_bounded_time() -> None:
    tcons = {str(i): {"service": f"s{i % 2000}", "session_id": str(i)} for i in range(100_000)}
    activity = parse_smbstatus(json.dumps({"tcons": tcons}))
    assert len(activity.sessions) == 2000
    assert activity.sessions["s0"] == 50
