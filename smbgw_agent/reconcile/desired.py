"""From the scanned files to the set of shares this node should serve.

Pure logic, no I/O: the rules that decide what survives a broken or conflicting file
live here so they can be tested exhaustively.

- A valid file declares its share.
- An invalid file keeps its share on the file's last good spec (if it ever had one),
  unless one of its problems is security-relevant (a path that now escapes, a name the
  administrator's own smb.conf defines): then the share goes down at once, because the
  last good spec may be exactly what became unsafe (fail closed).
- Two valid files declaring the same name (case-insensitively) are both reported and
  neither wins: the share keeps what is live (its applied spec) until the conflict is
  resolved, so a stray copy of a file cannot change or remove a working share.
- Shares placed on another node (`node = "..."`) are not served here.

A valid file's status is a function of its scan result alone, and the scanner hands
back the same result object while a file is unchanged: so statuses are reused by
identity from one pass to the next (`Desired.reusable`), never changed in place (a
conflict or a placement makes a new one), and status.json reuses their entries the
same way. At 10,000 shares that is most of what a one-change pass costs here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from smbgw_agent.model.errors import Problem
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.reconcile.scanner import ScanResult

# What an invalid file's share is served from, in words (log lines and `smbgwctl status`).
SERVING_NOTES = {
    "last-good": "serving its last good version",
    "applied": "serving the live version",
    "refused": "REFUSED: the share is down",
}


@dataclass
class FileStatus:
    file: str
    valid: bool
    share: str | None
    problems: list[Problem] = field(default_factory=list)
    serving: str = "none"  # "current", "last-good", "applied", "none", "other-node", "refused"
    warnings: list[Problem] = field(default_factory=list)

    @property
    def unsafe(self) -> bool:
        return any(p.security for p in self.problems)

    def to_dict(self) -> dict[str, object]:
        return {
            "valid": self.valid,
            "share": self.share,
            "serving": self.serving,
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [p.to_dict() for p in self.warnings],
        }


@dataclass
class Desired:
    shares: dict[str, ShareSpec]
    files: dict[str, FileStatus]
    other_node: dict[str, str]
    lastgood_updates: list[ShareSpec]
    lastgood_drops: list[str]
    # Equal to the last good spec but another object (read back from the database after a
    # restart): recorded in memory only, so later passes compare by identity.
    lastgood_same: list[ShareSpec] = field(default_factory=list)
    # file -> (its scan result, its status as a valid file): the next pass's `reuse`.
    reusable: dict[str, tuple[object, FileStatus]] = field(default_factory=dict)


def resolve_desired(
    scan: ScanResult,
    shares_dir: Path,
    lastgood: Mapping[str, ShareSpec],
    applied: Mapping[str, ShareSpec],
    node: str,
    cluster_nodes: Collection[str] = (),
    reuse: Mapping[str, tuple[object, FileStatus]] | None = None,
) -> Desired:
    files: dict[str, FileStatus] = {}
    reusable: dict[str, tuple[object, FileStatus]] = {}
    # key -> the spec declaring it; where more than one file does, all of them in
    # `conflicts`. (No list per share: at 10,000 shares every object a pass keeps alive
    # for a while is work for the garbage collector.)
    claimed: dict[str, ShareSpec] = {}
    conflicts: dict[str, list[ShareSpec]] = {}
    fallbacks: dict[str, ShareSpec] = {}
    reuse = reuse or {}
    for name, result in scan.files.items():
        spec = result.spec
        if spec is not None and not result.problems:
            key = spec.key
            if key in claimed:
                conflicts.setdefault(key, [claimed[key]]).append(spec)
            else:
                claimed[key] = spec
            known = reuse.get(name)
            if known is None or known[0] is not result:
                known = (result, FileStatus(name, True, spec.name, serving="current", warnings=list(result.warnings)))
            files[name] = known[1]
            reusable[name] = known
        else:
            previous = lastgood.get(name)
            status = FileStatus(
                name, False, previous.name if previous else None, list(result.problems),
                warnings=list(result.warnings),
            )
            files[name] = status
            if status.unsafe:
                status.serving = "refused"
            elif previous is not None:
                fallbacks[previous.key] = previous
    shares: dict[str, ShareSpec] = {}
    updates: list[ShareSpec] = []
    same: list[ShareSpec] = []
    for key, spec in claimed.items():
        if key in conflicts:
            continue
        shares[key] = spec
        previous = lastgood.get(spec.file)
        # Identity first: the scanner hands back the same spec while a file is
        # unchanged, and comparing 10,000 specs field by field every pass adds up.
        if previous is not spec:
            (same if previous == spec else updates).append(spec)
    for key, specs in conflicts.items():
        names = sorted(spec.file for spec in specs)
        for spec in specs:
            # Full paths: `smbgwctl validate` compares a file outside shares.d that may
            # have the same name as the one inside.
            others = ", ".join(str(shares_dir / n) for n in names if n != spec.file)
            status = files[spec.file]
            files[spec.file] = replace(status, valid=False, serving="none", problems=[*status.problems, Problem(
                shares_dir / spec.file, f"share name {spec.name!r} is also declared in {others}", "name",
                line=scan.files[spec.file].name_line,
            )])
            del reusable[spec.file]
        if key in applied:
            shares[key] = applied[key]
            for spec in specs:
                if spec.file == applied[key].file:
                    files[spec.file].serving = "applied"  # a status of this pass's own
    for key, spec in fallbacks.items():
        if key not in claimed:
            shares[key] = spec
            files[spec.file].serving = "last-good"  # an invalid file's status: this pass's own
    other_node: dict[str, str] = {}
    placed = [(key, spec.node) for key, spec in shares.items() if spec.node is not None and spec.node != node]
    for key, placed_on in placed:
        spec = shares.pop(key)
        other_node[key] = placed_on
        if spec.file in files:  # an applied spec's file may be gone (duplicates)
            status = files[spec.file]
            warnings = list(status.warnings)
            if cluster_nodes and placed_on not in cluster_nodes:
                warnings.append(Problem(
                    shares_dir / spec.file, f"node {placed_on!r} is not a node of this cluster (its members: "
                    f"{', '.join(sorted(cluster_nodes))}): no node serves this share", "node"))
            files[spec.file] = replace(status, serving="other-node", warnings=warnings)
            # Not reused: the placement depends on this node and the cluster too.
            reusable.pop(spec.file, None)
    drops = [name for name in lastgood if name not in scan.files]
    return Desired(shares, files, other_node, updates, drops, same, reusable)
