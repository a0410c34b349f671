"""What shoppers picked for each query: the ranker's ``query_ctr`` feature, debiased by position.

Algolia's Dynamic Re-Ranking and every click-model-based reranker learn per query: a product shoppers pick for
*this* query should rise for this query, not everywhere (a global click-through rate lifts popular products in
every query they appear in).  From the logged searches (impressions) and the clicks that answer them, the
position-based click model's relevance estimate, counted in users:

``query_ctr(q, p) = Σ_clicking users w_u / (Σ_users θ_r + 1)``,  ``w_u = min(1, 3 / (u's searches of q))``

``θ_r`` the examination propensity of the best (smallest) rank the user was shown ``p`` at for ``q``
(:mod:`finetune.click_model`'s fit): the expected number of users who looked at it.  A product clicked by the
few who scrolled to rank 8 rates as high as one clicked by the many who saw it at rank 1.  Each user counts once
per (query, product), and a user who searched the query more than :data:`REPEAT_CAP` times counts for less (a
bot that searches one query a thousand times and clicks one product each time is 3/1000 of a shopper); anonymous
searches are one user each; the ``+ 1`` keeps a single click from rating 1.  A product counts once its clicking
users weigh ``min_users`` (default 1) in all.

:class:`QueryClickTimeline` replays the logged searches in time order (training: nothing from after a search is
known at it); its state at the end of the window is the :class:`QueryClicks` snapshot saved with the ranker
(``query_clicks.npz``) and looked up at serving time, one vectorized ``searchsorted`` per query.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PRIOR = 1.0  # pseudo-examinations without a click of every (query, product)
REPEAT_CAP = 3.0  # searches of one query by one user that count in full; more divide that user's click
FILE = "query_clicks.npz"


class QueryClicks:
    """Per query: the products clicked for it (sorted rows) and their ``query_ctr``."""

    def __init__(self, table: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def lookup(self, query: str | None, rows: np.ndarray) -> np.ndarray:
        """``query_ctr`` of each candidate row (0 for a query nobody clicked anything for)."""
        rows = np.asarray(rows, dtype=np.int64)
        got = self.table.get(query) if query is not None else None
        if got is None or not len(got[0]):
            return np.zeros(len(rows))
        keys, val = got
        pos = np.clip(np.searchsorted(keys, rows), 0, len(keys) - 1)
        return np.where(keys[pos] == rows, val[pos], 0.0)

    def save(self, folder: Path, product_ids) -> None:
        """``<folder>/query_clicks.npz``: products by id (rows change when a catalog is rebuilt)."""
        queries = list(self.table)
        sizes = np.array([len(self.table[q][0]) for q in queries], dtype=np.int64)
        rows = np.concatenate([self.table[q][0] for q in queries]) if queries else np.zeros(0, np.int64)
        vals = np.concatenate([self.table[q][1] for q in queries]) if queries else np.zeros(0)
        np.savez_compressed(
            Path(folder) / FILE,
            queries=np.array(json.dumps(queries, ensure_ascii=False)),
            sizes=sizes,
            products=np.array(json.dumps([product_ids[int(r)] for r in rows], ensure_ascii=False)),
            values=vals,
        )

    @classmethod
    def load(cls, folder: Path, row_of) -> "QueryClicks | None":
        """The snapshot in ``folder`` with products mapped to this catalog's rows (unknown ones dropped)."""
        p = Path(folder) / FILE
        if not p.is_file():
            return None
        with np.load(p) as z:
            queries = json.loads(str(z["queries"]))
            products = json.loads(str(z["products"]))
            sizes, vals = z["sizes"], z["values"]
        table, start = {}, 0
        for q, n in zip(queries, sizes.tolist()):
            rows = np.array([row_of.get(pid, -1) for pid in products[start : start + n]], dtype=np.int64)
            v = vals[start : start + n]
            keep = rows >= 0
            order = np.argsort(rows[keep])
            table[q] = (rows[keep][order], v[keep][order])
            start += n
        return cls(table)


class QueryClickTimeline:
    """``query_ctr`` as of any time, replayed from logged searches and their clicks in time order.
    :meth:`at` must be called with non-decreasing times.

    Built from compact arrays (queries as ids of ``query_ids``, users as int64 hashes, the shown rows of all
    searches flattened with ``indptr``): a million logged searches cost some hundred megabytes, not objects."""

    def __init__(self, query_ids: dict[str, int], searches: tuple, clicks: tuple, propensity, min_users: float = 1):
        """``searches``: (times, query ids, user hashes, indptr, shown rows, shown ranks); ``clicks``: (times,
        query ids, product rows, user hashes), one entry per click answering a logged search."""
        self.query_ids = query_ids
        self.s_ts, self.s_q, self.s_u, self.indptr, self.s_rows, self.s_ranks = searches
        o = np.argsort(clicks[0], kind="stable")
        self.c_ts, self.c_q, self.c_row, self.c_u = (np.asarray(a)[o] for a in clicks)
        if len(self.s_ts) > 1 and np.any(np.diff(self.s_ts) < 0):
            raise ValueError("logged searches must come in time order")
        theta = np.asarray(propensity, dtype=np.float64)
        self.theta = theta / max(float(theta[0]), 1e-12) if len(theta) else np.ones(1)
        self.min_users = min_users
        self._si = self._ci = 0
        self._t = -np.inf
        self._seen: dict[tuple, float] = {}  # (query id, row, user) -> θ of the best rank counted
        self._searched: dict[tuple, int] = {}  # (query id, user) -> searches
        self._exam: dict[int, dict[int, float]] = {}
        self._clicks: dict[int, dict[int, set]] = {}  # query id -> row -> the users who clicked it

    def at(self, t: float) -> "QueryClickTimeline":
        if t < self._t:
            raise ValueError("QueryClickTimeline.at needs non-decreasing times")
        self._t = t
        end = int(np.searchsorted(self.s_ts, t, side="left"))
        last = len(self.theta) - 1
        for i in range(self._si, end):
            q, u = int(self.s_q[i]), int(self.s_u[i])
            self._searched[(q, u)] = self._searched.get((q, u), 0) + 1
            exam = self._exam.setdefault(q, {})
            for row, rank in zip(
                self.s_rows[self.indptr[i] : self.indptr[i + 1]].tolist(),
                self.s_ranks[self.indptr[i] : self.indptr[i + 1]].tolist(),
            ):
                th = float(self.theta[min(max(rank, 1), last + 1) - 1])
                old = self._seen.get((q, row, u), 0.0)
                if th > old:  # each user once, at their best rank
                    exam[row] = exam.get(row, 0.0) + th - old
                    self._seen[(q, row, u)] = th
        self._si = max(self._si, end)
        end = int(np.searchsorted(self.c_ts, t, side="left"))
        for i in range(self._ci, end):
            self._clicks.setdefault(int(self.c_q[i]), {}).setdefault(int(self.c_row[i]), set()).add(int(self.c_u[i]))
        self._ci = max(self._ci, end)
        return self

    def _value(self, q: int, row: int) -> float:
        users = self._clicks.get(q, {}).get(row, ())
        c = sum(min(1.0, REPEAT_CAP / max(self._searched.get((q, u), 1), 1)) for u in users)
        return c / (self._exam.get(q, {}).get(row, 0.0) + PRIOR) if c >= self.min_users else 0.0

    def lookup(self, query: str | None, rows: np.ndarray) -> np.ndarray:
        q = self.query_ids.get(query) if query is not None else None
        if q is None or q not in self._clicks:
            return np.zeros(len(rows))
        return np.fromiter((self._value(q, int(r)) for r in rows), dtype=np.float64, count=len(rows))

    def snapshot(self) -> QueryClicks:
        """The state now as a :class:`QueryClicks` (what serving looks up)."""
        names = {i: q for q, i in self.query_ids.items()}
        table = {}
        for q, per in self._clicks.items():
            rows = np.array(sorted(per), dtype=np.int64)
            vals = np.array([self._value(q, int(r)) for r in rows])
            if np.any(vals > 0):
                table[names[q]] = (rows[vals > 0], vals[vals > 0])
        return QueryClicks(table)
