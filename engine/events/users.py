"""What the engine uses: :class:`UserEvents` validates events (ids, event types, times in the retention window),
hashes user ids with HMAC-SHA256, records them with their profile update, ingests click logs in bulk, reads profiles
and product statistics, forgets users and drops events past the retention; :func:`open_store` opens the store a
config names."""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.formats.clicklog import EVENTS, parse_timestamp
from core.types import id_problem
from engine.events.impressions import ANONYMOUS, Impression
from engine.events.postgres import PostgresEventStore
from engine.events.sqlite import SQLiteEventStore
from engine.events.store import DAY, DSN_ENV, EVENT_CODE, KEY_ENV, CreditRule, EventError, EventStore, PrivacyError
from engine.profiles import (
    Profile,
    ProductFacets,
    ProfileSettings,
    apply_event,
    bought_rows,
)
from engine.events.ingest import IngestReport, ingest_clicklog
from engine.events.shown import fold_shown
from engine.profiles_bulk import build_profiles, merge_stored


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
class ProductStats:
    """Event counts per product row (impressions, clicks, add-to-carts, purchases) and their catalog totals
    (kept with the counts, so a query never sums over the catalog)."""

    counts: np.ndarray  # [n, 4] float64 in EVENTS order
    totals: np.ndarray  # [4]

    def add(self, rows, codes, n=1.0) -> None:
        np.add.at(self.counts, (rows, codes), n)
        np.add.at(self.totals, codes, n)


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
        # profiles read, merged and written back: a request's events and the impression log's folds of the same
        # shopper (two threads) must not overwrite each other's update
        self._profile_lock = threading.Lock()
        self._stats_read = 0.0
        self._writes = 0
        self.listeners: list = []  # fn(rows, event codes, times) of each batch of credited events (trending)

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
    def validate(
        self, user_id, product_id, event, timestamp, anonymous: str | None = None
    ) -> tuple[str, int, str, float]:
        """(user key, product row, event, time) of an event, or :class:`EventError` naming the bad field.
        ``anonymous``: the search id an event without a user answers (its key is ``anon:<search id>``)."""
        if user_id is None and anonymous is not None:
            user = ANONYMOUS + anonymous
        else:
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
            if event == "impression" and self.settings.exposure == "examined":
                return None  # alone, an impression says nothing of what was looked at (personal.exposure)
            prof = old or Profile()
            return prof if apply_event(prof, self.facets, row, pid, event, ts, self.settings) else None

        with self._profile_lock:
            prof, credited = self.store.append(user, pid, row, event, ts, query, update)
        with self._stats_lock:
            if self._stats is not None and credited:
                self._stats.add(row, EVENT_CODE[event])
        if credited:
            self._notify(np.array([row]), np.array([EVENT_CODE[event]]), np.array([ts], dtype=np.float64))
        self._writes += 1
        if self._writes % 1000 == 0:
            self.purge()
        return prof

    def ingest(self, path: str | Path, skip_bad_rows: bool = False, progress: bool = False) -> IngestReport:
        """Load a click log (:func:`engine.events.ingest.ingest_clicklog`)."""
        return ingest_clicklog(self, path, skip_bad_rows)

    def append_bulk(
        self,
        users: Sequence[str],
        pids: Sequence[str],
        rows: np.ndarray,
        events: Sequence[str],
        ts: np.ndarray,
        queries: Sequence[str | None],
        links: Sequence[tuple] | None = None,
        exposure: Sequence[tuple] = (),
        profile_mask: np.ndarray | None = None,
        ranks: Sequence[int] | None = None,
        relevance: Sequence[float | None] | None = None,
    ) -> None:
        """Store already validated events (hashed users) and fold them into the users' profiles; ``links``: per
        event the (search id, rank, arm) of the impression it answers, or None.  Anonymous events (user key
        ``anon:<search id>``) count for learning and the product statistics, never for a profile.
        ``exposure``: (user key, product id, time) of shown products the users surely looked at
        (:func:`engine.events.impressions.examined`), folded into their profiles as impressions, not stored.
        ``profile_mask``: which of the events shape profiles (None: all; every event is stored either way);
        ``ranks``: each event's 1-based rank in its search (0: unknown), the taste evidence's
        (:mod:`engine.taste`; a click with a link takes the link's), ``relevance`` its logged relevance there
        (None: none)."""
        if len(users) == 0:
            return
        codes = np.fromiter((EVENT_CODE[e] for e in events), dtype=np.int64, count=len(events))
        p_users, p_rows, p_pids, p_codes, p_ts = list(users), rows, list(pids), codes, ts
        p_shapes = np.ones(len(users), dtype=bool) if profile_mask is None else np.asarray(profile_mask, dtype=bool)
        # each event's rank in its search feeds the taste evidence: a click answering a search has its rank
        p_ranks = np.zeros(len(users), dtype=np.int64) if ranks is None else np.array(ranks, dtype=np.int64)
        for i, (link, e) in enumerate(zip(links or (), events)):
            if link is not None and link[1] is not None and e == "click":
                p_ranks[i] = int(link[1])
        p_x = np.array([np.nan if x is None else x for x in relevance or [None] * len(users)], dtype=np.float64)
        row_of = self.row_map()
        exposure = [(u, p, t) for u, p, t in exposure if p in row_of]
        if exposure:  # exposure adds no taste evidence: what the searches showed comes whole (log_impressions)
            p_users = p_users + [u for u, _, _ in exposure]
            p_pids = p_pids + [p for _, p, _ in exposure]
            p_rows = np.concatenate([p_rows, np.array([row_of[p] for _, p, _ in exposure], dtype=np.int64)])
            p_codes = np.concatenate([p_codes, np.full(len(exposure), EVENT_CODE["impression"], dtype=np.int64)])
            p_ts = np.concatenate([p_ts, np.array([t for _, _, t in exposure], dtype=np.float64)])
            p_shapes = np.concatenate([p_shapes, np.ones(len(exposure), dtype=bool)])
            p_ranks = np.concatenate([p_ranks, np.zeros(len(exposure), dtype=np.int64)])
            p_x = np.concatenate([p_x, np.full(len(exposure), np.nan)])
        order = np.argsort(p_ts, kind="stable")
        if links is not None:  # only an event answering a search can be anonymous: it builds no profile
            order = order[[not p_users[i].startswith(ANONYMOUS) for i in order]]
        new = build_profiles(
            np.asarray(p_users, dtype=object)[order].astype(str),
            p_rows[order],
            np.asarray(p_pids, dtype=object)[order],
            p_codes[order],
            p_ts[order],
            self.facets,
            self.settings,
            EVENTS,
            ranks=p_ranks[order],
            shapes=p_shapes[order],
            relevance=p_x[order],
        )
        with self._profile_lock:
            merged = merge_stored(self.store.profiles(new), new, self.settings)
            credited = self.store.append_many(users, pids, events, ts.tolist(), queries, merged, links)
        with self._stats_lock:
            if self._stats is not None:
                self._stats.add(rows[credited], codes[credited])
        self._notify(rows[credited], codes[credited], np.asarray(ts, dtype=np.float64)[credited])

    def _notify(self, rows, codes, ts) -> None:
        for fn in list(self.listeners):
            fn(rows, codes, ts)

    # -- impressions: what searches showed --------------------------------------------------------------
    def log_impressions(self, impressions: Sequence[Impression]) -> None:
        """Store what searches showed (the service logs every search; the Python API only when asked), and fold
        what they showed known users into those users' taste evidence (:mod:`engine.events.shown`)."""
        if impressions:
            self.store.log_impressions([i.row() for i in impressions])
            with self._profile_lock:
                fold_shown(self.store, self.facets, self.settings, self.row_map(), impressions)

    def impression(self, search_id: str) -> Impression | None:
        """The stored impression of a search (None: unknown id)."""
        if not isinstance(search_id, str) or id_problem(search_id):
            return None
        row = self.store.impression(search_id)
        return Impression.from_row(row) if row is not None else None

    def logged_searches(self, since: float, until: float, page: int = 10_000):
        """The logged searches of ``[since, until)`` in time order, a page at a time: (impressions, the events
        that answer them: (search id, product, event code, rank, time, user))."""
        for rows in self.store.impression_pages(since, until, page):
            imps = [Impression.from_row(r) for r in rows]
            yield imps, self.store.linked_events([i.search_id for i in imps])

    def event_pages(self, until: float, page: int = 50_000):
        """The credited events before ``until`` as (user key, product id, event code, time), in time order, a
        page at a time (a retrain replays them point-in-time)."""
        return self.store.event_pages(until, page)

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
