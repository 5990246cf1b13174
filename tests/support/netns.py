"""Two network namespaces joined by a veth pair: a real Ethernet link for tests to put frames on.

Namespace names carry the test process's pid and a random suffix, so parallel runs and
other people's namespaces are never touched, and both namespaces are deleted when the
`with` block ends however it ends (deleting a namespace removes its veth end too). The
test process itself never changes namespace: code runs in one through a child process
(`ip netns exec NS python -c CODE`) that imports the project from this checkout.

No namespaces (not root, no iproute2): the test is skipped with the reason, or fails
when CI is set (a skipped real-component test proves nothing there).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What a child needs to import `smbgw_plugins` from a bare checkout (as conftest.py does).
PRELUDE = "from smbgw_agent.platform.pluginhost import map_source_tree_plugins; map_source_tree_plugins()\n"
TIMEOUT = 60.0


@dataclass(frozen=True)
class End:
    """One end of the link: its namespace, interface name and MAC."""

    namespace: str
    interface: str
    mac: bytes


@dataclass(frozen=True)
class VethPair:
    a: End
    b: End


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, when the machine cannot give us namespaces."""
    if os.environ.get("CI"):
        pytest.fail(f"network namespaces unavailable under CI: {reason}")
    pytest.skip(f"network namespaces unavailable: {reason}")


def ip(*args: str, namespace: str | None = None) -> str:
    """Run iproute2 (in `namespace` if given); its stdout, CalledProcessError on failure."""
    prefix = ["ip", "-n", namespace] if namespace else ["ip"]
    done = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          stdin=subprocess.DEVNULL)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout


def link_mac(namespace: str, interface: str) -> bytes:
    (link,) = json.loads(ip("-j", "link", "show", "dev", interface, namespace=namespace))
    return bytes.fromhex(link["address"].replace(":", ""))


def _add_namespace(name: str) -> None:
    try:
        ip("netns", "add", name)
    except subprocess.CalledProcessError as error:
        unavailable(f"ip netns add {name}: {error.stderr.strip()}")


def _delete_namespace(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=TIMEOUT, check=False,
                   stdin=subprocess.DEVNULL)


def link_namespaces(a: str, b: str) -> VethPair:
    """veth-a in namespace `a` linked to veth-b in `b`, links and lo up (also to put the
    link back after a test deleted it)."""
    ip("link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", b, namespace=a)
    for namespace, interface in ((a, "veth-a"), (b, "veth-b")):
        ip("link", "set", "lo", "up", namespace=namespace)
        ip("link", "set", interface, "up", namespace=namespace)
    return VethPair(End(a, "veth-a", link_mac(a, "veth-a")), End(b, "veth-b", link_mac(b, "veth-b")))


@contextlib.contextmanager
def veth_pair(prefix: str = "smbgwt") -> Iterator[VethPair]:
    """Namespaces PREFIX<pid>x<random>a and ...b, linked by veth-a <-> veth-b, links and lo up."""
    if shutil.which("ip") is None:
        unavailable("iproute2 (ip) is not installed")
    stem = f"{prefix}{os.getpid()}x{secrets.token_hex(3)}"
    created: list[str] = []
    try:
        for name in (f"{stem}a", f"{stem}b"):
            _add_namespace(name)
            created.append(name)
        yield link_namespaces(*created)
    finally:
        for name in reversed(created):
            _delete_namespace(name)


def python_command(namespace: str, code: str, *args: str) -> list[str]:
    """`ip netns exec NAMESPACE python -c PRELUDE+CODE ARGS`: this interpreter, this checkout."""
    return ["ip", "netns", "exec", namespace, sys.executable, "-c", PRELUDE + code, *args]


def child_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}


def run_python(namespace: str, code: str, *args: str, prefix: Sequence[str] = (),
               timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run CODE in NAMESPACE and wait; `prefix` goes between `ip netns exec NS` and python
    (e.g. setpriv to drop a capability)."""
    command = python_command(namespace, code, *args)
    command[4:4] = prefix
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=child_env(),
                          check=False, stdin=subprocess.DEVNULL)


def start_python(namespace: str, code: str, *args: str) -> subprocess.Popen[str]:
    """Start CODE in NAMESPACE with pipes for stdin and stdout, for a child the test talks to.

    The caller waits for it (`communicate`) or kills it, by this object, in its own finally.
    """
    return subprocess.Popen(python_command(namespace, code, *args), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


@contextlib.contextmanager
def started(namespace: str, code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`start_python`, and the child killed (by its pid) if it is still running at the end."""
    child = start_python(namespace, code, *args)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=TIMEOUT)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()
