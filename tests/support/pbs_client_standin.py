#!/usr/bin/env python3
"""TEST STAND-IN for `proxmox-backup-client`: never shipped, never installed on a node.

The real client cannot be installed here (it needs a Proxmox Backup Server to talk to),
so the tests put this script on PATH as `proxmox-backup-client`. It is deliberately not a
yes-man: it accepts only the command lines the real client accepts for the subcommands
the agent uses, and refuses everything else the way the real one does (message on
stderr, exit 255), so a wrong option name in the agent fails the tests.

Grammar and behaviour follow proxmox/proxmox-backup 3.2.4 (commit 4940514b) and 4.2.3:
docs/backup-client.rst; proxmox-backup-client/src/main.rs (create_backup, restore, prune,
their #[api] schemas and arg_param lists); proxmox-backup-client/src/snapshot.rs
(`snapshot list [group]`); pbs-client/src/tools/mod.rs (PBS_PASSWORD, _FD, _FILE, _CMD:
the first line is the password; PBS_FINGERPRINT; PBS_REPOSITORY);
pbs-client/src/backup_specification.rs (`<label>.pxar:<path>`); pbs-api-types
(BACKUP_ID_RE, BACKUP_NS_RE, BACKUP_TIME_RE, BACKUP_REPO_URL_REGEX, SnapshotListItem,
PruneListItem, keep-* minimum 1); pbs-datastore/src/prune.rs (compute_prune_info, copied
below in Python); src/api2/backup/mod.rs (owner check, "backup timestamp is older than
last backup.", "backup directory already exists."). The option parsing imitates
proxmox-router's CLI (its source, in the proxmox/proxmox repository, was not available
here, so this part is from the client's documented examples and the schemas):
`--name value`, `--name=value`, `-name`, a boolean option without a value is
true, `--` ends the options, an option the schema lacks is refused with "schema does not
allow additional properties". `restore --pattern` exists since client 3.3.0; set
SMBGW_TEST_PBS_CLIENT_VERSION=3.2.4 to get an older client that refuses it.

Subcommands: backup, snapshot list, restore, prune (others are refused as unknown).

The server is a directory, SMBGW_TEST_PBS_STORE, holding one directory per datastore in
the layout of a real datastore: `<store>/<datastore>/[ns/a/ns/b/]host/<id>/<RFC 3339
time>/` with the archive (here a plain directory tree `share.pxar.didx/` with the files'
contents and modes instead of chunks), `index.json.blob` (the manifest; its absence means
unfinished) and the group's `owner` file. `<store>/.password` (first line) is the
password the "server" accepts; `<store>/.fingerprint`, if present, the certificate
fingerprint the client must be given in PBS_FINGERPRINT (the real client only needs it
for a certificate the system does not trust).

Checks stricter than the real client, because they are the agent's rules: PBS_PASSWORD
(the password itself in the environment) and PBS_PASSWORD_CMD are refused, and so is the
password appearing anywhere in argv.

Faults, SMBGW_TEST_PBS_FAULT=KIND or KIND@SUBCOMMAND (e.g. `garbage@snapshot`):
hang (sleep forever), fail (exit 1 with an error), garbage (junk on stdout, exit 0),
unreachable (the real client's connection-refused error, exit 255).
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

EXIT_ERROR = 255  # proxmox-router's run_cli_command: eprintln!("Error: {}", err); exit(-1)
DEFAULT_VERSION = "3.4.1"

SAFE_ID = r"[A-Za-z0-9_][A-Za-z0-9._\-]*"
BACKUP_ID_RE = re.compile(rf"^{SAFE_ID}$")
BACKUP_NS_RE = re.compile(rf"^(?:(?:{SAFE_ID}/){{0,7}}{SAFE_ID})?$")
BACKUP_TIME_RE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"
GROUP_RE = re.compile(rf"^(host|vm|ct)/({SAFE_ID})$")
GROUP_OR_SNAPSHOT_RE = re.compile(rf"^(host|vm|ct)/({SAFE_ID})(?:/({BACKUP_TIME_RE}))?$")
BACKUPSPEC_RE = re.compile(r"^([a-zA-Z0-9_-]+\.(pxar|img|conf|log)):(.+)$")
USER = r"[^\s:/\x00-\x1f]+"
REPO_RE = re.compile(
    rf"^(?:(?:({USER}@{SAFE_ID}(?:!{SAFE_ID})?)@)?"
    rf"((?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"|\[[0-9A-Fa-f:.]+\]|[0-9]{{1,3}}(?:\.[0-9]{{1,3}}){{3}}):)?(?:([0-9]{{1,5}}):)?({SAFE_ID})$"
)
FINGERPRINT_RE = re.compile(r"^(?:[0-9a-fA-F][0-9a-fA-F])(?::[0-9a-fA-F][0-9a-fA-F]){31}$")
BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
            "off": False}
MANIFEST = "index.json.blob"
KEEP_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


class ClientError(Exception):
    """What the real client prints as `Error: ...` before exiting 255."""


# ---- the option grammar ------------------------------------------------------------------

Check = Callable[[str], str | None]  # a value -> a complaint, or None


def string_of(regex: re.Pattern[str], max_length: int = 256) -> Check:
    def check(value: str) -> str | None:
        if len(value) > max_length:
            return f"value must be at most {max_length} characters"
        return None if regex.fullmatch(value) else "value does not match the regex pattern"
    return check


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    def check(value: str) -> str | None:
        if not re.fullmatch(r"-?[0-9]+", value):
            return f"value '{value}' is not an integer"
        number = int(value)
        if minimum is not None and number < minimum:
            return f"value must have a minimum value of {minimum} (got {number})"
        if maximum is not None and number > maximum:
            return f"value must have a maximum value of {maximum} (got {number})"
        return None
    return check


def enum(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else "value is not defined in the enumeration."
    return check


def anything(value: str) -> str | None:
    return None


@dataclass(frozen=True)
class Option:
    check: Check
    boolean: bool = False
    array: bool = False


BOOL = Option(anything, boolean=True)
REPOSITORY = Option(string_of(REPO_RE))
NAMESPACE = Option(string_of(BACKUP_NS_RE))
OUTPUT_FORMAT = Option(enum("text", "json", "json-pretty"))


@dataclass(frozen=True)
class Command:
    positional: tuple[str, ...]
    options: dict[str, Option]
    optional_positional: tuple[str, ...] = ()
    array_positional: bool = False  # the last positional takes all remaining arguments


COMMANDS: dict[tuple[str, ...], Command] = {
    ("backup",): Command(("backupspec",), {
        "repository": REPOSITORY, "ns": NAMESPACE,
        "backup-type": Option(enum("vm", "ct", "host")),
        "backup-id": Option(string_of(BACKUP_ID_RE)),
        "backup-time": Option(integer(minimum=1)),
        "skip-lost-and-found": BOOL, "all-file-systems": BOOL, "dry-run": BOOL,
        "exclude": Option(anything, array=True),
    }, array_positional=True),
    ("snapshot", "list"): Command((), {
        "repository": REPOSITORY, "ns": NAMESPACE, "output-format": OUTPUT_FORMAT,
    }, optional_positional=("group",)),
    ("restore",): Command(("snapshot", "archive-name", "target"), {
        "repository": REPOSITORY, "ns": NAMESPACE,
        "pattern": Option(anything, array=True),
        "allow-existing-dirs": BOOL, "overwrite": BOOL, "overwrite-files": BOOL,
        "ignore-ownership": BOOL, "ignore-permissions": BOOL, "ignore-acls": BOOL, "ignore-xattrs": BOOL,
    }),
    ("prune",): Command(("group",), {
        "repository": REPOSITORY, "ns": NAMESPACE, "output-format": OUTPUT_FORMAT,
        "dry-run": BOOL, "quiet": BOOL, "max-depth": Option(integer(0, 7)),
        **{f"keep-{rule}": Option(integer(minimum=1)) for rule in KEEP_RULES},
    }),
}
# Subcommands the real client has but this stand-in does not implement.
KNOWN_ELSEWHERE = {"benchmark", "catalog", "change-owner", "garbage-collect", "key", "list", "login", "logout",
                   "map", "mount", "namespace", "status", "task", "unmap", "version", "files", "forget"}


@dataclass
class Parsed:
    positional: dict[str, list[str]] = field(default_factory=dict)
    options: dict[str, list[str]] = field(default_factory=dict)

    def one(self, name: str) -> str | None:
        values = self.options.get(name)
        return values[0] if values else None

    def flag(self, name: str) -> bool:
        value = self.one(name)
        return value is not None and BOOLEANS[value.lower()]


def is_option(token: str) -> bool:
    return len(token) >= 2 and token.startswith("-")


def parse(command: Command, tokens: Sequence[str], version: tuple[int, ...]) -> Parsed:
    errors: list[str] = []
    parsed = Parsed()
    loose: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "--":
            loose.extend(tokens[index + 1:])
            break
        if not is_option(token):
            loose.append(token)
            index += 1
            continue
        body = token[2:] if token.startswith("--") else token[1:]
        name, equals, value = body.partition("=")
        option = command.options.get(name)
        if not equals:
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            takes_next = following is not None and not is_option(following)
            if option is not None and option.boolean:
                if takes_next and following is not None and following.lower() in BOOLEANS:
                    value = following
                    index += 1
                else:
                    value = "true"
            elif takes_next and following is not None:
                value = following
                index += 1
            else:
                errors.append(f"parameter '{name}': missing parameter value.")
                index += 1
                continue
        parsed.options.setdefault(name, []).append(value)
        index += 1
    for name, values in parsed.options.items():
        option = command.options.get(name)
        if name == "pattern" and version < (3, 3):
            option = None  # added in 3.3.0 (fix #2996)
        if option is None:
            errors.append(f"parameter '{name}': schema does not allow additional properties.")
            continue
        if len(values) > 1 and not option.array:
            errors.append(f"parameter '{name}': expected a single value, got {len(values)}.")
        for value in values:
            if option.boolean and value.lower() not in BOOLEANS:
                errors.append(f"parameter '{name}': Unable to parse boolean option.")
                continue
            complaint = option.check(value)
            if complaint:
                errors.append(f"parameter '{name}': {complaint}")
    names = list(command.positional)
    for name in names:
        if not loose:
            errors.append(f"parameter '{name}': parameter is missing and it is not optional.")
            break
        if name == names[-1] and command.array_positional:
            parsed.positional[name], loose = loose, []
        else:
            parsed.positional[name] = [loose.pop(0)]
    for name in command.optional_positional:
        if loose:
            parsed.positional[name] = [loose.pop(0)]
    if loose:
        errors.append(f"got additional arguments: {loose}")
    if errors:
        raise ClientError("parameter verification errors\n\n" + "\n".join(errors) + "\n")
    return parsed


# ---- the "server" --------------------------------------------------------------------------


def read_secret(name: str) -> str | None:
    """pbs-client's get_secret_from_env, minus the variants the agent must not use."""
    if name in os.environ:
        raise ClientError(f"{name} is set: the password itself is in the environment (refused by the stand-in: "
                          "the agent passes a file)")
    if f"{name}_CMD" in os.environ:
        raise ClientError(f"{name}_CMD is set (refused by the stand-in: the agent passes a file)")
    fd_value = os.environ.get(f"{name}_FD")
    if fd_value is not None:
        try:
            with os.fdopen(int(fd_value), "r", closefd=False) as handle:
                return handle.readline().rstrip("\r\n")
        except (ValueError, OSError) as exc:
            raise ClientError(f"unable to parse file descriptor in ENV({name}_FD): {exc}") from None
    file_value = os.environ.get(f"{name}_FILE")
    if file_value is not None:
        try:
            with open(file_value, encoding="utf-8") as handle:
                return handle.readline().rstrip("\r\n")
        except OSError as exc:
            raise ClientError(f"unable to open file in ENV({name}_FILE): {exc.strerror} (os error {exc.errno})") \
                from None
    return None


@dataclass(frozen=True)
class Server:
    datastore: Path
    auth_id: str
    namespace: str | None


def connect(parsed: Parsed, argv: Sequence[str]) -> Server:
    repository = parsed.one("repository") or os.environ.get("PBS_REPOSITORY")
    if not repository:
        raise ClientError("unable to get (default) repository")
    match = REPO_RE.fullmatch(repository)
    if match is None:
        raise ClientError(f"unable to parse repository url '{repository}'")
    auth_id, _host, _port, store = match.groups()
    fingerprint = os.environ.get("PBS_FINGERPRINT")
    if fingerprint is not None and not FINGERPRINT_RE.fullmatch(fingerprint):
        raise ClientError(f"PBS_FINGERPRINT: '{fingerprint}' is not a SHA-256 certificate fingerprint "
                          "(32 hex bytes separated by ':')")
    root = Path(os.environ.get("SMBGW_TEST_PBS_STORE", ""))
    if not os.environ.get("SMBGW_TEST_PBS_STORE") or not root.is_dir():
        raise ClientError("error trying to connect: tcp connect error: Connection refused (os error 111) "
                          "(stand-in: SMBGW_TEST_PBS_STORE is not a directory)")
    expected_fp = root / ".fingerprint"
    if expected_fp.is_file():
        expected = expected_fp.read_text().strip().lower()
        if fingerprint is None or fingerprint.lower() != expected:
            if fingerprint is not None:
                print("WARNING: certificate fingerprint does not match expected fingerprint!", file=sys.stderr)
                print(f"expected:    {fingerprint}", file=sys.stderr)
            print(f"fingerprint: {expected}", file=sys.stderr)
            raise ClientError("error trying to connect: the handshake failed: certificate validation failed - "
                              "Certificate fingerprint was not confirmed.")
    password = read_secret("PBS_PASSWORD")
    if password is None:
        raise ClientError("no password input mechanism available")
    if password and any(password in token for token in argv):
        raise ClientError("the password appears on the command line (refused by the stand-in)")
    accepted = root / ".password"
    if accepted.is_file() and password != accepted.read_text().split("\n", 1)[0]:
        raise ClientError("authentication failed - invalid credentials")
    datastore = root / store
    if not datastore.is_dir():
        raise ClientError(f"datastore '{store}' does not exist")
    return Server(datastore, auth_id or "root@pam", parsed.one("ns") or None)


def namespace_dir(server: Server) -> Path:
    where = server.datastore
    for part in (server.namespace or "").split("/"):
        if part:
            where = where / "ns" / part
    if not where.is_dir():
        raise ClientError(f"namespace '{server.namespace}' not found")
    return where


def rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _timegm(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


@dataclass(frozen=True)
class Snapshot:
    path: Path
    time: int
    finished: bool
    protected: bool


def snapshots_of(group: Path) -> list[Snapshot]:
    found = []
    if group.is_dir():
        for entry in group.iterdir():
            if entry.is_dir() and re.fullmatch(BACKUP_TIME_RE, entry.name):
                found.append(Snapshot(entry, _timegm(entry.name), (entry / MANIFEST).is_file(),
                                      (entry / ".protected").exists()))
    return found


def tree_size(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())


# ---- subcommands -----------------------------------------------------------------------------


def cmd_backup(parsed: Parsed, argv: Sequence[str]) -> int:
    specs = []
    for spec in parsed.positional["backupspec"]:
        match = BACKUPSPEC_RE.fullmatch(spec)
        if match is None:
            raise ClientError(f"unable to parse backup source specification '{spec}'")
        if match.group(2) != "pxar":
            raise ClientError(f"stand-in: only .pxar archives are implemented, not '{spec}'")
        specs.append((match.group(1), match.group(3)))
    if len({label for label, _ in specs}) != len(specs):
        raise ClientError("got target twice")
    server = connect(parsed, argv)
    for _label, source in specs:
        try:
            is_dir = os.stat(source).st_mode & 0o170000 == 0o040000
        except OSError as exc:
            raise ClientError(f"unable to access '{source}' - {exc.strerror} (os error {exc.errno})") from None
        if not is_dir:
            raise ClientError("got unexpected file type (expected directory)")
    backup_type = parsed.one("backup-type") or "host"
    backup_id = parsed.one("backup-id") or socket.gethostname()
    backup_time = int(parsed.one("backup-time") or time.time())
    group = namespace_dir(server) / backup_type / backup_id
    owner_file = group / "owner"
    if owner_file.is_file() and owner_file.read_text().strip() != server.auth_id:
        raise ClientError(f"backup owner check failed ({server.auth_id} != {owner_file.read_text().strip()})")
    finished = [snap for snap in snapshots_of(group) if snap.finished]
    if finished and backup_time < max(snap.time for snap in finished):
        raise ClientError("backup timestamp is older than last backup.")
    snapshot_dir = group / rfc3339(backup_time)
    if snapshot_dir.exists():
        raise ClientError("backup directory already exists.")
    shown = f"{'[' + server.namespace + ']:' if server.namespace else ''}{backup_type}/{backup_id}/" \
            f"{rfc3339(backup_time)}"
    print(f"Starting backup: {shown}", file=sys.stderr)
    print(f"Client name: {socket.gethostname()}", file=sys.stderr)
    if parsed.flag("dry-run"):
        print("dry-run: no upload happened", file=sys.stderr)
        return 0
    group.mkdir(parents=True, exist_ok=True)
    if not owner_file.exists():
        owner_file.write_text(server.auth_id + "\n")
    snapshot_dir.mkdir()
    files = []
    for label, source in specs:
        print(f"Upload directory '{source}' to '{parsed.one('repository')}' as {label}.didx", file=sys.stderr)
        archive = snapshot_dir / f"{label}.didx"
        shutil.copytree(source, archive, symlinks=True)
        shutil.copystat(source, archive)
        files.append({"filename": f"{label}.didx", "crypt-mode": "none", "size": tree_size(archive)})
    (snapshot_dir / "catalog.pcat1.didx").write_bytes(b"")
    files.append({"filename": "catalog.pcat1.didx", "crypt-mode": "none", "size": 0})
    manifest = {"backup-type": backup_type, "backup-id": backup_id, "backup-time": backup_time, "files": files,
                "signature": None, "unprotected": {}}
    partial = snapshot_dir / (MANIFEST + ".tmp")
    partial.write_text(json.dumps(manifest))
    partial.rename(snapshot_dir / MANIFEST)
    print(f"Duration: 0.01s\nEnd Time: {time.ctime()}", file=sys.stderr)
    return 0


def list_item(snap: Snapshot, backup_type: str, backup_id: str, owner: str) -> dict[str, object]:
    files = []
    for entry in sorted(snap.path.iterdir()):
        if entry.name.startswith(".") or entry.name.endswith(".tmp"):
            continue
        size = tree_size(entry) if entry.is_dir() else entry.stat().st_size
        files.append({"filename": entry.name, "crypt-mode": "none", "size": size})
    item: dict[str, object] = {"backup-type": backup_type, "backup-id": backup_id, "backup-time": snap.time,
                               "files": files, "owner": owner, "protected": snap.protected}
    if snap.finished:
        item["size"] = sum(int(str(f["size"])) for f in files)
    return item


def cmd_snapshot_list(parsed: Parsed, argv: Sequence[str]) -> int:
    given = parsed.positional.get("group")
    group_arg = given[0] if given else None
    server = connect(parsed, argv)
    where = namespace_dir(server)
    groups = []
    if group_arg is not None:
        match = GROUP_RE.fullmatch(group_arg)
        if match is None:
            raise ClientError(f"unable to parse backup group path '{group_arg}'")
        groups.append((match.group(1), match.group(2)))
    else:
        for kind in ("host", "vm", "ct"):
            if (where / kind).is_dir():
                groups.extend((kind, entry.name) for entry in sorted((where / kind).iterdir()))
    items = []
    for kind, ident in groups:
        group = where / kind / ident
        owner_file = group / "owner"
        if not owner_file.is_file():
            continue  # the server skips a group whose owner it cannot read (or that does not exist)
        owner = owner_file.read_text().strip()
        # Newest first, on purpose: the real API lists in directory order, so callers must sort.
        for snap in sorted(snapshots_of(group), key=lambda s: s.time, reverse=True):
            items.append(list_item(snap, kind, ident, owner))
    output(items, parsed.one("output-format") or "text",
           lambda item: f"{item['backup-type']}/{item['backup-id']}/{rfc3339(int(str(item['backup-time'])))}")
    return 0


def output(items: list[dict[str, object]], form: str, label: Callable[[dict[str, object]], str]) -> None:
    if form == "json":
        print(json.dumps(items, separators=(",", ":")))
    elif form == "json-pretty":
        print(json.dumps(items, indent=2))
    else:
        for item in items:
            print(label(item))


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A pathpatterns glob (`**`, `*`, `?`, `[...]`/`[!...]`, `\\` escapes) as a regex over
    the whole path; anchored when it starts with '/', else it may match at any depth."""
    anchored = pattern.startswith("/")
    body = pattern.lstrip("/")
    out = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            out.append(re.escape(body[index + 1]))
            index += 2
            continue
        if body.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = body.find("]", index + 2)
            if end == -1:
                raise ClientError(f"invalid match pattern '{pattern}'")
            inner = body[index + 1:end]
            out.append("[^" + inner[1:] + "]" if inner.startswith("!") else "[" + inner + "]")
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(prefix + "".join(out))


def cmd_restore(parsed: Parsed, argv: Sequence[str]) -> int:
    snapshot_arg = parsed.positional["snapshot"][0]
    archive_name = parsed.positional["archive-name"][0]
    target_arg = parsed.positional["target"][0]
    match = GROUP_OR_SNAPSHOT_RE.fullmatch(snapshot_arg)
    if match is None:
        raise ClientError(f"unable to parse backup snapshot path '{snapshot_arg}'")
    patterns = [glob_regex(p) for p in parsed.options.get("pattern", [])]
    if patterns and target_arg == "-":
        raise ClientError("patterns not allowed when restoring to stdout")
    server = connect(parsed, argv)
    group = namespace_dir(server) / match.group(1) / match.group(2)
    if match.group(3):
        snapshot_dir = group / match.group(3)
        if not (snapshot_dir / MANIFEST).is_file():
            raise ClientError(f"unable to open snapshot - backup dir '{snapshot_arg}' does not exist")
    else:
        finished = [snap for snap in snapshots_of(group) if snap.finished]
        if not finished:
            raise ClientError("backup group has no snapshots")
        snapshot_dir = max(finished, key=lambda s: s.time).path
    if not archive_name.endswith(".pxar"):
        raise ClientError(f"stand-in: only .pxar archives are implemented, not '{archive_name}'")
    archive = snapshot_dir / f"{archive_name}.didx"
    if not archive.is_dir():
        raise ClientError(f"manifest does not contain file '{archive_name}.didx'")
    if target_arg == "-":
        raise ClientError("unable to pipe pxar archive")
    extract(archive, Path(target_arg), patterns, parsed.flag("allow-existing-dirs"),
            parsed.flag("overwrite") or parsed.flag("overwrite-files"))
    return 0


def extract(archive: Path, target: Path, patterns: list[re.Pattern[str]], allow_existing: bool,
            overwrite: bool) -> None:
    def wanted(relative: str) -> bool:
        if not patterns:
            return True
        parts = relative.split("/")
        return any(p.fullmatch("/".join(parts[:n])) for p in patterns for n in range(1, len(parts) + 1))

    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    directories: list[tuple[Path, Path]] = [(archive, target)]
    created: set[Path] = set()
    for source in sorted(archive.rglob("*")):
        relative = source.relative_to(archive).as_posix()
        if not wanted(relative):
            continue
        destination = target / relative
        for parent in reversed(destination.relative_to(target).parents[:-1]):
            made = target / parent
            if not made.is_dir():
                made.mkdir()
                created.add(made)
                directories.append((archive / parent, made))
        if source.is_symlink():
            if destination.is_symlink() or destination.exists():
                if not overwrite:
                    raise ClientError(f"error at entry \"/{relative}\": failed to create symlink: File exists")
                destination.unlink()
            destination.symlink_to(os.readlink(source))
        elif source.is_dir():
            if destination.is_dir():
                if not allow_existing and destination not in created:
                    raise ClientError(f"error at entry \"/{relative}\": failed to create directory: File exists")
            else:
                destination.mkdir()
                created.add(destination)
            directories.append((source, destination))
        else:
            if destination.exists() and not overwrite:
                raise ClientError(f"error at entry \"/{relative}\": failed to create file: File exists")
            shutil.copy2(source, destination)
    for source, destination in reversed(directories):
        shutil.copystat(source, destination)


def compute_prune_info(snapshots: list[Snapshot], keep: dict[str, int]) -> list[tuple[Snapshot, str]]:
    """pbs-datastore/src/prune.rs compute_prune_info, rule for rule."""
    ordered = sorted(snapshots, key=lambda s: s.time, reverse=True)  # newest first
    mark: dict[Path, str] = {}
    keep_unfinished = True
    for snap in ordered:  # remove_incomplete_snapshots
        if snap.finished:
            keep_unfinished = False
        else:
            mark[snap.path] = "keep-partial" if keep_unfinished else "remove"
            keep_unfinished = False

    def mark_selections(count: int, select: Callable[[Snapshot], str]) -> None:
        include: set[str] = set()
        already = {select(s) for s in ordered if mark.get(s.path) == "keep"}
        for snap in ordered:
            if snap.path in mark:
                continue
            if snap.protected:
                mark[snap.path] = "protected"
                continue
            selection = select(snap)
            if selection in already:
                continue
            if selection not in include:
                if len(include) >= count:
                    break
                include.add(selection)
                mark[snap.path] = "keep"
            else:
                mark[snap.path] = "remove"

    selectors: dict[str, Callable[[Snapshot], str]] = {
        "last": lambda s: rfc3339(s.time),
        "hourly": lambda s: time.strftime("%Y/%m/%d/%H", time.localtime(s.time)),
        "daily": lambda s: time.strftime("%Y/%m/%d", time.localtime(s.time)),
        "weekly": lambda s: time.strftime("%G/%V", time.localtime(s.time)),
        "monthly": lambda s: time.strftime("%Y/%m", time.localtime(s.time)),
        "yearly": lambda s: time.strftime("%Y", time.localtime(s.time)),
    }
    for rule in KEEP_RULES:
        if rule in keep:
            mark_selections(keep[rule], selectors[rule])
    return [(snap, "protected" if snap.protected else mark.get(snap.path, "remove")) for snap in ordered]


def cmd_prune(parsed: Parsed, argv: Sequence[str]) -> int:
    group_arg = parsed.positional["group"][0]
    match = GROUP_RE.fullmatch(group_arg)
    if match is None:
        raise ClientError(f"unable to parse backup group path '{group_arg}'")
    server = connect(parsed, argv)
    group = namespace_dir(server) / match.group(1) / match.group(2)
    keep = {rule: int(value) for rule in KEEP_RULES if (value := parsed.one(f"keep-{rule}")) is not None}
    keep_all = not any(keep.values())
    info = compute_prune_info(snapshots_of(group), keep)
    info.reverse()  # delete older snapshots first
    results = []
    for snap, marked in info:
        kept = keep_all or marked != "remove"
        results.append({"backup-type": match.group(1), "backup-id": match.group(2), "backup-time": snap.time,
                        "keep": kept, "protected": marked == "protected"})
        if not kept and not parsed.flag("dry-run"):
            shutil.rmtree(snap.path)
    if parsed.flag("quiet"):
        results = [item for item in results if not item["keep"]]
    output(results, parsed.one("output-format") or "text",
           lambda item: f"{item['backup-type']}/{item['backup-id']}/{rfc3339(int(str(item['backup-time'])))} "
                        f"{'keep' if item['keep'] else 'remove'}")
    return 0


HANDLERS: dict[tuple[str, ...], Callable[[Parsed, Sequence[str]], int]] = {
    ("backup",): cmd_backup, ("snapshot", "list"): cmd_snapshot_list, ("restore",): cmd_restore,
    ("prune",): cmd_prune,
}


def fault(subcommand: str) -> int | None:
    wanted = os.environ.get("SMBGW_TEST_PBS_FAULT", "")
    if not wanted:
        return None
    kind, _, only = wanted.partition("@")
    if only and only != subcommand:
        return None
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "fail":
        print("Error: stand-in fault: the server answered 500 Internal Server Error", file=sys.stderr)
        return 1
    if kind == "garbage":
        sys.stdout.write("\x00\x01 this is not JSON {{{[[[ \ufffd\n" * 20)
        return 0
    if kind == "unreachable":
        print("Error: error trying to connect: tcp connect error: Connection refused (os error 111)",
              file=sys.stderr)
        return EXIT_ERROR
    print(f"Error: stand-in: unknown SMBGW_TEST_PBS_FAULT {wanted!r}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str]) -> int:
    version = tuple(int(part) for part in os.environ.get("SMBGW_TEST_PBS_CLIENT_VERSION", DEFAULT_VERSION)
                    .split(".")[:3])
    if not argv:
        print("Error: no command specified.\nAvailable commands: backup prune restore snapshot ...",
              file=sys.stderr)
        return EXIT_ERROR
    key: tuple[str, ...] = (argv[0],)
    if argv[0] == "snapshot":
        key = ("snapshot", argv[1]) if len(argv) > 1 and not is_option(argv[1]) else ("snapshot", "")
    command = COMMANDS.get(key)
    if command is None:
        what = " ".join(key).strip()
        if key[0] in KNOWN_ELSEWHERE or key[0] == "snapshot":
            print(f"Error: stand-in: '{what}' is not implemented", file=sys.stderr)
        else:
            print(f"Error: no such command '{what}'", file=sys.stderr)
        return EXIT_ERROR
    try:
        parsed = parse(command, argv[len(key):], version)
        injected = fault(key[0])
        if injected is not None:
            return injected
        return HANDLERS[key](parsed, argv)
    except ClientError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
