"""`SearchEngine`: query → candidates from each configured stage → fusion → rerank → rank (personal) → hits.

Stages: ``bm25`` (keyword), ``dense`` (the config's bi-encoder over a FAISS
index), ``dense-base`` (the zero-shot base model, for evaluation), ``hybrid``
(bm25 and dense merged by reciprocal rank fusion) and ``rerank`` (the union of
the bm25 and dense candidates, ``rerank.depth`` each, ordered by the
fine-tuned cross-encoder, its score combined with the fusion score as
``rerank.weight`` says; below them the rest of the hybrid list).
`query()` fuses the configured stages and reranks when the config names a
cross-encoder (``rerank.model``); with a learned ranker (``rerank.ranker``)
the final order comes from it, over the features of :mod:`engine.features`
including the user's personal features (:mod:`engine.events`,
:mod:`engine.profiles`, :mod:`engine.ranker`).

Concurrency and change: a :class:`SearchEngine` answers from one
:class:`engine.version.IndexVersion` (the indexes opened from their resolved build folders,
the models, the deleted-products mask).  Each call takes the current version
once and finishes on it; :meth:`SearchEngine.reload` opens a rebuilt index or
changed models beside the running ones and swaps the version in one
assignment, so queries in flight finish on the old one and none sees half of
each.  Models load under a lock; tokenizers are used by one thread at a time.
A product deleted by any process (``deleted.json``) is masked from the next
query on: every query checks the file's signature (one ``stat``).

The parts, each in its module: the first stages behind one interface (:mod:`engine.first_stages`: local
and Milvus), the models (:mod:`engine.models`), fusion (:mod:`engine.fusion`), the cross-encoder's
candidate sets (:mod:`engine.candidate_sets`), the final ranking (:mod:`engine.final_rank`), one query
call (:mod:`engine.query_run`), the version tying them (:mod:`engine.version`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.features import Candidates
from engine.models import build_id
from engine.types import Hit, QueryResult, SearchResult
from engine.understanding import QueryRewriter, Rewrite
from engine.rule_book import rule_book
from engine.rules_apply import recount_suggestions, ruled_query
from engine.version import IndexVersion
from indexer.bm25 import BM25Index
from core.config import Config, ConfigError, load_config
from indexer.store import IndexLoadError, stage_folder, try_recover, version_root


# -- opening a version ----------------------------------------------------------------------------------------
def open_bm25(cfg: Config, verify: bool = True, tokenizer=None) -> tuple[BM25Index, Path]:
    """The BM25 index (and product table) of the serving version, and that version's folder
    (``<index_dir>/current`` resolved once: the other stages are opened from the same version)."""
    link = cfg.index_dir / "bm25"
    root = version_root(cfg.index_dir)
    try:
        bm25 = BM25Index.load(
            stage_folder(cfg.index_dir, "bm25", root),
            cfg.text,
            config_hash=cfg.index_fingerprint(),
            verify=verify,
            tokenizer=tokenizer,
        )
        return bm25, root
    except IndexLoadError:
        catalog = cfg.catalog.path
        if catalog is not None and not Path(catalog).is_file():
            raise ConfigError(
                f"{cfg.source or cfg.name}: catalog.path {catalog} not found (the index at {link} "
                "was built from another catalog or settings); fix the path, or rebuild with "
                "`make index`"
            ) from None
        raise


class SearchEngine:
    """Answers queries from the indexes `make index` built for a config (thread-safe; see the module doc).

    Each call below is answered by the version current when it starts; take :attr:`version` once to make
    several calls on one version."""

    def __init__(
        self, cfg: Config, bm25: BM25Index, verify: bool = True, load_models: bool = True, root: Path | None = None
    ):
        self._version = IndexVersion(cfg, bm25, verify, load_models, root=root)
        self._reload_lock = threading.Lock()
        self._batching = None
        self.load_models = load_models
        self._passage_encoders = {}  # stage -> the encoder added products are embedded with
        self._recommender = None  # (version, models signature, Recommender), built at the first recommend
        # the ledger of forgotten users (engine.forgotten) as the suggester last counted, and that suggester
        self._forget_seen: tuple = (None, None)
        self._rec_lock = threading.Lock()
        self._suggester = None  # (version, Suggester), loaded at the first suggest
        self.rules = rule_book(cfg)  # merchandising rules (engine.rules), re-read when they change

    @classmethod
    def from_config(
        cls, path: str | Path | Config, verify: bool = True, load_models: bool = True, **overrides
    ) -> "SearchEngine":
        """Load the engine for a config file (or an already loaded :class:`Config`).

        Fails with a clear error if an index is missing, corrupt, from another
        format version, built with other settings than the config's, or (dense)
        built with another encoder.  ``load_models=False`` defers loading the
        models to their first use (event ingestion needs none).
        """
        cfg = path if isinstance(path, Config) else load_config(path, **overrides)
        try_recover(cfg.index_dir)  # an index left half-updated by a killed process: back to its last version
        bm25, root = open_bm25(cfg, verify)
        return cls(cfg, bm25, verify=verify, load_models=load_models, root=root)

    @property
    def version(self) -> IndexVersion:
        """The version answering queries now (take it once to make several calls on one version)."""
        return self._version

    def query(
        self,
        text: str,
        k: int = 10,
        offset: int = 0,
        filters: dict | None = None,
        mask: np.ndarray | None = None,
        user_id: str | None = None,
        personalize: float = 1.0,
        explain: bool = False,
        variant: str | None = None,
        facets: Sequence[str] | None = None,
    ) -> QueryResult:
        """Ranked hits ``offset+1 .. offset+k`` for a query, with per-step timings and the versions that answered.

        ``filters`` restricts results by category, brand or price range;
        ``mask`` (one bool per product row) is the general form.  Both are
        applied inside each stage's retrieval, before its top-k cut.
        ``user_id`` personalizes the order with the learned ranker's personal
        features, scaled by ``personalize`` (0 = off, 1 = full); no user, an
        unknown user or one with no events get exactly the non-personalized
        ranking.  ``explain=True`` gives each hit its stage scores and ranks,
        cross-encoder score, personal features and final score.
        ``variant="candidate"`` ranks with the online experiment's candidate
        ranker (``serve.interleave.candidate``) instead of the serving one.
        The text is cleaned (:mod:`engine.query_input`); a query with nothing to
        search for gets no hits and a ``reason``.  Bad arguments raise
        :class:`engine.types.QueryError` naming the parameter.  ``facets`` (category, brand, price) adds
        disjunctive counts over the query's matching set (:mod:`engine.facets`).
        """
        from engine.facets import check_facets, facet_counts

        names = check_facets(facets)
        v = self._version
        args = (filters, mask, user_id, personalize, explain, variant)
        run = lambda kk, off: v.query(text, kk, off, *args)  # noqa: E731
        res = ruled_query(v, self.rules, text, k, offset, filters, mask, run, explain)
        if names and not res.reason:
            res.facets = facet_counts(v, res.searched or res.query, filters, names)
            res.timings_ms["facets"] = res.facets["ms"]
        return res

    def query_batch(
        self,
        texts: Sequence[str],
        k: int = 10,
        offset: int = 0,
        filters: dict | None = None,
        mask: np.ndarray | None = None,
        user_ids: Sequence[str | None] | None = None,
        personalize: float = 1.0,
        explain: bool = False,
        variant: str | None = None,
    ) -> list[QueryResult]:
        """:meth:`query` for several texts at once: dense queries encoded in one batch and every query's
        cross-encoder pairs scored in one run (``user_ids``: one per text, or None)."""
        return self._version.query_batch(texts, k, offset, filters, mask, user_ids, personalize, explain, variant)

    def enable_batching(self, window_ms: float, max_pairs: int) -> None:
        """Gather the cross-encoder pairs of concurrent queries (the service turns this on); kept across reloads."""
        self._batching = (window_ms, max_pairs)
        self._version.enable_batching(window_ms, max_pairs)

    def add_products(self, catalog, progress: bool = False) -> dict:
        """Add new products (a validated :class:`core.formats.catalog.Catalog`) to every stage without a rebuild, and
        switch to the version that holds them: searchable when this returns.  The titles are embedded with the
        encoders this engine already holds (loaded once, kept across adds), so adding one product costs encoding
        one title.  Returns :func:`indexer.updates.add_products`'s report with ``versions``."""
        from indexer.updates import add_products

        report = add_products(
            self.cfg, catalog, progress, encoders=self._encoders_for_adding(), tokenizer=self._version.bm25.tokenizer
        )
        report["versions"] = self.reload()["versions"]
        return report

    def _encoders_for_adding(self) -> dict:
        """stage -> passage encoder of every dense stage served: the loaded one where it embeds passages (torch),
        else one loaded at the first add and kept while the stage's model stays the same."""
        from indexer.dense import dense_encoder

        out = {}
        for stage, (enc, _) in list(self._version.models.dense.items()):
            if hasattr(enc, "encode_passages"):
                out[stage] = enc
                continue
            kept = self._passage_encoders.get(stage)
            if kept is None or kept.fingerprint != enc.fingerprint:
                kept = self._passage_encoders[stage] = dense_encoder(self.cfg, stage)
            out[stage] = kept
        return out

    def reload(self) -> dict:
        """Open the indexes the ``<index_dir>`` links point at now and the config's models, beside the running
        version, and switch to them in one step when anything changed (unchanged models are shared, not
        reloaded).  Queries in flight finish on the version they started on.  On any error the running version
        stays and the error is raised.  Returns ``{"changed": bool, "versions": ...}``."""
        with self._reload_lock:
            old = self._version
            if not self.stale():
                return {"changed": False, "versions": old.versions()}
            bm25, root = open_bm25(old.cfg, old.verify, old.bm25.tokenizer)
            new = IndexVersion(
                old.cfg, bm25, old.verify, self.load_models, previous=old, number=old.number + 1, root=root
            )
            if self._batching:
                new.enable_batching(*self._batching)
            self._version = new
            return {"changed": True, "versions": new.versions()}

    def stale(self) -> bool:
        """Whether a rebuilt index was swapped in (or a model changed) since the running version opened."""
        v = self._version
        if build_id(stage_folder(v.cfg.index_dir, "bm25")) != v.bm25.manifest.get("build_id"):
            return True
        return v.models.stale()

    def delete(self, product_ids: Sequence[str]) -> int:
        """Delete products from every stage at once: no query started after this returns shows them."""
        return self._version.delete(product_ids)

    # -- answered by the current version (see engine.version.IndexVersion) ----------------------------------------
    @property
    def cfg(self) -> Config:
        return self._version.cfg

    @property
    def bm25(self) -> BM25Index:
        return self._version.bm25

    @property
    def products(self):
        """The product table (ids, titles, categories, brands, prices) of the current version."""
        return self._version.products

    @property
    def live(self) -> np.ndarray | None:
        """One bool per product row, False for deleted products (None: nothing deleted)."""
        return self._version.live

    def retrieve(self, text: str, k: int = 10, stage: str = "bm25", mask: np.ndarray | None = None) -> SearchResult:
        """Rows and scores of one stage's top-k (:meth:`IndexVersion.retrieve`)."""
        return self._version.retrieve(text, k, stage, mask)

    def retrieve_many(self, texts: Sequence[str], k: int, stage: str) -> list[SearchResult]:
        """Batch retrieval for evaluation (:meth:`IndexVersion.retrieve_many`)."""
        return self._version.retrieve_many(texts, k, stage)

    def understand(self, text: str) -> Rewrite:
        """What the engine searches for ``text``."""
        return self._version.understand(text)

    def rewriter(self) -> QueryRewriter:
        return self._version.rewriter()

    def candidates_many(self, texts: Sequence[str], mask: np.ndarray | None = None, **kw) -> list[SearchResult]:
        """What the cross-encoder reranks, per query (:meth:`IndexVersion.candidates_many`)."""
        return self._version.candidates_many(texts, mask, **kw)

    def stage_candidates(self, texts: Sequence[str], mask: np.ndarray | None, **kw) -> list:
        """Per query: the fused union, the stages' top lists and full lists (:meth:`IndexVersion.stage_candidates`)."""
        return self._version.stage_candidates(texts, mask, **kw)

    def candidate_sets(
        self, texts: Sequence[str], mask: np.ndarray | None = None, deep: int = 0, timings: dict | None = None
    ) -> list[Candidates]:
        """Per query: the candidates with stage and cross-encoder scores (:meth:`IndexVersion.candidate_sets`)."""
        return self._version.candidate_sets(texts, mask, deep, timings)

    def features(self, cand: Candidates, profile=None, now: float | None = None) -> np.ndarray:
        """The ranker's feature rows of one query's candidates for a user (:meth:`IndexVersion.features`)."""
        return self._version.features(cand, profile, now)

    def rank_candidates(self, cand: Candidates, k: int, profile=None, personalize: float = 1.0, **kw):
        """The final order of one query's candidates (:meth:`IndexVersion.rank_candidates`)."""
        return self._version.rank_candidates(cand, k, profile, personalize, **kw)

    def dense_stage(self, stage: str):
        """The encoder and FAISS index of a dense stage."""
        return self._version.dense_stage(stage)

    def cross_encoder(self):
        return self._version.cross_encoder()

    def ranker(self):
        return self._version.ranker()

    def score_pairs(self, queries: Sequence[str], titles: Sequence[str]) -> np.ndarray:
        return self._version.score_pairs(queries, titles)

    def milvus(self):
        return self._version.milvus()

    def facets(self):
        """Per product row: vector, category, brand, k-means group, price band."""
        return self._version.facets()

    def user_events(self):
        """The event store with profiles (``personal``)."""
        return self._version.user_events()

    def use_events(self, events) -> None:
        """Answer from this event store (benchmarks replaying events into an in-memory one)."""
        self._version.use_events(events)

    def record_event(self, user_id: str, product_id: str, event: str, timestamp=None, query: str | None = None):
        """Record a user's event; the user's next query sees it (:meth:`IndexVersion.record_event`)."""
        return self._version.record_event(user_id, product_id, event, timestamp, query)

    def recommend(
        self,
        kind: str,
        product_id: str | None = None,
        user_id: str | None = None,
        query: str | None = None,
        k: int = 10,
        filters: dict | None = None,
        explain: bool = False,
    ):
        """Recommendations of ``kind`` — ``similar`` / ``bought_together`` (need ``product_id``), ``for_you``
        (``user_id``, optionally the ``query`` being typed), ``trending`` — as :class:`engine.recommend.
        Recommendations` (hits, what produced them in ``source``, timings); ``filters`` as in :meth:`query`,
        deleted products never.  ``explain=True`` gives each hit its parts' scores.  Bad arguments raise
        :class:`engine.recommend.RecommendError` naming the parameter (see :mod:`engine.recommend`)."""
        hide = self.rules.hidden_everywhere()
        return self.recommender().recommend(kind, product_id, user_id, query, k, filters, explain, hide)

    def suggest(self, prefix: str, k: int = 8, user_id: str | None = None):
        """Query suggestions for what the shopper has typed — characters, pinyin, initials or a mix
        (:class:`engine.suggest.Suggestion` list, best first; :mod:`engine.suggest`)."""
        out = self.suggester().suggest(prefix, k, user_id)
        hidden = self.rules.hidden_everywhere()
        if hidden:  # rules hide products everywhere: offered suggestions still find min_hits without them
            sc = self.cfg.suggest
            out = recount_suggestions(self._version, out, hidden, sc.min_match, sc.min_hits)
        return out

    def known_product(self, product_id: str) -> bool:
        """Whether a product id is in the serving index (deleted or not)."""
        return product_id in self.products.row_map()

    def suggester(self):
        """The :class:`engine.suggest.Suggester` of the version answering now (its ``suggest`` stage); a reload
        keeps the searches counted online."""
        from engine import forgotten
        from engine.suggest import load_suggester

        v, held = self._version, self._suggester
        if held is None or held[0] is not v:
            with self._rec_lock:
                held = self._suggester
                if held is None or held[0] is not v:
                    self._suggester = held = (v, load_suggester(v, held[1] if held is not None else None))
        gone = forgotten.signature(v.cfg)
        seen, counted_by = self._forget_seen
        if counted_by is not held[1]:  # a new suggester: the ledger as it is now
            self._forget_seen = (gone, held[1])
        elif gone != seen:  # a user was forgotten (by any process): their searches leave the counts
            self._forget_seen = (gone, held[1])
            held[1].reload_logged()
        return held[1]

    def recommender(self):
        """The :class:`engine.recommend.Recommender` of the version answering now, rebuilt when the version or
        the recommendation models (``recs.models``; `make retrain` swaps them) changed."""
        from engine import forgotten
        from engine.recommend import Recommender
        from engine.recs import load as load_recs, models_dir, signature

        v = self._version
        cfg = v.cfg.recs
        path = models_dir(v.cfg)
        sig = (signature(path), forgotten.signature(v.cfg))
        held = self._recommender
        if held is not None and held[0] is v and held[1] == sig:
            return held[2]
        with self._rec_lock:
            held = self._recommender
            if held is None or held[0] is not v or held[1] != sig:
                models = load_recs(path, v.products.ids.tolist()) if sig[0] is not None else None
                paused = None
                if models is not None and sig[1] is not None:
                    built = float(models.card.get("built_at", 0.0))
                    if forgotten.latest(v.cfg) >= built:
                        paused = (
                            "behaviour models paused: a user was forgotten after they were built; "
                            "`make retrain` or `python -m finetune.recs` builds them without that user"
                        )
                if held is not None:
                    held[2].detach()
                self._recommender = held = (v, sig, Recommender(v, models, cfg, paused=paused))
            return held[2]

    def forget_user(self, user_id: str) -> int:
        """Delete every event and the profile of a user; returns the number of events deleted.  A user who had
        events or logged searches goes into the ledger of forgotten users (:mod:`engine.forgotten`):
        recommendation models built before pause, trending and the suggestions' live counts are read again
        without them, and the final ranker's query clicks lose their share at once."""
        from engine import forgotten

        v = self._version
        ue = v.user_events()
        key = ue.user_key(user_id, for_write=True)
        events, searches = ue.store.recent(key, 1, 1)  # anything of theirs in the store, before it goes
        changed = forgotten.forget_query_clicks(v.cfg, ue.store, key) if searches else 0
        n = v.forget_user(user_id)
        if changed:
            v.models.reload_query_clicks()
        if n or events or searches:
            forgotten.record(v.cfg, key, time.time())
        return n

    def profile(self, user_id: str | None):
        return self._version.profile(user_id)

    def versions(self) -> dict[str, str]:
        """What answers a query now: the index builds, the models, the engine's version."""
        return self._version.versions()

    def hits(self, res: SearchResult, notes: list[dict] | None = None, first_rank: int = 1) -> list[Hit]:
        return self._version.hits(res, notes, first_rank)

    def query_many(self, texts: Sequence[str], k: int = 10) -> list[QueryResult]:
        return self._version.query_many(texts, k)
