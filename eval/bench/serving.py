"""`python -m eval.bench.serving --config configs/demo.yaml`: serving speed against a plain-libraries peer
(part of `make bench`; writes ``reports/bench/serving.json``).

In one run, on the config's built index and models, the same queries through:

1. **the engine**: ``SearchEngine.query()`` (bm25s + FAISS candidates, cross-encoder, ranker), one query at a
   time, and ``query_batch()`` over the same queries;
2. **the peer**: the same pipeline written plainly from the libraries: ``rank_bm25.BM25Okapi`` over jieba
   tokens, ``SentenceTransformer.encode`` of the query with the same bi-encoder against the same product vectors
   (numpy), the union of both top-``rerank.depth`` lists scored by ``sentence_transformers.CrossEncoder.predict``
   with the same cross-encoder, ordered by its score;
3. **the HTTP service**: ``python -m engine.service`` driven by async httpx clients at concurrency 1 and 4
   (``eval.bench.load_test``).

Reported: p50/p99 per query, the speed ratio, MRR@10 of both on the config's judged queries, and how much the
two top-10 lists overlap (they differ by design: the engine uses BM25 over words and characters, a fused
first-stage score and the learned ranker).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from core.cli import command


def pct(ms) -> dict:
    ms = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


class PlainPipeline:
    """rank_bm25 + SentenceTransformer.encode + CrossEncoder.predict, nothing of ours on the query path."""

    def __init__(self, engine):
        import jieba
        from rank_bm25 import BM25Okapi
        from sentence_transformers import CrossEncoder, SentenceTransformer

        from indexer.dense import stage_model
        from indexer.encoder import resolve_model

        cfg = engine.cfg
        self.titles = engine.products.titles.tolist()
        self.ids = engine.products.ids.tolist()
        self.depth = cfg.rerank.depth
        self.cut = jieba.lcut_for_search
        t0 = time.perf_counter()
        self.bm25 = BM25Okapi([self.cut(t.lower()) for t in self.titles])
        self.build_seconds = time.perf_counter() - t0
        self.encoder = SentenceTransformer(str(stage_model(cfg, "dense")), device="cpu")
        self.encoder.max_seq_length = cfg.dense.max_length
        self.vectors = np.asarray(engine.dense_stage("dense")[1].vectors, dtype=np.float32)
        ce_path = str(resolve_model(cfg.rerank.model, cfg.root))
        self.ce = CrossEncoder(ce_path, device="cpu", max_length=cfg.rerank.max_length or 96)

    def query(self, text: str, k: int = 10) -> list[str]:
        bm = np.asarray(self.bm25.get_scores(self.cut(text.lower())))
        top_bm = np.argsort(-bm)[: self.depth]
        q = self.encoder.encode(["query: " + text], normalize_embeddings=True)[0]
        top_dense = np.argsort(-(self.vectors @ q))[: self.depth]
        cand = list(dict.fromkeys(top_bm.tolist() + top_dense.tolist()))
        scores = self.ce.predict(
            [("query: " + text, "passage: " + self.titles[r]) for r in cand], show_progress_bar=False
        )
        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        return [self.ids[cand[i]] for i in order]


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.serving", __doc__)
    ap.add_argument("--queries", help="judged queries (default: the config's eval.queries)")
    ap.add_argument("--n", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--full", action="store_true", help="also the HTTP load test with 1,000 query-log queries")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--out", default="reports/bench/serving.json")
    args = ap.parse_args(argv)

    from engine.search import SearchEngine
    from core import metrics
    from core.formats.judged import read_queries

    engine = SearchEngine.from_config(args.config, search={"cache_size": 0})
    cfg = engine.cfg
    judged = read_queries(args.queries or cfg.eval.queries)
    qids, texts = list(judged.texts), list(judged.texts.values())
    timed = texts[: args.n]
    print(f"serving bench: {cfg.name}, {len(engine.products)} products, {len(timed)} queries timed", flush=True)
    for t in timed[:5]:
        engine.query(t)
    eng_ms, eng_top = [], {}
    for qid, t in zip(qids, timed):
        t0 = time.perf_counter()
        res = engine.query(t, k=10)
        eng_ms.append((time.perf_counter() - t0) * 1000)
        eng_top[qid] = [h.product_id for h in res]
    t0 = time.perf_counter()
    batch_res = engine.query_batch(timed, k=10)
    batch_ms_per_query = (time.perf_counter() - t0) * 1000 / len(timed)
    batch_same = [[h.product_id for h in r] for r in batch_res] == list(eng_top.values())
    peer = PlainPipeline(engine)
    for t in timed[:5]:
        peer.query(t)
    peer_ms, peer_top = [], {}
    for qid, t in zip(qids, timed):
        t0 = time.perf_counter()
        peer_top[qid] = peer.query(t)
        peer_ms.append((time.perf_counter() - t0) * 1000)
    qrels = {q: g for q, g in judged.gains(cfg.eval.gain_offset).items() if q in eng_top}

    def as_run(tops):
        return {q: {pid: float(10 - i) for i, pid in enumerate(ids)} for q, ids in tops.items()}

    overlap = float(np.mean([len(set(eng_top[q]) & set(peer_top[q])) / 10 for q in eng_top]))
    result = {
        "config": str(args.config),
        "products": len(engine.products),
        "queries_timed": len(timed),
        "engine": {
            **pct(eng_ms),
            "query_batch_ms_per_query": round(batch_ms_per_query, 2),
            "query_batch_same_top10": batch_same,
            "mrr@10": round(metrics.mrr(qrels, as_run(eng_top), 10), 4),
            "versions": engine.version.versions(),
        },
        "peer": {
            **pct(peer_ms),
            "what": "rank_bm25 BM25Okapi (jieba) + SentenceTransformer.encode + numpy dot + "
            "sentence_transformers CrossEncoder.predict, same models",
            "bm25_build_seconds": round(peer.build_seconds, 2),
            "mrr@10": round(metrics.mrr(qrels, as_run(peer_top), 10), 4),
        },
        "speedup_p50": round(float(np.percentile(peer_ms, 50) / np.percentile(eng_ms, 50)), 2),
        "top10_overlap": round(overlap, 3),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "engine"}, ensure_ascii=False), flush=True)
    print("engine:", json.dumps({k: v for k, v in result["engine"].items() if k != "versions"}), flush=True)
    if not args.no_http:
        from eval.bench.load_test import QUERYLOG, run_load

        http_queries = texts * (1 + 200 // max(1, len(texts)))
        n = 200
        if args.full and QUERYLOG.is_file():
            from indexer.vocab_trim import read_query_column

            http_queries, n = read_query_column(QUERYLOG, distinct=False)[:1000], 1000
        runs = run_load(args.config, [], http_queries[:n], [1, 4], True, None)
        result["http"] = runs
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
