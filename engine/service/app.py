"""The service's routes over one engine (:func:`create_app`): search, events, users, products, reload, health,
readiness, metrics and the page; the endpoints, their errors and the keys are described in :mod:`engine.service`."""

import contextlib
import logging
import math
import re
import tempfile
import threading
import time
import uuid
from typing import Annotated

from engine.service.http import (
    ApiError,
    Keys,
    check_json_body,
    check_origin,
    check_url,
    error_response,
    inline_script_hashes,
    parse_json,
    public,
    query_filters,
    security_headers,
)
from engine.service.event_intake import record_event_items
from engine.service.experiments import Experiment, experiment_report
from engine.service.impressions import ImpressionLog
from engine.service.metrics import Metrics
from engine.service.page import demo_users, page_html
from engine.service.recommend_route import add_recommend_route, weak_block
from engine.service.rules_route import add_rules_routes
from engine.service.suggest_route import add_suggest_route
from engine.types import EcomsearchError, QueryError
from core.types import id_problem

log = logging.getLogger("ecomsearch.service")
REPLICA = f"replica-{uuid.uuid4().hex[:8]}"  # opaque: tells replicas apart without naming the host or pid
SEARCH_PARAMS = {
    "q",
    "k",
    "offset",
    "user",
    "category",
    "brand",
    "price_min",
    "price_max",
    "explain",
    "personalize",
    "log",
    "facets",
}


def create_app(engine, watch: bool | None = None, keys: Keys | None = None):
    """The FastAPI app over one engine (micro-batching on; a reload watcher when ``serve.watch_seconds`` > 0).
    ``keys``: the API keys (default: from ``ECOMSEARCH_ADMIN_KEY`` / ``ECOMSEARCH_SEARCH_KEY``)."""
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    cfg = engine.cfg
    sc = cfg.serve
    metrics = Metrics()
    if cfg.rerank.model and sc.batch_window_ms > 0:  # 0: every request scores its own pairs
        engine.enable_batching(sc.batch_window_ms, sc.max_batch_pairs)
    metrics.version.set(engine.version.number)
    stop = threading.Event()
    impressions = (
        ImpressionLog(
            lambda items: engine.user_events().log_impressions(items),
            sc.impression_queue,
            sc.impression_batch,
            metrics,
        )
        if sc.log_impressions
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        stop.set()  # the index watcher ends with the app
        if impressions is not None:
            impressions.close()  # a graceful shutdown writes every queued impression

    app = FastAPI(
        title="ecomsearch",
        version="0.1.0",
        lifespan=lifespan,
        description="Product search: BM25 + dense candidates, cross-encoder rerank, personal ranking.",
    )
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.impressions = impressions
    experiment = Experiment(sc.interleave, sc.explore)
    keys = keys if keys is not None else Keys.from_env()
    state = {"ready": True, "users": None}
    roots = (cfg.root, cfg.index_dir, tempfile.gettempdir())  # never named in a message a client reads
    page_text = page_html()
    page_scripts = inline_script_hashes(page_text)
    if sc.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=sc.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )

    def admin(request: Request) -> None:
        keys.require_admin(request.headers.get("authorization"))

    def searcher(request: Request) -> None:
        keys.require_search(request.headers.get("authorization"))

    ADMIN, SEARCH = [Depends(admin)], [Depends(searcher)]

    # -- errors: JSON naming the parameter, never a stack trace ------------------------------------------------
    @app.exception_handler(ApiError)
    async def _apierror_response(request, exc: ApiError):
        return error_response(exc.status, exc.param, public(exc.message, *roots), exc.headers)

    @app.exception_handler(QueryError)
    async def _queryerror_response(request, exc: QueryError):
        return error_response(422, exc.param, exc.reason)

    @app.exception_handler(EcomsearchError)
    async def _inputerror_response(request, exc: EcomsearchError):
        from engine.events import EventError, PrivacyError

        if isinstance(exc, PrivacyError):
            return error_response(403, "user_id", str(exc))
        if isinstance(exc, EventError):  # a bad user id, product id, event or time wherever it arrives
            field = re.search(r"field '(\w+)'", str(exc))
            return error_response(422, field.group(1) if field else None, public(str(exc), *roots))
        return _unexpected_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body")]
        if err.get("type") == "json_invalid":
            return error_response(400, "body", f"malformed JSON: {err.get('msg', '')}")
        return error_response(422, ".".join(loc) or None, str(err.get("msg", "invalid value")))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        return error_response(exc.status_code, None, str(exc.detail))

    def _unexpected_response(request, exc: BaseException):
        ref = uuid.uuid4().hex[:12]
        log.error("request %s failed (error id %s)", request.url.path, ref, exc_info=exc)
        return error_response(500, None, "internal error; the server log has the details", error_id=ref)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0 = time.perf_counter()
        length = request.headers.get("content-length")
        try:
            if length is not None:
                if not length.isdigit():
                    raise ApiError(400, "content-length", f"not a number: {length[:40]!r}")
                if int(length) > sc.max_body_bytes:
                    raise ApiError(413, "body", f"{int(length):,} bytes; at most {sc.max_body_bytes:,}")
            check_url(request.scope.get("query_string", b""))
            check_origin(request.method, request.headers, sc.cors_origins)
            check_json_body(request.method, request.headers)
            response = await call_next(request)
        except ApiError as e:
            response = error_response(e.status, e.param, e.message, e.headers)
        except Exception as e:  # answered here, not re-raised: the connection stays usable (keep-alive)
            response = _unexpected_response(request, e)
        response.headers["X-Ecomsearch-Replica"] = REPLICA  # which of several replicas answered (opaque)
        security_headers(response)
        endpoint = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    async def json_body(request: Request, max_bytes: int):
        body = b""
        async for chunk in request.stream():  # a body without Content-Length is counted as it arrives
            body += chunk
            if len(body) > max_bytes:
                raise ApiError(413, "body", f"more than {max_bytes:,} bytes")
        if not body.strip():
            raise ApiError(400, "body", "empty; send JSON")
        return parse_json(body)

    async def json_items(request: Request, key: str, one: str) -> list:
        """The body as a list of objects: one object, a list of them, or ``{key: [...]}``."""
        body = await json_body(request, sc.max_body_bytes)
        items = body.get(key) if isinstance(body, dict) and key in body else body
        items = [items] if isinstance(items, dict) else items
        if not isinstance(items, list) or not items:
            raise ApiError(
                422,
                key,
                f'send {"an" if one[0] in "aeiou" else "a"} {one} object, a list of them, or {{"{key}": [...]}}',
            )
        return items

    # -- search ------------------------------------------------------------------------------------------------
    @app.get("/search", summary="Search the catalog", dependencies=SEARCH)
    def search(
        request: Request,
        q: str | None = None,
        k: int = 10,
        offset: int = 0,
        user: str | None = None,
        category: Annotated[list[str] | None, Query()] = None,
        brand: Annotated[list[str] | None, Query()] = None,
        price_min: float | None = None,
        price_max: float | None = None,
        explain: bool = False,
        personalize: float = 1.0,
        log: bool = True,
        facets: Annotated[list[str] | None, Query()] = None,
    ):
        unknown = sorted(set(request.query_params) - SEARCH_PARAMS)
        if unknown:
            raise ApiError(422, unknown[0], f"unknown parameter; use {', '.join(sorted(SEARCH_PARAMS))}")
        if q is None:
            raise ApiError(422, "q", "missing: give the query text as q=")
        if not q.strip():
            raise ApiError(422, "q", "empty: give the query text as q=")
        filters = query_filters(category, brand, price_min, price_max, personalize=personalize)
        if user is not None and (problem := id_problem(user)):
            raise ApiError(422, "user", problem)
        args = {"text": q, "k": k, "offset": offset, "filters": filters or None, "user_id": user, "facets": facets}
        res, arm = experiment.search(engine, user, {**args, "personalize": personalize, "explain": explain})
        # a QueryError becomes a 422 naming the parameter
        for step, ms in res.timings_ms.items():
            if step not in ("pairs", "cache_hits") and isinstance(ms, float):
                metrics.stage.labels(step).observe(ms / 1000.0)
        if "cache_hits" in res.timings_ms:
            metrics.cache.labels("hit" if res.timings_ms["cache_hits"] else "miss").inc()
        out = res.to_dict()
        out["search_id"] = log_impression(res, user, filters, arm) if log and impressions is not None else None
        out["recommendations"] = weak_block(engine, res, user, q)  # never an empty page
        return out

    def log_impression(res, user: str | None, filters: dict, arm: str | None = None) -> str | None:
        """Queue what this search showed; its search id (None when the event store cannot take it)."""
        from engine.events import Impression, new_search_id

        try:
            ev = engine.user_events()
            imp = Impression(
                new_search_id(),
                ev.clock(),
                ev.user_key(user) if user is not None else None,
                res.query,
                res.searched,
                filters,
                res.k,
                res.offset,
                [h.product_id for h in res.hits],
                res.versions,
                arm,
                [h.relevance for h in res.hits],
            )
        except Exception:  # no usable event store (a bad file, a database down): the search is answered, not logged
            log.exception("the impression of a search could not be logged")
            metrics.impressions.labels("failed").inc()
            return None
        return imp.search_id if impressions.submit(imp) else None

    add_recommend_route(app, engine, SEARCH)
    add_suggest_route(app, engine, SEARCH, impressions)
    add_rules_routes(app, engine, ADMIN)

    @app.get("/experiments", summary="The online experiment's wins, ties and losses so far", dependencies=ADMIN)
    def experiments(days: float = 28.0):
        if not math.isfinite(days) or days <= 0:
            raise ApiError(422, "days", "must be a positive number of days")
        ev = engine.user_events()
        c = engine.cfg.serve.interleave
        return {
            "candidate": c.candidate,
            "mode": c.mode,
            "share": c.share,
            **experiment_report(ev, ev.clock() - days * 86400.0),
        }

    # -- events and users --------------------------------------------------------------------------------------
    @app.post("/events", summary="Record one event or a batch", status_code=200, dependencies=SEARCH)
    async def events(request: Request):
        items = await json_items(request, "events", "event")
        if len(items) > sc.max_events:
            raise ApiError(413, "events", f"{len(items):,} events; at most {sc.max_events:,} per request")
        return await _in_thread(record_events, items)  # validation and the SQLite write off the event loop

    def record_events(items: list) -> dict:
        return record_event_items(engine, impressions, items)

    @app.delete("/users/{user_id}", summary="Forget a user: every event, the profile, their counts", dependencies=ADMIN)
    def forget(user_id: str):
        if impressions is not None:  # their searches still queued are written (and folded) first, then deleted
            impressions.flush()
        return {"user": user_id, "events_deleted": engine.forget_user(user_id)}  # bad ids: EventError -> 422

    # -- products ----------------------------------------------------------------------------------------------
    @app.post("/products", summary="Add products (catalog rows); searchable when this returns", dependencies=ADMIN)
    async def add_products(request: Request):
        from core.formats.catalog import CatalogError, catalog_from_rows

        rows = await json_items(request, "products", "product")
        try:
            catalog = catalog_from_rows(rows)
        except CatalogError as e:
            first = e.errors[0] if e.errors else None
            param = f"products[{first.line - 1}]" + (f".{first.field}" if first.field else "") if first else "products"
            raise ApiError(422, param, first.reason if first else str(e)) from None
        try:
            report = await _in_thread(engine.add_products, catalog)
        except (ValueError, EcomsearchError) as e:  # already there; an index that cannot take additions
            raise ApiError(409, "products", str(e)) from None
        metrics.reloads.inc()
        metrics.version.set(engine.version.number)
        return {"added": report["added"], "versions": report["versions"]}

    @app.delete(
        "/products/{product_id}", summary="Delete a product; never returned once this returns", dependencies=ADMIN
    )
    def delete_product(product_id: str):
        problem = id_problem(product_id)
        if problem:
            raise ApiError(422, "product_id", problem)
        try:
            n = engine.delete([product_id])
        except KeyError:
            raise ApiError(404, "product_id", f"{product_id!r} is not in the index") from None
        return {"product_id": product_id, "deleted": bool(n)}

    # -- operations --------------------------------------------------------------------------------------------
    @app.post("/admin/reload", summary="Switch to a rebuilt index or changed models", dependencies=ADMIN)
    def reload():
        try:
            out = engine.reload()
        except EcomsearchError as e:
            raise ApiError(409, None, f"reload failed, the running version keeps serving: {e}") from None
        metrics.reloads.inc(int(out["changed"]))
        metrics.version.set(engine.version.number)
        return out

    @app.get("/health", summary="The process answers")
    def health():
        return {"status": "ok"}

    @app.get("/ready", summary="Indexes and models are loaded")
    def ready():
        v = engine.version
        loaded = {"bm25": True, **v.models.ready()}
        ok = state["ready"] and all(loaded.values())
        return JSONResponse({"ready": ok, "loaded": loaded, "versions": v.versions()}, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", dependencies=SEARCH)
    def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/facets", summary="Categories, brands and (demo) users for the search page", dependencies=SEARCH)
    def facets():
        if state["users"] is None:
            state["users"] = demo_users(engine)
        p = engine.products
        return {
            "categories": sorted(c for c in p.categories if c),
            "brands": sorted(b for b in p.brands if b),
            "users": state["users"],
            "config": cfg.name,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        response = HTMLResponse(page_text)
        security_headers(response, page=True, script_hashes=page_scripts)
        return response

    if watch if watch is not None else sc.watch_seconds > 0:

        def watcher():
            while not stop.wait(sc.watch_seconds):
                try:
                    if engine.stale():
                        out = engine.reload()
                        metrics.reloads.inc(int(out["changed"]))
                        metrics.version.set(engine.version.number)
                        log.info("reloaded: %s", out["versions"])
                except Exception:  # a half-written build: keep serving, try again next round
                    log.exception("reload failed; the running version keeps serving")

        threading.Thread(target=watcher, name="index-watcher", daemon=True).start()

    return app


async def _in_thread(fn, *args):
    import anyio

    return await anyio.to_thread.run_sync(lambda: fn(*args))
