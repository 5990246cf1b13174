"""`smbgwctl import [--from FILE] [--to DIR]`: the shares an administrator already has,
as share files.

The configuration is read through `testparm -s` (includes followed, synonyms folded,
defaults left out), only the sections the administrator wrote are taken (not the ones
the agent generates, found as `read_admin_shares` finds them), and each becomes a share
file by `model/smbimport.py`. Every file is then judged by the agent's own parser, as
`smbgwctl validate` would, so the administrator sees at once what still needs a hand
(a path outside `allowed_roots`, `[options]` on a node that does not allow them).

Nothing here changes the running configuration: without `--to` the files are printed,
with it they are written into DIR, never over a file that exists.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from smbgw_agent.assembly import load_plugins_and_config
from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.smbconf import read_admin_shares
from smbgw_agent.model.smbimport import Imported, parse_testparm, to_share_file
from smbgw_agent.reconcile.scanner import ShareScanner

TESTPARM_TIMEOUT = 60.0
MAX_TESTPARM_OUTPUT = 16 << 20


def import_shares(paths: Paths, source: Path, runner: Runner) -> tuple[list[Imported], list[str]]:
    """The administrator's shares in `source` as share files, and problems with the
    source as a whole. CommandError when testparm refuses the file."""
    done = runner.run(["testparm", "-s", str(source)], timeout=TESTPARM_TIMEOUT)
    if len(done.stdout) > MAX_TESTPARM_OUTPUT:
        raise ValueError(f"testparm printed more than {MAX_TESTPARM_OUTPUT >> 20} MiB for {source}")
    admin = read_admin_shares(source, paths.samba_dir)
    # read_admin_shares knows no [global]: it is never imported.
    sections = [s for s in parse_testparm(done.stdout) if admin.get(s.name)]
    return [to_share_file(section, str(source)) for section in sections], list(admin.problems)


def judge(paths: Paths, imported: list[Imported]) -> dict[str, list[str]]:
    """What the agent's parser says of each file, as `smbgwctl validate` would."""
    plugins, config = load_plugins_and_config(paths)
    scanner = ShareScanner(paths, plugins, config)
    found: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="smbgw-import-") as folder:
        for item in imported:
            if item.text is None:
                continue
            candidate = Path(folder) / item.file
            candidate.write_text(item.text)
            result = scanner.read_one(candidate)
            found[item.file] = [f"{p.key + ': ' if p.key else ''}{p.message}" for p in result.problems]
    return found


def cmd_import(paths: Paths, source: str | None, to: str | None, as_json: bool,
               out: Callable[..., None], err: Callable[..., None]) -> int:
    smb_conf = Path(source) if source else paths.smb_conf
    try:
        imported, source_problems = import_shares(paths, smb_conf, Runner())
    except (CommandError, ValueError, OSError) as exc:
        err(f"cannot read {smb_conf}: {exc}")
        return 1
    problems = judge(paths, imported)
    written: list[str] = []
    refused: list[str] = []
    if to is not None:
        target = Path(to)
        target.mkdir(parents=True, exist_ok=True)
        for item in imported:
            if item.text is None:
                continue
            path = target / item.file
            try:
                with open(path, "x") as stream:  # never over a file that exists
                    stream.write(item.text)
                os.chmod(path, 0o644)
                written.append(str(path))
            except FileExistsError:
                refused.append(f"{path} exists; not overwritten")
    if as_json:  # one document, every control character escaped (ensure_ascii)
        sys.stdout.write(json.dumps({
            "source": str(smb_conf), "source_problems": source_problems, "written": written, "refused": refused,
            "shares": [{"name": i.name, "file": i.file, "text": i.text, "left_out": i.left_out,
                        "problems": problems.get(i.file, [])} for i in imported],
        }, indent=2, sort_keys=True, ensure_ascii=True) + "\n")
    else:
        _print_text(imported, problems, written, refused, source_problems, to is None, out, err)
    # A section still in smb.conf is refused by the agent until it is removed there:
    # said on the file, but that is the expected state of an import, not a failure.
    unusable = refused or any(not _still_in_smb_conf(p) for i in imported for p in problems.get(i.file, []))
    return 1 if unusable else 0


def _still_in_smb_conf(problem: str) -> bool:
    return "is already defined by hand" in problem


def _print_text(imported: list[Imported], problems: dict[str, list[str]], written: list[str], refused: list[str],
                source_problems: list[str], to_stdout: bool, out: Callable[..., None],
                err: Callable[..., None]) -> None:
    for item in imported:
        if item.text is None:
            for line in item.left_out:
                err(f"not imported: {line}")
            continue
        notes = [f"# left out: {line}" for line in item.left_out]
        notes += [f"# problem: {line}" for line in problems.get(item.file, [])]
        if to_stdout:
            for line in [f"# ---- {item.file}", *notes, *item.text.rstrip("\n").split("\n"), ""]:
                out(line)
        else:
            for line in notes:
                err(f"{item.file}: {line[2:]}")
    for path in written:
        out(f"wrote {path}")
    for line in refused + source_problems:
        err(line)
