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


def has_managed_include(smb_conf_text: str, target: Path) -> bool:
    for line in smb_conf_text.splitlines():
        match = _INCLUDE.match(line)
        if match and match.group(1) == str(target):
            return True
    return False


def with_managed_include(smb_conf_text: str, target: Path) -> str:
    """smb.conf text with our include line appended, unless it is already present.

    Appending (rather than inserting under [global]) is safe because the included file
    opens its own [global] section; the admin's lines stay byte-for-byte as they were.
    """
    if has_managed_include(smb_conf_text, target):
        return smb_conf_text
    text = smb_conf_text
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text}{MARKER}\ninclude = {target}\n"


def retarget_include(smb_conf_text: str, old: Path, new: Path) -> str:
    """The same text with the managed include pointing at `new` (for a candidate copy)."""
    lines = []
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
    try:
        result = runner.run(
            ["testparm", "-s", "--suppress-prompt", str(smb_conf)], check=False, timeout=TESTPARM_TIMEOUT
        )
    except CommandError as exc:
        return TestparmResult(False, (str(exc),), unavailable=True)
    errors = testparm_errors(result.returncode, result.stderr, baseline)
    if not errors and LOADED_OK not in result.stderr:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1][:200]
        message = f"testparm gave no recognisable answer (exit {result.returncode}: {last!r})"
        return TestparmResult(False, (message,), result.returncode, result.stderr, unavailable=True)
    return TestparmResult(not errors, errors, result.returncode, result.stderr)


def reload_command(smb_conf: Path) -> list[str]:
    return ["smbcontrol", "-s", str(smb_conf), "smbd", "reload-config"]
