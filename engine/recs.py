"""Recommendation models as served: item neighbours from behaviour, ALS item factors, and their scoring.

Built offline by :mod:`finetune.recs` from the event store or a click log into ``<models>/recs/`` and
loaded here (the query path reads only arrays):

- ``similar``: each product's top neighbours by co-engagement within visits (clicks, carts, purchases of
  one user within ``visit_minutes``), cosine-normalized and shrunk toward 0 for rare pairs;
- ``together``: each product's top neighbours by co-carts and co-purchases of one user within
  ``basket_days``, scored by lift (how much more often than chance) times the pair's confidence, only
  pairs with at least ``min_support`` baskets;
- ``items``: ALS item factors (``implicit``) over users × products (gain-weighted engagements), from which
  a user's vector is solved at request time from their *current* recent history, so a new click changes
  the next call.

Everything is a product row of the serving index (``manifest.json`` keeps the product ids they were
built with; rows of products no longer in the catalog are dropped at load).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

FORMAT = 1
# what each engagement weighs for every recommendation model and list (impressions: nothing)
GAINS = {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}


@dataclass
class Neighbours:
    """Top-``K`` neighbours per product row: ``rows[i]`` (−1 padded) and their ``scores[i]``."""

    rows: np.ndarray  # [n, K] int32
    scores: np.ndarray  # [n, K] float32

    def of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        r, s = self.rows[row], self.scores[row]
        keep = r >= 0
        return r[keep], s[keep]

    def spread(self, rows: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
        """``[n]``: Σ over ``rows`` of weight × neighbour score (item-kNN from several seed products)."""
        out = np.zeros(n, dtype=np.float64)
        if not len(rows):
            return out
        nb, sc = self.rows[rows], self.scores[rows] * np.asarray(weights, dtype=np.float32)[:, None]
        keep = nb >= 0
        np.add.at(out, nb[keep], sc[keep])
        return out


@dataclass
class RecModels:
    """Everything :func:`load` reads: neighbours, ALS item factors, the build's card."""

    similar: Neighbours
    together: Neighbours
    items: np.ndarray | None  # [n, f] float32 ALS item factors, or None (too little data)
    regularization: float
    card: dict
    _yty: np.ndarray | None = field(default=None, repr=False)  # YᵀY of the item factors, computed once

    @property
    def conversions(self) -> int:
        """Baskets with at least two carted or bought products the build saw (bought-together's evidence)."""
        return int(self.card.get("baskets", 0))

    def user_vector(self, rows: np.ndarray, confidence: np.ndarray) -> np.ndarray | None:
        """The ALS user vector for a history (``rows`` with their confidences), solved in closed form against
        the item factors (implicit ALS: ``(YᵀY + Yᵤᵀ(Cᵤ − I)Yᵤ + λI) x = Yᵤᵀ Cᵤ 1``)."""
        if self.items is None or not len(rows):
            return None
        Y = self.items
        if self._yty is None:
            self._yty = Y.T.astype(np.float64) @ Y.astype(np.float64)
        yty = self._yty
        Yu = Y[rows].astype(np.float64)
        c = 1.0 + np.asarray(confidence, dtype=np.float64)
        A = yty + (Yu.T * (c - 1.0)) @ Yu + self.regularization * np.eye(Y.shape[1])
        return np.linalg.solve(A, Yu.T @ c)


def models_dir(cfg) -> Path:
    """Where a config's recommendation models live: ``recs.models``, or ``models/<config name>/recs`` (what
    `make finetune` and `make retrain` write and the engine reads)."""
    p = Path(cfg.recs.models) if cfg.recs.models else Path("models") / cfg.name / "recs"
    return p if p.is_absolute() else cfg.root / p


def signature(path: Path) -> tuple | None:
    """What identifies a build on disk (its card's time and size; the card is written last), or None when
    there is none."""
    card = Path(path) / "model_card.json"
    try:
        st = card.stat()
    except OSError:
        return None
    return (str(card.resolve()), st.st_mtime_ns, st.st_size)


def save(path: Path, similar: Neighbours, together: Neighbours, items: np.ndarray | None, card: dict, ids) -> None:
    """Write a build into ``path`` (a fresh folder; the caller swaps it into place)."""
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "similar_rows.npy", similar.rows.astype(np.int32))
    np.save(path / "similar_scores.npy", similar.scores.astype(np.float32))
    np.save(path / "together_rows.npy", together.rows.astype(np.int32))
    np.save(path / "together_scores.npy", together.scores.astype(np.float32))
    if items is not None:
        np.save(path / "als_items.npy", items.astype(np.float32))
    (path / "product_ids.json").write_text(json.dumps(list(map(str, ids)), ensure_ascii=False), encoding="utf-8")
    (path / "model_card.json").write_text(
        json.dumps({"format": FORMAT, **card}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def load(path: Path, ids: Sequence[str]) -> RecModels:
    """Load a build for an index whose product ids (by row) are ``ids``: rows are remapped by product id,
    and products the build never saw (or the index no longer has) get no neighbours."""
    path = Path(path)
    card = json.loads((path / "model_card.json").read_text(encoding="utf-8"))
    if card.get("format") != FORMAT:
        raise ValueError(
            f"{path}/model_card.json: recommendation models of format {card.get('format')!r}; "
            f"this engine reads {FORMAT}: run `make retrain` or `make finetune` again"
        )
    built = json.loads((path / "product_ids.json").read_text(encoding="utf-8"))
    row_of = {pid: i for i, pid in enumerate(ids)}
    new_of_old = np.array([row_of.get(p, -1) for p in built], dtype=np.int64)
    n = len(ids)

    def neighbours(name: str) -> Neighbours:
        rows = np.load(path / f"{name}_rows.npy")
        scores = np.load(path / f"{name}_scores.npy")
        out_r = np.full((n, rows.shape[1]), -1, dtype=np.int32)
        out_s = np.zeros((n, rows.shape[1]), dtype=np.float32)
        old = np.flatnonzero(new_of_old >= 0)
        mapped = np.where(rows[old] >= 0, new_of_old[np.maximum(rows[old], 0)], -1)
        out_r[new_of_old[old]] = mapped
        out_s[new_of_old[old]] = np.where(mapped >= 0, scores[old], 0.0)
        return Neighbours(out_r, out_s)

    items = None
    if (path / "als_items.npy").is_file():
        old_items = np.load(path / "als_items.npy")
        items = np.zeros((n, old_items.shape[1]), dtype=np.float32)
        old = np.flatnonzero(new_of_old >= 0)
        items[new_of_old[old]] = old_items[old]
    return RecModels(
        neighbours("similar"), neighbours("together"), items, float(card.get("regularization", 0.05)), card
    )
