"""agent.toml: every documented table, every key optional, errors with file, key and line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from smbgw_agent.assembly import load_plugins_and_config
from smbgw_agent.model.config import (
    RESERVED_PLUGIN_TABLES,
    AgentConfig,
    config_from_document,
    default_node_name,
    load_agent_config,
)
from smbgw_agent.model.errors import ConfigError, FieldError, Problem
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.tomlsource import parse_toml
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.pluginhost import PluginHost

NATIVE = "smbgw_plugins.mode_native:NativeModePlugin"
FILE = Path("/etc/smbgw/agent.toml")

DESIGN_EXAMPLE = """\
# /etc/smbgw/agent.toml — every key optional
[agent]
node = "pve1"                          # default: the host name
shares_dir = "/etc/smbgw/shares.d"
resync_interval = "60s"
allowed_roots = ["/tank", "/srv"]      # share paths must lie below one of these
disabled_plugins = []
allow_custom_options = false

[samba]
security_profile = "standard"          # standard | high
workgroup = "WORKGROUP"

[metrics]
listen = "127.0.0.1:9945"

# plugin-owned sections ([ad], [ctdb], [proxmox], [backup], ...) are validated by their plugins
[ad]
realm = "CORP.EXAMPLE"

[ctdb]
nodes = ["10.0.0.1", "10.0.0.2"]

[proxmox]
cluster = true

[backup]
target = "pbs1"
"""


class AdPlugin:
    """A plugin that owns [ad] in agent.toml."""

    @hookimpl
    def smbgw_agent_sections(self) -> list[str]:
        return ["ad"]

    @hookimpl
    def smbgw_validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        if section != "ad":
            return None
        if set(data) - {"realm"}:
            raise FieldError("unknown key", key=sorted(set(data) - {"realm"})[0])
        if not isinstance(data.get("realm"), str):
            raise FieldError("must be a string", key="realm")
        return {"realm": data["realm"].upper()}


@pytest.fixture(scope="module")
def native() -> PluginHost:
    return PluginHost({"mode_native": NATIVE})


@pytest.fixture(scope="module")
def with_ad() -> PluginHost:
    return PluginHost({"mode_native": NATIVE, "ad": AdPlugin()})


def load(text: str, plugins: PluginHost | None = None) -> AgentConfig:
    return config_from_document(parse_toml(FILE, text.encode()), plugins)


def problems_of(text: str, plugins: PluginHost | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load(text, plugins)
    for problem in info.value.problems:
        assert problem.file == FILE
    return info.value.problems


def one_problem(text: str, plugins: PluginHost | None = None) -> Problem:
    problems = problems_of(text, plugins)
    assert len(problems) == 1, problems
    return problems[0]


def test_design_example_is_accepted(native: PluginHost) -> None:
    config = load(DESIGN_EXAMPLE, native)
    assert config.node == "pve1"
    assert config.shares_dir == "/etc/smbgw/shares.d"
    assert config.resync_interval == 60.0
    assert config.allowed_roots == ("/tank", "/srv")
    assert config.disabled_plugins == ()
    assert config.allow_custom_options is False
    assert config.security_profile == "standard"
    assert config.workgroup == "WORKGROUP"
    assert config.metrics_listen == "127.0.0.1:9945"
    assert config.source == str(FILE)
    # Plugin tables nobody owns are kept usable, with one warning each.
    for table in ("ad", "ctdb", "proxmox", "backup"):
        assert any(f"[{table}]" in w and "no enabled plugin" in w for w in config.warnings), (table, config.warnings)
    assert len(config.warnings) == 4
    assert config.plugin_sections == {}


def test_reserved_plugin_tables_cover_design() -> None:
    assert {"ad", "ctdb", "proxmox", "backup"} <= RESERVED_PLUGIN_TABLES


def test_owned_table_goes_to_its_plugin(with_ad: PluginHost) -> None:
    config = load(DESIGN_EXAMPLE, with_ad)
    assert config.plugin_sections == {"ad": {"realm": "CORP.EXAMPLE"}}
    assert not any("[ad]" in w for w in config.warnings)
    assert len(config.warnings) == 3


def test_plugin_table_errors_name_the_nested_key(with_ad: PluginHost) -> None:
    problem = one_problem('[agent]\nnode = "pve1"\n\n[ad]\nrealm = 5\n', with_ad)
    assert (problem.key, problem.line) == ("ad.realm", 5)
    problem = one_problem("[ad]\nrealm = \"x\"\nreaml = \"y\"\n", with_ad)
    assert (problem.key, problem.line) == ("ad.reaml", 3)
    problem = one_problem('ad = "CORP"\n', with_ad)
    assert (problem.key, problem.line) == ("ad", 1)
    assert "must be a table" in problem.message


def test_empty_file_gives_defaults(native: PluginHost) -> None:
    config = load("", native)
    assert config == AgentConfig(node=default_node_name(), source=str(FILE))
    assert config.resync_interval == 60.0 and config.metrics_listen == "127.0.0.1:9945"
    assert config.allowed_roots == () and config.allow_custom_options is False
    assert config.security_profile == "standard" and config.workgroup is None


def test_missing_file_gives_defaults(tmp_path: Path, native: PluginHost) -> None:
    config = load_agent_config(Paths.under(tmp_path), native)
    assert config.node == default_node_name() and config.source is None


def test_values_are_normalized(native: PluginHost) -> None:
    config = load(
        '[agent]\nresync_interval = "5m"\nallowed_roots = ["/tank/", "//srv"]\ndisabled_plugins = ["quota"]\n'
        'allow_custom_options = true\ndebounce = "250ms"\n[samba]\nworkgroup = "corp"\nsecurity_profile = "high"\n'
        'smbd_unit = "samba-smbd.service"\n',
        native,
    )
    assert config.resync_interval == 300.0
    assert config.debounce == 0.25
    assert config.allowed_roots == ("/tank", "/srv")
    assert config.disabled_plugins == ("quota",)
    assert config.allow_custom_options is True
    assert config.workgroup == "CORP"
    assert config.security_profile == "high"
    assert config.smbd_unit == "samba-smbd.service"


LOCATED = [
    # (text, key, line, reason)
    ('[agent]\nnode = "pve1"\nnodes = "pve2"\n', "agent.nodes", 3, "unknown key"),
    ('[samba]\n\nworkgroup = "W"\nrealm = "x"\n', "samba.realm", 4, "unknown key"),
    ('[metrics]\nport = 9945\n', "metrics.port", 2, "unknown key"),
    ('[metrcs]\nlisten = "127.0.0.1:1"\n', "metrcs", 1, "unknown table"),
    ('[agent]\nnode = "x"\n\n[quotas]\n', "quotas", 4, "unknown table"),
    ('node = "pve1"\n', "node", 1, "unknown table"),
    ("agent = 5\n", "agent", 1, "must be a table"),
    ("[agent]\nnode = 5\n", "agent.node", 2, "must be a string"),
    ('[agent]\nnode = "pve 1"\n', "agent.node", 2, "not a valid node name"),
    ('[agent]\nnode = "pve1\\n"\n', "agent.node", 2, "control characters"),
    ('[agent]\nshares_dir = "etc/smbgw/shares.d"\n', "agent.shares_dir", 2, "absolute"),
    ('[agent]\nshares_dir = "/etc/../tmp"\n', "agent.shares_dir", 2, "'..'"),
    ('[agent]\nresync_interval = "0s"\n', "agent.resync_interval", 2, "out of range"),
    ('[agent]\nresync_interval = "2d"\n', "agent.resync_interval", 2, "out of range"),
    ('[agent]\nresync_interval = "soon"\n', "agent.resync_interval", 2, "not a duration"),
    ('[agent]\ndebounce = "1m"\n', "agent.debounce", 2, "out of range"),
    ('[agent]\nallowed_roots = "/tank"\n', "agent.allowed_roots", 2, "list of strings"),
    ('[agent]\nallowed_roots = ["/tank", 5]\n', "agent.allowed_roots", 2, "list of strings"),
    ('[agent]\nallowed_roots = ["tank"]\n', "agent.allowed_roots", 2, "absolute"),
    ('[agent]\nallowed_roots = ["/tank/../etc"]\n', "agent.allowed_roots", 2, "'..'"),
    ('[agent]\nallowed_roots = ["/"]\n', "agent.allowed_roots", 2, "every path"),
    ('[agent]\nallowed_roots = ["//"]\n', "agent.allowed_roots", 2, "every path"),
    ('[agent]\nallowed_roots = ["/tank%"]\n', "agent.allowed_roots", 2, "'%'"),
    ("[agent]\ndisabled_plugins = [1]\n", "agent.disabled_plugins", 2, "list of strings"),
    ('[agent]\nallow_custom_options = "yes"\n', "agent.allow_custom_options", 2, "true or false"),
    ('[samba]\nsecurity_profile = "paranoid"\n', "samba.security_profile", 2, "standard, high"),
    ('[samba]\nworkgroup = "A_VERY_LONG_WORKGROUP"\n', "samba.workgroup", 2, "too long"),
    ('[samba]\nworkgroup = "CORP]\\n[global"\n', "samba.workgroup", 2, "control characters"),
    ('[samba]\nworkgroup = "CO RP"\n', "samba.workgroup", 2, "NetBIOS"),
    ('[samba]\nsmbd_unit = "smbd"\n', "samba.smbd_unit", 2, "service unit"),
    ('[samba]\nsmbd_unit = "../x.service"\n', "samba.smbd_unit", 2, "service unit"),
    ('[metrics]\nlisten = "9945"\n', "metrics.listen", 2, "HOST:PORT"),
    ('[metrics]\nlisten = "127.0.0.1:0"\n', "metrics.listen", 2, "HOST:PORT"),
    ('[metrics]\nlisten = "127.0.0.1:99999"\n', "metrics.listen", 2, "HOST:PORT"),
    ("[metrics]\nlisten = 9945\n", "metrics.listen", 2, "must be a string"),
]


@pytest.mark.parametrize(("text", "key", "line", "reason"), LOCATED, ids=[k + ":" + r[:16] for _, k, _, r in LOCATED])
def test_errors_name_file_key_and_line(native: PluginHost, text: str, key: str, line: int, reason: str) -> None:
    problem = one_problem(text, native)
    assert (problem.key, problem.line) == (key, line), problem
    assert reason in problem.message
    assert str(problem).startswith(f"{FILE}:{line}: {key}: ")


def test_every_problem_is_reported(native: PluginHost) -> None:
    problems = problems_of(
        '[agent]\nnode = 5\nresync = "1s"\n[samba]\nsecurity_profile = "x"\n[metrcs]\n[metrics]\nlisten = "x"\n',
        native,
    )
    assert {p.key for p in problems} == {
        "agent.node", "agent.resync", "samba.security_profile", "metrcs", "metrics.listen"
    }


def test_listen_accepts_ipv6_and_names(native: PluginHost) -> None:
    assert load('[metrics]\nlisten = "[::1]:9945"\n', native).metrics_listen == "[::1]:9945"
    assert load('[metrics]\nlisten = "localhost:9100"\n', native).metrics_listen == "localhost:9100"


def test_load_from_root_reports_syntax_errors_with_line(tmp_path: Path, native: PluginHost) -> None:
    paths = Paths.under(tmp_path)
    paths.agent_config.parent.mkdir(parents=True)
    paths.agent_config.write_text('[agent]\nnode = "pve1"\nallowed_roots = ["/tank"\n')
    with pytest.raises(ConfigError) as info:
        load_agent_config(paths, native)
    (problem,) = info.value.problems
    assert problem.file == paths.agent_config
    assert problem.line == 3
    assert "TOML syntax error" in problem.message


def test_load_from_root_and_shares_dir_stay_under_the_root(tmp_path: Path, native: PluginHost) -> None:
    paths = Paths.under(tmp_path)
    paths.agent_config.parent.mkdir(parents=True)
    paths.agent_config.write_text('[agent]\nnode = "sandbox"\nshares_dir = "/etc/pve/smbgw/shares.d"\n')
    config = load_agent_config(paths, native)
    assert config.node == "sandbox"
    assert paths.host(config.shares_dir) == tmp_path / "etc/pve/smbgw/shares.d"


def test_setup_disables_plugins_and_warns_about_unknown_names(tmp_path: Path) -> None:
    paths = Paths.under(tmp_path)
    paths.agent_config.parent.mkdir(parents=True)
    paths.agent_config.write_text('[agent]\ndisabled_plugins = ["mode_native", "no_such_plugin", "ctdb"]\n[ctdb]\n')
    plugins, config = load_plugins_and_config(paths)
    assert "mode_native" not in plugins.names
    assert "native" not in plugins.modes()
    assert any("no_such_plugin" in w for w in config.warnings)
    assert any("[ctdb]" in w for w in config.warnings)


def test_setup_reports_a_broken_agent_toml(tmp_path: Path) -> None:
    paths = Paths.under(tmp_path)
    paths.agent_config.parent.mkdir(parents=True)
    paths.agent_config.write_bytes(b"[agent]\x00\n")
    with pytest.raises(ConfigError, match="NUL"):
        load_plugins_and_config(paths)
