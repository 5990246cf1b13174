"""Editing the administrator's smb.conf for `smbgwctl import --adopt`, pure.

Adoption hands a hand-written share over to the agent without a moment in which the
share is missing, in two edits of the file that holds its section:

1. `mark_handed_over` puts a comment line under the section's header. The agent, which
   otherwise never declares a share the administrator wrote (Samba would merge the two
   sections), accepts a share file of that name while the mark is there. For that while
   smbd sees both sections and merges them: the import adopts only shares whose every
   parameter the share file carries, so the merge is the share as it was.
2. Once the agent serves the share, `remove_sections` takes the section out.

Only root can write smb.conf, so the mark is exactly as trusted as the section itself.
Lines are kept byte for byte except the ones added or removed; a section ends where the
next header starts (Samba has no end marker), and backslash continuations stay with the
line they continue.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from smbgw_agent.model.smbconf import HANDOVER_MARK, is_handover_mark

_SECTION = re.compile(r"^\s*\[([^\]]*)\]")

def _section_of(line: str, continued: bool) -> str | None:
    if continued:
        return None
    found = _SECTION.match(line)
    return found.group(1).strip().casefold() if found else None


def _walk(text: str) -> list[tuple[str, str | None]]:
    """Each physical line with the case-folded section it opens (None for other lines)."""
    result: list[tuple[str, str | None]] = []
    continued = False
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        result.append((line, _section_of(body, continued)))
        stripped = body.lstrip()
        continued = body.rstrip().endswith("\\") and not stripped.startswith(("#", ";"))
    return result


def mark_handed_over(text: str, names: Collection[str]) -> str:
    """`text` with the hand-over mark under the header of each section in `names`
    (case-insensitive), once."""
    wanted = {name.casefold() for name in names}
    lines = _walk(text)
    out: list[str] = []
    for index, (line, opens) in enumerate(lines):
        out.append(line if line.endswith("\n") else line + "\n")
        if opens in wanted:
            following = lines[index + 1][0] if index + 1 < len(lines) else ""
            if not is_handover_mark(following):
                out.append(HANDOVER_MARK + "\n")
    return "".join(out)


def remove_sections(text: str, names: Collection[str]) -> str:
    """`text` without the sections in `names` (case-insensitive): each header and every
    line up to the next header. A comment block right above a removed header belongs to
    the next section as far as Samba is concerned, so it is kept."""
    wanted = {name.casefold() for name in names}
    out: list[str] = []
    dropping = False
    for line, opens in _walk(text):
        if opens is not None:
            dropping = opens in wanted
        if not dropping:
            out.append(line)
    return "".join(out)


def sections_in(text: str) -> list[str]:
    """The case-folded names of the sections `text` opens, in order."""
    return [opens for _, opens in _walk(text) if opens is not None]
