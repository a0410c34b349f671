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
- **bought**: the products purchased (the most recent ``bought_cap``);
- **session**: the same engagements' centroid decayed with a half-life of
  minutes (``personal.session_minutes``), so the last minutes' clicks
  count at the next query whatever the long history says (the in-session
  profile; kept relative to the same time ``t``);
- **exposure** per facet value: the decayed count of the user's impressions
  of it (what the shop showed them), with its own reference time.  Engaged
  weight over exposure is the user's own click-through rate on a brand or
  price band: what they chose *given what they saw*.  A shop shows some brands
  far more than others, and shares of engagement alone mostly repeat that.
  Impressions change nothing else: a user with impressions only is still
  cold (``weight`` 0);
- **taste** evidence per facet value: decayed counts of the impressions and the clicks at each rank bucket of the
  searches the user made (every product shown, clicked or not, below the deepest click too), with its own
  half-life (``personal.taste_half_life_days``): what :mod:`engine.taste` reads a taste from.  Where the search
  logged how relevant each product was (the serving taste model's click log-odds ``x`` of its non-personal
  score), the impressions and clicks with an ``x`` are counted again with their summed ``x`` per bucket: a
  click on a product the engine found a poor match says more of a taste than one on its best match.

Profiles are updated online, one event at a time (:func:`apply_event`), and
in bulk with numpy for a whole log (:func:`engine.profiles_bulk.build_profiles`); both give the
same numbers (tested).  Decay is applied when an event arrives (weights are
kept relative to the profile's time ``t``), so reading a profile needs no
clock except for :meth:`Profile.strength`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from engine.taste_counts import TASTE_WIDTH, cap_taste, taste_columns, taste_row

FACETS = ("category", "brand", "group", "price_band")
EXPOSURE_CAP = 4  # exposure keeps this many times ``affinity_cap`` values per facet
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
        groups = (
            dense_index.groups
            if dense_index is not None and dense_index.groups is not None
            else np.full(n, -1, dtype=np.int32)
        )
        gid = dense_index.manifest.get("build_id", "") if dense_index is not None else ""
        cat = np.asarray(products.category_codes, dtype=np.int32)
        return cls(
            vectors[:n],
            cat,
            np.asarray(products.brand_codes, dtype=np.int32),
            np.asarray(groups, dtype=np.int32)[:n],
            price_bands_of(products.prices, cat, price_bands),
            gid,
        )


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
    session_minutes: float = 30.0
    exposure: str = "examined"  # or "shown" (personal.exposure)
    taste_half_life_days: float = 365.0

    @property
    def taste_half_life(self) -> float:
        return self.taste_half_life_days * DAY

    @property
    def half_life(self) -> float:
        return self.half_life_days * DAY

    @property
    def session_half_life(self) -> float:
        return self.session_minutes * 60.0

    @classmethod
    def from_config(cls, personal) -> "ProfileSettings":
        """From a config's ``personal`` section (:class:`core.config.PersonalConfig`)."""
        return cls(
            personal.half_life_days,
            dict(personal.gains),
            personal.affinity_cap,
            personal.bought_cap,
            personal.session_minutes,
            personal.exposure,
            personal.taste_half_life_days,
        )


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
    exposure: dict[str, dict[str, float]] = field(default_factory=dict)  # facet -> value -> decayed impressions
    exposure_t: float = 0.0  # the time exposure refers to (the newest impression's)
    exposure_total: float = 0.0  # decayed impressions in all
    session_weight: float = 0.0  # the in-session profile: gains decayed with the session half-life, at ``t``
    session_centroid: np.ndarray | None = None
    # taste evidence (engine.taste): facet -> value -> TASTE_WIDTH decayed sums (:data:`TASTE_PARTS` per bucket)
    taste: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    taste_t: float = 0.0  # the time taste evidence refers to (its newest event's)

    def exposure_at(self, now: float, half_life: float) -> float:
        """The factor that brings exposure weights to ``now``."""
        return 2.0 ** (-max(now - self.exposure_t, 0.0) / half_life)

    def weight_at(self, now: float, half_life: float) -> float:
        """The factor that brings engagement weights (affinities) to ``now``."""
        return 2.0 ** (-max(now - self.t, 0.0) / half_life)

    def strength(self, now: float, half_life: float) -> float:
        """The decayed total gain at ``now`` (0 for an empty profile)."""
        return self.weight * self.weight_at(now, half_life) if self.weight > 0 else 0.0

    def session_strength(self, now: float, session_half_life: float) -> float:
        """The in-session profile's decayed gain at ``now`` (about 0 once the shopper has been away a while)."""
        if self.session_weight <= 0:
            return 0.0
        return self.session_weight * 2.0 ** (-max(now - self.t, 0.0) / session_half_life)

    def unit_session_centroid(self) -> np.ndarray | None:
        if self.session_centroid is None:
            return None
        norm = float(np.linalg.norm(self.session_centroid))
        return None if norm == 0 else (self.session_centroid / norm).astype(np.float32)

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
        payload = {
            "v": 1,
            "t": self.t,
            "w": self.weight,
            "n": self.n_events,
            "g": self.groups_id,
            "aff": self.affinities,
            "bought": self.bought,
            "exp": self.exposure,
            "et": self.exposure_t,
            "ew": self.exposure_total,
            "c": _b64(self.centroid),
            "sw": self.session_weight,
            "sc": _b64(self.session_centroid),
            "ta": {f: {k: [round(x, 4) for x in v] for k, v in vals.items()} for f, vals in self.taste.items()},
            "tt": self.taste_t,
        }
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def loads(cls, blob: bytes, version: int = 0) -> "Profile":
        d = json.loads(blob)
        return cls(
            t=d["t"],
            weight=d["w"],
            centroid=_unb64(d.get("c")),
            affinities=d.get("aff", {}),
            bought=d.get("bought", []),
            n_events=d.get("n", 0),
            groups_id=d.get("g", ""),
            version=version,
            exposure=d.get("exp", {}),
            exposure_t=d.get("et", 0.0),
            exposure_total=d.get("ew", 0.0),
            session_weight=d.get("sw", 0.0),
            session_centroid=_unb64(d.get("sc")),
            taste={f: {k: taste_row(v) for k, v in vals.items()} for f, vals in d.get("ta", {}).items()},
            taste_t=d.get("tt", 0.0),
        )


def _b64(v: np.ndarray | None) -> str | None:
    return None if v is None else base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode("ascii")


def _unb64(s: str | None) -> np.ndarray | None:
    return None if s is None else np.frombuffer(base64.b64decode(s), dtype=np.float32).copy()


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


def cap_values(values: dict[str, float], cap: int) -> dict[str, float]:
    values = {k: v for k, v in values.items() if v > 1e-9}
    if len(values) <= cap:
        return values
    keep = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:cap]
    return dict(keep)


def _advance(t_ref: float, empty: bool, ts: float, half_life: float) -> tuple[float, float, float]:
    """An event at ``ts`` on weights kept relative to ``t_ref``: (decay to apply to the kept weights, the
    event's own factor, the new reference time).  A newer event moves the reference to it; an older one
    arriving late counts at its age relative to the reference."""
    if empty or ts >= t_ref:
        return (1.0 if empty else 2.0 ** (-(ts - t_ref) / half_life)), 1.0, ts
    return 1.0, 2.0 ** (-(t_ref - ts) / half_life), t_ref


def _decay_values(store: dict[str, dict[str, float]], decay: float) -> None:
    for values in store.values():
        for k in values:
            values[k] *= decay


def _add_facets(store: dict[str, dict[str, float]], facets: ProductFacets, row: int, w: float, cap: int) -> None:
    for f, key in facet_keys(facets, row).items():
        values = store.setdefault(f, {})
        values[key] = values.get(key, 0.0) + w
        store[f] = cap_values(values, cap)


def _apply_impression(profile: Profile, facets: ProductFacets, row: int, ts: float, settings: ProfileSettings) -> None:
    decay, w, profile.exposure_t = _advance(profile.exposure_t, profile.exposure_total <= 0, ts, settings.half_life)
    profile.exposure_total = profile.exposure_total * decay + w
    _decay_values(profile.exposure, decay)
    _add_facets(profile.exposure, facets, row, w, EXPOSURE_CAP * settings.affinity_cap)


def _apply_taste(
    profile: Profile,
    facets: ProductFacets,
    row: int,
    rank: int,
    clicked: bool,
    ts: float,
    settings: ProfileSettings,
    x: float | None = None,
) -> None:
    """One shown (or clicked) product at a known 1-based ``rank`` (and relevance ``x``, if logged) into the taste
    evidence."""
    empty = not profile.taste
    decay, w, profile.taste_t = _advance(profile.taste_t, empty, ts, settings.taste_half_life)
    if decay != 1.0:
        for values in profile.taste.values():
            for v in values.values():
                for i in range(len(v)):
                    v[i] *= decay
    cols = taste_columns(rank, clicked, x)
    for f, key in facet_keys(facets, row).items():
        values = profile.taste.setdefault(f, {})
        v = values.get(key)
        if v is None:
            v = values[key] = [0.0] * TASTE_WIDTH
        for col, factor in cols:
            v[col] += w * factor
        profile.taste[f] = cap_taste(values, EXPOSURE_CAP * settings.affinity_cap)


def apply_event(
    profile: Profile,
    facets: ProductFacets,
    row: int,
    product_id: str,
    event: str,
    ts: float,
    settings: ProfileSettings,
    rank: int = 0,
    shapes: bool = True,
    relevance: float | None = None,
) -> bool:
    """Update ``profile`` in place with one event; returns False when the event changes nothing
    (an event type with no gain other than an impression).  An impression only adds exposure.  ``rank``: the
    1-based rank the product was shown at in the search the event belongs to (0: unknown); an impression or a
    click with a rank adds taste evidence (:mod:`engine.taste`).  ``shapes=False``: the event adds taste evidence
    only (an impression below the search's deepest engagement under ``personal.exposure: examined``);
    ``relevance``: the product's click log-odds as the search that showed it scored it (None or nan: not logged)."""
    gain = float(settings.gains.get(event, 0.0))
    if profile.groups_id != facets.groups_id:  # group codes of another dense build mean nothing here
        profile.affinities.pop("group", None)
        profile.exposure.pop("group", None)
        profile.taste.pop("group", None)
        profile.groups_id = facets.groups_id
    if rank > 0 and event in ("impression", "click"):
        _apply_taste(profile, facets, row, rank, event == "click", ts, settings, relevance)
    if not shapes:
        return rank > 0 and event in ("impression", "click")
    if event == "impression":
        _apply_impression(profile, facets, row, ts, settings)
        return True
    if gain <= 0:
        return False
    s_decay, s_age, _ = _advance(profile.t, profile.n_events == 0, ts, settings.session_half_life)
    decay, age, profile.t = _advance(profile.t, profile.n_events == 0, ts, settings.half_life)
    w = gain * age
    if decay != 1.0:
        profile.weight *= decay
        if profile.centroid is not None:
            profile.centroid *= decay
        _decay_values(profile.affinities, decay)
    vec = np.asarray(facets.vectors[row], dtype=np.float32)
    profile.centroid = w * vec if profile.centroid is None else profile.centroid + w * vec
    profile.weight += w
    ws = gain * s_age  # the in-session profile: the same event, minutes of half-life
    profile.session_weight = profile.session_weight * s_decay + ws
    profile.session_centroid = (
        ws * vec if profile.session_centroid is None else profile.session_centroid * np.float32(s_decay) + ws * vec
    )
    _add_facets(profile.affinities, facets, row, w, settings.affinity_cap)
    if event == "purchase":
        if product_id in profile.bought:
            profile.bought.remove(product_id)
        profile.bought.append(product_id)
        profile.bought = profile.bought[-settings.bought_cap :]
    profile.n_events += 1
    return True
