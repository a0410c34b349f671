"""The event store on PostgreSQL (``personal.store: postgres``), for engine replicas that share one database."""

from __future__ import annotations

import contextlib
import threading


from engine.events.store import (
    _PG_SQL,
    CreditRule,
    EventError,
    _append_event,
    _SQLEventStore,
    _stamp_schema,
    _uncount,
)
from engine.profiles import Profile

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id BIGSERIAL PRIMARY KEY, user_key TEXT NOT NULL, product TEXT NOT NULL, event SMALLINT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, query TEXT, credited SMALLINT NOT NULL DEFAULT 1, search_id TEXT, rank INTEGER,
    arm TEXT);
CREATE INDEX IF NOT EXISTS events_user ON events (user_key, ts);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS profiles (
    user_key TEXT PRIMARY KEY, t DOUBLE PRECISION NOT NULL, version INTEGER NOT NULL, data BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS impressions (
    search_id TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, user_key TEXT, query TEXT NOT NULL, searched TEXT,
    filters TEXT, k INTEGER NOT NULL, offset_ INTEGER NOT NULL, products TEXT NOT NULL, versions TEXT, arm TEXT,
    relevance TEXT);
CREATE INDEX IF NOT EXISTS impressions_user ON impressions (user_key);
CREATE INDEX IF NOT EXISTS impressions_ts ON impressions (ts);
CREATE TABLE IF NOT EXISTS product_stats (
    product TEXT PRIMARY KEY, impressions DOUBLE PRECISION NOT NULL DEFAULT 0,
    clicks DOUBLE PRECISION NOT NULL DEFAULT 0, carts DOUBLE PRECISION NOT NULL DEFAULT 0,
    purchases DOUBLE PRECISION NOT NULL DEFAULT 0);
"""


class PostgresEventStore(_SQLEventStore):
    """The same store on PostgreSQL (``personal.store: postgres``, ``personal.dsn`` or ``ECOMSEARCH_PG_DSN``),
    for many engine replicas sharing one database.

    Tables live in their own schema (``personal.pg_schema``, default ``ecomsearch``), created at first use and
    versioned like the SQLite file.  Each thread has its own connection.  A write is one transaction that
    first takes a transaction-scoped advisory lock on the user (``pg_advisory_xact_lock``), so concurrent
    writers of one user — in any replica — queue instead of losing a profile update, while different users
    write in parallel; product counters are atomic upserts.  :meth:`forget` deletes the user's rows in one
    transaction; PostgreSQL reclaims the dead rows' space at its next (auto)vacuum, which a shop's retention
    policy should schedule (``VACUUM events, profiles``)."""

    _sql = _PG_SQL

    def __init__(self, dsn: str, schema: str = "ecomsearch", credit: CreditRule | None = None):
        import psycopg  # noqa: F401  (fail here, with the reason, when the driver is missing)

        self.credit = credit or CreditRule()
        if not dsn:
            raise EventError(
                "personal.dsn: a PostgreSQL connection string is needed for personal.store: postgres "
                "(or set ECOMSEARCH_PG_DSN)"
            )
        if not schema.isidentifier():
            raise EventError(f"personal.pg_schema: {schema!r} is not a plain identifier")
        self.dsn, self.schema = dsn, schema
        self._local = threading.local()
        self._all: list = []
        self._all_lock = threading.Lock()
        with self._write() as con:
            # first the lock: two replicas opening a new store at once would both try to create the schema
            # (CREATE SCHEMA IF NOT EXISTS is not safe against a concurrent one: a unique violation)
            con.execute("SELECT pg_advisory_xact_lock(hashtext('ecomsearch schema'))")
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            con.execute(f"SET LOCAL search_path TO {schema}")
            con.execute(_PG_SCHEMA)
            _stamp_schema(con, "%s", schema, "migrate or use another personal.pg_schema")

    def _con(self):
        import psycopg

        con = getattr(self._local, "con", None)
        if con is None or con.closed:
            con = psycopg.connect(self.dsn, autocommit=True, options=f"-c search_path={self.schema}")
            self._local.con = con
            with self._all_lock:
                self._all.append(con)
        return con

    @contextlib.contextmanager
    def _write(self):
        con = self._con()
        with con.transaction():
            yield con

    @staticmethod
    def _lock_user(con, user: str) -> None:
        con.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (user,))

    def append(self, user, product_id, row, event, ts, query, update):
        with self._write() as con:
            self._lock_user(con, user)
            return _append_event(con, self._sql, user, product_id, event, ts, query, update, self.credit)

    def append_many(self, users, product_ids, events, ts, queries, profiles, links=None):
        with self._write() as con:
            for u in sorted(set(users) | set(profiles)):  # one order for every writer: two loads cannot deadlock
                self._lock_user(con, u)
            rows, counts, credited = self._credit_batch(con, users, product_ids, events, ts, queries, links)
            with con.cursor() as cur:
                columns = "user_key, product, event, ts, query, credited, search_id, rank, arm"
                with cur.copy(f"COPY events ({columns}) FROM STDIN") as cp:
                    for row in rows:
                        cp.write_row(row)
                cur.executemany(self._sql["stats"], counts)
                cur.executemany(self._sql["save"], [(u, p.t, p.version, p.dumps()) for u, p in profiles.items()])
        return credited

    def log_impressions(self, rows):
        with self._write() as con:
            with con.cursor() as cur:
                cur.executemany(self._sql["impression"], list(rows))

    def profiles(self, users):
        users = list(users)
        rows = (
            self._con()
            .execute("SELECT user_key, data, version FROM profiles WHERE user_key = ANY(%s)", (users,))
            .fetchall()
            if users
            else []
        )
        return {u: Profile.loads(bytes(data), version) for u, data, version in rows}

    def forget(self, user):
        with self._write() as con:
            self._lock_user(con, user)
            _uncount(con, self._sql, "user_key = %s", (user,))
            n = con.execute("DELETE FROM events WHERE user_key = %s", (user,)).rowcount
            con.execute("DELETE FROM impressions WHERE user_key = %s", (user,))
            con.execute("DELETE FROM profiles WHERE user_key = %s", (user,))
        return n

    def purge_before(self, ts):
        with self._write() as con:
            _uncount(con, self._sql, "ts < %s", (ts,))
            n = con.execute("DELETE FROM events WHERE ts < %s", (ts,)).rowcount
            con.execute("DELETE FROM impressions WHERE ts < %s", (ts,))
            con.execute("DELETE FROM profiles WHERE t < %s", (ts,))
        return n

    def close(self):
        with self._all_lock:
            for con in self._all:
                con.close()
            self._all.clear()
        self._local = threading.local()
