"""Samba configuration plumbing shared by the deployment-mode plugins.

Two jobs: keep one marked `include =` line in the admin's smb.conf (never touching
their own lines), and ask `testparm` whether a candidate configuration is acceptable.
testparm exits 0 for unknown parameters, so its stderr is read as well.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smbgw_agent.effects.runner import CommandError, Runner

MARKER = "# smbgw-agent: the next line is managed by smbgw-agent; do not edit or move it"
_INCLUDE = re.compile(r"^\s*include\s*=\s*(.+?)\s*$", re.IGNORECASE)
_TESTPARM_ERRORS = (
    re.compile(r"Unknown parameter encountered", re.IGNORECASE),
    re.compile(r"Ignoring unknown parameter", re.IGNORECASE),
    re.compile(r"Error loading services", re.IGNORECASE),
    re.compile(r"value is not boolean", re.IGNORECASE),
    re.compile(r"invalid .*value", re.IGNORECASE),
    re.compile(r"^ERROR", re.IGNORECASE),
    re.compile(r"Can't load", re.IGNORECASE),
)


_GLOBAL_SECTIONS = ("global", "globals")  # Samba takes both for [global]


def _logical_lines(text: str) -> list[tuple[int, int, str]]:
    """smb.conf's lines as Samba's parser sees them: (first physical line, last physical
    line, the joined text), a line ending in a backslash continued by the next."""
    physical = text.splitlines()
    found = []
    index = 0
    while index < len(physical):
        first, joined = index, physical[index]
        while joined.endswith("\\") and index + 1 < len(physical):
            index += 1
            joined = joined[:-1] + physical[index]
        found.append((first, index, joined))
        index += 1
    return found


def _section(line: str) -> str | None:
    """The section a header line opens (lower case), None for any other line."""
    stripped = line.strip()
    if stripped.startswith("[") and "]" in stripped:
        return stripped[1:stripped.index("]")].strip().casefold()
    return None


def _first_share_header(text: str) -> int | None:
    """The physical line of the first section header that is not [global], if any."""
    for first, _last, line in _logical_lines(text):
        section = _section(line)
        if section is not None and section not in _GLOBAL_SECTIONS:
            return first
    return None


def _managed_lines(text: str, target: Path) -> list[int]:
    """The physical lines of our include (and of the marker just above each)."""
    physical = text.splitlines()
    lines: list[int] = []
    for first, last, line in _logical_lines(text):
        match = _INCLUDE.match(line)
        if match and match.group(1) == str(target):
            lines.extend(range(first, last + 1))
            if first > 0 and physical[first - 1].strip() == MARKER:
                lines.append(first - 1)
    return sorted(lines)


def mentions_managed_include(smb_conf_text: str, target: Path) -> bool:
    """Our include line is somewhere in smb.conf (well placed or not)."""
    return bool(_managed_lines(smb_conf_text, target))


def has_managed_include(smb_conf_text: str, target: Path) -> bool:
    """Our include line is in smb.conf, where every reader of it sees it: in the global
    part, before the first share section (see `with_managed_include`)."""
    placed = [line for line in _managed_lines(smb_conf_text, target) if smb_conf_text.splitlines()[line].strip()
              != MARKER]
    if not placed:
        return False
    first_share = _first_share_header(smb_conf_text)
    return first_share is None or placed[0] < first_share


def with_managed_include(smb_conf_text: str, target: Path) -> str:
    """smb.conf text with our include line (and its marker) in the global part: right
    before the first share section, or at the end if there is none. An include line of
    ours elsewhere (after a share section, as older versions appended it) is moved.

    Why there: smbd and testparm read the whole file, but `net`, winbindd and smbd's
    first read of its messaging setup load the globals only, and that load stops at the
    first share section: an include after [homes] would give them none of the globals
    (`security = ADS`, the realm, idmap). The included file opens its own [global] and
    ends by including the shares, so the admin's sections that follow stay theirs. The
    admin's lines stay byte for byte as they were.
    """
    if has_managed_include(smb_conf_text, target):
        return smb_conf_text
    drop = set(_managed_lines(smb_conf_text, target))
    kept = [line for index, line in enumerate(smb_conf_text.splitlines(keepends=True)) if index not in drop]
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    text = "".join(kept)
    ours = [f"{MARKER}\n", f"include = {target}\n"]
    first_share = _first_share_header(text)
    if first_share is None:
        return text + "".join(ours)
    lines = text.splitlines(keepends=True)
    return "".join(lines[:first_share] + ours + ["\n"] + lines[first_share:])


def retarget_include(smb_conf_text: str, old: Path, new: Path) -> str:
    """The same text with the managed include pointing at `new` (for a candidate copy)."""
    lines: list[str] = []
    found = False
    for line in smb_conf_text.splitlines():
        match = _INCLUDE.match(line)
        if match and match.group(1) == str(old):
            lines.append(f"include = {new}")
            found = True
        else:
            lines.append(line)
    text = "\n".join(lines) + "\n"
    return text if found else with_managed_include(text, new)


# testparm prints this on stderr once it has parsed the whole configuration. Without
# it the run is not an answer (a stand-in, a crash, garbage), whatever the exit code.
LOADED_OK = "Loaded services file OK."
TESTPARM_TIMEOUT = 30.0


@dataclass(frozen=True)
class TestparmResult:
    ok: bool
    errors: tuple[str, ...]
    returncode: int = 0
    stderr: str = ""
    # No verdict at all: testparm missing, hanging, killed, or saying nothing we know.
    # Bisecting would only repeat the failure per share, so callers fail the lot at once.
    unavailable: bool = False

    def excluding(self, baseline: Sequence[str]) -> TestparmResult:
        """The same run judged again without the errors the admin's own config causes."""
        if self.unavailable or (not self.stderr and not self.returncode):
            return self  # the command itself failed: nothing to subtract
        errors = testparm_errors(self.returncode, self.stderr, baseline)
        return TestparmResult(not errors, errors, self.returncode, self.stderr)


def testparm_errors(returncode: int, stderr: str, baseline: Sequence[str] = ()) -> tuple[str, ...]:
    """Error lines of a testparm run, minus those the admin's own config already causes."""
    known = set(baseline)
    errors = [
        line.strip()
        for line in stderr.splitlines()
        if any(p.search(line) for p in _TESTPARM_ERRORS) and line.strip() not in known
    ]
    if returncode != 0 and not errors:
        errors.append(f"testparm exited {returncode}")
    return tuple(dict.fromkeys(errors))


def run_testparm(runner: Runner, smb_conf: Path, baseline: Sequence[str] = ()) -> TestparmResult:
    """Load `smb_conf` as smbd would and judge it by testparm's stderr and exit code.

    `--parameter-name` keeps testparm from printing the whole configuration: it still
    loads and checks every section, but the dump of 10,000 shares is megabytes that
    nobody reads (and more than the runner's output cap, which made a cold start at that
    size fail every share as "could not validate")."""
    try:
        result = runner.run(
            ["testparm", "-s", "--suppress-prompt", "--parameter-name", "server role", str(smb_conf)],
            check=False, timeout=TESTPARM_TIMEOUT,
        )
    except CommandError as exc:
        return TestparmResult(False, (str(exc),), unavailable=True)
    errors = testparm_errors(result.returncode, result.stderr, baseline)
    if not errors and LOADED_OK not in result.stderr:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1][:200]
        message = f"testparm gave no recognisable answer (exit {result.returncode}: {last!r})"
        return TestparmResult(False, (message,), result.returncode, result.stderr, unavailable=True)
    return TestparmResult(not errors, errors, result.returncode, result.stderr)


REGISTRY_TIMEOUT = 10.0


def registry_share_names(runner: Runner, smb_conf: Path) -> list[str]:
    """The shares Samba's registry defines for `smb_conf` (`net conf listshares`), as
    written. Only for a configuration that reads the registry: where there is none, `net
    conf` creates an empty one. CommandError when `net` fails, hangs or is missing."""
    done = runner.run(["net", "-s", str(smb_conf), "conf", "listshares"], timeout=REGISTRY_TIMEOUT)
    names = [line.strip() for line in done.stdout.splitlines()]
    # It lists the registry's [global] too, when that holds parameters (`include = registry`).
    return [name for name in names if name and name.lower() != "global"]


def reload_command(smb_conf: Path) -> list[str]:
    return ["smbcontrol", "-s", str(smb_conf), "smbd", "reload-config"]
