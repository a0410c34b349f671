"""What logged searches showed their (known) shoppers, folded into the shoppers' taste evidence.

A profile's taste evidence (:mod:`engine.taste`) counts, per facet value and rank, how often a shopper was shown
it and how often they clicked it.  The clicks come with the events that answer a search (their rank is the
impression's); the impressions come from here: every product a logged search showed a known user, at its rank,
whether or not anything was clicked (a search nobody clicked is evidence too: those brands were passed over).
Nothing is stored as an event (the impressions table keeps the searches); anonymous searches build no profile.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from core.formats.clicklog import EVENTS
from engine.events.impressions import ANONYMOUS, Impression
from engine.profiles_bulk import build_profiles, merge_stored


def shown_rows(impressions: Sequence[Impression], row_of) -> tuple[list, list, list, list, list, list]:
    """(user keys, product ids, rows, times, 1-based ranks, logged relevance or nan) of the products
    ``impressions`` showed known users."""
    users, pids, rows, ts, ranks, xs = [], [], [], [], [], []
    for imp in impressions:
        if not imp.user or imp.user.startswith(ANONYMOUS):
            continue
        for j, pid in enumerate(imp.products):
            row = row_of.get(pid)
            if row is None:
                continue
            users.append(imp.user)
            pids.append(pid)
            rows.append(row)
            ts.append(imp.ts)
            ranks.append(imp.offset + j + 1)
            x = imp.relevance_of(imp.offset + j + 1)
            xs.append(np.nan if x is None else float(x))
    return users, pids, rows, ts, ranks, xs


def fold_shown(store, facets, settings, row_of, impressions: Sequence[Impression]) -> int:
    """Fold what ``impressions`` showed into their users' taste evidence in ``store``; returns how many products."""
    users, pids, rows, ts, ranks, xs = shown_rows(impressions, row_of)
    if not users:
        return 0
    order = np.argsort(np.asarray(ts, dtype=np.float64), kind="stable")
    n = len(order)
    new = build_profiles(
        np.asarray(users, dtype=object)[order].astype(str),
        np.asarray(rows, dtype=np.int64)[order],
        np.asarray(pids, dtype=object)[order],
        np.full(n, EVENTS.index("impression"), dtype=np.int64),
        np.asarray(ts, dtype=np.float64)[order],
        facets,
        settings,
        EVENTS,
        ranks=np.asarray(ranks, dtype=np.int64)[order],
        shapes=np.zeros(n, dtype=bool),
        relevance=np.asarray(xs, dtype=np.float64)[order],
    )
    store.append_many([], [], [], [], [], merge_stored(store.profiles(new), new, settings), None)
    return n
