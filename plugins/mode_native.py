"""Native mode: shares served by the host's own smbd.

Per pass: render each changed share into a staging directory, build a candidate
configuration (the admin's smb.conf with our include pointed at the staged files),
have testparm accept it, rename the staged files into place and reload smbd once.
A share whose staged file testparm rejects is found by bisection, left out, and
reported; the others go live. Nothing is written outside /etc/samba/smbgw except the
one marked include line in smb.conf.

Two kinds of resource are native mode's: each native share (its fragment), and the node
resource ``samba:host`` (globals.conf, the include list, the include line in smb.conf,
and a running, reloaded smbd). A change that touches neither (a new quota, say) never
reaches this plugin, so smbd is not reloaded for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from smbgw_agent.effects import deadline as pass_deadline
from smbgw_agent.effects.fileio import (
    atomic_write,
    fsync_dir,
    make_share_directory,
    remove_stale_temporaries,
    syncfs,
    syncs_one_by_one,
    write_files,
)
from smbgw_agent.effects.samba import (
    TestparmResult,
    has_managed_include,
    mentions_managed_include,
    retarget_include,
    run_testparm,
    with_managed_include,
)
from smbgw_agent.effects.services import ServiceError
from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.model.smbvalues import safe_file_stem
from smbgw_agent.observe.background import BackgroundReading
from smbgw_agent.observe.smbstatus import ShareActivity, parse_smbstatus
from smbgw_agent.platform import order
from smbgw_agent.platform.changes import CREATE, DELETE, UPDATE, Change, NodeResource, share_resource
from smbgw_agent.platform.context import CollectContext, PassContext
from smbgw_agent.platform.hookspecs import hookimpl
from smbgw_agent.platform.parameters import HOST, Parameter

from .sambaconf import (
    MAX_FRAGMENT_BYTES,
    live_spec,
    render_globals,
    render_share,
    render_shares_list,
    security_globals,
    without_declaration,
)

log = logging.getLogger(__name__)
ACTIVITY_INTERVAL = 15.0
SMBSTATUS_MAX_OUTPUT = 64 << 20
MODE = "native"
PLUGIN = "mode_native"
VALIDATE_GROUP = 1000  # shares per testparm run (see _validate)
JUDGES = 2  # testparm runs at a time, at most (see _judge_in_background)
SAMBA = "samba:host"  # the node resource: the host's Samba globals, include list and smbd
RELOAD_PENDING = "reload_pending"  # plugin state: a reload smbd still owes (survives a reload of the agent)
LISTED = "listed"  # pass scratch: the live directory was listed in this pass

@dataclass(frozen=True)
class Layout:
    """Where native mode keeps its files. Its paths are made once (see `_layout`): a
    cold start asks for the staging area twice per share."""

    directory: Path
    smb_conf: Path

    @functools.cached_property
    def globals_file(self) -> Path:
        return self.directory / "globals.conf"

    @functools.cached_property
    def shares_list(self) -> Path:
        return self.directory / "shares.conf"

    @functools.cached_property
    def staging(self) -> Path:
        return self.directory / ".staging"

    def share_file(self, name: str, directory: Path | None = None) -> Path:
        return _share_file(self.directory if directory is None else directory, name)


@functools.lru_cache(maxsize=16)
def _layout(directory: Path, smb_conf: Path) -> Layout:
    return Layout(directory, smb_conf)


@functools.lru_cache(maxsize=65536)
def _share_file(directory: Path, key: str) -> Path:
    """Cached: a pass asks for every share's live file several times (and a cold start
    for its staged one four times), and pathlib's join cost more than the rest of
    planning a share (the same Path objects key `_live`)."""
    return directory / share_file_name(key)


@functools.lru_cache(maxsize=65536)
def share_file_name(key: str) -> str:
    """`share-<stem>.conf`; cached because a pass asks for every share's name."""
    return f"share-{safe_file_stem(key)}.conf"


def _is_fragment_name(name: str) -> bool:
    return name.startswith("share-") and name.endswith(".conf")


@contextlib.contextmanager
def _judge_in_background(ctx: PassContext) -> Iterator[Callable[[Path], Future[TestparmResult | None]]]:
    """testparm candidates on threads of their own, under the pass's deadline, while this
    thread stages the next group. The first candidate is judged alone: once testparm
    cannot judge one (missing, hanging, garbled), the later ones are not run (their
    verdict is None), so a missing or hanging testparm costs one run, not one per group.
    After a first verdict, up to two run at a time (testparm is single-threaded, and a
    Proxmox node has cores to spare for a pass that stages thousands of shares). Leaving
    the block waits for those running.

    A cold start at 10,000 shares spent 0.8 s waiting for ten testparm runs in a row."""
    deadline = pass_deadline.current()
    stop = threading.Event()
    first_judged = threading.Event()
    submitted = 0

    def judge(candidate: Path, first: bool) -> TestparmResult | None:
        if not first:
            first_judged.wait()
        if stop.is_set():
            return None
        try:
            with pass_deadline.bounded(deadline) if deadline is not None else contextlib.nullcontext():
                result = run_testparm(ctx.runner, candidate)
            if result.unavailable:
                stop.set()
            return result
        finally:
            first_judged.set()

    def submit(candidate: Path) -> Future[TestparmResult | None]:
        nonlocal submitted
        submitted += 1
        return pool.submit(judge, candidate, submitted == 1)

    workers = min(JUDGES, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="testparm") as pool:
        try:
            yield submit
        except BaseException:
            stop.set()  # staging failed (a full disk): run none of what is queued
            raise
        finally:
            first_judged.set()  # nothing waits for a first verdict that will not come


@dataclass
class Staged:
    writes: dict[str, tuple[ShareSpec, str]] = field(default_factory=dict)
    removals: set[str] = field(default_factory=set)
    # Fragments whose only difference is the declaration line (another plugin's table
    # changed): written in place, without testparm or a reload; smbd reads nothing new.
    records: dict[str, str] = field(default_factory=dict)


class NativeModePlugin:
    """Registered as the `mode_native` entry point; one instance per agent."""

    def __init__(self) -> None:
        self.last_reload: str | None = None
        self.last_error: str | None = None
        self._live: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self._rendered: dict[str, tuple[str, str, Path, tuple[tuple[str, str], ...], str]] = {}
        self._swept = False
        # Share fragments in the live directory by file name (see `_fragments`).
        self._present: set[str] | None = None
        self._stopped = False
        self._activity: BackgroundReading[tuple[ShareActivity, bool]] | None = None

    def _render(self, ctx: PassContext, spec: ShareSpec, host_path: Path) -> str:
        """Rendering 2,000 templates per pass is measurable; specs are immutable, so cache."""
        parameters = tuple(ctx.share_parameters(spec, HOST))
        cached = self._rendered.get(spec.key)
        if cached and cached[:4] == (spec.digest(), spec.file, host_path, parameters):
            return cached[4]
        text = render_share(spec, host_path, parameters)
        self._rendered[spec.key] = (spec.digest(), spec.file, host_path, parameters, text)
        return text

    # ---- helpers ------------------------------------------------------------------

    @staticmethod
    def layout(ctx: PassContext) -> Layout:
        return _layout(ctx.paths.samba_dir, ctx.paths.smb_conf)

    def _read_live(self, path: Path) -> str | None:
        """Current content of a file we manage, cached by stat so a pass stays cheap."""
        try:
            info = os.stat(path)
        except FileNotFoundError:
            self._live.pop(path, None)
            return None
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached = self._live.get(path)
        if cached and cached[0] == signature:
            return cached[1]
        text = path.read_text(encoding="utf-8", errors="replace")
        self._live[path] = (signature, text)
        return text

    def _sweep(self, layout: Layout) -> None:
        """Leftovers of writes a crash interrupted; only this agent writes these names.
        The staging area too: otherwise it would stay until the next change is committed."""
        if self._swept:
            return
        if layout.directory.is_dir():
            remove_stale_temporaries(layout.directory)
            shutil.rmtree(layout.staging, ignore_errors=True)
        if layout.smb_conf.parent.is_dir():
            remove_stale_temporaries(layout.smb_conf.parent, layout.smb_conf.name)
        self._swept = True

    @staticmethod
    def _staged(ctx: PassContext) -> Staged:
        scratch = ctx.plugin_scratch(PLUGIN)
        staged = scratch.get("staged")
        if staged is None:
            staged = scratch["staged"] = Staged()
        assert isinstance(staged, Staged)
        return staged

    @staticmethod
    def _is_mine(spec: ShareSpec | None) -> bool:
        return spec is not None and spec.mode == MODE

    # ---- hooks: what we provide -----------------------------------------------------

    @hookimpl
    def smbgw_modes(self) -> Sequence[str]:
        return [MODE]

    @hookimpl
    def smbgw_order(self) -> int:
        return order.MODE

    @hookimpl
    def smbgw_global_parameters(self, ctx: PassContext, target: str) -> Sequence[Parameter]:
        if target != HOST:
            return []
        return [Parameter(name, value) for name, value in security_globals(ctx.config)]

    # ---- hooks: lifecycle -----------------------------------------------------------

    @hookimpl
    def smbgw_startup(self, ctx: PassContext) -> None:
        self._sweep(self.layout(ctx))
        if self._stopped:
            self._activity = None  # the old reading's thread has ended; read afresh
        self._stopped = False
        self._activity_reading(ctx)

    @hookimpl
    def smbgw_shutdown(self) -> None:
        """Stop the smbstatus reading: a reload's new instance starts its own."""
        self._stopped = True
        if self._activity is not None:
            self._activity.stop()

    # ---- hooks: plan / apply --------------------------------------------------------

    @hookimpl
    def smbgw_plan_share(
        self, ctx: PassContext, name: str, desired: ShareSpec | None, applied: ShareSpec | None
    ) -> Sequence[Change]:
        layout = self.layout(ctx)
        target = layout.share_file(name)
        resource = share_resource(name)
        live = self._read_live(target)
        if self._is_mine(desired):
            assert desired is not None
            changes = []
            host_path = ctx.paths.host(desired.path)
            if not host_path.is_dir():
                changes.append(Change(resource, CREATE, f"create directory {desired.path}"))
            wanted = self._render(ctx, desired, host_path)
            if live is None:
                changes.append(Change(resource, CREATE, f"add [{desired.name}] in {target}"))
            elif live != wanted and without_declaration(live) == without_declaration(wanted):
                changes.append(Change(resource, UPDATE, f"record the declaration in {target} (smbd is not reloaded)"))
            elif live != wanted:
                changes.append(Change(resource, UPDATE, f"update [{desired.name}] in {target}"))
            return changes
        if live is not None:
            return [Change(resource, DELETE, f"stop serving [{name}]: remove {target} (the data stays)")]
        return []

    @hookimpl
    def smbgw_apply_share(self, ctx: PassContext, name: str, desired: ShareSpec, changes: Sequence[Change]) -> None:
        staged = self._staged(ctx)
        host_path = ctx.paths.host(desired.path)
        if not host_path.is_dir():
            # Through the pinned parent, re-checked where it really leads; never with its
            # parents: a missing parent is storage that is not mounted, and a directory
            # made on the root file system would be served empty (the core holds such
            # shares back; this is the last line of defence).
            make_share_directory(host_path, desired.path, ctx.config, ctx.paths)
            log.info("share %s: created directory %s", name, desired.path)
        text = self._render(ctx, desired, host_path)
        live = self._read_live(self.layout(ctx).share_file(name))
        if live is not None and live != text and without_declaration(live) == without_declaration(text):
            staged.records[name.casefold()] = text
        else:
            staged.writes[name.casefold()] = (desired, text)

    @hookimpl
    def smbgw_remove_share(
        self, ctx: PassContext, name: str, applied: ShareSpec | None, changes: Sequence[Change]
    ) -> None:
        self._staged(ctx).removals.add(name.casefold())

    @hookimpl
    def smbgw_rollback_share(self, ctx: PassContext, name: str, applied: ShareSpec | None) -> None:
        staged = self._staged(ctx)
        staged.writes.pop(name.casefold(), None)
        staged.records.pop(name.casefold(), None)
        staged.removals.discard(name.casefold())

    # ---- hooks: the host's Samba configuration as a node resource --------------------

    @hookimpl
    def smbgw_node_resources(self, ctx: PassContext) -> Sequence[NodeResource]:
        parameters = ctx.global_parameters(HOST)
        return [NodeResource(SAMBA, {"globals": [list(p) for p in parameters], "unit": ctx.config.smbd_unit})]

    @hookimpl
    def smbgw_plan_resource(
        self, ctx: PassContext, resource_id: str, desired: NodeResource | None, applied: NodeResource | None
    ) -> Sequence[Change]:
        if resource_id != SAMBA or desired is None:
            return []  # samba:host is never given up: nothing is removed from smb.conf
        layout = self.layout(ctx)
        changes = []
        parameters = [(str(n), str(v)) for n, v in desired.spec["globals"]]
        if self._read_live(layout.globals_file) != render_globals(parameters, layout.shares_list):
            changes.append(Change(SAMBA, UPDATE, f"write {layout.globals_file} ({len(parameters)} parameters)"))
        if not self._smb_conf_has_include(layout):
            live = self._read_live(layout.smb_conf) or ""
            if mentions_managed_include(live, layout.globals_file):
                changes.append(Change(SAMBA, UPDATE, f"move the managed include line of {layout.smb_conf} before "
                                      "its first share section (net and winbindd read only the globals before it)"))
            else:
                changes.append(Change(SAMBA, UPDATE, f"add the managed include line to {layout.smb_conf}"))
        if layout.directory.is_dir():
            keep = self._live_share_keys(ctx, layout)
            if self._read_live(layout.shares_list) != self._final_list(layout, keep):
                changes.append(Change(SAMBA, UPDATE, f"rewrite {layout.shares_list}"))
        if ctx.plugin_state(PLUGIN).get(RELOAD_PENDING):
            changes.append(Change(SAMBA, UPDATE, "reload smbd (a reload is still owed)"))
        if ctx.smbd is not None and ctx.smbd.is_running(ctx) is False:
            changes.append(Change(SAMBA, UPDATE, f"start {ctx.config.smbd_unit}"))
        return changes

    @hookimpl
    def smbgw_apply_resource(self, ctx: PassContext, resource: NodeResource, changes: Sequence[Change]) -> None:
        """Nothing to stage: commit writes the globals and reloads once for the pass."""

    # ---- hooks: recovery ------------------------------------------------------------

    @hookimpl
    def smbgw_live_shares(self, ctx: PassContext) -> Sequence[ShareSpec]:
        """The shares our live fragments declare: generated by us, listed in shares.conf,
        with the declaration line intact and a file name that matches its share."""
        layout = self.layout(ctx)
        listing = self._read_live(layout.shares_list) or ""
        listed = {line.partition("=")[2].strip() for line in listing.splitlines() if line.startswith("include")}
        found: list[ShareSpec] = []
        for target in sorted(listed):
            path = Path(target)
            if path.parent != layout.directory or not path.name.startswith("share-"):
                continue
            try:
                with open(path, "rb") as handle:
                    text = handle.read(MAX_FRAGMENT_BYTES).decode("utf-8", errors="replace")
            except OSError:
                continue
            spec = live_spec(text)
            if spec is None or spec.mode != MODE or share_file_name(spec.key) != path.name:
                log.warning("live fragment %s carries no readable declaration; left as it is", path)
                continue
            found.append(spec)
        return found

    # ---- hooks: commit --------------------------------------------------------------

    @hookimpl
    def smbgw_commit(self, ctx: PassContext, resources: Sequence[str]) -> Mapping[str, str]:
        try:
            return self._commit(ctx)
        except BaseException:
            self._present = None  # a commit cut short: which renames happened is unknown
            raise

    def _commit(self, ctx: PassContext) -> Mapping[str, str]:
        layout = self.layout(ctx)
        staged = self._staged(ctx)
        samba = ctx.resources.get(SAMBA) or ctx.applied_resources.get(SAMBA)
        if samba is None:
            raise RuntimeError(f"{SAMBA} is not declared: the globals cannot be written")
        parameters = [(str(n), str(v)) for n, v in samba.spec["globals"]]
        layout.directory.mkdir(parents=True, exist_ok=True)
        if layout.staging.exists():
            shutil.rmtree(layout.staging)  # left by a crash: never trusted
        self._sweep(layout)
        for key, text in staged.records.items():
            atomic_write(layout.share_file(key), text)
            self._fragments(ctx, layout).add(share_file_name(key))
        rejected: dict[str, str] = {}
        keep = self._live_share_keys(ctx, layout) - staged.removals
        globals_text = render_globals(parameters, layout.shares_list)
        needs_include = not self._smb_conf_has_include(layout)
        nothing_changed = (
            not staged.writes
            and not staged.removals
            and self._read_live(layout.globals_file) == globals_text
            and self._read_live(layout.shares_list) == self._final_list(layout, keep)
            and not needs_include
        )
        if nothing_changed:
            self._collect_orphans(ctx, layout, keep)
            return self._reload_if_pending(ctx, layout)
        layout.staging.mkdir(mode=0o755)
        try:
            rejected = self._validate(ctx, layout, parameters, staged)
            for key in rejected:
                staged.writes.pop(key, None)
            self._go_live(ctx, layout, parameters, keep, staged)
        finally:
            shutil.rmtree(layout.staging, ignore_errors=True)
        self._collect_orphans(ctx, layout, keep | set(staged.writes))
        if ctx.full or staged.removals:
            self._prune_caches(ctx, layout, staged.removals - set(staged.writes))
        ctx.plugin_state(PLUGIN).set(RELOAD_PENDING, True)
        rejected.update(self._reload_if_pending(ctx, layout))
        return {share_resource(key) if key != SAMBA else key: reason for key, reason in rejected.items()}

    def _prune_caches(self, ctx: PassContext, layout: Layout, removed: set[str]) -> None:
        """Forget renderings and file reads of shares that are gone, so memory follows the
        shares that exist, not every share name ever seen."""
        current = set(ctx.desired) | (set(ctx.applied) - removed)
        for key in set(self._rendered) - current:
            del self._rendered[key]
        if len(self._live) <= len(current) + 3:
            return  # nothing stale (globals, the include list and smb.conf are the +3)
        wanted = {share_file_name(k) for k in current}
        for path in list(self._live):
            if path.parent == layout.directory and path.name.startswith("share-") and path.name not in wanted:
                del self._live[path]

    def _fragments(self, ctx: PassContext, layout: Layout) -> set[str]:
        """The share fragments in the live directory, by file name.

        Listed in a full pass (once) and whenever not known; between full passes this
        plugin's own renames and removals keep the set current, as nothing else writes
        there. A fragment deleted or left there by hand is noticed by the next full pass,
        like a hand edit of one. (Listing 10,000 names twice and checking every share
        against them was a fifth of a one-change pass at 10,000 shares.)"""
        scratch = ctx.plugin_scratch(PLUGIN)
        if self._present is None or (ctx.full and not scratch.get(LISTED)):
            self._present = {name for name in os.listdir(layout.directory) if _is_fragment_name(name)}
            scratch[LISTED] = True
        return self._present

    def _live_share_keys(self, ctx: PassContext, layout: Layout) -> set[str]:
        """Shares whose live file should stay included: desired or still applied, and present."""
        present = self._fragments(ctx, layout)
        mine = {key for key, spec in ctx.desired.items() if spec.mode == MODE}
        mine.update(key for key, spec in ctx.applied.items() if spec.mode == MODE)
        return {key for key in mine if share_file_name(key) in present}

    def _final_list(self, layout: Layout, keys: set[str]) -> str:
        directory = str(layout.directory)
        return render_shares_list([f"{directory}/{share_file_name(k)}" for k in sorted(keys)])

    def _smb_conf_has_include(self, layout: Layout) -> bool:
        text = self._read_live(layout.smb_conf)
        return text is not None and has_managed_include(text, layout.globals_file)

    def _candidate(
        self, layout: Layout, parameters: Sequence[tuple[str, str]], keys: set[str],
        staged_keys: set[str], name: str,
    ) -> Path:
        """Write a complete candidate configuration into the staging area; returns its smb.conf."""
        directory = layout.staging
        files = [
            layout.share_file(k, directory if k in staged_keys else None) for k in sorted(keys)
        ]
        shares_list = directory / f"{name}-shares.conf"
        globals_file = directory / f"{name}-globals.conf"
        smb_conf = directory / f"{name}-smb.conf"
        shares_list.write_text(render_shares_list(files), encoding="utf-8")
        globals_file.write_text(render_globals(parameters, shares_list), encoding="utf-8")
        admin = self._read_live(layout.smb_conf) or ""
        smb_conf.write_text(retarget_include(admin, layout.globals_file, globals_file), encoding="utf-8")
        return smb_conf

    def _validate(
        self, ctx: PassContext, layout: Layout, parameters: Sequence[tuple[str, str]], staged: Staged
    ) -> dict[str, str]:
        """Stage the changed shares and testparm them in groups; bisect a rejected group
        to find culprits.

        Shares are independent sections and the live ones passed when they were staged,
        so a candidate holds the globals and changed shares only: validation costs what
        changed, not what exists. Groups because testparm's loading is quadratic in the
        sections it holds (each new one is looked up among those loaded): 10,000 shares
        took 1.8 s in one candidate and 0.65 s in ten of 1,000 (this machine). And each
        group is judged in the background while the next one is written: testparm runs
        on another core as this process writes (see `_judge_in_background`)."""
        ordered = sorted(staged.writes)
        # With no share written the globals alone are judged: one empty group.
        groups = [ordered[i:i + VALIDATE_GROUP] for i in range(0, len(ordered), VALIDATE_GROUP)] or [[]]
        one_by_one = syncs_one_by_one(len(ordered))
        with _judge_in_background(ctx) as judge:
            verdicts = []
            for number, group in enumerate(groups):
                write_files({layout.share_file(k, layout.staging): staged.writes[k][1] for k in group}, one_by_one)
                verdicts.append(judge(self._candidate(layout, parameters, set(group), set(group), f"all{number}")))
            if ordered and not one_by_one:
                syncfs(layout.staging)  # durable before anything goes live
            results = [verdict.result() for verdict in verdicts]
        rejected: dict[str, str] = {}
        failed: list[tuple[list[str], TestparmResult]] = []
        for number, (group, result) in enumerate(zip(groups, results, strict=True)):
            # None (not run) only follows a group testparm could not judge, where this ends.
            assert result is not None
            if result.unavailable:  # missing, hanging or garbled: judge none of the rest
                rest = {key for later in groups[number:] for key in later}
                rejected.update(self._no_verdict(rest, result))
                break
            if not result.ok:
                failed.append((group, result))
        if not failed:
            return rejected
        baseline = self._baseline_errors(ctx, layout)
        counter = iter(range(1_000_000))

        def bisect(group: list[str]) -> None:
            candidate = self._candidate(layout, parameters, set(group), set(group), f"part{next(counter)}")
            outcome = run_testparm(ctx.runner, candidate, baseline)
            if outcome.ok:
                return
            if outcome.unavailable:  # hanging, missing, or out of pass time: stop here
                rejected.update(self._no_verdict(set(group), outcome))
                return
            if len(group) == 1:
                rejected[group[0]] = "testparm rejected it: " + "; ".join(outcome.errors)
                return
            middle = len(group) // 2
            bisect(group[:middle])
            bisect(group[middle:])

        for group, first in failed:
            ours = first.excluding(baseline)
            if ours.ok:
                continue
            log.warning("testparm rejected the candidate configuration: %s", "; ".join(ours.errors))
            before = len(rejected)
            if group:  # an empty group fails for the globals: nothing to bisect
                bisect(group)
            if len(rejected) == before:
                raise RuntimeError("testparm rejects the configuration even without the changed "
                                   "shares: " + "; ".join(ours.errors))
        return rejected

    @staticmethod
    def _no_verdict(keys: set[str], result: TestparmResult) -> dict[str, str]:
        """Fail every share testparm could not judge: unvalidated configuration never goes live."""
        message = f"not applied: testparm could not validate it: {'; '.join(result.errors)}"
        log.error("%s (%d share(s))", message, len(keys))
        return dict.fromkeys(keys, message)

    def _baseline_errors(self, ctx: PassContext, layout: Layout) -> tuple[str, ...]:
        """Errors the admin's own smb.conf causes without us; not ours to reject shares for."""
        admin = self._read_live(layout.smb_conf)
        if admin is None:
            return ()
        bare = layout.staging / "baseline-smb.conf"
        lines = [line for line in admin.splitlines() if str(layout.globals_file) not in line]
        bare.write_text("\n".join(lines) + "\n", encoding="utf-8")
        result = run_testparm(ctx.runner, bare)
        return () if result.unavailable else result.errors

    def _go_live(
        self, ctx: PassContext, layout: Layout, parameters: Sequence[tuple[str, str]],
        keep: set[str], staged: Staged,
    ) -> None:
        """Renames in an order where every intermediate state is a valid configuration."""
        present = self._fragments(ctx, layout)
        for key in staged.writes:
            os.replace(layout.share_file(key, layout.staging), layout.share_file(key))
            present.add(share_file_name(key))
        fsync_dir(layout.directory)
        final = keep | set(staged.writes)
        atomic_write(layout.shares_list, self._final_list(layout, final))
        atomic_write(layout.globals_file, render_globals(parameters, layout.shares_list))
        admin = self._read_live(layout.smb_conf)
        if admin is None or not has_managed_include(admin, layout.globals_file):
            moved = admin is not None and mentions_managed_include(admin, layout.globals_file)
            atomic_write(layout.smb_conf, with_managed_include(admin or "", layout.globals_file))
            log.info("%s the managed include line %s %s", "moved" if moved else "added",
                     "in" if moved else "to", layout.smb_conf)
        for key in staged.removals - set(staged.writes):
            layout.share_file(key).unlink(missing_ok=True)
            present.discard(share_file_name(key))

    def _collect_orphans(self, ctx: PassContext, layout: Layout, keep: set[str]) -> None:
        """Remove share files nobody declares or remembers (e.g. after state was lost).
        Only in a pass that listed the directory: between listings the fragments are the
        ones this plugin wrote and removed itself, and it leaves no orphans."""
        if not ctx.plugin_scratch(PLUGIN).get(LISTED):
            return
        present = self._fragments(ctx, layout)
        for name in sorted(present - {share_file_name(k) for k in keep}):
            path = layout.directory / name
            with contextlib.suppress(FileNotFoundError):
                text = self._read_live(path) or ""
                listed = f"include = {path}" in (self._read_live(layout.shares_list) or "")
                if not listed and text.startswith("# Generated by smbgw-agent"):
                    path.unlink()
                    present.discard(name)
                    log.info("removed orphaned %s", path)

    def _reload_if_pending(self, ctx: PassContext, layout: Layout) -> dict[str, str]:
        """Keep smbd running and reload it if a reload is owed. A failed reload does not
        fail the shares (their configuration is live on disk and smbd reads it when it
        starts); it fails `samba:host`, which is retried with backoff until it works."""
        assert ctx.smbd is not None
        state = ctx.plugin_state(PLUGIN)
        report = ctx.smbd.ensure_running(ctx)
        if report.active is False:
            self.last_error = f"{ctx.config.smbd_unit} is not active: {report.detail}"
        if not state.get(RELOAD_PENDING):
            return {}
        try:
            self.last_reload = ctx.smbd.reload(ctx, layout.smb_conf)
            state.delete(RELOAD_PENDING)
            self.last_error = None
        except ServiceError as exc:
            self.last_error = str(exc)
            log.error("%s", exc)
            return {SAMBA: str(exc)}
        return {}

    # ---- hooks: metrics --------------------------------------------------------------

    def _activity_reading(self, ctx: CollectContext | PassContext) -> BackgroundReading[tuple[ShareActivity, bool]]:
        """smbstatus and an smbd ping, every 15 s in the background (started by the first pass)."""
        if self._activity is None:
            smb_conf, runner = ctx.paths.smb_conf, ctx.runner

            def read() -> tuple[ShareActivity, bool]:
                result = runner.run(
                    ["smbstatus", "-s", str(smb_conf), "--json"], timeout=20, max_output=SMBSTATUS_MAX_OUTPUT
                )
                ping = ["smbcontrol", "-s", str(smb_conf), "smbd", "ping"]
                alive = runner.run(ping, timeout=5, check=False).ok
                return parse_smbstatus(result.stdout), alive

            self._activity = BackgroundReading("smbstatus", read, interval=ACTIVITY_INTERVAL)
        if not self._stopped:
            self._activity.start()  # a retired instance never starts a thread again
        return self._activity

    @hookimpl
    def smbgw_collect(self, ctx: CollectContext) -> Sequence[Metric]:
        reading = self._activity_reading(ctx)
        sessions = GaugeMetricFamily(
            "smbgw_share_sessions", "SMB sessions with a tree connect to the share (smbstatus)", labels=["share"]
        )
        open_files = GaugeMetricFamily(
            "smbgw_share_open_files", "Files open in the share (smbstatus)", labels=["share"]
        )
        active = GaugeMetricFamily("smbgw_service_active", "1 if the unit is active", labels=["unit"])
        success = GaugeMetricFamily(
            "smbgw_collector_success", "1 if the collector's last reading succeeded, else 0", labels=["collector"]
        )
        success.add_metric(["smbstatus"], 1.0 if reading.ok else 0.0)
        shares = {
            name: info for name, info in ctx.status.get("shares", {}).items() if info.get("mode") == MODE
        }
        unit = ctx.config.smbd_unit
        service = ctx.status.get("services", {}).get(unit, {})
        if service.get("control") == "systemd" and service.get("active") is not None:
            active.add_metric([unit], 1.0 if service["active"] else 0.0)
        elif reading.value is not None:
            active.add_metric([unit], 1.0 if reading.value[1] else 0.0)
        if reading.value is not None:
            activity = reading.value[0]
            for name, info in sorted(shares.items()):
                sessions.add_metric([name], float(activity.sessions.get(name.casefold(), 0)))
                host_path = str(ctx.paths.host(info["path"]))
                open_files.add_metric([name], float(activity.open_files.get(host_path, 0)))
        return [sessions, open_files, active, success]

    # ---- hooks: observe --------------------------------------------------------------

    @hookimpl
    def smbgw_observe(self, ctx: PassContext) -> Mapping[str, Any]:
        return {
            "samba_dir": str(ctx.paths.samba_dir),
            "reload_via": ctx.services.mode,
            "last_reload": self.last_reload,
            "reload_pending": bool(ctx.plugin_state(PLUGIN).get(RELOAD_PENDING)),
            "error": self.last_error,
        }
