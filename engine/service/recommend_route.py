"""``GET /recommend``: recommendations beside search (:meth:`engine.search.SearchEngine.recommend`)."""

import logging
from typing import Annotated

from core.types import id_problem
from engine.service.http import ApiError, query_filters

log = logging.getLogger("ecomsearch.service")
RECOMMEND_PARAMS = {"kind", "product", "user", "q", "k", "category", "brand", "price_min", "price_max", "explain"}


def add_recommend_route(app, engine, dependencies) -> None:
    """Register ``GET /recommend?kind=...&product=...&user=...&q=...&k=...`` (filters as ``/search``); a bad
    argument is a 422 naming it (the app's :class:`engine.types.QueryError` handler)."""
    from fastapi import Query, Request

    @app.get("/recommend", summary="Similar, bought together, for you, trending", dependencies=dependencies)
    def recommend(
        request: Request,
        kind: str | None = None,
        product: str | None = None,
        user: str | None = None,
        q: str | None = None,
        k: int = 10,
        category: Annotated[list[str] | None, Query()] = None,
        brand: Annotated[list[str] | None, Query()] = None,
        price_min: float | None = None,
        price_max: float | None = None,
        explain: bool = False,
    ):
        unknown = sorted(set(request.query_params) - RECOMMEND_PARAMS)
        if unknown:
            raise ApiError(422, unknown[0], f"unknown parameter; use {', '.join(sorted(RECOMMEND_PARAMS))}")
        if kind is None:
            raise ApiError(422, "kind", "missing: similar, bought_together, for_you or trending")
        if user is not None and (problem := id_problem(user)):
            raise ApiError(422, "user", problem)
        filters = query_filters(category, brand, price_min, price_max) or None
        res = engine.recommend(kind, product, user, q, k, filters, explain)
        out = res.to_dict()
        out["versions"] = engine.versions()
        return out


def weak_block(engine, res, user: str | None, q: str, k: int = 10) -> dict | None:
    """For a first page with few or weak results: recommendations from the query relaxed (each of its words
    may match: BM25 over the text, with its complements) and the shopper's history, without the filters
    that narrowed the search; None when the results are fine."""
    reason = weak_reason(res, engine.cfg.recs)
    if reason is None:
        return None
    shown = {h.product_id for h in res.hits}
    try:
        rec = engine.recommend("for_you", user_id=user, query=q, k=k + len(shown))
    except Exception:  # the search is answered even when its recommendations cannot be
        log.exception("recommendations for a weak search failed")
        return None
    block = rec.to_dict()
    block["hits"] = [h for h in block["hits"] if h["product_id"] not in shown][:k]
    return {"reason": reason, **block}


def weak_reason(result, cfg) -> str | None:
    """Why a search's results are weak enough to add recommendations below them (None: they are not): fewer
    hits than ``recs.weak_min_hits`` (a narrow filter, a rare query), or a best final score under
    ``recs.weak_score`` where the config sets one (scores are the ranker's, so the threshold is per model)."""
    if result.offset > 0:
        return None  # only the first page gets the block
    if len(result.hits) < cfg.weak_min_hits:
        return f"few results ({len(result.hits)} < {cfg.weak_min_hits})"
    if cfg.weak_score is not None and result.hits[0].score < cfg.weak_score:
        return f"weak results (best score {result.hits[0].score:.3f} < {cfg.weak_score})"
    return None
