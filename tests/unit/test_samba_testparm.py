"""testparm judged with real testparm: the admin's own errors are not held against a share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from smbgw_agent.effects.runner import Runner
from smbgw_agent.effects.samba import run_testparm

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("testparm") is None, reason="testparm (samba) not installed"),
]


def test_baseline_errors_of_the_admins_config_are_subtracted(tmp_path: Path) -> None:
    admin = tmp_path / "admin.conf"
    admin.write_text("[global]\n\tadmin typo param = 1\n")
    ours = tmp_path / "ours.conf"
    ours.write_text("[global]\n\tadmin typo param = 1\n[share]\n\tpath = /srv\n")
    theirs_and_ours = tmp_path / "bad.conf"
    theirs_and_ours.write_text("[global]\n\tadmin typo param = 1\n[share]\n\tpath = /srv\n\tour typo = 1\n")
    baseline = run_testparm(Runner(), admin).errors
    assert any("admin typo param" in e for e in baseline)
    clean = run_testparm(Runner(), ours)
    assert not clean.ok and clean.excluding(baseline).ok
    bad = run_testparm(Runner(), theirs_and_ours).excluding(baseline)
    assert not bad.ok and all("our typo" in e for e in bad.errors), bad.errors


def test_a_command_that_did_not_run_stays_a_failure() -> None:
    result = run_testparm(Runner(), Path("/nonexistent/dir/smb.conf"))
    assert not result.ok
    assert not result.excluding(result.errors[:0]).ok
