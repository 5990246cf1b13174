"""SIGKILL the agent in the middle of passes: the live configuration is never half-written,
a restart converges, and a restart with nothing to do changes nothing.

Real agent process, real smbd, real testparm and smbclient, in a sandbox root.
Set SMBGW_CRASH_SEED to replay a run; the seed is in every failure message.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import served
from tests.support.procs import RestartableAgent, check_with_testparm, lasting_temporaries, temporaries, wait_served

pytestmark = pytest.mark.integration

# CI: 30 kills among passes over 300 shares; `make test-long`: 200 kills, 1,000 shares.
SHARES = int(os.environ.get("SMBGW_KILL_SHARES", "300"))
ROUNDS = int(os.environ.get("SMBGW_KILLS", "30"))
INCLUDE = re.compile(r"^\s*include\s*=\s*(.+?)\s*$", re.IGNORECASE)
# Crash leftovers of atomic writes in /etc/samba/smbgw, /etc/samba and /run/smbgw are not
# cleaned up yet (see test_leftovers_of_interrupted_writes_are_cleaned_up). While that bug
# is open, the random-kill test tolerates exactly the leftovers present right after a kill.
TOLERATE_UNCLEANED_CRASH_LEFTOVERS = False


# ---- helpers -------------------------------------------------------------------------------------


def declare(box: Sandbox, name: str, comment: str) -> None:
    """Write a share file the way a careful admin tool does: to a dotfile, then rename."""
    target = box.shares_dir / f"{name}.toml"
    temp = box.shares_dir / f".{name}.toml.new"
    temp.write_text(f'path = "/srv/smb/{name}"\ncomment = "{comment}"\n')
    os.replace(temp, target)


def generated_shares(box: Sandbox) -> dict[str, str]:
    """Live generated share files by the share they declare: {name: file content}."""
    result = {}
    for path in box.paths.samba_dir.glob("*.conf"):
        if path.name.startswith("."):
            continue
        text = path.read_text()
        sections = [line.strip()[1:-1] for line in text.splitlines() if line.startswith("[")]
        if sections and sections != ["global"]:
            assert len(sections) == 1, f"{path} declares several sections: {sections}"
            result[sections[0]] = text
    return result


def live_config_problems(box: Sandbox) -> list[str]:
    """What would be wrong with the configuration smbd reads: every live file passes
    `testparm -s`, every include resolves, and nothing live points into a staging area.

    smb.conf, globals.conf and shares.conf are checked one by one; the share files in one
    testparm run over a list including each of them (testparm reads each included file
    on its own), and one by one only if that run finds a problem. The torn-file check in
    the test is stricter still: each file must be byte-for-byte a complete version.
    """
    samba_dir = box.paths.samba_dir
    files = [box.smb_conf]
    if samba_dir.is_dir():
        files += sorted(p for p in samba_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    singles = [f for f in files if f.name in ("smb.conf", "globals.conf", "shares.conf")]
    shares = [f for f in files if f not in singles]
    batch = box.root / "check-all-shares.conf"
    batch.write_text("".join(f"include = {f}\n" for f in shares))
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = dict(zip([*singles, batch], pool.map(check_with_testparm, [*singles, batch]), strict=True))
    if verdicts.pop(batch):
        with ThreadPoolExecutor(max_workers=4) as pool:
            verdicts.update(zip(shares, pool.map(check_with_testparm, shares), strict=True))
    batch.unlink()
    problems = [f"{f}: {' / '.join(errors)}" for f, errors in verdicts.items() if errors]
    for file in files:
        text = file.read_text()
        if text and not text.endswith("\n"):
            problems.append(f"{file}: does not end with a newline (truncated?)")
        for line in text.splitlines():
            match = INCLUDE.match(line)
            if match:
                target = Path(match.group(1))
                if not target.is_file():
                    problems.append(f"{file}: includes missing {target}")
                if ".staging" in target.parts:
                    problems.append(f"{file}: includes a staged file {target}")
    return problems


def debris_directories(box: Sandbox) -> tuple[Path, ...]:
    return (
        box.paths.samba_dir, box.smb_conf.parent, box.paths.run_dir, box.paths.state_dir,
        box.paths.samba_dir / ".staging",
    )


def converged(status: dict[str, Any], expected: dict[str, str]) -> bool:
    shares = status.get("shares", {})
    return (
        bool(status.get("pass", {}).get("ok"))
        and set(shares) == set(expected)
        and all(s["state"] == "served" and s["serving"] == "declared" for s in shares.values())
    )


# ---- random kills ------------------------------------------------------------------------------


def time_a_pass_over(box: Sandbox, agent: RestartableAgent, count: int) -> float:
    """Seconds from dropping `count` share files to all of them served; they are removed
    again afterwards (untimed)."""
    names = [f"calibrate{i:04d}" for i in range(count)]
    for name in names:
        box.share_dir(name)
    began = time.monotonic()
    for name in names:
        declare(box, name, "calibration")
    agent.wait_status(lambda s: converged(s, dict.fromkeys(names, "")), timeout=120)
    took = time.monotonic() - began
    for name in names:
        (box.shares_dir / f"{name}.toml").unlink()
    agent.wait_status(lambda s: converged(s, {}), timeout=120)
    return took


def test_sigkill_mid_pass_never_leaves_half_written_config(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    seed = int(os.environ.get("SMBGW_CRASH_SEED", random.SystemRandom().randrange(1 << 32)))
    rng = random.Random(seed)
    box = sandbox
    restartable.start()
    # Kills must land anywhere in a pass, from the file event to the last file committed:
    # the window is the time an uninterrupted pass over SHARES new shares takes here.
    window = time_a_pass_over(box, restartable, SHARES)
    # One kill in each of ROUNDS equal slices of that window, in random order.
    step = window / ROUNDS
    delays = [rng.uniform(i * step, (i + 1) * step) for i in range(ROUNDS)]
    rng.shuffle(delays)
    next_id = 0
    current: dict[str, str] = {}  # share name -> declared comment

    def new_share(comment: str) -> None:
        nonlocal next_id
        name = f"s{next_id:04d}"
        next_id += 1
        box.share_dir(name)
        current[name] = comment
        declare(box, name, comment)

    before_kill: dict[str, str] = {}
    leftovers_seen: list[str] = []
    outcomes: list[str] = []  # how far each killed pass had got, for the log
    for round_no, delay in enumerate(delays):
        context = f"round {round_no}, kill {delay * 1000:.0f} ms after the change, seed {seed}"
        # The change: the first round drops all shares; later ones edit every share;
        # every third round also replaces 30 shares with new ones, every fourth removes a
        # tenth of them, and every fifth fills up to SHARES again.
        comment = f"round {round_no}"
        if round_no == 0:
            for _ in range(SHARES):
                new_share(comment)
        else:
            if round_no % 3 == 0:
                for name in sorted(current)[:30]:
                    (box.shares_dir / f"{name}.toml").unlink()
                    del current[name]
                for _ in range(30):
                    new_share(comment)
            if round_no % 4 == 0:
                for name in rng.sample(sorted(current), len(current) // 10):
                    (box.shares_dir / f"{name}.toml").unlink()
                    del current[name]
            if round_no % 5 == 0:
                while len(current) < SHARES:
                    new_share(comment)
            for name in sorted(current):
                if current[name] != comment:
                    current[name] = comment
                    declare(box, name, comment)
        time.sleep(delay)
        restartable.kill()

        # What smbd would read right now must be a complete, valid configuration.
        problems = live_config_problems(box)
        assert not problems, f"{context}: half-written configuration: {problems[:5]}"
        at_kill = generated_shares(box)
        staging_at_kill = (box.paths.samba_dir / ".staging").exists()
        debris = set(temporaries(*debris_directories(box)))  # the agent is dead: all are debris
        leftovers_seen += [str(p.relative_to(box.root)) for p in debris]

        restartable.start()
        status = restartable.wait_status(lambda s: converged(s, current), timeout=90)
        assert status["pass"]["failed"] == []
        live = generated_shares(box)
        assert set(live) == set(current), f"{context}: served {sorted(set(live) ^ set(current))[:10]} wrongly"
        for name, text in live.items():
            assert f"comment = {current[name]}" in text, f"{context}: [{name}] not updated"
        # Every file seen at the kill was one complete version: the old or the new one.
        for name, text in at_kill.items():
            assert text in (before_kill.get(name), live.get(name)), f"{context}: [{name}] was torn:\n{text}"
        done = sum(1 for n, t in at_kill.items() if t == live.get(n) != before_kill.get(n))
        outcomes.append(f"{delay * 1000:.0f}ms: {done} of {len(live)} live{' +staging' if staging_at_kill else ''}")
        assert not live_config_problems(box), context
        assert not (box.paths.samba_dir / ".staging").exists(), f"{context}: staging area left behind"
        allowed = debris if TOLERATE_UNCLEANED_CRASH_LEFTOVERS else set()
        new_debris = set(lasting_temporaries(*debris_directories(box))) - allowed
        assert not new_debris, f"{context}: temporary files after the pass: {sorted(map(str, new_debris))}"
        for name in rng.sample(sorted(current), 3):
            wait_served(box, name, timeout=20)
        before_kill = live
    assert restartable.stop(signal.SIGTERM) == 0
    print(f"seed {seed}; kills within {window * 1000:.0f} ms of a change; state at each kill: {'; '.join(outcomes)}")
    if leftovers_seen:
        print(f"crash leftovers observed right after kills: {leftovers_seen}")


# ---- observe before acting -------------------------------------------------------------------------


def generated_signature(box: Sandbox) -> dict[str, tuple[int, int, str]]:
    files = [box.smb_conf, *sorted(box.paths.samba_dir.iterdir())]
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_text()) for p in files if p.is_file()}


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_with_everything_in_place_changes_nothing(
    sandbox: Sandbox, restartable: RestartableAgent, how: str
) -> None:
    names = [f"keep{i:02d}" for i in range(40)]
    for name in names:
        sandbox.share_dir(name)
        declare(sandbox, name, "steady")
    restartable.start()
    restartable.wait_status(lambda s: converged(s, dict.fromkeys(names, "steady")), timeout=60)
    time.sleep(0.5)  # let any follow-up pass finish before taking the fingerprint
    if how == "sigterm":
        assert restartable.stop(signal.SIGTERM) == 0
    else:
        restartable.kill()
    before = generated_signature(sandbox)
    smbd_log = sandbox.root / "var/log/samba/log.smbd"
    log_size = smbd_log.stat().st_size if smbd_log.exists() else 0

    restartable.start()
    status = restartable.wait_status(lambda s: converged(s, dict.fromkeys(names, "steady")), timeout=60)
    time.sleep(1.0)  # and a little longer, for passes the watcher may trigger
    status = restartable.status() or status
    assert status["pass"]["changed"] == []
    native = status["plugins"]["mode_native"]
    assert native["last_reload"] is None and native["reload_pending"] is False, "smbd was reloaded"
    after = generated_signature(sandbox)
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert not changed and set(before) == set(after), f"rewritten on restart: {changed[:10]}"
    if smbd_log.exists():
        assert "reload" not in smbd_log.read_text(errors="replace")[log_size:].lower()
    for name in names[:3]:
        assert served(sandbox, name)


# ---- leftovers of interrupted writes -----------------------------------------------------------------


def test_leftovers_of_interrupted_writes_are_cleaned_up(sandbox: Sandbox, restartable: RestartableAgent) -> None:
    sandbox.share_dir("one")
    declare(sandbox, "one", "x")
    restartable.start()
    restartable.wait_status(lambda s: converged(s, {"one": "x"}))
    restartable.kill()
    # Exactly what a SIGKILL between mkstemp() and rename() leaves (fileio.atomic_write).
    debris = [
        sandbox.paths.samba_dir / ".shares.conf.k2j4h5g6.tmp",
        sandbox.paths.samba_dir / ".globals.conf.q1w2e3r4.tmp",
        sandbox.smb_conf.parent / ".smb.conf.z9x8c7v6.tmp",
        sandbox.paths.run_dir / ".status.json.a1s2d3f4.tmp",
    ]
    # And what a SIGKILL in the middle of a commit leaves: a staging area (no change is
    # pending after the restart, so no commit would remove it).
    staging = sandbox.paths.samba_dir / ".staging"
    staging.mkdir()
    debris.append(staging / "share-one.conf")
    for path in debris:
        path.write_text("[global]\n\tserver min proto")
    restartable.start()
    restartable.wait_status(lambda s: converged(s, {"one": "x"}))
    remaining = [str(p) for p in [*debris, staging] if p.exists()]
    assert remaining == []
