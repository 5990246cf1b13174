"""Share files: the typed model and its validation.

Validation collects every problem of a file (not only the first), names file, key and
line, and refuses any value that could change smb.conf's structure or point a share at
a system directory. The core owns the top-level keys; tables belong to plugins.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from smbgw_agent.model import fields
from smbgw_agent.model.config import AgentConfig
from smbgw_agent.model.errors import ConfigError, FieldError, Problem, UnsafeValueError
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.pathsafety import PathMemo, owner_message, writable_ancestors
from smbgw_agent.model.smbconf import AdminShares
from smbgw_agent.model.smbvalues import check_parameter_name, check_principal, check_share_name, check_text
from smbgw_agent.model.tomlsource import TomlDocument, display_key

# Paths that must never be shared, nor anything below them ("/" only itself).
SYSTEM_DIRECTORIES = (
    "/etc", "/usr", "/proc", "/sys", "/dev", "/boot", "/root", "/run", "/bin", "/sbin",
    "/lib", "/lib32", "/lib64", "/libx32", "/var/lib/smbgw", "/var/lib/samba",
    "/var/lib/pve-cluster", "/var/log", "/var/cache", "/var/spool", "/var/run",
)
# Parameters that would let a share file run programs or read files outside its share.
FORBIDDEN_OPTIONS = frozenset({
    "include", "config file", "copy", "preexec", "exec", "root preexec", "root exec",
    "postexec", "root postexec", "magic script", "magic output", "print command",
    "lpq command", "lprm command", "lppause command", "lpresume command",
    "queuepause command", "queueresume command", "path", "vfs objects", "vfs object",
    "dfree command", "get quota command", "set quota command", "message command",
    "add share command", "change share command", "delete share command",
    "msdfs proxy", "msdfs root", "wide links", "follow symlinks", "guest ok", "public",
    "guest only", "only guest", "force user", "force group", "admin users", "valid users",
    "invalid users", "read only", "writeable", "writable", "write ok", "browseable",
    "browsable", "comment", "root preexec close", "preexec close",
    "directory", "group",  # Samba synonyms of "path" and "force group"
})
FORBIDDEN_OPTION_SUFFIXES = (" command", " script", " exec")
# Samba ignores white space in parameter names ("rootpreexec" is "root preexec"), so
# the forbidden names are compared with all spaces removed.
_FORBIDDEN_COMPACT = frozenset(option.replace(" ", "") for option in FORBIDDEN_OPTIONS)
_FORBIDDEN_COMPACT_SUFFIXES = tuple(suffix.strip() for suffix in FORBIDDEN_OPTION_SUFFIXES)
MAX_OPTIONS = 64
MAX_PROBLEMS = 50  # per file: a file of 100k unknown keys must not flood status.json
MAX_VALID_USERS = 256
CORE_KEYS = (
    "name", "path", "mode", "comment", "read_only", "browseable", "valid_users", "node",
    "options",
)


@dataclass(frozen=True)
class ShareSpec:
    """A validated share declaration; the unit the reconciler plans and applies."""

    name: str
    file: str
    path: str
    mode: str = "native"
    comment: str = ""
    read_only: bool = False
    browseable: bool = True
    valid_users: tuple[str, ...] = ()
    node: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    sections: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Samba share names are case-insensitive; so are ours."""
        return self.name.casefold()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "file": self.file, "path": self.path, "mode": self.mode,
            "comment": self.comment, "read_only": self.read_only, "browseable": self.browseable,
            "valid_users": list(self.valid_users), "node": self.node,
            "options": [list(pair) for pair in self.options], "sections": dict(self.sections),
        }

    def to_json(self) -> str:
        """Canonical JSON (the state database, the fragment's declaration line); cached,
        as a new share is written out three times in its first pass."""
        return self._json

    @cached_property
    def _json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShareSpec:
        return cls(
            name=data["name"], file=data["file"], path=data["path"], mode=data["mode"],
            comment=data["comment"], read_only=data["read_only"], browseable=data["browseable"],
            valid_users=tuple(data["valid_users"]), node=data["node"],
            options=tuple((str(k), str(v)) for k, v in data["options"]),
            sections=dict(data["sections"]),
        )

    @cached_property
    def _digest(self) -> str:
        data = self.to_dict()
        data.pop("file")
        encoded = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(encoded).hexdigest()[:16]

    def digest(self) -> str:
        """Identity of the declaration, independent of the file it came from (cached)."""
        return self._digest



class ShareTableOwners(Protocol):
    """Who owns the tables and modes of share files (the plugin host, or a test's
    stand-in): parsing hands them what the core does not know itself."""

    def share_sections(self) -> Collection[str]: ...

    def modes(self) -> Sequence[str]: ...

    def validate_share_section(self, section: str, data: Mapping[str, Any], config: AgentConfig) -> Any: ...

    def validate_share(self, share: ShareSpec, config: AgentConfig) -> list[str]: ...

def check_share_path(
    value: object, config: AgentConfig, paths: Paths, memo: PathMemo | None = None
) -> str:
    """An absolute share path under the allowed roots, with symlinks resolved (parents
    through the scan's `memo` when there is one)."""
    if not isinstance(value, str):
        raise FieldError(f"must be a string, not {type(value).__name__}")
    check_text(value, "path", 4096)
    if not value.startswith("/"):
        raise FieldError(f"{value!r} is relative; share paths must be absolute")
    if ".." in value.split("/"):
        raise UnsafeValueError(f"{value!r} contains '..'")
    declared = posixpath.normpath(value)
    declared = "/" + declared.lstrip("/")
    _check_location(declared, config)
    host = paths.host(declared)
    # Resolve even when the directory does not exist yet: a symlinked parent
    # (/srv/smb/link -> /etc) must not let the share, or its creation, land elsewhere.
    real = memo.realpath(str(host)) if memo is not None else os.path.realpath(host)
    check_resolved(value, declared, real, config, paths)
    if os.path.lexists(host) and not os.path.isdir(real):
        raise FieldError(f"{value!r} exists but is not a directory")
    return declared


def check_resolved(value: str, declared: str, real: str, config: AgentConfig, paths: Paths) -> None:
    """Where a declared share path really leads (`real`, a host path with every link
    resolved) must itself be an allowed place. Shared by validation and by the code that
    creates share directories through a pinned parent (see fileio.make_share_directory)."""
    root = str(paths.root)
    if paths.sandboxed and not (real == root or real.startswith(root + "/")):
        raise UnsafeValueError(f"{value!r} resolves outside the sandbox root (to {real})")
    # `real` is a realpath: absolute and normal, so below the root is a plain prefix.
    resolved = (real[len(root):] or "/") if paths.sandboxed else real
    if resolved != declared:
        try:
            _check_location(resolved, config, _resolved_roots(config, paths))
        except FieldError as exc:
            raise UnsafeValueError(f"{value!r} is a symbolic link to {resolved}: {exc}") from exc


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _resolved_roots(config: AgentConfig, paths: Paths) -> tuple[str, ...]:
    """The allowed roots with their symbolic links resolved (`/tank -> /mnt/tank`), so a
    resolved share path is compared with resolved roots."""
    resolved = []
    root = str(paths.root)
    for allowed in config.allowed_roots:
        real = os.path.realpath(paths.host(allowed))
        if paths.sandboxed:
            if not (real == root or real.startswith(root + "/")):
                continue
            real = posixpath.normpath("/" + os.path.relpath(real, root))
        resolved.append(real)
    return tuple(resolved)


def _check_location(path: str, config: AgentConfig, extra_roots: tuple[str, ...] = ()) -> None:
    if path == "/":
        raise UnsafeValueError("'/' cannot be shared")
    for system in SYSTEM_DIRECTORIES:
        if _within(path, system):
            raise UnsafeValueError(f"{path!r} is inside the system directory {system}")
    roots = (*config.allowed_roots, *extra_roots)
    if config.allowed_roots and not any(_within(path, root) for root in roots):
        raise UnsafeValueError(
            f"{path!r} is outside the allowed roots ({', '.join(config.allowed_roots)})"
        )


def _valid_users(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise FieldError(f"must be a list of strings, not {type(value).__name__}")
    if len(value) > MAX_VALID_USERS:
        raise FieldError(f"has {len(value)} entries; at most {MAX_VALID_USERS}")
    users = []
    for item in value:
        if not isinstance(item, str):
            raise FieldError(f"entries must be strings, not {type(item).__name__}")
        users.append(check_principal(item))
    return tuple(users)


def forbidden_option(name: str) -> bool:
    """A parameter a share file may not set in `[options]` (see FORBIDDEN_OPTIONS)."""
    compact = name.lower().replace(" ", "")
    return compact in _FORBIDDEN_COMPACT or compact.endswith(_FORBIDDEN_COMPACT_SUFFIXES)


def _options(value: object, config: AgentConfig) -> tuple[tuple[str, str], ...]:
    if not config.allow_custom_options:
        raise FieldError("raw smb.conf options need allow_custom_options = true in agent.toml")
    if not isinstance(value, dict):
        raise FieldError("must be a table of smb.conf parameters")
    if len(value) > MAX_OPTIONS:
        raise FieldError(f"has {len(value)} parameters; at most {MAX_OPTIONS}")
    result: dict[str, str] = {}
    for raw_name, raw_value in value.items():
        try:
            name = check_parameter_name(raw_name)
        except FieldError as exc:
            raise FieldError(str(exc), key=raw_name) from exc
        if forbidden_option(name):
            raise FieldError(f"{name!r} is not allowed as a custom option", key=raw_name)
        if isinstance(raw_value, bool):
            text = "yes" if raw_value else "no"
        elif isinstance(raw_value, (int, float)):
            text = str(raw_value)
        elif isinstance(raw_value, str):
            text = raw_value
        else:
            raise FieldError("must be a string, number or boolean", key=raw_name)
        try:
            result[name] = check_text(text, f"value of {name!r}")
        except FieldError as exc:
            raise FieldError(str(exc), key=raw_name) from exc
    return tuple(sorted(result.items()))


def admin_name_message(name: str, admin: AdminShares) -> str | None:
    """Why `name` may not be declared, if the administrator's own smb.conf has it."""
    section = admin.get(name)
    if section is None or section.handed_over:
        return None
    return (
        f"share name {name!r} is already defined by hand as [{section.name}] in {section.where()}; "
        "Samba would merge the two sections, so smbgw-agent never declares a share the "
        "administrator wrote (rename this share, or remove that section first)"
    )


def parse_share(
    doc: TomlDocument, config: AgentConfig, paths: Paths, plugins: ShareTableOwners,
    admin: AdminShares | None = None, warnings: list[Problem] | None = None,
    ancestors: PathMemo | None = None,
) -> ShareSpec:
    """Turn a parsed share file into a ShareSpec, or raise ConfigError with every problem.

    `admin` holds the shares of the administrator's own smb.conf (a name clash is a
    security problem); `warnings` collects what is allowed but risky (see pathsafety);
    `ancestors` memoises what one scan learned about parent directories.
    """
    data = doc.data
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    owned = plugins.share_sections()
    stem = doc.path.name[: -len(".toml")] if doc.path.name.endswith(".toml") else doc.path.name

    def attempt(key: str, parse: Any) -> None:
        if key not in data:
            return
        try:
            values[key] = parse(data[key])
        except FieldError as exc:
            nested = f"{key}.{display_key(exc.key)}" if exc.key else key
            line = (doc.line_of(key, exc.key) if exc.key else None) or doc.line_of("", key)
            problems.append(Problem(doc.path, str(exc), nested, line, isinstance(exc, UnsafeValueError)))

    attempt("name", lambda v: check_share_name(fields.string(v, "share name", 80)))
    if "name" not in data:
        try:
            values["name"] = check_share_name(stem)
        except FieldError as exc:
            problems.append(Problem(doc.path, f"file name gives the share name: {exc}"))
    if "path" not in data:
        problems.append(Problem(doc.path, "required key is missing", "path"))
    attempt("path", lambda v: check_share_path(v, config, paths, ancestors))
    if "path" in values:
        findings = writable_ancestors(values["path"], paths, ancestors)
        if findings:
            problem = Problem(
                doc.path, owner_message(values["path"], findings), "path", doc.line_of("", "path"),
                security=config.strict_path_owners,
            )
            if config.strict_path_owners:
                problems.append(problem)
            elif warnings is not None:
                warnings.append(problem)
    if admin is not None and "name" in values:
        clash = admin_name_message(values["name"], admin)
        if clash:
            problems.append(Problem(doc.path, clash, "name", doc.line_of("", "name"), security=True))
    modes = plugins.modes()

    def mode(v: object) -> str:
        text = fields.string(v, "mode", 32)
        if text not in modes:
            available = ", ".join(modes) or "none"
            raise FieldError(f"{text!r} is not provided by any enabled plugin (available: {available})")
        return text

    attempt("mode", mode)
    attempt("comment", lambda v: fields.string(v, "comment", 256))
    attempt("read_only", fields.boolean)
    attempt("browseable", fields.boolean)
    attempt("valid_users", _valid_users)
    attempt("node", lambda v: fields.string(v, "node", 63))
    attempt("options", lambda v: _options(v, config))
    for key, value in data.items():
        if key in CORE_KEYS:
            continue
        if key in owned and isinstance(value, dict):
            try:
                sections[key] = plugins.validate_share_section(key, value, config)
            except FieldError as exc:
                problems.extend(fields.table_problems(doc, key, exc))
        elif key in owned:
            problems.append(doc.problem("must be a table", key=key))
        elif isinstance(value, dict):
            problems.append(doc.problem("no enabled plugin handles this table", key=key))
        else:
            known = ", ".join(CORE_KEYS)
            problems.append(doc.problem(f"unknown key (known: {known})", key=key))
    if "mode" not in values and "mode" not in data:
        if "native" in modes:
            values["mode"] = "native"
        else:
            problems.append(Problem(doc.path, "no mode given and no plugin provides 'native'", "mode"))
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], Problem(doc.path, f"... and {more} more problems")]
    if problems:
        raise ConfigError(problems)
    spec = ShareSpec(file=doc.path.name, sections=sections, **values)
    cross = plugins.validate_share(spec, config)
    if cross:
        raise ConfigError([Problem(doc.path, message) for message in cross])
    return spec
