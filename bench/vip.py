"""How long claiming a virtual IP takes: probe, add, and the first announcement on the wire.

    nice .venv/bin/python bench/vip.py [--runs 30] [--window 0.6] [--probes 3] [--kernel-ipv6]

Needs root (network namespaces, raw sockets). Two namespaces joined by a veth pair (as the
integration tests build them, tests/support/netns.py): A claims, B is a host on the same
subnet whose raw AF_PACKET socket (ETH_P_ALL, no code under test) notes the first
gratuitous ARP (sender = target address) or unsolicited neighbour advertisement from A's
MAC for each address. A fresh address per run (nothing cached in B or in A's kernel), and
the address removed again after each run (`ip addr del`).

In A one long-lived child (`ip netns exec A python`, so no interpreter start in any run)
drives every case, told what to do over a pipe:
  smbgw        the agent's own calls, as its pass makes them: `claim.probe_all([(vip,
               link)], settings)`, then `claim.add(vip, link, probed=window > 0)`, then
               `Announcer.claimed()`, which sends the first announcement on the calling
               thread (`probe.announce`) before it returns; the announcer's thread is not
               started, so the rest of the burst never goes out. Not included: the ledger
               write the agent makes before `add`, and the link lookup (the pass has it).
               Cases: IPv4 and IPv6, with probe_window 0 (no probe: what add + announce
               cost alone) and with the window and probes given (default 0.6 s, 3 probes).
               IPv6 with window 0 is added without `nodad`, as the agent does: the kernel's
               DAD then holds it tentative for 1-2 s more, which "added" does not show.
  shell (peer) what many HA scripts do, every command a fork + exec: `ip addr add ADDR/16
               dev IF` then `arping -U -c 1 -I IF ADDR` (iputils-arping; the time runs to
               its frame, not to its exit, a second later: arping waits out its interval).
               With a probe, `arping -D -c 3 -w 1 -I IF ADDR` first (duplicate address
               detection mode), as RFC 5227 wants: its 1 s deadline ends it after 2 probes.
               IPv4 only (arping has no IPv6). Skipped, saying so, when arping is missing.
  kernel (peer, --kernel-ipv6, off by default: ~45 s more) `ip -6 addr add` with
               net.ipv6.conf.IF.ndisc_notify = 1, so the kernel itself sends the unsolicited
               advertisement when its DAD ends (0..1 s random delay + 1 s). Without that
               sysctl, the default, plain `ip -6 addr add` announces nothing at all.

Measured from the start of the claim in A (before probing) to
  probed       (cases with a probe) `probe_all` / `arping -D` returned: the window, plus
               closing the packet socket (its release waits for an RCU grace period,
               synchronize_net: ~5-20 ms on a 2-core VM; arping pays it at exit)
  added        the address is on the interface: netlink (or `ip addr add`) returned
  announced    the first announcement for the address reached B's socket: the kernel's
               receive timestamp there (SO_TIMESTAMPNS), so B's scheduling is left out
  returned     (smbgw) `Announcer.claimed()` returned, the claim's end for the agent's
               pass: `probe.announce` closes its packet socket too, after the frames left
Clock: A's start is `time.time_ns()` and B's timestamp is CLOCK_REALTIME too. Network
namespaces do not virtualise clocks (only a time namespace would, and it offsets just
CLOCK_MONOTONIC/BOOTTIME), so both read the one host clock and the difference is
meaningful; a clock step during the run would show as an absurd sample.

The cases run interleaved, one of each per round, the order reversed every other round
(ABBA), after one unrecorded warm-up round (lazy imports, page cache for arping and ip).
Prints n, median, p90 and max per case in ms, "claim time = probe window + X ms", and
the smbgw / shell ratio of the medians for the comparable IPv4 cases. Asserts only what
the numbers need: every address free, every announcement seen in B.

Namespaces and children are removed however the run ends (Ctrl-C, SIGTERM): the children
killed by their pids, the namespaces deleted (an `arping -U` in flight ends by itself).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytest  # noqa: E402  (tests.support.netns reports a machine without namespaces as a skip)

from tests.support.netns import VethPair, ip, started, veth_pair  # noqa: E402

NET4, PREFIX4 = "10.216.0", 16  # A .1, B .2, the claimed addresses 10.216.1.10 upwards
NET6, PREFIX6 = "fd5b:9c1e:64d2::", 64
SEEN_TIMEOUT = 4.0  # s after the claim returned; the kernel's IPv6 DAD takes up to 2 s
PEER_PROBE = ("arping", "-D", "-c", "3", "-w", "1")
PEER_WINDOW = 1.0  # s: arping's -w deadline is what ends its probing

# In B: every gratuitous ARP and unsolicited NA from A's MAC, as a JSON line with the
# address and the kernel's receive timestamp (CLOCK_REALTIME, ns). Only the socket module.
CAPTURE = """
import ipaddress, json, socket, struct, sys, time
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # <asm-generic/socket.h>
interface, source = sys.argv[1], bytes.fromhex(sys.argv[2])
with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sock:
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((interface, 0))
    print(json.dumps({"ready": True}), flush=True)
    while True:
        frame, ancillary, _flags, where = sock.recvmsg(65535, 256)
        read = time.time_ns()
        if frame[6:12] != source or where[2] == socket.PACKET_OUTGOING:
            continue
        kind = int.from_bytes(frame[12:14], "big")
        if kind == 0x0806 and len(frame) >= 42 and frame[28:32] == frame[38:42] and any(frame[28:32]):
            seen = str(ipaddress.IPv4Address(frame[28:32]))
        elif kind == 0x86DD and len(frame) >= 78 and frame[20] == 58 and frame[54] == 136:
            seen = str(ipaddress.IPv6Address(frame[62:78]))
        else:
            continue
        stamps = [struct.unpack("qq", data[:16]) for level, kind, data in ancillary
                  if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16]
        at = stamps[0][0] * 10**9 + stamps[0][1] if stamps else read
        print(json.dumps({"address": seen, "at": at, "read": read}), flush=True)
"""

# In A: runs one claim per request line (JSON) and answers with its timestamps (JSON).
DRIVER = """
import json, subprocess, sys, time
from pathlib import Path
from smbgw_agent.effects import netlink
from smbgw_plugins.ha import claim
from smbgw_plugins.ha.table import VipSettings
from smbgw_plugins.ha.vips import Vip

interface = sys.argv[1]
link = netlink.link(interface)
notify = Path(f"/proc/sys/net/ipv6/conf/{interface}/ndisc_notify")  # this namespace's
pending = []  # arping -U waiting out its interval after its one frame

def run(*command):
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")

def smbgw(address, prefixlen, window, probes):
    settings = VipSettings(probe_window=window, probes=probes, announce_repeat=0.0)
    vip = Vip(address, prefixlen, interface, ("bench",))
    announcer = claim.Announcer(settings)  # not started: claimed() sends the first one itself
    start = time.time_ns()
    outcome = claim.probe_all([(vip, link)], settings)[address]
    if outcome is not None:
        raise outcome
    probed = time.time_ns()
    claim.add(vip, link, probed=window > 0)
    added = time.time_ns()
    announcer.claimed(address, link.name, link.mac)
    return start, probed, added, time.time_ns()

def shell(address, prefixlen, probe):
    start = time.time_ns()
    if probe:
        run(*probe, "-I", interface, address)  # exit 1: someone answered
    probed = time.time_ns()
    run("ip", "addr", "add", f"{address}/{prefixlen}", "dev", interface)
    added = time.time_ns()
    pending.append(subprocess.Popen(["arping", "-U", "-c", "1", "-I", interface, address],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return start, probed, added, time.time_ns()

def kernel(address, prefixlen):
    notify.write_text("1")
    start = time.time_ns()
    run("ip", "-6", "addr", "add", f"{address}/{prefixlen}", "dev", interface)
    added = time.time_ns()
    return start, start, added, added

def cleanup(address, prefixlen):
    while pending:
        child = pending.pop()
        if child.poll() is None:
            child.terminate()
        child.wait()
    run("ip", "addr", "del", f"{address}/{prefixlen}", "dev", interface)
    notify.write_text("0")

print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    try:
        op = request.pop("op")
        if op == "smbgw":
            reply = dict(zip(("start", "probed", "added", "done"), smbgw(**request)))
        elif op == "shell":
            reply = dict(zip(("start", "probed", "added", "done"), shell(**request)))
        elif op == "kernel":
            reply = dict(zip(("start", "probed", "added", "done"), kernel(**request)))
        else:
            cleanup(**request)
            reply = {}
    except Exception as error:
        reply = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(reply), flush=True)
"""


def percentile(values: list[float], pct: float) -> float:
    """Nearest rank, as bench/latency.py has it (not imported: mypy would follow it)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))]


@dataclass
class Case:
    label: str
    family: int
    request: dict[str, Any]  # the driver's op and arguments, less the address
    window: float  # s of probing before the address is added
    peer_of: str | None = None  # the smbgw case this shell case compares with
    probed: list[float] = field(default_factory=list)  # ms from the start
    added: list[float] = field(default_factory=list)
    announced: list[float] = field(default_factory=list)
    returned: list[float] = field(default_factory=list)


class Capture:
    """B's raw socket: the first time each address was announced (ns, CLOCK_REALTIME)."""

    def __init__(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        self._stdout = child.stdout
        if not json.loads(self._stdout.readline() or "{}").get("ready"):
            raise SystemExit("the capture in B did not start (raw socket?)")
        self._first: dict[str, int] = {}
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._stdout:
            entry = json.loads(line)
            with self._cond:
                self._first.setdefault(entry["address"], int(entry["at"]))
                self._cond.notify_all()

    def first(self, address: str, timeout: float) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: address in self._first, timeout)
            return self._first.get(address)


class Driver:
    """The child in A that claims."""

    def __init__(self, child: subprocess.Popen[str]) -> None:
        assert child.stdin is not None and child.stdout is not None
        self._stdin, self._stdout = child.stdin, child.stdout
        if not json.loads(self._stdout.readline() or "{}").get("ready"):
            raise SystemExit(f"the driver in A did not start: {child.stderr.read() if child.stderr else ''}")

    def call(self, **request: Any) -> dict[str, Any]:
        self._stdin.write(json.dumps(request) + "\n")
        self._stdin.flush()
        reply: dict[str, Any] = json.loads(self._stdout.readline() or '{"error": "the driver in A exited"}')
        if "error" in reply:
            raise SystemExit(f"{request}: {reply['error']}")
        return reply


def addresses(family: int) -> Iterator[str]:
    """Fresh addresses on the LAN's subnet, never the same twice in a run."""
    for index in range(50_000):
        if family == 4:
            yield f"10.216.{1 + index // 200}.{10 + index % 200}"
        else:
            yield str(ipaddress.IPv6Address(f"{NET6}1:0") + index)


def lan(pair: VethPair) -> None:
    for end, host in ((pair.a, 1), (pair.b, 2)):
        ip("addr", "add", f"{NET4}.{host}/{PREFIX4}", "dev", end.interface, namespace=end.namespace)
        ip("-6", "addr", "add", f"{NET6}{host}/{PREFIX6}", "dev", end.interface, "nodad", namespace=end.namespace)


def cases(window: float, probes: int, arping: bool, kernel6: bool) -> list[Case]:
    found: list[Case] = []
    for family, prefixlen, name in ((4, PREFIX4, "IPv4"), (6, PREFIX6, "IPv6")):
        found.append(Case(f"smbgw {name}, no probe", family,
                          {"op": "smbgw", "prefixlen": prefixlen, "window": 0.0, "probes": probes}, 0.0))
        found.append(Case(f"smbgw {name}, probe {window:g} s x{probes}", family,
                          {"op": "smbgw", "prefixlen": prefixlen, "window": window, "probes": probes}, window))
    if arping:
        found.append(Case("shell IPv4, ip addr add; arping -U", 4,
                          {"op": "shell", "prefixlen": PREFIX4, "probe": None}, 0.0, found[0].label))
        found.append(Case("shell IPv4, arping -D -c 3 -w 1 first", 4,
                          {"op": "shell", "prefixlen": PREFIX4, "probe": list(PEER_PROBE)}, PEER_WINDOW,
                          found[1].label))
    if kernel6:
        found.append(Case("kernel IPv6, ip -6 addr add + ndisc_notify", 6,
                          {"op": "kernel", "prefixlen": PREFIX6}, 0.0))
    return found


def claim_once(driver: Driver, capture: Capture, case: Case, address: str) -> tuple[float, float, float, float]:
    """One claim: (probed, added, announced, returned) in ms from its start; the address
    removed after."""
    try:
        reply = driver.call(address=address, **case.request)
        seen = capture.first(address, SEEN_TIMEOUT)
    finally:
        driver.call(op="cleanup", address=address, prefixlen=case.request["prefixlen"])
    if seen is None:
        raise SystemExit(f"{case.label}: no announcement of {address} reached B within {SEEN_TIMEOUT:g} s")
    start = reply["start"]
    return ((reply["probed"] - start) / 1e6, (reply["added"] - start) / 1e6, (seen - start) / 1e6,
            (reply["done"] - start) / 1e6)


def measure(pair: VethPair, todo: list[Case], runs: int) -> None:
    fresh = {4: addresses(4), 6: addresses(6)}
    with ExitStack() as stack:
        capture = Capture(stack.enter_context(started(pair.b.namespace, CAPTURE, pair.b.interface,
                                                      pair.a.mac.hex())))
        driver = Driver(stack.enter_context(started(pair.a.namespace, DRIVER, pair.a.interface)))
        for round_ in range(-1, runs):  # round -1: warm-up, not recorded
            for case in todo if round_ % 2 == 0 else reversed(todo):
                probed, added, announced, returned = claim_once(driver, capture, case, next(fresh[case.family]))
                if round_ >= 0:
                    case.probed.append(probed)
                    case.added.append(added)
                    case.announced.append(announced)
                    case.returned.append(returned)
                time.sleep(0.02)


def line(label: str, what: str, values: list[float]) -> str:
    return (f"{label:<42} {what:<9} n={len(values):<3} p50={statistics.median(values):8.2f} ms  "
            f"p90={percentile(values, 90):8.2f} ms  max={max(values):8.2f} ms")


def report(todo: list[Case]) -> None:
    print()
    for case in todo:
        label = case.label
        if case.window:
            print(line(label, "probed", case.probed))
            label = ""
        print(line(label, "added", case.added))
        print(line("", "announced", case.announced))
        if case.request["op"] == "smbgw":
            print(line("", "returned", case.returned))
    print("\n== claim time (start -> first announcement in B, medians)")
    for case in todo:
        median = statistics.median(case.announced)
        window = f"probe window {case.window:g} s" if case.window else "no probe"
        print(f"{case.label:<42} {median:8.1f} ms = {window} + {median - case.window * 1000:.1f} ms")
    by_label = {case.label: case for case in todo}
    pairs = [(by_label[case.peer_of], case) for case in todo if case.peer_of]
    if pairs:
        print("\n== smbgw / shell peer (medians of announced; then less each side's probe window)")
    for ours, peer in pairs:
        mine, theirs = statistics.median(ours.announced), statistics.median(peer.announced)
        print(f"{ours.label:<32} {mine:8.1f} ms  vs  {peer.label:<38} {theirs:8.1f} ms  ratio {mine / theirs:.3f}")
        if ours.window or peer.window:
            mine, theirs = mine - ours.window * 1000, theirs - peer.window * 1000
            print(f"{'  past the window':<32} {mine:8.1f} ms  vs  {'':<38} {theirs:8.1f} ms  "
                  f"ratio {mine / theirs:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30, help="claims per case (default 30)")
    parser.add_argument("--window", type=float, default=0.6, help="probe window, s (default 0.6, the agent's)")
    parser.add_argument("--probes", type=int, default=3, help="probes in the window (default 3, the agent's)")
    parser.add_argument("--kernel-ipv6", action="store_true",
                        help="also the kernel's own IPv6 announcement after DAD (ndisc_notify), ~45 s more")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/vip.py needs root: network namespaces and raw sockets")
    arping = shutil.which("arping") is not None and "iputils" in subprocess.run(
        ["arping", "-V"], capture_output=True, text=True, check=False).stdout
    print(f"== VIP claim time, {args.runs} runs per case, kernel {os.uname().release}")
    if not arping:
        print("iputils arping not found: the shell peer (ip addr add; arping -U) is skipped; "
              "apt-get install iputils-arping")
    todo = cases(args.window, args.probes, arping, args.kernel_ipv6)
    signal.signal(signal.SIGTERM, lambda _number, _frame: sys.exit("bench/vip.py: terminated"))  # finally blocks run
    started_at = time.monotonic()
    try:
        with veth_pair("smbgwbv") as pair:
            lan(pair)
            measure(pair, todo, args.runs)
    except pytest.skip.Exception as skipped:
        raise SystemExit(f"bench/vip.py: {skipped.msg}") from None
    report(todo)
    print(f"\n({time.monotonic() - started_at:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
