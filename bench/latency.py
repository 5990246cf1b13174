"""How fast a dropped share file is served, and how a pass scales with the number of shares.

Real smbd on loopback, the real agent process, real smbclient. Prints medians and
percentiles; asserts nothing (timing assertions are flaky on shared machines).

    .venv/bin/python bench/latency.py [--changes 50] [--sizes 500,2000] [--baseline REV]
                                      [--rounds N] [--workdir DIR]

With `--baseline REV` (a git revision, e.g. the previous release) the same benchmarks run
against that revision's agent and this tree's, on the same machine in the same run, and
the medians are compared. Both agents run with Debian's /usr/bin/python3 and its
python3-* packages (what the .deb uses), each from its own source tree. `--rounds N`
runs everything N times, the two agents taking turns, and takes the medians over all
rounds: a machine whose speed drifts over minutes (a shared VM) then slows both alike.
(The test machine gave one tree's 10,000-share cold start pass as 3.8 s in one run and
4.8 s in the next.)

Measured:
  drop -> served   write a new share file; time until `smbclient //127.0.0.1/<share> -c ls`
                   succeeds (includes one smbclient run, ~40 ms, and the polling interval)
  connect          N shares served: `smbclient //127.0.0.1/s00000 -c ls` of a share that
                   exists. smbd reads its whole configuration again at each session
                   setup (NTLM), so this grows with N, new share or not: the floor under
                   drop -> served
  cold start       N share files, empty state: `smbgw-agent --once` wall time, the pass
                   duration the agent reports, and the daemon's start -> first pass
                   published (status.json), which is what `systemctl start` waits on
                   (the --once wall time also counts the interpreter freeing every object
                   at exit)
  one change       N shares served; add one file: drop -> served, and the duration of the
                   pass that applied it (the agent's `pass: ... changed` log line)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devtools.sandbox import Sandbox, free_port  # noqa: E402


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(label: str, values_ms: list[float]) -> None:
    RESULTS.setdefault(label.strip(), {}).setdefault(Path(AGENT["tree"]).name, []).extend(values_ms)
    print(
        f"{label:<44} n={len(values_ms):<4} p50={statistics.median(values_ms):8.1f} ms  "
        f"p90={percentile(values_ms, 90):8.1f} ms  p99={percentile(values_ms, 99):8.1f} ms  "
        f"max={max(values_ms):8.1f} ms"
    )


# The agent measured: its source tree and interpreter (see --baseline).
AGENT: dict[str, Path | str] = {"tree": REPO, "python": sys.executable}
RESULTS: dict[str, dict[str, list[float]]] = {}  # label -> {tree name: every value (ms), all rounds}


def agent_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(AGENT["tree"])}
    env.pop("NOTIFY_SOCKET", None)
    return env


def agent_cwd() -> str:
    """Where the agent's processes start: its own tree. `python -m` and `-c` put the
    working directory ahead of PYTHONPATH, so an agent started from this checkout (as
    `make bench` does) ran this checkout's code whatever AGENT["tree"] said: every
    --baseline comparison measured this tree twice until this was found."""
    return str(AGENT["tree"])


def check_agent_tree() -> str:
    """The file the agent's package is imported from, started as the benchmarks start
    it; exits if that is not in AGENT["tree"]."""
    found = subprocess.run(
        [str(AGENT["python"]), "-c", "import smbgw_agent; print(smbgw_agent.__file__)"],
        env=agent_env(), cwd=agent_cwd(), capture_output=True, text=True, check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(Path(AGENT["tree"]).resolve()):
        raise SystemExit(f"the agent would run {found}, not the code in {AGENT['tree']}")
    return found


def status(box: Sandbox) -> dict:
    try:
        return json.loads((box.root / "run/smbgw/status.json").read_text())
    except (OSError, ValueError):
        return {}


def wait_served(box: Sandbox, share: str, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if box.smbclient(share, "ls", timeout=10).returncode == 0:
            return time.monotonic()
        time.sleep(0.005)
    raise SystemExit(f"share {share} not served within {timeout}s")


def make_box(base: Path, name: str) -> Sandbox:
    root = base / name
    box = Sandbox(root, free_port())
    box.prepare()
    (box.root / "srv/smb").mkdir(parents=True, exist_ok=True)
    return box


def write_shares(box: Sandbox, count: int, prefix: str = "s") -> None:
    data = box.root / "srv/smb/data"
    data.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (box.shares_dir / f"{prefix}{index:05d}.toml").write_text(
            f'path = "/srv/smb/data"\ncomment = "bench share {index}"\n'
        )


def start_agent(box: Sandbox, log_level: str = "warning", poll: float = 0.05) -> subprocess.Popen[bytes]:
    """The daemon, returned once status.json says its first pass ended (looked at every
    `poll` seconds; parsed only once it exists)."""
    proc = subprocess.Popen(
        [str(AGENT["python"]), "-m", "smbgw_agent", "--root", str(box.root), "--log-level", log_level],
        env=agent_env(), cwd=agent_cwd(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(box.root / "agent.log", "ab"),  # noqa: SIM115
    )
    status_file = box.root / "run/smbgw/status.json"
    deadline = time.monotonic() + 120
    while not status_file.exists() or status(box).get("passes", 0) < 1:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"agent did not complete a pass; see {box.root}/agent.log")
        time.sleep(poll)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


PASS_LINE = re.compile(r"pass: ([1-9][0-9]*) changed, [0-9]+ failed in ([0-9]+) ms")


def change_pass_ms(log: Path, offset: int) -> float:
    """The duration of the first pass after `offset` in the agent's log that changed
    something: the change's own pass. (status.json says only the latest pass, and at
    10,000 shares smbd takes seconds to serve the new share, long enough for other
    passes to run meanwhile.)"""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(log, "rb") as handle:
            handle.seek(offset)
            match = PASS_LINE.search(handle.read().decode(errors="replace"))
        if match:
            return float(match.group(2))
        time.sleep(0.05)
    raise SystemExit(f"no pass that changed something in {log} after byte {offset}")


def bench_drop_latency(base: Path, changes: int, existing: int) -> None:
    box = make_box(base, f"drop-{existing}")
    write_shares(box, existing)
    box.start_smbd()
    proc = start_agent(box, log_level="info")  # info: each pass that changes something logs its time
    log = box.root / "agent.log"
    try:
        if existing:
            wait_served(box, "s00000")
            connects = []
            for _ in range(changes):
                started = time.monotonic()
                assert box.smbclient("s00000", "ls").returncode == 0
                connects.append((time.monotonic() - started) * 1000)
            summary(f"connect to an existing share, {existing} shares", connects)
        latencies, passes = [], []
        for index in range(changes):
            name = f"new{index:03d}"
            box.share_dir(name)
            offset = log.stat().st_size
            started = time.monotonic()
            (box.shares_dir / f"{name}.toml").write_text(f'path = "/srv/smb/{name}"\n')
            latencies.append((wait_served(box, name) - started) * 1000)
            passes.append(change_pass_ms(log, offset))
            time.sleep(0.05)
        summary(f"drop -> served, {existing} other shares", latencies)
        summary(f"  agent pass for that change, {existing} shares", passes)
        print(f"{'  agent RSS after those changes':<44} {rss_mib(proc.pid):8.1f} MiB ({existing} shares, "
              "every installed plugin enabled)")
    finally:
        stop(proc)
        box.stop_smbd()


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_cold_start(base: Path, count: int, repeats: int = 3) -> None:
    walls, passes, published = [], [], []
    for attempt in range(repeats):
        box = make_box(base, f"cold-{count}-{attempt}")
        write_shares(box, count)
        box.start_smbd()
        try:
            started = time.monotonic()
            subprocess.run(
                [str(AGENT["python"]), "-m", "smbgw_agent", "--root", str(box.root), "--once",
                 "--log-level", "warning"], env=agent_env(), cwd=agent_cwd(), check=True,
            )
            walls.append((time.monotonic() - started) * 1000)
            passes.append(status(box)["pass"]["duration_seconds"] * 1000)
            assert box.smbclient(f"s{count - 1:05d}", "ls").returncode == 0, "last share not served"
        finally:
            box.stop_smbd()
        shutil.rmtree(box.root, ignore_errors=True)
        published.append(daemon_first_pass_ms(base, count, attempt))
    summary(f"cold start {count} shares: process wall time", walls)
    summary(f"cold start {count} shares: reconcile pass", passes)
    summary(f"cold start {count} shares: start -> first pass", published)


def daemon_first_pass_ms(base: Path, count: int, attempt: int) -> float:
    """The daemon started on `count` fresh share files: until status.json says its first
    pass ended (polled every 10 ms), with the last share then checked to be served."""
    box = make_box(base, f"start-{count}-{attempt}")
    write_shares(box, count)
    box.start_smbd()
    try:
        started = time.monotonic()
        proc = start_agent(box, poll=0.01)
        elapsed = (time.monotonic() - started) * 1000
        try:
            assert box.smbclient(f"s{count - 1:05d}", "ls").returncode == 0, "last share not served"
        finally:
            stop(proc)
        return elapsed
    finally:
        box.stop_smbd()
        shutil.rmtree(box.root, ignore_errors=True)


def run_all(base: Path, changes: int, sizes: list[int], round_number: int) -> None:
    print(f"== round {round_number}: agent from {AGENT['tree']} ({AGENT['python']}; imports {check_agent_tree()})")
    base = base / f"run-{round_number}-{Path(AGENT['tree']).name}"  # fresh sandboxes for each
    base.mkdir(mode=0o755)
    bench_drop_latency(base, changes, 0)
    for size in sizes:
        bench_cold_start(base, size)
    if sizes:
        bench_drop_latency(base, max(10, changes // 2), max(sizes))


def checkout(revision: str, into: Path) -> Path:
    """`revision`'s source tree (git archive: no worktree bookkeeping left behind)."""
    tree = into / f"baseline-{revision.replace('/', '_')}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def print_comparison(baseline: str | None, trees: list[Path]) -> None:
    """Each benchmark's median, baseline -> this tree, with the ratio (when both ran)."""
    if len(trees) != 2:
        return
    old, new = trees[0].name, trees[1].name
    print(f"\n== medians over every round: {baseline} vs this tree")
    for label, values in RESULTS.items():
        if old in values and new in values:
            before, after = statistics.median(values[old]), statistics.median(values[new])
            ratio = after / before if before else float("nan")
            print(f"{label:<50} {before:9.1f} ms -> {after:9.1f} ms  ({ratio:.2f}x, n={len(values[new])})")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--sizes", default="500,2000")
    parser.add_argument("--baseline", help="git revision to compare with, measured in the same run")
    parser.add_argument("--rounds", type=int, default=1, help="run everything N times, the agents taking turns")
    parser.add_argument(
        "--workdir", default="/var/tmp",
        help="where the sandboxes live; a tmpfs (/dev/shm) takes the disk out of the numbers: a cold start "
             "creates one file per share, and on a virtual disk with a cold cache that alone can take seconds",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    base = Path(tempfile.mkdtemp(prefix="smbgw-bench-", dir=args.workdir))
    base.chmod(0o755)
    try:
        trees = [REPO]
        if args.baseline:
            AGENT["python"] = "/usr/bin/python3"
            trees.insert(0, checkout(args.baseline, base))
        for round_number in range(1, args.rounds + 1):
            for tree in trees:
                AGENT["tree"] = tree
                run_all(base, args.changes, sizes, round_number)
        print_comparison(args.baseline, trees)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
