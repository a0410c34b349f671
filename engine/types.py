"""What the engine hands back: a hit, a query's typed result, and the engine's errors.

The project-wide base types (:class:`EcomsearchError`, :class:`SearchResult`,
the stage names) live in :mod:`core.types`, the bottom of the import graph;
they are re-exported here so that engine users import from one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.types import (
    BM25,
    DENSE,
    DENSE_BASE,
    DENSE_STAGES,
    FIRST_STAGES,
    HYBRID,
    RERANK,
    RERANK_FIRST_STAGES,
    STAGES,
    EcomsearchError,
    SearchResult,
)

# the shared types, re-exported beside the engine's own
__all__ = [
    "BM25",
    "DENSE",
    "DENSE_BASE",
    "DENSE_STAGES",
    "FIRST_STAGES",
    "HYBRID",
    "RERANK",
    "RERANK_FIRST_STAGES",
    "STAGES",
    "EcomsearchError",
    "SearchResult",
    "QueryError",
    "Hit",
    "QueryResult",
]


class QueryError(EcomsearchError, ValueError):
    """A query argument that cannot be answered; ``param`` names it (``q``, ``k``, ``offset``, a filter)."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param
        self.reason = message


@dataclass(frozen=True)
class Hit:
    product_id: str
    title: str
    score: float
    rank: int  # 1-based over the whole ranking (offset + position)
    explain: dict | None = None  # with query(..., explain=True): stage scores/ranks, cross-encoder, personal
    category: str | None = None  # the catalog's columns, where it has them (what a result page shows)
    brand: str | None = None
    price: float | None = None
    rules: list[str] | None = None  # the merchandising rules that moved it (engine.rules)
    personalized: bool = False  # the shopper's history ranked it higher than it ranks for nobody
    # the click log-odds the ranker's taste model read in its non-personal score: logged with the impression for
    # the shoppers' taste evidence (engine.taste_counts), not part of the answer
    relevance: float | None = None

    def to_dict(self) -> dict:
        d = {"product_id": self.product_id, "title": self.title, "score": self.score, "rank": self.rank}
        for name in ("category", "brand", "price", "rules"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        if self.personalized:
            d["personalized"] = True
        if self.explain is not None:
            d["explain"] = self.explain
        return d


class HitList:
    """Behaves as its list of ``hits``: ``len``, iteration, indexing (query and recommendation answers)."""

    hits: list

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self):
        return iter(self.hits)

    def __getitem__(self, i):
        return self.hits[i]


@dataclass
class QueryResult(HitList):
    """The hits of one query, the milliseconds each step took and the versions that answered it.

    Behaves as the list of hits (``len``, iteration, indexing) so that code written for the older
    ``query() -> list[Hit]`` keeps working.  ``reason`` says why there are no hits when the query had
    nothing to search for (empty, whitespace, no searchable characters)."""

    hits: list[Hit]
    query: str  # the text searched for, after cleaning (control characters stripped, length capped)
    timings_ms: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    truncated: bool = False  # the query was longer than search.max_query_chars and was cut
    k: int = 10
    offset: int = 0
    searched: str | None = None  # what the engine searched after query understanding (None: as cleaned)
    rewrites: list[dict] = field(default_factory=list)  # the rewrite steps: {"rule", "from", "to"}
    facets: dict | None = None  # query(facets=...): {"matched", "ms", "facets": {name: counts}} (engine.facets)
    rules: dict | None = None  # where rules exist: {"version", "fired": [ids], "redirect": url or None}

    def __eq__(self, other):
        if isinstance(other, list):
            return self.hits == other
        if isinstance(other, QueryResult):
            return self.hits == other.hits
        return NotImplemented

    def to_dict(self) -> dict:
        d = {
            "query": self.query,
            "k": self.k,
            "offset": self.offset,
            "hits": [h.to_dict() for h in self.hits],
            "timings_ms": self.timings_ms,
            "versions": self.versions,
        }
        if self.reason:
            d["reason"] = self.reason
        if self.truncated:
            d["truncated"] = True
        if self.rewrites:  # query understanding changed what was searched
            d["searched"] = self.searched
            d["rewrites"] = self.rewrites
        if self.facets is not None:
            d["facets"] = self.facets
        if self.rules is not None:
            d["rules"] = self.rules
        return d
