"""What one client connection costs smbd, by the way its shares are laid out.

Every new SMB connection gets a fresh smbd child that reads the whole configuration
again, changed or not: at 2,000 shares in the agent's layout (one include file per share,
DESIGN's contract) strace shows each connection opening 2,002 files and stat-ing them
10,010 times. This measures that cost, with real smbd and smbclient on loopback, for the
layouts Samba offers for the same shares:

  includes   as the agent writes them: shares.conf includes one <share>.conf per share
  one file   the same sections, concatenated into shares.conf
  registry   the same sections imported into Samba's registry (`net conf import`,
             `registry shares = yes`): smbd loads a share from it only when a client
             asks for that share

For each, the median/p90 of `smbclient //127.0.0.1/<share> -c ls` on an unchanged share
(one TCP connection, session setup, tree connect, one listing), and for the registry a
share added with `net conf addshare` and connected to without any reload.

    .venv/bin/python bench/smbd_layouts.py [--sizes 0,2000] [--connections 15]

Asserts nothing. Each registry is the sandbox's own (under its state directory), never
the host's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.sandbox import Sandbox, free_port  # noqa: E402

HOST_REGISTRY = Path("/var/lib/samba/registry.tdb")


def connect_ms(box: Sandbox, share: str, connections: int) -> list[float]:
    times = []
    for _ in range(connections):
        started = time.monotonic()
        done = box.smbclient(share, "ls")
        times.append((time.monotonic() - started) * 1000)
        if done.returncode != 0:
            raise SystemExit(f"//{share}: {done.stdout.strip()} {done.stderr.strip()}")
    return times


def line(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"  {label:<42} p50={statistics.median(times):7.1f} ms  p90={p90:7.1f} ms  (n={len(times)})"


def reload(box: Sandbox) -> None:
    subprocess.run(["smbcontrol", "-s", str(box.smb_conf), "smbd", "reload-config"], check=True,
                   capture_output=True, timeout=30)
    time.sleep(1.0)  # children finish re-reading before the next measurement


def measure(base: Path, count: int, connections: int) -> None:
    box = Sandbox(base / f"n{count}", free_port())
    box.prepare()
    box.share_dir("probe")
    (box.shares_dir / "probe.toml").write_text('path = "/srv/smb/probe"\n')
    for index in range(count):
        box.share_dir(f"s{index:05d}")
        (box.shares_dir / f"s{index:05d}.toml").write_text(f'path = "/srv/smb/s{index:05d}"\n')
    box.start_smbd()
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("NOTIFY_SOCKET", None)
        subprocess.run([sys.executable, "-m", "smbgw_agent", "--root", str(box.root), "--once",
                        "--log-level", "warning"], env=env, check=True, timeout=600)
        print(f"{count + 1} shares:")
        print(line("includes (the agent's layout)", connect_ms(box, "probe", connections)), flush=True)

        shares_conf = box.paths.samba_dir / "shares.conf"
        includes = [row.split("=", 1)[1].strip() for row in shares_conf.read_text().splitlines()
                    if row.strip().startswith("include")]
        sections = "".join(Path(name).read_text() for name in includes)
        shares_conf.write_text(sections)
        reload(box)
        print(line("one file", connect_ms(box, "probe", connections)), flush=True)

        imported = base / f"n{count}.import.conf"
        imported.write_text(sections)
        shares_conf.write_text("")
        box.smb_conf.write_text(box.smb_conf.read_text().replace("[global]", "[global]\n\tregistry shares = yes", 1))
        started = time.monotonic()
        subprocess.run(["net", "-s", str(box.smb_conf), "conf", "import", str(imported)], check=True,
                       capture_output=True, timeout=1800)
        imported_in = time.monotonic() - started
        reload(box)
        print(line("registry", connect_ms(box, "probe", connections)), flush=True)
        started = time.monotonic()
        subprocess.run(["net", "-s", str(box.smb_conf), "conf", "addshare", "added",
                        str(box.share_dir("added")), "writeable=y"], check=True, capture_output=True, timeout=60)
        added_in = (time.monotonic() - started) * 1000
        print(line("registry, a share added, no reload", connect_ms(box, "added", connections)))
        print(f"  net conf import of every section: {imported_in:.1f} s; net conf addshare: {added_in:.0f} ms")
    finally:
        box.stop_smbd()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="0,2000", help="shares besides the one connected to")
    parser.add_argument("--connections", type=int, default=15)
    args = parser.parse_args()
    for tool in ("smbd", "smbclient", "smbcontrol", "net"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (make deps)")
    registry_before = HOST_REGISTRY.exists()
    base = Path(tempfile.mkdtemp(prefix="smbgw-layouts-", dir="/var/tmp"))
    base.chmod(0o755)  # smbd serves as the sandbox's user, who must reach the share directories
    try:
        for size in (int(s) for s in args.sizes.split(",") if s):
            measure(base, size, args.connections)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if HOST_REGISTRY.exists() != registry_before:
        print(f"WARNING: {HOST_REGISTRY} was created during the run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
