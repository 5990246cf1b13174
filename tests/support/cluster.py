"""Three systemd hosts on one Ethernet segment, for CTDB cluster tests.

The shape (every piece the test's own, nothing in the host's root namespace)::

    node1 (netns ...n1, eth0 10.211.33.11) --veth-- n1 \
    node2 (netns ...n2, eth0 10.211.33.12) --veth-- n2  +-- br0 in netns ...sw (the "switch")
    node3 (netns ...n3, eth0 10.211.33.13) --veth-- n3  |
    client (netns ...c, eth0 10.211.33.50) --veth-- c  /

Each node is a booted systemd container (``systemd-nspawn --network-namespace-path``)
with CAP_NET_ADMIN and CAP_NET_RAW, host name node1..node3, the project's .deb installed,
and two host directories bind-mounted into all three: ``/srv/cluster`` (the "cluster file
system" the CTDB cluster lock lives on) and ``/etc/smbgw/shares.d`` (standing in for
Proxmox's /etc/pve). The client namespace runs host tools (``smbclient``, ``ip``, this
Python) against the nodes.

Faults are made from outside the nodes, where nothing inside can undo them:

* :meth:`Cluster.cut` sets the switch-side veth down (a pulled cable). CTDB's
  ``10.interface`` monitor runs ``ip link set eth0 up`` inside a node, which would undo a
  cut made on the node's own side.
* :meth:`Cluster.power_off` pulls the cable, SIGKILLs the container's PID 1 (ending its
  PID namespace) and the nspawn process group we started, and forgets what the dead
  kernel state held (addresses on eth0, neighbours): a powered-off host answers nothing.
  :meth:`Cluster.power_on` boots the node again from its own disk (the overlay's upper
  layer is kept), with its address and cable back.

Each container runs in a cgroup of its own (see :func:`own_cgroup`: started from one
process, nspawn --keep-unit would give all three one cgroup tree, and their systemds would
trip over each other's unit cgroups).

Names carry the test process's pid and a random tag; what a killed run left behind
(containers still running in its namespaces, the namespaces, cgroups, work directories)
is removed at the start, and everything of this run when the ``with`` block ends, however
it ends.

    with three_nodes() as cluster:
        cluster.run(cluster.nodes[0], "ctdb", "status")
        cluster.client("smbclient", "-L", cluster.nodes[1].address, "-N")
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tests.support import debpkg, nspawn
from tests.support.nspawn import NspawnError, SystemdContainer

# The image: the .deb's dependencies plus CTDB, whose 10.interface event script needs
# ethtool, and iptables (it blocks an address's traffic while releasing it; a Proxmox
# node has it for its firewall). Cached by content like every other image (the package
# list is in its name).
CLUSTER_PACKAGES: tuple[str, ...] = (*debpkg.CONTAINER_PACKAGES, "ctdb", "ethtool", "iptables")
SUITE = nspawn.SUITE

NETNS_PREFIX = "smbgwctdb"
SUBNET = "10.211.33"  # no other test uses it (grep tests for the prefix before changing it)
PREFIX_LENGTH = 24
NODE_HOSTS: tuple[int, ...] = (11, 12, 13)
CLIENT_HOST = 50
CLUSTER_DIR = "/srv/cluster"
SHARES_D = "/etc/smbgw/shares.d"
WORK_ROOT = Path("/var/tmp")
CAPABILITIES = "CAP_NET_ADMIN,CAP_NET_RAW"
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
T = TypeVar("T")


class ClusterError(RuntimeError):
    """The cluster could not be built or a node could not be reached."""


def mac_for(host: int) -> str:
    """Fixed, locally administered MACs: a node is recognisable in `ip neigh` by its last byte."""
    return f"02:5b:d3:21:00:{host:02x}"


@dataclass(eq=False)  # one object per node: compared and hashed by identity
class ClusterNode:
    name: str  # node1..node3, also its host name
    pnn: int  # its line in /etc/ctdb/nodes (0-based), if the test writes them in order
    address: str
    mac: str
    namespace: str  # the node's network namespace (its eth0 is in there)
    switch_veth: str  # the switch-side end of its cable (n1..n3), in the switch namespace
    container: SystemdContainer
    powered: bool = True

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.namespace}"


@dataclass
class Cluster:
    tag: str
    switch: str  # namespace holding br0
    client_namespace: str
    client_address: str
    nodes: list[ClusterNode]
    shared: Path  # host path of /srv/cluster in every node
    shares_d: Path  # host path of /etc/smbgw/shares.d in every node
    image: Path
    deb: Path
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)

    # -- lookup ---------------------------------------------------------------------------

    def node(self, which: ClusterNode | str | int) -> ClusterNode:
        """A node by object, name ("node2"), address or pnn."""
        if isinstance(which, ClusterNode):
            return which
        for node in self.nodes:
            if which in (node.name, node.address, node.pnn):
                return node
        raise KeyError(f"no node {which!r}")

    def node_by_mac(self, mac: str) -> ClusterNode | None:
        return next((n for n in self.nodes if n.mac == mac.lower()), None)

    # -- running things -------------------------------------------------------------------

    def run(self, node: ClusterNode | str | int, *argv: str, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the node (all its namespaces), output captured."""
        target = self.node(node)
        if not target.powered:
            raise ClusterError(f"{target.name} is powered off")
        return target.container.run(list(argv), check=check, timeout=timeout, input=input)

    def write_file(self, node: ClusterNode | str | int, path: str, data: str | bytes, mode: int = 0o644) -> None:
        self.node(node).container.write_file(path, data, mode)

    def client(self, *argv: str, check: bool = False, timeout: float = 60.0,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``argv`` (a host program) in the client namespace, output captured."""
        return in_namespace(self.client_namespace, *argv, check=check, timeout=timeout, input=input)

    def client_python(self, code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """This interpreter running ``code`` in the client namespace."""
        return self.client(sys.executable, "-c", code, *args, timeout=timeout)

    def tcp_connect(self, address: str, port: int = 445, timeout: float = 1.0) -> str:
        """From the client: "open", "refused" (a host answered with RST), "timeout" or an errno name."""
        proc = self.client_python(_TCP_CONNECT, address, str(port), str(timeout), timeout=timeout + 30)
        return proc.stdout.strip() or f"error: {proc.stderr.strip()[-500:]}"

    def arp_who_has(self, address: str, wait: float = 0.3) -> list[str]:
        """From the client: the MACs answering an ARP request for ``address`` within ``wait``
        seconds (a raw frame of our own, not the kernel's cached neighbour)."""
        proc = self.client_python(_ARP_WHO_HAS, "eth0", address, self.client_address, str(wait),
                                  timeout=wait + 30)
        if proc.returncode != 0:
            raise ClusterError(f"ARP probe failed: {proc.stderr.strip()[-2000:]}")
        return proc.stdout.split()

    def answering(self, address: str, wait: float = 0.3) -> list[ClusterNode]:
        """The nodes answering ARP for ``address`` now (empty: nobody)."""
        found = [self.node_by_mac(mac) for mac in self.arp_who_has(address, wait)]
        unique: list[ClusterNode] = []
        for node in found:
            if node is None:
                raise ClusterError(f"ARP for {address} answered by a MAC that is no node's")
            if node not in unique:
                unique.append(node)
        return unique

    def neighbours(self) -> str:
        """The client's neighbour table (``ip neigh``)."""
        return _ip("-n", self.client_namespace, "neigh", "show", "dev", "eth0").stdout

    # -- faults ---------------------------------------------------------------------------

    def cut(self, node: ClusterNode | str | int) -> None:
        """Pull the node's cable: its switch-side veth goes down (the node sees NO-CARRIER)."""
        _ip("-n", self.switch, "link", "set", self.node(node).switch_veth, "down")

    def reconnect(self, node: ClusterNode | str | int) -> None:
        _ip("-n", self.switch, "link", "set", self.node(node).switch_veth, "up")

    def power_off(self, node: ClusterNode | str | int) -> None:
        """Stop the node hard, as a power cut would: nothing leaves it as it dies, nothing of
        its running state (processes, addresses, neighbours, sockets) survives. Its disk
        (the overlay's upper layer) is kept for :meth:`power_on`."""
        target = self.node(node)
        if not target.powered:
            return
        self.cut(target)
        _kill_hard(target.container)
        target.powered = False
        _ip("-n", target.namespace, "link", "set", "eth0", "down", check=False)
        _ip("-n", target.namespace, "addr", "flush", "dev", "eth0", check=False)
        _ip("-n", target.namespace, "neigh", "flush", "dev", "eth0", check=False)

    def power_on(self, node: ClusterNode | str | int, boot_timeout: float = 90.0) -> float:
        """Boot a powered-off node again from its own disk; the seconds it took to be up.

        Its units start as at any boot (CTDB too, once /etc/ctdb/nodes is not empty)."""
        target = self.node(node)
        if target.powered:
            raise ClusterError(f"{target.name} is running")
        started = time.monotonic()
        _address_node(target)
        self.reconnect(target)
        old = target.container
        machine_id = (old.upper / "etc/machine-id").read_text()
        container: SystemdContainer | None = None
        try:
            container = boot(old.image, old.name, self.workdir, {"/etc/machine-id": machine_id},
                             _nspawn_args(self, target), disk=old.upper)
            container.wait_until_running(boot_timeout)
        except BaseException:
            if container is not None:
                container.stop()
            raise
        finally:
            old.stop()  # only its (now empty) work directory is left to remove
        target.container = container
        target.powered = True
        container.boot_seconds = time.monotonic() - started
        return container.boot_seconds

    # -- CTDB, as its command line shows it (read here with a few lines of our own) ----------

    def ctdb(self, node: ClusterNode | str | int, *args: str, check: bool = True,
             timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run(node, "ctdb", *args, check=check, timeout=timeout)

    def ctdb_status(self, via: ClusterNode | str | int) -> dict[int, dict[str, str]]:
        """``ctdb -X status`` seen from ``via``: pnn -> column -> value ("0"/"1", "Y"/"N")."""
        return {int(row["Node"]): row for row in _machine_table(self.ctdb(via, "-X", "status").stdout)}

    def ctdb_healthy(self, via: ClusterNode | str | int, pnns: Sequence[int] | None = None) -> bool:
        """Every node in ``pnns`` (default: all) is OK in ``via``'s view (no flag set)."""
        proc = self.ctdb(via, "-X", "status", check=False, timeout=30)
        if proc.returncode != 0:
            return False
        rows = {int(row["Node"]): row for row in _machine_table(proc.stdout)}
        wanted = list(rows) if pnns is None else list(pnns)
        return all(p in rows and not any(rows[p].get(f) == "1" for f in CTDB_FLAGS) for p in wanted)

    def ctdb_ip_holders(self, via: ClusterNode | str | int) -> dict[str, int]:
        """``ctdb -X ip`` seen from ``via``: public address -> pnn (-1: nobody)."""
        return {row["Public IP"]: int(row["Node"]) for row in _machine_table(self.ctdb(via, "-X", "ip").stdout)}

    def ctdb_leader(self, via: ClusterNode | str | int) -> int:
        """The pnn holding the cluster lock (``ctdb leader``; ``ctdb recmaster`` before 4.17)."""
        proc = self.ctdb(via, "leader", check=False)
        if proc.returncode != 0 and "Unknown command" in proc.stdout + proc.stderr:
            proc = self.ctdb(via, "recmaster", check=False)
        if proc.returncode != 0 or not proc.stdout.strip().isdigit():
            raise ClusterError(f"no leader known to {self.node(via).name}: {proc.stdout}{proc.stderr}")
        return int(proc.stdout.strip())

    def addresses(self, node: ClusterNode | str | int, interface: str = "eth0") -> list[str]:
        """The IPv4 addresses on the node's interface, read from outside (its namespace)."""
        out = _ip("-n", self.node(node).namespace, "-4", "-o", "addr", "show", "dev", interface).stdout
        return [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]


# Flag columns of `ctdb -X status` (4.17 has "Unknown" beside the older ones).
CTDB_FLAGS: tuple[str, ...] = (
    "Disconnected", "Unknown", "Banned", "Disabled", "Unhealthy", "Stopped", "Inactive", "PartiallyOnline",
)


def _machine_table(text: str) -> list[dict[str, str]]:
    """Rows of a ``ctdb -X`` table (``|a|b|`` lines, the first one naming the columns)."""
    lines = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    if not lines:
        return []
    header, *rows = lines
    return [dict(zip(header, row, strict=False)) for row in rows]


# --------------------------------------------------------------------------- client probes

_TCP_CONNECT = """
import errno, socket, sys
address, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    socket.create_connection((address, port), timeout=timeout).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as error:
    print(errno.errorcode.get(error.errno or 0, str(error)))
"""

_ARP_WHO_HAS = """
import select, socket, struct, sys, time
interface, target, source, wait = sys.argv[1], socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3]), \
    float(sys.argv[4])
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as sock:
    sock.bind((interface, 0))
    mine = sock.getsockname()[4]
    request = (b"\\xff" * 6 + mine + b"\\x08\\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
               + mine + source + bytes(6) + target)
    sock.send(request)
    seen = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        frame = sock.recv(2048)
        if len(frame) >= 42 and frame[20:22] == b"\\x00\\x02" and frame[28:32] == target:
            mac = frame[22:28].hex(":")
            if mac not in seen:
                seen.append(mac)
    print("\\n".join(seen))
"""


# --------------------------------------------------------------------------- plumbing


def in_namespace(namespace: str, *argv: str, check: bool = False, timeout: float = 60.0, input: str | None = None,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` (a host program) in network namespace ``namespace``, output captured; ``env``
    is added to a clean environment."""
    proc = subprocess.run(
        ["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True,
        timeout=timeout, check=False, env={**_ENV, **(env or {})}, input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} in namespace {namespace} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, env=_ENV,
                          stdin=subprocess.DEVNULL, timeout=60)
    if check and proc.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


_pid_alive = debpkg._pid_alive  # the same check the .deb test's stale cleanup uses


def remove_stale(prefix: str = NETNS_PREFIX) -> list[str]:
    """What an earlier run of ours left behind when it was killed (its pid is gone): the
    containers still running in its node namespaces, the namespaces, its work directory.

    ``prefix``: whose leftovers (this cluster's by default; another harness built the same
    way, say the AD lab, passes its own): names are ``<prefix><pid>x<hex>[<role>]``."""
    stale_name = re.compile(rf"{re.escape(prefix)}(\d+)x[0-9a-f]+(?:[a-z]+\d*)?")
    removed: list[str] = []
    stale = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = stale_name.fullmatch(name)
        if match and not _pid_alive(int(match.group(1))):
            stale.append(name)
    parents = []
    for name in stale:
        for pid in _ip("netns", "pids", name, check=False).stdout.split():
            parent = _kill_orphan_container(int(pid))
            if parent is not None:
                parents.append(parent)
                removed.append(f"container pid {pid}")
    deadline = time.monotonic() + 10  # their systemd-nspawn exits once PID 1 is gone
    while any(_pid_alive(p) for p in parents) and time.monotonic() < deadline:
        time.sleep(0.05)
    for name in stale:
        _ip("netns", "delete", name, check=False)
        removed.append(name)
    for root, _ in _cgroup_roots():
        for path in root.glob(f"{prefix}*"):
            match = stale_name.fullmatch(path.name)
            if match and not _pid_alive(int(match.group(1))):
                removed += [f"left-over process {pid}" for pid in _kill_cgroup_tree(path)]
                if remove_cgroup(path.name, timeout=2):
                    removed.append(str(path))
    for path in WORK_ROOT.glob(f"{prefix}*"):
        match = stale_name.fullmatch(path.name)
        if match and path.is_dir() and not _pid_alive(int(match.group(1))):
            with contextlib.suppress(NspawnError, OSError):
                nspawn._remove_tree(path)
                removed.append(str(path))
    return removed


def _kill_cgroup_tree(top: Path) -> list[int]:
    """SIGKILL what is still running in a dead run's cgroup tree: processes its containers
    left behind when their PID 1 died before they did (an smbd re-parented to the host when
    a run was killed during setup). Only our own cgroups, named after our run, are read."""
    killed = []
    for dirpath, _dirs, _files in os.walk(top):
        try:
            pids = [int(p) for p in (Path(dirpath) / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def _kill_orphan_container(pid: int) -> int | None:
    """If ``pid`` (found in a stale namespace of ours) is a container's PID 1, SIGKILL it --
    its PID namespace dies with it; the pid of its parent (systemd-nspawn)."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
    except OSError:
        return None
    nspid = fields.get("NSpid", "").split()
    if not (len(nspid) > 1 and nspid[-1] == "1"):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    parent = int(fields.get("PPid", "0").strip() or 0)
    return parent if parent > 1 else None


def missing_requirements() -> list[str]:
    """Why the cluster cannot be built here (empty when it can)."""
    missing = nspawn.missing_requirements()
    missing += [f"{tool} not found" for tool in debpkg.have_tools("ip", "make", "dpkg-buildpackage")]
    return missing


def add_switch(switch: str) -> None:
    """A bridge ``br0`` (no forwarding delay) in the namespace ``switch``: the segment's switch."""
    _ip("-n", switch, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
    _ip("-n", switch, "link", "set", "lo", "up")
    _ip("-n", switch, "link", "set", "br0", "up")


def plug(switch: str, ns: str, port: str, mac: str) -> None:
    """A cable from ``switch``'s br0 (its end named ``port``) to ``eth0`` (MAC ``mac``) in ``ns``.
    Created inside the namespaces: the root namespace never sees either end."""
    _ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
    _ip("-n", ns, "link", "set", "eth0", "address", mac)
    _ip("-n", switch, "link", "set", port, "master", "br0")
    _ip("-n", switch, "link", "set", port, "up")


def address_host(ns: str, address: str) -> None:
    """``address``/24 the only address on ``ns``'s eth0; lo and eth0 up."""
    _ip("-n", ns, "addr", "flush", "dev", "eth0")
    _ip("-n", ns, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", "eth0")
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "link", "set", "eth0", "up")


def _address_node(node: ClusterNode) -> None:
    address_host(node.namespace, node.address)


def _nspawn_args(cluster: Cluster, node: ClusterNode) -> list[str]:
    return [
        f"--network-namespace-path={node.netns_path}",
        f"--capability={CAPABILITIES}",
        f"--hostname={node.name}",
        "--resolv-conf=off",
        f"--bind={cluster.shared}:{CLUSTER_DIR}",
        f"--bind={cluster.shares_d}:{SHARES_D}",
    ]


def _node_files(cluster: Cluster, node: ClusterNode) -> dict[str, str]:
    hosts = "".join(f"{n.address}\t{n.name}\n" for n in cluster.nodes)
    return {
        "/etc/hostname": f"{node.name}\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost\n{hosts}",
        # No resolver: smbd would look names up per connection and clients time out.
        "/etc/resolv.conf": "# no resolver in the test cluster\n",
    }


# What a node's `container` is until it has booted (never started, never stopped).
_NOT_BOOTED = SystemdContainer(Path("/nonexistent"), "not-booted", Path("/nonexistent"))


# Where systemd-nspawn --keep-unit puts a container: in the cgroup it was started in, split
# into `supervisor` (nspawn) and `payload` (the container's systemd and all its units).
# Started from one process, three containers would share one `payload` tree: their
# systemds create and remove the same unit cgroups (`system.slice/smbd.service`) under
# each other's feet -- units failing at random with status 219/CGROUP -- and each unit's
# cgroup would hold the processes of all three. So each nspawn is started from a cgroup of
# its own, named after the machine (nspawn tracks itself in the unified hierarchy on this
# hybrid host, and mirrors into the v1 name=systemd one: both are set).
_CGROUP_LOCK = threading.Lock()


def _cgroup_roots() -> list[tuple[Path, str]]:
    """(mount point, how /proc/self/cgroup names it) of the hierarchies systemd tracks with."""
    roots: list[tuple[Path, str]] = []
    if (Path("/sys/fs/cgroup/systemd") / "cgroup.procs").exists():
        roots.append((Path("/sys/fs/cgroup/systemd"), "name=systemd"))
    for unified in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (unified / "cgroup.subtree_control").exists():
            roots.append((unified, ""))
            break
    return roots


def _own_path(controllers: str) -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if names == controllers:
            return path
    return None


@contextlib.contextmanager
def own_cgroup(name: str) -> Iterator[None]:
    """Processes started inside the block begin in cgroup ``name`` (below each hierarchy's
    root); the test process moves there for the block and back afterwards. Keep the block
    short, and start nothing on other threads meanwhile."""
    with _CGROUP_LOCK:
        moved: list[tuple[Path, str]] = []
        try:
            for root, controllers in _cgroup_roots():
                previous = _own_path(controllers)
                if previous is None:
                    continue
                target = root / name
                target.mkdir(exist_ok=True)
                (target / "cgroup.procs").write_text(str(os.getpid()))
                moved.append((root, previous))
            yield
        finally:
            for root, previous in reversed(moved):
                (root / previous.lstrip("/") / "cgroup.procs").write_text(str(os.getpid()))


def remove_cgroup(name: str, timeout: float = 5.0) -> bool:
    """Remove the cgroup trees of machine ``name``, deepest first, once empty (the tasks of
    a killed container leave them a moment after its nspawn has exited). Whether they are gone."""
    deadline = time.monotonic() + timeout
    while True:
        left = False
        for root, _ in _cgroup_roots():
            top = root / name
            if not top.is_dir():
                continue
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda entry: -entry[0].count("/")):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
            left = left or top.is_dir()
        if not left:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def boot(image: Path, name: str, workdir: Path, files: Mapping[str, str | bytes], nspawn_args: Sequence[str],
         disk: Path | None = None, removed: Sequence[str] = ()) -> SystemdContainer:
    """Start (not wait for) a container in a cgroup of its own; from ``disk`` (an earlier
    container's upper layer) if given; the image's files ``removed`` absent from it.
    nspawn.boot_container, less the waiting."""
    container = _NodeContainer(image, name, Path(tempfile.mkdtemp(prefix=f"nspawn-{name}-", dir=workdir)), disk,
                               removed)
    try:
        with own_cgroup(name):
            container._start(files, False, nspawn_args)
    except BaseException:
        container.stop()
        raise
    return container


class _NodeContainer(SystemdContainer):
    """A node's container; booting from an earlier container's upper layer (its "disk") if
    given; ``removed``: paths of the image hidden by overlayfs whiteouts (a unit's enabling
    symlink, a mask, a config file), as ``rm`` in the container would."""

    def __init__(self, image: Path, name: str, workdir: Path, disk: Path | None = None,
                 removed: Sequence[str] = ()) -> None:
        super().__init__(image, name, workdir)
        self._disk = disk
        self._removed = tuple(removed)

    def _stage_files(self, files: Mapping[str, str | bytes]) -> None:
        if self._disk is not None:
            self.upper.rmdir()
            os.rename(self._disk, self.upper)
        # Staged like a file first (its parents get the image's owners and modes), then
        # turned into a whiteout: a 0/0 character device in the upper layer.
        super()._stage_files({**files, **dict.fromkeys(self._removed, "")})
        for inside in self._removed:
            target = self.upper / inside.lstrip("/")
            target.unlink()
            os.mknod(target, stat.S_IFCHR, os.makedev(0, 0))


def _kill_hard(container: SystemdContainer) -> None:
    """SIGKILL the container's PID 1 (its whole PID namespace dies with it) and the process
    group of the nspawn we started; never anything else."""
    if not container.running:
        return
    with contextlib.suppress(NspawnError, ProcessLookupError):
        os.kill(container.leader, signal.SIGKILL)  # valid: nspawn, its parent, has not been reaped
    with contextlib.suppress(ProcessLookupError):
        os.killpg(container.pid, signal.SIGKILL)  # nspawn started it in its own session
    deadline = time.monotonic() + 30
    while container.running:
        if time.monotonic() > deadline:
            raise ClusterError(f"{container.name}: systemd-nspawn {container.pid} survived SIGKILL")
        time.sleep(0.05)


def in_parallel(jobs: Sequence[Callable[[], T]]) -> list[T]:
    """Run the jobs on threads; all are waited for, and the first error is raised."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        concurrent.futures.wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]
    return [f.result() for f in futures]


@dataclass
class Segment:
    """One Ethernet segment of a test's own -- a switch namespace holding br0, a client
    namespace plugged into it -- and what is built on it, all torn down by :func:`segment`.

    Names are ``<tag><role>``: the namespace, the switch port and the container (and its
    cgroup) of a host share its role ("n1", "dc")."""

    tag: str
    workdir: Path
    switch: str
    client: str
    client_address: str
    image: Path
    deb: Path  # Path() when no .deb is installed
    timings: dict[str, float]
    started: float
    namespaces: list[str] = field(default_factory=list)
    containers: list[SystemdContainer] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)

    def add_namespace(self, name: str) -> str:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        return name

    def add_host(self, role: str, address: str, mac: str) -> str:
        """Namespace ``<tag><role>``, cabled to the switch (port ``role``), with ``address``."""
        ns = self.add_namespace(f"{self.tag}{role}")
        plug(self.switch, ns, role, mac)
        address_host(ns, address)
        return ns

    def boot(self, role: str, files: Mapping[str, str | bytes], nspawn_args: Sequence[str],
             disk: Path | None = None, removed: Sequence[str] = ()) -> SystemdContainer:
        """Start container ``<tag><role>`` (see :func:`boot`), torn down with the segment."""
        name = f"{self.tag}{role}"
        self.cgroups.append(name)
        container = boot(self.image, name, self.workdir, files, nspawn_args, disk, removed)
        self.containers.append(container)
        return container


@contextlib.contextmanager
def segment(prefix: str, subnet: str, image: Callable[[], Path], *, install_deb: bool, what: str,
            verbose: bool) -> Iterator[Segment]:
    """What a ``what`` ("cluster") of containers on one segment starts with: the leftovers of
    killed runs of ``prefix`` removed, the image (``image()``) and the .deb ready, the switch
    and the client (``<subnet>.50``) up. Everything of the segment is removed at the end,
    however the block ends."""
    started = time.monotonic()
    remove_stale(prefix)
    timings: dict[str, float] = {}
    began = time.monotonic()
    built = image()
    timings["image (built once, then reused)"] = time.monotonic() - began
    began = time.monotonic()
    deb = debpkg.ensure_deb().deb if install_deb else Path()
    timings[".deb (built if stale)"] = time.monotonic() - began
    tag = f"{prefix}{os.getpid()}x{secrets.token_hex(2)}"
    seg = Segment(tag, WORK_ROOT / tag, f"{tag}sw", f"{tag}c", f"{subnet}.{CLIENT_HOST}", built, deb, timings,
                  started)
    completed = False
    try:
        seg.workdir.mkdir(mode=0o755)
        for ns in (seg.switch, seg.client):
            seg.add_namespace(ns)
        add_switch(seg.switch)
        plug(seg.switch, seg.client, "c", mac_for(CLIENT_HOST))
        address_host(seg.client, seg.client_address)
        yield seg
        completed = True
    finally:
        began = time.monotonic()
        errors = tear_down(seg.containers, seg.cgroups, seg.namespaces, seg.workdir)
        if verbose:
            print(f"\n{what} teardown {time.monotonic() - began:.1f}s", flush=True)
        if errors and completed:
            raise errors[0]


@contextlib.contextmanager
def three_nodes(*, install_deb: bool = True, boot_timeout: float = 90.0,
                files: Mapping[str, str | bytes] | None = None, verbose: bool = True,
                suite: str = SUITE) -> Iterator[Cluster]:
    """Build the network, boot node1..node3 (in parallel) and yield the :class:`Cluster`.

    ``suite``: the Debian release of the nodes (bookworm: Proxmox VE 8, CTDB 4.17;
    trixie: Proxmox VE 9, CTDB 4.22); its image is built once and cached like the others.

    ``files`` are placed in every node before boot. ``install_deb`` installs the project's
    .deb (built first if stale) in each node. ``cluster.timings`` holds what each setup
    phase took; with ``verbose`` they are printed as well.
    """
    missing = missing_requirements()
    if missing:
        raise ClusterError("cannot build the cluster: " + "; ".join(missing))
    with segment(NETNS_PREFIX, SUBNET, lambda: nspawn.ensure_base_image(CLUSTER_PACKAGES, suite),
                 install_deb=install_deb, what="cluster", verbose=verbose) as seg:
        timings = seg.timings
        cluster: Cluster | None = None
        try:
            shared, shares_d = seg.workdir / "cluster", seg.workdir / "shares.d"
            for d in (shared, shares_d):
                d.mkdir()
            began = time.monotonic()
            cluster = Cluster(seg.tag, seg.switch, seg.client, seg.client_address, [], shared, shares_d, seg.image,
                              seg.deb, seg.workdir, timings)
            for index, host in enumerate(NODE_HOSTS):
                port = f"n{index + 1}"
                node = ClusterNode(f"node{index + 1}", index, f"{SUBNET}.{host}", mac_for(host), f"{seg.tag}{port}",
                                   port, _NOT_BOOTED, powered=False)
                seg.add_host(port, node.address, node.mac)
                cluster.nodes.append(node)
            timings["network"] = time.monotonic() - began

            # Started one after the other (each start moves this process into the container's
            # cgroup for a moment), then waited for and installed in parallel.
            began = time.monotonic()
            for node in cluster.nodes:
                node.container = seg.boot(node.switch_veth, {**_node_files(cluster, node), **(files or {})},
                                          _nspawn_args(cluster, node))

            def ready(node: ClusterNode) -> Callable[[], float]:
                def job() -> float:
                    node.container.wait_until_running(boot_timeout)
                    node.powered = True
                    booted = time.monotonic() - began
                    if install_deb:
                        debpkg.install_deb(node.container, seg.deb)
                    return booted

                return job

            boots = in_parallel([ready(node) for node in cluster.nodes])
            timings["boot, slowest of 3 (parallel)"] = max(boots)
            timings["boot + install .deb (parallel)"] = time.monotonic() - began
            degraded = {n.name: n.container.failed_units for n in cluster.nodes if n.container.failed_units}
            if degraded:
                details = "\n".join(
                    cluster.run(name, "journalctl", "--no-pager", "-b", "-u", unit, check=False).stdout
                    + cluster.run(name, "systemctl", "status", "--no-pager", unit, check=False).stdout
                    for name, units in degraded.items() for unit in units
                )
                raise ClusterError(f"nodes booted degraded: {degraded}\n{details}")
            timings["setup total"] = time.monotonic() - seg.started
            if verbose:
                print("\ncluster setup: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()), flush=True)
            yield cluster
        finally:
            if cluster is not None:  # power_on replaces a node's container
                seg.containers.extend(n.container for n in cluster.nodes
                                      if n.container not in (*seg.containers, _NOT_BOOTED))


def tear_down(containers: Sequence[SystemdContainer], cgroups: Sequence[str], namespaces: Sequence[str],
              workdir: Path) -> list[Exception]:
    """Kill the containers hard (nothing of a test network needs an orderly shutdown), remove
    their files, cgroups, the namespaces and ``workdir``; every step is tried, the errors
    are returned."""
    for container in containers:
        with contextlib.suppress(Exception):
            _kill_hard(container)
    errors: list[Exception] = []
    for container in containers:
        try:
            container.stop()
        except Exception as error:
            errors.append(error)
    for name in cgroups:
        remove_cgroup(name)
    for ns in reversed(namespaces):
        _ip("netns", "delete", ns, check=False)
    if workdir.exists():
        try:
            nspawn._remove_tree(workdir)
        except Exception as error:
            errors.append(error)
    return errors


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


__all__ = [
    "CLUSTER_DIR",
    "CLUSTER_PACKAGES",
    "CTDB_FLAGS",
    "SHARES_D",
    "SUBNET",
    "Cluster",
    "ClusterError",
    "ClusterNode",
    "Segment",
    "add_switch",
    "address_host",
    "boot",
    "in_namespace",
    "in_parallel",
    "mac_for",
    "missing_requirements",
    "own_cgroup",
    "plug",
    "remove_stale",
    "segment",
    "tear_down",
    "three_nodes",
    "wait_for",
]
