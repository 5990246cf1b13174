"""smbgwctl: validate share files, show the plan, read status, ask for a pass, import the
shares of an existing smb.conf.

Exit codes: 0 fine, 1 problems found (invalid file, failing shares), 2 usage error,
3 the agent is not running or has not written status yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from smbgw_agent import __version__
from smbgw_agent.assembly import load_plugins_and_config
from smbgw_agent.control import request
from smbgw_agent.effects.runner import Runner
from smbgw_agent.effects.samba import registry_share_names
from smbgw_agent.effects.services import ServiceControl
from smbgw_agent.importer import cmd_import
from smbgw_agent.model.errors import ConfigError
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.printable import printable
from smbgw_agent.platform.commands import CORE_VERBS, Command
from smbgw_agent.platform.pluginhost import PluginConflictError, PluginHost
from smbgw_agent.reconcile.desired import SERVING_NOTES, resolve_desired
from smbgw_agent.reconcile.reconciler import Reconciler
from smbgw_agent.reconcile.scanner import FileResult, ScanResult, ShareScanner

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
# status.json of 20,000 shares is a few MB; anything far larger is not ours.
MAX_STATUS_BYTES = 64 << 20


def _print_json(value: Any) -> None:
    # ensure_ascii: every control character in a file name or message comes out escaped.
    print(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True))


def out(*parts: object) -> None:
    """Print for people: whatever came from files (names, messages) is escaped first."""
    print(" ".join(printable(part) for part in parts))


def err(*parts: object) -> None:
    print(" ".join(printable(part) for part in parts), file=sys.stderr)


def cmd_validate(paths: Paths, files: Sequence[str], as_json: bool) -> int:
    """The files as the agent would judge them beside the files already in shares.d: the
    same parsing, and the same rule for a name declared twice (`resolve_desired`, in one
    go for all of them, so validating every file of a large shares.d stays linear)."""
    plugins, config = load_plugins_and_config(paths)
    runner = Runner()
    # Names of Samba's registry shares are the administrator's too, as for the agent.
    scanner = ShareScanner(paths, plugins, config, lambda: registry_share_names(runner, paths.smb_conf))
    # Candidates are keyed by their full path, so a file of the same name in shares.d
    # stays a separate file; a candidate that is itself in shares.d replaces its entry.
    candidates: dict[str, FileResult] = {}
    for name in files:
        shown = str(Path(name))
        result = scanner.read_one(Path(name))
        spec = dataclasses.replace(result.spec, file=shown) if result.spec is not None else None
        candidates[shown] = dataclasses.replace(result, file=shown, spec=spec)
    validated = {Path(name).resolve() for name in candidates}
    others = {
        name: result for name, result in scanner.scan().files.items()
        if (scanner.directory / name).resolve() not in validated
    }
    desired = resolve_desired(ScanResult({**others, **candidates}), scanner.directory, {}, {}, config.node)
    results: list[dict[str, Any]] = []
    for shown, candidate in candidates.items():
        problems = [p.to_dict() for p in desired.files[shown].problems]
        results.append({
            "file": shown, "valid": not problems,
            "share": candidate.spec.to_dict() if candidate.spec and not problems else None,
            "problems": problems,
        })
    if as_json:
        _print_json(results)
    else:
        for item in results:
            if item["valid"]:
                share = item["share"]
                out(f"{item['file']}: ok: share [{share['name']}] -> {share['path']} ({share['mode']})")
            for problem in item["problems"]:
                where = problem["file"] + (f":{problem['line']}" if problem["line"] else "")
                key = f"{problem['key']}: " if problem["key"] else ""
                out(f"{where}: {key}{problem['message']}")
    return EXIT_OK if all(item["valid"] for item in results) else EXIT_PROBLEMS


def cmd_plan(paths: Paths, as_json: bool) -> int:
    plugins, config = load_plugins_and_config(paths)
    runner = Runner()
    reconciler = Reconciler(
        paths, config, plugins, ServiceControl(runner, use_systemd=False), runner, read_only=True
    )
    report = reconciler.run_pass(dry_run=True)
    changes = report.changes
    failures = {o.name: o.error for o in report.outcomes.values() if o.error}
    failures.update({o.id: o.error for o in report.resources.values() if o.error})
    invalid = {
        name: [str(p) for p in status.problems]
        for name, status in (report.desired.files.items() if report.desired else [])
        if not status.valid
    }
    held = {hold.spec.name: hold.reason for hold in report.held.values()}
    if as_json:
        _print_json({"changes": [c.to_dict() for c in changes], "errors": failures, "invalid_files": invalid,
                     "held": held, "pass_errors": report.errors})
    else:
        if not changes:
            out("nothing to change")
        resource = None
        for change in changes:
            if change.resource != resource:
                resource = change.resource
                out(f"{resource}")
            out(f"  {change.action:<6} {change.detail}  ({change.plugin})")
        for name, error in sorted(failures.items()):
            out(f"{name} cannot be planned: {error}")
        for name, reason in sorted(held.items()):
            out(f"[{name}] not served: {reason}")
        for problems in invalid.values():
            for problem in problems:
                out(f"invalid: {problem}")
        for error in report.errors:
            out(f"error: {error}")
    return EXIT_PROBLEMS if failures or invalid or held or report.errors else EXIT_OK


def read_status_file(path: Path) -> dict[str, Any]:
    """status.json, read defensively: a regular file (not a FIFO that would block, not
    /dev/zero), at most MAX_STATUS_BYTES, valid JSON holding an object. Raises
    ValueError or OSError saying what is wrong."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        data = handle.read(MAX_STATUS_BYTES + 1)
    if len(data) > MAX_STATUS_BYTES:
        raise ValueError(f"larger than {MAX_STATUS_BYTES} bytes")
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _load_status(paths: Paths) -> tuple[dict[str, Any] | None, str]:
    try:
        return read_status_file(paths.status_file), ""
    except FileNotFoundError:
        return None, "is smbgw-agent running?"
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, f"unreadable ({reason})"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


HEALTHY_STATES = ("served", "pending", "removing")


def status_problems(status: dict[str, Any]) -> list[str]:
    """Why `status` should exit 1: anything an administrator must look at."""
    problems = []
    last = _dict(status.get("pass"))
    if last and not last.get("ok"):
        problems.append("the last pass did not fully succeed")
    if _list(_dict(status.get("config")).get("problems")):
        problems.append("agent.toml has problems")
    if _dict(status.get("degraded")):
        problems.append("the agent is degraded")
    for name, share in _dict(status.get("shares")).items():
        if _dict(share).get("state") not in HEALTHY_STATES:
            problems.append(f"share {name} is {_dict(share).get('state')}")
    for file, info in _dict(status.get("files")).items():
        if not _dict(info).get("valid"):
            problems.append(f"{file} is invalid")
    for resource, info in _dict(status.get("resources")).items():
        if _dict(info).get("state") == "failed":
            problems.append(f"{resource} is failing")
    for finding in _list(status.get("health")):
        if not _dict(finding).get("ok"):
            problems.append(f"{_dict(finding).get('plugin')}: {_dict(finding).get('check')} is unhealthy")
    return problems


def _print_table(title: str, rows: dict[str, dict[str, Any]], columns: Callable[[dict[str, Any]], str],
                 header: str, always: bool = False) -> None:
    """Name, then `columns`, one row each, with the row's error below it."""
    if not rows and not always:
        return
    width = max([len(printable(n)) for n in rows] + [len(title)])
    out(f"{title:<{width}}  {header}")
    for name, row in sorted(rows.items()):
        out(f"{printable(name):<{width}}  {columns(row)}")
        if row.get("error"):
            out(f"{'':<{width}}  error: {row['error']}")


def _print_status(status: dict[str, Any]) -> None:
    last = _dict(status.get("pass"))
    duration = last.get("duration_seconds", 0)
    duration = duration if isinstance(duration, (int, float)) else 0
    out(f"node {status.get('node')}  agent {status.get('version')}  passes {status.get('passes')}"
        f"  last pass {'ok' if last.get('ok') else 'FAILED'} ({duration * 1000:.0f} ms)")
    for reason, detail in sorted(_dict(status.get("degraded")).items()):
        out(f"  DEGRADED ({reason}): {detail}")
    for error in _list(last.get("errors")):
        out(f"  error: {error}")
    for message in _list(_dict(status.get("config")).get("problems")):
        out(f"  agent.toml: {message}")
    shares = {str(n): _dict(v) for n, v in _dict(status.get("shares")).items()}
    _print_table("SHARE", shares, lambda s: f"{s.get('state')!s:<15}  {s.get('mode')!s:<6}  {s.get('path')}",
                 f"{'STATE':<15}  {'MODE':<6}  PATH", always=True)
    # What plugins observed about a share, in their own words (the quota: used of limit).
    for name in sorted(shares):
        for plugin, seen in sorted(_observed(status, name).items()):
            if isinstance(seen.get("text"), str):
                out(f"  {printable(name)}: {plugin}: {printable(seen['text'])}")
    resources = {str(n): _dict(v) for n, v in _dict(status.get("resources")).items()}
    _print_table("RESOURCE", resources, lambda r: f"{r.get('state')!s:<15}  {r.get('plugin')}",
                 f"{'STATE':<15}  PLUGIN")
    for raw in _list(status.get("health")):
        finding = _dict(raw)
        if not finding.get("ok"):
            where = f" ({finding.get('resource')})" if finding.get("resource") else ""
            out(f"UNHEALTHY {finding.get('plugin')}: {finding.get('check')}{where}: {finding.get('detail')}")
    for job_id, raw in sorted(_dict(status.get("jobs")).items()):
        job = _dict(raw)
        if job.get("state") in ("running", "queued", "failed", "timed-out"):
            progress = f": {job.get('progress')}" if job.get("progress") else ""
            error = f": {job.get('error')}" if job.get("error") else ""
            out(f"job {job_id} ({job.get('plugin')}) {job.get('state')}{progress}{error}")
    for file, raw_info in sorted(_dict(status.get("files")).items()):
        info = _dict(raw_info)
        if not info.get("valid"):
            note = SERVING_NOTES.get(str(info.get("serving")))
            out(f"invalid file {file}{f' ({note})' if note else ''}:")
        for raw_problem in _list(info.get("problems")) + _list(info.get("warnings")):
            problem = _dict(raw_problem)
            where = f":{problem['line']}" if problem.get("line") else ""
            key = f"{problem['key']}: " if problem.get("key") else ""
            label = "" if not info.get("valid") else "warning: "
            out(f"  {file}{where}: {label}{key}{problem.get('message')}")


def _observed(status: dict[str, Any], share: str) -> dict[str, dict[str, Any]]:
    """What plugins observed about a share: their `smbgw_observe` "shares" entries."""
    observed = {
        str(plugin): _dict(_dict(_dict(seen).get("shares")).get(share))
        for plugin, seen in _dict(status.get("plugins")).items()
    }
    return {plugin: seen for plugin, seen in observed.items() if seen}


def cmd_status(paths: Paths, as_json: bool) -> int:
    status, problem = _load_status(paths)
    if status is None:
        err(f"no status at {paths.status_file}: {problem}")
        return EXIT_UNREACHABLE
    if as_json:
        _print_json(status)
    else:
        _print_status(status)
    return EXIT_PROBLEMS if status_problems(status) else EXIT_OK


def cmd_show(paths: Paths, share: str, as_json: bool) -> int:
    status, problem = _load_status(paths)
    if status is None:
        err(f"no status at {paths.status_file}: {problem}")
        return EXIT_UNREACHABLE
    shares = _dict(status.get("shares"))
    matches = {str(n): _dict(s) for n, s in shares.items() if str(n).casefold() == share.casefold()}
    if not matches:
        err(f"no share named {share!r} on node {status.get('node')}")
        return EXIT_PROBLEMS
    name, info = next(iter(matches.items()))
    detail = {"name": name, **info, "file_status": _dict(status.get("files")).get(str(info.get("file")), {})}
    detail["plugins"] = _observed(status, name)
    if as_json:
        _print_json(detail)
    else:
        for key in ("state", "mode", "path", "file", "serving", "digest", "error", "failures"):
            if detail.get(key) not in (None, ""):
                out(f"{key:<9} {detail[key]}")
        for plugin, seen in sorted(detail["plugins"].items()):
            out(f"{plugin:<9} " + "  ".join(f"{key} {value}" for key, value in sorted(seen.items())))
    return EXIT_OK if info.get("state") in HEALTHY_STATES else EXIT_PROBLEMS


def cmd_reconcile(paths: Paths, as_json: bool) -> int:
    try:
        reply = request(paths.control_socket, "reconcile")
    except (OSError, ValueError) as exc:
        err(f"cannot reach smbgw-agent at {paths.control_socket}: {exc}")
        return EXIT_UNREACHABLE
    if as_json:
        _print_json(reply)
    else:
        if reply.get("error"):
            out(f"error: {reply['error']}")
        changed = ", ".join(str(n) for n in _list(reply.get("changed"))) or "nothing"
        out(f"pass {'ok' if reply.get('ok') else 'with failures'}: changed {changed}")
        for name, error in _dict(reply.get("failed")).items():
            out(f"  {name}: {error}")
        for name, reason in _dict(reply.get("held")).items():
            out(f"  {name}: not served: {reason}")
        for error in _list(reply.get("errors")):
            out(f"  error: {error}")
    return EXIT_OK if reply.get("ok") else EXIT_PROBLEMS


def plugin_commands(root: str | None) -> dict[str, Command]:
    """The verbs plugins add (`snapshot`, `verify`): from the plugins agent.toml enables,
    or every installed one when agent.toml cannot be read (the agent says which it runs)."""
    try:
        plugins, _config = load_plugins_and_config(Paths.under(root))
    except ConfigError:
        try:
            plugins = PluginHost.load()
        except PluginConflictError:
            return {}
    return {verb: command for verb, (_plugin, command) in plugins.commands().items()}


def build_parser(commands: Mapping[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smbgwctl", description="Control smbgw-agent.")
    parser.add_argument("--root", help="sandbox root the agent runs under (default: /)")
    parser.add_argument("--version", action="version", version=f"smbgwctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check share files before dropping them in")
    validate.add_argument("files", nargs="+")
    validate.add_argument("--json", action="store_true")
    for name, text in (
        ("plan", "what a pass would change now"),
        ("status", "what the agent serves and what is wrong"),
        ("reconcile", "ask the running agent for a pass now"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one share in detail")
    show.add_argument("share")
    show.add_argument("--json", action="store_true")
    adopt = sub.add_parser("import", help="the shares of an smb.conf as share files (printed, or --to DIR)")
    adopt.add_argument("--from", dest="source", metavar="FILE", help="default: the node's smb.conf")
    adopt.add_argument("--to", metavar="DIR", help="write the files there (never over one that exists)")
    adopt.add_argument("--json", action="store_true")
    adopt.add_argument("--adopt", action="store_true",
                       help="take the shares over: write them into shares.d, and once the agent serves them, "
                            "remove them from smb.conf (after a timestamped backup) and reload smbd once")
    for verb, declared in sorted((commands or {}).items()):
        command = sub.add_parser(verb, help=declared.help)
        for argument in declared.arguments:
            command.add_argument(argument)
        for flag, text in declared.flags:
            command.add_argument(f"--{flag}", action="store_true", help=text)
        for option, text in declared.options:
            command.add_argument(f"--{option}", metavar="VALUE", help=text)
        command.add_argument("--json", action="store_true")
    return parser


def verb_arguments(command: Command, args: argparse.Namespace) -> dict[str, Any]:
    """The request's `arguments`: every declared name, options not given as null."""
    arguments: dict[str, Any] = {name: getattr(args, name) for name in command.arguments}
    arguments.update({flag: bool(getattr(args, flag.replace("-", "_"))) for flag, _text in command.flags})
    arguments.update({option: getattr(args, option.replace("-", "_")) for option, _text in command.options})
    return arguments


def show_progress(text: str) -> None:
    """A line of a running job's progress, as it comes (flushed: stdout may be a pipe)."""
    out(text)
    sys.stdout.flush()


def cmd_plugin_verb(paths: Paths, command: Command, args: argparse.Namespace) -> int:
    # Progress is always asked for; with --json it is not printed, so stdout stays one
    # JSON document.
    on_progress = (lambda _text: None) if args.json else show_progress
    try:
        # A job may run for hours (an off-host backup): the agent bounds it by the job's
        # own limit and always answers, so the client waits as long as that takes.
        reply = request(paths.control_socket, "run", timeout=7 * 86400.0, on_progress=on_progress,
                        verb=command.name, arguments=verb_arguments(command, args))
    except (OSError, ValueError) as exc:
        err(f"cannot reach smbgw-agent at {paths.control_socket}: {exc}")
        return EXIT_UNREACHABLE
    if args.json:
        _print_json(reply)
        return EXIT_OK if reply.get("ok") else EXIT_PROBLEMS
    result = _dict(reply.get("result"))
    if result.get("text"):
        out(printable(str(result["text"])))
    if reply.get("error"):
        err(f"{command.name}: {printable(str(reply['error']))}")
    return EXIT_OK if reply.get("ok") else EXIT_PROBLEMS


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--root")
    known, rest = early.parse_known_args(argv)
    verb = next((word for word in rest if not word.startswith("-")), None)
    commands = plugin_commands(known.root) if verb not in CORE_VERBS else {}
    args = build_parser(commands).parse_args(argv)
    paths = Paths.under(args.root)
    try:
        if args.command in commands:
            return cmd_plugin_verb(paths, commands[args.command], args)
        if args.command == "validate":
            return cmd_validate(paths, args.files, args.json)
        if args.command == "plan":
            return cmd_plan(paths, args.json)
        if args.command == "status":
            return cmd_status(paths, args.json)
        if args.command == "show":
            return cmd_show(paths, args.share, args.json)
        if args.command == "import":
            return cmd_import(paths, args.source, args.to, args.json, out, err, adopting=args.adopt)
        return cmd_reconcile(paths, args.json)
    except ConfigError as exc:
        for problem in exc.problems:
            err(f"{problem}")
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
