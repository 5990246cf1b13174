"""How long from `[ad]` in agent.toml to a domain user served, and what the membership
checks cost, against a real Samba AD DC (tests/support/adlab.py).

    nice .venv/bin/python bench/ad.py [--runs 5] [--release bookworm] [--cpu-seconds 60]

Needs root (network namespaces, systemd-nspawn). Builds the AD lab once (a DC booted from
its saved layer, a member with the .deb installed), then:

* **join**, `--runs` times: with the member standalone (no `[ad]`, its computer account
  deleted on the DC), write agent.toml with `[ad]` and a password file, `systemctl reload
  smbgw-agent`, and time until `SMBGW\\alice` lists a share limited to a domain group
  (a new smbclient connection every 0.2 s). The peer, in the same lab and the same number
  of runs: what an administrator does by hand after writing the same smb.conf globals
  (Samba's documented member-server procedure): `net ads join` with the password on
  stdin, `systemctl start winbind`, `systemctl restart smbd`, timed to the same first successful listing.
* **checks' CPU**: the CPU time of the agent's process and of every tool it ran and
  waited for (net, wbinfo, dig; /proc/PID/stat utime, stime, cutime, cstime) over
  `--cpu-seconds` with `[ad]` and `health_interval = "10s"`, minus the same stretch
  without `[ad]`, per round of checks, and what that makes per hour at the default interval (60 s).

Prints every sample, then n, median and max per case and the ratio of the medians.
Asserts nothing but that every run ended served.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.samples import summary
from tests.support.adlab import DOMAIN, USER_PASSWORD, AdLab, ad_lab

JOIN_USER, JOIN_PASSWORD = "svc-join", "Jn-bench-Passw0rd!"
PASSWORD_FILE = "/etc/smbgw/secrets/ad-join"
STANDALONE = '[agent]\nallowed_roots = ["/srv"]\n'
SHARE = 'path = "/srv/finance"\nvalid_users = ["@SMBGW\\\\Finance"]\n'


def agent_toml(interval: str = "60s") -> str:
    return (f'{STANDALONE}\n[ad]\nrealm = "SMBGW.TEST"\nworkgroup = "{DOMAIN}"\njoin_user = "{JOIN_USER}"\n'
            f'password_file = "{PASSWORD_FILE}"\nidmap = {{ backend = "rid", range = [100000, 999999] }}\n'
            f'idmap_default_range = [70000, 79999]\nhealth_interval = "{interval}"\n')


def served(lab: AdLab) -> bool:
    return lab.smbclient("finance", f"{DOMAIN}\\alice", USER_PASSWORD, "ls", timeout=20).returncode == 0


def until_served(lab: AdLab, began: float, timeout: float = 180.0) -> float:
    while time.monotonic() - began < timeout:
        if served(lab):
            return time.monotonic() - began
        time.sleep(0.2)
    raise TimeoutError(f"alice not served within {timeout:g}s")


def standalone(lab: AdLab) -> None:
    """The member back to no domain: no [ad], no computer account, no machine secrets."""
    member = lab.member
    member.write_file("/etc/smbgw/agent.toml", STANDALONE)
    member.run("systemctl", "reload", "smbgw-agent")
    deadline = time.monotonic() + 60
    while member.run("testparm", "-s", "--parameter-name", "server role",
                     check=False).stdout.strip() != "standalone server":
        if time.monotonic() > deadline:
            raise TimeoutError("the member did not return to standalone")
        time.sleep(0.3)
    member.run("systemctl", "stop", "winbind", check=False)
    lab.samba_tool("computer", "delete", "FS1", check=False)
    member.run("rm", "-f", "/var/lib/samba/private/secrets.tdb", "/var/lib/samba/private/secrets.ldb")
    member.run("net", "cache", "flush", check=False)


def join_by_agent(lab: AdLab) -> float:
    standalone(lab)
    began = time.monotonic()
    lab.member.write_file("/etc/smbgw/agent.toml", agent_toml())
    lab.member.run("systemctl", "reload", "smbgw-agent")
    return until_served(lab, began)


def join_by_hand(lab: AdLab, globals_text: str) -> float:
    """The agent stopped (smbd keeps serving), the member globals the agent wrote put in
    place by hand, then the administrator's three commands."""
    standalone(lab)
    member = lab.member
    member.run("systemctl", "stop", "smbgw-agent")
    began = time.monotonic()
    member.write_file("/etc/samba/smbgw/globals.conf", globals_text)
    member.run("net", "ads", "join", "-U", JOIN_USER, "--no-dns-updates", input=JOIN_PASSWORD + "\n", timeout=120)
    member.run("systemctl", "start", "winbind")
    member.run("systemctl", "restart", "smbd")
    return until_served(lab, began)


def cpu_seconds(lab: AdLab) -> float:
    """The agent's CPU time and that of every command it ran and waited for (net, wbinfo,
    dig, testparm): utime + stime + cutime + cstime of its main process."""
    pid = lab.member.run("systemctl", "show", "-p", "MainPID", "--value", "smbgw-agent").stdout.strip()
    fields = lab.member.read_file(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    ticks = int(lab.member.run("getconf", "CLK_TCK").stdout.strip())
    return sum(int(value) for value in fields[11:15]) / ticks


def cpu_over(lab: AdLab, seconds: float) -> float:
    before = cpu_seconds(lab)
    time.sleep(seconds)
    return cpu_seconds(lab) - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--release", default="bookworm")
    parser.add_argument("--cpu-seconds", type=float, default=60.0)
    args = parser.parse_args()
    with ad_lab(args.release) as lab:
        lab.samba_tool("user", "create", JOIN_USER, JOIN_PASSWORD)
        lab.samba_tool("group", "addmembers", "Domain Admins", JOIN_USER)
        member = lab.member
        member.run("mkdir", "-p", "/etc/smbgw/secrets", "/srv/finance")
        member.run("chmod", "0777", "/srv/finance")
        member.write_file(PASSWORD_FILE, JOIN_PASSWORD + "\n", mode=0o600)
        member.write_file("/etc/smbgw/shares.d/finance.toml", SHARE)
        agent, by_hand = [], []
        for run in range(args.runs):
            agent.append(join_by_agent(lab))
            print(f"run {run + 1}: agent {agent[-1]:.2f} s", flush=True)
        # The peer uses the globals the agent wrote.
        globals_text = member.read_file("/etc/samba/smbgw/globals.conf")
        for run in range(args.runs):
            by_hand.append(join_by_hand(lab, globals_text))
            member.run("systemctl", "start", "smbgw-agent")
            print(f"run {run + 1}: by hand {by_hand[-1]:.2f} s", flush=True)
        ours, peer = summary("[ad] written -> alice served (agent)", agent), \
            summary("net ads join + start winbind + restart smbd -> alice served (by hand)", by_hand)
        print(f"ratio agent/by hand: {ours / peer:.2f}")

        standalone(lab)
        idle = cpu_over(lab, args.cpu_seconds)
        member.write_file("/etc/smbgw/agent.toml", agent_toml("10s"))
        member.run("systemctl", "reload", "smbgw-agent")
        until_served(lab, time.monotonic())
        time.sleep(10)
        checking = cpu_over(lab, args.cpu_seconds)
        rounds = args.cpu_seconds / 10.0
        per_round = max(0.0, checking - idle) / rounds
        print(f"agent CPU (with the tools it ran) over {args.cpu_seconds:g} s: {idle:.3f} s without [ad], "
              f"{checking:.3f} s with "
              f"[ad] checking every 10 s: {per_round * 1000:.0f} ms per round of checks, "
              f"{per_round * 60:.1f} s per hour at the default 60 s interval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
