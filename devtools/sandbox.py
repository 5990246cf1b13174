"""A self-contained demo/test node under one directory: smb.conf, smbd on loopback, a user.

A developer tool, not part of the product (the Debian package does not ship it): `make
run` and the tests use the same code, so the demo is what is tested.
Nothing here touches the host's Samba: every Samba directory lives under the root,
smbd listens on 127.0.0.1 only, and only the processes started here are stopped (by pid).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from smbgw_agent.daemon import main as agent_main
from smbgw_agent.model.paths import Paths

DEMO_USER = "smbgwdemo"

EXAMPLE_SHARES = {
    "finance.toml": 'path = "/srv/smb/finance"\ncomment = "Finance team"\nvalid_users = ["{user}"]\n',
    "public.toml": 'path = "/srv/smb/public"\ncomment = "Read-only documents"\nread_only = true\n',
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admin_smb_conf(root: Path, port: int) -> str:
    """The 'administrator's own' smb.conf of the sandbox; the agent only appends to it."""
    samba = root / "var/lib/samba"
    return f"""# sandbox smb.conf written by devtools.sandbox
[global]
	smb ports = {port}
	interfaces = 127.0.0.1
	bind interfaces only = yes
	disable netbios = yes
	private dir = {samba}/private
	lock directory = {samba}/lock
	state directory = {samba}/state
	cache directory = {samba}/cache
	pid directory = {root}/run/samba
	ncalrpc dir = {root}/run/samba/ncalrpc
	passdb backend = tdbsam:{samba}/private/passdb.tdb
	log file = {root}/var/log/samba/log.%m
	max log size = 1000
	load printers = no
	printcap name = /dev/null
	disable spoolss = yes
"""


@dataclass
class Sandbox:
    root: Path
    port: int
    user: str = DEMO_USER
    # A fresh password per sandbox: the demo user is a real system account.
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    smbd: subprocess.Popen[bytes] | None = None

    @property
    def paths(self) -> Paths:
        return Paths.under(self.root)

    @property
    def smb_conf(self) -> Path:
        return self.paths.smb_conf

    @property
    def shares_dir(self) -> Path:
        return self.root / "etc/smbgw/shares.d"

    def prepare(self, agent_toml: str | None = None) -> None:
        samba = self.root / "var/lib/samba"
        for directory in (
            samba / "private", samba / "lock", samba / "state", samba / "cache",
            self.root / "run/samba/ncalrpc", self.root / "var/log/samba", self.shares_dir,
            self.root / "srv/smb",
        ):
            directory.mkdir(parents=True, exist_ok=True)
        (samba / "private").chmod(0o700)
        if not self.smb_conf.exists():
            self.smb_conf.parent.mkdir(parents=True, exist_ok=True)
            self.smb_conf.write_text(admin_smb_conf(self.root, self.port))
        agent = self.root / "etc/smbgw/agent.toml"
        if agent_toml is not None:
            agent.write_text(agent_toml)
        elif not agent.exists():
            agent.write_text(
                '[agent]\nnode = "sandbox"\nallowed_roots = ["/srv"]\n'
                'resync_interval = "60s"\n\n[metrics]\nlisten = "127.0.0.1:9945"\n'
            )
        ensure_user(self.user)
        subprocess.run(
            ["smbpasswd", "-c", str(self.smb_conf), "-s", "-a", self.user],
            input=f"{self.password}\n{self.password}\n".encode(), check=True,
            capture_output=True, timeout=30,
        )

    def share_dir(self, name: str) -> Path:
        """A data directory under /srv/smb owned by the demo user, as an admin would make it."""
        path = self.root / "srv/smb" / name
        path.mkdir(parents=True, exist_ok=True)
        entry = pwd.getpwnam(self.user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def start_smbd(self, timeout: float = 15.0) -> None:
        self.smbd = subprocess.Popen(
            ["smbd", "--foreground", "--no-process-group", "-s", str(self.smb_conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.root / "var/log/samba/smbd.stderr", "ab"),  # noqa: SIM115
            # smbd signals its whole process group when it exits: give it its own.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.smbd.poll() is not None:
                raise RuntimeError(f"smbd exited with {self.smbd.returncode}; see {self.root}/var/log/samba")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"smbd did not listen on 127.0.0.1:{self.port} within {timeout}s")

    def stop_smbd(self) -> None:
        """Stop smbd and the samba-dcerpcd it spawned (which detaches), each by its pid."""
        pid_dir = self.root / "run/samba"
        helper_pids = [_read_pid(pid_dir / "samba-dcerpcd.pid")]
        if self.smbd is not None and self.smbd.poll() is None:
            self.smbd.terminate()
            try:
                self.smbd.wait(10)
            except subprocess.TimeoutExpired:
                self.smbd.kill()
                self.smbd.wait(5)
        self.smbd = None
        for pid in helper_pids:
            if pid and _is_samba_process(pid, self.smb_conf):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def smbclient(self, share: str, commands: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["smbclient", "-p", str(self.port), f"//127.0.0.1/{share}",
             "-U", f"{self.user}%{self.password}", "-c", commands],
            capture_output=True, text=True, timeout=timeout, check=False,
        )


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_samba_process(pid: int, smb_conf: Path) -> bool:
    """Only signal a pid that is still a Samba process of this sandbox (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return "samba" in cmdline and str(smb_conf) in cmdline


def ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True, timeout=30,
        )


def main(argv: list[str] | None = None) -> int:
    """`make run`: a sandbox with example shares, smbd on loopback, and the agent in front."""
    parser = argparse.ArgumentParser(prog="python -m devtools.sandbox")
    parser.add_argument("--root", default="sandbox")
    parser.add_argument("--port", type=int, default=4450)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the sandbox needs root (smbd, smbpasswd, useradd)", file=sys.stderr)
        return 2
    for tool in ("smbd", "smbpasswd", "smbclient", "testparm", "smbcontrol"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install samba smbclient", file=sys.stderr)
            return 2
    box = Sandbox(Path(args.root).resolve(), args.port)
    box.prepare()
    for file, text in EXAMPLE_SHARES.items():
        target = box.shares_dir / file
        if not target.exists():
            box.share_dir(file.removesuffix(".toml"))
            target.write_text(text.format(user=box.user))
    box.start_smbd()
    print(f"""
smbgw-agent sandbox under {box.root}
  smbd:       127.0.0.1:{box.port} (pid {box.smbd.pid if box.smbd else '?'})
  share files: {box.shares_dir}  (drop a *.toml there; it is served within a second)
  try:        smbclient -p {box.port} //127.0.0.1/finance -U '{box.user}%{box.password}' -c ls
  status:     smbgwctl --root {box.root} status
  metrics:    curl -s http://127.0.0.1:9945/metrics | grep ^smbgw_
Ctrl-C stops the agent and smbd.
""", flush=True)
    try:
        return agent_main(["--root", str(box.root)])
    finally:
        box.stop_smbd()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
