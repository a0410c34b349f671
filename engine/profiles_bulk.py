"""Profiles in bulk: a whole event log folded into every user's profile at once with numpy (grouped sums of decayed
weights per user and facet value), and two profiles of one user merged, as :func:`engine.profiles.apply_event`
would have built them one event at a time (the tests compare both).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.profiles import EXPOSURE_CAP, FACETS, Profile, ProductFacets, ProfileSettings, cap_values
from engine.taste_counts import TASTE_WIDTH, cap_taste, taste_cols, taste_row


def _facet_sums(
    uidx: np.ndarray, rows: np.ndarray, w: np.ndarray, facets: ProductFacets, col: np.ndarray | None = None, width=1
):
    """Per facet: (user index, facet value, column, summed weight) of the events; ``col``: each event's column in
    a vector of ``width`` per value (the taste evidence's rank buckets), None: one column."""
    col = np.zeros(len(rows), dtype=np.int64) if col is None else col
    for f in FACETS:
        codes = np.asarray(facets.codes(f))[rows]
        ok = codes >= 0
        if not ok.any():
            continue
        span = int(codes.max()) + 1
        key = (uidx[ok].astype(np.int64) * span + codes[ok]) * width + col[ok]
        k_uniq, k_inv = np.unique(key, return_inverse=True)
        sums = np.bincount(k_inv, weights=w[ok])
        cell = k_uniq // width
        yield f, cell // span, cell % span, k_uniq % width, sums


def _decayed(users: np.ndarray, ts: np.ndarray, half_life: float):
    """(distinct users, each event's user index, each user's newest time, each event's decay to it)."""
    uniq, uidx = np.unique(users, return_inverse=True)
    t_last = np.full(len(uniq), -np.inf)
    np.maximum.at(t_last, uidx, ts)
    return uniq, uidx, t_last, np.exp2(-(t_last[uidx] - ts) / half_life)


def _fill_facets(
    profiles: dict[str, Profile],
    uniq: np.ndarray,
    uidx: np.ndarray,
    rows: np.ndarray,
    w: np.ndarray,
    facets: ProductFacets,
    attr: str,
    cap: int,
) -> None:
    """The grouped per-facet sums of ``w`` into each profile's ``attr`` (affinities or exposure), capped."""
    for f, ui, vals, _, sums in _facet_sums(uidx, rows, w, facets):
        for u, v, x in zip(ui.tolist(), vals.tolist(), sums.tolist()):
            getattr(profiles[str(uniq[u])], attr).setdefault(f, {})[str(v)] = x
    for p in profiles.values():
        store = getattr(p, attr)
        for f in list(store):
            store[f] = cap_values(store[f], cap)


def _fill_taste(
    profiles: dict[str, Profile],
    users: np.ndarray,
    rows: np.ndarray,
    ts: np.ndarray,
    ranks: np.ndarray,
    clicked: np.ndarray,
    facets: ProductFacets,
    settings: ProfileSettings,
    relevance: np.ndarray | None = None,
) -> None:
    """Taste evidence (:func:`engine.profiles._apply_taste` for every event at once): decayed impressions and
    clicks per (user, facet value, rank bucket), and those with a logged ``relevance`` (finite) again with their
    summed relevance (:data:`engine.taste_counts.TASTE_PARTS`)."""
    uniq, uidx, t_last, w = _decayed(users, ts, settings.taste_half_life)
    width = TASTE_WIDTH
    col, col_x, col_sum = taste_cols(ranks, clicked)
    if relevance is not None:  # the events with an x count again in the x blocks: once, and weighted by x
        x = np.asarray(relevance, dtype=np.float64)
        has = np.isfinite(x)
        col = np.concatenate([col, col_x[has], col_sum[has]])
        uidx, rows = np.concatenate([uidx, uidx[has], uidx[has]]), np.concatenate([rows, rows[has], rows[has]])
        w = np.concatenate([w, w[has], w[has] * x[has]])
    for i, u in enumerate(uniq):
        p = profiles.setdefault(str(u), Profile(groups_id=facets.groups_id))
        p.taste_t = float(t_last[i])
    for f, ui, vals, cols, sums in _facet_sums(uidx, rows, w, facets, col, width):
        for u, v, ci, x in zip(ui.tolist(), vals.tolist(), cols.tolist(), sums.tolist()):
            values = profiles[str(uniq[u])].taste.setdefault(f, {})
            values.setdefault(str(v), [0.0] * width)[ci] = x
    cap = EXPOSURE_CAP * settings.affinity_cap
    for u in uniq:
        p = profiles[str(u)]
        for f in list(p.taste):
            p.taste[f] = cap_taste(p.taste[f], cap)


def build_profiles(
    users: np.ndarray,
    rows: np.ndarray,
    product_ids: Sequence[str],
    events: np.ndarray,
    ts: np.ndarray,
    facets: ProductFacets,
    settings: ProfileSettings,
    event_names: Sequence[str],
    ranks: np.ndarray | None = None,
    shapes: np.ndarray | None = None,
    relevance: np.ndarray | None = None,
) -> dict[str, Profile]:
    """Profiles of many users at once (bulk ingestion): the same numbers as applying their events one by one.

    ``users`` (user keys), ``rows`` (product rows), ``events`` (codes into ``event_names``) and ``ts`` are
    parallel arrays.  Vectorized: decayed weights per event, then one sparse product for the centroids
    and one grouped sum per facet (engagement and, from impressions, exposure).  ``ranks``: each event's 1-based
    rank in its search (0: unknown) for the taste evidence; ``shapes``: which events shape the rest of the profile
    (None: all), ``relevance``: each event's logged click log-odds (nan: none; None: none at all), as
    :func:`engine.profiles.apply_event`'s arguments of the same names.
    """
    import scipy.sparse as sp

    users, rows, ts, events = np.asarray(users), np.asarray(rows), np.asarray(ts), np.asarray(events)
    names = list(event_names)
    profiles: dict[str, Profile] = {}
    if ranks is not None and len(events):
        ranks = np.asarray(ranks, dtype=np.int64)
        codes = [names.index(e) for e in ("impression", "click") if e in names]
        ev = (ranks > 0) & np.isin(events, codes)
        if ev.any():
            clicked = events[ev] == names.index("click") if "click" in names else np.zeros(int(ev.sum()), bool)
            x = np.asarray(relevance, dtype=np.float64)[ev] if relevance is not None else None
            _fill_taste(profiles, users[ev], rows[ev], ts[ev], ranks[ev], clicked, facets, settings, x)
    if shapes is not None:
        shapes = np.asarray(shapes, dtype=bool)
        users, rows, ts, events = users[shapes], rows[shapes], ts[shapes], events[shapes]
        product_ids = [p for p, k in zip(product_ids, shapes) if k] if len(product_ids) else product_ids
    gains = np.array([float(settings.gains.get(e, 0.0)) for e in event_names])[events]
    seen = events == names.index("impression") if "impression" in names else np.zeros(len(events), dtype=bool)
    keep = (gains > 0) & ~seen
    if not keep.any() and not seen.any():
        return profiles
    if seen.any():  # exposure: impressions only
        erows = rows[seen]
        uniq, uidx, t_last, w = _decayed(users[seen], ts[seen], settings.half_life)
        total = np.bincount(uidx, weights=w, minlength=len(uniq))
        for i, u in enumerate(uniq):
            p = profiles.setdefault(str(u), Profile(groups_id=facets.groups_id))
            p.exposure_t, p.exposure_total = float(t_last[i]), float(total[i])
        _fill_facets(profiles, uniq, uidx, erows, w, facets, "exposure", EXPOSURE_CAP * settings.affinity_cap)
    if not keep.any():
        return profiles
    users, rows, gains, ts = users[keep], rows[keep], gains[keep], ts[keep]
    codes_evt = events[keep]
    pids = np.asarray(product_ids, dtype=object)[keep] if len(product_ids) else np.zeros(0, dtype=object)
    uniq, uidx, t_last, decay = _decayed(users, ts, settings.half_life)
    w = gains * decay
    weight = np.bincount(uidx, weights=w, minlength=len(uniq))
    n_events = np.bincount(uidx, minlength=len(uniq))
    ws = gains * np.exp2(-(t_last[uidx] - ts) / settings.session_half_life)  # the in-session profile
    session_weight = np.bincount(uidx, weights=ws, minlength=len(uniq))
    vectors = np.asarray(facets.vectors, dtype=np.float32)
    centroids = np.asarray(sp.csr_matrix((w, (uidx, rows)), shape=(len(uniq), len(facets))) @ vectors, np.float32)
    session = np.asarray(sp.csr_matrix((ws, (uidx, rows)), shape=(len(uniq), len(facets))) @ vectors, np.float32)
    for i, u in enumerate(uniq):
        p = profiles.setdefault(str(u), Profile(groups_id=facets.groups_id))
        p.t, p.weight, p.centroid, p.n_events = (
            float(t_last[i]),
            float(weight[i]),
            centroids[i].copy(),
            int(n_events[i]),
        )
        p.session_weight, p.session_centroid = float(session_weight[i]), session[i].copy()
    _fill_facets(profiles, uniq, uidx, rows, w, facets, "affinities", settings.affinity_cap)
    bought = np.flatnonzero(codes_evt == names.index("purchase")) if "purchase" in names else []
    if len(bought):
        order = bought[np.argsort(ts[bought], kind="stable")]
        for i in order:
            p = profiles[str(users[i])]
            pid = pids[i]
            if pid in p.bought:
                p.bought.remove(pid)
            p.bought.append(pid)
        for p in profiles.values():
            p.bought = p.bought[-settings.bought_cap :]
    return profiles


def merge_stored(stored: dict[str, Profile], new: dict[str, Profile], settings: ProfileSettings) -> dict:
    """``new`` profiles merged onto the ``stored`` ones of the same users (:func:`merge_profiles`), each one version
    newer: what a bulk append writes back."""
    merged = {u: merge_profiles(stored[u], p, settings) if u in stored else p for u, p in new.items()}
    for u, p in merged.items():
        p.version = (stored[u].version if u in stored else 0) + 1
    return merged


def _merge_values(old: dict, new: dict, a: float, b: float, cap: int, drop_old: set[str]) -> dict:
    out: dict[str, dict[str, float]] = {}
    for f in set(old) | set(new):
        vals = {} if f in drop_old else {k: v * a for k, v in old.get(f, {}).items()}
        for k, v in new.get(f, {}).items():
            vals[k] = vals.get(k, 0.0) + v * b
        out[f] = cap_values(vals, cap)
    return out


def merge_profiles(old: Profile, new: Profile, settings: ProfileSettings) -> Profile:
    """``old`` followed by ``new`` (both for one user): decayed to the later time and summed."""
    hl = settings.half_life
    drop = {"group"} if old.groups_id != new.groups_id else set()
    if old.n_events == 0:
        merged = Profile(**{**new.__dict__, "version": old.version})
    elif new.n_events == 0:
        merged = Profile(
            **{
                **old.__dict__,
                "groups_id": new.groups_id,
                "affinities": {f: v for f, v in old.affinities.items() if f not in drop},
            }
        )
    else:
        t = max(old.t, new.t)
        a, b = 2.0 ** (-(t - old.t) / hl), 2.0 ** (-(t - new.t) / hl)
        centroid = (old.centroid * a if old.centroid is not None else 0) + (
            new.centroid * b if new.centroid is not None else 0
        )
        bought = [p for p in old.bought if p not in new.bought] + new.bought
        shl = settings.session_half_life
        sa, sb = 2.0 ** (-(t - old.t) / shl), 2.0 ** (-(t - new.t) / shl)
        session = [c * f for c, f in ((old.session_centroid, sa), (new.session_centroid, sb)) if c is not None]
        merged = Profile(
            t=t,
            weight=old.weight * a + new.weight * b,
            centroid=np.asarray(centroid, dtype=np.float32),
            affinities=_merge_values(old.affinities, new.affinities, a, b, settings.affinity_cap, drop),
            bought=bought[-settings.bought_cap :],
            n_events=old.n_events + new.n_events,
            groups_id=new.groups_id,
            version=old.version,
            session_weight=old.session_weight * sa + new.session_weight * sb,
            session_centroid=np.asarray(sum(session), dtype=np.float32) if session else None,
        )
    if old.exposure_total > 0 and new.exposure_total > 0:
        t = max(old.exposure_t, new.exposure_t)
        a, b = 2.0 ** (-(t - old.exposure_t) / hl), 2.0 ** (-(t - new.exposure_t) / hl)
        merged.exposure = _merge_values(old.exposure, new.exposure, a, b, EXPOSURE_CAP * settings.affinity_cap, drop)
        merged.exposure_t, merged.exposure_total = t, old.exposure_total * a + new.exposure_total * b
    elif new.exposure_total > 0:
        merged.exposure, merged.exposure_t, merged.exposure_total = new.exposure, new.exposure_t, new.exposure_total
    else:
        merged.exposure = {f: v for f, v in old.exposure.items() if f not in drop}
        merged.exposure_t, merged.exposure_total = old.exposure_t, old.exposure_total
    merged.taste, merged.taste_t = _merge_taste(old, new, settings, drop)
    return merged


def _merge_taste(old: Profile, new: Profile, settings: ProfileSettings, drop: set[str]) -> tuple[dict, float]:
    """The two profiles' taste evidence, decayed to the later time and summed."""
    if not new.taste:
        return {f: v for f, v in old.taste.items() if f not in drop}, old.taste_t
    if not old.taste:
        return new.taste, new.taste_t
    t = max(old.taste_t, new.taste_t)
    hl = settings.taste_half_life
    a, b = 2.0 ** (-(t - old.taste_t) / hl), 2.0 ** (-(t - new.taste_t) / hl)
    out: dict[str, dict[str, list[float]]] = {}
    for f in set(old.taste) | set(new.taste):
        vals = {} if f in drop else {k: [x * a for x in taste_row(v)] for k, v in old.taste.get(f, {}).items()}
        for k, v in new.taste.get(f, {}).items():
            cur = vals.get(k)
            v = taste_row(v)
            vals[k] = [x * b for x in v] if cur is None else [x + y * b for x, y in zip(cur, v)]
        out[f] = cap_taste(vals, EXPOSURE_CAP * settings.affinity_cap)
    return out, t
