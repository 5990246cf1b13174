"""Persistent bookkeeping under /var/lib/smbgw, in SQLite.

Why SQLite (Python's standard library) rather than a JSON file per share: a pass must
cost in proportion to what changed, and durable one-file-per-record writes cost an
fsync and a directory update each (≈0.5 ms; 4,000 of them on a cold start of 2,000
shares took 6 s here). SQLite commits a whole pass in one transaction — atomic, durable,
one fsync — and a crash mid-pass leaves the previous pass's state, never half a record.

    applied(key, spec)          what the last successful pass made live for each share
    lastgood(file, spec)        the last valid spec read from each share file
    resources(id, resource)     what the last successful pass made live for each node resource
    plugin_state(plugin, key, value)  each plugin's own key-value store (JSON values)
    meta(key, value)            'created': tells a database this agent wrote from an empty one
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from pathlib import Path

from smbgw_agent.model.shares import ShareSpec
from smbgw_agent.platform.changes import NodeResource
from smbgw_agent.platform.pluginstate import PluginState

log = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (key TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lastgood (file TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (id TEXT PRIMARY KEY, resource TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS plugin_state (
    plugin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (plugin, key)
);
"""


class StateStore:
    """In-memory maps, mirrored to SQLite once per pass.

    The maps are the truth while the agent runs; the database is how they survive a
    restart. A write that fails (disk full, read-only file system, a database that
    went bad under us) never fails the pass: the agent keeps serving from memory,
    `error` says why the state is not saved, and the next commit writes the whole state
    again, so it catches up by itself once there is space.
    """

    def __init__(self, directory: Path, read_only: bool = False) -> None:
        """`read_only` (for `smbgwctl plan`) never creates, repairs or writes the database."""
        self.directory = directory
        self.read_only = read_only
        self.database = directory / "state.sqlite"
        self.applied: dict[str, ShareSpec] = {}
        self.lastgood: dict[str, ShareSpec] = {}
        self.resources: dict[str, NodeResource] = {}
        self.plugin_values: dict[str, dict[str, str]] = {}
        self._db: sqlite3.Connection | None = None
        self._pending = False
        self.unsaved = False
        self.error: str | None = None
        # Why the state on disk could not be trusted at start ("" when it could): the
        # reconciler then rebuilds what is live instead of removing it as unknown.
        self.lost = ""

    def _connect(self) -> sqlite3.Connection:
        if self._db is None and self.read_only:
            self._db = sqlite3.connect(f"{self.database.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        if self._db is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self.database, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(SCHEMA)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def load(self) -> list[str]:
        """Read everything; returns warnings about unreadable records (they are skipped)."""
        warnings: list[str] = []
        existed = self.database.exists()
        if self.read_only and not existed:
            self.lost = f"{self.database} does not exist"
            return warnings
        try:
            db = self._connect()
            applied_rows = db.execute("SELECT key, spec FROM applied").fetchall()
            lastgood_rows = db.execute("SELECT file, spec FROM lastgood").fetchall()
            try:
                resource_rows = db.execute("SELECT id, resource FROM resources").fetchall()
                state_rows = db.execute("SELECT plugin, key, value FROM plugin_state").fetchall()
            except sqlite3.OperationalError:  # written by a version without these tables
                resource_rows, state_rows = [], []
            try:
                marked = bool(db.execute("SELECT 1 FROM meta WHERE key = 'created'").fetchall())
            except sqlite3.OperationalError:  # written by a version without the meta table
                marked = False
            marked = marked or bool(applied_rows or lastgood_rows or resource_rows or state_rows)
        except (sqlite3.OperationalError, OSError) as exc:
            # Disk full, I/O error, locked: the file may be fine. Do not set it aside;
            # run from what is live and write everything once it works again.
            warnings.append(f"state database {self.database} cannot be read now ({exc})")
            self.lost = f"{self.database} could not be read ({exc})"
            if not self.read_only:
                self._failed(exc)
            return warnings
        except sqlite3.Error as exc:  # not a database, or corrupt: it will not get better
            if self.read_only:
                warnings.append(f"state database {self.database} is unreadable ({exc})")
                self.lost = f"{self.database} is unreadable ({exc})"
                return warnings
            warnings.append(f"state database {self.database} is unreadable ({exc}); starting afresh")
            self.lost = f"{self.database} was unreadable ({exc})"
            self._reset()
            return warnings
        if not existed:
            self.lost = f"{self.database} did not exist"
        elif not marked:
            self.lost = f"{self.database} was empty"
        if not marked and not self.read_only:
            self._mark_created()
        self.applied = self._decode(applied_rows, warnings, "applied")
        self.lastgood = self._decode(lastgood_rows, warnings, "lastgood")
        for resource_id, text in resource_rows:
            try:
                self.resources[resource_id] = NodeResource.from_dict(json.loads(text))
            except (ValueError, KeyError, TypeError) as exc:
                warnings.append(f"ignoring unreadable node resource record {resource_id!r}: {exc}")
        for plugin, key, value in state_rows:
            self.plugin_values.setdefault(plugin, {})[key] = value
        return warnings

    def _mark_created(self) -> None:
        try:
            self._connect().execute("INSERT OR REPLACE INTO meta VALUES ('created', datetime('now'))")
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)

    def _reset(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        broken = self.database.with_suffix(".sqlite.broken")
        for suffix in ("", "-wal", "-shm"):
            path = Path(str(self.database) + suffix)
            try:
                if path.exists():
                    path.replace(Path(str(broken) + suffix))
            except OSError as exc:
                self._failed(exc)
        self.applied, self.lastgood = {}, {}
        self.resources, self.plugin_values = {}, {}
        try:
            self._connect()
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return
        self._mark_created()

    @staticmethod
    def _decode(rows: list[tuple[str, str]], warnings: list[str], table: str) -> dict[str, ShareSpec]:
        result: dict[str, ShareSpec] = {}
        for key, text in rows:
            try:
                result[key] = ShareSpec.from_dict(json.loads(text))
            except (ValueError, KeyError, TypeError) as exc:
                warnings.append(f"ignoring unreadable {table} record {key!r}: {exc}")
        return result

    # ---- failures -----------------------------------------------------------------------

    def _failed(self, exc: BaseException) -> None:
        """Remember that memory and disk differ; the next commit rewrites everything."""
        message = f"cannot save the state in {self.database}: {exc}"
        if self.error != message:
            log.error("%s; serving on from memory and retrying every pass", message)
        self.error = message
        self.unsaved = True
        self._abort()

    def _abort(self) -> None:
        """End a transaction that may or may not still be open (SQLite ends some itself)."""
        self._pending = False
        db = self._db
        if db is None:
            return
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except (sqlite3.Error, OSError):
            # The connection is unusable; a fresh one is opened on the next write.
            with contextlib.suppress(sqlite3.Error):
                db.close()
            self._db = None

    # ---- the pass's transaction -------------------------------------------------------

    def begin(self) -> None:
        """Start the pass's transaction; `commit()` makes all its changes durable at once."""
        if self.read_only:
            raise RuntimeError("the state store was opened read-only")
        if not self._pending:
            self._connect().execute("BEGIN IMMEDIATE")
            self._pending = True

    def commit(self) -> None:
        """Make this pass's changes durable, or (after a failure) the whole state again."""
        if self.read_only:
            return
        try:
            if self.unsaved:
                self._rewrite_all()
            if self._pending:
                self._connect().execute("COMMIT")
                self._pending = False
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return
        if self.unsaved:
            log.warning("state saved to %s again", self.database)
        self.unsaved = False
        self.error = None

    def _rewrite_all(self) -> None:
        self._abort()
        self.begin()
        db = self._connect()
        db.execute("DELETE FROM applied")
        db.execute("DELETE FROM lastgood")
        db.execute("DELETE FROM resources")
        db.execute("DELETE FROM plugin_state")
        db.executemany("INSERT INTO applied VALUES (?, ?)", [(k, s.to_json()) for k, s in self.applied.items()])
        db.executemany("INSERT INTO lastgood VALUES (?, ?)", [(f, s.to_json()) for f, s in self.lastgood.items()])
        db.executemany("INSERT INTO resources VALUES (?, ?)", [(i, r.to_json()) for i, r in self.resources.items()])
        db.executemany("INSERT INTO plugin_state VALUES (?, ?, ?)", [
            (plugin, key, value) for plugin, values in self.plugin_values.items() for key, value in values.items()
        ])
        db.execute("INSERT OR REPLACE INTO meta VALUES ('created', datetime('now'))")

    def rollback(self) -> None:
        """Abandon the database side of a pass that failed unexpectedly; the maps in
        memory still describe what is live, so they are written again next time."""
        if self._pending:
            self._abort()
            self.unsaved = True

    def _write(self, sql: str, *args: str) -> None:
        if self.unsaved or self.read_only:
            return  # the next commit rewrites everything anyway
        try:
            self.begin()
            self._connect().execute(sql, args)
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)

    def set_applied(self, spec: ShareSpec) -> None:
        known = self.applied.get(spec.key)
        # An equal spec is still kept: the scanner's object, not the one read back from
        # the database, so that later passes compare them by identity (see desired.py).
        self.applied[spec.key] = spec
        if known == spec:
            return
        self._write("INSERT OR REPLACE INTO applied VALUES (?, ?)", spec.key, spec.to_json())

    def drop_applied(self, key: str) -> None:
        if self.applied.pop(key, None) is not None:
            self._write("DELETE FROM applied WHERE key = ?", key)

    def set_lastgood(self, spec: ShareSpec) -> None:
        known = self.lastgood.get(spec.file)
        self.lastgood[spec.file] = spec  # an equal one too, as in `set_applied`
        if known == spec:
            return
        self._write("INSERT OR REPLACE INTO lastgood VALUES (?, ?)", spec.file, spec.to_json())

    def drop_lastgood(self, file: str) -> None:
        if self.lastgood.pop(file, None) is not None:
            self._write("DELETE FROM lastgood WHERE file = ?", file)

    def set_resource(self, resource: NodeResource) -> None:
        if self.resources.get(resource.id) == resource:
            return
        self.resources[resource.id] = resource
        self._write("INSERT OR REPLACE INTO resources VALUES (?, ?)", resource.id, resource.to_json())

    def drop_resource(self, resource_id: str) -> None:
        if self.resources.pop(resource_id, None) is not None:
            self._write("DELETE FROM resources WHERE id = ?", resource_id)

    def plugin_state(self, plugin: str, dry_run: bool = False) -> PluginState:
        """`plugin`'s store; written in this pass's transaction (a copy in a dry run)."""
        values = self.plugin_values.setdefault(plugin, {})
        return PluginState(plugin, values, None if dry_run or self.read_only else self._write_plugin_value)

    def _write_plugin_value(self, plugin: str, key: str, value: str | None) -> None:
        if value is None:
            self._write("DELETE FROM plugin_state WHERE plugin = ? AND key = ?", plugin, key)
        else:
            self._write("INSERT OR REPLACE INTO plugin_state VALUES (?, ?, ?)", plugin, key, value)

    def adopt(self, spec: ShareSpec) -> bool:
        """Record a share found live but unknown here (state lost or out of date): it
        becomes applied, and the last good version of its file unless one is known.
        Returns whether anything was new. Read-only stores adopt in memory only."""
        if spec.key in self.applied:
            return False
        if self.read_only:
            self.applied[spec.key] = spec
            self.lastgood.setdefault(spec.file, spec)
            return True
        self.set_applied(spec)
        if spec.file not in self.lastgood:
            self.set_lastgood(spec)
        return True

    def close(self) -> None:
        self.commit()
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
