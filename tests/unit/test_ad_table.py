"""agent.toml `[ad]`: every key with good and bad values, every problem with its key; the
node's own ids (/etc/login.defs, local uids and gids) against the idmap ranges."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smbgw_plugins.ad.table import (
    DEFAULT_RANGE,
    AdSettings,
    IdConflict,
    IdmapSettings,
    LoginDefs,
    distinguished_name,
    local_id_conflicts,
    parse_agent_table,
    parse_login_defs,
)

from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.fields import FieldProblems
from smbgw_agent.model.idranges import IdRange
from tests.support.tables import problems_of

EXAMPLES = int(os.environ.get("SMBGW_PROPERTY_EXAMPLES", "150"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize="SMBGW_PROPERTY_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow], database=None)

MINIMAL: dict[str, Any] = {
    "realm": "CORP.EXAMPLE.COM", "workgroup": "CORP", "join_user": "svc-smbgw-join",
    "password_file": "/etc/smbgw/secrets/ad-join", "idmap": {"backend": "rid", "range": [100000, 999999]},
}
CONTRACT: dict[str, Any] = {
    "realm": "CORP.EXAMPLE.COM", "workgroup": "CORP", "join_user": "svc-smbgw-join",
    "password_file": "/etc/smbgw/secrets/ad-join", "ou": "OU=FileServers,DC=corp,DC=example,DC=com",
    "dns_register": False, "idmap": {"backend": "rid", "range": [100000, 999999]},
    "idmap_default_range": [3000, 7999], "health_interval": "60s", "rejoin_min_interval": "1h",
    "fallback": "local", "manage_krb5_conf": True, "leave_on_remove": False,
}
MEGABYTE = "x" * (1 << 20)


def parse(**changes: Any) -> dict[str, Any]:
    return parse_agent_table({**MINIMAL, **changes})


def without(*keys: str, **changes: Any) -> dict[str, Any]:
    return {**{k: v for k, v in MINIMAL.items() if k not in keys}, **changes}


def problems(data: dict[str, Any]) -> dict[str | None, str]:
    return problems_of(parse_agent_table, data)


def problem(key: str, value: Any) -> str:
    """The one problem of MINIMAL with `key` set to `value` (a dotted key sets a nested one)."""
    data = {**MINIMAL}
    if "." in key:
        outer, inner = key.split(".")
        data[outer] = {**data[outer], inner: value}
    else:
        data[key] = value
    found = problems(data)
    assert list(found) == [key], found
    return found[key]


# ---- the whole table ------------------------------------------------------------------------


def test_the_contract_example() -> None:
    parsed = parse_agent_table(CONTRACT)
    assert parsed == {
        "realm": "CORP.EXAMPLE.COM", "workgroup": "CORP", "join_user": "svc-smbgw-join",
        "password_file": "/etc/smbgw/secrets/ad-join", "credential": None,
        "ou": "OU=FileServers,DC=corp,DC=example,DC=com", "dns_register": False,
        "idmap": {"backend": "rid", "range": [100000, 999999]}, "idmap_default_range": [3000, 7999],
        "health_interval": 60.0, "rejoin_min_interval": 3600.0, "fallback": "local", "manage_krb5_conf": True,
        "leave_on_remove": False,
    }
    settings = AdSettings.from_config({"ad": parsed, "ctdb": {}})
    assert settings == AdSettings(
        realm="CORP.EXAMPLE.COM", workgroup="CORP", join_user="svc-smbgw-join",
        idmap=IdmapSettings("rid", IdRange(100000, 999999)), password_file="/etc/smbgw/secrets/ad-join",
        ou="OU=FileServers,DC=corp,DC=example,DC=com",
    )
    assert settings.id_ranges() == [("idmap.range", IdRange(100000, 999999)),
                                     ("idmap_default_range", IdRange(3000, 7999))]


def test_defaults() -> None:
    parsed = parse()
    assert {key: parsed[key] for key in ("credential", "ou", "dns_register", "idmap_default_range",
                                         "health_interval", "rejoin_min_interval", "fallback",
                                         "manage_krb5_conf", "leave_on_remove")} == {
        "credential": None, "ou": None, "dns_register": False, "idmap_default_range": [3000, 7999],
        "health_interval": 60.0, "rejoin_min_interval": 3600.0, "fallback": "local", "manage_krb5_conf": True,
        "leave_on_remove": False,
    }
    settings = AdSettings.from_parsed(parsed)
    defaults = AdSettings(realm="R.X", workgroup="W", join_user="u", idmap=IdmapSettings("rid", IdRange(1000, 9999)))
    for field in ("dns_register", "idmap_default_range", "health_interval", "rejoin_min_interval", "fallback",
                  "manage_krb5_conf", "leave_on_remove"):
        assert getattr(settings, field) == getattr(defaults, field), field
    assert defaults.idmap_default_range == DEFAULT_RANGE == IdRange(3000, 7999)


def test_required_keys() -> None:
    found = problems({})
    assert set(found) == {"realm", "workgroup", "join_user", "password_file", "idmap"}
    assert found["realm"] == found["workgroup"] == found["join_user"] == "required key is missing"
    assert "password_file = \"/etc/smbgw/secrets/ad-join\" or credential = \"ad-join\"" in found["password_file"]
    assert "idmap = { backend = \"rid\", range = [100000, 999999] }" in found["idmap"]


def test_unknown_keys_refused() -> None:
    found = problem("join_password", "secret")
    assert found.startswith("unknown key") and "password_file" in found and "credential" in found
    assert problem("idmap.rangesize", 100000).startswith("unknown key (known: backend, range)")


def test_every_problem_is_reported_at_once() -> None:
    found = problems({
        "realm": "corp", "workgroup": "CORP.LOCAL", "join_user": "a%b", "password_file": "relative",
        "credential": "a b", "ou": "FileServers", "dns_register": "no",
        "idmap": {"backend": "hash", "range": [1, 2]}, "idmap_default_range": [1, 2], "health_interval": "1s",
        "rejoin_min_interval": "1m", "fallback": "cache", "manage_krb5_conf": 1, "leave_on_remove": "yes",
    })
    assert set(found) == {"realm", "workgroup", "join_user", "password_file", "credential", "ou", "dns_register",
                          "idmap.backend", "idmap.range", "idmap_default_range", "health_interval",
                          "rejoin_min_interval", "fallback", "manage_krb5_conf", "leave_on_remove"}, found


def test_settings_need_the_table() -> None:
    with pytest.raises(ValueError, match=r"no \[ad\] table"):
        AdSettings.from_config({"ctdb": {}})


# ---- realm ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "CORP.EXAMPLE.COM", "AD.CORP", "A.B", "X-1.EXAMPLE.COM", "CORP.EXAMPLE.CO.UK", "123.EXAMPLE.COM",
    ".".join(["A" * 63] * 3) + ".COM", ("A" * 61 + ".") * 4 + "A",
])
def test_realm_good(value: str) -> None:
    assert parse(realm=value)["realm"] == value


@pytest.mark.parametrize(("value", "message"), [
    ("corp.example.com", "must be upper case (AD's Kerberos realm is its DNS name in capitals, and Kerberos compares "
                         "realms case-sensitively): write \"CORP.EXAMPLE.COM\""),
    ("Corp.Example.Com", "write \"CORP.EXAMPLE.COM\""),
    ("CORP", "'CORP' is one label: the realm is the domain's full DNS name in upper case"),
    ("CORP.EXAMPLE.COM.", "write it without the trailing dot, \"CORP.EXAMPLE.COM\""),
    ("CORP..COM", "has an empty label"),
    (".CORP.COM", "has an empty label"),
    (".", "has an empty label"),
    ("-CORP.COM", "the label '-CORP' starts or ends with '-'"),
    ("CORP-.COM", "the label 'CORP-' starts or ends with '-'"),
    ("CORP_X.COM", "contains '_': a realm is a DNS name of letters, digits, '-' and '.'"),
    ("CORP EXAMPLE.COM", "contains ' '"),
    (" CORP.COM", "contains ' '"),
    ("CÖRP.COM", "contains 'Ö'"),
    ("CORP.COM\n[global]", "control character U+000A"),
    ("CORP.COM\x00", "control character U+0000"),
    ("A" * 64 + ".COM", "has a label of 64 characters; a DNS label has at most 63"),
    ("A." * 127, "is too long (254 characters; at most 253)"),
    ("10.0.0.1", "looks like an IP address"),
    ("", "must not be empty: write e.g. \"CORP.EXAMPLE.COM\""),
    (MEGABYTE, "is too long (1048576 characters; at most 253)"),
    (3, "must be a string such as \"CORP.EXAMPLE.COM\", not an integer"),
    (["CORP.EXAMPLE.COM"], "not a list"),
])
def test_realm_bad(value: Any, message: str) -> None:
    assert message in problem("realm", value)


# ---- workgroup --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["CORP", "C", "CORP-1", "MY_DOMAIN", "A" * 15, "123"])
def test_workgroup_good(value: str) -> None:
    assert parse(workgroup=value)["workgroup"] == value


@pytest.mark.parametrize(("value", "message"), [
    ("corp", "must be upper case, as AD spells NetBIOS names: write \"CORP\""),
    ("Corp-1", "write \"CORP-1\""),
    ("A" * 16, "has 16 characters; a NetBIOS name has at most 15"),
    ("", "must not be empty"),
    *((f"CO{char}RP", f"contains {char!r}, which a NetBIOS name cannot hold") for char in '\\/:*?"<>|'),
    (".CORP", "starts with '.', which a NetBIOS name cannot"),
    (" CORP", "has leading or trailing spaces; write 'CORP'"),
    ("CORP ", "has leading or trailing spaces; write 'CORP'"),
    ("CO RP", "contains ' ': the workgroup becomes part of smb.conf parameter names"),
    ("CORP.LOCAL", "contains '.': the workgroup becomes part of smb.conf parameter names (\"idmap config "
                   "CORP.LOCAL : range\")"),
    ("CORP%", "contains '%'"),
    ("CÖRP", "contains 'Ö'"),
    ("CO\tRP", "control character U+0009"),
    ("CORP\n", "control character U+000A"),
    (MEGABYTE, "has 1048576 characters; a NetBIOS name has at most 15"),
    (None, "must be a string"),
])
def test_workgroup_bad(value: Any, message: str) -> None:
    assert message in problem("workgroup", value)


# ---- join_user --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["svc-smbgw-join", "Administrator", "a", "j.doe", "x" * 20, "Jöran", "a b",
                                   "svc$"])
def test_join_user_good(value: str) -> None:
    assert parse(join_user=value)["join_user"] == value


@pytest.mark.parametrize(("value", "message"), [
    ("svc@CORP.EXAMPLE.COM", "names a domain too ('@'): write 'svc'; the join always authenticates in the realm"),
    ("CORP\\svc", "names a domain too ('\\\\'): write 'svc'"),
    ("CORP/svc", "names a domain too ('/'): write 'svc'"),
    ("@CORP", "write the account's logon name"),
    ("svc%secret", "contains '%', which Samba's tools read as user%password"),
    ("svc;x", "contains ';', which an AD logon name cannot hold"),
    ("a,b", "contains ','"),
    ("a[b]", "contains '['"),
    (" svc", "has leading or trailing spaces; write 'svc'"),
    ("...", "is not periods only"),
    ("-svc", "starts with '-', which the join command would read as an option"),
    ("x" * 21, "has 21 characters; an AD logon name"),
    ("svc\njoin", "control character U+000A"),
    ("svc\u200b", "control character U+200B"),
    ("", "must not be empty"),
    (MEGABYTE, "is too long (1048576 characters; at most 1024)"),
    (True, "must be a string"),
])
def test_join_user_bad(value: Any, message: str) -> None:
    assert message in problem("join_user", value)


# ---- password_file and credential -------------------------------------------------------------


def test_password_from_a_file_or_a_credential() -> None:
    assert parse()["password_file"] == "/etc/smbgw/secrets/ad-join"
    parsed = parse_agent_table(without("password_file", credential="ad-join"))
    assert parsed["credential"] == "ad-join" and parsed["password_file"] is None
    assert AdSettings.from_parsed(parsed).credential == "ad-join"


def test_password_from_neither_or_both_is_refused() -> None:
    assert "required key is missing: write where the join password comes from" in \
        problems(without("password_file"))["password_file"]
    assert problems({**MINIMAL, "credential": "ad-join"}) == {
        "credential": "password_file is given too: the join password comes from one place, keep password_file or "
                      "credential",
    }


@pytest.mark.parametrize("value", ["/etc/smbgw/secrets/ad-join", "/a", "/run/secrets/my join%1", "/x/.hidden"])
def test_password_file_good(value: str) -> None:
    assert parse(password_file=value)["password_file"] == value


@pytest.mark.parametrize(("value", "message"), [
    ("secrets/ad-join", "must be an absolute path, e.g. \"/etc/smbgw/secrets/ad-join\""),
    ("~/ad-join", "must be an absolute path"),
    ("/etc/smbgw/secrets/", "names a directory; the password is a file"),
    ("/etc/smbgw/../shadow", "has '.' or '..' in it"),
    ("/etc/./x", "has '.' or '..' in it"),
    ("/etc/x\x00", "control character U+0000"),
    ("/etc/x\ny", "control character U+000A"),
    ("", "must not be empty"),
    ("/" + "x" * 4095, "is too long (4096 characters; at most 4095)"),
    (MEGABYTE, "is too long"),
    (["/etc/x"], "must be a string"),
])
def test_password_file_bad(value: Any, message: str) -> None:
    assert message in problem("password_file", value)


@pytest.mark.parametrize("value", ["ad-join", "AD_JOIN.v2", "x", "." * 3, "a" * 255])
def test_credential_good(value: str) -> None:
    assert parse_agent_table(without("password_file", credential=value))["credential"] == value


@pytest.mark.parametrize(("value", "message"), [
    ("ad join", "contains ' ': a credential name here holds letters, digits, '_', '-' and '.'"),
    ("ad:join", "contains ':'"),
    ("ad/join", "contains '/'"),
    ("ad%i", "contains '%'"),
    ("ädjoin", "contains 'ä'"),
    (".", "'.' is not a credential name"),
    ("..", "'..' is not a credential name"),
    ("", "must not be empty"),
    ("a" * 256, "is too long (256 characters; at most 255)"),
    ("a\tb", "control character U+0009"),
    (1, "must be a string"),
])
def test_credential_bad(value: Any, message: str) -> None:
    found = problems(without("password_file", credential=value))
    assert list(found) == ["credential"] and message in found["credential"], found


# ---- ou ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "OU=FileServers,DC=corp,DC=example,DC=com",
    "OU=FileServers, DC=corp, DC=example, DC=com",
    "ou=Servers,ou=Berlin,dc=CORP,dc=Example,dc=COM",
    "CN=Computers,DC=corp,DC=example,DC=com",
    "OU=Smith\\, John,DC=corp,DC=example,DC=com",
    "OU=a\\;b+CN=x,DC=corp,DC=example,DC=com",
    "OU=R&D (Linux),DC=corp,DC=example,DC=com",
    "OU=Ö-Server,DC=corp,DC=example,DC=com",
    "2.5.4.11=FileServers,DC=corp,DC=example,DC=com",
])
def test_ou_good(value: str) -> None:
    assert parse(ou=value)["ou"] == value


@pytest.mark.parametrize(("value", "message"), [
    ("FileServers", "is not an LDAP distinguished name: 'FileServers' is not type=value (e.g. OU=FileServers)"),
    ("Computers/Servers", "is not type=value"),
    ("OU=FileServers,,DC=corp,DC=example,DC=com", "has an empty RDN"),
    ("OU=FileServers,DC=corp,DC=example,DC=com,", "has an empty RDN"),
    (",OU=FileServers,DC=corp,DC=example,DC=com", "has an empty RDN"),
    ("OU=,DC=corp,DC=example,DC=com", "'OU=' has an empty value"),
    ("O U=x,DC=corp,DC=example,DC=com", "'O U' is not an attribute type"),
    ("=x,DC=corp,DC=example,DC=com", "'' is not an attribute type"),
    ("OU=a;b,DC=corp,DC=example,DC=com", "has an unescaped ';'; write it as '\\;'"),
    ("OU=a<b,DC=corp,DC=example,DC=com", "has an unescaped '<'"),
    ('OU="x",DC=corp,DC=example,DC=com', "has an unescaped '\"'"),
    ("OU=x,DC=corp,DC=example,DC=com\\", "ends with a lone backslash"),
    (" OU=x,DC=corp,DC=example,DC=com", "has leading or trailing spaces"),
    ("OU=x,DC=corp,DC=example,DC=com\n", "control character U+000A"),
    ("OU=FileServers,DC=other,DC=example,DC=com",
     "is not inside the domain CORP.EXAMPLE.COM: it ends with DC=other,DC=example,DC=com, an OU of the domain ends "
     "with DC=corp,DC=example,DC=com (e.g. \"OU=FileServers,DC=corp,DC=example,DC=com\")"),
    ("OU=FileServers,DC=example,DC=com", "it ends with DC=example,DC=com"),
    ("OU=FileServers", "it ends with no DC= part"),
    ("DC=corp,DC=example,DC=com", "is the domain itself; name the OU for the computer account"),
    ("", "must not be empty: write e.g. \"OU=FileServers,DC=corp,DC=example,DC=com\""),
    ("OU=" + "x" * 1022, "is too long (1025 characters; at most 1024)"),
    (MEGABYTE, "is too long"),
    ({"ou": "x"}, "must be a string"),
])
def test_ou_bad(value: Any, message: str) -> None:
    assert message in problem("ou", value)


def test_ou_is_not_compared_with_a_bad_realm() -> None:
    assert set(problems({**MINIMAL, "realm": "corp.example.com", "ou": "OU=x,DC=corp,DC=example,DC=com"})) == \
        {"realm"}


def test_distinguished_name_parts() -> None:
    assert distinguished_name("OU=a\\,b+CN=c, DC=x") == [[("OU", "a\\,b"), ("CN", "c")], [("DC", "x")]]


# ---- idmap --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("idmap", "default", "expected_default"), [
    ({"backend": "rid", "range": [100000, 999999]}, None, [3000, 7999]),
    ({"backend": "ad", "range": [10000, 999999]}, None, [3000, 7999]),
    ({"backend": "rid", "range": [1000, 1999]}, [2000, 2999], [2000, 2999]),
    ({"backend": "rid", "range": [10000, 2**31 - 1]}, [1000, 9999], [1000, 9999]),
    ({"backend": "ad", "range": [100000, 999999]}, [1000000, 1999999], [1000000, 1999999]),
    ({"backend": "autorid", "range": [100000, 299999]}, None, None),
    ({"backend": "autorid", "range": [1000, 2**31 - 1]}, None, None),
])
def test_idmap_good(idmap: dict[str, Any], default: list[int] | None, expected_default: list[int] | None) -> None:
    changes: dict[str, Any] = {"idmap": idmap}
    if default is not None:
        changes["idmap_default_range"] = default
    parsed = parse(**changes)
    assert parsed["idmap"] == idmap and parsed["idmap_default_range"] == expected_default
    settings = AdSettings.from_parsed(parsed)
    assert settings.idmap == IdmapSettings(idmap["backend"], IdRange(*idmap["range"]))
    assert [key for key, _ in settings.id_ranges()] == \
        ["idmap.range"] + ([] if expected_default is None else ["idmap_default_range"])


def test_idmap_missing_or_not_a_table() -> None:
    assert "required key is missing: write e.g. idmap = {" in problems(without("idmap"))["idmap"]
    assert problem("idmap", "rid") == "must be a table, not a string"
    assert problems(without("idmap", idmap={})) == {"idmap.backend": "required key is missing",
                                                    "idmap.range": "required key is missing: write e.g. "
                                                                   "range = [100000, 999999]"}


@pytest.mark.parametrize(("backend", "message"), [
    ("tdb", "'tdb' must be one of: rid, autorid, ad"),
    ("RID", "must be one of"),
    ("", "must be one of"),
    (1, "must be a string"),
])
def test_idmap_backend_bad(backend: Any, message: str) -> None:
    assert message in problem("idmap.backend", backend)


@pytest.mark.parametrize(("value", "message"), [
    ([100000], "must be [low, high], two integers such as [100000, 999999], not a list of 1"),
    ([1, 2, 3], "not a list of 3"),
    ("100000-999999", "not a string"),
    ({"low": 1}, "not a table"),
    ([100000, "999999"], "it holds a string"),
    ([100000.0, 999999], "it holds a number"),
    ([True, 999999], "it holds a boolean"),
    ([999, 999999], "starts at 999; an idmap range starts at 1000 or above"),
    ([-5, 999999], "starts at -5"),
    ([100000, 2**31], "ends at 2147483648; stay at or below 2147483647 (2^31 - 1): Samba's ids are 32-bit unsigned, "
                      "but many tools read ids from 2^31 on as negative numbers"),
    ([100000, 2**32 - 1], "ends at 4294967295"),
    ([100000, 2**70], "ends at a number beyond 2^64"),
    ([-(2**70), 5000], "starts at -a number beyond 2^64"),
    ([999999, 100000], "[999999, 100000]: the low end must be below the high end"),
    ([5000, 5000], "the low end must be below the high end"),
    ([100000, 100998], "100000-100998 holds 999 ids; at least 1000 (rid maps RID r to low + r"),
    ([1000] * 2 + [1] * 300, "not a list of 302"),
])
def test_idmap_range_bad(value: Any, message: str) -> None:
    assert message in problem("idmap.range", value)


def test_idmap_range_sizes_per_backend() -> None:
    assert parse(idmap={"backend": "rid", "range": [100000, 100999]})["idmap"]["range"] == [100000, 100999]
    found = problems({**MINIMAL, "idmap": {"backend": "ad", "range": [10000, 10998]}})
    assert "holds 999 ids; at least 1000 (it must hold every uidNumber and gidNumber" in found["idmap.range"]
    found = problems({**MINIMAL, "idmap": {"backend": "autorid", "range": [100000, 299998]}})
    assert found == {"idmap.range": "100000-299998 holds 199999 ids; autorid needs at least 200000: two slices of "
                                    "its range size 100000, one for the BUILTIN domain and one for the domain"}


def test_autorid_replaces_the_default_range() -> None:
    found = problems({**MINIMAL, "idmap": {"backend": "autorid", "range": [100000, 299999]},
                      "idmap_default_range": [3000, 7999]})
    assert found == {"idmap_default_range": "is not used with idmap.backend = \"autorid\": Samba runs autorid as the "
                                            "default backend, so idmap.range is the default range; remove "
                                            "idmap_default_range"}


@pytest.mark.parametrize(("value", "message"), [
    ([3000, 3998], "3000-3998 holds 999 ids; at least 1000"),
    ([500, 7999], "starts at 500"),
    ([3000], "must be [low, high]"),
    ("3000-7999", "not a string"),
    (MEGABYTE, "not a string"),
])
def test_idmap_default_range_bad(value: Any, message: str) -> None:
    assert message in problem("idmap_default_range", value)


def test_overlapping_ranges_are_refused_naming_both() -> None:
    found = problems({**MINIMAL, "idmap": {"backend": "rid", "range": [5000, 99999]},
                      "idmap_default_range": [1000, 5000]})
    assert found == {"idmap_default_range": "1000-5000 overlaps idmap.range 5000-99999: Samba needs disjoint ranges "
                                            "(an id in both would belong to two domains); move one"}
    found = problems({**MINIMAL, "idmap": {"backend": "ad", "range": [7999, 99999]}})
    assert found == {"idmap.range": "7999-99999 overlaps the default idmap_default_range 3000-7999: Samba needs "
                                    "disjoint ranges; move idmap.range or set idmap_default_range to a range "
                                    "outside it"}
    assert parse(idmap={"backend": "rid", "range": [8000, 99999]})["idmap"]["range"] == [8000, 99999]


def test_a_bad_range_is_not_compared_again() -> None:
    found = problems({**MINIMAL, "idmap": {"backend": "rid", "range": [5000, 5100]},
                      "idmap_default_range": [500, 9000]})
    assert set(found) == {"idmap.range", "idmap_default_range"} and "overlaps" not in str(found)


def test_id_range() -> None:
    ids = IdRange(3000, 7999)
    assert (str(ids), ids.size) == ("3000-7999", 5000)
    assert ids.overlaps(IdRange(7999, 9000)) and ids.overlaps(IdRange(1000, 3000)) and ids.overlaps(IdRange(4, 9**9))
    assert not ids.overlaps(IdRange(8000, 9000)) and not ids.overlaps(IdRange(1000, 2999))


# ---- durations, choices, booleans ----------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("health_interval", "10s", 10.0), ("health_interval", 60, 60.0), ("health_interval", "5m", 300.0),
    ("health_interval", "1d", 86400.0), ("health_interval", 12.5, 12.5),
    ("rejoin_min_interval", "5m", 300.0), ("rejoin_min_interval", "1h", 3600.0),
    ("rejoin_min_interval", "30d", 30 * 86400.0), ("rejoin_min_interval", 7200, 7200.0),
])
def test_durations_good(key: str, value: Any, expected: float) -> None:
    assert parse(**{key: value})[key] == expected


@pytest.mark.parametrize(("key", "value", "message"), [
    ("health_interval", "9s", "9s is out of range (10s to 86400s)"),
    ("health_interval", "2d", "out of range"),
    ("health_interval", 0, "out of range"),
    ("health_interval", "soon", "is not a duration"),
    ("health_interval", True, "not a boolean"),
    ("health_interval", MEGABYTE, "is not a duration"),
    ("rejoin_min_interval", "4m", "240s is out of range (300s to 2.592e+06s)"),
    ("rejoin_min_interval", "31d", "out of range"),
    ("rejoin_min_interval", [1], "must be a duration string or number"),
])
def test_durations_bad(key: str, value: Any, message: str) -> None:
    assert message in problem(key, value)


def test_fallback() -> None:
    assert parse(fallback="none")["fallback"] == "none"
    assert parse(fallback="local")["fallback"] == "local"
    for bad in ("LOCAL", "cache", ""):
        assert problem("fallback", bad) == f"{bad!r} must be one of: none, local"
    for wrong in (0, None, ["local"]):
        assert problem("fallback", wrong).startswith("must be a string")


@pytest.mark.parametrize("key", ["dns_register", "manage_krb5_conf", "leave_on_remove"])
def test_booleans_are_strict(key: str) -> None:
    assert parse(**{key: True})[key] is True
    assert parse(**{key: False})[key] is False
    for bad in ("yes", "true", 1, 0, None, [True]):
        assert problem(key, bad).startswith("must be true or false")


# ---- properties: any value, any table ---------------------------------------------------------


KEYS = ["realm", "workgroup", "join_user", "password_file", "credential", "ou", "dns_register", "idmap",
        "idmap_default_range", "health_interval", "rejoin_min_interval", "fallback", "manage_krb5_conf",
        "leave_on_remove"]
SCALARS = st.one_of(
    st.text(max_size=40), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["CORP.EXAMPLE.COM", "CORP", "rid", "autorid", "ad", "local", "/etc/x", "60s", "1h",
                     "OU=x,DC=corp,DC=example,DC=com", "\\", ",", "=", "%"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["backend", "range", "x"]) |
                                                               st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
TABLES = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), VALUES, max_size=10)


def check_any(data: dict[str, Any]) -> None:
    try:
        parsed = parse_agent_table(data)
    except FieldProblems as exc:
        assert exc.problems and all(isinstance(message, str) and len(message) < 2000
                                    for message, _, _ in exc.problems), exc.problems
        return
    AdSettings.from_parsed(parsed)  # whatever the table accepts makes settings


@PROPERTY
@given(TABLES)
def test_any_table(data: dict[str, Any]) -> None:
    check_any(data)


@PROPERTY
@given(st.sampled_from(KEYS), VALUES)
def test_any_value_of_any_key(key: str, value: Any) -> None:
    check_any({**MINIMAL, key: value})


@PROPERTY
@given(st.sampled_from(["backend", "range", "rangesize"]), VALUES)
def test_any_value_inside_idmap(key: str, value: Any) -> None:
    check_any({**MINIMAL, "idmap": {**MINIMAL["idmap"], key: value}})


@PROPERTY
@given(st.sampled_from(["realm", "workgroup", "join_user", "password_file", "ou"]),
       st.text(alphabet=st.sampled_from("ACORPacorp.-_ @\\/%,=;\"<>|*:\n\x00é "), max_size=30))
def test_nearly_valid_names(key: str, value: str) -> None:
    check_any({**MINIMAL, key: value})


@pytest.mark.parametrize("key", ["realm", "workgroup", "join_user", "password_file", "credential", "ou",
                                 "health_interval", "rejoin_min_interval", "fallback", "idmap_default_range"])
@pytest.mark.parametrize("huge", [MEGABYTE, "A." * (1 << 19), "/" + "a" * (1 << 20), "OU=x," * (1 << 18)])
def test_huge_values_are_refused_quickly(key: str, huge: str) -> None:
    data = {**MINIMAL, key: huge}
    if key == "credential":
        data.pop("password_file")
    started = time.monotonic()
    found = problems(data)
    assert list(found) == [key] and len(found[key]) < 1000, found
    assert time.monotonic() - started < 2.0


def test_huge_lists_are_refused() -> None:
    assert "not a list of 1000000" in problem("idmap_default_range", [3000] * 1_000_000)


# ---- /etc/login.defs ----------------------------------------------------------------------------


DEBIAN_LOGIN_DEFS = """\
#
# /etc/login.defs - Configuration control definitions for the login package.
#
MAIL_DIR        /var/mail
#
# Min/max values for automatic uid selection in useradd(8)
#
UID_MIN                  1000
UID_MAX                 60000
# System accounts
#SYS_UID_MIN              100
#SYS_UID_MAX              999
GID_MIN                  1000
GID_MAX                 60000
ENCRYPT_METHOD SHA512
"""


@pytest.mark.parametrize(("text", "expected"), [
    (DEBIAN_LOGIN_DEFS, LoginDefs()),
    ("", LoginDefs()),
    ("UID_MIN 2000\nUID_MAX 90000\nGID_MIN 3000\nGID_MAX 80000\n", LoginDefs(2000, 90000, 3000, 80000)),
    ("  \tUID_MIN\t\t5000   \r\n", LoginDefs(uid_min=5000)),
    ('UID_MAX "70000"\n', LoginDefs(uid_max=70000)),
    ("UID_MAX 0x10000\nGID_MAX 0200000\n", LoginDefs(uid_max=65536, gid_max=65536)),
    ("UID_MIN 1500\nUID_MIN 2500\n", LoginDefs(uid_min=2500)),  # the last one wins
    ("UID_MIN +1500\n", LoginDefs(uid_min=1500)),
    ("# UID_MIN 5\n#UID_MIN 5\n", LoginDefs()),
    ("UID_MIN 1000 # the first user\n", LoginDefs()),  # not a number as a whole: the default
    ("UID_MIN -1\nUID_MAX 08\nGID_MIN 0x\nGID_MAX abc\n", LoginDefs()),
    ("UID_MIN\nUID_MAX=70000\nuid_max 70000\n", LoginDefs()),
    ("UID_MAX 99999999999999999999999\n", LoginDefs()),  # beyond unsigned long
    ("UID_MIN 1500\x00 junk\nGID_MIN 2\x00500\n", LoginDefs(uid_min=1500, gid_min=2)),
    ("\x00\x01\x02garbage\n\n\nUID_MAX 70000", LoginDefs(uid_max=70000)),
    ("UID_MIN 1" + "0" * 3000 + "\n", LoginDefs()),  # too long for useradd's line buffer
    ("#" + "x" * 1022 + "UID_MIN 7000\n", LoginDefs(uid_min=7000)),  # useradd reads it as a line of its own
])
def test_login_defs(text: str, expected: LoginDefs) -> None:
    assert parse_login_defs(text) == expected


def test_huge_login_defs() -> None:
    text = ("garbage line\n" * 200_000) + "UID_MIN 4000\n" + "\x00" * 500_000 + "x" * 3_000_000
    started = time.monotonic()
    assert parse_login_defs(text) == LoginDefs(uid_min=4000)
    assert time.monotonic() - started < 5.0


@PROPERTY
@given(st.lists(st.sampled_from([*"UIDGMAXN_ 0123456789x#\"\t\n\x00+-", "UID_MIN ", "GID_MAX\t", "0x"]),
                max_size=80).map("".join) | st.text(max_size=200))
def test_any_login_defs(text: str) -> None:
    defs = parse_login_defs(text)
    assert all(isinstance(value, int) and 0 <= value < 2**64 for value in vars(defs).values())


# ---- the node's own ids ---------------------------------------------------------------------


RANGES = [("idmap.range", IdRange(100000, 999999)), ("idmap_default_range", IdRange(3000, 7999))]
FAR = LoginDefs(1000, 2000, 1000, 2000)


def test_no_conflicts() -> None:
    assert local_id_conflicts(RANGES, [0, 33, 1000, 2000, 65534], [0, 100, 1000], FAR) == []


def test_ids_in_use() -> None:
    conflicts = local_id_conflicts(RANGES, [0, 1000, 3000, 100001, 100002, 5000], [7999, 8000], FAR)
    assert conflicts == [
        IdConflict("idmap.range", "100000-999999 holds 2 uids of local accounts (100001, 100002): a domain user "
                                  "mapped there would own their files; move the range past them", True),
        IdConflict("idmap_default_range", "3000-7999 holds 2 uids of local accounts (3000, 5000): a domain user "
                                          "mapped there would own their files; move the range past them", True),
        IdConflict("idmap_default_range", "3000-7999 holds 1 gid of local groups (7999): a domain group mapped "
                                          "there would own their files; move the range past them", True),
    ]


def test_many_ids_in_use_are_counted_not_listed() -> None:
    (conflict,) = local_id_conflicts([RANGES[0]], range(0, 2_000_000, 7), [], FAR)
    assert conflict.message.startswith("100000-999999 holds 128572 uids of local accounts (100002, 100009, 100016, "
                                       "100023, 100030, ...)")


def test_login_defs_ranges() -> None:
    conflicts = local_id_conflicts(RANGES, [], [], LoginDefs())
    assert conflicts == [IdConflict(
        "idmap_default_range", "3000-7999 overlaps UID_MIN..UID_MAX 1000-60000 and GID_MIN..GID_MAX 1000-60000 of "
        "/etc/login.defs, where useradd picks the ids of new local users and groups: one created later could get "
        "an id a domain user or group has; move the range above 60000", False)]
    wide_gids = local_id_conflicts(RANGES, [], [], LoginDefs(gid_max=200000))
    assert [(c.key, c.in_use) for c in wide_gids] == [("idmap.range", False), ("idmap_default_range", False)]
    assert "100000-999999 overlaps GID_MIN..GID_MAX 1000-200000 of /etc/login.defs" in wide_gids[0].message
    assert "move the range above 200000" in wide_gids[0].message
    assert local_id_conflicts(RANGES, [], [], LoginDefs(uid_min=9000, uid_max=8000, gid_min=9000, gid_max=8000)) == []


@PROPERTY
@given(st.lists(st.tuples(st.integers(1000, 5000), st.integers(1, 3000)), min_size=1, max_size=3),
       st.sets(st.integers(0, 9000), max_size=30), st.sets(st.integers(0, 9000), max_size=30),
       st.tuples(*[st.integers(0, 9000)] * 4))
def test_conflicts_match_a_plain_count(spans: list[tuple[int, int]], uids: set[int], gids: set[int],
                                       defs: tuple[int, int, int, int]) -> None:
    ranges = [(f"r{n}", IdRange(low, low + size)) for n, (low, size) in enumerate(spans)]
    login_defs = LoginDefs(*defs)
    conflicts = local_id_conflicts(ranges, uids, gids, login_defs)
    for key, ids in ranges:
        mine = [c for c in conflicts if c.key == key]
        in_use = any(ids.low <= i <= ids.high for i in uids) + any(ids.low <= i <= ids.high for i in gids)
        allocating = any(low <= high and ids.low <= high and low <= ids.high
                         for low, high in ((defs[0], defs[1]), (defs[2], defs[3])))
        assert sum(c.in_use for c in mine) == in_use
        assert sum(not c.in_use for c in mine) == allocating


def test_field_errors_only() -> None:
    """The parsers of single values raise FieldError, which the table turns into problems."""
    from smbgw_plugins.ad import table

    for parser in (table.realm, table.workgroup, table.join_user, table.password_file, table.credential, table.ou,
                   table.id_range):
        with pytest.raises(FieldError):
            parser(object())
