"""The plugin contract: documented hooks, the built-in plugin, disabling, third-party plugins."""

from __future__ import annotations

import inspect
import textwrap
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy
import pytest

from smbgw_agent.assembly import load_plugins_and_config
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import ConfigError, FieldError
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform import hookspecs, pluginhost
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.pluginhost import PluginHost, discover_plugins
from smbgw_agent.reconcile.scanner import ShareScanner

NATIVE_TARGET = "smbgw_plugins.mode_native:NativeModePlugin"


def hookspec_functions(module: types.ModuleType) -> dict[str, Any]:
    """The functions of `module` that carry pluggy's hookspec mark for project `smbgw`."""
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: function
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if getattr(function, marker, None) is not None
    }


def undocumented(module: types.ModuleType) -> list[str]:
    return sorted(name for name, f in hookspec_functions(module).items() if len((f.__doc__ or "").strip()) < 20)


# ---- the hook specifications ---------------------------------------------------------------


def test_every_hook_has_a_docstring() -> None:
    specs = hookspec_functions(hookspecs)
    assert len(specs) >= 10, f"expected the documented phases, found only {sorted(specs)}"
    assert undocumented(hookspecs) == []


def test_the_docstring_check_catches_an_undocumented_hook() -> None:
    """The check above is not vacuous: a hookspec without a docstring is reported."""
    fake = types.ModuleType("fake_hookspecs")

    @hookspecs.hookspec
    def smbgw_documented() -> None:
        """Does one thing, described at enough length to count."""

    @hookspecs.hookspec
    def smbgw_bare() -> None:
        pass

    def smbgw_not_a_hook() -> None:
        pass

    for function in (smbgw_documented, smbgw_bare, smbgw_not_a_hook):
        function.__module__ = fake.__name__
        setattr(fake, function.__name__, function)
    assert sorted(hookspec_functions(fake)) == ["smbgw_bare", "smbgw_documented"]
    assert undocumented(fake) == ["smbgw_bare"]


def test_hookspecs_are_what_the_manager_knows() -> None:
    host = PluginHost({})
    known = {name for name in dir(host.manager.hook) if name.startswith("smbgw_")}
    assert known == set(hookspec_functions(hookspecs))
    assert all(name.startswith("smbgw_") for name in known)


# ---- the built-in plugin ---------------------------------------------------------------------


def test_builtin_plugin_is_loaded_through_the_entry_point_group() -> None:
    assert discover_plugins()["mode_native"] == NATIVE_TARGET
    host = PluginHost.load()
    assert "mode_native" in host.names
    plugin = host.manager.get_plugin("mode_native")
    assert type(plugin).__name__ == "NativeModePlugin"
    assert "native" in host.modes()
    implementers = {impl.plugin_name for impl in host.manager.hook.smbgw_plan_share.get_hookimpls()}
    assert "mode_native" in implementers


def test_each_host_gets_its_own_plugin_instance() -> None:
    first, second = PluginHost.load(), PluginHost.load()
    assert first.manager.get_plugin("mode_native") is not second.manager.get_plugin("mode_native")


def test_builtin_plugin_is_found_without_installed_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """Running from a source tree (no entry points): the built-ins still load."""
    monkeypatch.setattr(pluginhost, "entry_points", lambda **_kw: [])
    host = PluginHost.load()
    assert host.names == ["ctdb", "ad", "quota", "mode_lxc", "mode_native", "mode_vm", "proxmox", "backup", "vip"]
    assert host.modes() == ["lxc", "native", "vm"]


def test_a_hook_implementation_without_a_spec_is_refused() -> None:
    class Typo:
        @hookimpl
        def smbgw_aply_share(self, ctx: Any, name: str, desired: Any) -> None:
            """Misspelt: would silently never be called."""

    with pytest.raises(pluggy.PluginValidationError):
        PluginHost({"typo": Typo()})


# ---- disabled_plugins --------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/smbgw/shares.d").mkdir(parents=True)
    (root / "srv/data").mkdir(parents=True)
    return root


def test_disabled_builtin_is_not_registered_and_its_mode_is_gone(root: Path) -> None:
    host = PluginHost.load(disabled=["mode_native"])
    assert "mode_native" not in host.names
    assert "native" not in host.modes()
    config = AgentConfig(node="n1", allowed_roots=("/srv",))
    scanner = ShareScanner(Paths.under(root), host, config)
    explicit = write(root / "etc/smbgw/shares.d/explicit.toml", """
        path = "/srv/data"
        mode = "native"
    """)
    implicit = write(root / "etc/smbgw/shares.d/implicit.toml", 'path = "/srv/data"\n')
    result = scanner.read_one(explicit)
    assert not result.valid
    [problem] = result.problems
    assert problem.key == "mode" and problem.line == 2
    assert "'native' is not provided by any enabled plugin" in problem.message
    result = scanner.read_one(implicit)
    assert not result.valid
    assert any(p.key == "mode" and "native" in p.message for p in result.problems)


def test_disabled_plugins_in_agent_toml(root: Path) -> None:
    write(root / "etc/smbgw/agent.toml", """
        [agent]
        allowed_roots = ["/srv"]
        disabled_plugins = ["mode_native", "no_such_plugin"]
    """)
    paths = Paths.under(root)
    plugins, config = load_plugins_and_config(paths)
    assert "mode_native" not in plugins.names
    assert any("no_such_plugin" in w for w in config.warnings)
    write(root / "etc/smbgw/shares.d/data.toml", 'path = "/srv/data"\nmode = "native"\n')
    scan = ShareScanner(paths, plugins, config).scan()
    assert not scan.files["data.toml"].valid
    assert "not provided by any enabled plugin" in str(scan.files["data.toml"].problems[0])
    # Enabled again, the same file is fine.
    write(root / "etc/smbgw/agent.toml", '[agent]\nallowed_roots = ["/srv"]\n')
    plugins, config = load_plugins_and_config(paths)
    assert ShareScanner(paths, plugins, config).scan().files["data.toml"].valid


# ---- a third-party plugin ---------------------------------------------------------------------


class DemoPlugin:
    """Owns `[demo]` in share files and in agent.toml; adds no deployment mode."""

    LEVELS = range(1, 6)

    def __init__(self) -> None:
        self.validated: list[Mapping[str, Any]] = []

    @hookimpl
    def smbgw_share_sections(self) -> Sequence[str]:
        return ["demo"]

    @hookimpl
    def smbgw_agent_sections(self) -> Sequence[str]:
        return ["demo"]

    @hookimpl
    def smbgw_validate_agent_section(self, section: str, data: Mapping[str, Any]) -> Any:
        if section != "demo":
            return None
        unknown = set(data) - {"greeting"}
        if unknown:
            raise FieldError("unknown key", key=sorted(unknown)[0])
        return {"greeting": str(data.get("greeting", "hello"))}

    @hookimpl
    def smbgw_validate_share_section(self, section: str, data: Mapping[str, Any], config: AgentConfig) -> Any:
        if section != "demo":
            return None
        self.validated.append(dict(data))
        level = data.get("level", 1)
        if not isinstance(level, int) or level not in self.LEVELS:
            raise FieldError(f"must be an integer from 1 to 5, not {level!r}", key="level")
        for key in data:
            if key not in ("level", "tag"):
                raise FieldError("unknown key", key=key)
        return {"level": level, "tag": str(data.get("tag", ""))}

    @hookimpl
    def smbgw_validate_share(self, share: ShareSpec, config: AgentConfig) -> Sequence[str]:
        demo = share.sections.get("demo")
        if demo and demo["level"] == 5 and not share.read_only:
            return ["[demo] level 5 requires read_only = true"]
        return []


def demo_host(**extra: object) -> tuple[PluginHost, DemoPlugin]:
    demo = DemoPlugin()
    return PluginHost({"mode_native": NATIVE_TARGET, "demo": demo, **extra}), demo


def test_third_party_plugin_owns_and_validates_its_share_table(root: Path) -> None:
    host, demo = demo_host()
    assert host.names == ["mode_native", "demo"]  # by rank: a mode before an unranked plugin
    assert "demo" in host.share_sections()
    config = AgentConfig(node="n1", allowed_roots=("/srv",))
    scanner = ShareScanner(Paths.under(root), host, config)
    good = write(root / "etc/smbgw/shares.d/good.toml", """
        path = "/srv/data"

        [demo]
        level = 3
        tag = "blue"
    """)
    result = scanner.read_one(good)
    assert result.valid, result.problems
    assert result.spec is not None
    assert result.spec.sections["demo"] == {"level": 3, "tag": "blue"}
    assert result.spec.mode == "native"
    assert demo.validated == [{"level": 3, "tag": "blue"}]


def test_third_party_plugin_errors_carry_file_key_and_line(root: Path) -> None:
    host, _ = demo_host()
    config = AgentConfig(node="n1", allowed_roots=("/srv",))
    scanner = ShareScanner(Paths.under(root), host, config)
    bad = write(root / "etc/smbgw/shares.d/bad.toml", """
        path = "/srv/data"
        comment = "x"

        [demo]
        tag = "red"
        level = 9
    """)
    result = scanner.read_one(bad)
    assert not result.valid
    [problem] = result.problems
    assert problem.key == "demo.level"
    assert problem.line == 6
    assert "from 1 to 5" in problem.message
    assert str(problem).startswith(f"{bad}:6: demo.level: ")

    cross = write(root / "etc/smbgw/shares.d/cross.toml", """
        path = "/srv/data"
        [demo]
        level = 5
    """)
    result = scanner.read_one(cross)
    assert not result.valid
    assert [p.message for p in result.problems] == ["[demo] level 5 requires read_only = true"]


def test_third_party_plugin_owns_an_agent_table(root: Path) -> None:
    from smbgw_agent.model.config import load_agent_config

    host, _ = demo_host()
    paths = Paths.under(root)
    write(root / "etc/smbgw/agent.toml", '[demo]\ngreeting = "hi"\n')
    assert load_agent_config(paths, host).plugin_sections["demo"] == {"greeting": "hi"}
    write(root / "etc/smbgw/agent.toml", '[agent]\nnode = "n1"\n\n[demo]\ngretting = "hi"\n')
    with pytest.raises(ConfigError) as caught:
        load_agent_config(paths, host)
    [problem] = caught.value.problems
    assert problem.line == 5 and problem.key == "demo.gretting"
    # Without the plugin, [demo] is an unknown table: a typo never passes silently.
    with pytest.raises(ConfigError, match="unknown table"):
        load_agent_config(paths, PluginHost({"mode_native": NATIVE_TARGET}))


def test_a_table_without_its_plugin_is_reported(root: Path) -> None:
    config = AgentConfig(node="n1", allowed_roots=("/srv",))
    file = write(root / "etc/smbgw/shares.d/orphan.toml", 'path = "/srv/data"\n\n[demo]\nlevel = 2\n')
    without = ShareScanner(Paths.under(root), PluginHost({"mode_native": NATIVE_TARGET}), config)
    result = without.read_one(file)
    assert not result.valid
    [problem] = result.problems
    assert problem.key == "demo" and problem.line == 3
    assert "no enabled plugin" in problem.message
    host, _ = demo_host()
    disabled = PluginHost({"mode_native": NATIVE_TARGET, "demo": DemoPlugin()}, disabled=["demo"])
    assert "demo" not in disabled.share_sections()
    assert ShareScanner(Paths.under(root), host, config).read_one(file).valid
    assert not ShareScanner(Paths.under(root), disabled, config).read_one(file).valid


def test_third_party_plugin_registered_through_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package installed anywhere on sys.path with an `smbgw` entry point is picked up."""
    site = tmp_path / "site"
    write(site / "smbgw_demo_plugin.py", """
        from smbgw_agent.platform.hookspecs import hookimpl

        class Plugin:
            @hookimpl
            def smbgw_share_sections(self):
                return ["demo"]

            @hookimpl
            def smbgw_validate_share_section(self, section, data, config):
                return dict(data) if section == "demo" else None
    """)
    write(site / "smbgw_demo_plugin-1.0.dist-info/METADATA", """
        Metadata-Version: 2.1
        Name: smbgw-demo-plugin
        Version: 1.0
    """)
    write(site / "smbgw_demo_plugin-1.0.dist-info/entry_points.txt", """
        [smbgw]
        demo = smbgw_demo_plugin:Plugin
    """)
    monkeypatch.syspath_prepend(str(site))
    assert discover_plugins()["demo"] == "smbgw_demo_plugin:Plugin"
    host = PluginHost.load()
    assert {"demo", "mode_native"} <= set(host.names)
    assert "demo" in host.share_sections()
    assert "demo" not in PluginHost.load(disabled=["demo"]).names


# ---- the contract is documented as it is ---------------------------------------------------------


def signature_line(function: Any) -> str:
    signature = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"def {function.__name__}({params}) -> {signature.return_annotation}"


def test_every_hook_is_in_docs_plugins_md_with_its_exact_signature() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs/plugins.md").read_text()
    missing = [signature_line(f) for f in hookspec_functions(hookspecs).values() if signature_line(f) not in docs]
    assert missing == [], "update docs/plugins.md:\n" + "\n".join(missing)


def test_the_signature_check_notices_a_changed_signature() -> None:
    def smbgw_commit(ctx: Any, touched: Sequence[str]) -> Mapping[str, str]:
        """A signature the documentation does not have."""

    docs = (Path(__file__).resolve().parents[2] / "docs/plugins.md").read_text()
    assert signature_line(hookspecs.smbgw_commit) in docs
    assert signature_line(smbgw_commit) not in docs
