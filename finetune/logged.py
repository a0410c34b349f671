"""The engine's own traffic as training rows: every product a logged search showed, at its rank, with what the
shopper did with it (the events that answer the search: click, add to cart, purchase), streamed from the event
store a page of searches at a time (:meth:`engine.events.UserEvents.logged_searches`), so any number of
impressions passes through in bounded memory.  :func:`click_rows` feeds the position-based click model
(:mod:`finetune.click_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.formats.clicklog import EVENTS


@dataclass
class ClickRows:
    """One row per shown product: its (query, product) pair id, 1-based rank, clicked or not, best gain."""

    pair: np.ndarray
    rank: np.ndarray
    clicked: np.ndarray
    gain: np.ndarray
    pairs: dict = field(default_factory=dict)  # (query, product id) -> pair id
    searches: int = 0


def click_rows(events, since: float, until: float, gains: dict[str, float], page: int = 10_000) -> ClickRows:
    """The rows of every search logged in ``[since, until)``: compact arrays, filled a page at a time."""
    code_gain = np.array([float(gains.get(e, 0.0)) for e in EVENTS])
    pairs: dict = {}
    parts: list[tuple] = []
    n = 0
    for imps, linked in events.logged_searches(since, until, page):
        best: dict[tuple[str, str], float] = {}
        for sid, pid, code, _rank, _ts, _user in linked:
            g = code_gain[int(code)]
            if g > best.get((sid, pid), 0.0):
                best[(sid, pid)] = g
        pair, rank, gain = [], [], []
        for imp in imps:
            q = imp.searched or imp.query
            for i, pid in enumerate(imp.products):
                pair.append(pairs.setdefault((q, pid), len(pairs)))
                rank.append(imp.offset + i + 1)
                gain.append(best.get((imp.search_id, pid), 0.0))
        gain_a = np.asarray(gain, dtype=np.float32)
        parts.append((np.asarray(pair, dtype=np.int64), np.asarray(rank, dtype=np.int32), gain_a))
        n += len(imps)
    if not parts:
        return ClickRows(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0, np.float32))
    pair, rank, gain = (np.concatenate(col) for col in zip(*parts))
    return ClickRows(pair, rank, gain > 0, gain, pairs, n)
