"""Share files: every rule of a share file (README), with file, key and line in each error.

Paths are resolved under a sandbox root (smbgw_agent.model.paths.Paths), as `--root` does, so
the symlink and system-directory checks run against real directories without touching
the host.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import ConfigError, FieldError, Problem
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.shares import FORBIDDEN_OPTIONS, MAX_PROBLEMS, ShareSpec, check_share_path, parse_share
from smbgw_agent.model.tomlsource import InputFileError, parse_toml
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.pluginhost import PluginHost

NATIVE = "smbgw_plugins.mode_native:NativeModePlugin"


class QuotaPlugin:
    """A plugin owning the [quota] table of share files, for the plugin-table rules."""

    @hookimpl
    def smbgw_share_sections(self) -> list[str]:
        return ["quota"]

    @hookimpl
    def smbgw_validate_share_section(self, section: str, data: Mapping[str, Any], config: AgentConfig) -> Any:
        if section != "quota":
            return None
        unknown = sorted(set(data) - {"size", "warn_percent", "backend"})
        if unknown:
            raise FieldError("unknown key", key=unknown[0])
        if not isinstance(data.get("size"), str):
            raise FieldError("must be a size string", key="size")
        return dict(data)


@pytest.fixture(scope="module")
def plugins() -> PluginHost:
    return PluginHost({"mode_native": NATIVE})


@pytest.fixture(scope="module")
def quota_plugins() -> PluginHost:
    return PluginHost({"mode_native": NATIVE, "quota": QuotaPlugin()})


@pytest.fixture
def root(tmp_path: Path) -> Path:
    sandbox = tmp_path / "root"
    for directory in ("tank/finance", "srv/smb", "etc", "opt/data", "tankfoo/x"):
        (sandbox / directory).mkdir(parents=True)
    return sandbox


@pytest.fixture
def paths(root: Path) -> Paths:
    return Paths.under(root)


CONFIG = AgentConfig(node="pve1", allowed_roots=("/tank", "/srv"))
CUSTOM = AgentConfig(node="pve1", allowed_roots=("/tank", "/srv"), allow_custom_options=True)


def parse(
    paths: Paths, plugins: PluginHost, text: str, file: str = "finance.toml", config: AgentConfig = CONFIG,
) -> ShareSpec:
    doc = parse_toml(paths.host("/etc/smbgw/shares.d") / file, text.encode())
    return parse_share(doc, config, paths, plugins)


def problems_of(
    paths: Paths, plugins: PluginHost, text: str, file: str = "finance.toml", config: AgentConfig = CONFIG,
) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        parse(paths, plugins, text, file, config)
    problems = info.value.problems
    assert problems, "ConfigError without problems"
    for problem in problems:
        assert problem.file.name == file, problem  # every problem names its file
        assert problem.message
    return problems


def one_problem(
    paths: Paths, plugins: PluginHost, text: str, file: str = "finance.toml", config: AgentConfig = CONFIG,
) -> Problem:
    problems = problems_of(paths, plugins, text, file, config)
    assert len(problems) == 1, problems
    return problems[0]


def toml_string(value: str) -> str:
    """A TOML basic string holding exactly `value` (control characters escaped)."""
    return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes


# ---- valid files --------------------------------------------------------------------


def test_minimal_file(paths: Paths, plugins: PluginHost) -> None:
    spec = parse(paths, plugins, 'path = "/tank/finance"\n')
    assert spec == ShareSpec(name="finance", file="finance.toml", path="/tank/finance")
    assert spec.mode == "native" and spec.browseable and not spec.read_only and spec.node is None


def test_design_example(paths: Paths, quota_plugins: PluginHost) -> None:
    text = """\
path = "/tank/finance"          # required, absolute; must lie under [agent] allowed_roots
mode = "native"                 # native | lxc | vm
comment = "Finance team"
read_only = false
browseable = true
valid_users = ["@CORP\\\\finance"]
node = "pve1"                   # optional placement

[quota]                         # optional
size = "500G"
warn_percent = 85
backend = "auto"
"""
    spec = parse(paths, quota_plugins, text)
    assert spec.name == "finance"
    assert spec.comment == "Finance team"
    assert spec.valid_users == ("@CORP\\finance",)
    assert spec.node == "pve1"
    assert spec.sections == {"quota": {"size": "500G", "warn_percent": 85, "backend": "auto"}}


def test_name_key_overrides_file_stem(paths: Paths, plugins: PluginHost) -> None:
    spec = parse(paths, plugins, 'name = "Finance Team"\npath = "/tank/finance"\n', file="anything.toml")
    assert (spec.name, spec.file, spec.key) == ("Finance Team", "anything.toml", "finance team")


def test_spec_round_trips_and_digest_ignores_file(paths: Paths, quota_plugins: PluginHost) -> None:
    text = 'path = "/tank/finance"\nvalid_users = ["a", "b"]\n[quota]\nsize = "1G"\n'
    spec = parse(paths, quota_plugins, text)
    assert ShareSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    renamed = parse(paths, quota_plugins, 'name = "finance"\n' + text, file="other.toml")
    assert renamed.digest() == spec.digest()
    changed = parse(paths, quota_plugins, text.replace('"b"', '"c"'))
    assert changed.digest() != spec.digest()
    # to_json is cached on the (immutable) spec; a copy with a field replaced is a new
    # spec with its own text, and the cache takes no part in equality.
    assert ShareSpec.from_dict(json.loads(spec.to_json())) == spec and spec.to_json() is spec.to_json()
    moved = dataclasses.replace(spec, path="/tank/moved")
    assert json.loads(moved.to_json())["path"] == "/tank/moved" and moved != spec
    assert dataclasses.replace(moved, path=spec.path) == spec


# ---- every error names file, key and line -------------------------------------------

LOCATED = [
    # (text, key, line, reason)
    ('path = "/tank/x"\nread_only = "yes"\n', "read_only", 2, "true or false"),
    ('path = "/tank/x"\nbrowseable = 1\n', "browseable", 2, "true or false"),
    ("path = 5\n", "path", 1, "must be a string"),
    ('path = ["/tank/x"]\n', "path", 1, "must be a string"),
    ('path = "/tank/x"\n\n\ncolour = "red"\n', "colour", 4, "unknown key"),
    ('path = "/tank/x"\n"odd key" = 1\n', "odd key", 2, "unknown key"),
    ('path = "/tank/x"\nmode = "lxc"\n', "mode", 2, "not provided by any enabled plugin"),
    ('path = "/tank/x"\nmode = 5\n', "mode", 2, "must be a string"),
    ('path = "/tank/x"\ncomment = 5\n', "comment", 2, "must be a string"),
    ('path = "/tank/x"\ncomment = "a\\nb"\n', "comment", 2, "control characters"),
    ('path = "/tank/x"\nvalid_users = 5\n', "valid_users", 2, "list of strings"),
    ('path = "/tank/x"\nvalid_users = [5]\n', "valid_users", 2, "must be strings"),
    ('path = "/tank/x"\nnode = 5\n', "node", 2, "must be a string"),
    ('path = "/tank/x"\nname = "global"\n', "name", 2, "reserved"),
    ('path = "/tank/x"\nname = 5\n', "name", 2, "must be a string"),
    ('comment = "x"\npath = "tank/x"\n', "path", 2, "relative"),
    ('path = "/tank/x"\n[quota]\nsize = "1G"\n', "quota", 2, "no enabled plugin handles this table"),
    ('path = "/tank/x"\n[ha]\nvip = "10.0.0.1/24"\n', "ha", 2, "no enabled plugin handles this table"),
    ('path = "/tank/x"\n\n[options]\n"hide dot files" = true\n', "options", 3, "allow_custom_options"),
]


@pytest.mark.parametrize(("text", "key", "line", "reason"), LOCATED, ids=[f"{k}-{r[:20]}" for _, k, _, r in LOCATED])
def test_errors_name_file_key_and_line(
    paths: Paths, plugins: PluginHost, text: str, key: str, line: int, reason: str
) -> None:
    problem = one_problem(paths, plugins, text)
    assert (problem.key, problem.line) == (key, line), problem
    assert reason in problem.message
    assert str(problem).startswith(f"{paths.host('/etc/smbgw/shares.d/finance.toml')}:{line}: {key}: ")


def test_missing_path_names_the_key(paths: Paths, plugins: PluginHost) -> None:
    problem = one_problem(paths, plugins, 'comment = "no path"\n')
    assert (problem.key, problem.line) == ("path", None)
    assert "required" in problem.message


def test_empty_file_is_missing_path(paths: Paths, plugins: PluginHost) -> None:
    assert one_problem(paths, plugins, "").key == "path"


def test_all_problems_of_a_file_are_reported(paths: Paths, plugins: PluginHost) -> None:
    text = 'read_only = "yes"\ncomment = "a\\nb"\ncolour = 1\n[quota]\nsize = "1G"\nname = "x]"\n'
    problems = problems_of(paths, plugins, text)
    keys = {p.key for p in problems}
    assert {"path", "read_only", "comment", "colour", "quota"} <= keys, problems


def test_unknown_key_lists_known_keys(paths: Paths, plugins: PluginHost) -> None:
    problem = one_problem(paths, plugins, 'path = "/tank/x"\npaht = "/tank/y"\n')
    assert problem.key == "paht"
    assert "path" in problem.message and "valid_users" in problem.message


def test_problems_are_capped_per_file(paths: Paths, plugins: PluginHost) -> None:
    text = 'path = "/tank/x"\n' + "".join(f"k{i} = {i}\n" for i in range(20_000))
    problems = problems_of(paths, plugins, text)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0].key == "k0" and problems[0].line == 2
    assert "19950 more" in problems[-1].message


def test_unknown_key_names_with_control_characters_are_shown_escaped(paths: Paths, plugins: PluginHost) -> None:
    problem = one_problem(paths, plugins, 'path = "/tank/x"\n"evil\\nkey\\u001b]0;x\\u0007" = 1\n')
    assert problem.key is not None
    assert not any(unicodedata.category(c) == "Cc" for c in problem.key), problem.key
    assert "evil" in problem.key


# ---- plugin tables ------------------------------------------------------------------


def test_plugin_table_accepted_when_a_plugin_owns_it(paths: Paths, quota_plugins: PluginHost) -> None:
    spec = parse(paths, quota_plugins, 'path = "/tank/x"\n[quota]\nsize = "1G"\n')
    assert spec.sections == {"quota": {"size": "1G"}}


def test_plugin_table_errors_point_at_the_nested_key(paths: Paths, quota_plugins: PluginHost) -> None:
    problem = one_problem(paths, quota_plugins, 'path = "/tank/x"\n\n[quota]\nwarn_percent = 80\nsize = 5\n')
    assert (problem.key, problem.line) == ("quota.size", 5)
    problem = one_problem(paths, quota_plugins, 'path = "/tank/x"\n[quota]\nsize = "1G"\nsoft = 1\n')
    assert (problem.key, problem.line) == ("quota.soft", 4)


def test_owned_table_must_be_a_table(paths: Paths, quota_plugins: PluginHost) -> None:
    problem = one_problem(paths, quota_plugins, 'path = "/tank/x"\nquota = "500G"\n')
    assert (problem.key, problem.line) == ("quota", 2)
    assert "must be a table" in problem.message


def test_unowned_scalar_with_a_table_name_is_an_unknown_key(paths: Paths, plugins: PluginHost) -> None:
    problem = one_problem(paths, plugins, 'path = "/tank/x"\nquota = "500G"\n')
    assert (problem.key, problem.line) == ("quota", 2)
    assert "unknown key" in problem.message


# ---- share names --------------------------------------------------------------------

NAME_CASES = [
    ("global", "reserved"),
    ("GLOBAL", "reserved"),
    ("Homes", "reserved"),
    ("printers", "reserved"),
    ("IPC$", "reserved"),
    ("ipc$", "reserved"),
    ("x" * 81, "80"),
    ("", "1 to 80"),
    ("a[b", "forbidden"),
    ("a]b", "forbidden"),
    ("fin]\n[global", "control characters"),
    ("a\rb", "control characters"),
    ("a\u2028b", "control characters"),
    ("a\x00b", "control characters"),
    ("a\x1bb", "control characters"),
    ("a%b", "'%'"),
    ("a\\", "backslash"),
    (".x", "must not start"),
]


@pytest.mark.parametrize(("name", "reason"), NAME_CASES, ids=[repr(n)[:20] for n, _ in NAME_CASES])
def test_share_name_rules_via_name_key(paths: Paths, plugins: PluginHost, name: str, reason: str) -> None:
    problem = one_problem(paths, plugins, f'path = "/tank/x"\nname = {toml_string(name)}\n')
    assert (problem.key, problem.line) == ("name", 2)
    assert reason in problem.message


@pytest.mark.parametrize(
    ("file", "reason"),
    [
        ("global.toml", "reserved"),
        ("IPC$.toml", "reserved"),
        ("Printers.toml", "reserved"),
        ("x" * 81 + ".toml", "80"),
        ("a[b].toml", "forbidden"),
        ("100%.toml", "'%'"),
        ("a\x07b.toml", "control characters"),
    ],
)
def test_share_name_rules_via_file_name(paths: Paths, plugins: PluginHost, file: str, reason: str) -> None:
    problem = one_problem(paths, plugins, 'path = "/tank/x"\n', file=file)
    assert "file name gives the share name" in problem.message
    assert reason in problem.message


def test_name_of_80_characters_is_fine(paths: Paths, plugins: PluginHost) -> None:
    assert parse(paths, plugins, f'path = "/tank/x"\nname = "{"x" * 80}"\n').name == "x" * 80
    assert parse(paths, plugins, 'path = "/tank/x"\n', file="y" * 80 + ".toml").name == "y" * 80


def test_reserved_stem_can_be_overridden_by_name(paths: Paths, plugins: PluginHost) -> None:
    assert parse(paths, plugins, 'path = "/tank/x"\nname = "globaldata"\n', file="global.toml").name == "globaldata"


# ---- paths --------------------------------------------------------------------------

PATH_REFUSED = [
    ("tank/finance", "relative"),
    ("", "relative"),
    ("./tank", "relative"),
    ("/", "cannot be shared"),
    ("/srv/../etc", "'..'"),
    ("/srv/smb/../../etc", "'..'"),
    ("/tank/finance/..", "'..'"),
    ("/etc", "system directory /etc"),
    ("/etc/samba", "system directory /etc"),
    ("/usr/share", "system directory /usr"),
    ("/proc", "system directory /proc"),
    ("/root/data", "system directory /root"),
    ("/run/smbgw", "system directory /run"),
    ("/var/lib/smbgw", "system directory /var/lib/smbgw"),
    ("/var/lib/samba/private", "system directory /var/lib/samba"),
    ("/opt/data", "outside the allowed roots"),
    ("/tankfoo/x", "outside the allowed roots"),
    ("/tankfoo", "outside the allowed roots"),
    ("/srvx", "outside the allowed roots"),
    ("/tank\n/x", "control characters"),
    ("/tank/100%", "'%'"),
    ("/tank/x\\", "backslash"),
    ("/tank/x\u2028", "control characters"),
    ("/tank/" + "x" * 4100, "too long"),
]


@pytest.mark.parametrize(("value", "reason"), PATH_REFUSED, ids=[repr(v)[:30] for v, _ in PATH_REFUSED])
def test_path_refused(paths: Paths, plugins: PluginHost, value: str, reason: str) -> None:
    problem = one_problem(paths, plugins, f"path = {toml_string(value)}\n")
    assert (problem.key, problem.line) == ("path", 1)
    assert reason in problem.message


@pytest.mark.parametrize(
    ("value", "declared"),
    [
        ("/tank", "/tank"),
        ("/tank/finance", "/tank/finance"),
        ("/tank/finance/", "/tank/finance"),
        ("/srv//smb/./new", "/srv/smb/new"),
        ("//tank/finance", "/tank/finance"),
        ("/tank/not-yet-created", "/tank/not-yet-created"),
        ("/tank/Dépôt données", "/tank/Dépôt données"),
    ],
)
def test_path_accepted_and_normalized(paths: Paths, plugins: PluginHost, value: str, declared: str) -> None:
    assert parse(paths, plugins, f"path = {toml_string(value)}\n").path == declared


def test_without_allowed_roots_only_system_directories_are_refused(paths: Paths, plugins: PluginHost) -> None:
    open_config = AgentConfig(node="pve1")
    assert parse(paths, plugins, 'path = "/opt/data"\n', config=open_config).path == "/opt/data"
    assert "system directory" in one_problem(paths, plugins, 'path = "/etc/x"\n', config=open_config).message


def test_path_that_is_a_file_is_refused(root: Path, paths: Paths, plugins: PluginHost) -> None:
    (root / "tank/file").write_text("x")
    assert "not a directory" in one_problem(paths, plugins, 'path = "/tank/file"\n').message


SYMLINKS = [
    # (link under the sandbox, its target, declared path, reason or None if accepted)
    ("tank/abs-etc", "/etc", "/tank/abs-etc", "outside the sandbox root"),
    ("tank/abs-etc", "/etc", "/tank/abs-etc/new", "outside the sandbox root"),
    ("tank/rel-etc", "../etc", "/tank/rel-etc", "system directory /etc"),
    ("tank/rel-etc", "../etc", "/tank/rel-etc/sub/new", "system directory /etc"),
    ("tank/to-opt", "../opt/data", "/tank/to-opt", "outside the allowed roots"),
    ("tank/to-tankfoo", "../tankfoo/x", "/tank/to-tankfoo", "outside the allowed roots"),
    ("tank/up", "../..", "/tank/up", "outside the sandbox root"),
    ("tank/dangling", "/nonexistent/dir", "/tank/dangling", "outside the sandbox root"),
    ("tank/loop", "loop", "/tank/loop", None),  # a link to itself: refused somehow
    ("tank/alias", "finance", "/tank/alias", "ok"),
    ("tank/cross", "../srv/smb", "/tank/cross", "ok"),
]


@pytest.mark.parametrize(("link", "target", "declared", "reason"), SYMLINKS, ids=[s[2] + "->" + s[1] for s in SYMLINKS])
def test_symlinks_cannot_escape(
    root: Path, paths: Paths, plugins: PluginHost, link: str, target: str, declared: str, reason: str | None
) -> None:
    os.symlink(target, root / link)
    text = f'path = "{declared}"\n'
    if reason == "ok":
        assert parse(paths, plugins, text).path == declared  # the declared path is what is kept
        return
    problem = one_problem(paths, plugins, text)
    assert problem.key == "path"
    if reason is not None:
        assert reason in problem.message, problem


def test_symlinks_resolved_on_the_host_without_a_sandbox(tmp_path: Path) -> None:
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    (allowed / "to-etc").symlink_to("/etc")
    (allowed / "to-other").symlink_to(other)
    (allowed / "real").mkdir()
    (allowed / "to-real").symlink_to(allowed / "real")
    config = AgentConfig(node="pve1", allowed_roots=(str(allowed),))
    host = Paths.under(None)
    assert not host.sandboxed
    assert check_share_path(str(allowed / "to-real"), config, host) == str(allowed / "to-real")
    for declared, reason in (
        (allowed / "to-etc", "system directory /etc"),
        (allowed / "to-etc" / "new", "system directory /etc"),
        (allowed / "to-other", "outside the allowed roots"),
        (allowed / "to-other" / "new", "outside the allowed roots"),
    ):
        with pytest.raises(FieldError, match=reason):
            check_share_path(str(declared), config, host)


# ---- smb.conf injection -------------------------------------------------------------

INJECTIONS = [
    ("x\n[evil]\npath = /etc", "control characters"),
    ("x\rpath = /etc", "control characters"),
    ("x\u2028path = /etc", "control characters"),
    ("x\u2029y", "control characters"),
    ("x\x00y", "control characters"),
    ("x\x85y", "control characters"),
    ("x\ty", "control characters"),
    ("x\u202ey", "control characters"),
    ("continued \\", "backslash"),
    ("100%", "'%'"),
    ("%(/bin/sh)", "'%'"),
    ("%m", "'%'"),
    (" padded", "white space"),
]


@pytest.mark.parametrize(("payload", "reason"), INJECTIONS, ids=[repr(p)[:24] for p, _ in INJECTIONS])
def test_comment_injection_refused(paths: Paths, plugins: PluginHost, payload: str, reason: str) -> None:
    problem = one_problem(paths, plugins, f'path = "/tank/x"\ncomment = {toml_string(payload)}\n')
    assert (problem.key, problem.line) == ("comment", 2)
    assert reason in problem.message


def test_comment_may_hold_brackets_mid_line(paths: Paths, plugins: PluginHost) -> None:
    # `[` starts a section only at the start of a line; a comment is never rendered there.
    assert parse(paths, plugins, 'path = "/tank/x"\ncomment = "Team [A] share"\n').comment == "Team [A] share"


def test_comment_length_is_limited(paths: Paths, plugins: PluginHost) -> None:
    assert parse(paths, plugins, f'path = "/tank/x"\ncomment = "{"c" * 256}"\n').comment == "c" * 256
    assert "too long" in one_problem(paths, plugins, f'path = "/tank/x"\ncomment = "{"c" * 257}"\n').message


USER_INJECTIONS = [
    *INJECTIONS,
    ("bob]", "forbidden characters"),
    ("[global]", "forbidden characters"),
    ("bob, root", "forbidden characters"),
    ('bob" root', "forbidden characters"),
    ("bob = root", "forbidden characters"),
    ("", "empty"),
]


@pytest.mark.parametrize(("payload", "reason"), USER_INJECTIONS, ids=[repr(p)[:24] for p, _ in USER_INJECTIONS])
def test_valid_users_injection_refused(paths: Paths, plugins: PluginHost, payload: str, reason: str) -> None:
    problem = one_problem(paths, plugins, f'path = "/tank/x"\nvalid_users = ["alice", {toml_string(payload)}]\n')
    assert (problem.key, problem.line) == ("valid_users", 2)
    assert reason in problem.message


def test_valid_users_forms(paths: Paths, plugins: PluginHost) -> None:
    spec = parse(paths, plugins, 'path = "/tank/x"\nvalid_users = ["alice", "@CORP\\\\fin", "CORP\\\\Domain Users"]\n')
    assert spec.valid_users == ("alice", "@CORP\\fin", "CORP\\Domain Users")
    assert parse(paths, plugins, 'path = "/tank/x"\nvalid_users = "alice"\n').valid_users == ("alice",)
    too_many = ", ".join(f'"u{i}"' for i in range(257))
    assert "at most" in one_problem(paths, plugins, f'path = "/tank/x"\nvalid_users = [{too_many}]\n').message


# ---- custom options -----------------------------------------------------------------


def test_options_need_allow_custom_options(paths: Paths, plugins: PluginHost) -> None:
    problem = one_problem(paths, plugins, 'path = "/tank/x"\n[options]\n"hide dot files" = true\n')
    assert problem.key == "options"
    assert "allow_custom_options" in problem.message


def test_options_accepted_when_allowed(paths: Paths, plugins: PluginHost) -> None:
    text = (
        'path = "/tank/x"\n[options]\n"Hide  Dot Files" = true\n"ea support" = false\n'
        '"max connections" = 10\n"veto files" = "/.snapshot/"\n"shadow:format" = "GMT-%Y.%m"\n'
    )
    with pytest.raises(ConfigError, match="'%'"):  # % is a Samba macro even in vfs parameters
        parse(paths, plugins, text, config=CUSTOM)
    spec = parse(paths, plugins, text.replace('"GMT-%Y.%m"', '"GMT"'), config=CUSTOM)
    assert spec.options == (
        ("ea support", "no"), ("hide dot files", "yes"), ("max connections", "10"), ("shadow:format", "GMT"),
        ("veto files", "/.snapshot/"),
    )


# Names Samba accepts as the same parameter: case, and white space anywhere (strwicmp).
FORBIDDEN = [
    *sorted(FORBIDDEN_OPTIONS),
    "INCLUDE", "Root Preexec", "root  preexec", "rootpreexec", "pre exec", "in clude", "magicscript",
    "vfsobjects", "configfile", "forceuser", "validusers", "wide links", "some new command", "add user script",
    "directory", "group", "my exec",
]


@pytest.mark.parametrize("name", FORBIDDEN)
def test_forbidden_options_never_allowed(paths: Paths, plugins: PluginHost, name: str) -> None:
    problem = one_problem(
        paths, plugins, f'path = "/tank/x"\n\n[options]\n"hide dot files" = true\n{toml_string(name)} = "/bin/true"\n',
        config=CUSTOM,
    )
    assert "not allowed" in problem.message
    assert problem.key == f"options.{name}"
    assert problem.line == 5  # the line of the option itself, not of [options]


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("hide files", "/x/\ninclude = /etc/passwd", "control characters"),
        ("hide files", "/x/\u2028y", "control characters"),
        ("hide files", "/x/\\", "backslash"),
        ("hide files", "%u", "'%'"),
        ("[global]", "x", "not a valid smb.conf parameter name"),
        ("a = b", "x", "not a valid smb.conf parameter name"),
        ("hide files\x00", "x", "not a valid smb.conf parameter name"),
    ],
)
def test_option_injection_refused(paths: Paths, plugins: PluginHost, name: str, value: str, reason: str) -> None:
    problem = one_problem(
        paths, plugins, f'path = "/tank/x"\n[options]\n{toml_string(name)} = {toml_string(value)}\n', config=CUSTOM
    )
    assert reason in problem.message
    assert problem.key is not None and problem.key.startswith("options.")
    assert "\n" not in str(problem)


def test_option_values_must_be_scalars_and_few(paths: Paths, plugins: PluginHost) -> None:
    problem = one_problem(paths, plugins, 'path = "/tank/x"\n[options]\n"hide files" = ["a"]\n', config=CUSTOM)
    assert "string, number or boolean" in problem.message
    many = "".join(f'"param x{i}" = "x"\n' for i in range(65))
    assert "at most" in one_problem(paths, plugins, f'path = "/tank/x"\n[options]\n{many}', config=CUSTOM).message
    assert "must be a table" in one_problem(paths, plugins, 'path = "/tank/x"\noptions = 5\n', config=CUSTOM).message


# ---- node placement -----------------------------------------------------------------


def test_node_placement(paths: Paths, plugins: PluginHost) -> None:
    assert parse(paths, plugins, 'path = "/tank/x"\nnode = "pve2"\n').node == "pve2"
    problem = one_problem(paths, plugins, 'path = "/tank/x"\nnode = "pve1\\n"\n')
    assert (problem.key, problem.line) == ("node", 2)


# ---- fuzz ---------------------------------------------------------------------------

KEYS = ["name", "path", "mode", "comment", "read_only", "browseable", "valid_users", "node", "options", "colour"]
NASTY = ["\n", "\r", "\x00", "\x1b", "\u2028", "\u202e", "\x85", "%", "[", "]", "\\", '"', "=", ";", "..", "/", " "]


def _random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 12)):
        pick = rng.random()
        if pick < 0.35:
            parts.append(rng.choice(NASTY))
        elif pick < 0.5:
            parts.append(chr(rng.randrange(0x20, 0x3000)))
        else:
            parts.append(rng.choice(["tank", "srv", "smb", "etc", "x", "finance", "global", "ipc$", "a" * 90]))
    return "".join(parts)


def _random_value(rng: random.Random, key: str, depth: int = 0) -> str:
    pick = rng.random()
    if key == "path" and pick < 0.6:
        return toml_string(rng.choice(["/tank/", "/srv/", "/", "", "/tankfoo/", "/etc/"]) + _random_text(rng))
    if pick < 0.6:
        return toml_string(_random_text(rng))
    if pick < 0.7:
        return rng.choice(["true", "false", "0", "-1", "1e999", "inf", "nan", "1979-05-27"])
    if pick < 0.85 and depth < 2:
        return "[" + ", ".join(_random_value(rng, key, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    if depth < 2:
        items = ", ".join(
            f"{toml_string(_random_text(rng) or 'k')} = {_random_value(rng, key, depth + 1)}"
            for _ in range(rng.randint(0, 3))
        )
        return "{" + items + "}"
    return "1"


def _strings_in(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings_in(k), *_strings_in(v))]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _strings_in(item)]
    return []


def _assert_clean(spec: ShareSpec) -> None:
    for text in _strings_in(spec.to_dict()):
        bad = [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
        assert not bad, (spec, bad)
    assert spec.path.startswith(("/tank", "/srv")) and ".." not in spec.path.split("/")
    assert not set(spec.name) & set("[]%\\/") and 1 <= len(spec.name) <= 80
    assert spec.name.casefold() not in {"global", "homes", "printers", "ipc$"}
    assert "%" not in spec.comment and not spec.comment.endswith("\\")


def test_fuzz_share_parser(paths: Paths, plugins: PluginHost, root: Path) -> None:
    (root / "tank/abs-etc").symlink_to("/etc")
    rng = random.Random(424242)
    accepted = refused = 0
    for round_ in range(2500):
        lines = [f"{key} = {_random_value(rng, key)}" for key in rng.sample(KEYS, rng.randint(0, 5))]
        if rng.random() < 0.5:
            lines.insert(0, f"path = {toml_string('/tank/' + rng.choice(['a', 'b', 'abs-etc/x']))}")
        raw = "\n".join(lines).encode()
        if round_ % 5 == 0 and raw:
            position = rng.randrange(len(raw))
            raw = raw[:position] + bytes([rng.randrange(256)]) + raw[position + 1:]
        file = rng.choice(["finance.toml", "global.toml", "a[b].toml", "ok.toml"])
        config = CUSTOM if round_ % 2 else CONFIG
        try:
            doc = parse_toml(paths.host("/etc/smbgw/shares.d") / file, raw)
            spec = parse_share(doc, config, paths, plugins)
        except (InputFileError, ConfigError):
            refused += 1
            continue
        accepted += 1
        _assert_clean(spec)
    assert accepted > 50, accepted
    assert refused > 1000, refused
