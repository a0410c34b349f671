"""`python -m eval.bench.impression_cost --config configs/demo.yaml`: what logging impressions adds to a search
(part of `make bench-serving`; writes ``reports/serving/impression_cost.json``).

The service over the config's engine, in process (FastAPI's test client, no network): every query is first
answered once (its candidates are then cached, so what remains per request is small and steady), then each query
is asked with ``log=false`` and with logging, alternately, for several rounds.  Reported: p50/p99 of both, the
p50 difference, the cost of the logging code itself (building the impression and queueing it), and that every
logged search reached the store.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from core.cli import command, load
from eval.bench.personal import pct_ms


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.impression_cost", __doc__, overrides=True)
    ap.add_argument("--n", type=int, default=200, help="distinct queries")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="reports/serving/impression_cost.json")
    args = ap.parse_args(argv)

    from fastapi.testclient import TestClient

    from core.formats.judged import read_queries
    from engine.search import SearchEngine
    from engine.service import create_app
    from engine.service.http import Keys

    cfg = load(args)
    engine = SearchEngine.from_config(cfg)
    texts = list(dict.fromkeys(read_queries(cfg.eval.queries).texts.values()))[: args.n]
    app = create_app(engine, watch=False, keys=Keys())
    client, log = TestClient(app), app.state.impressions
    for t in texts:  # candidates cached: what is left per request is the service and, with log, the logging
        client.get("/search", params={"q": t, "log": "false"})
    before = log.logged
    off, on = [], []
    for _ in range(args.rounds):
        for t in texts:
            for flag, into in (("false", off), ("true", on)):
                t0 = time.perf_counter()
                r = client.get("/search", params={"q": t, "log": flag})
                into.append(time.perf_counter() - t0)
                assert r.status_code == 200
    log.flush(60)
    from engine.events import Impression, new_search_id

    res = engine.query(texts[0])
    t0 = time.perf_counter()
    for _ in range(2000):  # the logging code alone: build the record, queue it
        Impression(new_search_id(), time.time(), None, res.query, res.searched, {}, 10, 0, [h.product_id for h in res])
    build_us = (time.perf_counter() - t0) / 2000 * 1e6
    result = {
        "config": str(args.config),
        "queries": len(texts),
        "requests_each": len(on),
        "log_false": pct_ms(off),
        "log_true": pct_ms(on),
        "p50_added_ms": round(float(np.percentile(on, 50) - np.percentile(off, 50)) * 1000, 3),
        "impression_build_us": round(build_us, 1),
        "logged": log.logged - before,
        "dropped": log.dropped,
        "failed": log.failed,
    }
    print(json.dumps(result, ensure_ascii=False))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
