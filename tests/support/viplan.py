"""A small LAN for virtual-IP tests: two network namespaces joined by a veth pair, the
agent in A, and B a Linux host on the same subnet that listens to what A announces.

What B hears is read by a raw socket there with its own few lines of parsing, not with
the code under test; what A holds is read with `ip`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devtools.sandbox import Sandbox
from tests.support.agent import AgentProcess, write_share
from tests.support.netns import VethPair, child_env, ip, run_python, veth_pair

NET4, NET6 = "10.214.61", "fd5b:9c1e:61d2:"
TUNING = '[vip]\nprobe_window = "300ms"\nannounce_repeat = "1s"\nhealth_interval = "500ms"\n'

# Every gratuitous ARP and unsolicited NA from one MAC, as a JSON line with the address.
CAPTURE = """
import ipaddress, json, socket, sys, time
interface, source = sys.argv[1], bytes.fromhex(sys.argv[2])
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sock:
    sock.bind((interface, 0))
    print(json.dumps({"ready": True}), flush=True)
    while True:
        frame, where = sock.recvfrom(65535)
        if frame[6:12] != source or where[2] == socket.PACKET_OUTGOING:
            continue
        kind = int.from_bytes(frame[12:14], "big")
        if kind == 0x0806 and len(frame) >= 42 and frame[28:32] == frame[38:42]:
            seen = str(ipaddress.IPv4Address(frame[28:32]))
        elif kind == 0x86DD and len(frame) >= 78 and frame[20] == 58 and frame[54] == 136:
            seen = str(ipaddress.IPv6Address(frame[62:78]))
        else:
            continue
        print(json.dumps({"address": seen, "at": time.time()}), flush=True)
"""

METRICS = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9945/metrics", timeout=10).read().decode())
"""


class Wire:
    """What B hears from A: a capture child in B, read line by line in the background."""

    def __init__(self, pair: VethPair) -> None:
        command = ["ip", "netns", "exec", pair.b.namespace, sys.executable, "-c", CAPTURE, pair.b.interface,
                   pair.a.mac.hex()]
        self.child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                      env=child_env())
        assert self.child.stdout is not None
        assert json.loads(self.child.stdout.readline()).get("ready")
        self.heard: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            self.heard.append(json.loads(line))

    def announcements(self, address: str, since: float = 0.0) -> int:
        return sum(1 for entry in list(self.heard) if entry["address"] == address and entry["at"] >= since)

    def stop(self) -> None:
        self.child.kill()
        self.child.wait(10)


@contextlib.contextmanager
def lan_pair() -> Iterator[VethPair]:
    """A: .1 and ::1, B: .2 and ::2 (IPv6 without DAD, usable at once)."""
    with veth_pair("smbgwv") as pair:
        yield addressed(pair)


def addressed(pair: VethPair) -> VethPair:
    """`pair` with lan_pair's addresses: A .1 and ::1, B .2 and ::2."""
    for end, host in ((pair.a, 1), (pair.b, 2)):
        ip("addr", "add", f"{NET4}.{host}/24", "dev", end.interface, namespace=end.namespace)
        ip("-6", "addr", "add", f"{NET6}:{host}/64", "dev", end.interface, "nodad", namespace=end.namespace)
    return pair


def start_agent(box: Sandbox, pair: VethPair, prefix: list[str] | None = None) -> AgentProcess:
    config = box.root / "etc/smbgw/agent.toml"
    if "[vip]" not in config.read_text():
        config.write_text(config.read_text() + "\n" + TUNING)
    agent = AgentProcess(box, wrapper=["ip", "netns", "exec", pair.a.namespace, *(prefix or [])])
    agent.start()
    return agent


def held(pair: VethPair, interface: str | None = None) -> dict[str, int]:
    """Addresses on A's interface (or `interface`): address -> prefix length."""
    shown = json.loads(ip("-j", "addr", "show", "dev", interface or pair.a.interface, namespace=pair.a.namespace))
    return {entry["local"]: entry["prefixlen"] for link in shown for entry in link.get("addr_info", ())}


def share(box: Sandbox, name: str, vip: str, interface: str) -> Path:
    box.share_dir(name)
    return write_share(box, f"{name}.toml", f'path = "/srv/smb/{name}"\n\n[ha]\nvip = "{vip}"\n'
                                            f'interface = "{interface}"\n')


def resource(agent: AgentProcess, address: str) -> dict[str, Any]:
    found: dict[str, Any] = ((agent.status() or {}).get("resources") or {}).get(f"vip:{address}") or {}
    return found


def address_view(agent: AgentProcess, address: str) -> dict[str, Any]:
    plugin = ((agent.status() or {}).get("plugins") or {}).get("vip") or {}
    view: dict[str, Any] = (plugin.get("addresses") or {}).get(address) or {}
    return view


def metrics(pair: VethPair) -> str:
    result = run_python(pair.a.namespace, METRICS)
    assert result.returncode == 0, result.stderr
    return result.stdout


def restart(agent: AgentProcess) -> None:
    """Stop and start again, waiting for a pass of the new process: status.json outlives
    an agent (so `smbgwctl status` answers during a restart), so the old one is removed."""
    agent.stop()
    (agent.box.root / "run/smbgw/status.json").unlink(missing_ok=True)
    agent.start()
