"""The HTTP search service (FastAPI on uvicorn): `make serve CONFIG=... [PORT=8000]`.

Thin: every endpoint calls :class:`engine.search.SearchEngine`.  Endpoints:

- ``GET /search?q=&k=&offset=&user=&category=&brand=&price_min=&price_max=&explain=&personalize=``:
  ``{"hits": [{"product_id", "title", "score", "rank"[, "explain"]}], "timings_ms", "versions", ...}``
- ``POST /events``: one event ``{"user_id", "product_id", "event"[, "timestamp"][, "query"]}``, a list of them,
  or ``{"events": [...]}``: all checked first, then recorded (nothing is stored when one is bad)
- ``DELETE /users/{id}``: forget a user (events and profile)
- ``POST /products`` (catalog rows, as the JSONL catalog format) and ``DELETE /products/{id}``
- ``POST /admin/reload``: switch to a rebuilt index / changed models (also done by a watcher every
  ``serve.watch_seconds``)
- ``GET /health`` (the process answers), ``GET /ready`` (indexes and models loaded: 200, else 503),
  ``GET /metrics`` (Prometheus text), ``GET /docs`` (OpenAPI), ``GET /`` (a search page)

Errors are JSON ``{"error": {"param": ..., "message": ...}}``: 400 malformed JSON or HTTP, 401/403 a missing or
wrong key, 404 unknown product/route, 413 oversized body, 415 a body that is not JSON, 422 a bad parameter
(named); an unexpected failure is a 500 with an id, never a stack trace.  Keys, CORS and headers:
:mod:`engine.service.http` and docs/security.md.
Concurrent searches share the cross-encoder through dynamic micro-batching (:mod:`engine.batching`).

Modules: :mod:`~engine.service.app` (the routes), :mod:`~engine.service.http` (errors, keys, CORS, headers),
:mod:`~engine.service.metrics`, :mod:`~engine.service.page` (the search page), :mod:`~engine.service.serve` (the
process and its replicas; ``python -m engine.service``).
"""

from engine.service.app import REPLICA, create_app

__all__ = ["REPLICA", "create_app"]
