"""`SearchEngine`: query → candidates from each configured stage → ranked hits.

This first slice has one stage, BM25; later stages (dense, fusion, rerank,
personalization) plug in behind the same `query()` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from indexer.bm25 import BM25Index, SearchResult
from indexer.config import Config, load_config

STAGES = ("bm25",)


@dataclass(frozen=True)
class Hit:
    product_id: str
    title: str
    score: float
    rank: int


class SearchEngine:
    """Answers queries from the indexes `make index` built for a config."""

    def __init__(self, cfg: Config, bm25: BM25Index):
        self.cfg = cfg
        self.bm25 = bm25
        self.products = bm25.products

    @classmethod
    def from_config(cls, path: str | Path | Config, verify: bool = True, **overrides) -> "SearchEngine":
        """Load the engine for a config file (or an already loaded :class:`Config`).

        Fails with a clear error if the index is missing, corrupt, from another
        format version, or built with other settings than the config's.
        """
        cfg = path if isinstance(path, Config) else load_config(path, **overrides)
        bm25 = BM25Index.load(cfg.index_dir / "bm25", cfg.text, config_hash=cfg.index_fingerprint(), verify=verify)
        return cls(cfg, bm25)

    def filter_mask(self, filters: dict | None) -> np.ndarray | None:
        """Boolean mask from ``{"category": ..., "brand": ..., "price_min": ..., "price_max": ...}``."""
        if not filters:
            return None
        unknown = set(filters) - {"category", "brand", "price_min", "price_max"}
        if unknown:
            raise ValueError(f"unknown filter(s) {sorted(unknown)}; use category, brand, price_min, price_max")
        return self.products.mask(**filters)

    def retrieve(self, text: str, k: int = 10, stage: str = "bm25", mask: np.ndarray | None = None) -> SearchResult:
        """Rows and scores of the top-k products of one stage (no strings decoded)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; this engine has {list(STAGES)}")
        return self.bm25.search(text, k=k, mask=mask)

    def query(self, text: str, k: int = 10, filters: dict | None = None, mask: np.ndarray | None = None) -> list[Hit]:
        """Ranked hits for a query.

        ``filters`` restricts results by category, brand or price range;
        ``mask`` (one bool per product row) is the general form.  Both are
        applied inside retrieval, before the top-k cut.
        """
        if not isinstance(text, str):
            raise TypeError(f"query text must be a string, not {type(text).__name__}")
        if k < 1:
            raise ValueError("k must be >= 1")
        fmask = self.filter_mask(filters)
        if fmask is not None:
            mask = fmask if mask is None else (fmask & np.asarray(mask, dtype=bool))
        res = self.retrieve(text, k=k, stage=self.cfg.search.stages[-1], mask=mask)
        return self.hits(res)

    def hits(self, res: SearchResult) -> list[Hit]:
        ids, titles = self.products.ids, self.products.titles
        return [Hit(ids[int(r)], titles[int(r)], float(s), i + 1) for i, (r, s) in enumerate(zip(res.rows, res.scores))]

    def query_many(self, texts: Sequence[str], k: int = 10) -> list[list[Hit]]:
        return [self.query(t, k=k) for t in texts]
