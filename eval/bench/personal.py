"""`python -m eval.bench.personal --config configs/demo.yaml`: personalization speed (part of `make bench`).

On the config's built index (product vectors and groups from the dense index):

1. **Recording an event** (`UserEvents.record`: validation, HMAC, one SQLite
   transaction with the profile read-modify-write): p50/p99 over 2,000 events
   of 1,000 users, one at a time.
2. **Personal features + ranker** over 100 candidates of a real query for a
   warm user (`SearchEngine.features` + `Ranker.score` with the knob: two
   LightGBM passes), p50/p99 over 500 repetitions, against the same
   candidates without a user (one pass) as the in-run peer.
3. **Bulk ingestion** of 1,000,000 generated events (``--events``) from a
   JSONL click log (read, validate, hash, vectorized profiles, one
   transaction), against recording the first 20,000 of them one at a time
   (the peer, extrapolated per event); the profile size per user (stored
   bytes and in memory).

Writes ``reports/bench/personal.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from core.cli import command

EVENTS = ("impression", "click", "add_to_cart", "purchase")


def pct_ms(x) -> dict:
    """p50 and p99, in milliseconds, of durations in seconds."""
    x = np.asarray(x) * 1000
    return {"p50_ms": round(float(np.percentile(x, 50)), 3), "p99_ms": round(float(np.percentile(x, 99)), 3)}


def write_events(path: Path, n: int, product_ids: list[str], n_users: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    prods = rng.integers(0, len(product_ids), n)
    evs = rng.choice(4, size=n, p=[0.6, 0.3, 0.07, 0.03])
    # the 60 days before now: an event store refuses times outside its retention and the future
    ts = np.sort(time.time() - 61 * 86400 + rng.uniform(0, 60 * 86400, n))
    with open(path, "w", encoding="utf-8") as f:
        for u, p, e, t in zip(users.tolist(), prods.tolist(), evs.tolist(), ts.tolist()):
            f.write(
                f'{{"user_id": "user{u}", "query": "q{p % 997}", "product_id": "{product_ids[p]}", '
                f'"event": "{EVENTS[e]}", "timestamp": {t:.0f}}}\n'
            )


def time_record_events(ev, ids: list[str], rng: np.random.Generator, n: int = 2000) -> list[float]:
    """Seconds each of ``n`` engaging events takes to record (random users of 1,000, random products)."""
    lat = []
    for i in range(n):
        pid = ids[int(rng.integers(len(ids)))]
        t0 = time.perf_counter()
        ev.record(f"u{int(rng.integers(1000))}", pid, EVENTS[1 + int(rng.integers(3))], 1_767_225_600 + i)
        lat.append(time.perf_counter() - t0)
    return lat


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.personal", __doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--out", default="reports/bench/personal.json")
    args = ap.parse_args(argv)

    from engine.events import SQLiteEventStore, UserEvents
    from engine.profiles import ProfileSettings
    from engine.search import SearchEngine
    from core.config import load_config

    cfg = load_config(args.config, rerank={"depth": 80})  # deep enough for a 100-candidate union
    engine = SearchEngine.from_config(cfg)
    facets = engine.facets()
    ids = engine.products.ids.tolist()
    p = cfg.personal
    settings = ProfileSettings.from_config(p)
    result: dict = {"config": str(args.config), "products": len(ids)}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ev = UserEvents(SQLiteEventStore(tmp / "online.sqlite"), facets, ids, settings, "bench-key")
        result["record_event"] = pct_ms(time_record_events(ev, ids, rng))
        print(f"record_event: {result['record_event']}")

        # features + ranker for a warm user over 100 real candidates
        ranker = engine.ranker()
        if ranker is None:
            print("no rerank.ranker in the config: skipping the features + ranker timing", file=sys.stderr)
        else:
            for _ in range(60):
                ev.record("warm", ids[int(rng.integers(len(ids)))], "click", 1_767_225_600 + 3000)
            engine.use_events(ev)
            cand = engine.candidate_sets(["蓝牙耳机 降噪"], engine.live)[0]
            keep = np.arange(min(100, len(cand.rows)))
            for name in ("rows", "rrf", "first", "ce"):
                setattr(cand, name, getattr(cand, name)[keep])
            cand.stage_scores = {k: v[keep] for k, v in cand.stage_scores.items()}
            cand.stage_ranks = {k: v[keep] for k, v in cand.stage_ranks.items()}
            prof = ev.profile("warm")
            warm, cold = [], []
            for _ in range(500):
                t0 = time.perf_counter()
                X = engine.features(cand, prof)
                ranker.score(X, 1.0, warm=True)
                warm.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                X = engine.features(cand, None)
                ranker.score(X, 1.0, warm=False)
                cold.append(time.perf_counter() - t0)
            result["features_and_ranker"] = {
                "candidates": int(len(cand.rows)),
                "warm_user": pct_ms(warm),
                "no_user_peer": pct_ms(cold),
                "ratio_warm_to_peer": round(float(np.median(warm) / np.median(cold)), 2),
            }
            print(f"features + ranker over {len(cand.rows)} candidates: {result['features_and_ranker']}")

        log = tmp / "events.jsonl"
        t0 = time.perf_counter()
        write_events(log, args.events, ids, args.users)
        gen_s = time.perf_counter() - t0
        bulk = UserEvents(SQLiteEventStore(tmp / "bulk.sqlite"), facets, ids, settings, "bench-key")
        t0 = time.perf_counter()
        rep = bulk.ingest(log)
        bulk_s = time.perf_counter() - t0
        peer = UserEvents(SQLiteEventStore(tmp / "peer.sqlite"), facets, ids, settings, "bench-key")
        n_peer = min(20_000, args.events)
        t0 = time.perf_counter()
        with open(log, encoding="utf-8") as f:
            for _, line in zip(range(n_peer), f):
                r = json.loads(line)
                peer.record(r["user_id"], r["product_id"], r["event"], r["timestamp"], r["query"])
        peer_s = time.perf_counter() - t0
        con = bulk.store._con()
        n_prof, blob = con.execute("SELECT COUNT(*), AVG(LENGTH(data)) FROM profiles").fetchone()
        sample = [bulk.store.profile(u) for (u,) in con.execute("SELECT user FROM profiles LIMIT 200")]
        mem = np.mean(
            [
                (x.centroid.nbytes if x.centroid is not None else 0)
                + sum(64 + 80 * len(v) for v in x.affinities.values())
                + 60 * len(x.bought)
                + 200
                for x in sample
            ]
        )
        db_mb = sum(f.stat().st_size for f in tmp.glob("bulk.sqlite*")) / 2**20
        result["bulk_ingest"] = {
            "events": rep.recorded,
            "users": rep.users,
            "seconds": round(bulk_s, 1),
            "events_per_second": round(rep.recorded / bulk_s),
            "generate_seconds": round(gen_s, 1),
            "peer_one_at_a_time_events_per_second": round(n_peer / peer_s),
            "speedup_over_peer": round((rep.recorded / bulk_s) / (n_peer / peer_s), 1),
            "profiles": int(n_prof),
            "profile_bytes_stored_mean": round(float(blob or 0)),
            "profile_bytes_in_memory_mean": round(float(mem)),
            "database_mb": round(db_mb, 1),
            "vector_dim": int(facets.vectors.shape[1]),
        }
        print(f"bulk ingest: {result['bulk_ingest']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
