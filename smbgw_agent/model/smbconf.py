"""The administrator's own smb.conf, read for the share names it already defines.

A share file must never name a share the administrator wrote by hand: Samba merges two
sections of the same name (case-insensitively), so a dropped `payroll.toml` would give
clients the admin's `[Payroll]` with our path and their `valid users`, `force user`, ...
carried over. This reads section headers the way Samba's parser does (comments with `#`
or `;`, `\\` continuations, `include =` of further files) and skips what the agent
generates itself (everything below its own Samba directory).

Reading is bounded: at most `MAX_INCLUDE_DEPTH` levels of includes, `MAX_TOTAL_BYTES`
read in all, and includes with Samba macros (`%m`, `%U`, ...) are not followed, since
what they name depends on the client.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

MAX_INCLUDE_DEPTH = 8
MAX_TOTAL_BYTES = 8 << 20
_SECTION = re.compile(r"^\s*\[([^\]]*)\]")
_INCLUDE = re.compile(r"^\s*include\s*=\s*(.*?)\s*$", re.IGNORECASE)
# [global] parameters that make smbd read shares from its registry (`net conf`) as well.
_REGISTRY_SHARES = re.compile(r"^\s*registry\s*shares\s*=\s*(yes|true|1|on)\s*$", re.IGNORECASE)
_CONFIG_BACKEND_REGISTRY = re.compile(r"^\s*config\s*backend\s*=\s*registry\s*$", re.IGNORECASE)
REGISTRY = "Samba's registry (net conf)"
NOT_SHARES = frozenset({"global"})
# `smbgwctl import --adopt` puts this under a section it is handing over to a share file
# (model/smbconfedit.py): while it is there, a share file may declare that name.
HANDOVER_MARK = "# smbgw-agent: handed over to the share file"
_HANDOVER = re.compile(r"^\s*[#;]\s*smbgw-agent:\s*handed over\b")


def is_handover_mark(line: str) -> bool:
    return bool(_HANDOVER.match(line))


@dataclass(frozen=True)
class AdminSection:
    """A section the administrator defined: its name as written and where."""

    name: str
    file: str
    line: int
    handed_over: bool = False  # marked by `smbgwctl import --adopt`

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class AdminShares:
    """Share sections of the admin's configuration, by case-folded name."""

    sections: dict[str, AdminSection] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    # smbd also serves the shares of its registry (`include = registry`, `registry shares
    # = yes`, `config backend = registry`): no file holds them, `net conf` lists them.
    reads_registry: bool = False

    def get(self, name: str) -> AdminSection | None:
        return self.sections.get(name.casefold())

    def with_registry(self, names: list[str], problem: str | None = None) -> AdminShares:
        """These shares, and the registry's `names` (a file's section of the same name
        stays the one reported); `problem` when the registry could not be listed."""
        sections = dict(self.sections)
        for name in names:
            if name.casefold() not in NOT_SHARES:
                sections.setdefault(name.casefold(), AdminSection(name, REGISTRY, 0))
        problems = self.problems + ((problem,) if problem else ())
        return replace(self, sections=sections, problems=problems)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, joined text) with backslash continuations joined, as Samba does."""
    result: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        stripped = raw.rstrip()
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(raw)
        result.append((start, "".join(pending)))
        pending = []
    if pending:
        result.append((start, "".join(pending)))
    return result


def read_admin_shares(smb_conf: Path, managed_dir: Path) -> AdminShares:
    """Every share section the admin's smb.conf (and what it includes) defines.

    `managed_dir` is the agent's own output directory; includes below it are ours.
    A missing smb.conf defines nothing. Problems (an unreadable include, limits hit)
    are reported, never raised: the caller shows them and goes on.
    """
    found = AdminShares()
    problems: list[str] = []
    files: list[str] = []
    budget = [MAX_TOTAL_BYTES]
    managed = str(managed_dir).rstrip("/") + "/"

    def visit(path: Path, depth: int, in_global: bool) -> None:
        """`in_global`: the include line stood in [global] (or before any section)."""
        if depth > MAX_INCLUDE_DEPTH:
            problems.append(f"{path}: includes nested more than {MAX_INCLUDE_DEPTH} deep; not followed")
            return
        try:
            with open(path, "rb") as handle:
                data = handle.read(budget[0] + 1)
        except FileNotFoundError:
            if depth:
                problems.append(f"{path}: included but missing")
            return
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror}")
            return
        if len(data) > budget[0]:
            problems.append(f"{path}: more than {MAX_TOTAL_BYTES} bytes of configuration; the rest is not read")
            data = data[: budget[0]]
        budget[0] -= len(data)
        files.append(str(path))
        text = data.decode("utf-8", errors="replace")
        current: str | None = None  # the share section the lines belong to
        for number, line in _logical_lines(text):
            stripped = line.lstrip()
            if not stripped or stripped[0] in "#;":
                if current is not None and is_handover_mark(stripped):
                    found.sections[current] = replace(found.sections[current], handed_over=True)
                continue
            section = _SECTION.match(line)
            if section:
                name = section.group(1).strip()
                current = None
                in_global = name.casefold() == "global"
                if name and name.casefold() not in NOT_SHARES:
                    current = name.casefold()
                    found.sections.setdefault(current, AdminSection(name, str(path), number))
                continue
            if in_global and (_REGISTRY_SHARES.match(line) or _CONFIG_BACKEND_REGISTRY.match(line)):
                found.reads_registry = True
            include = _INCLUDE.match(line)
            if include:
                target = include.group(1)
                if target == "registry":
                    found.reads_registry = True
                if not target or "%" in target or target == "registry":
                    continue
                resolved = os.path.normpath(target if target.startswith("/") else str(path.parent / target))
                if (resolved + "/").startswith(managed) or resolved + "/" == managed:
                    continue
                visit(Path(resolved), depth + 1, in_global)

    visit(smb_conf, 0, True)
    found.files = tuple(files)
    found.problems = tuple(problems)
    return found
