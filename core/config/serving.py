"""The config sections of the query path and the service (``engine/``): first stages and their fusion, the
rerank stage, personalization, query understanding, the HTTP service."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.config.loader import INDEXED_WHEN_SET, NOT_INDEXED, NOT_TRAINED, TRAINED_WHEN_SET  # noqa: F401

from core.config.index import MilvusConfig


@dataclass
class FusionConfig:
    # how the hybrid stage (query() without a cross-encoder) merges the first stages' lists (engine.fusion):
    # rrf (reciprocal rank fusion, Σ weight / (c + rank)) or scores (Σ weight × min-max scaled score)
    method: str = "rrf"
    c: float = 60.0
    # per stage (bm25, dense); a stage not named weighs 1
    weights: dict[str, float] = field(default_factory=dict)
    # pseudo-relevance feedback (engine.hybrid): the fused list's top `feedback` products move each dense stage's
    # query vector towards their mean, the query keeping `feedback_weight` of it; that stage searches again and
    # the lists are fused once more, below the plain fusion's first `feedback_below` products (kept). 0: off
    feedback: int = 0
    feedback_weight: float = 0.85
    feedback_below: int = 10
    # word feedback for the keyword stage: the `feedback_terms` best words (by idf) that at least
    # `feedback_min_docs` of those titles share, added to the BM25 query at `feedback_term_weight`. 0: off
    feedback_terms: int = 0
    feedback_term_weight: float = 0.3
    feedback_min_docs: int = 2


@dataclass
class SearchConfig:
    stages: list[str] = field(default_factory=lambda: ["bm25"])
    # where the first stages run: local (bm25s + FAISS in this process) or milvus (one Milvus collection)
    backend: str = "local"
    milvus: MilvusConfig = field(default_factory=MilvusConfig)
    # candidates each first stage hands on
    candidates: int = 100
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # longer queries are cut here (the result says `truncated`); a 1 MB query costs no more than this
    max_query_chars: int = 256
    # the deepest hit a query may ask for (k + offset)
    max_k: int = 1000
    # recent results kept per (query, filters, k, offset, user-profile version, index version); 0: no cache
    cache_size: int = 2048
    # facet counts (query(facets=...)) are over the matching set: the products holding facet_min_match of the
    # query's word tokens (the facet_depth best by BM25); filters apply disjunctively
    facet_min_match: float = 0.75
    facet_depth: int = 10000
    facet_values: int = 20  # the most values listed per facet (by count; a selected value always)
    price_buckets: int = 6  # about this many price ranges, at round boundaries


@dataclass
class RerankConfig:
    # the fine-tuned cross-encoder (`make finetune` writes models/<config>/cross-encoder); None: no rerank
    model: str | None = None
    # candidates each first stage (bm25, dense) hands the cross-encoder; their union is reranked
    depth: int = 50
    # the stage scores and ranks the final ranker reads are looked up this deep in each first stage's list (a
    # bm25-only candidate's dense cosine, a dense-only one's BM25 score), not only in the top `depth` that chose
    # the candidates; 0: only there (an absent candidate gets the list's lowest score and rank depth + 1)
    lookup_depth: int = 0
    # the zero-shot encoder's (dense.base_model, the `dense-base` stage) cosine of each candidate, its gap to the
    # query's best and its rank among the candidates as ranker features (base_cos, base_gap, base_rank): a view of
    # relevance that never saw the training queries; costs one more query encoding (on ONNX where
    # dense.query_runtime is onnx) and the dense-base index in memory. Off: those features are not computed
    base_cosine: bool = False
    # combined score = weight * z(cross-encoder) + (1 - weight) * z(first stage); 1.0: cross-encoder alone
    weight: float = 0.5
    # the first-stage score: rrf (reciprocal rank fusion) or scores (mean of the stages' standardized raw scores)
    first_stage: str = "rrf"
    # None: the max length the cross-encoder was trained with
    max_length: int | None = None
    batch_size: int = 128
    device: str = "auto"
    # how the cross-encoder runs: torch, or onnx (ONNX Runtime on the CPU, from `python -m finetune.export_onnx`)
    runtime: str = "torch"
    # onnx only: none, or int8 (dynamic quantization of the weights)
    quantize: str = "none"
    # the learned final ranker (LightGBM LambdaRank, trained by `make finetune`); None: the z-score mix above
    ranker: str | None = None
    # the cascade: a larger cross-encoder (`python -m finetune --cross-encoder-layers 12`) reorders the final
    # order's top `teacher_top` among themselves by teacher_weight * z(teacher) + (1 - teacher_weight) * z(final
    # score); it runs as rerank.runtime says, with its own quantize (onnx: none or int8). None: no cascade
    teacher: str | None = None
    teacher_top: int = 5
    teacher_weight: float = 0.5
    teacher_quantize: str = "none"


@dataclass
class PersonalConfig:
    """Events, user profiles and the personal features (engine.events, engine.profiles, engine.features)."""

    # where events and profiles live: an embedded SQLite file (default <index_dir>/events.sqlite), or
    # PostgreSQL (store: postgres) shared by many replicas: dsn (ECOMSEARCH_PG_DSN wins) and a schema of its own
    store: str = "sqlite"
    path: Path | None = None
    dsn: str | None = field(default=None, metadata=NOT_TRAINED)
    pg_schema: str = field(default="ecomsearch", metadata=NOT_TRAINED)
    # the HMAC key user ids are hashed with; the environment variable ECOMSEARCH_USER_KEY wins.
    # Without either, recording events is refused (only the demo config ships a key)
    user_key: str | None = None
    half_life_days: float = 30.0
    # the taste evidence (engine.taste: impressions and clicks per facet value and rank) decays more slowly: a
    # brand or a price band is a lasting preference, and a month of it is too little evidence to read it from
    taste_half_life_days: float = 365.0
    # the in-session profile: the same engagements decayed with this half-life (minutes), so what a shopper did
    # in the last minutes counts at their next query (the session_cos / session features)
    session_minutes: float = 30.0
    # what a profile counts as seen (the exposure behind the user's own click rates): examined (the products at
    # and above the deepest engagement of each search, the same rule for the service's searches and for click
    # logs; engine.events.impressions) or shown (every logged impression)
    exposure: str = "examined"
    # events older than this are dropped (and profiles not updated for this long)
    retention_days: float = 365.0
    gains: dict[str, float] = field(default_factory=lambda: {"click": 1, "add_to_cart": 2, "purchase": 3})
    # facet values kept per facet in a profile (the weakest dropped)
    affinity_cap: int = 50
    bought_cap: int = 200
    price_bands: int = 5
    # smoothing of a product's click-through rate: (clicks + prior * ctr_all) / (impressions + prior)
    ctr_prior: float = 20.0
    # how often (seconds) a serving engine re-reads product statistics other processes recorded
    stats_refresh_seconds: float = 60.0
    # what counts in the product statistics every shopper's ranking reads (engine.events.CreditRule): one event
    # per user, product and type in each window of this many hours, and at most credits_per_user per window
    credit_window_hours: float = field(default=24.0, metadata=NOT_TRAINED)
    credits_per_user: int = field(default=200, metadata=NOT_TRAINED)
    # an event's timestamp may lie this far in the future (clock skew); older than retention_days or later is
    # refused (one event stamped in the year 9999 would otherwise outweigh a profile's whole history)
    future_skew_seconds: float = field(default=300.0, metadata=NOT_TRAINED)


@dataclass
class InterleaveConfig:
    """An online experiment between the serving ranker and a candidate (engine.experiments)."""

    # the candidate's ranker folder (e.g. the refused or not yet promoted `<ranker>.staging` of `make retrain`);
    # unset: no experiment
    candidate: str | None = None
    # the share of first-page searches in the experiment
    share: float = 0.1
    # team_draft: both rankers' lists interleaved in one page, clicks credited per team; ab: a share of shoppers
    # (by user, or by search when anonymous) sees the candidate's page
    mode: str = "team_draft"


@dataclass
class ServeConfig:
    """The HTTP service (engine.service, `make serve`)."""

    # merchandising rules kept in a file beside the config (read-only; engine.rules); those managed through
    # /rules and `python -m engine.rules_cli` live in <index_dir>/rules.json
    rules_file: Path | None = None
    # cross-encoder work of concurrent requests is gathered for up to this long and scored in one batch (0: off)
    batch_window_ms: float = 3.0
    max_batch_pairs: int = 1024
    # request bodies above this are refused (413)
    max_body_bytes: int = 1_000_000
    # a POST /events batch holds at most this many events
    max_events: int = 10_000
    # > 0: reload the engine when a rebuilt index is swapped in (checked this often); 0: only POST /admin/reload
    watch_seconds: float = 2.0
    # web origins whose pages may call the API from a browser (CORS), e.g. ["https://shop.example"]; requests
    # that change state from a page of any other origin are refused (docs/security.md)
    cors_origins: list[str] = field(default_factory=list)
    # every answered search is logged (what was shown, to whom) for learning from the traffic; written by a
    # background thread in batches of impression_batch; at most impression_queue wait (more are dropped, counted)
    log_impressions: bool = True
    impression_queue: int = 10_000
    impression_batch: int = 500
    interleave: InterleaveConfig = field(default_factory=InterleaveConfig)
    # the share of logged first-page searches (outside an experiment) shown in a random order: exploration, so
    # that `make retrain` can tell position from relevance (from pages always in the ranker's order the click
    # model cannot; docs/fine-tuning.md, the position trap); 0: off
    explore: float = 0.0


@dataclass
class QueryConfig:
    """Query understanding before retrieval (engine.understanding)."""

    rewrite: bool = True
    # which rules run, in this order: normalize, units, aliases, pinyin, typos
    rules: list[str] = field(default_factory=lambda: ["normalize", "units", "aliases", "pinyin", "typos"])
    # a word the catalog has in fewer titles than this is not a catalog word (pinyin, typos)
    min_df: int = 3
