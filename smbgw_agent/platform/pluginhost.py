"""Loading plugins, ordering them, and calling their hooks through a typed facade.

Built-in plugins and third-party ones are found the same way, through the ``smbgw``
entry-point group, so the core never names a plugin. `disabled_plugins` in agent.toml
removes plugins by their entry-point name.

Every call the core makes goes through a method here, not through ``pluggy``'s untyped
``hook`` attribute: the method says what comes back, stamps changes with the plugin that
made them, and calls only the plugin that owns a table, a mode or a resource. Calls that
reach several plugins run in pluggy's own order, which the host makes the plugins'
declared order (`smbgw_order`) by registering them accordingly.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import FieldError
from smbgw_agent.model.idranges import IdRange, merge
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform import hookspecs, order
from smbgw_agent.platform.changes import Change, Health, NodeResource, share_resource
from smbgw_agent.platform.commands import Command, join_parts
from smbgw_agent.platform.context import PassContext, SmbdControl
from smbgw_agent.platform.guests import GuestStep, check_steps
from smbgw_agent.platform.jobs import Schedule
from smbgw_agent.platform.parameters import Parameter, merge_parameters
from smbgw_agent.platform.smbd import ServiceSmbd

log = logging.getLogger(__name__)

# Used when the distribution is not installed (running from a source tree): the same
# names the pyproject entry points declare.
_BUILTIN_FALLBACK = {
    "mode_native": "smbgw_plugins.mode_native:NativeModePlugin",
    "quota": "smbgw_plugins.quota:QuotaPlugin",
    "backup": "smbgw_plugins.backup:BackupPlugin",
    "vip": "smbgw_plugins.ha:VipPlugin",
    "ctdb": "smbgw_plugins.ha.ctdb.plugin:CtdbPlugin",
    "ad": "smbgw_plugins.ad.plugin:AdPlugin",
    "mode_lxc": "smbgw_plugins.mode_lxc.plugin:LxcModePlugin",
    "mode_vm": "smbgw_plugins.mode_vm.plugin:VmModePlugin",
    "proxmox": "smbgw_plugins.proxmox.plugin:ProxmoxPlugin",
}
CORE_AGENT_TABLES = frozenset({"agent", "samba", "metrics"})
CORE = "core"


class PluginConflictError(Exception):
    """The enabled plugins cannot work together (two claim one table, mode or smbd)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class PluginCallError(Exception):
    """A plugin's hook raised; carries the plugin's name so the core can attribute it."""

    def __init__(self, plugin: str, error: BaseException) -> None:
        super().__init__(f"{plugin}: {str(error) or type(error).__name__}")
        self.plugin = plugin
        self.error = error


def discover_plugins() -> dict[str, str]:
    """Map plugin name -> ``module[:attribute]`` from the ``smbgw`` entry-point group."""
    found = {ep.name: ep.value for ep in entry_points(group=hookspecs.PROJECT)}
    for name, target in _BUILTIN_FALLBACK.items():
        found.setdefault(name, target)
    return found


def map_source_tree_plugins() -> None:
    """Make `smbgw_plugins` importable when running from a source checkout.

    Installed, the `plugins/` folder is the `smbgw_plugins` package (pyproject maps it).
    Run from a checkout with only PYTHONPATH set (as the tests against Debian's own
    python3 packages do), Python sees a folder named `plugins`; map the name to it.
    """
    if "smbgw_plugins" in sys.modules or importlib.util.find_spec("smbgw_plugins") is not None:
        return
    folder = Path(__file__).resolve().parents[2] / "plugins"
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
        map_source_tree_plugins()
    obj: object = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    return obj() if isinstance(obj, type) else obj


def _rank(plugin: object) -> int:
    declared = getattr(plugin, "smbgw_order", None)
    if not callable(declared):
        return order.DEFAULT
    value = declared()
    if isinstance(value, bool) or not isinstance(value, int):
        raise PluginConflictError([f"smbgw_order of {plugin!r} returned {value!r}, not an integer"])
    return value


def _texts(value: object, what: str, plugin: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise PluginConflictError([f"plugin {plugin}: {what} must be a list of names, not {value!r}"])
    names = list(value)
    if not all(isinstance(n, str) and n for n in names):
        raise PluginConflictError([f"plugin {plugin}: {what} must be a list of names, not {value!r}"])
    return names


class PluginHost:
    def __init__(self, plugins: Mapping[str, object | str], disabled: Iterable[str] = ()) -> None:
        self.disabled = tuple(disabled)
        self.unknown_disabled = tuple(sorted(set(self.disabled) - set(plugins)))
        loaded = {
            name: (load_target(plugin) if isinstance(plugin, str) else plugin)
            for name, plugin in sorted(plugins.items()) if name not in self.disabled
        }
        ranks = {name: _rank(plugin) for name, plugin in loaded.items()}
        # pluggy calls the most recently registered implementation first: register in
        # reverse so that its order is ours (by rank, then by name).
        self.order = sorted(loaded, key=lambda n: (ranks[n], n))
        self.ranks = ranks
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        for name in reversed(self.order):
            self.manager.register(loaded[name], name=name)
        self.manager.check_pending()
        self.instances = {name: loaded[name] for name in self.order}
        self._impls: dict[str, dict[str, Callable[..., Any]]] = {}
        for hook_name in self._hook_names():
            caller = getattr(self.manager.hook, hook_name)
            self._impls[hook_name] = {impl.plugin_name: impl.function for impl in caller.get_hookimpls()}
        problems: list[str] = []
        self._share_owners = self._claims("smbgw_share_sections", "share tables", problems)
        self._agent_owners = self._claims("smbgw_agent_sections", "agent.toml tables", problems)
        self._mode_owners = self._claims("smbgw_modes", "modes", problems)
        self._commands = self._command_claims(problems)
        for table in sorted(CORE_AGENT_TABLES & set(self._agent_owners)):
            problems.append(f"agent.toml table [{table}] belongs to the core; plugin "
                            f"{self._agent_owners[table]} cannot claim it")
        if problems:
            raise PluginConflictError(problems)
        self._modes = sorted(self._mode_owners)
        self.started = False

    @staticmethod
    def _hook_names() -> list[str]:
        return [name for name in dir(hookspecs) if name.startswith("smbgw_")]

    def _claims(self, hook: str, what: str, problems: list[str]) -> dict[str, str]:
        owners: dict[str, str] = {}
        for plugin, function in self._implementations(hook):
            for name in _texts(function(), what, plugin):
                if name in owners and owners[name] != plugin:
                    problems.append(f"{what}: {name!r} is claimed by plugins {owners[name]} and {plugin}; "
                                    "disable one of them ([agent] disabled_plugins)")
                owners.setdefault(name, plugin)
        return owners

    def _command_claims(self, problems: list[str]) -> dict[str, tuple[str, Command]]:
        """Verbs by name; a verb several plugins declare shared is joined into one
        (`commands.join_parts`), any other verb claimed twice is a problem."""
        parts: dict[str, list[tuple[str, Command]]] = {}
        for plugin, function in self._implementations("smbgw_commands"):
            for command in function() or ():
                if not isinstance(command, Command):
                    problems.append(f"plugin {plugin}: smbgw_commands gave {command!r}, not a Command")
                    continue
                problems.extend(f"plugin {plugin}: {problem}" for problem in command.problems())
                if all(owner != plugin for owner, _command in parts.get(command.name, [])):
                    parts.setdefault(command.name, []).append((plugin, command))
        commands: dict[str, tuple[str, Command]] = {}
        for name, claims in parts.items():
            joined, found = join_parts(claims)
            problems.extend(found)
            commands[name] = (claims[0][0], joined if joined is not None else claims[0][1])
        return commands

    @classmethod
    def load(cls, disabled: Iterable[str] = ()) -> PluginHost:
        return cls(discover_plugins(), disabled)

    # ---- lookups -------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Plugin names in calling order."""
        return list(self.order)

    def share_sections(self) -> frozenset[str]:
        return frozenset(self._share_owners)

    def agent_sections(self) -> frozenset[str]:
        return frozenset(self._agent_owners)

    def modes(self) -> list[str]:
        return self._modes

    def mode_owner(self, mode: str) -> str | None:
        """The plugin that serves shares of `mode`."""
        return self._mode_owners.get(mode)

    def commands(self) -> dict[str, tuple[str, Command]]:
        """smbgwctl verbs of the plugins: verb -> (plugin, command)."""
        return dict(self._commands)

    def _implementations(self, hook: str) -> list[tuple[str, Callable[..., Any]]]:
        impls = self._impls.get(hook, {})
        return [(name, impls[name]) for name in self.order if name in impls]

    def _call(self, plugin: str, hook: str, **kwargs: Any) -> Any:
        function = self._impls.get(hook, {}).get(plugin)
        if function is None:
            return None
        try:
            return function(**kwargs)
        except Exception as exc:
            raise PluginCallError(plugin, exc) from exc

    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any, BaseException | None]]:
        """Call every implementation of a hook separately, in plugin order, so one raising
        does not skip the rest and each failure is attributed to its plugin."""
        outcomes: list[tuple[str, Any, BaseException | None]] = []
        for name, function in self._implementations(hook_name):
            try:
                outcomes.append((name, function(**kwargs), None))
            except Exception as exc:
                outcomes.append((name, None, exc))
        return outcomes

    # ---- validation (the model's `AgentTableOwners` / `ShareTableOwners`) --------------

    def validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        owner = self._agent_owners.get(section)
        validate: Callable[..., Any] = self._impls["smbgw_validate_agent_section"].get(owner or "", _none)
        result = validate(section=section, data=data)
        if result is None:
            raise FieldError(f"the plugin owning [{section}] returned nothing")
        return result

    def validate_share_section(self, section: str, data: Mapping[str, Any], config: AgentConfig) -> Any:
        owner = self._share_owners.get(section)
        validate: Callable[..., Any] = self._impls["smbgw_validate_share_section"].get(owner or "", _none)
        result = validate(section=section, data=data, config=config)
        if result is None:
            raise FieldError(f"the plugin owning [{section}] returned nothing")
        return result

    def validate_share(self, share: ShareSpec, config: AgentConfig) -> list[str]:
        messages: list[str] = []
        for _plugin, function in self._implementations("smbgw_validate_share"):
            messages.extend(str(m) for m in function(share=share, config=config) or ())
        return messages

    # ---- lifecycle -----------------------------------------------------------------

    def smbd_control(self, config: AgentConfig) -> SmbdControl:
        """The plugin that took over smbd, or the core's systemd control."""
        answers = self.call_each("smbgw_smbd_control", config=config)
        takers = [(plugin, control) for plugin, control, _ in answers if control is not None]
        errors = [f"{plugin}: {error}" for plugin, _, error in answers if error is not None]
        if errors:
            raise PluginConflictError([f"cannot ask who controls smbd: {e}" for e in errors])
        if len(takers) > 1:
            raise PluginConflictError([
                "plugins " + " and ".join(p for p, _ in takers) + " both take over smbd; disable one"
            ])
        return takers[0][1] if takers else ServiceSmbd()

    def start(self, ctx: PassContext) -> list[str]:
        """Call every plugin's startup; returns errors (a failing startup is reported and
        the plugin keeps its hooks: a pass will tell whether it can work)."""
        self.started = True
        return [f"{plugin}: startup failed: {_describe(error)}"
                for plugin, _, error in self.call_each("smbgw_startup", ctx=ctx) if error is not None]

    def stop(self) -> None:
        """Retire these instances: every plugin's shutdown, in reverse order."""
        for plugin, function in reversed(self._implementations("smbgw_shutdown")):
            try:
                function()
            except Exception as exc:
                log.error("plugin %s: shutdown failed: %s", plugin, _describe(exc))
        self.started = False

    # ---- shares --------------------------------------------------------------------

    def plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> list[Change]:
        resource = share_resource(name)
        changes: list[Change] = []
        for plugin, _ in self._implementations("smbgw_plan_share"):
            result = self._call(plugin, "smbgw_plan_share", ctx=ctx, name=name, desired=desired, applied=applied)
            changes.extend(self._stamp(plugin, result, resource))
        return changes

    @staticmethod
    def _stamp(plugin: str, result: object, resource: str) -> list[Change]:
        stamped = []
        for change in result or ():  # type: ignore[attr-defined]
            if not isinstance(change, Change):
                raise PluginCallError(plugin, TypeError(f"planned {change!r}, not a Change"))
            if change.resource != resource:
                raise PluginCallError(plugin, ValueError(
                    f"planned a change to {change.resource!r} while asked about {resource!r}"))
            stamped.append(change.stamped(plugin))
        return stamped

    def apply_share(
        self, plugin: str, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]
    ) -> None:
        self._call(plugin, "smbgw_apply_share", ctx=ctx, name=name, desired=desired, changes=changes)

    def remove_share(
        self, plugin: str, ctx: PassContext, name: str, applied: ShareSpec | None, changes: Sequence[Change]
    ) -> None:
        self._call(plugin, "smbgw_remove_share", ctx=ctx, name=name, applied=applied, changes=changes)

    def rollback_share(self, plugin: str, ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
        self._call(plugin, "smbgw_rollback_share", ctx=ctx, name=name, applied=applied)

    def live_shares(self, ctx: PassContext) -> list[tuple[str, Sequence[ShareSpec], BaseException | None]]:
        return [(p, list(r or ()), e) for p, r, e in self.call_each("smbgw_live_shares", ctx=ctx)]

    def share_parameters(self, ctx: PassContext, share: ShareSpec, target: str) -> list[tuple[str, str]]:
        """The share's own options and every plugin's contribution, merged."""
        contributions: list[tuple[str, Parameter]] = [
            ("the share file's [options]", Parameter(name, value)) for name, value in share.options
        ]
        for plugin, _ in self._implementations("smbgw_share_parameters"):
            result = self._call(plugin, "smbgw_share_parameters", ctx=ctx, share=share, target=target)
            contributions.extend((f"plugin {plugin}", p) for p in _parameters(plugin, result))
        return merge_parameters(contributions, f"share [{share.name}]")

    def global_parameters(self, ctx: PassContext, target: str) -> list[tuple[str, str]]:
        contributions: list[tuple[str, Parameter]] = []
        for plugin, _ in self._implementations("smbgw_global_parameters"):
            result = self._call(plugin, "smbgw_global_parameters", ctx=ctx, target=target)
            contributions.extend((f"plugin {plugin}", p) for p in _parameters(plugin, result))
        return merge_parameters(contributions, f"the globals of {target}")

    def guest_id_ranges(self, ctx: PassContext, target: str) -> list[IdRange]:
        """Every plugin's ids to pass through into `target` (a guest), merged."""
        found: list[IdRange] = []
        for plugin, _ in self._implementations("smbgw_guest_id_ranges"):
            for item in self._call(plugin, "smbgw_guest_id_ranges", ctx=ctx, target=target) or ():
                if not isinstance(item, IdRange):
                    raise PluginCallError(plugin, TypeError(f"smbgw_guest_id_ranges gave {item!r}, not an IdRange"))
                found.append(item)
        return merge(found)

    def guest_steps(self, ctx: PassContext, target: str) -> list[GuestStep]:
        """Every plugin's work inside the guest `target`, in plugin order."""
        steps: list[GuestStep] = []
        for plugin, _ in self._implementations("smbgw_guest_steps"):
            result = self._call(plugin, "smbgw_guest_steps", ctx=ctx, target=target) or ()
            try:
                steps.extend(check_steps(plugin, list(result)))
            except TypeError as exc:
                raise PluginCallError(plugin, exc) from None
        return steps

    # ---- node resources ------------------------------------------------------------

    def node_resources(self, ctx: PassContext) -> tuple[dict[str, NodeResource], dict[str, str]]:
        """Every plugin's wanted node resources, and {plugin: error} for plugins that
        could not say (their applied resources are then kept)."""
        wanted: dict[str, NodeResource] = {}
        errors: dict[str, str] = {}
        for plugin, _ in self._implementations("smbgw_node_resources"):
            try:
                result = list(self._call(plugin, "smbgw_node_resources", ctx=ctx) or ())
                for item in result:
                    if not isinstance(item, NodeResource):
                        raise TypeError(f"declared {item!r}, not a NodeResource")
                    if item.id in wanted:
                        raise ValueError(f"resource {item.id} is already declared by {wanted[item.id].plugin}")
            except Exception as exc:
                errors[plugin] = _describe(exc.error if isinstance(exc, PluginCallError) else exc)
                continue
            for item in result:
                wanted[item.id] = item.stamped(plugin)
        return wanted, errors

    def plan_resource(
        self, ctx: PassContext, resource_id: str, desired: NodeResource | None, applied: NodeResource | None
    ) -> list[Change]:
        plugin = (desired or applied).plugin  # type: ignore[union-attr]
        if plugin not in self.instances:
            # Its plugin was disabled or uninstalled: nobody can release it; forget it.
            detail = f"forget {resource_id} (plugin {plugin} is not loaded)"
            return [Change(resource_id, "delete", detail).stamped(CORE)]
        result = self._call(plugin, "smbgw_plan_resource", ctx=ctx, resource_id=resource_id,
                            desired=desired, applied=applied)
        return self._stamp(plugin, result, resource_id)

    def apply_resource(self, plugin: str, ctx: PassContext, resource: NodeResource, changes: Sequence[Change]) -> None:
        self._call(plugin, "smbgw_apply_resource", ctx=ctx, resource=resource, changes=changes)

    def remove_resource(
        self, plugin: str, ctx: PassContext, resource_id: str, applied: NodeResource | None,
        changes: Sequence[Change],
    ) -> None:
        self._call(plugin, "smbgw_remove_resource", ctx=ctx, resource_id=resource_id, applied=applied,
                   changes=changes)

    def rollback_resource(self, plugin: str, ctx: PassContext, resource_id: str, applied: NodeResource | None) -> None:
        self._call(plugin, "smbgw_rollback_resource", ctx=ctx, resource_id=resource_id, applied=applied)

    # ---- commit and observing ------------------------------------------------------

    def commit(self, plugin: str, ctx: PassContext, resources: Sequence[str]) -> dict[str, str]:
        result = self._call(plugin, "smbgw_commit", ctx=ctx, resources=list(resources))
        return {str(k): str(v) for k, v in dict(result or {}).items()}

    def observe(self, ctx: PassContext) -> dict[str, Any]:
        return {plugin: ({"error": _describe(error)} if error else dict(observed or {}))
                for plugin, observed, error in self.call_each("smbgw_observe", ctx=ctx)}

    def health(self, ctx: PassContext) -> list[Health]:
        findings: list[Health] = []
        for plugin, result, error in self.call_each("smbgw_health", ctx=ctx):
            if error is not None:
                findings.append(Health("health-check", False, f"reporting health failed: {_describe(error)}",
                                       plugin=plugin))
                continue
            findings.extend(h.stamped(plugin) for h in result or () if isinstance(h, Health))
        return findings

    def schedules(self, ctx: PassContext) -> tuple[dict[str, Schedule], list[str]]:
        found: dict[str, Schedule] = {}
        errors: list[str] = []
        for plugin, result, error in self.call_each("smbgw_schedules", ctx=ctx):
            if error is not None:
                errors.append(f"{plugin}: schedules: {_describe(error)}")
                continue
            for schedule in result or ():
                if isinstance(schedule, Schedule):
                    found[schedule.id] = dataclasses.replace(schedule, plugin=plugin)
        return found, errors


def _none(**_kwargs: Any) -> None:
    return None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _parameters(plugin: str, result: object) -> list[Parameter]:
    items: list[Parameter] = []
    for item in result or ():  # type: ignore[attr-defined]
        if not isinstance(item, Parameter):
            raise PluginCallError(plugin, TypeError(f"contributed {item!r}, not a Parameter"))
        items.append(item)
    return items
