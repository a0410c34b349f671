"""User profiles from events: a decayed centroid of engaged products, facet affinities, products bought.

A profile summarises what one (hashed) user engaged with:

- **centroid**: the sum of the engaged products' vectors (the dense index's
  product embeddings), each weighted by the event's gain (click 1, add to
  cart 2, purchase 3 by default) and decayed with a half-life: an event
  ``Δt`` older than the newest one counts ``2^(-Δt / half_life)``;
- **affinities** per facet (``category``, ``brand``, ``group``: the k-means
  product group of the dense index, ``price_band``: the product's price
  quintile within its category), the same decayed weights per facet value,
  capped at ``affinity_cap`` values per facet (the weakest dropped), read
  as shares (the value's weight over the facet's total, 0..1);
- **bought**: the products purchased (the most recent ``bought_cap``).

Profiles are updated online, one event at a time (:func:`apply_event`), and
in bulk with numpy for a whole log (:func:`build_profiles`); both give the
same numbers (tested).  Decay is applied when an event arrives (weights are
kept relative to the profile's time ``t``), so reading a profile needs no
clock except for :meth:`Profile.strength`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

FACETS = ("category", "brand", "group", "price_band")
DAY = 86400.0


@dataclass
class ProductFacets:
    """What profiles and features need per product row: vectors and facet codes (-1 = none)."""

    vectors: np.ndarray  # [n, d] normalized product vectors (float16 or float32)
    category: np.ndarray  # [n] int32 codes into the product table's categories
    brand: np.ndarray  # [n] int32
    group: np.ndarray  # [n] int32 k-means group
    price_band: np.ndarray  # [n] int32 price quintile within the category
    groups_id: str = ""  # the dense build the groups come from (group keys are only valid within it)

    def __len__(self) -> int:
        return len(self.category)

    def codes(self, facet: str) -> np.ndarray:
        return getattr(self, facet)

    @classmethod
    def from_tables(cls, products, dense_index, price_bands: int = 5) -> "ProductFacets":
        """From an engine's product table and its dense index (vectors and groups stored by `make index`)."""
        n = len(products)
        vectors = dense_index.vectors if dense_index is not None and dense_index.vectors is not None else None
        if vectors is None:
            vectors = np.zeros((n, 1), dtype=np.float32)
        groups = dense_index.groups if dense_index is not None and dense_index.groups is not None \
            else np.full(n, -1, dtype=np.int32)
        gid = (dense_index.manifest.get("build_id", "") if dense_index is not None else "")
        cat = np.asarray(products.category_codes, dtype=np.int32)
        return cls(vectors[:n], cat, np.asarray(products.brand_codes, dtype=np.int32),
                   np.asarray(groups, dtype=np.int32)[:n], price_bands_of(products.prices, cat, price_bands), gid)


def price_bands_of(prices: np.ndarray, categories: np.ndarray, bands: int = 5) -> np.ndarray:
    """Each product's price band 0..bands-1: its price quantile among the products of its category
    (the whole catalog for products without one); -1 without a price."""
    prices = np.asarray(prices, dtype=np.float64)
    out = np.full(len(prices), -1, dtype=np.int32)
    has = ~np.isnan(prices)
    if bands < 1 or not has.any():
        return out
    cats = np.asarray(categories)
    for c in np.unique(cats[has]):
        idx = np.flatnonzero(has & (cats == c))
        ranks = np.argsort(np.argsort(prices[idx], kind="stable"), kind="stable")
        out[idx] = np.minimum((ranks * bands) // max(len(idx), 1), bands - 1)
    return out


@dataclass
class ProfileSettings:
    half_life_days: float = 30.0
    gains: Mapping[str, float] = field(default_factory=lambda: {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0})
    affinity_cap: int = 50
    bought_cap: int = 200

    @property
    def half_life(self) -> float:
        return self.half_life_days * DAY

    @classmethod
    def from_config(cls, personal) -> "ProfileSettings":
        """From a config's ``personal`` section (:class:`indexer.config.PersonalConfig`)."""
        return cls(personal.half_life_days, dict(personal.gains), personal.affinity_cap, personal.bought_cap)


@dataclass
class Profile:
    t: float = 0.0  # the time the weights refer to (the newest event's)
    weight: float = 0.0  # decayed sum of gains
    centroid: np.ndarray | None = None  # decayed weighted sum of product vectors (float32)
    affinities: dict[str, dict[str, float]] = field(default_factory=dict)
    bought: list[str] = field(default_factory=list)
    n_events: int = 0
    groups_id: str = ""
    version: int = 0

    def strength(self, now: float, half_life: float) -> float:
        """The decayed total gain at ``now`` (0 for an empty profile)."""
        if self.weight <= 0:
            return 0.0
        return self.weight * 2.0 ** (-max(now - self.t, 0.0) / half_life)

    def shares(self, facet: str) -> dict[str, float]:
        values = self.affinities.get(facet) or {}
        total = sum(values.values())
        return {k: v / total for k, v in values.items()} if total > 0 else {}

    def unit_centroid(self) -> np.ndarray | None:
        if self.centroid is None:
            return None
        norm = float(np.linalg.norm(self.centroid))
        return None if norm == 0 else (self.centroid / norm).astype(np.float32)

    # a compact, versioned serialization (JSON with the centroid as base64 float32)
    def dumps(self) -> bytes:
        payload = {"v": 1, "t": self.t, "w": self.weight, "n": self.n_events, "g": self.groups_id,
                   "aff": self.affinities, "bought": self.bought,
                   "c": None if self.centroid is None else base64.b64encode(
                       np.asarray(self.centroid, dtype=np.float32).tobytes()).decode("ascii")}
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def loads(cls, blob: bytes, version: int = 0) -> "Profile":
        d = json.loads(blob)
        c = None if d.get("c") is None else np.frombuffer(base64.b64decode(d["c"]), dtype=np.float32).copy()
        return cls(t=d["t"], weight=d["w"], centroid=c, affinities=d.get("aff", {}), bought=d.get("bought", []),
                   n_events=d.get("n", 0), groups_id=d.get("g", ""), version=version)


def bought_rows(profile: Profile | None, row_map: Mapping[str, int]) -> np.ndarray:
    """Rows of the products a profile bought (those still in the index)."""
    if profile is None:
        return np.zeros(0, dtype=np.int64)
    return np.array([row_map[p] for p in profile.bought if p in row_map], dtype=np.int64)


def facet_keys(facets: ProductFacets, row: int) -> dict[str, str]:
    """The facet values of one product row as profile keys (groups prefixed by nothing: the profile
    records which group build its keys belong to)."""
    out = {}
    for f in FACETS:
        code = int(facets.codes(f)[row])
        if code >= 0:
            out[f] = str(code)
    return out


def _cap(values: dict[str, float], cap: int) -> dict[str, float]:
    values = {k: v for k, v in values.items() if v > 1e-9}
    if len(values) <= cap:
        return values
    keep = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:cap]
    return dict(keep)


def apply_event(profile: Profile, facets: ProductFacets, row: int, product_id: str, event: str, ts: float,
                settings: ProfileSettings) -> bool:
    """Update ``profile`` in place with one event; returns False when the event carries no gain
    (impressions), which leaves the profile unchanged."""
    gain = float(settings.gains.get(event, 0.0))
    if gain <= 0:
        return False
    hl = settings.half_life
    if profile.groups_id != facets.groups_id:  # group codes of another dense build mean nothing here
        profile.affinities.pop("group", None)
        profile.groups_id = facets.groups_id
    if profile.n_events == 0 or ts >= profile.t:
        decay = 2.0 ** (-(ts - profile.t) / hl) if profile.n_events else 1.0
        w = gain
        profile.weight *= decay
        if profile.centroid is not None:
            profile.centroid *= decay
        for values in profile.affinities.values():
            for k in values:
                values[k] *= decay
        profile.t = ts
    else:  # an older event arriving late: weighted by its age relative to the profile's time
        w = gain * 2.0 ** (-(profile.t - ts) / hl)
    vec = np.asarray(facets.vectors[row], dtype=np.float32)
    profile.centroid = w * vec if profile.centroid is None else profile.centroid + w * vec
    profile.weight += w
    for f, key in facet_keys(facets, row).items():
        values = profile.affinities.setdefault(f, {})
        values[key] = values.get(key, 0.0) + w
        profile.affinities[f] = _cap(values, settings.affinity_cap)
    if event == "purchase":
        if product_id in profile.bought:
            profile.bought.remove(product_id)
        profile.bought.append(product_id)
        profile.bought = profile.bought[-settings.bought_cap:]
    profile.n_events += 1
    return True


def build_profiles(users: np.ndarray, rows: np.ndarray, product_ids: Sequence[str], events: np.ndarray,
                   ts: np.ndarray, facets: ProductFacets, settings: ProfileSettings,
                   event_names: Sequence[str]) -> dict[str, Profile]:
    """Profiles of many users at once (bulk ingestion): the same numbers as applying their events one by one.

    ``users`` (user keys), ``rows`` (product rows), ``events`` (codes into ``event_names``) and ``ts`` are
    parallel arrays.  Vectorized: decayed weights per event, then one sparse product for the centroids
    and one grouped sum per facet.
    """
    import scipy.sparse as sp

    gains = np.array([float(settings.gains.get(e, 0.0)) for e in event_names])[events]
    keep = gains > 0
    users, rows, gains, ts = np.asarray(users)[keep], np.asarray(rows)[keep], gains[keep], np.asarray(ts)[keep]
    codes_evt = np.asarray(events)[keep]
    pids = np.asarray(product_ids, dtype=object)[keep] if len(product_ids) else np.zeros(0, dtype=object)
    if len(users) == 0:
        return {}
    uniq, uidx = np.unique(users, return_inverse=True)
    t_last = np.full(len(uniq), -np.inf)
    np.maximum.at(t_last, uidx, ts)
    w = gains * np.exp2(-(t_last[uidx] - ts) / settings.half_life)
    weight = np.bincount(uidx, weights=w, minlength=len(uniq))
    n_events = np.bincount(uidx, minlength=len(uniq))
    m = sp.csr_matrix((w, (uidx, rows)), shape=(len(uniq), len(facets)))
    centroids = np.asarray(m @ np.asarray(facets.vectors, dtype=np.float32), dtype=np.float32)
    profiles = {str(u): Profile(t=float(t_last[i]), weight=float(weight[i]), centroid=centroids[i].copy(),
                                n_events=int(n_events[i]), groups_id=facets.groups_id) for i, u in enumerate(uniq)}
    for f in FACETS:
        codes = np.asarray(facets.codes(f))[rows]
        ok = codes >= 0
        if not ok.any():
            continue
        key = uidx[ok].astype(np.int64) * (int(codes.max()) + 1) + codes[ok]
        k_uniq, k_inv = np.unique(key, return_inverse=True)
        sums = np.bincount(k_inv, weights=w[ok])
        span = int(codes.max()) + 1
        for k, s in zip(k_uniq.tolist(), sums.tolist()):
            profiles[str(uniq[k // span])].affinities.setdefault(f, {})[str(k % span)] = s
    for p in profiles.values():
        for f in list(p.affinities):
            p.affinities[f] = _cap(p.affinities[f], settings.affinity_cap)
    bought = np.flatnonzero(codes_evt == list(event_names).index("purchase")) if "purchase" in event_names else []
    if len(bought):
        order = bought[np.argsort(ts[bought], kind="stable")]
        for i in order:
            p = profiles[str(users[i])]
            pid = pids[i]
            if pid in p.bought:
                p.bought.remove(pid)
            p.bought.append(pid)
        for p in profiles.values():
            p.bought = p.bought[-settings.bought_cap:]
    return profiles


def merge_profiles(old: Profile, new: Profile, settings: ProfileSettings) -> Profile:
    """``old`` followed by ``new`` (both for one user): decayed to the later time and summed."""
    if old.n_events == 0:
        return new
    if new.n_events == 0:
        return old
    hl = settings.half_life
    t = max(old.t, new.t)
    a, b = 2.0 ** (-(t - old.t) / hl), 2.0 ** (-(t - new.t) / hl)
    centroid = (old.centroid * a if old.centroid is not None else 0) + (new.centroid * b if new.centroid is not None else 0)
    aff: dict[str, dict[str, float]] = {}
    for f in set(old.affinities) | set(new.affinities):
        if f == "group" and old.groups_id != new.groups_id:
            vals = {k: v * b for k, v in new.affinities.get(f, {}).items()}
        else:
            vals = {k: v * a for k, v in old.affinities.get(f, {}).items()}
            for k, v in new.affinities.get(f, {}).items():
                vals[k] = vals.get(k, 0.0) + v * b
        aff[f] = _cap(vals, settings.affinity_cap)
    bought = [p for p in old.bought if p not in new.bought] + new.bought
    return Profile(t=t, weight=old.weight * a + new.weight * b, centroid=np.asarray(centroid, dtype=np.float32),
                   affinities=aff, bought=bought[-settings.bought_cap:], n_events=old.n_events + new.n_events,
                   groups_id=new.groups_id, version=old.version)
