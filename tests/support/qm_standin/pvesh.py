"""TEST STAND-IN for Proxmox VE's `pvesh`: never shipped, never installed on a node.

Only the API paths the VM mode uses, with the argv, messages and output of pve-manager
8.4 (PVE/CLI/pvesh.pm, PVE/API2/Cluster/Mapping/Dir.pm at 8.4.21, commit 2606ac8) and
pve-guest-common 5.2.2 (PVE/Mapping/Dir.pm, 58ad183), all on github.com/proxmox:

* `pvesh get|create|delete PATH [OPTIONS]`; `--output-format json|json-pretty|text|yaml`
  (default text). JSON output is `to_json` canonical (keys sorted), `json` compact with a
  newline, `json-pretty` three-space indented (PVE::CLIFormatter `print_api_result`). A
  path the node has no handler for: `No 'get' handler defined for 'PATH'`, exit 255.
* `/cluster/mapping/dir` (GET: a list of {id, map, description?, digest}; POST `--id ID
  --map node=N,path=P [--map ...] [--description D]`): `create directory mapping failed:
  dir ID 'ID' already defined`; a map entry for this node whose path does not exist:
  `Path P does not exist` (assert_valid_map_list; other nodes' paths are not checked).
  `/cluster/mapping/dir/ID` (GET: `mapping 'ID' not found`; DELETE: silent when absent).
  Stored in /etc/pve/mapping/directory.cfg, a SectionConfig whose header is the bare ID
  (formats.py). `digest` is the SHA-1 of that file, as cfs_read_file gives it.
* `/version`: {release, repoid, version} (PVE::pvecfg::version_info). The node reports
  8.4.1 (pve-manager commit 2a5fa54a8503f96d); ROOT/.qm-standin-version (or
  SMBGW_PVE_VERSION) holding e.g. `8.3.5` makes it an 8.3 node: then the directory
  mapping paths do not exist and `qm set` knows no `--virtiofsN` (virtiofs came in 8.4).

Differences: the text output format prints a plain table (the real one draws it with the
box characters of PVE::CLIFormatter), only json/json-pretty are byte for byte; the list is
sorted by id (Perl's hash order is random); `description` is one line.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..pct_standin import pct as pctmod
from ..pvecli import EXIT_ERROR, CliError, ParamError
from . import formats

VERSION_FILE = ".qm-standin-version"
REPOIDS = {"8.4.1": "2a5fa54a8503f96d", "8.3.5": "dac3aa88bac3f300"}
DEFAULT_VERSION = "8.4.1"
MAPPINGS = "etc/pve/mapping/directory.cfg"
FORMATS = ("json", "json-pretty", "text", "yaml")


def node_version(root: Path) -> tuple[tuple[int, ...], str, str]:
    """(version tuple, version, repoid) the node reports."""
    text = os.environ.get("SMBGW_PVE_VERSION", "")
    path = root / VERSION_FILE
    if path.exists():
        text = path.read_text().strip()
    version = text or DEFAULT_VERSION
    parts = tuple(int(p) for p in re.findall(r"\d+", version))
    return parts, version, REPOIDS.get(version, hashlib.sha1(version.encode()).hexdigest()[:16])


def read_mappings(root: Path) -> dict[str, dict[str, Any]]:
    path = root / MAPPINGS
    return formats.parse_dir_mappings(path.read_text()) if path.exists() else {}


def _digest(root: Path) -> str:
    path = root / MAPPINGS
    return hashlib.sha1(path.read_bytes() if path.exists() else b"").hexdigest()


def _write_mappings(root: Path, mappings: dict[str, dict[str, Any]]) -> None:
    path = root / MAPPINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".directory.cfg.tmp{os.getpid()}")
    tmp.write_text(formats.render_dir_mappings(mappings))
    os.replace(tmp, path)


def _options(argv: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    positional: list[str] = []
    options: dict[str, list[str]] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        found = re.fullmatch(r"--?([a-zA-Z][\w-]*)(?:=(.*))?", arg, re.DOTALL)
        if not found:
            positional.append(arg)
            continue
        if found.group(2) is not None:
            value = found.group(2)
        elif found.group(1) in ("noborder", "noheader", "quiet", "human-readable"):
            value = args.pop(0) if args and re.fullmatch(r"[01]", args[0]) else "1"
        elif args:
            value = args.pop(0)
        else:
            raise CliError(f"Option {found.group(1)} requires an argument\n400 unable to parse option\n")
        options.setdefault(found.group(1), []).append(value)
    return positional, options


def _print(data: Any, output: str) -> None:
    if data is None:
        return
    if output == "json":
        sys.stdout.write(formats.perl_json(data) + "\n")
    elif output == "json-pretty":
        sys.stdout.write(formats.perl_pretty_json(data))
    elif isinstance(data, list):
        keys = sorted({k for row in data for k in row})
        rows = [[str(row.get(k, "")) if not isinstance(row.get(k), list) else "\n".join(row[k]) for k in keys]
                for row in data]
        widths = [max([len(k), *(len(line) for r in rows for line in r[i].split("\n"))]) for i, k in enumerate(keys)]
        sys.stdout.write(" ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)).rstrip() + "\n")
        for row in rows:
            sys.stdout.write(" ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    elif isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key in sorted(data):
            value = data[key]
            shown = "\n".join(value) if isinstance(value, list) else str(value)
            sys.stdout.write(f"{key.ljust(width)} {shown}\n")
    else:
        sys.stdout.write(f"{data}\n")


def handle(root: Path, node: str, method: str, path: str, options: dict[str, list[str]]) -> Any:
    version, version_text, repoid = node_version(root)
    clean = "/" + path.strip("/")
    if method == "get" and clean == "/version":
        return {"release": ".".join(version_text.split(".")[:2]), "repoid": repoid, "version": version_text}
    dir_api = version >= (8, 4)
    found = re.fullmatch(r"/cluster/mapping/dir(?:/([^/]+))?", clean)
    if not dir_api or not found:
        raise CliError(f"No '{method}' handler defined for '{clean}'\n")
    ident = found.group(1)
    if ident is None and method == "get":
        mappings = read_mappings(root)
        digest = _digest(root)
        return [{**entry, "id": key, "digest": digest} for key, entry in sorted(mappings.items())]
    if ident is None and method == "create":
        unknown = sorted(set(options) - {"id", "map", "description"})
        if unknown:
            raise ParamError("Parameter verification failed.\n", {k: "property is not defined in schema and the "
                                                                   "schema does not allow additional properties"
                                                                   for k in unknown})
        if "id" not in options:
            raise ParamError("Parameter verification failed.\n", {"id": "property is missing and it is not optional"})
        new_id = options["id"][-1]
        if not formats.CONFIGID.fullmatch(new_id):
            raise ParamError("Parameter verification failed.\n", {"id": f"invalid configuration ID '{new_id}'"})
        entry: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for item in options.get("map", []):
            try:
                data = pctmod.parse_property_string(item, None, {"node", "path"})
            except CliError as error:
                raise ParamError("Parameter verification failed.\n", {"map": str(error).strip()}) from None
            if "node" not in data or "path" not in data:
                missing = "node" if "node" not in data else "path"
                raise ParamError("Parameter verification failed.\n",
                                 {"map": f"invalid format - {missing}: property is missing"})
            if not re.match(r"^/[^;,=()]+", data["path"]):
                raise ParamError("Parameter verification failed.\n", {"map": "invalid format - path: Value does not "
                                 "look like a valid absolute path. These symbols are currently not allowed in path: "
                                 ";,=()"})
            if data["node"] == node:
                if not Path(data["path"]).exists():
                    raise CliError(f"Path {data['path']} does not exist\n")
                if not Path(data["path"]).is_dir():
                    raise CliError(f"Path {data['path']} exists, but is not a directory\n")
            seen[data["node"]] = seen.get(data["node"], 0) + 1
            entry.setdefault("map", []).append(item)
        for other, count in seen.items():
            if count > 1:
                raise CliError(f"Node '{other}' is specified {count} times.\n")
        if options.get("description"):
            entry["description"] = options["description"][-1]
        with pctmod.Node(root, node).locked("mapping-dir"):
            mappings = read_mappings(root)
            if new_id in mappings:
                raise CliError(f"create directory mapping failed: dir ID '{new_id}' already defined\n")
            mappings[new_id] = entry
            _write_mappings(root, mappings)
        return None
    if ident is not None and method == "get":
        mappings = read_mappings(root)
        if ident not in mappings:
            raise CliError(f"mapping '{ident}' not found\n")
        return {**mappings[ident], "digest": _digest(root)}
    if ident is not None and method == "delete":
        with pctmod.Node(root, node).locked("mapping-dir"):
            mappings = read_mappings(root)
            mappings.pop(ident, None)
            _write_mappings(root, mappings)
        return None
    raise CliError(f"No '{method}' handler defined for '{clean}'\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    methods = {"get": "get", "create": "create", "delete": "delete", "set": "set", "ls": "ls", "usage": "usage"}
    if not args or args[0] not in methods:
        sub = args[0] if args else ""
        sys.stderr.write(f"ERROR: unknown command 'pvesh {sub}'\nUSAGE: pvesh <COMMAND> [ARGS] [OPTIONS]\n")
        return EXIT_ERROR
    try:
        positional, options = _options(args[1:])
        if not positional:
            raise ParamError("not enough arguments\n")
        if len(positional) > 1:
            raise ParamError("too many arguments\n")
        output = options.pop("output-format", ["text"])[-1]
        if output not in FORMATS:
            raise ParamError("Parameter verification failed.\n", {"output-format": f"value '{output}' does not "
                             f"have a value in the enumeration '{', '.join(FORMATS)}'"})
        for cosmetic in ("noborder", "noheader", "quiet", "human-readable"):
            options.pop(cosmetic, None)
        base = pctmod.Node.from_env()
        result = handle(base.root, base.name, args[0], positional[0], options)
        _print(result, output)
    except ParamError as error:
        error.usage = f"pvesh {args[0]} <api_path> [OPTIONS] [FORMAT_OPTIONS]\n"
        sys.stderr.write(error.render())
        return EXIT_ERROR
    except CliError as error:
        sys.stderr.write(str(error))
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
