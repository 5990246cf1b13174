"""Building the agent's parts from a root: plugins, configuration, reconciler.

Shared by the daemon, `smbgwctl plan/validate` and tests, so that they all see the
same configuration the same way.
"""

from __future__ import annotations

from .config import AgentConfig, load_agent_config
from .errors import ConfigError
from .paths import Paths
from .pluginhost import PluginHost
from .tomlsource import InputFileError, read_toml


def load_plugins_and_config(paths: Paths) -> tuple[PluginHost, AgentConfig]:
    """Two steps, because agent.toml decides which plugins load and plugins validate agent.toml."""
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
    plugins = PluginHost.load(disabled)
    config = load_agent_config(paths, plugins)
    if plugins.unknown_disabled:
        warning = f"disabled_plugins names unknown plugins: {', '.join(plugins.unknown_disabled)}"
        config = AgentConfig(**{**config.__dict__, "warnings": (*config.warnings, warning)})
    return plugins, config
