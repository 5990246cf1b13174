"""smbgwctl: validate share files, show the plan, read status, ask for a pass.

Exit codes: 0 fine, 1 problems found (invalid file, failing shares), 2 usage error,
3 the agent is not running or has not written status yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .control import request
from .errors import ConfigError
from .paths import Paths
from .reconciler import Reconciler
from .runner import Runner
from .scanner import ShareScanner
from .services import ServiceControl
from .setup import load_plugins_and_config

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


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
                print(f"{item['file']}: ok: share [{share['name']}] -> {share['path']} ({share['mode']})")
            for problem in item["problems"]:
                where = problem["file"] + (f":{problem['line']}" if problem["line"] else "")
                key = f"{problem['key']}: " if problem["key"] else ""
                print(f"{where}: {key}{problem['message']}")
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
    if as_json:
        _print_json({"changes": changes, "errors": failures, "invalid_files": invalid,
                     "pass_errors": report.errors})
    else:
        if not changes:
            print("nothing to change")
        for name, steps in sorted(changes.items()):
            print(f"[{name}]")
            for step in steps:
                print(f"  - {step}")
        for name, error in sorted(failures.items()):
            print(f"[{name}] cannot be planned: {error}")
        for problems in invalid.values():
            for problem in problems:
                print(f"invalid: {problem}")
        for error in report.errors:
            print(f"error: {error}")
    return EXIT_PROBLEMS if failures or invalid or report.errors else EXIT_OK


def _load_status(paths: Paths) -> dict[str, Any] | None:
    try:
        data = json.loads(paths.status_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cmd_status(paths: Paths, as_json: bool) -> int:
    status = _load_status(paths)
    if status is None:
        print(f"no status at {paths.status_file}: is smbgw-agent running?", file=sys.stderr)
        return EXIT_UNREACHABLE
    if as_json:
        _print_json(status)
    else:
        last = status.get("pass") or {}
        print(f"node {status.get('node')}  agent {status.get('version')}  passes {status.get('passes')}"
              f"  last pass {'ok' if last.get('ok') else 'FAILED'} ({last.get('duration_seconds', 0) * 1000:.0f} ms)")
        for error in last.get("errors", []):
            print(f"  error: {error}")
        for problem in status.get("config", {}).get("problems", []):
            print(f"  agent.toml: {problem}")
        shares = status.get("shares", {})
        width = max([len(n) for n in shares] + [5])
        print(f"{'SHARE':<{width}}  {'STATE':<8}  {'MODE':<6}  PATH")
        for name, share in sorted(shares.items()):
            print(f"{name:<{width}}  {share['state']:<8}  {share['mode']:<6}  {share['path']}")
            if share.get("error"):
                print(f"{'':<{width}}  error: {share['error']}")
        for file, info in sorted(status.get("files", {}).items()):
            if not info["valid"]:
                keeping = {"last-good": " (serving its last good version)", "applied": " (serving the live version)"}
                print(f"invalid file {file}{keeping.get(info['serving'], '')}:")
                for problem in info["problems"]:
                    where = f":{problem['line']}" if problem.get("line") else ""
                    key = f"{problem['key']}: " if problem.get("key") else ""
                    print(f"  {file}{where}: {key}{problem['message']}")
    failing = [n for n, s in status.get("shares", {}).items() if s.get("state") == "failed"]
    invalid = [f for f, i in status.get("files", {}).items() if not i.get("valid")]
    return EXIT_PROBLEMS if failing or invalid else EXIT_OK


def cmd_show(paths: Paths, share: str, as_json: bool) -> int:
    status = _load_status(paths)
    if status is None:
        print(f"no status at {paths.status_file}: is smbgw-agent running?", file=sys.stderr)
        return EXIT_UNREACHABLE
    matches = {n: s for n, s in status.get("shares", {}).items() if n.casefold() == share.casefold()}
    if not matches:
        print(f"no share named {share!r} on node {status.get('node')}", file=sys.stderr)
        return EXIT_PROBLEMS
    name, info = next(iter(matches.items()))
    detail = {"name": name, **info, "file_status": status.get("files", {}).get(info.get("file"), {})}
    if as_json:
        _print_json(detail)
    else:
        for key in ("state", "mode", "path", "file", "serving", "digest", "error", "failures"):
            if detail.get(key) not in (None, ""):
                print(f"{key:<9} {detail[key]}")
    return EXIT_PROBLEMS if info.get("state") == "failed" else EXIT_OK


def cmd_reconcile(paths: Paths, as_json: bool) -> int:
    try:
        reply = request(paths.control_socket, "reconcile")
    except (OSError, ValueError) as exc:
        print(f"cannot reach smbgw-agent at {paths.control_socket}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if as_json:
        _print_json(reply)
    else:
        changed = ", ".join(reply.get("changed", [])) or "nothing"
        print(f"pass {'ok' if reply.get('ok') else 'with failures'}: changed {changed}")
        for name, error in (reply.get("failed") or {}).items():
            print(f"  {name}: {error}")
        for error in reply.get("errors", []):
            print(f"  error: {error}")
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
            print(f"{problem}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
