"""The ``suggest:`` section: query suggestions (indexer.suggest builds them, engine.suggest serves them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class SuggestConfig:
    """Query suggestions as the shopper types (docs/suggestions.md)."""

    enabled: bool = True  # `make index` builds the suggestion stage beside bm25
    # a query log: one query per line, or a TSV/CSV with a ``query`` column (WenTian: the Taobao query stream);
    # None: the click log's queries (finetune.train), else catalog phrases only
    log: Path | None = None
    blocklist: Path | None = None  # one phrase per line: a suggestion containing one is never offered
    # a suggestion must find this many products: those holding at least min_match of its word tokens
    # (Elasticsearch's minimum_should_match, rounded down), checked at build time
    min_hits: int = 3
    min_match: float = 0.75
    # a word-boundary prefix of this many logged queries becomes a suggestion itself (蓝牙耳机 from 蓝牙耳机 降噪 …)
    prefix_min_queries: int = 3
    # catalog phrases (brands, categories, word pairs and triples in titles) count this much per product
    catalog_weight: float = 0.1
    segment_min_products: int = 5  # a title segment must be in this many titles
    max_chars: int = 30  # longer log queries are not offered
    # serving
    top_k: int = 24  # completions kept per frequent prefix (the most k a call may ask for)
    list_threshold: int = 64  # a prefix with more keys than this reads its precomputed top list
    typo_min_letters: int = 4  # a Latin prefix this long may have one typo
    typo_factor: float = 0.5  # a suggestion reached through a typo counts this much
    recent_searches: int = 20  # a known user's recent searches that match come first
    category_boost: float = 1.0  # popularity × (1 + boost × the user's share of the suggestion's category)
    category_min_share: float = 0.5  # the suggestion's hint names the category of at least this share of hits
    live_days: float = 30.0  # logged searches of these days add to popularity when the engine starts
