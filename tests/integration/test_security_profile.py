"""The hardened defaults as a real client meets them: no guest, no SMB1, and with
`security_profile = "high"` signing and encryption that a client cannot opt out of."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from typing import Any

import pytest

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess, served, wait_for, write_share

pytestmark = pytest.mark.integration


def client(box: Sandbox, share: str, *options: str, auth: bool = True) -> subprocess.CompletedProcess[str]:
    who = ["-U", f"{box.user}%{box.password}"] if auth else ["-N"]
    return subprocess.run(
        ["smbclient", "-p", str(box.port), f"//127.0.0.1/{share}", *who, *options, "-c", "ls"],
        capture_output=True, text=True, timeout=30, check=False,
    )


def sessions(box: Sandbox) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["smbstatus", "-s", str(box.smb_conf), "--json"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    # Only sessions that finished authenticating: one caught mid-setup has uid -1 and no
    # encryption or signing negotiated yet.
    every = json.loads(out).get("sessions", {}).values()
    return [s for s in every if s.get("username") == box.user and s.get("uid", -1) != -1]


def test_standard_profile_refuses_guests_and_smb1(sandbox: Sandbox, agent: AgentProcess) -> None:
    sandbox.share_dir("team")
    write_share(sandbox, "team.toml", 'path = "/srv/smb/team"\n')
    wait_for(lambda: served(sandbox, "team"))
    anonymous = client(sandbox, "team", auth=False)
    assert anonymous.returncode != 0, anonymous.stdout
    guest = client(sandbox, "team", "-U", "nosuchuser%wrong")
    assert guest.returncode != 0 and "LOGON_FAILURE" in guest.stdout + guest.stderr, guest.stdout + guest.stderr
    smb1 = client(sandbox, "team", "--option=client max protocol=NT1", "--option=client min protocol=NT1")
    assert smb1.returncode != 0, smb1.stdout
    assert client(sandbox, "team", "--option=client max protocol=SMB2_10").returncode == 0
    holder = subprocess.Popen(
        ["smbclient", "-p", str(sandbox.port), "//127.0.0.1/team", "-U", f"{sandbox.user}%{sandbox.password}",
         "--option=client smb encrypt=disabled"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:  # the standard profile does not force encryption (the contrast to "high")
        session = wait_for(lambda: sessions(sandbox), timeout=15)[0]
        assert session["encryption"]["degree"] == "none", session
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(15)


def test_high_profile_requires_signing_and_encryption(sandbox: Sandbox, agent: AgentProcess) -> None:
    agent_toml = sandbox.root / "etc/smbgw/agent.toml"
    high = agent_toml.read_text().replace("[metrics]", '[samba]\nsecurity_profile = "high"\n\n[metrics]')
    agent_toml.write_text(high)
    assert agent.proc is not None
    os.kill(agent.proc.pid, signal.SIGHUP)
    globals_conf = sandbox.root / "etc/samba/smbgw/globals.conf"
    wait_for(lambda: "server smb encrypt = required" in globals_conf.read_text())
    sandbox.share_dir("vault")
    write_share(sandbox, "vault.toml", 'path = "/srv/smb/vault"\n')
    wait_for(lambda: served(sandbox, "vault"))
    old_dialect = client(sandbox, "vault", "--option=client max protocol=SMB2_10")
    assert old_dialect.returncode != 0, "SMB 2.1 cannot encrypt: it must be refused"
    # A client that would rather not encrypt or sign (smbclient gives in when the server
    # insists, so what the server enforced is read back from smbstatus).
    holder = subprocess.Popen(
        ["smbclient", "-p", str(sandbox.port), "//127.0.0.1/vault", "-U", f"{sandbox.user}%{sandbox.password}",
         "--option=client smb encrypt=disabled", "--option=client signing=disabled"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # smbd records what a session's packets were (signed, encrypted) as it processes
        # them, so a session is read back once it has done some work and its record says
        # so; the last record seen is what a failure shows.
        assert holder.stdin is not None
        holder.stdin.write("ls\n")
        holder.stdin.flush()
        seen: list[dict[str, Any]] = []

        def protected() -> bool:
            seen[:] = sessions(sandbox)
            return bool(seen) and all(seen[0][kind]["degree"] == "full" for kind in ("encryption", "signing"))

        with contextlib.suppress(AssertionError):
            wait_for(protected, timeout=15)
        assert seen, "no authenticated session appeared"
        session = seen[0]
        assert session["encryption"]["degree"] == "full", session
        assert session["signing"]["degree"] == "full", session
        assert session["session_dialect"].startswith("SMB3"), session
        # The pinned algorithms, in the server's order, on every Samba release we run on.
        assert session["encryption"]["cipher"] == "AES-256-GCM", session
        assert session["signing"]["cipher"] == "AES-128-GMAC", session
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(15)
