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

**Forgetting a user** takes their share out of a saved snapshot (:func:`forget_in`): the snapshot keeps each
entry's clicking users' weight and its examinations (``Σ w_u`` and ``Σ θ``) and the window and propensities it
was counted with, so the user's own logged searches in that window (read from the store before they are
deleted) give exactly what they added — their click weight and their examination at their best rank — and the
value is counted again without it.  A snapshot saved before these parts were kept loses the entries the user
clicked instead (it cannot tell their share from the others').
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

PRIOR = 1.0  # pseudo-examinations without a click of every (query, product)
REPEAT_CAP = 3.0  # searches of one query by one user that count in full; more divide that user's click
FILE = "query_clicks.npz"


class QueryClicks:
    """Per query: the products clicked for it (sorted rows) and their ``query_ctr``; ``parts`` (per query, aligned
    with the rows: clicking users' weight ``Σ w_u`` and examinations ``Σ θ``) and ``meta`` (the window
    ``since``/``until``, the normalized propensities ``theta``, ``min_users``) let a forget be taken out."""

    def __init__(self, table: dict[str, tuple[np.ndarray, np.ndarray]], parts: dict | None = None, meta=None):
        self.table = table
        self.parts = parts
        self.meta = meta or {}

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
        extra = {}
        if self.parts is not None:
            for j, name in enumerate(("clicked", "examined")):
                got = [self.parts[q][j] for q in queries]
                extra[name] = np.concatenate(got).astype(np.float64) if got else np.zeros(0)
            extra["meta"] = np.array(json.dumps(self.meta))
        write_npz(
            Path(folder) / FILE,
            queries=np.array(json.dumps(queries, ensure_ascii=False)),
            sizes=sizes,
            products=np.array(json.dumps([product_ids[int(r)] for r in rows], ensure_ascii=False)),
            values=vals,
            **extra,
        )

    @classmethod
    def load(cls, folder: Path, row_of) -> "QueryClicks | None":
        """The snapshot in ``folder`` with products mapped to this catalog's rows (unknown ones dropped)."""
        p = Path(folder) / FILE
        if not p.is_file():
            return None
        queries, products, sizes, vals, parts, meta = read_npz(p)
        table, start = {}, 0
        for q, n in zip(queries, sizes.tolist()):
            rows = np.array([row_of.get(pid, -1) for pid in products[start : start + n]], dtype=np.int64)
            v = vals[start : start + n]
            keep = rows >= 0
            order = np.argsort(rows[keep])
            table[q] = (rows[keep][order], v[keep][order])
            start += n
        return cls(table, meta=meta)


def examined(theta: np.ndarray, rank: int) -> float:
    """The examination propensity of a 1-based rank (the last one's beyond the fitted ranks)."""
    return float(theta[min(max(rank, 1), len(theta)) - 1])


def user_weight(searches: int) -> float:
    """One user's click weight for a query they searched ``searches`` times: ``min(1, 3 / searches)``."""
    return min(1.0, REPEAT_CAP / max(searches, 1))


def write_npz(path: Path, **arrays) -> None:
    """Write the snapshot whole under a temporary name, then rename it over ``path``: a reader never sees half."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def read_npz(path: Path) -> tuple:
    """(queries, product ids, sizes, values, (clicked, examined) or None, meta) of a saved snapshot."""
    with np.load(path) as z:
        queries = json.loads(str(z["queries"]))
        products = json.loads(str(z["products"]))
        sizes, vals = z["sizes"], z["values"]
        parts = (z["clicked"], z["examined"]) if "clicked" in z.files else None
        meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    return queries, products, sizes, vals, parts, meta


def user_share(meta: dict, searches, clicks) -> dict[tuple[str, str], tuple[float, float]]:
    """What one user added to a snapshot counted with ``meta``: ``(query, product id) -> (click weight,
    examination)``, from their logged searches (:class:`engine.events.impressions.Impression`) and the clicks
    that answer them (search id, product id, time), counted as :class:`QueryClickTimeline` counts them (searches
    in the window, each product at its best rank, one click per query and product, weight ``min(1, 3 / their
    searches of the query)``)."""
    since, until = float(meta.get("since", -np.inf)), float(meta.get("until", np.inf))
    theta = np.asarray(meta.get("theta") or [1.0], dtype=np.float64)
    searched: dict[str, int] = {}
    seen: dict[tuple[str, str], float] = {}
    query_of = {}
    for imp in searches:
        if not since <= imp.ts < until:
            continue
        q = imp.searched or imp.query
        query_of[imp.search_id] = q
        searched[q] = searched.get(q, 0) + 1
        for j, pid in enumerate(imp.products):
            th = examined(theta, imp.offset + j + 1)
            seen[(q, pid)] = max(seen.get((q, pid), 0.0), th)
    clicked = {(query_of[sid], pid) for sid, pid, ts in clicks if sid in query_of and ts < until}
    out = {key: (0.0, th) for key, th in seen.items()}
    for q, pid in clicked:
        out[(q, pid)] = (user_weight(searched.get(q, 1)), out.get((q, pid), (0.0, 0.0))[1])
    return out


def forget_in(path: Path, searches, clicks) -> int:
    """Take one user's share (:func:`user_share` of their logged searches and clicks) out of the snapshot file
    ``path``, rewritten whole; returns the number of entries changed (0: nothing of theirs, file untouched).
    Forgets in several processes at once take turns (an exclusive lock beside the file): none is lost."""
    import fcntl

    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _forget_in(path, searches, clicks)


def _forget_in(path: Path, searches, clicks) -> int:
    queries, products, sizes, vals, parts, meta = read_npz(path)
    share = user_share(meta, searches, clicks)
    if not share:
        return 0
    vals = vals.astype(np.float64).copy()
    clicked, examined = (parts[0].copy(), parts[1].copy()) if parts is not None else (None, None)
    keep = np.ones(len(vals), dtype=bool)
    changed, start = 0, 0
    min_users = float(meta.get("min_users", 1.0))
    asked = {q for q, _ in share}
    for q, n in zip(queries, sizes.tolist()):
        for i in range(start, start + n) if q in asked else ():
            got = share.get((q, products[i]))
            if got is None or (clicked is None and got[0] == 0):
                continue
            changed += 1
            if clicked is None:  # no parts: drop what they clicked
                keep[i] = False
                continue
            clicked[i], examined[i] = max(clicked[i] - got[0], 0.0), max(examined[i] - got[1], 0.0)
            vals[i] = clicked[i] / (examined[i] + PRIOR) if clicked[i] >= min_users - 1e-9 else 0.0
            keep[i] = vals[i] > 0
        start += n
    if not changed:
        return 0
    bounds = np.cumsum([0, *sizes.tolist()])
    sizes = np.array([int(keep[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])], dtype=np.int64)
    extra = {}
    if clicked is not None:
        extra = {"clicked": clicked[keep], "examined": examined[keep], "meta": np.array(json.dumps(meta))}
    write_npz(
        path,
        queries=np.array(json.dumps(queries, ensure_ascii=False)),
        sizes=sizes,
        products=np.array(json.dumps([p for p, k in zip(products, keep) if k], ensure_ascii=False)),
        values=vals[keep],
        **extra,
    )
    return changed


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
        for i in range(self._si, end):
            q, u = int(self.s_q[i]), int(self.s_u[i])
            self._searched[(q, u)] = self._searched.get((q, u), 0) + 1
            exam = self._exam.setdefault(q, {})
            for row, rank in zip(
                self.s_rows[self.indptr[i] : self.indptr[i + 1]].tolist(),
                self.s_ranks[self.indptr[i] : self.indptr[i + 1]].tolist(),
            ):
                th = examined(self.theta, rank)
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

    def _parts(self, q: int, row: int) -> tuple[float, float]:
        """(Σ w_u of the users who clicked, Σ θ of the users who saw) of one query and product."""
        users = self._clicks.get(q, {}).get(row, ())
        c = sum(user_weight(self._searched.get((q, u), 1)) for u in users)
        return c, self._exam.get(q, {}).get(row, 0.0)

    def _value(self, q: int, row: int) -> float:
        c, exam = self._parts(q, row)
        return c / (exam + PRIOR) if c >= self.min_users else 0.0

    def lookup(self, query: str | None, rows: np.ndarray) -> np.ndarray:
        q = self.query_ids.get(query) if query is not None else None
        if q is None or q not in self._clicks:
            return np.zeros(len(rows))
        return np.fromiter((self._value(q, int(r)) for r in rows), dtype=np.float64, count=len(rows))

    def snapshot(self, since: float = -np.inf) -> QueryClicks:
        """The state now as a :class:`QueryClicks` (what serving looks up), with the parts a forget needs;
        ``since``: where the logged searches it replays begin."""
        names = {i: q for q, i in self.query_ids.items()}
        table, parts = {}, {}
        for q, per in self._clicks.items():
            rows = np.array(sorted(per), dtype=np.int64)
            got = np.array([self._parts(q, int(r)) for r in rows], dtype=np.float64).reshape(-1, 2)
            vals = np.where(got[:, 0] >= self.min_users, got[:, 0] / (got[:, 1] + PRIOR), 0.0)
            if np.any(vals > 0):
                keep = vals > 0
                table[names[q]] = (rows[keep], vals[keep])
                parts[names[q]] = (got[keep, 0], got[keep, 1])
        meta = {"since": float(since), "until": float(self._t), "theta": self.theta.tolist()}
        return QueryClicks(table, parts, {**meta, "min_users": float(self.min_users)})
