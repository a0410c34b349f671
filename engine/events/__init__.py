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

Modules: :mod:`~engine.events.store` (the interface, the SQL both stores share, the credit rule),
:mod:`~engine.events.sqlite`, :mod:`~engine.events.postgres`, :mod:`~engine.events.impressions` (what a search
showed: :class:`Impression`, search ids, events linked to them), :mod:`~engine.events.users` (:class:`UserEvents`,
:func:`open_store`).  `python -m engine.events_cli ingest clicks.jsonl --config C [--skip-bad-rows]` loads a
click log (the format of :mod:`core.formats.clicklog`).
"""

from engine.events.impressions import Impression, new_search_id
from engine.events.postgres import PostgresEventStore
from engine.events.sqlite import SQLiteEventStore
from engine.events.store import (
    DSN_ENV,
    EVENT_CODE,
    KEY_ENV,
    SCHEMA_VERSION,
    CreditRule,
    EventError,
    EventStore,
    PrivacyError,
)
from engine.events.users import IngestReport, ProductStats, UserEvents, open_store

__all__ = [
    "DSN_ENV",
    "EVENT_CODE",
    "KEY_ENV",
    "SCHEMA_VERSION",
    "CreditRule",
    "EventError",
    "EventStore",
    "Impression",
    "IngestReport",
    "PostgresEventStore",
    "PrivacyError",
    "ProductStats",
    "SQLiteEventStore",
    "UserEvents",
    "new_search_id",
    "open_store",
]
