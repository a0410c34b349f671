"""The event store's interface and what its SQL implementations share: the schema version, the dialect's
statements, the credit rule (which events count in the product statistics), one write's body, taking counts back
when events are deleted, the schema stamp and migration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from core.formats.clicklog import EVENTS
from core.types import EcomsearchError
from engine.profiles import Profile

# 2: events.credited (whether an event counts in the product statistics); 3: impressions; 4: impressions.relevance
SCHEMA_VERSION = 4
# (what each search showed) and events.search_id / rank / arm (the impression an event answers)
KEY_ENV = "ECOMSEARCH_USER_KEY"
DSN_ENV = "ECOMSEARCH_PG_DSN"  # wins over personal.dsn (keeps the password out of the config file)
EVENT_CODE = {e: i for i, e in enumerate(EVENTS)}
DAY = 86400.0


class EventError(EcomsearchError, ValueError):
    """An event that cannot be recorded (the message names the field and the reason)."""


class PrivacyError(EcomsearchError, RuntimeError):
    """Recording events without a key to hash user ids with."""


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
        links: Sequence[tuple] | None = None,
    ) -> np.ndarray:
        """Store many events, replace the given profiles and count the credited events, at once; ``links``: per
        event the (search id, rank, arm) of the impression it answers, or None.  Returns which events were
        credited."""
        raise NotImplementedError

    def profile(self, user: str) -> Profile | None:
        raise NotImplementedError

    def profiles(self, users: Iterable[str]) -> dict[str, Profile]:
        return {u: p for u in users if (p := self.profile(u)) is not None}

    def product_counts(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def forget(self, user: str) -> int:
        """Delete every event, every impression and the profile of ``user``; returns the number of events
        deleted."""
        raise NotImplementedError

    def log_impressions(self, rows: Sequence[tuple]) -> None:
        """Store what searches showed (:meth:`engine.events.impressions.Impression.row` each), in one write."""
        raise NotImplementedError

    def impression(self, search_id: str) -> tuple | None:
        """The stored row of one search's impression (None: unknown)."""
        raise NotImplementedError

    def purge_before(self, ts: float) -> int:
        """Delete events, impressions (and profiles not updated) before ``ts``; returns the number of events
        deleted."""
        raise NotImplementedError

    def close(self) -> None:
        pass


_STAT_COLS = ("impressions", "clicks", "carts", "purchases")


def _sql(p: str, user: str) -> dict[str, str]:
    """One write's statements in a dialect: ``p`` the placeholder, ``user`` the user column."""
    return {
        "p": p,
        "event": f"INSERT INTO events ({user}, product, event, ts, query, credited, search_id, rank, arm) "
        f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
        "impression": f"INSERT INTO impressions (search_id, ts, {user}, query, searched, filters, k, offset_, "
        f"products, versions, arm, relevance) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) "
        "ON CONFLICT (search_id) DO NOTHING",
        "impression_get": f"SELECT search_id, ts, {user}, query, searched, filters, k, offset_, products, versions, "
        f"arm, relevance FROM impressions WHERE search_id = {p}",
        # a time window of impressions, one page after (ts, search_id) at a time: streams any number of them
        "impression_page": f"SELECT search_id, ts, {user}, query, searched, filters, k, offset_, products, versions, "
        f"arm, relevance FROM impressions WHERE ts >= {p} AND ts < {p} "
        f"AND (ts > {p} OR (ts = {p} AND search_id > {p})) "
        f"ORDER BY ts, search_id LIMIT {p}",
        "linked": f"SELECT search_id, product, event, rank, ts, {user} FROM events WHERE search_id IN ({{ids}})",
        # the searches of an online experiment (arm set) and the ranks of the clicks answering them
        "experiment": "SELECT i.search_id, i.arm, e.rank FROM impressions i LEFT JOIN events e "
        f"ON e.search_id = i.search_id AND e.event = 1 WHERE i.arm IS NOT NULL AND i.ts >= {p}",
        # the credited events before a time, one page after (ts, id) at a time (a retrain's point-in-time replay)
        "event_page": f"SELECT id, {user}, product, event, ts FROM events WHERE credited = 1 AND ts < {p} "
        f"AND (ts > {p} OR (ts = {p} AND id > {p})) ORDER BY ts, id LIMIT {p}",
        # one user's most recent credited events and searches (for_you's seeds; the (user, ts) index)
        "recent": f"SELECT product, event, ts, query FROM events WHERE {user} = {p} AND credited = 1 AND event > 0 "
        f"ORDER BY ts DESC LIMIT {p}",
        "searches": f"SELECT query, ts FROM impressions WHERE {user} = {p} ORDER BY ts DESC LIMIT {p}",
        # every logged search of one user (what a forget takes out of the query clicks; the user index)
        "user_impressions": f"SELECT search_id, ts, {user}, query, searched, filters, k, offset_, products, "
        f"versions, arm, relevance FROM impressions WHERE {user} = {p} ORDER BY ts",
        # the credited engagements since a time, one page after (ts, id) at a time (trending)
        "since_page": f"SELECT id, product, event, ts FROM events WHERE credited = 1 AND event > 0 AND ts >= {p} "
        f"AND (ts > {p} OR (ts = {p} AND id > {p})) ORDER BY ts, id LIMIT {p}",
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
    con.execute(sql["event"], (user, product_id, code, ts, query, int(credited), None, None, None))
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
    """Record the schema version in a new store; bring an older store to this version (1 -> 2: every stored
    event credited, the product statistics recounted from the events, so they hold what forgetting can take
    back; 2 -> 3: events get search_id, rank and arm, the impressions table is new; 3 -> 4: impressions get the
    relevance of what they showed); refuse a store another schema version wrote."""
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        con.execute(f"INSERT INTO meta VALUES ('schema_version', {placeholder})", (str(SCHEMA_VERSION),))
        return
    version = int(row[0])
    if version not in (1, 2, 3, SCHEMA_VERSION):
        raise EventError(f"{where}: event store schema version {row[0]}, this engine reads {SCHEMA_VERSION}; {hint}")
    if version == 1:
        con.execute("ALTER TABLE events ADD COLUMN credited SMALLINT NOT NULL DEFAULT 1")
        con.execute("DELETE FROM product_stats")
        con.execute(
            f"INSERT INTO product_stats (product, {', '.join(_STAT_COLS)}) SELECT product, "
            + ", ".join(f"SUM(CASE WHEN event = {i} THEN 1 ELSE 0 END)" for i in range(len(_STAT_COLS)))
            + " FROM events GROUP BY product"
        )
    if version <= 2:  # the impressions table is created with the schema; events learn which one they answer
        for column in ("search_id TEXT", "rank INTEGER", "arm TEXT"):
            con.execute(f"ALTER TABLE events ADD COLUMN {column}")
    if version == 3:  # (a store of version 2 or older creates the impressions table with the column)
        con.execute("ALTER TABLE impressions ADD COLUMN relevance TEXT")
    if version != SCHEMA_VERSION:
        con.execute(f"UPDATE meta SET value = {placeholder} WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    con.execute("CREATE INDEX IF NOT EXISTS events_search ON events (search_id)")  # the events of a search


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

    def _credit_batch(self, con, users, product_ids, events, ts, queries, links=None):
        """Inside a write transaction: the credit rule over a batch. Returns the event rows to insert (an iterator:
        the credited flag, then search id, rank and arm from ``links``), the credited counts per product, and
        which events were credited."""
        codes = np.fromiter((EVENT_CODE[e] for e in events), dtype=np.int64, count=len(events))
        credited = self.credit.mask(con, self._sql, users, product_ids, codes, np.asarray(ts, dtype=np.float64))
        links = links if links is not None else [(None, None, None)] * len(users)
        rows = (
            (u, p, c, t, q, f, *link)
            for u, p, c, t, q, f, link in zip(
                users, product_ids, codes.tolist(), ts, queries, credited.astype(int).tolist(), links
            )
        )
        return rows, _counts(product_ids, codes, credited), credited

    def log_impressions(self, rows):
        with self._write() as con:
            con.executemany(self._sql["impression"], list(rows))

    def impression(self, search_id):
        return self._con().execute(self._sql["impression_get"], (search_id,)).fetchone()

    def _keyset_pages(self, sql: str, window: tuple, ts_col: int, first_id, page: int):
        """Rows of statement ``sql`` (its ``window`` parameters, then the keyset: last time, last time, last id,
        page size) in (time, id) order, one page at a time: never more than a page in memory, on SQLite and
        PostgreSQL alike.  The id is each row's first column, the time its ``ts_col``-th."""
        last_ts, last_id = -np.inf, first_id
        while True:
            rows = self._con().execute(self._sql[sql], (*window, last_ts, last_ts, last_id, page)).fetchall()
            if not rows:
                return
            yield rows
            last_ts, last_id = rows[-1][ts_col], rows[-1][0]

    def impression_pages(self, since: float, until: float, page: int = 10_000):
        """The impressions of ``[since, until)`` in time order, ``page`` rows at a time (keyset pagination)."""
        yield from self._keyset_pages("impression_page", (since, until), 1, "", page)

    def event_pages(self, until: float, page: int = 50_000):
        """The credited events before ``until`` as (user, product, event code, time), in time order, ``page``
        rows at a time."""
        for rows in self._keyset_pages("event_page", (until,), 4, -1, page):
            yield [r[1:] for r in rows]

    def recent(self, user: str, events: int, searches: int) -> tuple[list[tuple], list[tuple]]:
        """A user's ``events`` most recent credited engagements (product, event code, time, query) and ``searches``
        most recent logged searches (query, time), newest first."""
        con = self._con()
        return (
            con.execute(self._sql["recent"], (user, events)).fetchall(),
            con.execute(self._sql["searches"], (user, searches)).fetchall(),
        )

    def user_impressions(self, user: str) -> list[tuple]:
        """Every logged search of one user (hashed key), oldest first, as stored rows."""
        return self._con().execute(self._sql["user_impressions"], (user,)).fetchall()

    def engagement_pages(self, since: float, page: int = 50_000):
        """The credited clicks, carts and purchases since ``since`` as (product, event code, time), in time
        order, ``page`` rows at a time."""
        for rows in self._keyset_pages("since_page", (since,), 3, -1, page):
            yield [r[1:] for r in rows]

    def experiment_rows(self, since: float) -> list[tuple]:
        """(search id, arm, clicked rank or None) of the experiment searches logged since ``since``."""
        return self._con().execute(self._sql["experiment"], (since,)).fetchall()

    def linked_events(self, search_ids: Sequence[str]) -> list[tuple]:
        """(search id, product, event code, rank, time, user) of every event that answers one of the searches."""
        out = []
        ids = list(search_ids)
        p = self._sql["p"]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            out += self._con().execute(self._sql["linked"].format(ids=", ".join([p] * len(chunk))), chunk).fetchall()
        return out
