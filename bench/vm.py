"""How long from a share file with `mode = "vm"` dropped to the share served through its
own VM, and how long an edit takes to reach clients, against real QEMU VMs through the
`qm`/`pvesh` test stand-ins (tests/support/qm_standin), with native mode as the peer in
the same run.

    .venv/bin/python bench/vm.py [--runs 3]

Needs root (QEMU taps, network namespaces) and the guest image (tests/support/qemu.py,
built on first use, ~2 min). One sandbox node as tests/integration/test_mode_vm.py sets it
up (its own smbd for native shares, a network namespace with the bridge, a cloud-init
template, the agent running in the namespace), then `--runs` times each:

* **vm drop -> served**: write `vmN.toml` (`mode = "vm"`, its own static address on the
  node's bridge, the sandbox's passdb user in `valid_users`) and time until that user
  lists the share on the VM's address (a new smbclient connection every 0.5 s). The VM
  is cloned from the template, booted, cloud-init run, the user copied in, smb.conf
  pushed. Then the file is removed and the VM's config waited away before the next run.
* **native drop -> served**: the same for a native share on the node's smbd.
* **vm edit -> live**: `read_only` toggled on a served VM share; time until a write is
  refused (or accepted again) over SMB. smb.conf goes in through the guest agent and
  smbd reloads; no reboot.

Prints every sample, then n, median and max per case and the ratio of the medians.

How much of the VM time is TCG emulation: the `qm` stand-in runs QEMU with `-accel tcg`
(no KVM, whatever the machine has), so the guest's boot is CPU-bound emulation. Each run
prints its phases from the agent's own log (the runner logs every command it ran with
its duration; a line's time is when its command ended): `qm clone` done, `qm start`
returned, the first `qm guest cmd ping` that answered (guest agent up), the last
`cloud-init status` asked (cloud-init done; the agent asks every 2 s), the first guest
command after it (smbd answered on port 445, users being copied in), and served as seen
by the client. From `qm start` to the guest agent and to cloud-init done is guest boot
under TCG; with KVM a Debian cloud image boots in a few seconds. The rest (clone,
snippet, mapping, users, smbd) is the agent and the stand-ins. These phase times have
the granularity of the agent's polling (2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.samples import summary
from tests.support import qemu
from tests.support.agent import AgentProcess, wait_for, write_share
from tests.support.pct_standin.node import NODE, StandinNode, smbclient
from tests.support.qm_standin import node as qmnode

POLL = 0.5  # a new smbclient connection this often
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG ran (.*): exit (\d+) in ([\d.]+)s$")


def until(predicate: object, began: float, timeout: float = 420.0) -> float:
    assert callable(predicate)
    while time.monotonic() - began < timeout:
        if predicate():
            return time.monotonic() - began
        time.sleep(POLL)
    raise TimeoutError(f"not reached within {timeout:g}s")


def vm_body(user: str, address: str, gateway: str, read_only: bool = False) -> str:
    return (f'path = "/srv/smb/bench"\nmode = "vm"\nread_only = {"true" if read_only else "false"}\n'
            f'valid_users = ["{user}"]\n\n[vm]\naddress = "{address}/24"\ngateway = "{gateway}"\nmemory = "1G"\n')


@contextmanager
def vm_agent() -> Iterator[tuple[StandinNode, AgentProcess]]:
    """tests/support/qm_standin/node.py's node, with the shared guest image."""
    missing = qemu.missing_requirements()
    if missing:
        raise SystemExit("QEMU guests unavailable: " + "; ".join(missing))
    os.environ.pop("JOURNAL_STREAM", None)  # the agent's log lines keep their time stamps (`phases`)
    with qmnode.vm_agent(qemu.ensure_guest_image()) as (lab, agent):
        yield lab, agent


def vm_confs(lab: StandinNode) -> set[str]:
    return {p.name for p in (lab.root / f"etc/pve/nodes/{NODE}/qemu-server").glob("*.conf")}


def phases(agent: AgentProcess, dropped: float) -> dict[str, float]:
    """Seconds after the drop (Unix time `dropped`) at which the agent's log shows each
    step of the VM's creation; a step not in the log is left out."""
    found: dict[str, float] = {}
    for line in agent.log_text().splitlines():
        match = LOG_LINE.match(line)
        if match is None:
            continue
        at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - dropped
        if at < 0:
            continue
        shown, code = match[2], int(match[3])
        if shown.startswith("qm clone ") and "clone" not in found:
            found["clone"] = at
        elif re.match(r"qm start \d+$", shown) and code == 0 and "start" not in found:
            found["start"] = at
        elif re.match(r"qm guest cmd \d+ ping$", shown) and code == 0 and "agent" not in found:
            found["agent"] = at
        elif shown.endswith("-- cloud-init status") and "agent" in found and "inside" not in found:
            found["cloudinit"] = at  # the last one asked: it said done
        elif shown.startswith("qm guest exec ") and "cloudinit" in found and "inside" not in found:
            found["inside"] = at  # the first command after: users copied in, smb.conf written
    return found


def show_phases(run: int, found: dict[str, float], served: float) -> None:
    names = {"clone": "qm clone done", "start": "qm start returned", "agent": "guest agent answers",
             "cloudinit": "cloud-init done", "inside": "smbd answered (next guest exec)"}
    parts = [f"{names[key]} {found[key]:.1f}" for key in names if key in found]
    print(f"run {run + 1}: phases (s after drop, agent log): {', '.join(parts)}, served {served:.1f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with vm_agent() as (lab, agent):
        box = agent.box
        try:
            box.share_dir("bench")
            probe = box.root / "probe.txt"
            probe.write_text("bench\n")
            before = vm_confs(lab)
            vm, native, edits, to_agent, to_cloudinit, boot_share = [], [], [], [], [], []
            for run in range(args.runs):
                address = lab.address(40 + run)
                dropped = time.time()
                began = time.monotonic()
                write_share(box, f"vm{run}.toml", vm_body(box.user, address, lab.gateway))
                vm.append(until(lambda a=address, r=run: smbclient(lab, agent, a, f"vm{r}", "ls").returncode == 0,
                                began))
                print(f"run {run + 1}: vm drop -> served {vm[-1]:.2f} s", flush=True)
                found = phases(agent, dropped)
                show_phases(run, found, vm[-1])
                if "start" in found and "agent" in found and "cloudinit" in found:
                    to_agent.append(found["agent"] - found["start"])
                    to_cloudinit.append(found["cloudinit"] - found["start"])
                    boot_share.append(to_cloudinit[-1] / vm[-1])
                read_only = False
                for _edit in range(2):
                    read_only = not read_only
                    began = time.monotonic()
                    write_share(box, f"vm{run}.toml", vm_body(box.user, address, lab.gateway, read_only))
                    wanted = 0 if not read_only else 1

                    def refused(a: str = address, r: int = run, w: int = wanted) -> bool:
                        put = smbclient(lab, agent, a, f"vm{r}", f"put {probe} probe-{time.monotonic()}")
                        return (put.returncode != 0) == bool(w)

                    edits.append(until(refused, began, timeout=120))
                    print(f"run {run + 1}: vm edit read_only={read_only} -> live {edits[-1]:.2f} s", flush=True)
                (box.shares_dir / f"vm{run}.toml").unlink()
                wait_for(lambda: vm_confs(lab) == before, timeout=180, interval=0.5)
                began = time.monotonic()
                write_share(box, f"native{run}.toml", 'path = "/srv/smb/bench"\n')
                native.append(until(lambda r=run: box.smbclient(f"native{r}", "ls", timeout=10).returncode == 0,
                                    began))
                print(f"run {run + 1}: native drop -> served {native[-1]:.2f} s", flush=True)
                (box.shares_dir / f"native{run}.toml").unlink()
            ours = summary("vm: share file dropped -> served through its VM", vm)
            peer = summary("native: share file dropped -> served by the node's smbd", native)
            print(f"ratio vm/native: {ours / peer:.1f}")
            summary("vm: read_only edited -> live inside (smb.conf through the guest agent, smbd reloaded)", edits)
            if to_agent:
                summary("vm: qm start -> guest agent answers (guest boot, TCG)", to_agent)
                summary("vm: qm start -> cloud-init done (guest boot + cloud-init, TCG)", to_cloudinit)
                print(f"TCG guest boot (qm start -> cloud-init done) is a median {statistics.median(boot_share):.0%} "
                      "of vm drop -> served; the stand-in runs QEMU with -accel tcg, so this part is CPU-bound "
                      "emulation (with KVM a Debian cloud image boots in a few seconds)")
            else:
                print("TCG share: the agent's log did not show qm start / guest agent / cloud-init for any run")
        except (TimeoutError, AssertionError):
            print(json.dumps({k: (agent.status() or {}).get(k) for k in ("shares", "jobs")}, indent=1)[:6000])
            print("\n".join(line for line in agent.log_text().splitlines() if " DEBUG " not in line)[-4000:])
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
