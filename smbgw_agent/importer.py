"""`smbgwctl import [--from FILE] [--to DIR]`: the shares an administrator already has,
as share files.

The configuration is read through `testparm -s` (includes followed, synonyms folded,
defaults left out), only the sections the administrator wrote are taken (not the ones
the agent generates, found as `read_admin_shares` finds them), and each becomes a share
file by `model/smbimport.py`. Every file is then judged by the agent's own parser, as
`smbgwctl validate` would, so the administrator sees at once what still needs a hand
(a path outside `allowed_roots`, `[options]` on a node that does not allow them).

Without `--adopt` nothing here changes the running configuration: without `--to` the
files are printed, with it they are written into DIR, never over a file that exists.

With `--adopt` the agent takes the shares over from smb.conf with no moment in which a
share is missing (model/smbconfedit.py has the protocol): each file that holds an adopted
section is backed up with a timestamp, the sections are marked as handed over
(testparm-checked), the share files go into the agent's shares directory, and once the
agent serves every one of them the sections are removed (testparm-checked) and smbd is
reloaded once. Only shares whose every parameter the share file carries are adopted;
the others stay in smb.conf, each with the reason. A share in Samba's registry (`net
conf`) is imported like the others but never adopted: no edit of smb.conf removes it.
If the agent does not serve them in time, everything is put back as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from smbgw_agent.assembly import load_plugins_and_config
from smbgw_agent.control import request
from smbgw_agent.effects.fileio import atomic_write
from smbgw_agent.effects.runner import CommandError, Runner
from smbgw_agent.effects.samba import registry_share_names, reload_command, run_testparm
from smbgw_agent.model.errors import ConfigError
from smbgw_agent.model.paths import Paths
from smbgw_agent.model.smbconf import AdminShares, read_admin_shares
from smbgw_agent.model.smbconfedit import mark_handed_over, remove_sections
from smbgw_agent.model.smbimport import Imported, Section, parse_testparm, to_share_file
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
    parsed = parse_testparm(done.stdout)
    registry = _registry_shares(runner, source, parsed)
    # read_admin_shares knows no [global]: it is never imported.
    sections = [s for s in parsed if admin.get(s.name) or s.name.casefold() in registry]
    for section in sections:  # under --root, a path is written as the sandbox's share files write it
        path = section.parameters.get("path")
        if path and paths.sandboxed and Path(path).is_relative_to(paths.root):
            section.parameters["path"] = str(paths.declared(Path(path)))
    imported = []
    for section in sections:
        in_registry = section.name.casefold() in registry
        item = to_share_file(section, f"the registry of {source}" if in_registry else str(source))
        item.in_registry = in_registry
        imported.append(item)
    return imported, list(admin.problems)


def _registry_shares(runner: Runner, source: Path, parsed: list[Section]) -> set[str]:
    """The (case-folded) names of the shares Samba's registry defines for `source`, when
    its configuration reads them (`registry shares = yes`, which `include = registry` and
    `config backend = registry` imply): none of them is in a file read_admin_shares reads.
    `net conf` is asked only then, since it creates an empty registry where there is none."""
    flag = next((s.parameters.get("registry shares", "") for s in parsed if s.name.lower() == "global"), "")
    if flag.lower() not in ("yes", "true", "1", "on"):
        return set()
    return {name.casefold() for name in registry_share_names(runner, source)}


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
               out: Callable[..., None], err: Callable[..., None], adopting: bool = False) -> int:
    smb_conf = Path(source) if source else paths.smb_conf
    if adopting:
        return cmd_adopt(paths, smb_conf, to, as_json, out, err)
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


# ---- --adopt -------------------------------------------------------------------------------------

ADOPT_WAIT = 60.0  # how long the agent may take to serve the adopted shares


@dataclass
class Adoption:
    """What `--adopt` did: the shares taken over, those left in smb.conf and why, the backups."""

    adopted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    backups: list[str] = field(default_factory=list)
    error: str | None = None


class AdoptError(Exception):
    pass


def adoptable(imported: list[Imported], problems: dict[str, list[str]]) -> tuple[list[Imported], dict[str, str]]:
    """The shares that can be taken over as they are, and why each other one cannot."""
    chosen: list[Imported] = []
    kept: dict[str, str] = {}
    for item in imported:
        if item.in_registry:
            # smb.conf does not hold it: removing it is `net conf delshare`, which --adopt does not run.
            kept[item.name] = ("defined in Samba's registry (net conf), which --adopt does not edit; "
                               "it stays there")
        elif item.text is None:
            kept[item.name] = "not a file share the agent can serve"
        elif item.left_out:
            kept[item.name] = f"the share file would not carry: {'; '.join(item.left_out)}"
        elif [p for p in problems.get(item.file, []) if not _still_in_smb_conf(p)]:
            kept[item.name] = "; ".join(p for p in problems[item.file] if not _still_in_smb_conf(p))
        else:
            chosen.append(item)
    return chosen, kept


def _testparm_checked(runner: Runner, file: Path, candidate: str) -> None:
    """Write `candidate` over `file` only if testparm finds no error in it that the file
    does not already have (it is checked as a copy beside the file, so relative includes
    resolve the same), judged as the agent judges its own candidates (`run_testparm`)."""
    baseline = run_testparm(runner, file).errors
    with tempfile.NamedTemporaryFile("w", dir=file.parent, prefix=f".{file.name}.", suffix=".adopt",
                                     delete=False) as handle:
        handle.write(candidate)
    try:
        verdict = run_testparm(runner, Path(handle.name), baseline)
    finally:
        os.unlink(handle.name)
    if not verdict.ok:
        raise AdoptError(f"testparm refuses the edited {file}: {'; '.join(verdict.errors)}")
    atomic_write(file, candidate, mode=file.stat().st_mode & 0o7777)


def _served(paths: Paths, names: list[str]) -> bool:
    try:
        status = json.loads(paths.status_file.read_text())
        shares = status["shares"]
        return all(shares.get(name, {}).get("state") == "served" for name in names)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def adopt(paths: Paths, smb_conf: Path, target: Path, chosen: list[Imported], admin: AdminShares,
          runner: Runner, wait: float = ADOPT_WAIT) -> Adoption:
    """Hand `chosen` over from the files that define them to share files in `target`."""
    result = Adoption()
    files: dict[Path, list[str]] = {}
    for item in chosen:
        section = admin.get(item.name)
        if section is not None:
            files.setdefault(Path(section.file), []).append(section.name)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    originals = {file: file.read_text() for file in files}
    written: list[Path] = []
    for file in files:
        backup = file.with_name(f"{file.name}.smbgw-adopt-{stamp}")
        shutil.copy2(file, backup)
        result.backups.append(str(backup))
    try:
        for file, names in files.items():
            _testparm_checked(runner, file, mark_handed_over(originals[file], names))
        for item in chosen:
            path = target / item.file
            with open(path, "x") as stream:
                stream.write(item.text or "")
            os.chmod(path, 0o644)
            written.append(path)
        names = [item.name for item in chosen]
        request(paths.control_socket, "reconcile")
        deadline = time.monotonic() + wait
        while not _served(paths, names):
            if time.monotonic() > deadline:
                raise AdoptError(f"the agent did not serve {', '.join(names)} within {wait:.0f}s "
                                 "(see `smbgwctl status`)")
            time.sleep(0.2)
        for file, names_here in files.items():
            _testparm_checked(runner, file, remove_sections(file.read_text(), names_here))
    except (AdoptError, CommandError, OSError, ValueError) as exc:
        # The sections first, then the share files: the other order would leave a moment
        # with neither.
        for file, text in originals.items():
            atomic_write(file, text, mode=file.stat().st_mode & 0o7777)
        for path in written:
            path.unlink(missing_ok=True)
        result.error = f"{exc}; smb.conf is as it was and no share file was left"
        return result
    runner.run(reload_command(smb_conf), timeout=TESTPARM_TIMEOUT, check=False)
    result.adopted = [item.name for item in chosen]
    return result


def cmd_adopt(paths: Paths, smb_conf: Path, to: str | None, as_json: bool,
              out: Callable[..., None], err: Callable[..., None]) -> int:
    """`smbgwctl import --adopt`: from the node's smb.conf into the agent's shares directory."""
    if smb_conf.resolve() != paths.smb_conf.resolve():
        err(f"--adopt takes shares over from the smb.conf smbd reads ({paths.smb_conf}), not {smb_conf}")
        return 2
    try:
        _, config = load_plugins_and_config(paths)
    except ConfigError as exc:
        err(f"cannot read the agent's configuration: {exc}")
        return 2
    target = paths.host(config.shares_dir)
    if to is not None and Path(to).resolve() != target.resolve():
        err(f"--adopt writes into the agent's shares directory ({target}), not {to}")
        return 2
    runner = Runner()
    try:
        imported, source_problems = import_shares(paths, smb_conf, runner)
    except (CommandError, ValueError, OSError) as exc:
        err(f"cannot read {smb_conf}: {exc}")
        return 1
    chosen, kept = adoptable(imported, judge(paths, imported))
    for item in list(chosen):
        if (target / item.file).exists():
            kept[item.name] = f"{target / item.file} exists; not overwritten"
            chosen.remove(item)
    result = Adoption(kept=kept)
    if chosen:
        try:
            request(paths.control_socket, "reconcile")  # the agent must be there to take over
        except (OSError, ValueError) as exc:
            err(f"smbgw-agent does not answer at {paths.control_socket} ({exc}); nothing was changed")
            return 3
        try:
            done = adopt(paths, smb_conf, target, chosen, read_admin_shares(smb_conf, paths.samba_dir), runner)
        except (AdoptError, OSError) as exc:
            done = Adoption(error=str(exc))
        result = Adoption(done.adopted, kept, done.backups, done.error)
    if as_json:
        sys.stdout.write(json.dumps({
            "source": str(smb_conf), "source_problems": source_problems, "adopted": result.adopted,
            "kept": result.kept, "backups": result.backups, "error": result.error,
        }, indent=2, sort_keys=True, ensure_ascii=True) + "\n")
    else:
        for name in result.adopted:
            out(f"adopted [{name}]: now served from {target}")
        for path in result.backups:
            out(f"backup: {path}")
        for name, why in sorted(result.kept.items()):
            err(f"kept in smb.conf [{name}]: {why}")
        for line in source_problems:
            err(line)
        if result.error:
            err(f"nothing adopted: {result.error}")
    return 1 if result.error or result.kept else 0
