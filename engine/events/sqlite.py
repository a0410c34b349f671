"""The embedded event store: one SQLite file (``personal.path``, default ``<index_dir>/events.sqlite``) in WAL mode,
checked when it opens (a damaged file is refused), schema versioned.  Every thread has its own connection; a write
is one ``BEGIN IMMEDIATE`` transaction, so writers in several threads or processes never lose an update;
``secure_delete`` overwrites a forgotten user's rows."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path


from engine.events.store import (
    _SQLITE_SQL,
    CreditRule,
    EventError,
    _append_event,
    _SQLEventStore,
    _stamp_schema,
    _uncount,
)
from engine.profiles import Profile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, user TEXT NOT NULL, product TEXT NOT NULL, event INTEGER NOT NULL,
    ts REAL NOT NULL, query TEXT, credited INTEGER NOT NULL DEFAULT 1, search_id TEXT, rank INTEGER, arm TEXT);
CREATE INDEX IF NOT EXISTS events_user ON events (user, ts);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS profiles (
    user TEXT PRIMARY KEY, t REAL NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS impressions (
    search_id TEXT PRIMARY KEY, ts REAL NOT NULL, user TEXT, query TEXT NOT NULL, searched TEXT,
    filters TEXT, k INTEGER NOT NULL, offset_ INTEGER NOT NULL, products TEXT NOT NULL, versions TEXT, arm TEXT,
    relevance TEXT);
CREATE INDEX IF NOT EXISTS impressions_user ON impressions (user);
CREATE INDEX IF NOT EXISTS impressions_ts ON impressions (ts);
CREATE TABLE IF NOT EXISTS product_stats (
    product TEXT PRIMARY KEY, impressions REAL NOT NULL DEFAULT 0, clicks REAL NOT NULL DEFAULT 0,
    carts REAL NOT NULL DEFAULT 0, purchases REAL NOT NULL DEFAULT 0);
"""


class SQLiteEventStore(_SQLEventStore):
    _sql = _SQLITE_SQL

    def __init__(self, path: str | Path, timeout: float = 30.0, credit: CreditRule | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.credit = credit or CreditRule()
        self._local = threading.local()
        try:
            con = self._con()
            bad = [r[0] for r in con.execute("PRAGMA quick_check(5)").fetchall() if r[0] != "ok"]
            if bad:
                raise sqlite3.DatabaseError("; ".join(bad))
            con.executescript(_SCHEMA)
            with self._write() as con:
                _stamp_schema(con, "?", str(self.path), "migrate or move the file aside")
        except sqlite3.DatabaseError as e:
            self.close()
            raise EventError(
                f"{self.path}: the event store is damaged ({e}); it is not served. Restore it from a "
                "backup, or move it aside to start an empty one (personal.path)"
            ) from None

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA secure_delete=ON")
            con.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.con = con
        return con

    @contextlib.contextmanager
    def _write(self):
        """One write transaction (taken at once: writers queue instead of failing to upgrade a read lock)."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def append(self, user, product_id, row, event, ts, query, update):
        with self._write() as con:
            return _append_event(con, self._sql, user, product_id, event, ts, query, update, self.credit)

    def append_many(self, users, product_ids, events, ts, queries, profiles, links=None):
        with self._write() as con:
            rows, counts, credited = self._credit_batch(con, users, product_ids, events, ts, queries, links)
            con.executemany(self._sql["event"], rows)
            con.executemany(self._sql["stats"], counts)
            con.executemany(self._sql["save"], ((u, p.t, p.version, p.dumps()) for u, p in profiles.items()))
        return credited

    def profiles(self, users):
        users = list(users)
        out = {}
        con = self._con()
        for i in range(0, len(users), 500):
            chunk = users[i : i + 500]
            q = f"SELECT user, data, version FROM profiles WHERE user IN ({','.join('?' * len(chunk))})"
            for u, data, version in con.execute(q, chunk):
                out[u] = Profile.loads(data, version)
        return out

    def forget(self, user):
        with self._write() as con:
            _uncount(con, self._sql, "user = ?", (user,))
            n = con.execute("DELETE FROM events WHERE user = ?", (user,)).rowcount
            con.execute("DELETE FROM impressions WHERE user = ?", (user,))
            con.execute("DELETE FROM profiles WHERE user = ?", (user,))
        # move the change out of the write-ahead log into the (securely overwritten) database pages
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def purge_before(self, ts):
        with self._write() as con:
            _uncount(con, self._sql, "ts < ?", (ts,))
            n = con.execute("DELETE FROM events WHERE ts < ?", (ts,)).rowcount
            con.execute("DELETE FROM impressions WHERE ts < ?", (ts,))
            con.execute("DELETE FROM profiles WHERE t < ?", (ts,))
        if n:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def close(self):
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
