"""Ordinary sequences of file operations that used to crash the agent, and the class
behind them: no exception escapes a pass, whatever a share, a file name or the state
throws. Real agent, real smbd, in a sandbox root."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from devtools.sandbox import Sandbox
from tests.support.faults import small_tmpfs
from tests.support.procs import RestartableAgent, wait_served, write_agent_toml

pytestmark = pytest.mark.integration


def test_deleting_a_share_that_cannot_be_served_keeps_the_agent_up(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    write_agent_toml(box)
    restartable.start()
    # The administrator's typo: the share's parent is a regular file.
    (box.root / "srv/blocker").write_text("not a directory\n")
    (box.shares_dir / "typo.toml").write_text('path = "/srv/blocker/sub"\n')
    restartable.wait_status(lambda s: s["shares"].get("typo", {}).get("state") == "storage-missing")
    # A share whose apply fails and is waiting for its retry.
    readonly = box.root / "srv/ro"
    with small_tmpfs(readonly, "1m"):
        subprocess.run(["mount", "-o", "remount,ro", str(readonly)], check=True)
        (box.shares_dir / "stuck.toml").write_text('path = "/srv/ro/data"\n')
        restartable.wait_status(lambda s: s["shares"].get("stuck", {}).get("state") == "failed")
        # Deleting both files: the agent stays up and forgets them.
        (box.shares_dir / "typo.toml").unlink()
        (box.shares_dir / "stuck.toml").unlink()
        status = restartable.wait_status(lambda s: not s["shares"] and s["pass"]["ok"])
        time.sleep(3)  # past the first retry time of the deleted share
        assert restartable.running, restartable.log_text()[-3000:]
        assert status["pass_errors"] >= 1 and "internal error" not in restartable.log_text()
    box.share_dir("after")
    (box.shares_dir / "after.toml").write_text('path = "/srv/smb/after"\n')
    wait_served(box, "after")


def test_a_file_name_that_is_not_utf8_is_an_invalid_file(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    box = sandbox
    write_agent_toml(box)
    restartable.start()
    bad = os.path.join(os.fsencode(box.shares_dir), b"bad\xff.toml")
    with open(bad, "wb") as handle:
        handle.write(b'path = "/srv/smb/x"\n')
    status = restartable.wait_status(lambda s: any(f.startswith("bad") for f in s.get("files", {})))
    (name, info), = ((f, i) for f, i in status["files"].items() if f.startswith("bad"))
    assert name == "bad\\udcff.toml" and not info["valid"]
    assert "not valid UTF-8" in info["problems"][0]["message"]
    # And keeps working across restarts while the file is there.
    restartable.stop()
    restartable.start()
    box.share_dir("fine")
    (box.shares_dir / "fine.toml").write_text('path = "/srv/smb/fine"\n')
    wait_served(box, "fine")
    assert restartable.running
    assert restartable.ctl("status").returncode == 1


def test_control_characters_in_option_names_are_refused_before_anything_is_created(
    sandbox: Sandbox, restartable: RestartableAgent
) -> None:
    box = sandbox
    write_agent_toml(box, "allow_custom_options = true\n")
    restartable.start()
    (box.shares_dir / "opts.toml").write_text('path = "/srv/smb/opts"\n[options]\n"name\\nx" = "1"\n')
    status = restartable.wait_status(lambda s: "opts.toml" in s.get("files", {}))
    problem = status["files"]["opts.toml"]["problems"][0]
    assert "control characters" in problem["message"] and problem["line"] == 3, problem
    assert not (box.root / "srv/smb/opts").exists()


def test_every_problem_names_its_line(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    box = sandbox
    write_agent_toml(box)
    restartable.start()
    (box.shares_dir / "dotted.toml").write_text('path = "/srv/smb/d"\nextra.nested.key = 1\n')
    (box.shares_dir / "array.toml").write_text('path = "/srv/smb/a"\n\n[[frob]]\nx = 1\n')
    status = restartable.wait_status(lambda s: {"dotted.toml", "array.toml"} <= set(s.get("files", {})))
    assert [p["line"] for p in status["files"]["dotted.toml"]["problems"]] == [2]
    assert [p["line"] for p in status["files"]["array.toml"]["problems"]] == [3]
