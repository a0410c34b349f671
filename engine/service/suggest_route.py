"""``GET /suggest``: query suggestions as the shopper types (:meth:`engine.search.SearchEngine.suggest`)."""

import logging

from core.types import id_problem
from engine.service.http import ApiError

log = logging.getLogger("ecomsearch.service")
SUGGEST_PARAMS = {"q", "k", "user"}


def add_suggest_route(app, engine, dependencies, impressions=None) -> None:
    """Register ``GET /suggest?q=...&k=...&user=...``; the searches the service logs (``impressions``, an
    :class:`engine.service.impressions.ImpressionLog`) count towards suggestion popularity as they are written."""
    from fastapi import Request

    @app.get(
        "/suggest", summary="Query suggestions for a typed prefix (characters or pinyin)", dependencies=dependencies
    )
    def suggest(request: Request, q: str | None = None, k: int = 8, user: str | None = None):
        unknown = sorted(set(request.query_params) - SUGGEST_PARAMS)
        if unknown:
            raise ApiError(422, unknown[0], f"unknown parameter; use {', '.join(sorted(SUGGEST_PARAMS))}")
        if not engine.cfg.suggest.enabled:
            raise ApiError(404, None, "this service has no query suggestions (suggest.enabled is false)")
        if q is None:
            raise ApiError(422, "q", "missing: the text typed so far")
        if len(q) > 100:
            raise ApiError(422, "q", f"too long ({len(q)} characters; at most 100)")
        if user is not None and (problem := id_problem(user)):
            raise ApiError(422, "user", problem)
        return {"q": q, "suggestions": [s.to_dict() for s in engine.suggest(q, k, user)]}

    if impressions is not None and engine.cfg.suggest.enabled:

        def count(items) -> None:
            sug = engine.suggester()
            for imp in items:
                sug.observe(imp.query)

        impressions.listeners.append(count)
