"""agent.toml `[ctdb]`: every key with good and bad values, every problem with its key."""

from __future__ import annotations

from typing import Any

import pytest
from smbgw_plugins.ha.ctdb.table import CtdbSettings, parse_agent_table

from tests.support.tables import problems_of

MINIMAL = {"nodes": ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "cluster_lock": "/mnt/pve/cephfs/.ctdb.lock"}


def parse(**changes: Any) -> dict[str, Any]:
    return parse_agent_table({**MINIMAL, **changes})


def problems(data: dict[str, Any]) -> dict[str | None, str]:
    return problems_of(parse_agent_table, data)


def problem(key: str, value: Any) -> str:
    found = problems({**MINIMAL, key: value})
    assert list(found) == [key], found
    return found[key]


def test_defaults_from_the_design() -> None:
    assert parse() == {
        "nodes": ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "public_interface": None,
        "cluster_lock": "/mnt/pve/cephfs/.ctdb.lock", "keepalive_interval": 1, "keepalive_limit": 3,
        "log_level": "NOTICE",
    }


def test_the_design_example() -> None:
    parsed = parse(public_interface="vmbr0", keepalive_interval="1s", keepalive_limit=3, log_level="NOTICE")
    settings = CtdbSettings.from_config({"ctdb": parsed})
    assert settings == CtdbSettings(nodes=("10.0.0.1", "10.0.0.2", "10.0.0.3"),
                                    cluster_lock="/mnt/pve/cephfs/.ctdb.lock", public_interface="vmbr0")
    assert settings.live_nodes == settings.nodes


def test_required_keys() -> None:
    assert problems({}) == {"nodes": "required key is missing", "cluster_lock": "required key is missing"}


def test_unknown_keys_refused() -> None:
    found = problem("recovery_lock", "/x")
    assert found.startswith("unknown key") and "cluster_lock" in found


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"nodes": ["x"], "cluster_lock": "lock", "keepalive_interval": "0.5s", "keepalive_limit": 0,
                      "log_level": "LOUD", "public_interface": "a b"})
    assert set(found) == {"nodes", "cluster_lock", "keepalive_interval", "keepalive_limit", "log_level",
                          "public_interface"}


# ---- nodes -------------------------------------------------------------------------------


@pytest.mark.parametrize(("nodes", "expected"), [
    (["10.0.0.1"], ["10.0.0.1"]),
    (["10.0.0.1", "#10.0.0.2", "10.0.0.3"], ["10.0.0.1", "#10.0.0.2", "10.0.0.3"]),
    (["fd00:0:0::1", "#FD00::2"], ["fd00::1", "#fd00::2"]),
    (["10.0.0.1", "#10.0.0.2", "10.0.0.2"], ["10.0.0.1", "#10.0.0.2", "10.0.0.2"]),  # deleted, then re-added
    (["10.0.0.1", "#10.0.0.2", "#10.0.0.2"], ["10.0.0.1", "#10.0.0.2", "#10.0.0.2"]),
    ([f"10.0.0.{n}" for n in range(1, 65)], [f"10.0.0.{n}" for n in range(1, 65)]),
])
def test_nodes_good(nodes: list[str], expected: list[str]) -> None:
    assert parse(nodes=nodes)["nodes"] == expected


BAD_ADDRESSES = {
    "not an IP address": ["10.0.0.1/24", "10.0.0.1:4379", " 10.0.0.1", "#", "", "fe80::1%eth0", "node1"],
    "no space after '#'": ["# 10.0.0.1"],
    "loopback": ["127.0.0.1", "::1"],
    "multicast": ["224.0.0.1", "ff02::1"],
    "unspecified": ["0.0.0.0", "::"],
    "limited broadcast": ["255.255.255.255"],
    "link-local": ["fe80::1"],
    "write 10.0.0.1": ["::ffff:10.0.0.1"],
}


@pytest.mark.parametrize(("nodes", "message"), [
    ("10.0.0.1", "must be a list"),
    ([], "1 to 64"),
    ([f"10.0.0.{n}" for n in range(1, 66)], "has 65 entries"),
    (["10.0.0.1", "10.0.0.1"], "entry 2: 10.0.0.1 is entry 1 too"),
    (["10.0.0.1", "10.0.0.01"], "entry 2: '10.0.0.01' is not an IP address"),
    (["#10.0.0.1"], "every node is deleted"),
    ([1], "entry 1: must be an address string"),
    *(([address], message) for message, addresses in BAD_ADDRESSES.items() for address in addresses),
])
def test_nodes_bad(nodes: Any, message: str) -> None:
    assert message in problem("nodes", nodes)


def test_nodes_every_entry_and_the_repeat_reported() -> None:
    found = problem("nodes", ["10.0.0.1", "x", "10.0.0.1", "127.0.0.1"])
    assert "entry 2: 'x'" in found and "entry 3: 10.0.0.1 is entry 1 too" in found and "entry 4: 127.0.0.1" in found


# ---- public_interface -------------------------------------------------------------------------


def test_public_interface() -> None:
    assert parse(public_interface="vmbr0")["public_interface"] == "vmbr0"
    assert parse(public_interface="bond0.100")["public_interface"] == "bond0.100"
    for bad in ("", "a" * 16, "eth0:1", "a/b", "a b", 3):
        problem("public_interface", bad)


# ---- cluster_lock ------------------------------------------------------------------------------


@pytest.mark.parametrize("lock", [
    "/mnt/pve/cephfs/.ctdb.lock", "/srv/ctdb/.lock", "/mnt/my storage/lock", "/mnt/50%/lock", "/a#b;c=d",
    "!/usr/libexec/ctdb/ctdb_mutex_ceph_rados_helper ceph client.admin rbd ctdb_lock",
    "!/usr/local/bin/myhelper cluster", "!/bin/true",
])
def test_cluster_lock_good(lock: str) -> None:
    assert parse(cluster_lock=lock)["cluster_lock"] == lock


@pytest.mark.parametrize(("lock", "message"), [
    ("", "must not be empty"),
    ("relative/lock", "must be an absolute path"),
    ("/mnt/dir/", "names a directory"),
    ("/", "names a directory"),
    ("/lock\nother = 1", "control or non-printing"),
    ("/lock\tx", "control or non-printing"),
    ("/lock\u200b", "control or non-printing"),
    (" /lock", "leading or trailing white space"),
    ("/lock ", "leading or trailing white space"),
    ("/my  lock", "run of spaces"),
    ("/lock\\", "backslash"),
    ("!", "the program right after '!'"),
    ("! /bin/helper", "the program right after '!'"),
    ("!helper args", "'helper' must be an absolute path"),
    ("!/usr/bin/ arg", "must be an absolute path to a program"),
    ("/" + "x" * 1024, "too long"),
    (["/lock"], "not a list"),
])
def test_cluster_lock_bad(lock: Any, message: str) -> None:
    assert message in problem("cluster_lock", lock)


# ---- keepalive and log level -----------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("1s", 1), (1, 1), ("5s", 5), ("2000ms", 2), ("1m", 60), (3600, 3600), ("1h", 3600), (2.0, 2),
])
def test_keepalive_interval_good(value: Any, expected: int) -> None:
    parsed = parse(keepalive_interval=value)["keepalive_interval"]
    assert parsed == expected and isinstance(parsed, int)


@pytest.mark.parametrize(("value", "message"), [
    ("1.5s", "whole seconds"), ("1500ms", "whole seconds"), (0.5, "out of range"), (0, "out of range"),
    ("0s", "out of range"), ("2h", "out of range"), ("soon", "not a duration"), (True, "boolean"),
])
def test_keepalive_interval_bad(value: Any, message: str) -> None:
    assert message in problem("keepalive_interval", value)


def test_keepalive_limit() -> None:
    assert parse(keepalive_limit=1)["keepalive_limit"] == 1
    assert parse(keepalive_limit=100)["keepalive_limit"] == 100
    assert "at least 1" in problem("keepalive_limit", 0)
    assert "at most 100" in problem("keepalive_limit", 101)
    assert "integer" in problem("keepalive_limit", "3")
    assert "integer" in problem("keepalive_limit", 2.5)


def test_log_level() -> None:
    for level in ("ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"):
        assert parse(log_level=level)["log_level"] == level
    assert parse(log_level="info")["log_level"] == "INFO"
    for bad in ("ERR", "TRACE", "3", "", 3, None):
        assert "must be one of: ERROR, WARNING, NOTICE, INFO, DEBUG" in problem("log_level", bad)



# ---- settings -----------------------------------------------------------------------------


def test_settings_from_config() -> None:
    parsed = parse(nodes=["10.0.0.1", "#10.0.0.2"], public_interface="vmbr1", keepalive_interval="2s",
                   keepalive_limit=4, log_level="debug")
    settings = CtdbSettings.from_config({"ctdb": parsed, "vip": {}})
    assert settings == CtdbSettings(nodes=("10.0.0.1", "#10.0.0.2"), cluster_lock="/mnt/pve/cephfs/.ctdb.lock",
                                    public_interface="vmbr1", keepalive_interval=2, keepalive_limit=4,
                                    log_level="DEBUG")
    assert settings.live_nodes == ("10.0.0.1",)
    with pytest.raises(ValueError, match="no \\[ctdb\\] table"):
        CtdbSettings.from_config({"vip": {}})
