"""Runs → metrics: retrieve every judged query with each stage and score the runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from engine.search import SearchEngine
from engine.types import DENSE_STAGES
from core import metrics
from core.formats.judged import JudgedQueries

RECALL_CURVE_KS = [1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000]


@dataclass
class StageResult:
    stage: str
    metrics: dict[str, float]
    run: dict[str, dict[str, float]]
    latency_ms: np.ndarray
    recall_curve: list[float] = field(default_factory=list)
    per_query: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> value per query (qrels order)


def run_judged_only(engine: SearchEngine, queries: JudgedQueries, stage: str, progress: bool = True):
    """Each query ranks only its own judged products (``--judged-only``: a reranking benchmark such as
    Home Depot's graded pairs).  A judged product the stage does not score (no shared token) follows
    those it does, in catalog order."""
    ids = engine.products.ids
    row_of = engine.products.row_map()
    n = len(engine.products)
    run, lat = {}, []
    for qid, text in tqdm(
        list(queries.texts.items()), desc=f"eval {stage} (judged only)", disable=not progress, mininterval=1.0
    ):
        rows = sorted(row_of[p] for p in queries.relevance[qid] if p in row_of)
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        t0 = time.perf_counter()
        res = engine.retrieve(text, k=max(len(rows), 1), stage=stage, mask=mask)
        lat.append((time.perf_counter() - t0) * 1000)
        scored = {ids[int(r)]: float(s) for r, s in zip(res.rows, res.scores) if mask[int(r)]}
        floor = min(scored.values(), default=0.0) - 1.0
        for i, r in enumerate(r for r in rows if ids[r] not in scored):
            scored[ids[r]] = floor - i
        run[qid] = scored
    return run, np.asarray(lat)


def run_stage(
    engine: SearchEngine,
    queries: JudgedQueries,
    stage: str,
    depth: int,
    progress: bool = True,
    latency_sample: int = 200,
):
    """``{qid: {pid: score}}`` for the top ``depth`` products of a stage, and single-query latencies in ms.

    Keyword stages run query by query (each one timed); dense and rerank
    stages batch the queries (pairs) for the run and time single queries on a sample.
    """
    ids = engine.products.ids
    qids, texts = list(queries.texts), list(queries.texts.values())
    if stage in DENSE_STAGES or stage == "rerank":
        step = 256 if stage in DENSE_STAGES else 32
        results = []
        for i in tqdm(range(0, len(texts), step), desc=f"eval {stage}", disable=not progress):
            results += engine.retrieve_many(texts[i : i + step], depth, stage)
        sample = texts[: latency_sample if stage in DENSE_STAGES else min(latency_sample, 100)]
    else:
        results, sample = None, texts
    lat = np.zeros(len(sample))
    timed = []
    for i, text in enumerate(
        tqdm(sample, desc=f"time {stage}", disable=not progress or results is not None, mininterval=1.0)
    ):
        t0 = time.perf_counter()
        timed.append(engine.retrieve(text, k=depth, stage=stage))
        lat[i] = (time.perf_counter() - t0) * 1000
    results = results if results is not None else timed
    run = {qid: {ids[int(r)]: float(s) for r, s in zip(res.rows, res.scores)} for qid, res in zip(qids, results)}
    return run, lat


def main_recall(ks: list[int]) -> str:
    """The recall the reports lead with: recall@100 when measured, else the deepest cut."""
    return "recall@100" if 100 in ks else f"recall@{max(ks)}"


def score_run(
    queries: JudgedQueries, run, gain_offset: float, relevant_threshold: float | None, ks: list[int]
) -> tuple[dict[str, float], list[float], dict[str, np.ndarray]]:
    """(the means, the recall curve, each query's MRR@10 / NDCG@10 / main recall in qrels order): every
    per-query value computed once, the means taken from them."""
    qrels = queries.gains(gain_offset)
    # recall counts a product as relevant by its judged relevance (Home Depot: >= 2.5), else by gain > 0
    recall_qrels, thr = (queries.relevance, relevant_threshold) if relevant_threshold is not None else (qrels, None)
    per = {
        "mrr@10": metrics.mrr(qrels, run, 10, per_query=True),
        "ndcg@10": metrics.ndcg(qrels, run, 10, per_query=True),
    }
    for k in ks:
        per[f"recall@{k}"] = metrics.recall(recall_qrels, run, k, threshold=thr, per_query=True)
    out = {m: metrics.nanmean(v) for m, v in per.items()}  # recall: over the queries with a relevant product
    out["map"] = metrics.average_precision(qrels, run)
    out["n_queries"] = len(qrels)
    out["n_queries_recall"] = int((~np.isnan(per[f"recall@{ks[0]}"])).sum()) if ks else len(qrels)
    curve = metrics.recall_curve(recall_qrels, run, [k for k in RECALL_CURVE_KS if k <= max(ks)], threshold=thr)
    lead = main_recall(ks)
    return out, curve, {m: per[m] for m in ("mrr@10", "ndcg@10", lead)}


def evaluate(
    engine: SearchEngine, queries: JudgedQueries, stages: list[str], progress: bool = True, judged_only: bool = False
) -> list[StageResult]:
    ecfg = engine.cfg.eval
    depth = max(ecfg.ks)
    results = []
    for stage in stages:
        if judged_only:
            run, lat = run_judged_only(engine, queries, stage, progress)
        else:
            run, lat = run_stage(engine, queries, stage, depth, progress)
        m, curve, pq = score_run(queries, run, ecfg.gain_offset, ecfg.relevant_threshold, ecfg.ks)
        results.append(StageResult(stage, m, run, lat, curve, pq))
    return results
