"""User events in, profiles and product statistics out: the store behind personalization.

- :class:`EventStore` is the small interface a shop can implement over its
  own database; :class:`SQLiteEventStore` is the embedded default: one file
  (``personal.path``, default ``<index_dir>/events.sqlite``) in WAL mode,
  schema versioned, opened by the engine itself.  Every thread gets its own
  connection; a write is one ``BEGIN IMMEDIATE`` transaction (event row,
  profile read-modify-write, product counters), so writers in several
  threads or processes never lose an update, and an event is visible to the
  user's next query.  ``secure_delete`` is on: a forgotten user's rows are
  overwritten, not left in free pages.
- :class:`PostgresEventStore` is the same interface on PostgreSQL
  (``personal.store: postgres``) for replicas that share one database.
- :class:`UserEvents` is what the engine uses: it validates events (unknown
  product, unknown event type, bad timestamp, empty user id), hashes user ids
  with HMAC-SHA256 (key from ``ECOMSEARCH_USER_KEY`` or ``personal.user_key``;
  without one, recording is refused), updates profiles online
  (:mod:`engine.profiles`), ingests click logs in bulk (vectorized profiles,
  one transaction), forgets users and drops events past the retention.

`python -m engine.events_cli ingest clicks.jsonl --config C [--skip-bad-rows]`
loads a click log (the format of :mod:`core.formats.clicklog`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from core.types import EcomsearchError, id_problem
from engine.profiles import (
    Profile,
    ProductFacets,
    ProfileSettings,
    apply_event,
    bought_rows,
    build_profiles,
    merge_profiles,
)
from core.formats.clicklog import EVENTS, ClickLogError, iter_clicklog, parse_timestamp

SCHEMA_VERSION = 2  # 2: events.credited (whether an event counts in the product statistics)
KEY_ENV = "ECOMSEARCH_USER_KEY"
DSN_ENV = "ECOMSEARCH_PG_DSN"  # wins over personal.dsn (keeps the password out of the config file)
EVENT_CODE = {e: i for i, e in enumerate(EVENTS)}
DAY = 86400.0


class EventError(EcomsearchError, ValueError):
    """An event that cannot be recorded (the message names the field and the reason)."""


class PrivacyError(EcomsearchError, RuntimeError):
    """Recording events without a key to hash user ids with."""


@dataclass
class ProductStats:
    """Event counts per product row (impressions, clicks, add-to-carts, purchases) and their catalog totals
    (kept with the counts, so a query never sums over the catalog)."""

    counts: np.ndarray  # [n, 4] float64 in EVENTS order
    totals: np.ndarray  # [4]

    def add(self, rows, codes, n=1.0) -> None:
        np.add.at(self.counts, (rows, codes), n)
        np.add.at(self.totals, codes, n)


class EventStore:
    """Where events, profiles and product counters live.  Implement these for another database.

    The product counters hold exactly the stored events the store's :class:`CreditRule` (``credit``)
    credited: deleting events (forgetting a user, the retention) takes their counts back."""

    credit: "CreditRule"

    def append(
        self, user: str, product_id: str, row: int, event: str, ts: float, query: str | None, update
    ) -> tuple[Profile | None, bool]:
        """Store one event and, in the same transaction, the profile ``update(profile | None) -> profile | None``
        returns (None: unchanged).  Returns the stored profile and whether the event was credited."""
        raise NotImplementedError

    def append_many(
        self,
        users: Sequence[str],
        product_ids: Sequence[str],
        events: Sequence[str],
        ts: Sequence[float],
        queries: Sequence[str | None],
        profiles: dict[str, Profile],
    ) -> np.ndarray:
        """Store many events, replace the given profiles and count the credited events, at once.  Returns
        which events were credited."""
        raise NotImplementedError

    def profile(self, user: str) -> Profile | None:
        raise NotImplementedError

    def profiles(self, users: Iterable[str]) -> dict[str, Profile]:
        return {u: p for u in users if (p := self.profile(u)) is not None}

    def product_counts(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def forget(self, user: str) -> int:
        """Delete every event and the profile of ``user``; returns the number of events deleted."""
        raise NotImplementedError

    def purge_before(self, ts: float) -> int:
        """Delete events (and profiles not updated) before ``ts``; returns the number of events deleted."""
        raise NotImplementedError

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, user TEXT NOT NULL, product TEXT NOT NULL, event INTEGER NOT NULL,
    ts REAL NOT NULL, query TEXT, credited INTEGER NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS events_user ON events (user, ts);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS profiles (
    user TEXT PRIMARY KEY, t REAL NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS product_stats (
    product TEXT PRIMARY KEY, impressions REAL NOT NULL DEFAULT 0, clicks REAL NOT NULL DEFAULT 0,
    carts REAL NOT NULL DEFAULT 0, purchases REAL NOT NULL DEFAULT 0);
"""
_STAT_COLS = ("impressions", "clicks", "carts", "purchases")


def _sql(p: str, user: str) -> dict[str, str]:
    """One write's statements in a dialect: ``p`` the placeholder, ``user`` the user column."""
    return {
        "p": p,
        "event": f"INSERT INTO events ({user}, product, event, ts, query, credited) "
        f"VALUES ({p}, {p}, {p}, {p}, {p}, {p})",
        # the credited events of some users in a time range (what the credit rule checks new events against)
        "credited": f"SELECT {user}, product, event, ts FROM events WHERE credited = 1 AND ts >= {p} AND ts < {p} "
        f"AND {user} IN ({{users}})",
        # what a set of events added to the product statistics (taken back when they are deleted)
        "uncount": "SELECT product, event, COUNT(*) FROM events WHERE credited = 1 AND {where} GROUP BY product, event",
        "unstat": "UPDATE product_stats SET "
        + ", ".join(f"{c} = {c} - {p}" for c in _STAT_COLS)
        + f" WHERE product = {p}",
        "stats": f"INSERT INTO product_stats AS s (product, {', '.join(_STAT_COLS)}) VALUES ({p}, {p}, {p}, {p}, {p}) "
        f"ON CONFLICT (product) DO UPDATE SET " + ", ".join(f"{c} = s.{c} + excluded.{c}" for c in _STAT_COLS),
        "profile": f"SELECT data, version FROM profiles WHERE {user} = {p}",
        "save": f"INSERT INTO profiles ({user}, t, version, data) VALUES ({p}, {p}, {p}, {p}) "
        f"ON CONFLICT ({user}) DO UPDATE SET t = excluded.t, version = excluded.version, data = excluded.data",
    }


_SQLITE_SQL, _PG_SQL = _sql("?", "user"), _sql("%s", "user_key")


def _append_event(
    con, sql: dict, user, product_id, event, ts, query, update, credit: "CreditRule"
) -> tuple[Profile | None, bool]:
    """The body of one write, inside the store's transaction: the event row (credited or not), the product
    counter, the profile's read-modify-write."""
    code = EVENT_CODE[event]
    credited = bool(credit.mask(con, sql, [user], [product_id], np.array([code]), np.array([ts]))[0])
    con.execute(sql["event"], (user, product_id, code, ts, query, int(credited)))
    if credited:
        con.execute(sql["stats"], (product_id, *(1.0 if c == code else 0.0 for c in range(len(EVENTS)))))
    got = con.execute(sql["profile"], (user,)).fetchone()
    old = Profile.loads(bytes(got[0]), got[1]) if got else None
    new = update(old)
    if new is not None:
        new.version = (old.version if old else 0) + 1
        con.execute(sql["save"], (user, new.t, new.version, new.dumps()))
    return (new if new is not None else old), credited


@dataclass(frozen=True)
class CreditRule:
    """Which events count in the product statistics (click rate, popularity): one per user, product and event
    type in each window of ``window_seconds`` (a bot's 1,000 clicks count once), and at most ``per_user`` per
    user and window (a bot clicking through the catalog is capped).  Every event is still stored and still
    shapes its own user's profile; only the statistics every shopper's ranking reads are protected."""

    window_seconds: float = 86400.0
    per_user: int = 200

    def mask(
        self, con, sql: dict, users: Sequence[str], pids: Sequence[str], codes: np.ndarray, ts: np.ndarray
    ) -> np.ndarray:
        """Whether each new event is credited, against the credited events stored (``con``: inside the write
        transaction) and the earlier ones of this batch, in time order."""
        ts = np.asarray(ts, dtype=np.float64)
        n = len(ts)
        if n == 0:
            return np.zeros(0, dtype=bool)
        w = self.window_seconds
        buckets = np.floor(ts / w)
        lo, hi = float(buckets.min() * w), float((buckets.max() + 1) * w)
        seen: set = set()
        per: dict = {}
        distinct = sorted(set(users))
        for i in range(0, len(distinct), 500):
            chunk = distinct[i : i + 500]
            stmt = sql["credited"].format(users=", ".join([sql["p"]] * len(chunk)))
            for u, prod, ev, t in con.execute(stmt, (lo, hi, *chunk)).fetchall():
                b = float(np.floor(t / w))
                seen.add((u, prod, int(ev), b))
                per[(u, b)] = per.get((u, b), 0) + 1
        out = np.zeros(n, dtype=bool)
        for i in np.argsort(ts, kind="stable"):
            u, b = users[i], float(buckets[i])
            key = (u, pids[i], int(codes[i]), b)
            if key in seen or per.get((u, b), 0) >= self.per_user:
                continue
            seen.add(key)
            per[(u, b)] = per.get((u, b), 0) + 1
            out[i] = True
        return out


def _uncount(con, sql: dict, where: str, params: tuple) -> None:
    """Take the credited events ``where`` selects out of the product statistics (before deleting them):
    forgetting a user or dropping old events leaves no trace in the counts."""
    rows = con.execute(sql["uncount"].format(where=where), params).fetchall()
    if not rows:
        return
    per_product: dict[str, list[float]] = {}
    for product, code, n in rows:
        per_product.setdefault(product, [0.0] * len(EVENTS))[int(code)] += float(n)
    for prod, c in per_product.items():  # one user's products, or one purge's: few rows
        con.execute(sql["unstat"], (*c, prod))


def _counts(pids: Sequence[str], codes: np.ndarray, credited: np.ndarray) -> list[tuple]:
    """(product id, impressions, clicks, carts, purchases) rows of the credited events, one per product."""
    per: dict[str, list[float]] = {}
    for pid, code in zip(np.asarray(pids, dtype=object)[credited], codes[credited]):
        per.setdefault(pid, [0.0] * len(EVENTS))[int(code)] += 1.0
    return [(pid, *c) for pid, c in per.items()]


def _stamp_schema(con, placeholder: str, where: str, hint: str) -> None:
    """Record the schema version in a new store; bring a version-1 store to version 2 (every stored event
    credited, the product statistics recounted from the events, so they hold what forgetting can take back);
    refuse a store another schema version wrote."""
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        con.execute(f"INSERT INTO meta VALUES ('schema_version', {placeholder})", (str(SCHEMA_VERSION),))
    elif int(row[0]) == 1:
        con.execute("ALTER TABLE events ADD COLUMN credited SMALLINT NOT NULL DEFAULT 1")
        con.execute("DELETE FROM product_stats")
        con.execute(
            f"INSERT INTO product_stats (product, {', '.join(_STAT_COLS)}) SELECT product, "
            + ", ".join(f"SUM(CASE WHEN event = {i} THEN 1 ELSE 0 END)" for i in range(len(_STAT_COLS)))
            + " FROM events GROUP BY product"
        )
        con.execute(f"UPDATE meta SET value = {placeholder} WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    elif int(row[0]) != SCHEMA_VERSION:
        raise EventError(f"{where}: event store schema version {row[0]}, this engine reads {SCHEMA_VERSION}; {hint}")


class _SQLEventStore(EventStore):
    """What the SQL stores share: the same tables, one connection per thread (``_con``), one write
    transaction (``_write``), statements in the store's dialect (``_sql``)."""

    _sql: dict[str, str]

    def _con(self):
        raise NotImplementedError

    def profile(self, user):
        got = self._con().execute(self._sql["profile"], (user,)).fetchone()
        return Profile.loads(bytes(got[0]), got[1]) if got else None

    def product_counts(self):
        rows = self._con().execute(f"SELECT product, {', '.join(_STAT_COLS)} FROM product_stats").fetchall()
        return {r[0]: np.array(r[1:], dtype=np.float64) for r in rows}

    def count_events(self) -> int:
        return int(self._con().execute("SELECT COUNT(*) FROM events").fetchone()[0])


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

    def append_many(self, users, product_ids, events, ts, queries, profiles):
        codes = np.fromiter((EVENT_CODE[e] for e in events), dtype=np.int64, count=len(events))
        with self._write() as con:
            credited = self.credit.mask(con, self._sql, users, product_ids, codes, np.asarray(ts, dtype=np.float64))
            con.executemany(
                self._sql["event"], zip(users, product_ids, codes.tolist(), ts, queries, credited.astype(int).tolist())
            )
            con.executemany(self._sql["stats"], _counts(product_ids, codes, credited))
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
            con.execute("DELETE FROM profiles WHERE user = ?", (user,))
        # move the change out of the write-ahead log into the (securely overwritten) database pages
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def purge_before(self, ts):
        with self._write() as con:
            _uncount(con, self._sql, "ts < ?", (ts,))
            n = con.execute("DELETE FROM events WHERE ts < ?", (ts,)).rowcount
            con.execute("DELETE FROM profiles WHERE t < ?", (ts,))
        if n:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def close(self):
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id BIGSERIAL PRIMARY KEY, user_key TEXT NOT NULL, product TEXT NOT NULL, event SMALLINT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, query TEXT, credited SMALLINT NOT NULL DEFAULT 1);
CREATE INDEX IF NOT EXISTS events_user ON events (user_key, ts);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS profiles (
    user_key TEXT PRIMARY KEY, t DOUBLE PRECISION NOT NULL, version INTEGER NOT NULL, data BYTEA NOT NULL);
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
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            con.execute(f"SET LOCAL search_path TO {schema}")
            con.execute("SELECT pg_advisory_xact_lock(hashtext('ecomsearch schema'))")
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

    def append_many(self, users, product_ids, events, ts, queries, profiles):
        codes = np.fromiter((EVENT_CODE[e] for e in events), dtype=np.int64, count=len(events))
        with self._write() as con:
            for u in sorted(set(users) | set(profiles)):  # one order for every writer: two loads cannot deadlock
                self._lock_user(con, u)
            credited = self.credit.mask(con, self._sql, users, product_ids, codes, np.asarray(ts, dtype=np.float64))
            with con.cursor() as cur:
                with cur.copy("COPY events (user_key, product, event, ts, query, credited) FROM STDIN") as cp:
                    for row in zip(users, product_ids, codes.tolist(), ts, queries, credited.astype(int).tolist()):
                        cp.write_row(row)
                cur.executemany(self._sql["stats"], _counts(product_ids, codes, credited))
                cur.executemany(self._sql["save"], [(u, p.t, p.version, p.dumps()) for u, p in profiles.items()])
        return credited

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
            con.execute("DELETE FROM profiles WHERE user_key = %s", (user,))
        return n

    def purge_before(self, ts):
        with self._write() as con:
            _uncount(con, self._sql, "ts < %s", (ts,))
            n = con.execute("DELETE FROM events WHERE ts < %s", (ts,)).rowcount
            con.execute("DELETE FROM profiles WHERE t < %s", (ts,))
        return n

    def close(self):
        with self._all_lock:
            for con in self._all:
                con.close()
            self._all.clear()
        self._local = threading.local()


def open_store(personal_cfg) -> EventStore:
    """The event store a config names (``personal.store``: ``sqlite`` or ``postgres``)."""
    p = personal_cfg
    credit = CreditRule(p.credit_window_hours * 3600.0, p.credits_per_user)
    if p.store == "sqlite":
        return SQLiteEventStore(p.path, credit=credit)
    if p.store == "postgres":
        return PostgresEventStore(os.environ.get(DSN_ENV) or p.dsn or "", p.pg_schema, credit=credit)
    raise EventError(f"personal.store: {p.store!r} is not one of sqlite, postgres")


@dataclass
class IngestReport:
    read: int = 0
    recorded: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    users: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.recorded} events recorded for {self.users} users, {len(self.rejected)} rejected "
            f"(of {self.read} rows), {self.seconds:.1f} s"
        )


class UserEvents:
    """Validated, privacy-preserving event recording and profile lookup for one engine.

    ``product_rows`` maps a product id to its row (the engine's product table), ``facets`` gives each row's
    vector and facet codes.
    """

    def __init__(
        self,
        store: EventStore,
        facets: ProductFacets,
        product_ids,
        settings: ProfileSettings,
        user_key: str | None,
        retention_days: float = 365.0,
        clock=time.time,
        row_map: dict[str, int] | None = None,
        future_skew_seconds: float = 300.0,
    ):
        self.store = store
        self.facets = facets
        self.product_ids = product_ids  # StringColumn or list, by row
        self._row_of = row_map  # built from product_ids at first use when not given
        self.settings = settings
        self._key = user_key.encode("utf-8") if user_key else None
        self.retention = retention_days * DAY
        self.skew = future_skew_seconds
        self.clock = clock
        self._stats: ProductStats | None = None
        self._stats_lock = threading.Lock()
        self._stats_read = 0.0
        self._writes = 0

    @classmethod
    def open(cls, cfg, facets: ProductFacets, products) -> "UserEvents":
        """The config's event store for an engine's product table (its id -> row map is shared, not rebuilt)."""
        p = cfg.personal
        key = os.environ.get(KEY_ENV) or p.user_key
        return cls(
            open_store(p),
            facets,
            products.ids,
            ProfileSettings.from_config(p),
            key,
            p.retention_days,
            row_map=products.row_map(),
            future_skew_seconds=p.future_skew_seconds,
        )

    # -- users -------------------------------------------------------------------------------------------
    def user_key(self, user_id: str, for_write: bool = False) -> str | None:
        """The stored form of a user id: HMAC-SHA256 with the configured key (None: no key, reads only)."""
        problem = id_problem(user_id)
        if problem:
            raise EventError(f"field 'user_id': {problem}")
        if self._key is None:
            if for_write:
                raise PrivacyError(
                    f"no key to hash user ids with: set the environment variable {KEY_ENV} "
                    "(or personal.user_key in the config); events are never stored with raw ids"
                )
            return None
        return hmac.new(self._key, user_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    def row_map(self) -> dict[str, int]:
        """Product id -> row of the index the engine serves (built once)."""
        if self._row_of is None:
            ids = self.product_ids.tolist() if hasattr(self.product_ids, "tolist") else list(self.product_ids)
            self._row_of = {pid: i for i, pid in enumerate(ids)}
        return self._row_of

    def row_of(self, product_id: str) -> int:
        problem = id_problem(product_id)
        if problem:
            raise EventError(f"field 'product_id': {problem}")
        try:
            return self.row_map()[product_id]
        except KeyError:
            raise EventError(f"field 'product_id': unknown product {product_id!r} (not in the index)") from None

    def bought_rows(self, profile: Profile | None) -> np.ndarray:
        """Rows of the products a profile bought (those still in the index)."""
        return bought_rows(profile, self.row_map())

    # -- writing -----------------------------------------------------------------------------------------
    def validate(self, user_id, product_id, event, timestamp) -> tuple[str, int, str, float]:
        user = self.user_key(user_id, for_write=True)
        if not isinstance(product_id, str) or not product_id.strip():
            raise EventError("field 'product_id': missing or empty")
        row = self.row_of(product_id.strip())
        if event not in EVENT_CODE:
            raise EventError(f"field 'event': {event!r} is not one of {', '.join(EVENTS)}")
        if timestamp is None:
            ts = self.clock()
        else:
            try:
                ts = parse_timestamp(timestamp)
            except (ValueError, TypeError) as e:
                raise EventError(f"field 'timestamp': {e}") from None
            self.check_time(ts)
        return user, row, event, ts

    def check_time(self, ts: float, now: float | None = None) -> None:
        """Refuse a time outside [now - retention, now + future skew] (a stray 0, a year 9999, 1e300)."""
        now = self.clock() if now is None else now
        if not np.isfinite(ts):
            raise EventError(f"field 'timestamp': not a finite time: {ts!r}")
        if ts > now + self.skew:
            raise EventError(
                f"field 'timestamp': {_when(ts)} is in the future (more than {self.skew:.0f} s after "
                f"the server's clock, {_when(now)})"
            )
        if ts < now - self.retention:
            raise EventError(
                f"field 'timestamp': {_when(ts)} is older than the retention "
                f"({self.retention / DAY:g} days, personal.retention_days)"
            )

    def record(
        self, user_id: str, product_id: str, event: str, timestamp=None, query: str | None = None
    ) -> Profile | None:
        """Record one event; the user's profile is updated in the same transaction."""
        user, row, event, ts = self.validate(user_id, product_id, event, timestamp)
        pid = product_id.strip()

        def update(old: Profile | None) -> Profile | None:
            prof = old or Profile()
            return prof if apply_event(prof, self.facets, row, pid, event, ts, self.settings) else None

        prof, credited = self.store.append(user, pid, row, event, ts, query, update)
        with self._stats_lock:
            if self._stats is not None and credited:
                self._stats.add(row, EVENT_CODE[event])
        self._writes += 1
        if self._writes % 1000 == 0:
            self.purge()
        return prof

    def ingest(self, path: str | Path, skip_bad_rows: bool = False, progress: bool = False) -> IngestReport:
        """Load a click log: validated, user ids hashed, profiles built in bulk and merged with stored ones,
        all in one transaction.  A bad row stops the load (nothing stored) unless ``skip_bad_rows``: then
        it is reported with its reason and the good rows are stored."""
        t0 = time.perf_counter()
        rep = IngestReport()
        hashed: dict[str, str] = {}
        users, pids, rows, evs, ts, queries = [], [], [], [], [], []
        row_of = self.row_map()
        now = self.clock()
        for line, item in iter_clicklog(path):
            rep.read += 1
            if isinstance(item, ClickLogError):
                err = str(item)
            else:
                row = row_of.get(item.product_id)
                err = (
                    None
                    if row is not None
                    else f"{path}:{line}: field 'product_id': unknown product {item.product_id!r} (not in the index)"
                )
                if err is None:
                    try:
                        self.check_time(item.timestamp, now)
                    except EventError as e:
                        err = f"{path}:{line}: {e}"
            if err is not None:
                if not skip_bad_rows:
                    raise EventError(err + " (use --skip-bad-rows to load the good rows and list the bad)")
                rep.rejected.append((line, err))
                continue
            u = hashed.get(item.user_id)
            if u is None:
                u = hashed[item.user_id] = self.user_key(item.user_id, for_write=True)
            users.append(u)
            pids.append(item.product_id)
            rows.append(row)
            evs.append(item.event)
            ts.append(item.timestamp)
            queries.append(item.query)
        self.append_bulk(users, pids, np.asarray(rows, dtype=np.int64), evs, np.asarray(ts, dtype=np.float64), queries)
        rep.recorded = len(users)
        rep.users = len(set(users))
        rep.seconds = time.perf_counter() - t0
        return rep

    def append_bulk(
        self,
        users: Sequence[str],
        pids: Sequence[str],
        rows: np.ndarray,
        events: Sequence[str],
        ts: np.ndarray,
        queries: Sequence[str | None],
    ) -> None:
        """Store already validated events (hashed users) and fold them into the users' profiles."""
        if len(users) == 0:
            return
        codes = np.fromiter((EVENT_CODE[e] for e in events), dtype=np.int64, count=len(events))
        order = np.argsort(ts, kind="stable")
        users_a = np.asarray(users, dtype=object)[order]
        new = build_profiles(
            users_a.astype(str),
            rows[order],
            np.asarray(pids, dtype=object)[order],
            codes[order],
            ts[order],
            self.facets,
            self.settings,
            EVENTS,
        )
        old = self.store.profiles(new)
        merged = {u: merge_profiles(old[u], p, self.settings) if u in old else p for u, p in new.items()}
        for u, p in merged.items():
            p.version = (old[u].version if u in old else 0) + 1
        credited = self.store.append_many(users, pids, events, ts.tolist(), queries, merged)
        with self._stats_lock:
            if self._stats is not None:
                self._stats.add(rows[credited], codes[credited])

    # -- reading -----------------------------------------------------------------------------------------
    def profile(self, user_id: str | None) -> Profile | None:
        """The user's profile, or None (no user, unknown user, no key configured, no engaging events)."""
        if user_id is None:
            return None
        key = self.user_key(user_id)
        if key is None:
            return None
        p = self.store.profile(key)
        return p if p is not None and p.weight > 0 else None

    def stats(self, refresh_seconds: float = 60.0) -> ProductStats:
        """Event counts per product row: read from the store at first use and every ``refresh_seconds``
        (events other processes record), kept current in between by this process's own events."""
        now = time.monotonic()
        with self._stats_lock:
            if self._stats is None or now - self._stats_read > refresh_seconds:
                counts = np.zeros((len(self.facets), len(EVENTS)))
                row_of = self.row_map()
                for pid, c in self.store.product_counts().items():
                    r = row_of.get(pid)
                    if r is not None:
                        counts[r] = c
                self._stats, self._stats_read = ProductStats(counts, counts.sum(axis=0)), now
            return self._stats

    # -- privacy -----------------------------------------------------------------------------------------
    def forget(self, user_id: str) -> int:
        """Delete every event and the profile of a user; returns the number of events deleted."""
        key = self.user_key(user_id, for_write=True)
        n = self.store.forget(key)
        self.invalidate_stats()  # their counts left the store: read them again
        return n

    def invalidate_stats(self) -> None:
        with self._stats_lock:
            self._stats = None

    def purge(self, now: float | None = None) -> int:
        """Drop events older than the retention (and profiles not updated since)."""
        now = self.clock() if now is None else now
        n = self.store.purge_before(now - self.retention)
        if n:
            self.invalidate_stats()
        return n


def _when(ts: float) -> str:
    """A time for a message: ISO 8601 where it has one, else the number."""
    from datetime import datetime, timezone

    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{ts:g}"
