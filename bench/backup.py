"""What the backup plugin costs at 200 shares: taking and pruning snapshots, and idling.

    nice .venv/bin/python bench/backup.py [--shares 200] [--idle-seconds 60] [--idle-repeats 2]
                                          [--keep-sandbox]

The real agent of this checkout (this interpreter, PYTHONPATH = this tree), real smbd on
loopback, and a real btrfs file system (a loop-mounted image, quotas off) in which every
share is a subvolume holding a few small files. Prints medians and percentiles; asserts
only what the numbers need (every snapshot succeeded, every share ends with 3 of ours).

1. Snapshot + prune. N shares with `[backup] schedule = "*-12-31 23:59"` (nothing fires
   on its own) and `keep = { last = 3 }`. `smbgwctl snapshot SHARE` for every share in
   turn, four rounds:
     snapshot wall     the CLI's wall time, request -> job done (includes starting the
                       CLI's interpreter and loading its plugins: what an admin waits)
     snapshot job      the job's own duration, as the agent's reply reports it
     prune latency     round 4 takes each share to 4 snapshots; the pass after the job ends
                       prunes the oldest. From outside: the CLI's return -> 3 of ours again
                       (the `.snapshots` directories are polled every 20 ms; usually 0, the
                       prune is done before the CLI has exited). From the agent's log: the
                       job's end (its start line + its duration) -> "pruned snapshot", and
                       -> that pass's "pass: ..." line (logged after the plugins' observe
                       and status.json, which the pass's own duration leaves out)
     prune total       round 4's first request -> every share has exactly 3 of ours;
                       and from the last round-4 reply to that moment (the tail)
     passes            the pass durations in the agent's log (`pass: ... in N ms`, one per
                       pass that changed something), rounds 1-3 (recording a run) and
                       round 4 (recording it and pruning)
     agent CPU         the agent's utime + stime over the four rounds, per snapshot
2. Idle CPU. The same N shares, nothing to do: the agent's own CPU time (utime + stime of
   /proc/PID/stat) and its waited-for children's (cutime + cstime: mostly mode_native's
   `smbstatus` every 15 s, in both peers) over an idle window, as seconds per minute and
   % of one core; the full resync pass's duration (status.json); the passes in the window
   (status.json `passes`: a full resync every 60 s, the default), and the wake-ups of the
   agent's main thread (its voluntary context switches: it sleeps until a deadline, at
   most 2 s for the idle guards; GIL hand-offs during a pass count too). The window is
   sampled every second, so CPU and wake-ups are also given for the seconds far from any
   pass: what the loop's ticks and the schedules cost between passes, apart from the
   resync. Peers in the same run: the same shares with `[backup]` (hourly schedules) and
   without; the difference is what N schedules cost. The hourly schedules are `*:MM` with
   minutes chosen outside the measured span (and `hourly` itself when :00 is), so no
   snapshot fires in a window; the bench checks that none did. The two peers alternate
   (ABBA...) over `--idle-repeats` runs; medians are compared.

No `--baseline`: the previous release has no backup plugin, and for (2) the agent of this
checkout without `[backup]` is the peer.

Everything is cleaned up however the run ends (Ctrl-C, SIGTERM): the agents and smbd are
stopped by their pids, the images unmounted, the sandboxes removed (kept, without the
images, with --keep-sandbox: agent.log and status.json are there).
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.latency import AGENT, agent_env, make_box, percentile, start_agent, status, stop  # noqa: E402
from devtools.sandbox import Sandbox, free_port  # noqa: E402
from tests.support.storage import btrfs_image  # noqa: E402

KEEP = 3
ROUNDS = KEEP + 1
NEVER_SCHEDULE = "*-12-31 23:59"
OURS = re.compile(r"smbgw-\d{4}\.\d\d\.\d\d-\d\d\.\d\d\.\d\d")
PASS_LINE = re.compile(r"pass: (\d+) changed, (\d+) failed in (\d+) ms")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE = 5.0  # seconds after the agent is quiet before an idle window starts
IMAGE_SIZE = "2G"
TABLE: list[tuple[str, str, str, str]] = []  # the final table: label, value(s), ratio


# ---- the node ----------------------------------------------------------------------


def agent_toml() -> str:
    """The sandbox's agent.toml, with the product's 60 s resync and a metrics port of its
    own (a fixed one could be taken by another run on this machine)."""
    return ('[agent]\nnode = "sandbox"\nallowed_roots = ["/srv"]\nresync_interval = "60s"\n\n'
            f'[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')


def share_name(index: int) -> str:
    return f"b{index:05d}"


def make_subvolumes(box: Sandbox, count: int) -> None:
    """`count` subvolumes under the pool, each with three small files, owned by the
    share's user as an administrator would leave them."""
    for index in range(count):
        path = box.root / "srv/smb/pool" / share_name(index)
        subprocess.run(["btrfs", "subvolume", "create", str(path)], check=True, capture_output=True)
        for number, size in enumerate((200, 1500, 4000)):
            (path / f"file{number}.txt").write_bytes(os.urandom(size))
            shutil.chown(path / f"file{number}.txt", box.user, box.user)
        shutil.chown(path, box.user, box.user)


def write_shares(box: Sandbox, count: int, schedule: Callable[[int], str] | None) -> None:
    """Share files for the subvolumes; with `[backup]` when `schedule` gives one per share."""
    for index in range(count):
        body = f'path = "/srv/smb/pool/{share_name(index)}"\ncomment = "backup bench {index}"\n'
        if schedule is not None:
            body += f'[backup]\nschedule = "{schedule(index)}"\nkeep = {{ last = {KEEP} }}\n'
        (box.shares_dir / f"{share_name(index)}.toml").write_text(body)


def served(box: Sandbox) -> int:
    return sum(s.get("state") == "served" for s in status(box).get("shares", {}).values())


def wait_quiet(box: Sandbox, proc: subprocess.Popen[bytes], count: int, timeout: float = 600.0) -> None:
    """Every share served and no pass for 3 s, then SETTLE more seconds."""
    deadline = time.monotonic() + timeout
    while served(box) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{served(box)} of {count} shares served; see {box.root}/agent.log")
        time.sleep(0.2)
    passes, since = status(box).get("passes", 0), time.monotonic()
    while time.monotonic() - since < 3.0:
        time.sleep(0.2)
        now = status(box).get("passes", 0)
        if now != passes:
            passes, since = now, time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"the agent never went quiet; see {box.root}/agent.log")
    time.sleep(SETTLE)


def ours(path: Path) -> int:
    """Snapshots of ours in a share's `.snapshots` (names of the agent's own shape)."""
    try:
        return sum(1 for name in os.listdir(path / ".snapshots") if OURS.fullmatch(name))
    except FileNotFoundError:
        return 0


# ---- the agent process ---------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    at: float  # monotonic
    cpu: float  # the agent's own utime + stime, seconds
    children: float  # cutime + cstime: the commands it started and waited for
    main_wakeups: int  # the main thread's voluntary context switches
    all_switches: int  # every live thread's voluntary + involuntary switches
    threads: int
    passes: int


def _switches(task: Path) -> tuple[int, int]:
    voluntary = involuntary = 0
    for line in (task / "status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            voluntary = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches:"):
            involuntary = int(line.split()[1])
    return voluntary, involuntary


def sample(box: Sandbox, pid: int) -> ProcSample:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])  # fields 14-17 of proc(5)
    main_voluntary, _ = _switches(Path(f"/proc/{pid}/task/{pid}"))
    total, threads = 0, 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            voluntary, involuntary = _switches(task)
        except OSError:
            continue  # a thread that ended meanwhile
        total += voluntary + involuntary
        threads += 1
    return ProcSample(time.monotonic(), (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK, main_voluntary,
                      total, threads, int(status(box).get("passes", 0)))


class AgentLog:
    """The agent's log (level info) read between two byte offsets."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        return self.path.stat().st_size

    def lines(self, start: int, end: int | None = None) -> list[str]:
        with self.path.open("rb") as log:
            log.seek(start)
            data = log.read() if end is None else log.read(end - start)
        return data.decode(errors="replace").splitlines()

    def passes_ms(self, start: int, end: int | None = None) -> list[float]:
        return [float(m.group(3)) for line in self.lines(start, end) if (m := PASS_LINE.search(line))]

    def prune_times(self, start: int, end: int | None = None) -> dict[str, tuple[float, float, float]]:
        """Per share, from the log: (its snapshot job started, its oldest snapshot pruned,
        the pass that pruned it logged its end), as Unix times (ms resolution)."""
        started: dict[str, float] = {}
        pruned: dict[str, float] = {}
        ended: dict[str, float] = {}
        waiting: list[str] = []
        for text in self.lines(start, end):
            try:
                when = datetime.strptime(text[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            if match := re.search(r"started job backup:snapshot:(\S+)", text):
                started[match.group(1)] = when
            elif match := re.search(r"share (\S+): pruned snapshot ", text):
                if match.group(1) not in pruned:
                    pruned[match.group(1)] = when
                    waiting.append(match.group(1))
            elif PASS_LINE.search(text):
                for share in waiting:
                    ended[share] = when
                waiting = []
        return {share: (started[share], pruned[share], ended.get(share, float("nan")))
                for share in pruned if share in started}

    def problems(self, start: int, end: int | None = None) -> list[str]:
        return [line for line in self.lines(start, end) if " ERROR " in line or " WARNING " in line
                or "Traceback" in line]


# ---- printing ----------------------------------------------------------------------


def line(label: str, values_ms: list[float], unit: str = "ms") -> float:
    """One measurement's distribution; returns its median."""
    if not values_ms:
        print(f"{label:<52} n=0")
        return float("nan")
    median = statistics.median(values_ms)
    print(f"{label:<52} n={len(values_ms):<4} p50={median:8.1f} {unit}  p95={percentile(values_ms, 95):8.1f} {unit}"
          f"  max={max(values_ms):8.1f} {unit}")
    return median


def show_problems(what: str, problems: list[str], limit: int = 8) -> None:
    if not problems:
        print(f"   {what}: no errors or warnings in the agent's log")
        return
    print(f"   {what}: {len(problems)} error/warning line(s) in the agent's log, first {min(limit, len(problems))}:")
    for text in problems[:limit]:
        print(f"     {text[:200]}")


# ---- 1. snapshot + prune -------------------------------------------------------------


@dataclass
class PruneWatch:
    """Polls the `.snapshots` of shares armed after their 4th snapshot until each holds
    KEEP of ours; records when (monotonic)."""

    pool: Path
    armed: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    interval: float = 0.02

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="prune-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def arm(self, share: str, at: float) -> None:
        with self._lock:
            self.armed[share] = at
        if ours(self.pool / share) == KEEP:  # pruned before the CLI had returned
            self.mark(share, at)

    def mark(self, share: str, at: float) -> None:
        with self._lock:
            self.done.setdefault(share, at)

    def pending(self) -> list[str]:
        with self._lock:
            return [share for share in self.armed if share not in self.done]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for share in self.pending():
                if ours(self.pool / share) == KEEP:
                    self.mark(share, time.monotonic())


def ctl_snapshot(box: Sandbox, share: str) -> tuple[float, float]:
    """`smbgwctl snapshot SHARE`: (wall ms, the job's own ms from the reply)."""
    started = time.monotonic()
    done = subprocess.run([str(AGENT["python"]), "-m", "smbgw_agent.cli", "--root", str(box.root), "snapshot",
                           share, "--json"], env=agent_env(), capture_output=True, text=True, timeout=700,
                          check=False)
    wall = (time.monotonic() - started) * 1000
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        reply = {}
    if done.returncode != 0 or not reply.get("ok"):
        raise SystemExit(f"smbgwctl snapshot {share} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return wall, float(reply.get("duration_seconds") or 0.0) * 1000


def bench_snapshots(base: Path, count: int) -> None:
    print(f"\n== 1. snapshot + prune: {count} shares on btrfs, keep = {{ last = {KEEP} }}, agent from {AGENT['tree']}")
    box = make_box(base, "snapshots")
    (box.root / "etc/smbgw/agent.toml").write_text(agent_toml())
    pool = box.root / "srv/smb/pool"
    with btrfs_image(pool, size=IMAGE_SIZE, quotas=False):
        started = time.monotonic()
        make_subvolumes(box, count)
        write_shares(box, count, lambda _index: NEVER_SCHEDULE)
        print(f"   ({count} subvolumes made in {time.monotonic() - started:.1f} s)")
        box.start_smbd()
        proc: subprocess.Popen[bytes] | None = None
        watch = PruneWatch(pool)
        try:
            proc = start_agent(box, log_level="info")
            wait_quiet(box, proc, count)
            assert not any(ours(pool / share_name(i)) for i in range(count)), "a snapshot fired on its own"
            log = AgentLog(box.root / "agent.log")
            before = sample(box, proc.pid)
            walls: list[list[float]] = []
            jobs: list[float] = []
            last_jobs: dict[str, float] = {}  # round 4: share -> its job's ms
            offsets = [log.offset()]
            round_passes: list[int] = [before.passes]
            watch.start()
            round_started: list[float] = []
            for number in range(1, ROUNDS + 1):
                round_started.append(time.monotonic())
                walls.append([])
                for index in range(count):
                    share = share_name(index)
                    wall, job = ctl_snapshot(box, share)
                    walls[-1].append(wall)
                    jobs.append(job)
                    if number == ROUNDS:
                        watch.arm(share, time.monotonic())
                        last_jobs[share] = job
                last_reply = time.monotonic()
                if number < ROUNDS:
                    wrong = [share_name(i) for i in range(count) if ours(pool / share_name(i)) != number]
                    assert not wrong, f"after round {number}: {len(wrong)} shares without {number}: {wrong[:5]}"
                    time.sleep(max(0.0, 1.1 - (time.monotonic() - round_started[-1])))  # names are per second
                    offsets.append(log.offset())
                    round_passes.append(int(status(box).get("passes", 0)))
            deadline = time.monotonic() + 300
            while watch.pending():
                if time.monotonic() > deadline:
                    pending = watch.pending()
                    raise SystemExit(f"{len(pending)} shares still hold more than {KEEP} snapshots 300 s after "
                                     f"their 4th: {pending[:5]}; see {box.root}/agent.log")
                time.sleep(0.05)
            all_pruned = max(watch.done.values())
            time.sleep(1.0)  # the pass that pruned the last share has logged by now
            after = sample(box, proc.pid)
            offsets.append(log.offset())
            round_passes.append(after.passes)
            wrong = [share_name(i) for i in range(count) if ours(pool / share_name(i)) != KEEP]
            assert not wrong, f"{len(wrong)} shares without exactly {KEEP} snapshots at the end: {wrong[:5]}"

            early = [w for round_walls in walls[:KEEP] for w in round_walls]
            median = line("snapshot: smbgwctl wall, rounds 1-3", early)
            TABLE.append(("snapshot: smbgwctl wall, rounds 1-3 (p50)", f"{median:.1f} ms", "", ""))
            median = line("snapshot: smbgwctl wall, round 4 (prune passes)", walls[-1])
            TABLE.append(("snapshot: smbgwctl wall, round 4 (p50)", f"{median:.1f} ms", "", ""))
            median = line("snapshot: job duration in the agent, all rounds", jobs)
            TABLE.append(("snapshot: job duration in the agent (p50)", f"{median:.1f} ms", "", ""))
            for number, round_walls in enumerate(walls, 1):
                print(f"   round {number}: {len(round_walls)} snapshots in {sum(round_walls) / 1000:.1f} s")
            latencies = [(watch.done[s] - watch.armed[s]) * 1000 for s in watch.armed]
            already = sum(1 for s in watch.armed if watch.done[s] == watch.armed[s])
            median = line("prune: 4th snapshot returned -> 3 left, per share", latencies)
            TABLE.append(("prune: 4th snapshot returned -> 3 left (p50)", f"{median:.1f} ms", "", ""))
            print(f"   ({already} of {count} shares held {KEEP} again by the time their smbgwctl had returned)")
            times = log.prune_times(offsets[KEEP], None)
            ends = {share: begun + last_jobs[share] / 1000 for share, (begun, _p, _e) in times.items()
                    if share in last_jobs}
            median = line("prune (log): job ended -> pruned, per share",
                          [max(0.0, (times[s][1] - ends[s]) * 1000) for s in ends])
            TABLE.append(("prune (log): job ended -> pruned (p50)", f"{median:.1f} ms", "", ""))
            median = line("prune (log): job ended -> its pass done, per share",
                          [max(0.0, (times[s][2] - ends[s]) * 1000) for s in ends if times[s][2] == times[s][2]])
            TABLE.append(("prune (log): job ended -> its pass done (p50)", f"{median:.1f} ms", "", ""))
            if len(times) != count:
                print(f"   the log shows {len(times)} prunes after a round-4 job, not {count}")
            total = all_pruned - round_started[-1]
            tail = max(0.0, all_pruned - last_reply)
            print(f"prune total: round 4 start -> all {count} at {KEEP}: {total:.1f} s "
                  f"({total / count * 1000:.1f} ms per share, snapshot included); "
                  f"after the last reply: {tail * 1000:.0f} ms")
            TABLE.append((f"prune total, round 4 start -> all {count} at {KEEP}", f"{total:.1f} s",
                          f"{total / count * 1000:.1f} ms/share", ""))
            recording = log.passes_ms(offsets[0], offsets[KEEP])
            pruning = log.passes_ms(offsets[KEEP], offsets[-1])
            median = line("pass (log): rounds 1-3, recording a run", recording)
            TABLE.append(("pass: record a run, rounds 1-3 (p50)", f"{median:.1f} ms", "", ""))
            median = line("pass (log): round 4, recording + pruning", pruning)
            TABLE.append(("pass: record + prune, round 4 (p50)", f"{median:.1f} ms", "", ""))
            for number in range(ROUNDS):
                print(f"   round {number + 1}: {round_passes[number + 1] - round_passes[number]} passes "
                      f"(status.json), {len(log.passes_ms(offsets[number], offsets[number + 1]))} that changed "
                      "something (log)")
            cpu = after.cpu - before.cpu
            snapshots = count * ROUNDS
            print(f"agent CPU over the {snapshots} snapshots and the prunes: {cpu:.1f} s "
                  f"({cpu / snapshots * 1000:.1f} ms per snapshot) + {after.children - before.children:.1f} s in the "
                  "commands it ran (btrfs)")
            TABLE.append(("agent CPU per snapshot (incl. its passes)", f"{cpu / snapshots * 1000:.1f} ms",
                          f"+ {(after.children - before.children) / snapshots * 1000:.1f} ms children", ""))
            final = status(box)
            print(f"   status.json: pass_errors {final.get('pass_errors')}, internal_errors "
                  f"{final.get('internal_errors')}, {served(box)} of {count} served")
            show_problems("snapshot + prune", log.problems(0))
        finally:
            watch.stop()
            if proc is not None:
                stop(proc)
            box.stop_smbd()


# ---- 2. idle CPU -------------------------------------------------------------------------


def quiet_minutes(span: float) -> list[int]:
    """Minutes of the hour that no moment from a minute ago to `span` seconds from now
    (plus two minutes) falls in: an hourly `*:MM` on them does not fire meanwhile."""
    now = time.time()
    busy = {time.localtime(moment).tm_min for moment in range(int(now - 60), int(now + span + 120), 20)}
    return [minute for minute in range(60) if minute not in busy]


def hourly(minutes: list[int]) -> Callable[[int], str]:
    def schedule(index: int) -> str:
        if not minutes:
            return "hourly"
        minute = minutes[index % len(minutes)]
        return "hourly" if minute == 0 else f"*:{minute:02d}"
    return schedule


@dataclass(frozen=True)
class IdleRun:
    cpu: float  # seconds per minute
    children: float
    passes: float  # per minute
    wakeups: float  # main thread, per minute
    switches: float  # all threads, per minute
    threads: int
    resync_ms: float  # the last pass in the window (the full resync), from status.json
    quiet_cpu: float  # seconds per minute, in the seconds with no pass (the loop's ticks)
    quiet_wakeups: float  # main thread, per minute, in those seconds
    quiet_share: float  # the fraction of the window those seconds make up


def quiet_part(samples: list[ProcSample]) -> tuple[float, float, float]:
    """CPU s/min and main-thread wake-ups/min in the 1-s slices far from any pass (a
    slice in which `passes` moved, and its two neighbours, are left out), and the
    fraction of the window kept."""
    slices = list(pairwise(samples))
    busy = {i for i, (a, b) in enumerate(slices) if b.passes != a.passes}
    busy |= {i - 1 for i in busy} | {i + 1 for i in busy}
    kept = [(a, b) for i, (a, b) in enumerate(slices) if i not in busy]
    seconds = sum(b.at - a.at for a, b in kept)
    if not seconds:
        return float("nan"), float("nan"), 0.0
    total = samples[-1].at - samples[0].at
    return (sum(b.cpu - a.cpu for a, b in kept) / seconds * 60,
            sum(b.main_wakeups - a.main_wakeups for a, b in kept) / seconds * 60, seconds / total)


def idle_window(box: Sandbox, count: int, seconds: float) -> IdleRun:
    proc = start_agent(box, log_level="info")
    try:
        wait_quiet(box, proc, count)
        log = AgentLog(box.root / "agent.log")
        mark = log.offset()
        samples = [sample(box, proc.pid)]
        end = samples[0].at + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            samples.append(sample(box, proc.pid))
        first, last = samples[0], samples[-1]
        resync = float((status(box).get("pass") or {}).get("duration_seconds") or "nan") * 1000
        show_problems(f"{box.root.name}, idle window", log.problems(mark))
    finally:
        stop(proc)
    minutes = (last.at - first.at) / 60
    return IdleRun((last.cpu - first.cpu) / minutes, (last.children - first.children) / minutes,
                   (last.passes - first.passes) / minutes, (last.main_wakeups - first.main_wakeups) / minutes,
                   (last.all_switches - first.all_switches) / minutes, last.threads,
                   resync if last.passes > first.passes else float("nan"), *quiet_part(samples))


def bench_idle(base: Path, count: int, seconds: float, repeats: int) -> None:
    print(f"\n== 2. idle CPU: {count} shares, {seconds:g} s windows, {repeats} run(s) each, agent from "
          f"{AGENT['tree']}")
    span = repeats * 2 * (seconds + 180)
    minutes = quiet_minutes(span)
    if minutes:
        print(f"   [backup] schedules: hourly at {len(minutes)} minutes of the hour outside the next "
              f"{span / 60:.0f} min ({', '.join(hourly(minutes)(i) for i in range(min(4, len(minutes))))}, ...)")
    else:
        print(f"   the run spans {span / 60:.0f} min: plain `hourly`, which may fire in a window (checked below)")
    peers = {"no [backup]": None, "[backup] hourly": hourly(minutes)}
    boxes = {}
    results: dict[str, list[IdleRun]] = {peer: [] for peer in peers}
    try:
        with btrfs_image(base / "plain/srv/smb/pool", size=IMAGE_SIZE, quotas=False), \
                btrfs_image(base / "backup/srv/smb/pool", size=IMAGE_SIZE, quotas=False):
            for peer, name in zip(peers, ("plain", "backup"), strict=True):
                box = make_box(base, name)
                (box.root / "etc/smbgw/agent.toml").write_text(agent_toml())
                make_subvolumes(box, count)
                write_shares(box, count, peers[peer])
                box.start_smbd()
                boxes[peer] = box
            for repeat in range(repeats):
                order = list(peers) if repeat % 2 == 0 else list(reversed(peers))
                for peer in order:
                    run = idle_window(boxes[peer], count, seconds)
                    results[peer].append(run)
                    print(f"   {peer:<16} run {repeat + 1}: {run.cpu:6.3f} CPU s/min ({run.cpu / 60 * 100:5.2f} % of a "
                          f"core), children {run.children:.3f} s/min, {run.passes:.1f} passes/min, "
                          f"{run.wakeups:.0f} main-thread wake-ups/min, {run.switches:.0f} switches/min "
                          f"({run.threads} threads), resync pass {run.resync_ms:.0f} ms; between passes "
                          f"({run.quiet_share * 100:.0f} % of the window): {run.quiet_cpu:.3f} CPU s/min, "
                          f"{run.quiet_wakeups:.0f} wake-ups/min")
            pool = boxes["[backup] hourly"].root / "srv/smb/pool"
            fired = sum(ours(pool / share_name(i)) for i in range(count))
            print(f"   snapshots taken by the hourly schedules during the idle runs: {fired}"
                  + (" (a window included a slot: the CPU figures include them)" if fired else ""))
    finally:
        for box in boxes.values():
            box.stop_smbd()
    plain, backup = results["no [backup]"], results["[backup] hourly"]

    def median(runs: list[IdleRun], what: Callable[[IdleRun], float]) -> float:
        return statistics.median(what(run) for run in runs)

    rows: list[tuple[str, Callable[[IdleRun], float], str]] = [
        ("idle: agent CPU s/min", lambda r: r.cpu, "{:.3f}"),
        ("idle: agent CPU % of one core", lambda r: r.cpu / 60 * 100, "{:.2f} %"),
        ("idle: children CPU s/min", lambda r: r.children, "{:.3f}"),
        ("idle: passes/min (status.json)", lambda r: r.passes, "{:.1f}"),
        ("idle: full resync pass (status.json)", lambda r: r.resync_ms, "{:.0f} ms"),
        ("idle between passes: agent CPU s/min", lambda r: r.quiet_cpu, "{:.3f}"),
        ("idle between passes: main-thread wake-ups/min", lambda r: r.quiet_wakeups, "{:.0f}"),
        ("idle: main-thread vol. switches/min (all)", lambda r: r.wakeups, "{:.0f}"),  # GIL hand-offs too
        ("idle: context switches/min, all threads", lambda r: r.switches, "{:.0f}"),
    ]
    for label, what, form in rows:
        old, new = median(plain, what), median(backup, what)
        ratio = f"({new / old:.2f}x)" if old and old == old else "(n/a)"  # not 0, not nan
        TABLE.append((label, form.format(old), form.format(new), ratio))
    extra = median(backup, lambda r: r.cpu) - median(plain, lambda r: r.cpu)
    TABLE.append((f"idle: cost of {count} schedules", f"{extra:+.3f} CPU s/min",
                  f"{extra / count * 1000:+.3f} ms/min per share", ""))


def print_table(count: int) -> None:
    print(f"\n== medians ({count} shares; idle columns: no [backup] -> [backup] hourly)")
    for label, first, second, ratio in TABLE:
        arrow = " -> " if second and ratio else "    "
        print(f"{label:<46} {first:>14}{arrow}{second:<22} {ratio}")


# ---- main --------------------------------------------------------------------------------


def interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--shares", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--idle-repeats", type=int, default=2, help="runs of each idle peer (alternating)")
    parser.add_argument("--skip", choices=["snapshots", "idle"], help="leave one of the two benchmarks out")
    parser.add_argument("--keep-sandbox", action="store_true", help="keep the sandboxes (not the images)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop mounts, btrfs, smbd)", file=sys.stderr)
        return 2
    for tool in ("mkfs.btrfs", "btrfs", "smbd", "smbclient"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (make deps installs it)", file=sys.stderr)
            return 2
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too when started ignoring it (`&`)
        signal.signal(signum, interrupted)
    base = Path(tempfile.mkdtemp(prefix="smbgw-bench-backup-", dir="/var/tmp"))
    base.chmod(0o755)
    print(f"sandboxes in {base}; agent: {AGENT['python']} with PYTHONPATH={AGENT['tree']}")
    try:
        if args.skip != "snapshots":
            bench_snapshots(base, args.shares)
        if args.skip != "idle":
            bench_idle(base, args.shares, args.idle_seconds, args.idle_repeats)
        print_table(args.shares)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep_sandbox:
            print(f"sandboxes kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
