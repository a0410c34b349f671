"""What `make retrain` learns from: the service's logged searches in a time window, read from the event store.

- **Sessions.**  One :class:`~finetune.ranker_sessions.Session` per logged search that drew an engagement: the
  query as searched, the user (hashed key; none for an anonymous search), the time, the products shown in order
  (as product rows, with the page offset) and the best gain per product among the events that answer the search
  (one click credited per search and product, however often it was sent).  Searches without an engagement teach
  the ranker nothing and are only counted (the ship guard's average includes them).
- **Clicks that lie.**  A user's searches weigh at most ``max_user_searches`` in all (each of a user's ``n``
  searches weighs ``min(1, cap / n)``): a bot that clicks one wrong product a thousand times counts as a handful
  of shoppers.  Anonymous searches are one "user" each; intake limits (issue 22) bound them.
- **Time split.**  The most recent ``holdout_days`` are held out for the guard; logs too short for that (the
  held-out days would be more than half of their span: an hour of traffic) hold out the last
  ``holdout_fraction`` of their time span instead.
- **Point in time.**  Every credited event before the window's end, in time order
  (:class:`~finetune.ranker_sessions.EventArrays`), so profiles and product counts are replayed as they were at
  each search.

Everything is streamed from the store a page at a time; only engaged searches are kept as objects.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from core.formats.clicklog import EVENTS
from engine.events.impressions import ANONYMOUS, examined_exposure
from finetune.ranker_sessions import EventArrays, Session

DAY = 86400.0
CLICK = EVENTS.index("click")


@dataclass
class LoggedSessions:
    train: list[Session]
    holdout: list[Session]
    since: float
    until: float
    cut: float
    split: str  # how the holdout was chosen, in words
    searches: int  # logged searches in the window
    holdout_searches: int  # of which after the cut (engaged or not)
    first_ts: float = 0.0
    last_ts: float = 0.0
    capped_users: dict = field(default_factory=dict)  # user key -> their searches, for users over the cap
    # every logged search and click of the window, compact (engine.query_clicks.QueryClickTimeline's input)
    query_ids: dict = field(default_factory=dict)
    searches_log: tuple = ()
    clicks_log: tuple = ()
    # (user key, product id, time): what each engaged named user surely looked at (the service folds the same
    # into profiles as the events arrive: engine.events.impressions.examined)
    exposure: list = field(default_factory=list)

    def query_click_timeline(self, propensity, min_users: float):
        from engine.query_clicks import QueryClickTimeline

        return QueryClickTimeline(self.query_ids, self.searches_log, self.clicks_log, propensity, min_users)

    @property
    def span_days(self) -> float:
        return max(0.0, self.last_ts - self.first_ts) / DAY

    def summary(self) -> dict:
        return {
            "window": [self.since, self.until],
            "searches": self.searches,
            "span_days": round(self.span_days, 4),
            "engaged_train_searches": len(self.train),
            "engaged_holdout_searches": len(self.holdout),
            "holdout_searches": self.holdout_searches,
            "cut": self.cut,
            "split": self.split,
            "users_over_the_cap": len(self.capped_users),
            "most_searches_by_one_user": max(self.capped_users.values(), default=0),
        }


def read_sessions(user_events, row_of: dict, gains: dict[str, float], rcfg, until: float) -> LoggedSessions:
    """The engaged logged searches of ``[until − window_days, until)``, split by time (module docstring)."""
    since = until - rcfg.window_days * DAY
    code_gain = np.array([float(gains.get(e, 0.0)) for e in EVENTS])
    sessions: list[Session] = []
    query_ids: dict[str, int] = {}
    # every search (time, query id, user hash, shown rows and ranks) and click (time, query id, row, user
    # hash), compact
    s_ts, s_q, s_u, s_rows, s_ranks, indptr = array("d"), array("q"), array("q"), array("q"), array("q"), array("q")
    indptr.append(0)
    c_ts, c_q, c_row, c_u = array("d"), array("q"), array("q"), array("q")
    exposure: list = []
    for imps, linked in user_events.logged_searches(since, until):
        by_sid = {i.search_id: i for i in imps}
        exposure += examined_exposure(
            by_sid, [(sid, u, rank, ts, 0) for sid, _, _, rank, ts, u in linked if ts < until]
        )
        qid_of = {i.search_id: query_ids.setdefault(i.searched or i.query, len(query_ids)) for i in imps}
        best: dict[str, dict[int, float]] = {}  # search id -> product row -> best gain
        for sid, pid, code, rank, ts, user in linked:
            g, r = code_gain[int(code)], row_of.get(pid)
            if ts < until and g > 0 and r is not None:
                per = best.setdefault(sid, {})
                per[r] = max(per.get(r, 0.0), float(g))
                if int(code) == CLICK:
                    c_ts.append(ts), c_q.append(qid_of[sid]), c_row.append(r), c_u.append(hash(user))
        for imp in imps:
            s_ts.append(imp.ts), s_q.append(qid_of[imp.search_id])
            # an anonymous search's events carry the user key anon:<search id>
            s_u.append(hash(imp.user if imp.user is not None else ANONYMOUS + imp.search_id))
            shown = [row_of.get(p, -1) for p in imp.products]
            for j, r in enumerate(shown):
                if r >= 0:
                    s_rows.append(r), s_ranks.append(imp.offset + j + 1)
            indptr.append(len(s_rows))
            got = best.get(imp.search_id)
            if not got or all(r < 0 for r in shown):
                continue
            sessions.append(
                Session(
                    imp.user,
                    imp.searched or imp.query,
                    imp.ts,
                    got,
                    shown,
                    offset=imp.offset,
                    search_id=imp.search_id,
                )
            )
    if not s_ts:
        return LoggedSessions([], [], since, until, until, "no logged searches in the window", 0, 0)
    t = np.frombuffer(s_ts, dtype=np.float64)
    first, last = float(t.min()), float(t.max())
    if rcfg.holdout_days * DAY <= 0.5 * (last - first):
        cut = until - rcfg.holdout_days * DAY
        split = f"the last {rcfg.holdout_days:g} day(s) held out"
    else:
        cut = first + (1.0 - rcfg.holdout_fraction) * (last - first)
        split = (
            f"the logs span {(last - first) / 3600:.2f} h, too short to hold out {rcfg.holdout_days:g} day(s): "
            f"the last {rcfg.holdout_fraction:.0%} of that span held out"
        )
    train = [s for s in sessions if s.t < cut]
    holdout = [s for s in sessions if s.t >= cut]
    capped = cap_users(train, rcfg.max_user_searches)
    return LoggedSessions(
        train,
        holdout,
        since,
        until,
        cut,
        split,
        len(t),
        int((t >= cut).sum()),
        first,
        last,
        capped,
        query_ids,
        (t, *(np.frombuffer(a, dtype=np.int64) for a in (s_q, s_u, indptr, s_rows, s_ranks))),
        tuple(np.frombuffer(a, dtype=d) for a, d in zip((c_ts, c_q, c_row, c_u), "dqqq")),
        exposure,
    )


def cap_users(sessions: list[Session], cap: float) -> dict:
    """Weigh each named user's sessions ``min(1, cap / n)`` (``n`` their sessions); returns the users over."""
    n = Counter(s.user for s in sessions if s.user is not None)
    for s in sessions:
        if s.user is not None and n[s.user] > cap:
            s.weight = cap / n[s.user]
    return {u: c for u, c in n.items() if c > cap}


def store_events(user_events, row_of: dict, until: float, exposure=()) -> EventArrays:
    """Every credited event before ``until`` on a product in the index, time-ordered, as arrays; ``exposure``
    ((user, product id, time), :attr:`LoggedSessions.exposure`) joins them as impressions that shape profiles
    only (not the product statistics), as the service folded them."""
    kept = [
        (user, row_of[pid], pid, int(code), float(t))
        for page in user_events.event_pages(until)
        for user, pid, code, t in page
        if pid in row_of
    ]
    extra = [(u, row_of[p], p, EVENTS.index("impression"), float(t)) for u, p, t in exposure if p in row_of]
    if not extra:
        return EventArrays.from_rows(kept)
    rows = sorted([(*r, True) for r in kept] + [(*r, False) for r in extra], key=lambda r: r[4])
    out = EventArrays.from_rows([r[:5] for r in rows])
    out.counted = np.array([r[5] for r in rows], dtype=bool)
    return out
