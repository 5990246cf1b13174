"""agent.toml: the node-wide settings, every key optional.

Core tables are checked here key by key; plugin tables are handed to the plugin that
owns them. Tables reserved for plugins (see README, agent.toml) are accepted with
a warning when no enabled plugin owns them, so that disabling a plugin, or upgrading
from a version without it, never makes an existing agent.toml unusable.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Protocol

from smbgw_agent.model import fields
from smbgw_agent.model.errors import ConfigError, FieldError, Problem
from smbgw_agent.model.paths import DEFAULT_SHARES_DIR, Paths
from smbgw_agent.model.smbvalues import check_text
from smbgw_agent.model.tomlsource import InputFileError, TomlDocument, read_toml
from smbgw_agent.model.units import parse_duration

# Tables reserved for plugins; accepted (with a warning) when no plugin owns them.
RESERVED_PLUGIN_TABLES = frozenset({"ad", "ctdb", "proxmox", "backup", "quota", "vip", "lxc", "vm"})
SECURITY_PROFILES = ("standard", "high")
WATCH_MODES = ("auto", "inotify", "poll")  # auto: poll where inotify cannot see (FUSE, e.g. /etc/pve)


@dataclass(frozen=True)
class AgentConfig:
    node: str
    shares_dir: str = DEFAULT_SHARES_DIR
    resync_interval: float = 60.0
    debounce: float = 0.02
    allowed_roots: tuple[str, ...] = ()
    disabled_plugins: tuple[str, ...] = ()
    allow_custom_options: bool = False
    strict_path_owners: bool = False
    require_mounts: tuple[str, ...] = ()
    pass_timeout: float = 120.0
    watch: str = "auto"
    poll_interval: float = 1.0
    security_profile: str = "standard"
    workgroup: str | None = None  # None: leave the workgroup of smb.conf alone
    smbd_unit: str = "smbd.service"
    metrics_listen: str = "127.0.0.1:9945"
    metrics_enabled: bool = True
    metrics_tls_cert: str | None = None
    metrics_tls_key: str | None = None
    metrics_tls_client_ca: str | None = None
    plugin_sections: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    source: str | None = None



class AgentTableOwners(Protocol):
    """Who owns the tables of agent.toml the core does not (the plugin host, or a test's
    stand-in). The model knows nothing of plugins: it hands those tables over."""

    def agent_sections(self) -> Collection[str]: ...

    def validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any: ...

def default_node_name() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


def _string_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FieldError("must be a list of strings")
    if len(value) > 256:
        raise FieldError("has too many entries (at most 256)")
    return tuple(value)


def _absolute_path(value: object) -> str:
    text = check_text(fields.string(value), "path", 4096)
    path = PurePosixPath(text)
    if not path.is_absolute() or ".." in path.parts:
        raise FieldError(f"{text!r} must be an absolute path without '..'")
    return "/" + str(path).lstrip("/")  # POSIX keeps a leading "//": "//" must not pass as a root


def _node(value: object) -> str:
    text = check_text(fields.string(value), "node name", 63)
    if not text or not all(c.isalnum() or c in "-_." for c in text):
        raise FieldError(f"{text!r} is not a valid node name (letters, digits, - _ .)")
    return text


def _listen(value: object) -> str:
    text = fields.string(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FieldError(f"{text!r} must be HOST:PORT, e.g. 127.0.0.1:9945")
    return text


def _profile(value: object) -> str:
    text = fields.string(value)
    if text not in SECURITY_PROFILES:
        raise FieldError(f"{text!r} must be one of: {', '.join(SECURITY_PROFILES)}")
    return text


def _watch(value: object) -> str:
    text = fields.string(value)
    if text not in WATCH_MODES:
        raise FieldError(f"{text!r} must be one of: {', '.join(WATCH_MODES)}")
    return text


def _workgroup(value: object) -> str:
    text = check_text(fields.string(value), "workgroup", 15)
    if not text or not all(c.isalnum() or c in "-_." for c in text):
        raise FieldError(f"{text!r} is not a valid NetBIOS workgroup (1-15 letters, digits, - _ .)")
    return text.upper()


def _unit(value: object) -> str:
    text = check_text(fields.string(value), "unit", 255)
    if not text.endswith(".service") or "/" in text:
        raise FieldError(f"{text!r} must be a systemd service unit name")
    return text


_CORE_TABLES: dict[str, dict[str, tuple[str, Callable[[object], Any]]]] = {
    "agent": {
        "node": ("node", _node),
        "shares_dir": ("shares_dir", _absolute_path),
        "resync_interval": ("resync_interval", lambda v: parse_duration(v, 1.0, 86400.0)),
        "debounce": ("debounce", lambda v: parse_duration(v, 0.0, 10.0)),
        "allowed_roots": ("allowed_roots", lambda v: tuple(_absolute_path(r) for r in _string_list(v))),
        "disabled_plugins": ("disabled_plugins", _string_list),
        "allow_custom_options": ("allow_custom_options", fields.boolean),
        "strict_path_owners": ("strict_path_owners", fields.boolean),
        "require_mounts": ("require_mounts", lambda v: tuple(_absolute_path(r) for r in _string_list(v))),
        "pass_timeout": ("pass_timeout", lambda v: parse_duration(v, 10.0, 3600.0)),
        "watch": ("watch", _watch),
        "poll_interval": ("poll_interval", lambda v: parse_duration(v, 0.1, 60.0)),
    },
    "samba": {
        "security_profile": ("security_profile", _profile),
        "workgroup": ("workgroup", _workgroup),
        "smbd_unit": ("smbd_unit", _unit),
    },
    "metrics": {
        "listen": ("metrics_listen", _listen),
        "enabled": ("metrics_enabled", fields.boolean),
        "tls_cert": ("metrics_tls_cert", _absolute_path),
        "tls_key": ("metrics_tls_key", _absolute_path),
        "tls_client_ca": ("metrics_tls_client_ca", _absolute_path),
    },
}


def parse_core(doc: TomlDocument) -> tuple[dict[str, Any], list[Problem]]:
    """Parse the core tables; returns constructor arguments and problems."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for table, data in doc.data.items():
        if table not in _CORE_TABLES:
            continue
        if not isinstance(data, dict):
            problems.append(doc.problem("must be a table", key=table))
            continue
        spec = _CORE_TABLES[table]
        for key, value in data.items():
            if key not in spec:
                known = ", ".join(sorted(spec))
                problems.append(doc.problem(f"unknown key (known: {known})", table, key))
                continue
            attribute, parse = spec[key]
            try:
                values[attribute] = parse(value)
            except FieldError as exc:
                problems.append(doc.problem(str(exc), table, key))
    if bool(values.get("metrics_tls_cert")) != bool(values.get("metrics_tls_key")):
        problems.append(doc.problem("tls_cert and tls_key must be set together", "metrics"))
    if values.get("metrics_tls_client_ca") and not values.get("metrics_tls_cert"):
        problems.append(doc.problem("tls_client_ca needs tls_cert and tls_key", "metrics", "tls_client_ca"))
    for mount in values.get("require_mounts", ()):
        if mount == "/":
            message = "'/' is always mounted; name the storage's own mount points"
            problems.append(doc.problem(message, "agent", "require_mounts"))
    if "allowed_roots" in values:
        for root in values["allowed_roots"]:
            if root == "/":
                problems.append(doc.problem("'/' would allow every path", "agent", "allowed_roots"))
    return values, problems


def load_agent_config(paths: Paths, plugins: AgentTableOwners | None = None) -> AgentConfig:
    """Load agent.toml (missing file = all defaults). Raises ConfigError listing every problem."""
    file = paths.agent_config
    if not file.exists() and not file.is_symlink():
        return AgentConfig(node=default_node_name())
    try:
        doc = read_toml(file)
    except InputFileError as exc:
        raise ConfigError([exc.problem]) from exc
    return config_from_document(doc, plugins)


def config_from_document(doc: TomlDocument, plugins: AgentTableOwners | None) -> AgentConfig:
    values, problems = parse_core(doc)
    warnings: list[str] = []
    plugin_sections: dict[str, Any] = {}
    owned = plugins.agent_sections() if plugins else {}
    for table, data in doc.data.items():
        if table in _CORE_TABLES:
            continue
        if table in owned and plugins is not None:
            if not isinstance(data, dict):
                problems.append(doc.problem("must be a table", key=table))
                continue
            try:
                plugin_sections[table] = plugins.validate_agent_section(table, data)
            except FieldError as exc:
                problems.extend(fields.table_problems(doc, table, exc))
        elif table in RESERVED_PLUGIN_TABLES:
            warnings.append(f"{doc.path}: [{table}] is ignored: no enabled plugin handles it")
        else:
            problems.append(doc.problem("unknown table", key=table))
    if problems:
        raise ConfigError(problems)
    values.setdefault("node", default_node_name())
    return AgentConfig(
        **values, plugin_sections=plugin_sections, warnings=tuple(warnings), source=str(doc.path)
    )

