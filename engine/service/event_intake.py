"""``POST /events``: every event of a request checked (a field that is wrong is a 422 naming it, as
``events[3].product_id``), then all stored in one transaction with the users' profiles folded in bulk.

An event with a ``search_id`` answers that search (its logged impression, still queued or stored): the product
must be one the search showed, the event inherits the search's query, the product's rank and the arm, and
``user_id`` may be left out (an anonymous shopper: counted for learning, never a profile).
"""

from __future__ import annotations

import re

import numpy as np

from engine.events import EventError, PrivacyError
from engine.events.impressions import check_linked_event, examined_exposure
from engine.service.http import ApiError

EVENT_FIELDS = {"user_id", "product_id", "event", "timestamp", "query", "search_id"}


def shown_by(engine, impressions, sid, where: str, seen: dict):
    """The impression of the search an event answers (queued or stored; ``seen``: those this request already
    looked up); 422 naming search_id when unknown."""
    if not isinstance(sid, str) or not sid.strip():
        raise ApiError(422, f"{where}.search_id", "must be a search_id a /search response gave")
    imp = seen.get(sid)
    if imp is None:
        imp = (impressions.pending(sid) if impressions is not None else None) or engine.user_events().impression(sid)
        seen[sid] = imp
    if imp is None:
        raise ApiError(422, f"{where}.search_id", "unknown search (not logged here, or past the retention)")
    return imp


def record_event_items(engine, impressions, items: list) -> dict:
    """Check every item, then store them all at once; ``impressions``: the service's impression log (or None)."""
    ev = engine.user_events()
    checked = []  # (user hash, product id, row, event, time, query, (search id, rank, arm))
    seen: dict = {}  # search id -> impression: a batch of one search's events reads it once
    for i, item in enumerate(items):
        where = f"events[{i}]" if len(items) > 1 else "event"
        if not isinstance(item, dict):
            raise ApiError(422, where, "must be a JSON object")
        extra = sorted(set(item) - EVENT_FIELDS)
        if extra:
            raise ApiError(422, f"{where}.{extra[0]}", f"unknown field; use {', '.join(sorted(EVENT_FIELDS))}")
        sid = item.get("search_id")
        imp = shown_by(engine, impressions, sid, where, seen) if sid is not None else None
        required = ("product_id", "event") if imp is not None else ("user_id", "product_id", "event")
        for name in required:
            if not isinstance(item.get(name), str):
                raise ApiError(422, f"{where}.{name}", "required, a string")
        for name in ("user_id", "query"):
            if item.get(name) is not None and not isinstance(item[name], str):
                raise ApiError(422, f"{where}.{name}", "must be a string")
        try:
            user, row, event, ts = ev.validate(
                item.get("user_id"),
                item["product_id"],
                item["event"],
                item.get("timestamp"),
                anonymous=imp.search_id if imp is not None else None,
            )
            pid = item["product_id"].strip()
            if imp is not None:
                check_linked_event(event)
                link = (imp.search_id, imp.rank_of(pid), imp.arm)  # rank_of: 422 when the search did not show it
                query, x = imp.query, imp.relevance_of(link[1])
            else:
                link, query, x = (None, None, None), item.get("query"), None
        except EventError as e:
            field = re.search(r"field '(\w+)'", str(e))
            raise ApiError(422, f"{where}.{field.group(1)}" if field else where, str(e)) from None
        except PrivacyError as e:
            raise ApiError(403, "user_id", str(e)) from None
        checked.append((user, pid, row, event, ts, query, link, x))
    users, pids, rows, events, ts, queries, links, xs = (list(col) for col in zip(*checked))
    ev.append_bulk(
        users,
        pids,
        np.asarray(rows, dtype=np.int64),
        events,
        np.asarray(ts, dtype=np.float64),
        queries,
        links,
        exposure=linked_exposure(ev, seen, checked),
        relevance=xs,
    )
    return {"recorded": len(checked)}


def linked_exposure(ev, imps: dict, checked: list) -> list[tuple]:
    """What the request's events answering searches add to their users' profiles as exposure: the products shown
    at and above each engaged rank that the user's earlier events on the same search had not covered
    (:func:`engine.events.impressions.examined`)."""
    sids = sorted({c[6][0] for c in checked if c[6][0] is not None})
    if not sids:
        return []
    before: dict[tuple, int] = {}  # (search id, user) -> the deepest rank their stored events reached
    for sid, _pid, _code, rank, _ts, user in ev.store.linked_events(sids):
        if rank is not None:
            before[(sid, user)] = max(before.get((sid, user), 0), int(rank))
    return examined_exposure(
        imps,
        [(c[6][0], c[0], c[6][1], c[4], before.get((c[6][0], c[0]), 0)) for c in checked if c[6][0] is not None],
    )
