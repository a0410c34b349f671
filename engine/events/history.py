"""What recommendations read from the event store: a user's recent history, and recent engagements per product.

- :func:`recent_history`: the user's newest engagements (product rows, event names, times) and searches (the
  queries of their engagements and of their logged searches, newest first, each once) — read on every call, so
  a click recorded a moment ago counts at the next call and a forgotten user has none;
- :func:`decayed_engagements`: every product's engagements since a time, gain-weighted and decayed to ``now``
  (trending), streamed in pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.formats.clicklog import EVENTS


@dataclass
class History:
    rows: np.ndarray  # product rows, newest first
    events: list[str]
    ts: np.ndarray
    searches: list[tuple[str, float]] = field(default_factory=list)  # (query, time), newest first, distinct

    def __len__(self) -> int:
        return len(self.rows)


def make_history(rows, events, ts, queries, searches, n_searches: int) -> History | None:
    """A :class:`History` from engagements newest first (product rows, event names, times, their queries) and
    logged searches (query, time): the searches are the distinct queries of both, newest first, at most
    ``n_searches``.  None when there is nothing."""
    seen, out = set(), []
    for q, t in sorted([(q, t) for q, t in zip(queries, ts) if q] + list(searches), key=lambda x: -x[1]):
        norm = q.strip()
        if norm and norm not in seen:
            seen.add(norm)
            out.append((norm, float(t)))
    if not len(rows) and not out:
        return None
    return History(np.asarray(rows, dtype=np.int64), list(events), np.asarray(ts, dtype=np.float64), out[:n_searches])


def recent_history(user_events, user_id: str, n_events: int, n_searches: int) -> History | None:
    """The user's recent history, or None for an unknown user (no key, or nothing stored under it)."""
    key = user_events.user_key(user_id)
    if key is None:
        return None
    events, searches = user_events.store.recent(key, n_events, n_searches)
    row_of = user_events.row_map()
    kept = [(row_of[p], EVENTS[c], t, q) for p, c, t, q in events if p in row_of and c > 0]
    rows, names, ts, queries = (list(col) for col in zip(*kept)) if kept else ([], [], [], [])
    return make_history(rows, names, ts, queries, searches, n_searches)


def decayed_engagements(
    user_events, n_products: int, since: float, now: float, half_life: float, gains: dict[str, float]
) -> np.ndarray:
    """``[n_products]``: Σ gain · 2^(−age / half_life) over the credited engagements since ``since``."""
    out = np.zeros(n_products)
    row_of = user_events.row_map()
    gain_of = np.array([float(gains.get(e, 0.0)) for e in EVENTS])
    for page in user_events.store.engagement_pages(since):
        pids, codes, ts = zip(*page)
        rows = np.fromiter((row_of.get(p, -1) for p in pids), dtype=np.int64, count=len(pids))
        w = gain_of[np.asarray(codes, dtype=np.int64)] * 2.0 ** (-(now - np.asarray(ts, dtype=np.float64)) / half_life)
        keep = rows >= 0
        np.add.at(out, rows[keep], w[keep])
    return out
