"""TEST FIXTURE, never shipped: a Proxmox node as far as the LXC mode can tell, made of the
`pct` stand-in (tests/support/pct_standin), a root holding /etc/pve and the template, and
a network namespace with the bridge `vmbr0` in it (the node's network: the agent, `pct`
and the test's clients all run there, so the host's network is never touched).

/etc/subuid and /etc/subgid get root's container range and the ids the test passes
through (LXC maps ids with newuidmap even for root); exactly the lines added are removed
again, however the test ends. Containers are destroyed by their VMIDs under the node's
own root, and the namespace is deleted.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess
from tests.support.procs import private_sandbox

from . import image

BIN_DIR = Path(__file__).with_name("bin")
# The qm and pvesh stand-ins (tests/support/qm_standin) work on the same node.
QM_BIN_DIR = Path(__file__).parent.parent / "qm_standin" / "bin"
NODE = "pve-test"
SUBNET = "10.98.{}.{}"
BRIDGE = "vmbr0"
FIRST_VMID = 9000
NETNS_ETC = Path("/etc/netns")
NO_RESOLVER = "# the test node's resolver: no name server\n"
# agent.toml's [proxmox] for this node: ten VMIDs, the bridge, the stand-in's template.
PROXMOX = f"""
[proxmox]
vmid_range = [{FIRST_VMID}, {FIRST_VMID + 9}]
bridge = "{BRIDGE}"
storage = "local-lvm"
lxc_template = "local:vztmpl/{image.DEFAULT_NAME}"
"""


# A fresh Proxmox VE 8 node's /etc/pve/storage.cfg (the installer's two storages, with
# `snippets` added to local's content as an admin does for cloud-init snippets), and
# a Ceph RBD pool as a cluster with shared storage adds it.
STORAGE_CFG = """dir: local
\tpath /var/lib/vz
\tcontent iso,vztmpl,backup,snippets

lvmthin: local-lvm
\tthinpool data
\tvgname pve
\tcontent rootdir,images
"""
SHARED_STORAGE = "ceph-vm"
SHARED_STORAGE_CFG = f"""
rbd: {SHARED_STORAGE}
\tcontent rootdir,images
\tkrbd 0
\tpool vm
"""


@contextlib.contextmanager
def subid_lines(lines: Sequence[str]) -> Iterator[None]:
    """Add the missing ones of ``lines`` to /etc/subuid and /etc/subgid; remove exactly those
    again afterwards (other lines, and lines that were there before, stay as they are)."""
    added: dict[Path, list[str]] = {}
    try:
        for path in (Path("/etc/subuid"), Path("/etc/subgid")):
            existing = path.read_text().splitlines() if path.exists() else []
            missing = [line for line in lines if line not in existing]
            if missing:
                text = path.read_text() if path.exists() else ""
                if text and not text.endswith("\n"):
                    text += "\n"
                added[path] = missing
                path.write_text(text + "".join(f"{line}\n" for line in missing))
        yield
    finally:
        for path, mine in added.items():
            kept = path.read_text().splitlines()
            for line in mine:
                if line in kept:
                    kept.remove(line)
            path.write_text("".join(f"{line}\n" for line in kept))


@dataclass
class StandinNode:
    root: Path
    namespace: str
    octet: int
    qm_image_dir: Path | None = None  # the guest image the qm stand-in boots (qm_standin/node.py)

    def address(self, host: int) -> str:
        return SUBNET.format(self.octet, host)

    @property
    def gateway(self) -> str:
        return self.address(1)

    def env(self) -> dict[str, str]:
        """What the agent (or a test) needs to find and run the stand-in."""
        env = {"SMBGW_PCT_ROOT": str(self.root), "SMBGW_PCT_NODE": NODE, "SMBGW_PCT_PYTHON": sys.executable,
               "PATH": f"{BIN_DIR}:{QM_BIN_DIR}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
        if self.qm_image_dir is not None:
            env["SMBGW_QM_IMAGE_DIR"] = str(self.qm_image_dir)
        return env

    def wrapper(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]

    def run(self, *argv: str, stdin: str | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`argv` in the node's namespace with the stand-in first in PATH."""
        return subprocess.run([*self.wrapper(), *argv], capture_output=True, text=True, timeout=timeout,
                              check=False, input=stdin if stdin is not None else "",
                              env={**os.environ, **self.env()})

    def pct(self, *argv: str, stdin: str | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN_DIR / "pct"), *argv, stdin=stdin, timeout=timeout)

    def config(self, vmid: int) -> Path:
        return self.root / f"etc/pve/nodes/{NODE}/lxc/{vmid}.conf"

    def qm(self, *argv: str, stdin: str | None = None, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return self.run(str(QM_BIN_DIR / "qm"), *argv, stdin=stdin, timeout=timeout)

    def pvesh(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run(str(QM_BIN_DIR / "pvesh"), *argv, timeout=timeout)


@contextlib.contextmanager
def standin_node(root: Path, subids: Sequence[str] = ("root:100000:65536",),
                 resolv_conf: str = NO_RESOLVER) -> Iterator[StandinNode]:
    """`root` must be traversable by everyone up to it (an unprivileged container's root,
    uid 100000, walks to its overlay): a directory of the test's own under /var/tmp.

    `resolv_conf` is the node's resolver, for whatever runs in its namespace (`ip netns
    exec` shows it /etc/netns/NAME/resolv.conf): `pct start` copies it into containers as
    Proxmox does. By default it names no server: nothing outside answers here, and smbd
    would wait for one on every connection."""
    image.ensure_template(root)
    (root / f"etc/pve/nodes/{NODE}/lxc").mkdir(parents=True, exist_ok=True)
    for link, target in (("etc/pve/lxc", f"nodes/{NODE}/lxc"), ("etc/pve/local", f"nodes/{NODE}")):
        if not (root / link).is_symlink():
            (root / link).symlink_to(target)  # pmxcfs's links to this node's directory
    (root / "etc/pve/storage.cfg").write_text(STORAGE_CFG)
    namespace = f"smbgwlxc{os.getpid()}x{secrets.token_hex(3)}"
    node = StandinNode(root, namespace, 1 + secrets.randbelow(250))
    created = False
    try:
        subprocess.run(["ip", "netns", "add", namespace], check=True, capture_output=True)
        created = True
        etc = NETNS_ETC / namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(resolv_conf)
        for argv in (("link", "set", "lo", "up"), ("link", "add", BRIDGE, "type", "bridge"),
                     ("addr", "add", f"{node.gateway}/24", "dev", BRIDGE), ("link", "set", BRIDGE, "up")):
            subprocess.run(["ip", "-n", namespace, *argv], check=True, capture_output=True)
        with subid_lines(subids):
            try:
                yield node
            finally:
                destroy_all(node)
    finally:
        if created:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False)
            shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)


def destroy_all(node: StandinNode) -> None:
    """Every container under the node's root, stopped and destroyed (the stand-in first,
    LXC directly if the stand-in itself cannot)."""
    folder = node.root / f"etc/pve/nodes/{NODE}/lxc"
    for conf in sorted(folder.glob("*.conf")) if folder.is_dir() else []:
        vmid = conf.stem
        if node.pct("destroy", vmid, "--force", "--purge").returncode != 0:
            node.run("lxc-stop", "-P", str(node.root / "var/lib/lxc"), "-n", vmid, "--kill")


def subids(user: str) -> tuple[str, ...]:
    """Root's container range, and the user's uid and gid (the same lines go to both
    /etc/subuid and /etc/subgid: an extra line in either is harmless)."""
    entry = pwd.getpwnam(user)
    return ("root:100000:65536", f"root:{entry.pw_uid}:1", f"root:{entry.pw_gid}:1")


@contextlib.contextmanager
def lxc_agent(agent_toml: str = "", more_subids: Sequence[str] = (), resolv_conf: str = NO_RESOLVER,
              prepare: Callable[[StandinNode, Sandbox], None] | None = None) -> Iterator[tuple[StandinNode,
                                                                                               AgentProcess]]:
    """A sandbox node with [proxmox] (and `agent_toml`) in its agent.toml and the agent
    running in the node's namespace with the stand-in in its PATH; the sandbox's passdb
    user may be passed through into containers, and so may `more_subids`. `prepare`
    runs before the agent starts."""
    with private_sandbox() as box, standin_node(box.root, (*subids(box.user), *more_subids), resolv_conf) as lab:
        config = box.root / "etc/smbgw/agent.toml"
        config.write_text(config.read_text() + PROXMOX + agent_toml)
        if prepare is not None:
            prepare(lab, box)
        agent = AgentProcess(box, env=lab.env(), wrapper=lab.wrapper())
        agent.start()
        try:
            yield lab, agent
        finally:
            agent.stop()


def smbclient(lab: StandinNode, agent: AgentProcess, address: str, share: str,
              *commands: str) -> subprocess.CompletedProcess[str]:
    """The sandbox's passdb user at `address`, from the node's namespace."""
    return lab.run("smbclient", f"//{address}/{share}", "-U", f"{agent.box.user}%{agent.box.password}", "-m",
                   "SMB3", "-c", "; ".join(commands), timeout=60)
