"""Time: a pass has a budget, the watchdog is fed only while a pass is alive within it, and
no delay depends on the wall clock.

Real agent, real smbd, a real notify socket (systemd's side of sd_notify), a stand-in
testparm that hangs (from the fault kit), and the test clock stand-in (tests/support/clock)
stepping the agent's wall clock back an hour while its monotonic clock runs on. (libfaketime
cannot do it for Python 3.11: its clock_nanosleep turns `time.sleep`, and with it every
`subprocess` wait that has to sleep, into EINVAL.)
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from devtools.sandbox import Sandbox, free_port
from tests.support.agent import REPO
from tests.support.faults import PLUGIN_TOOLS, ToolShed, small_tmpfs
from tests.support.procs import NotifySocket, RestartableAgent, wait_served

pytestmark = pytest.mark.integration


def agent_toml(box: Sandbox, extra: str = "") -> None:
    (box.root / "etc/smbgw/agent.toml").write_text(
        f'[agent]\nnode = "sandbox"\nallowed_roots = ["/srv"]\n{extra}\n'
        f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n'
    )


def declare(box: Sandbox, name: str, path: str | None = None) -> None:
    if path is None:
        box.share_dir(name)
    (box.shares_dir / f"{name}.toml").write_text(f'path = "{path or "/srv/smb/" + name}"\n')


def test_a_hanging_testparm_fails_the_changed_shares_within_the_pass_budget(
    sandbox: Sandbox, restartable: RestartableAgent, tmp_path: Path
) -> None:
    box = sandbox
    shed = ToolShed(box.root / "faultbin", PLUGIN_TOOLS["mode_native"])
    agent_toml(box, 'pass_timeout = "12s"\n')
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        restartable.env = {
            "PATH": shed.path, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "4000000",
        }
        restartable.start()
        declare(box, "steady")
        wait_served(box, "steady")

        for name in "abcd":
            box.share_dir(name)
        shed.break_tool("testparm", "hanging")
        broke = time.monotonic()
        for name in "abcd":
            declare(box, name, f"/srv/smb/{name}")
        status = restartable.wait_status(
            lambda s: all(s["shares"].get(n, {}).get("state") == "failed" for n in "abcd"), timeout=40
        )
        failed_after = time.monotonic() - broke
        calls = shed.count("testparm")
        shed.restore("testparm")
        # One run per pass (the four files may arrive in two passes); bisecting four shares
        # would have cost seven runs of 12 s each.
        assert calls <= 2, f"testparm was run {calls} times: a hang must not be bisected"
        assert "could not validate" in status["shares"]["a"]["error"]
        assert status["pass"]["duration_seconds"] <= 14, status["pass"]
        assert failed_after < 20, f"the pass took {failed_after:.0f}s"
        # The watchdog was fed all through the pass, never with a gap near WatchdogSec.
        pings = [m.at for m in notify.snapshot() if m.fields.get("WATCHDOG") == "1" and m.at >= broke]
        gaps = [b - a for a, b in zip([broke, *pings], pings, strict=False)]
        assert pings and max(gaps) < 3.0, f"watchdog gaps during the pass: {max(gaps):.1f}s"
        assert box.smbclient("steady", "ls").returncode == 0
        # testparm works again: the failed shares are retried and served.
        for name in "abcd":
            wait_served(box, name, timeout=40)
    finally:
        notify.close()


def test_a_wall_clock_step_back_does_not_stall_a_retry(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    box = sandbox
    offset = box.root / "clock-offset"
    offset.write_text("0\n")
    agent_toml(box)
    readonly = box.root / "srv/ro"
    with small_tmpfs(readonly, "4m"):
        subprocess.run(["mount", "-o", "remount,ro", str(readonly)], check=True)
        restartable.env = {"PYTHONPATH": f"{REPO / 'tests/support/clock'}:{REPO}",
                           "SMBGW_TEST_CLOCK_FILE": str(offset)}
        restartable.start()
        declare(box, "data", "/srv/ro/data")  # mkdir fails: read-only file system
        restartable.wait_status(lambda s: s["shares"].get("data", {}).get("failures", 0) >= 3, timeout=40)
        # The next retry is 8 s away. Step the wall clock back an hour and fix the cause.
        offset.write_text("-3600\n")
        time.sleep(0.2)
        subprocess.run(["mount", "-o", "remount,rw", str(readonly)], check=True)
        fixed = time.monotonic()
        try:
            # The retry comes 8 s after the third failure, or 16 s after a fourth that a
            # loaded machine let happen before the remount: well within 45 s, an hour
            # before a retry timed by the stepped wall clock.
            wait_served(box, "data", timeout=45)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nagent log:\n{restartable.log_text()[-4000:]}") from None
        print(f"retried and served {time.monotonic() - fixed:.1f}s after the fix")
        restartable.stop()
    assert "internal error" not in restartable.log_text()
