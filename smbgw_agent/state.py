"""Persistent bookkeeping under /var/lib/smbgw, in SQLite.

Why SQLite (Python's standard library) rather than a JSON file per share: a pass must
cost in proportion to what changed, and durable one-file-per-record writes cost an
fsync and a directory update each (≈0.5 ms; 4,000 of them on a cold start of 2,000
shares took 6 s here). SQLite commits a whole pass in one transaction — atomic, durable,
one fsync — and a crash mid-pass leaves the previous pass's state, never half a record.

    applied(key, spec)    what the last successful pass made live for each share
    lastgood(file, spec)  the last valid spec read from each share file
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from .shares import ShareSpec

log = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (key TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lastgood (file TEXT PRIMARY KEY, spec TEXT NOT NULL);
"""


class StateStore:
    def __init__(self, directory: Path, read_only: bool = False) -> None:
        """`read_only` (for `smbgwctl plan`) never creates, repairs or writes the database."""
        self.directory = directory
        self.read_only = read_only
        self.database = directory / "state.sqlite"
        self.applied: dict[str, ShareSpec] = {}
        self.lastgood: dict[str, ShareSpec] = {}
        self._db: sqlite3.Connection | None = None
        self._pending = False

    def _connect(self) -> sqlite3.Connection:
        if self._db is None and self.read_only:
            self._db = sqlite3.connect(f"{self.database.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        if self._db is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self.database, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    def load(self) -> list[str]:
        """Read everything; returns warnings about unreadable records (they are skipped)."""
        warnings: list[str] = []
        if self.read_only and not self.database.exists():
            return warnings
        try:
            db = self._connect()
            applied_rows = db.execute("SELECT key, spec FROM applied").fetchall()
            lastgood_rows = db.execute("SELECT file, spec FROM lastgood").fetchall()
        except sqlite3.DatabaseError as exc:
            if self.read_only:
                warnings.append(f"state database {self.database} is unreadable ({exc})")
                return warnings
            warnings.append(f"state database {self.database} is unreadable ({exc}); starting afresh")
            self._reset()
            return warnings
        self.applied = self._decode(applied_rows, warnings, "applied")
        self.lastgood = self._decode(lastgood_rows, warnings, "lastgood")
        return warnings

    def _reset(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        broken = self.database.with_suffix(".sqlite.broken")
        for suffix in ("", "-wal", "-shm"):
            path = Path(str(self.database) + suffix)
            if path.exists():
                path.replace(Path(str(broken) + suffix))
        self.applied, self.lastgood = {}, {}
        self._connect()

    @staticmethod
    def _decode(rows: list[tuple[str, str]], warnings: list[str], table: str) -> dict[str, ShareSpec]:
        result: dict[str, ShareSpec] = {}
        for key, text in rows:
            try:
                result[key] = ShareSpec.from_dict(json.loads(text))
            except (ValueError, KeyError, TypeError) as exc:
                warnings.append(f"ignoring unreadable {table} record {key!r}: {exc}")
        return result

    def begin(self) -> None:
        """Start the pass's transaction; `commit()` makes all its changes durable at once."""
        if self.read_only:
            raise RuntimeError("the state store was opened read-only")
        if not self._pending:
            self._connect().execute("BEGIN IMMEDIATE")
            self._pending = True

    def commit(self) -> None:
        if self._pending:
            self._connect().execute("COMMIT")
            self._pending = False

    def rollback(self) -> None:
        if self._pending:
            self._connect().execute("ROLLBACK")
            self._pending = False
            self.load()

    def _write(self, sql: str, *args: str) -> None:
        self.begin()
        self._connect().execute(sql, args)

    def set_applied(self, spec: ShareSpec) -> None:
        if self.applied.get(spec.key) == spec:
            return
        self.applied[spec.key] = spec
        self._write("INSERT OR REPLACE INTO applied VALUES (?, ?)", spec.key, spec.to_json())

    def drop_applied(self, key: str) -> None:
        if self.applied.pop(key, None) is not None:
            self._write("DELETE FROM applied WHERE key = ?", key)

    def set_lastgood(self, spec: ShareSpec) -> None:
        if self.lastgood.get(spec.file) == spec:
            return
        self.lastgood[spec.file] = spec
        self._write("INSERT OR REPLACE INTO lastgood VALUES (?, ?)", spec.file, spec.to_json())

    def drop_lastgood(self, file: str) -> None:
        if self.lastgood.pop(file, None) is not None:
            self._write("DELETE FROM lastgood WHERE file = ?", file)

    def close(self) -> None:
        self.commit()
        if self._db is not None:
            self._db.close()
            self._db = None
