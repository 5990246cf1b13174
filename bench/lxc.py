"""How long from a share file with `mode = "lxc"` dropped to the share served through its
own container, and how long an edit takes to reach clients, against real LXC containers
through the `pct` test stand-in (tests/support/pct_standin), with native mode as the peer
in the same run.

    .venv/bin/python bench/lxc.py [--runs 5]

Needs root (LXC, network namespaces). One sandbox node (its own smbd for native shares,
a network namespace with the bridge, the agent running in it), then `--runs` times each:

* **lxc drop -> served**: write `lxcN.toml` (`mode = "lxc"`, its own address, the
  sandbox's passdb user in `valid_users`) and time until that user lists the share on
  the container's address (a new smbclient connection every 0.1 s). The container is
  created, started, the user copied in, smb.conf pushed. Then the file is removed and
  the container destroyed before the next run.
* **native drop -> served**: the same for a native share on the node's smbd.
* **lxc edit -> live**: `read_only` toggled on a served LXC share; time until a write is
  refused (or accepted again) over SMB. smb.conf pushed, smbd reloaded inside.

Prints every sample, then n, median and max per case and the ratio of the medians. How
much of the LXC time is the stand-in rather than LXC: its `pct` is a Python program
started per call (as Proxmox's `pct` is a Perl one); each call costs about 0.1 s here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.samples import summary
from tests.support.agent import wait_for, write_share
from tests.support.pct_standin.node import lxc_agent, smbclient


def until(predicate: object, began: float, timeout: float = 180.0) -> float:
    assert callable(predicate)
    while time.monotonic() - began < timeout:
        if predicate():
            return time.monotonic() - began
        time.sleep(0.1)
    raise TimeoutError(f"not reached within {timeout:g}s")


def lxc_body(user: str, address: str, read_only: bool = False) -> str:
    return (f'path = "/srv/smb/bench"\nmode = "lxc"\nread_only = {"true" if read_only else "false"}\n'
            f'valid_users = ["{user}"]\n\n[lxc]\naddress = "{address}/24"\nmemory = "256M"\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with lxc_agent() as (lab, agent):
        box = agent.box
        try:
            box.share_dir("bench")
            probe = box.root / "probe.txt"
            probe.write_text("bench\n")
            lxc, native, edits = [], [], []
            for run in range(args.runs):
                address = lab.address(40 + run)
                began = time.monotonic()
                write_share(box, f"lxc{run}.toml", lxc_body(box.user, address))
                lxc.append(until(lambda a=address, r=run: smbclient(lab, agent, a, f"lxc{r}", "ls").returncode == 0,
                                 began))
                print(f"run {run + 1}: lxc drop -> served {lxc[-1]:.2f} s", flush=True)
                read_only = False
                for _edit in range(2):
                    read_only = not read_only
                    began = time.monotonic()
                    write_share(box, f"lxc{run}.toml", lxc_body(box.user, address, read_only))
                    wanted = 0 if not read_only else 1

                    def refused(a: str = address, r: int = run, w: int = wanted) -> bool:
                        put = smbclient(lab, agent, a, f"lxc{r}", f"put {probe} probe-{time.monotonic()}")
                        return (put.returncode != 0) == bool(w)

                    edits.append(until(refused, began))
                    print(f"run {run + 1}: lxc edit read_only={read_only} -> live {edits[-1]:.2f} s", flush=True)
                (box.shares_dir / f"lxc{run}.toml").unlink()
                wait_for(lambda: not list((box.root / "etc/pve/nodes").glob("*/lxc/*.conf")), timeout=120,
                         interval=0.2)
                began = time.monotonic()
                write_share(box, f"native{run}.toml", 'path = "/srv/smb/bench"\n')
                native.append(until(lambda r=run: box.smbclient(f"native{r}", "ls", timeout=10).returncode == 0,
                                    began))
                print(f"run {run + 1}: native drop -> served {native[-1]:.2f} s", flush=True)
                (box.shares_dir / f"native{run}.toml").unlink()
            ours = summary("lxc: share file dropped -> served through its container", lxc)
            peer = summary("native: share file dropped -> served by the node's smbd", native)
            print(f"ratio lxc/native: {ours / peer:.1f}")
            summary("lxc: read_only edited -> live inside (smb.conf pushed, smbd reloaded)", edits)
        except TimeoutError:
            print(json.dumps({k: (agent.status() or {}).get(k) for k in ("shares", "jobs")}, indent=1)[:6000])
            print("\n".join(line for line in agent.log_text().splitlines() if " DEBUG " not in line)[-4000:])
            raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
