"""What a search showed (an impression): the search's opaque id, when, the query as typed and as searched, the user
(hashed) or none, filters, k and offset, the product ids in the order shown, the versions that answered and the
experiment arm.  Events that carry the search id inherit its query, the product's rank and the arm, which is
what lets a retrain know where each click was shown and what was skipped above it.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from engine.events.store import EventError

ANONYMOUS = "anon:"  # the user key of an event sent with a search id and no user: one per search, no profile
LINKED_EVENTS = ("click", "add_to_cart", "purchase")  # what a shopper does with a shown product


def new_search_id() -> str:
    """An opaque, unguessable search id (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


@dataclass
class Impression:
    search_id: str
    ts: float
    user: str | None  # the hashed user key, or None for an anonymous search
    query: str
    searched: str | None
    filters: dict = field(default_factory=dict)
    k: int = 10
    offset: int = 0
    products: list[str] = field(default_factory=list)  # shown, in order (rank offset + 1 first)
    versions: dict = field(default_factory=dict)
    arm: str | None = None
    # per shown product, the click log-odds the serving ranker's taste model read in it (None: none; a search
    # logged without a taste model has none)
    relevance: list[float | None] | None = None

    def row(self) -> tuple:
        """The store's row (:meth:`engine.events.store.EventStore.log_impressions`)."""
        return (
            self.search_id,
            self.ts,
            self.user,
            self.query,
            self.searched,
            json.dumps(self.filters, ensure_ascii=False, sort_keys=True),
            self.k,
            self.offset,
            json.dumps(self.products, ensure_ascii=False),
            json.dumps(self.versions, ensure_ascii=False, sort_keys=True),
            self.arm,
            json.dumps([None if x is None else round(float(x), 4) for x in self.relevance])
            if self.relevance is not None and any(x is not None for x in self.relevance)
            else None,
        )

    @classmethod
    def from_row(cls, row) -> "Impression":
        sid, ts, user, query, searched, filters, k, offset, products, versions, arm, *rest = row
        return cls(
            sid,
            float(ts),
            user,
            query,
            searched,
            json.loads(filters) if filters else {},
            int(k),
            int(offset),
            json.loads(products),
            json.loads(versions) if versions else {},
            arm,
            json.loads(rest[0]) if rest and rest[0] else None,
        )

    def relevance_of(self, rank: int) -> float | None:
        """The logged relevance of the product shown at 1-based ``rank`` (None: none logged)."""
        j = rank - self.offset - 1
        x = self.relevance
        return x[j] if x is not None and 0 <= j < len(x) else None

    def rank_of(self, product_id: str) -> int:
        """The 1-based rank the product was shown at; :class:`EventError` naming ``product_id`` when this search
        did not show it."""
        try:
            return self.offset + self.products.index(product_id) + 1
        except ValueError:
            raise EventError(
                f"field 'product_id': {product_id!r} was not shown by search {self.search_id!r} "
                f"({len(self.products)} products shown)"
            ) from None


def examined(imp: Impression, rank: int, deepest: int) -> list[str]:
    """The products of ``imp`` a shopper surely looked at on reaching ``rank`` that ``deepest`` (the deepest rank
    already counted for this search, 0: none) did not cover: ranks ``deepest + 1 .. rank``, the engaged one and
    the ones skipped above it.  A profile counts them as exposure (the skipped ones are its weak negatives:
    seen, not chosen); products below the deepest engagement, and searches nobody engaged with, count nothing
    (whether they were looked at is unknown)."""
    lo = max(deepest - imp.offset, 0)
    return imp.products[lo : max(rank - imp.offset, lo)]


def examined_exposure(imps: dict, linked) -> list[tuple]:
    """(user key, product id, time) of the exposure that ``linked`` events (search id, user key, rank, time, the
    deepest rank already counted for that search and user before them) add: :func:`examined` per event in time order,
    anonymous users excluded (they build no profile)."""
    out = []
    deepest: dict[tuple, int] = {}  # (search id, user) -> the deepest rank counted
    for sid, user, rank, ts, before in sorted(linked, key=lambda e: e[3]):
        imp = imps.get(sid)
        if imp is None or rank is None or user is None or user.startswith(ANONYMOUS):
            continue
        d = max(deepest.get((sid, user), 0), before)
        out += [(user, pid, ts) for pid in examined(imp, int(rank), d)]
        deepest[(sid, user)] = max(d, int(rank))
    return out


def examined_in_log(users, queries, events, products, ts, gap: float = 1800.0) -> list[bool]:
    """For a click log (parallel sequences in time order): whether each event shapes a profile under the same rule
    as :func:`examined` — every engagement does; an impression only when its product is at or above the deepest
    engagement of its search.  A search is one user's impressions of one query, each within ``gap`` seconds of
    the previous event of that user and query; ranks follow the order products were first shown in it; events
    without a query count as they are."""
    return searches_in_log(users, queries, events, products, ts, gap)[0]


def searches_in_log(users, queries, events, products, ts, gap: float = 1800.0) -> tuple[list[bool], list[int]]:
    """(:func:`examined_in_log`, each event's 1-based rank in its search): an impression's rank, an engagement's
    the rank its product was shown at in the open search of its user and query; 0 where none is known."""
    keep = [True] * len(events)
    ranks = [0] * len(events)
    open_: dict = {}  # (user, query) -> [last time, {product: rank}, [(event index, rank)], deepest rank]

    def close(search) -> None:
        for i, rank in search[2]:
            keep[i] = rank <= search[3]

    for i, (u, q, e, p, t) in enumerate(zip(users, queries, events, products, ts)):
        if not q:
            continue
        key = (u, q)
        search = open_.get(key)
        if search is not None and t - search[0] > gap:
            close(search)
            search = open_[key] = None
        if e == "impression":
            if search is None:
                search = open_[key] = [t, {}, [], 0]
            rank = search[1].setdefault(p, len(search[1]) + 1)
            search[2].append((i, rank))
            search[0] = t
            ranks[i] = rank
        elif search is not None:
            if p in search[1]:
                search[3] = max(search[3], search[1][p])
                ranks[i] = search[1][p]
            search[0] = t
    for search in open_.values():
        if search is not None:
            close(search)
    return keep, ranks


def check_linked_event(event: str) -> None:
    """An event sent with a search id is something a shopper did with a shown product."""
    if event not in LINKED_EVENTS:
        raise EventError(f"field 'event': {event!r} cannot answer a search; use {', '.join(LINKED_EVENTS)}")
