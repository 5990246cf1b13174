"""Loading plugins and calling hooks with per-plugin error attribution.

Built-in plugins and third-party ones are found the same way, through the ``smbgw``
entry-point group, so the core never names a plugin. `disabled_plugins` in agent.toml
removes plugins by their entry-point name.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import FieldError

log = logging.getLogger(__name__)

# Used when the distribution is not installed (running from a source tree): the same
# names the pyproject entry points declare.
_BUILTIN_FALLBACK = {"mode_native": "smbgw_plugins.mode_native:NativeModePlugin"}


def discover_plugins() -> dict[str, str]:
    """Map plugin name -> ``module[:attribute]`` from the ``smbgw`` entry-point group."""
    found = {ep.name: ep.value for ep in entry_points(group=hookspecs.PROJECT)}
    for name, target in _BUILTIN_FALLBACK.items():
        found.setdefault(name, target)
    return found


def _source_tree_plugins() -> None:
    """Make `smbgw_plugins` importable when running from a source checkout.

    Installed, the `plugins/` folder is the `smbgw_plugins` package (pyproject maps it).
    Run from a checkout with only PYTHONPATH set (as the tests against Debian's own
    python3 packages do), Python sees a folder named `plugins`; map the name to it.
    """
    if "smbgw_plugins" in sys.modules or importlib.util.find_spec("smbgw_plugins") is not None:
        return
    folder = Path(__file__).resolve().parent.parent / "plugins"
    init = folder / "__init__.py"
    if not init.is_file():
        return
    spec = importlib.util.spec_from_file_location(
        "smbgw_plugins", init, submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["smbgw_plugins"] = module
    spec.loader.exec_module(module)


def load_target(target: str) -> object:
    """Import ``module[:attribute]``; a class is instantiated so each agent has its own state."""
    module_name, _, attribute = target.partition(":")
    if module_name.startswith("smbgw_plugins"):
        _source_tree_plugins()
    obj: object = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj() if isinstance(obj, type) else obj


class PluginHost:
    """A pluggy manager plus the lookups the core needs (sections, modes)."""

    def __init__(self, plugins: Mapping[str, object | str], disabled: Iterable[str] = ()) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.disabled = tuple(disabled)
        self.unknown_disabled = tuple(sorted(set(self.disabled) - set(plugins)))
        for name, plugin in sorted(plugins.items()):
            if name in self.disabled:
                continue
            loaded = load_target(plugin) if isinstance(plugin, str) else plugin
            self.manager.register(loaded, name=name)
        self.manager.check_pending()
        self.hook = self.manager.hook
        self._share_sections = self._owners(self.hook.smbgw_share_sections())
        self._agent_sections = self._owners(self.hook.smbgw_agent_sections())
        self._modes = sorted({m for modes in self.hook.smbgw_modes() for m in modes})

    @classmethod
    def load(cls, disabled: Iterable[str] = ()) -> PluginHost:
        return cls(discover_plugins(), disabled)

    @staticmethod
    def _owners(results: Sequence[Sequence[str]]) -> frozenset[str]:
        return frozenset(name for names in results for name in names)

    @property
    def names(self) -> list[str]:
        return sorted(name for name, _ in self.manager.list_name_plugin())

    def plugin_name(self, plugin: object) -> str:
        return self.manager.get_name(plugin) or repr(plugin)

    def share_sections(self) -> frozenset[str]:
        return self._share_sections

    def agent_sections(self) -> frozenset[str]:
        return self._agent_sections

    def modes(self) -> list[str]:
        return self._modes

    def validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        result = self.hook.smbgw_validate_agent_section(section=section, data=data)
        if result is None:
            raise FieldError(f"the plugin owning [{section}] returned nothing")
        return result

    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any, BaseException | None]]:
        """Call every implementation of a hook separately, so one raising does not skip the rest.

        pluggy stops at the first exception; for node-wide phases (commit, observe) the
        core wants every plugin to run and each failure attributed to its plugin.
        """
        outcomes: list[tuple[str, Any, BaseException | None]] = []
        for impl in getattr(self.hook, hook_name).get_hookimpls():
            try:
                outcomes.append((impl.plugin_name, impl.function(**kwargs), None))
            except Exception as exc:
                outcomes.append((impl.plugin_name, None, exc))
        return outcomes

    def plugins(self) -> list[object]:
        return [plugin for _, plugin in self.manager.list_name_plugin()]
