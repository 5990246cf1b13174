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
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
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


def resolve_desired(
    scan: ScanResult,
    shares_dir: Path,
    lastgood: Mapping[str, ShareSpec],
    applied: Mapping[str, ShareSpec],
    node: str,
    cluster_nodes: Collection[str] = (),
) -> Desired:
    files: dict[str, FileStatus] = {}
    claims: dict[str, list[ShareSpec]] = defaultdict(list)
    fallbacks: dict[str, ShareSpec] = {}
    for name, result in scan.files.items():
        warnings = list(getattr(result, "warnings", ()))
        if result.valid and result.spec is not None:
            claims[result.spec.key].append(result.spec)
            files[name] = FileStatus(name, True, result.spec.name, serving="current", warnings=warnings)
        else:
            previous = lastgood.get(name)
            status = FileStatus(
                name, False, previous.name if previous else None, list(result.problems), warnings=warnings
            )
            files[name] = status
            if status.unsafe:
                status.serving = "refused"
            elif previous is not None:
                fallbacks[previous.key] = previous
    shares: dict[str, ShareSpec] = {}
    updates: list[ShareSpec] = []
    for key, specs in claims.items():
        if len(specs) == 1:
            shares[key] = specs[0]
            previous = lastgood.get(specs[0].file)
            # Identity first: the scanner hands back the same spec while a file is
            # unchanged, and comparing 10,000 specs field by field every pass adds up.
            if previous is not specs[0] and previous != specs[0]:
                updates.append(specs[0])
            continue
        names = sorted(spec.file for spec in specs)
        for spec in specs:
            # Full paths: `smbgwctl validate` compares a file outside shares.d that may
            # have the same name as the one inside.
            others = ", ".join(str(shares_dir / n) for n in names if n != spec.file)
            status = files[spec.file]
            status.valid = False
            status.serving = "none"
            status.problems.append(Problem(
                shares_dir / spec.file, f"share name {spec.name!r} is also declared in {others}", "name",
                line=scan.files[spec.file].name_line,
            ))
        if key in applied:
            shares[key] = applied[key]
            for spec in specs:
                if spec.file == applied[key].file:
                    files[spec.file].serving = "applied"
    for key, spec in fallbacks.items():
        if key not in claims:
            shares[key] = spec
            files[spec.file].serving = "last-good"
    other_node: dict[str, str] = {}
    for key, spec in list(shares.items()):
        if spec.node is not None and spec.node != node:
            other_node[key] = spec.node
            del shares[key]
            if spec.file in files:  # an applied spec's file may be gone (duplicates)
                files[spec.file].serving = "other-node"
                if cluster_nodes and spec.node not in cluster_nodes:
                    files[spec.file].warnings.append(Problem(
                        shares_dir / spec.file, f"node {spec.node!r} is not a node of this cluster (its members: "
                        f"{', '.join(sorted(cluster_nodes))}): no node serves this share", "node"))
    drops = [name for name in lastgood if name not in scan.files]
    return Desired(shares, files, other_node, updates, drops)
