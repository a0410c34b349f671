"""`make bench-scale` (`python -m eval.bench.scale`): the scale-out figures docs/scaling.md is derived from.

- **Index job on Ray**: titles per second through the whole build (tokenize, encode, bm25s, FAISS, k-means) of
  the demo catalog, single process against Ray Data with 1 and 2 workers (this machine's cores).
- **Milvus Lite against the local backend** at 20k titles (the WenTian catalog) and 200k (the WenTian titles
  recombined: each title with the second half of another, and vectors drawn around the real title embeddings:
  a real embedding plus small Gaussian noise, renormalized): insert rows/s into Milvus, query latency p50/p99
  of each first stage (BM25 k=100 over our tokens, dense FLAT k=100; real WenTian dev queries, one at a time),
  and bytes per product on disk for both backends.
- **Event stores**: recording one event and bulk ingestion on SQLite and on PostgreSQL.

Writes ``reports/bench/scale.json`` and ``scale.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from eval.bench.personal import pct_ms
from core.cli import command

ROOT = Path(__file__).resolve().parents[2]


def du(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build_throughput(workers: list[int], progress: bool) -> list[dict]:
    """The demo catalog's full index build (bm25 + dense): one process, then Ray Data with each worker count."""
    import ray

    from indexer.build import build_indexes
    from core.config import load_config
    from indexer.distributed import RayRunner

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in [0] + workers:
            c = dataclasses.replace(cfg, index_dir=Path(tmp) / f"w{w}")
            runner = RayRunner(w) if w else None
            t0 = time.perf_counter()
            built = build_indexes(c, progress=False, runner=runner)
            secs = time.perf_counter() - t0
            n = built[0].n_products
            out.append(
                {
                    "workers": w or "single process",
                    "titles": n,
                    "seconds": round(secs, 1),
                    "titles_per_s": round(n / secs, 1),
                    "stages": {b.stage: round(b.seconds, 1) for b in built},
                }
            )
            print(f"build {out[-1]['workers']}: {n} titles in {secs:.1f} s ({n / secs:.0f} titles/s)", flush=True)
            if runner is not None:
                ray.shutdown()
    return out


def synthetic_catalog(titles: list[str], vectors: np.ndarray, n: int, seed: int = 0):
    """``n`` titles and vectors: the real ones first, then recombinations around them."""
    rng = np.random.default_rng(seed)
    base = np.arange(n) % len(titles)
    other = rng.integers(0, len(titles), size=n)
    out_t = [
        titles[b] if i < len(titles) else f"{titles[b]} {titles[o][len(titles[o]) // 2 :]}"
        for i, (b, o) in enumerate(zip(base, other))
    ]
    v = np.asarray(vectors, dtype=np.float32)[base].copy()
    extra = np.arange(n) >= len(titles)
    v[extra] += rng.normal(scale=0.03, size=(int(extra.sum()), v.shape[1])).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return out_t, v


def backends(cfg, sizes: list[int], n_queries: int, progress: bool) -> list[dict]:
    import faiss

    from engine.search import SearchEngine
    from indexer.backends.milvus import build_collection
    from indexer.backends.milvus_search import MilvusStages
    from indexer.bm25 import BM25Index
    from core.formats.catalog import read_catalog
    from indexer.dense import DenseIndex

    eng = SearchEngine.from_config(cfg, load_models=False)
    encoder, dense = eng.version.dense_stage("dense")
    titles = eng.products.titles.tolist() if hasattr(eng.products.titles, "tolist") else list(eng.products.titles)
    queries = list(
        dict.fromkeys(line.split("\t")[1] for line in open(cfg.eval.queries, encoding="utf-8").read().splitlines()[1:])
    )[:n_queries]
    qvecs = encoder.encode_queries(queries)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    out = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            t_titles, vecs = synthetic_catalog(titles, dense.vectors, n)
            cat_path = tmp / "catalog.jsonl"
            with open(cat_path, "w", encoding="utf-8") as f:
                for i, t in enumerate(t_titles):
                    f.write(json.dumps({"id": f"S{i}", "title": t}, ensure_ascii=False) + "\n")
            catalog = read_catalog(cat_path)
            t0 = time.perf_counter()
            bm25 = BM25Index.build(catalog, cfg.text, cfg.bm25, progress=progress)
            bm25_build = time.perf_counter() - t0
            bm25.manifest = {"build_id": f"bench{n}"}
            local_dir = tmp / "local"
            local_dir.mkdir()
            bm25.save_to(local_dir)
            index = DenseIndex.build(vecs, "Flat")
            faiss.write_index(index, str(local_dir / "faiss.index"))
            dense_n = DenseIndex(index, {}, {"build_id": f"bench{n}"}, vectors=vecs.astype(np.float16))
            c = dataclasses.replace(
                cfg,
                index_dir=tmp / "idx",
                search=dataclasses.replace(
                    cfg.search,
                    milvus=dataclasses.replace(cfg.search.milvus, uri=str(tmp / "milvus.db"), collection=f"bench{n}"),
                ),
            )
            info = build_collection(c, bm25, dense_n, progress=progress)
            stages = MilvusStages.open(c, bm25, f"bench{n}")
            row = {
                "products": n,
                "bm25_build_s": round(bm25_build, 1),
                "milvus_insert_rows_per_s": round(info.rows_per_s),
                "milvus_build_s": round(info.seconds, 1),
            }
            for name, fn in (
                ("local_bm25", lambda i: bm25.search(queries[i], 100)),
                ("milvus_bm25", lambda i: stages.bm25_search(queries[i], 100)),
                ("local_dense", lambda i: dense_n.search(qvecs[i : i + 1], 100)),
                ("milvus_dense", lambda i: stages.dense_search(qvecs[i : i + 1], 100)),
            ):
                for i in range(min(5, len(queries))):
                    fn(i)  # warm-up
                times = []
                for i in range(len(queries)):
                    t = time.perf_counter()
                    fn(i)
                    times.append(time.perf_counter() - t)
                row[name] = pct_ms(times)
            overlap = []
            for i in range(len(queries)):
                a = dense_n.search(qvecs[i : i + 1], 10)[0].rows
                b = stages.dense_search(qvecs[i : i + 1], 10)[0].rows
                overlap.append(len(set(a) & set(b)) / max(1, len(a)))
            row["dense_top10_overlap"] = round(float(np.mean(overlap)), 4)
            row["bytes_per_product"] = {
                "local_bm25_and_faiss": round(du(local_dir) / n),
                "milvus_lite": round(sum(du(p) for p in tmp.glob("milvus.db*")) / n),
                "vector_fp32": int(vecs.shape[1] * 4),
            }
            print(json.dumps(row), flush=True)
            out.append(row)
            stages.client.drop_collection(stages.collection)
            shutil.rmtree(tmp / "idx", ignore_errors=True)
    return out


def event_stores(cfg_path: str, n_events: int, n_users: int) -> dict:
    """Recording one event (p50/p99) and bulk ingestion (events/s) on SQLite and on a real PostgreSQL server
    (pgserver), the demo catalog's products and facets."""
    import pgserver

    from engine.events import PostgresEventStore, SQLiteEventStore, UserEvents
    from engine.profiles import ProfileSettings
    from engine.search import SearchEngine
    from eval.bench.personal import time_record_events, write_events
    from core.config import load_config

    cfg = load_config(ROOT / cfg_path)
    engine = SearchEngine.from_config(cfg, load_models=False)
    facets, ids = engine.facets(), engine.products.ids.tolist()
    settings = ProfileSettings.from_config(cfg.personal)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        srv = pgserver.get_server(tmp / "pg", cleanup_mode="stop")
        log = tmp / "events.jsonl"
        write_events(log, n_events, ids, n_users)
        try:
            for name, make in (
                ("sqlite", lambda k: SQLiteEventStore(tmp / f"{k}.sqlite")),
                ("postgres", lambda k: PostgresEventStore(srv.get_uri(), f"bench_{k}")),
            ):
                ev = UserEvents(make("online"), facets, ids, settings, "bench-key")
                lat = time_record_events(ev, ids, np.random.default_rng(0))
                bulk = UserEvents(make("bulk"), facets, ids, settings, "bench-key")
                t0 = time.perf_counter()
                rep = bulk.ingest(log)
                secs = time.perf_counter() - t0
                out[name] = {
                    "record_event": pct_ms(lat),
                    "bulk_events": rep.recorded,
                    "bulk_users": rep.users,
                    "bulk_events_per_s": round(rep.recorded / secs),
                }
                print(f"events on {name}: {out[name]}", flush=True)
                ev.store.close()
                bulk.store.close()
        finally:
            srv.cleanup()
    return out


def write(out: Path, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    lines = [
        "# Scale-out figures (`python -m eval.bench.scale`)",
        "",
        f"Machine: {payload['machine']}.",
        "",
        "## Index job: single process against Ray Data workers",
        "",
        "| workers | titles | seconds | titles/s | per stage (s) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for b in payload.get("build", []):
        lines.append(f"| {b['workers']} | {b['titles']} | {b['seconds']} | {b['titles_per_s']} | {b['stages']} |")
    lines += [
        "",
        "## Milvus Lite against the local backend (k = 100, one query at a time)",
        "",
        "| products | stage | local p50 / p99 ms | Milvus p50 / p99 ms | Milvus insert rows/s | bytes/product "
        "local / Milvus |",
        "| ---: | --- | --- | --- | ---: | --- |",
    ]
    for r in payload.get("backends", []):
        for st in ("bm25", "dense"):
            lo, mv = r[f"local_{st}"], r[f"milvus_{st}"]
            bp = r["bytes_per_product"]
            lines.append(
                f"| {r['products']:,} | {st} | {lo['p50_ms']} / {lo['p99_ms']} | {mv['p50_ms']} / "
                f"{mv['p99_ms']} | {r['milvus_insert_rows_per_s']:,} | {bp['local_bm25_and_faiss']:,} / "
                f"{bp['milvus_lite']:,} |"
            )
    if payload.get("events"):
        lines += [
            "",
            "## Event stores (the demo catalog; PostgreSQL: a local server started by pgserver)",
            "",
            "| store | record one event p50 / p99 ms | bulk ingestion events/s |",
            "| --- | --- | ---: |",
        ]
        for name, e in payload["events"].items():
            lines.append(
                f"| {name} | {e['record_event']['p50_ms']} / {e['record_event']['p99_ms']} | "
                f"{e['bulk_events_per_s']:,} ({e['bulk_events']:,} events, {e['bulk_users']:,} users) |"
            )
    (out / "scale.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.scale", __doc__, "configs/wentian.yaml")
    ap.add_argument("--sizes", default="20000,200000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts for the build throughput ('' skips it)")
    ap.add_argument("--events", type=int, default=200_000, help="events for the event-store figures (0 skips)")
    ap.add_argument("--out", default="reports/bench")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    import platform

    from core.config import load_config

    cfg = load_config(args.config)
    if not (cfg.index_dir / "dense").exists():
        print(f"error: {cfg.index_dir}/dense is not built (make index CONFIG={args.config})", file=sys.stderr)
        return 2
    payload = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "config": args.config,
    }
    if args.workers:
        payload["build"] = build_throughput([int(w) for w in args.workers.split(",")], not args.no_progress)
    if args.events:
        payload["events"] = event_stores("configs/demo.yaml", args.events, args.events // 20)
    payload["backends"] = backends(cfg, [int(s) for s in args.sizes.split(",")], args.queries, not args.no_progress)
    write(Path(args.out), payload)
    print(f"wrote {args.out}/scale.json and scale.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
