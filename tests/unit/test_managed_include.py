"""Where the agent's include line goes in smb.conf (smbgw_agent/effects/samba.py).

smbd and testparm read the whole file, but `net` and winbindd load only the globals, and
that load stops at the first share section. Debian's smb.conf has [homes], [printers] and
[print$]: an include appended after them gave `net` none of the agent's globals (found
against a real AD DC: `net ads info` looked for realm '' in WORKGROUP). The line goes
before the first share section, and an old appended one is moved there.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from smbgw_agent.effects.samba import (
    MARKER,
    has_managed_include,
    mentions_managed_include,
    retarget_include,
    with_managed_include,
)

TARGET = Path("/etc/samba/smbgw/globals.conf")
LINE = f"include = {TARGET}"
DEBIAN = ("[global]\n   workgroup = WORKGROUP\n   server role = standalone server\n\n"
          "#======================= Share Definitions =======================\n\n"
          "[homes]\n   comment = Home Directories\n\n[printers]\n   path = /var/tmp\n")
APPENDED = f"{DEBIAN}{MARKER}\n{LINE}\n"


def test_the_line_goes_before_the_first_share_section() -> None:
    text = with_managed_include(DEBIAN, TARGET)
    assert text.index(LINE) < text.index("[homes]") and text.index(MARKER) == text.index(LINE) - len(MARKER) - 1
    assert text.replace(f"{MARKER}\n{LINE}\n\n", "") == DEBIAN, "the admin's lines stay byte for byte"
    assert has_managed_include(text, TARGET) and with_managed_include(text, TARGET) == text


def test_an_appended_line_of_an_older_version_is_moved_not_doubled() -> None:
    assert mentions_managed_include(APPENDED, TARGET) and not has_managed_include(APPENDED, TARGET)
    moved = with_managed_include(APPENDED, TARGET)
    assert moved.count(LINE) == 1 and moved.count(MARKER) == 1
    assert moved == with_managed_include(DEBIAN, TARGET)


@pytest.mark.parametrize(("text", "before"), [
    ("", None),
    ("[global]\n   a = b\n", None),
    ("   a = b\n[data]\n   path = /x", "[data]"),  # parameters before any header are global
    ("[GLOBALS]\n   a = b\n[Global]\n   c = d\n[homes]\n", "[homes]"),  # Samba's names for [global]
    ("[global]\n   x = 1 \\\n[homes]\n[data]\n", "[data]"),  # "[homes]" continues x's value
    ("[global]\n   include = /etc/samba/other.conf\n[data]\n", "[data]"),  # the admin's includes stay
])
def test_placement(text: str, before: str | None) -> None:
    placed = with_managed_include(text, TARGET)
    assert has_managed_include(placed, TARGET)
    if before is None:
        assert placed.endswith(f"{MARKER}\n{LINE}\n")
    else:
        assert placed.index(LINE) < placed.index(before)
    assert placed.replace(f"{MARKER}\n", "", 1).replace(f"{LINE}\n", "", 1).replace("\n\n", "\n") \
        .rstrip("\n") == text.replace("\n\n", "\n").rstrip("\n")


def test_a_candidate_copy_points_at_the_staged_globals() -> None:
    staged = Path("/etc/samba/smbgw/.staging/globals.conf")
    text = retarget_include(with_managed_include(DEBIAN, TARGET), TARGET, staged)
    assert f"include = {staged}" in text and LINE not in text


def test_net_reading_only_the_globals_sees_the_agents_realm(tmp_path: Path) -> None:
    """The real reader: `net` (globals only) finds the realm the included file sets."""
    net = shutil.which("net")
    assert net, "net (samba-common-bin) is needed"
    globals_file = tmp_path / "globals.conf"
    globals_file.write_text("[global]\n   security = ADS\n   realm = SMBGW.TEST\n   workgroup = SMBGW\n"
                            "   server role = member server\n")
    for name, text, sees in (("appended", f"{DEBIAN}include = {globals_file}\n", False),
                             ("placed", with_managed_include(DEBIAN, globals_file), True)):
        conf = tmp_path / f"{name}.conf"
        conf.write_text(text)
        result = subprocess.run([net, "-s", str(conf), "-d3", "ads", "info"], capture_output=True, text=True,
                                timeout=60, check=False)
        found = "realm 'SMBGW.TEST'" in result.stdout + result.stderr
        assert found == sees, (name, (result.stdout + result.stderr)[-800:])
