"""Starting the service: ``python -m engine.service --config C [--port P] [--workers N] [--set S.F=V]``.

One process (the engine loaded and warmed up before the first client) or ``--workers N`` replicas on one port
(uvicorn's workers; replicas share the index folder, the Milvus collection and the event store, never memory).
Both run uvicorn with :class:`engine.service.http.JsonErrorH11Protocol`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from engine.service.app import create_app
from engine.service.http import ADMIN_ENV, MAX_REQUEST_HEAD, JsonErrorH11Protocol
from engine.types import EcomsearchError
from core.cli import command

log = logging.getLogger("ecomsearch.service")
SERVE_ENV = "ECOMSEARCH_SERVE"  # what each replica opens: {"config": path, "set": [overrides]}


# how uvicorn serves, for one process or replicas: no access log (query texts and user ids stay out of logs),
# malformed HTTP answered as JSON, request heads up to MAX_REQUEST_HEAD
SERVER = {"access_log": False, "http": JsonErrorH11Protocol, "h11_max_incomplete_event_size": MAX_REQUEST_HEAD}


def serving_app(config, overrides: list[str]):
    """The engine a config (and ``--set`` overrides) describes, warmed up (first-call costs: ranker, event
    store) before the first client, behind the app."""
    from engine.search import SearchEngine
    from core.config import parse_overrides

    engine = SearchEngine.from_config(config, **parse_overrides(overrides))
    app = create_app(engine)
    engine.query(engine.products.titles[0], k=10)
    if engine.cfg.suggest.enabled:
        from indexer.store import IndexLoadError

        try:
            engine.suggester().load_logged()  # the searches logged before this start count in suggestions
        except IndexLoadError as e:  # an index built before suggestions existed: search serves, /suggest says why
            logging.getLogger("ecomsearch.service").warning("no query suggestions until `make index`: %s", e)
    return app


def replica_app():
    """One replica (uvicorn ``--workers``/``factory``): the app the supervisor described in ``ECOMSEARCH_SERVE``.
    Replicas share nothing in memory: the index folder, the Milvus collection and the event store are shared, so
    any replica answers any request."""
    spec = json.loads(os.environ[SERVE_ENV])
    return serving_app(spec["config"], spec.get("set", []))


def serve_replicas(args, overrides: list[str]) -> int:
    """``--workers N``: N replica processes on one port (uvicorn's workers; the kernel spreads connections)."""
    import uvicorn

    from core.config import load_config, parse_overrides

    cfg = load_config(args.config, **parse_overrides(overrides))
    if cfg.search.backend == "milvus":
        from indexer.backends.milvus import serve_lite

        uri = serve_lite(cfg)
        if uri:
            overrides = overrides + [f"search.milvus.uri={uri}"]
    if cfg.personal.store == "sqlite":
        log.warning(
            "replicas share the SQLite event store %s: one machine only (personal.store: postgres for several)",
            cfg.personal.path,
        )
    os.environ[SERVE_ENV] = json.dumps({"config": str(Path(args.config).resolve()), "set": overrides})
    print(f"ecomsearch: {cfg.name}, {args.workers} replicas on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(
        "engine.service.serve:replica_app",
        factory=True,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        **SERVER,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = command("engine.service", __doc__.split("\n")[0], overrides=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--log-level", default="warning")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="stateless engine replicas sharing the port, the index folder, the Milvus collection and the event store",
    )
    ap.add_argument(
        "--demo-admin-key",
        action="store_true",
        help=f"without {ADMIN_ENV} set: make a random admin "
        "key for this run and print it (`make serve` on the demo config)",
    )
    args = ap.parse_args(argv)
    if args.demo_admin_key and not os.environ.get(ADMIN_ENV):
        import secrets

        os.environ[ADMIN_ENV] = "demo-" + secrets.token_urlsafe(18)
        print(
            f"demo admin key for this run (POST /products, DELETE /users/..., POST /admin/reload): "
            f"Authorization: Bearer {os.environ[ADMIN_ENV]}",
            flush=True,
        )
    if args.workers > 1:
        try:
            return serve_replicas(args, list(args.set))
        except EcomsearchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        app = serving_app(args.config, args.set)
    except EcomsearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ecomsearch: {app.state.engine.cfg.name} on http://{args.host}:{args.port}/ (API docs: /docs)", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        **SERVER,
    )
    return 0
