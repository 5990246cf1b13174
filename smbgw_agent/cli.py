"""smbgwctl: validate share files, show the plan, read status, ask for a pass.

Exit codes: 0 fine, 1 problems found (invalid file, failing shares), 2 usage error,
3 the agent is not running or has not written status yet.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .control import request
from .errors import ConfigError
from .paths import Paths
from .printable import printable
from .reconciler import Reconciler
from .runner import Runner
from .scanner import ShareScanner
from .services import ServiceControl
from .setup import load_plugins_and_config

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
    plugins, config = load_plugins_and_config(paths)
    scanner = ShareScanner(paths, plugins, config)
    declared: dict[str, list[Path]] = {}
    for other, other_result in scanner.scan().files.items():
        if other_result.spec is not None:
            declared.setdefault(other_result.spec.key, []).append(scanner.directory / other)
    results: list[dict[str, Any]] = []
    for name in files:
        path = Path(name)
        result = scanner.read_one(path)
        problems = [p.to_dict() for p in result.problems]
        if result.spec is not None and result.spec.key in declared:
            resolved = path.resolve()
            for other_path in declared[result.spec.key]:
                if other_path.resolve() != resolved:
                    problems.append({
                        "file": str(path), "key": "name", "line": None,
                        "message": f"share name {result.spec.name!r} is already declared in {other_path}",
                    })
        results.append({
            "file": str(path), "valid": not problems,
            "share": result.spec.to_dict() if result.spec else None, "problems": problems,
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
    changes = {o.name: o.steps for o in report.outcomes.values() if o.steps}
    failures = {o.name: o.error for o in report.outcomes.values() if o.error}
    invalid = {
        name: [str(p) for p in status.problems]
        for name, status in (report.desired.files.items() if report.desired else [])
        if not status.valid
    }
    held = {hold.spec.name: hold.reason for hold in report.held.values()}
    if as_json:
        _print_json({"changes": changes, "errors": failures, "invalid_files": invalid,
                     "held": held, "pass_errors": report.errors})
    else:
        if not changes:
            out("nothing to change")
        for name, steps in sorted(changes.items()):
            out(f"[{name}]")
            for step in steps:
                out(f"  - {step}")
        for name, error in sorted(failures.items()):
            out(f"[{name}] cannot be planned: {error}")
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
    return problems


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
    width = max([len(printable(n)) for n in shares] + [5])
    out(f"{'SHARE':<{width}}  {'STATE':<15}  {'MODE':<6}  PATH")
    for name, share in sorted(shares.items()):
        out(f"{printable(name):<{width}}  {share.get('state')!s:<15}  {share.get('mode')!s:<6}  {share.get('path')}")
        if share.get("error"):
            out(f"{'':<{width}}  error: {share['error']}")
    keeping = {
        "last-good": " (serving its last good version)", "applied": " (serving the live version)",
        "refused": " (REFUSED: the share is down)",
    }
    for file, raw_info in sorted(_dict(status.get("files")).items()):
        info = _dict(raw_info)
        if not info.get("valid"):
            out(f"invalid file {file}{keeping.get(str(info.get('serving')), '')}:")
        for raw_problem in _list(info.get("problems")) + _list(info.get("warnings")):
            problem = _dict(raw_problem)
            where = f":{problem['line']}" if problem.get("line") else ""
            key = f"{problem['key']}: " if problem.get("key") else ""
            label = "" if not info.get("valid") else "warning: "
            out(f"  {file}{where}: {label}{key}{problem.get('message')}")


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
    if as_json:
        _print_json(detail)
    else:
        for key in ("state", "mode", "path", "file", "serving", "digest", "error", "failures"):
            if detail.get(key) not in (None, ""):
                out(f"{key:<9} {detail[key]}")
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


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = Paths.under(args.root)
    try:
        if args.command == "validate":
            return cmd_validate(paths, args.files, args.json)
        if args.command == "plan":
            return cmd_plan(paths, args.json)
        if args.command == "status":
            return cmd_status(paths, args.json)
        if args.command == "show":
            return cmd_show(paths, args.share, args.json)
        return cmd_reconcile(paths, args.json)
    except ConfigError as exc:
        for problem in exc.problems:
            err(f"{problem}")
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
