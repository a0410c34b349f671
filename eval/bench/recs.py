"""`python -m eval.bench.recs --config C`: recommendation latency at a catalog's size (p50/p99 per call, 2 cores).

The whole API path (:meth:`engine.search.SearchEngine.recommend`, the event store read included) on the
config's built index, with recommendation models built from a **synthetic** event log written into a fresh
SQLite store: ``--users`` shoppers, each browsing ``--events`` products of two k-means groups of the catalog
(clicks, and carts or purchases of some), spread over 30 days.  Only the timing means anything here; the
quality of recommendations is `make eval-recs`'s.  Writes ``reports/bench/recs-<config>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core.cli import command, load, run


def synthetic_log(engine, n_users: int, n_events: int, seed: int = 0):
    """(users, rows, events, times) and click-log ``Event`` objects of synthetic shoppers."""
    from core.formats.clicklog import Event

    rng = np.random.default_rng(seed)
    groups = np.asarray(engine.facets().group)
    by_group = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}
    keys = list(by_group)
    ids = engine.products.ids
    now = time.time()
    out = []
    for u in range(n_users):
        pool = np.concatenate([by_group[keys[i]] for i in rng.choice(len(keys), size=2)])
        t = now - rng.uniform(0, 30) * 86400.0
        for r in rng.choice(pool, size=n_events):
            t += rng.uniform(10, 3600)
            event = "click" if rng.random() < 0.8 else ("add_to_cart" if rng.random() < 0.6 else "purchase")
            out.append(Event(f"b{u}", "bench", ids[int(r)], event, min(t, now)))
    out.sort(key=lambda e: e.timestamp)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.recs", __doc__, overrides=True)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--calls", type=int, default=300, help="calls per kind")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    def body():
        from core.formats.clicklog import write_clicklog
        from engine.search import SearchEngine
        from finetune.recs import build_and_save

        cfg = load(args)
        tmp = Path(tempfile.mkdtemp(prefix="bench-recs-"))
        cfg = dataclasses.replace(
            cfg,
            personal=dataclasses.replace(cfg.personal, path=tmp / "events.sqlite", user_key="bench-only"),
            recs=dataclasses.replace(cfg.recs, models=tmp / "recs", min_baskets=1),
        )
        engine = SearchEngine.from_config(cfg)
        p = engine.products
        log = synthetic_log(engine, args.users, args.events)
        write_clicklog(log, tmp / "clicks.jsonl")
        t0 = time.perf_counter()
        engine.user_events().ingest(tmp / "clicks.jsonl")
        ingest_s = time.perf_counter() - t0
        row_of = p.row_map()
        t0 = time.perf_counter()
        card = build_and_save(
            cfg.recs.models,
            p.ids.tolist(),
            [e.user_id for e in log],
            [row_of[e.product_id] for e in log],
            [e.event for e in log],
            [e.timestamp for e in log],
            cfg.recs,
            categories=(p.category_codes, p.categories),
        )
        build_s = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        engaged = np.unique([row_of[e.product_id] for e in log])
        res = {
            "config": str(cfg.source),
            "products": len(p),
            "events": len(log),
            "ingest_s": round(ingest_s, 1),
            "build_s": round(build_s, 1),
            "card": {k: v for k, v in card.items() if k != "settings"},
            "kinds": {},
        }
        engine.recommend("trending", k=10)  # the first call reads the trending counts
        for kind in ("similar", "bought_together", "for_you", "trending"):
            ms = []
            for _ in range(args.calls):
                kw = {"k": 10}
                if kind in ("similar", "bought_together"):
                    kw["product_id"] = p.ids[int(rng.choice(engaged))]
                elif kind == "for_you":
                    kw["user_id"] = f"b{int(rng.integers(args.users))}"
                t0 = time.perf_counter()
                engine.recommend(kind, **kw)
                ms.append((time.perf_counter() - t0) * 1000)
            ms = np.asarray(ms[10:])  # the first calls warm caches up
            res["kinds"][kind] = {
                "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "p99_ms": round(float(np.percentile(ms, 99)), 2),
            }
            print(f"{kind}: p50 {res['kinds'][kind]['p50_ms']} ms, p99 {res['kinds'][kind]['p99_ms']} ms")
        out = Path(args.out) if args.out else cfg.root / "reports" / "bench" / f"recs-{cfg.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out}")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
