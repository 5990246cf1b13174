"""Building the agent's parts from a root: plugins and configuration.

Shared by the daemon, `smbgwctl plan/validate` and tests, so that they all see the
same configuration the same way.
"""

from __future__ import annotations

from smbgw_agent.model.config import AgentConfig, load_agent_config
from smbgw_agent.model.errors import ConfigError, Problem
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.tomlsource import InputFileError, read_toml
from smbgw_agent.platform.pluginhost import PluginConflictError, PluginHost


def load_plugins_and_config(paths: Paths) -> tuple[PluginHost, AgentConfig]:
    """Two steps, because agent.toml decides which plugins load and plugins validate agent.toml.

    Plugins that cannot work together (two claiming one table, mode, or smbd itself) are
    a configuration problem of agent.toml: `disabled_plugins` is where it is solved.
    """
    disabled: tuple[str, ...] = ()
    if paths.agent_config.exists() or paths.agent_config.is_symlink():
        try:
            doc = read_toml(paths.agent_config)
        except InputFileError as exc:
            raise ConfigError([exc.problem]) from exc
        agent = doc.data.get("agent", {})
        if isinstance(agent, dict):
            value = agent.get("disabled_plugins", [])
            if isinstance(value, list):
                disabled = tuple(str(v) for v in value)
    try:
        plugins = PluginHost.load(disabled)
        config = load_agent_config(paths, plugins)
        plugins.smbd_control(config)
    except PluginConflictError as exc:
        raise ConfigError([Problem(paths.agent_config, p, "agent.disabled_plugins") for p in exc.problems]) from exc
    if plugins.unknown_disabled:
        warning = f"disabled_plugins names unknown plugins: {', '.join(plugins.unknown_disabled)}"
        config = AgentConfig(**{**config.__dict__, "warnings": (*config.warnings, warning)})
    return plugins, config
