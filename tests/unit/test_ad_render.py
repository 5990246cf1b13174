"""The smb.conf globals and krb5.conf of `[ad]`, read back by Samba's own testparm (one
[global] per idmap backend and fallback) and by a small krb5.conf reader."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smbgw_plugins.ad.render import HOMEDIR, KRB5_HEADER, NOLOGIN, global_parameters, krb5_conf
from smbgw_plugins.ad.table import MAX_ID, AdSettings, IdmapSettings, parse_agent_table

from smbgw_agent.effects.runner import Runner
from smbgw_agent.effects.samba import run_testparm
from smbgw_agent.model.idranges import IdRange
from smbgw_agent.model.smbvalues import check_text
from smbgw_agent.platform.parameters import Parameter, merge_parameters

EXAMPLES = int(os.environ.get("SMBGW_PROPERTY_EXAMPLES", "150"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize="SMBGW_PROPERTY_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], database=None)
TESTPARM = pytest.mark.skipif(shutil.which("testparm") is None, reason="testparm (samba) not installed")

BASE: dict[str, Any] = {
    "realm": "CORP.EXAMPLE.COM", "workgroup": "CORP", "join_user": "svc-smbgw-join",
    "password_file": "/etc/smbgw/secrets/ad-join",
}
IDMAPS = {
    "rid": {"idmap": {"backend": "rid", "range": [100000, 999999]}},
    "ad": {"idmap": {"backend": "ad", "range": [10000, 999999]}, "idmap_default_range": [2000, 9999]},
    "autorid": {"idmap": {"backend": "autorid", "range": [100000, 2099999]}},
}
COMMON_TAIL = [
    ("winbind use default domain", "no"),
    ("winbind enum users", "no"),
    ("winbind enum groups", "no"),
]
TEMPLATES = [("template shell", "/usr/sbin/nologin"), ("template homedir", "/home/%D/%U")]


def ad_settings(backend: str = "rid", **changes: Any) -> AdSettings:
    """Settings as the table gives them (so every test starts from a valid table)."""
    return AdSettings.from_parsed(parse_agent_table({**BASE, **IDMAPS[backend], **changes}))


# ---- the parameters -------------------------------------------------------------------------


def test_rid() -> None:
    assert global_parameters(ad_settings("rid")) == [
        ("server role", "member server"),
        ("security", "ADS"),
        ("realm", "CORP.EXAMPLE.COM"),
        ("workgroup", "CORP"),
        ("idmap config * : backend", "tdb"),
        ("idmap config * : range", "3000-7999"),
        ("idmap config CORP : backend", "rid"),
        ("idmap config CORP : range", "100000-999999"),
        *COMMON_TAIL,
        ("winbind offline logon", "yes"),
        *TEMPLATES,
    ]


def test_ad() -> None:
    parameters = global_parameters(ad_settings("ad", workgroup="MY-DOM_1"))
    assert parameters[4:9] == [
        ("idmap config * : backend", "tdb"),
        ("idmap config * : range", "2000-9999"),
        ("idmap config MY-DOM_1 : backend", "ad"),
        ("idmap config MY-DOM_1 : range", "10000-999999"),
        ("idmap config MY-DOM_1 : schema_mode", "rfc2307"),
    ]
    assert not any("unix_nss_info" in name or "unix_primary_group" in name for name, _ in parameters)


def test_autorid_is_the_default_backend_only() -> None:
    parameters = global_parameters(ad_settings("autorid", fallback="none"))
    assert parameters == [
        ("server role", "member server"),
        ("security", "ADS"),
        ("realm", "CORP.EXAMPLE.COM"),
        ("workgroup", "CORP"),
        ("idmap config * : backend", "autorid"),
        ("idmap config * : range", "100000-2099999"),
        *COMMON_TAIL,
        ("winbind offline logon", "no"),
        *TEMPLATES,
    ]


def test_fallback_decides_offline_logon() -> None:
    assert ("winbind offline logon", "yes") in global_parameters(ad_settings(fallback="local"))
    assert ("winbind offline logon", "no") in global_parameters(ad_settings(fallback="none"))


def test_what_is_left_out() -> None:
    names = {name for name, _ in global_parameters(ad_settings())}
    assert not names & {"kerberos method", "dedicated keytab file", "winbind refresh tickets",
                        "sync machine password to keytab"}


def test_constants() -> None:
    assert (NOLOGIN, HOMEDIR) == ("/usr/sbin/nologin", "/home/%D/%U")


@pytest.mark.parametrize(("changes", "message"), [
    ({"realm": "corp.example.com"}, "must be upper case"),
    ({"realm": "CORP.COM\n[x]"}, "control character"),
    ({"workgroup": "CORP\nX=1"}, "control character"),
    ({"workgroup": "CO RP"}, "contains ' '"),
    ({"idmap": IdmapSettings("tdb", IdRange(100000, 999999))}, "idmap backend 'tdb' is not one of"),
    ({"idmap": IdmapSettings("rid", IdRange(100000, 100500))}, "idmap.range: 100000-100500 holds 501 ids"),
    ({"idmap": IdmapSettings("rid", IdRange(999, 99999))}, "starts at 999"),
    ({"idmap": IdmapSettings("rid", IdRange(100000, MAX_ID + 1))}, "ends at 2147483648"),
    ({"idmap": IdmapSettings("rid", IdRange(5000, 99999))}, "idmap.range 5000-99999 overlaps idmap_default_range"),
    ({"idmap_default_range": None}, "needs idmap_default_range"),
    ({"idmap_default_range": IdRange(1000, 1500)}, "idmap_default_range: 1000-1500 holds 501 ids"),
    ({"idmap": IdmapSettings("autorid", IdRange(100000, 999999))}, "idmap_default_range must be None"),
    ({"idmap": IdmapSettings("autorid", IdRange(100000, 199999)), "idmap_default_range": None},
     "autorid needs at least 200000"),
    ({"fallback": "cache"}, "fallback 'cache' is not one of none, local"),
])
def test_settings_built_by_hand_are_checked_again(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        global_parameters(replace(ad_settings(), **changes))
    assert message in str(caught.value)


# ---- any settings the table accepts ---------------------------------------------------------


LABELS = st.from_regex(r"[A-Z0-9]([A-Z0-9-]{0,8}[A-Z0-9])?", fullmatch=True)
REALMS = st.lists(LABELS, min_size=2, max_size=4).map(".".join).filter(lambda r: not r.rsplit(".", 1)[-1].isdigit())
WORKGROUPS = st.from_regex(r"[A-Z0-9_-]{1,15}", fullmatch=True).filter(lambda w: w.strip() == w)


@st.composite
def tables(draw: st.DrawFn) -> dict[str, Any]:
    backend = draw(st.sampled_from(["rid", "ad", "autorid"]))
    least = 200000 if backend == "autorid" else 1000
    low = draw(st.integers(8000, MAX_ID - least + 1))
    high = draw(st.integers(low + least - 1, MAX_ID))
    table: dict[str, Any] = {**BASE, "realm": draw(REALMS), "workgroup": draw(WORKGROUPS),
                             "idmap": {"backend": backend, "range": [low, high]},
                             "fallback": draw(st.sampled_from(["none", "local"]))}
    if backend != "autorid" and draw(st.booleans()):
        start = draw(st.integers(1000, low - 1000))
        table["idmap_default_range"] = [start, draw(st.integers(start + 999, low - 1))]
    return table


@PROPERTY
@given(tables())
def test_any_valid_table_renders_safe_values(table: dict[str, Any]) -> None:
    settings = AdSettings.from_parsed(parse_agent_table(table))
    parameters = global_parameters(settings)
    names = [name.casefold() for name, _ in parameters]
    assert len(names) == len(set(names))
    for name, value in parameters:
        assert check_text(value, name, allow_percent=True) == value and value
        assert name == " ".join(name.split()) and name.isprintable() and "=" not in name
    assert parse_krb5_conf(krb5_conf(settings))["libdefaults"]["default_realm"] == table["realm"]


# ---- Samba reads them back ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["rid", "ad", "autorid"])
def test_the_globals_pass_the_agents_own_parameter_checks(backend: str) -> None:
    """What the plugin will hand the core goes through the same name and value checks
    as every other plugin's globals, `idmap config * : …` included."""
    parameters = global_parameters(ad_settings(backend))
    merged = merge_parameters([("ad", Parameter(name, value)) for name, value in parameters], "the globals")
    assert sorted(merged) == sorted((name.lower(), value) for name, value in parameters)


def smb_conf(path: Path, parameters: list[tuple[str, str]]) -> Path:
    path.write_text("[global]\n" + "".join(f"\t{name} = {value}\n" for name, value in parameters))
    return path


def read_back(conf: Path, name: str) -> str:
    result = subprocess.run(["testparm", "-s", "--suppress-prompt", "--parameter-name", name, str(conf)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def assert_samba_accepts(conf: Path, parameters: list[tuple[str, str]]) -> None:
    result = run_testparm(Runner(), conf)
    assert result.ok and not result.unavailable, (result.errors, conf.read_text())
    assert "nknown parameter" not in result.stderr and "ERROR" not in result.stderr, result.stderr
    assert read_back(conf, "server role") == "member server"
    for name, value in parameters:
        assert read_back(conf, name).casefold() == value.casefold(), name


@pytest.mark.integration
@TESTPARM
@pytest.mark.parametrize("backend", ["rid", "ad", "autorid"])
@pytest.mark.parametrize("fallback", ["local", "none"])
def test_testparm_accepts_and_reads_back(tmp_path: Path, backend: str, fallback: str) -> None:
    parameters = global_parameters(ad_settings(backend, fallback=fallback))
    assert_samba_accepts(smb_conf(tmp_path / "smb.conf", parameters), parameters)


@pytest.mark.integration
@TESTPARM
@pytest.mark.parametrize("backend", ["rid", "ad"])
def test_testparm_reads_idmap_names_in_lower_case(tmp_path: Path, backend: str) -> None:
    """The agent writes parameter names in lower case; Samba matches `idmap config
    CORP` and `idmap config corp` as one domain."""
    parameters = global_parameters(ad_settings(backend, workgroup="MY-DOM_1"))
    conf = smb_conf(tmp_path / "smb.conf", [(name.lower(), value) for name, value in parameters])
    assert_samba_accepts(conf, parameters)


@pytest.mark.integration
@TESTPARM
@pytest.mark.parametrize(("idmap", "error"), [
    ([("idmap config * : backend", "tdb"), ("idmap config * : range", "3000-7999"),
      ("idmap config CORP : backend", "rid"), ("idmap config CORP : range", "7999-99999")],
     "overlaps with the range of CORP"),
    ([("idmap config * : backend", "autorid"), ("idmap config * : range", "100000-299998")],
     "needs to be at least twice as big as the rangesize"),
])
def test_testparm_refuses_what_the_table_refuses(tmp_path: Path, idmap: list[tuple[str, str]], error: str) -> None:
    """The table's range rules are Samba's: what it refuses, testparm refuses too."""
    parameters = [*global_parameters(ad_settings())[:3], *idmap]
    result = run_testparm(Runner(), smb_conf(tmp_path / "smb.conf", parameters))
    assert not result.ok and error in result.stderr, result.stderr


@pytest.mark.integration
@TESTPARM
@settings(PROPERTY, max_examples=min(EXAMPLES, 15))
@given(tables())
def test_testparm_accepts_any_valid_table(tmp_path_factory: pytest.TempPathFactory, table: dict[str, Any]) -> None:
    parameters = global_parameters(AdSettings.from_parsed(parse_agent_table(table)))
    conf = smb_conf(tmp_path_factory.mktemp("ad") / "smb.conf", parameters)
    result = run_testparm(Runner(), conf)
    assert result.ok and "nknown parameter" not in result.stderr, (result.errors, conf.read_text())


# ---- krb5.conf ----------------------------------------------------------------------------------


def parse_krb5_conf(text: str) -> dict[str, dict[str, str]]:
    """The [section] / key = value lines of a flat krb5.conf (no { } blocks); anything
    else is an assertion error."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], {})
            continue
        key, equals, value = stripped.partition("=")
        assert equals and current is not None and "{" not in value, line
        assert key.strip() not in current, f"{key.strip()} twice"
        current[key.strip()] = value.strip()
    return sections


@pytest.mark.parametrize("realm", ["CORP.EXAMPLE.COM", "AD.X", "A-1.B2.C3"])
def test_krb5_conf(realm: str) -> None:
    text = krb5_conf(ad_settings(realm=realm))
    assert parse_krb5_conf(text) == {"libdefaults": {
        "default_realm": realm, "dns_lookup_realm": "false", "dns_lookup_kdc": "true", "rdns": "false",
    }}
    assert text.startswith(KRB5_HEADER) and text.endswith("\n")
    header = text.split("\n[", 1)[0]
    assert "smbgw-agent" in header and "manage_krb5_conf = false" in header
    assert all(line.startswith("#") for line in header.splitlines() if line)


def test_krb5_conf_is_the_same_for_every_backend_and_fallback() -> None:
    texts = {krb5_conf(ad_settings(backend, fallback=fallback)) for backend in IDMAPS for fallback in ("none", "local")}
    assert len(texts) == 1


@pytest.mark.parametrize("realm", ["corp.example.com", "CORP.COM\n[realms]", "CORP"])
def test_krb5_conf_refuses_a_bad_realm(realm: str) -> None:
    with pytest.raises(ValueError):
        krb5_conf(replace(ad_settings(), realm=realm))
