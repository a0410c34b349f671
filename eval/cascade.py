"""`python -m eval.cascade --config C --teacher T --out reports/cascade/<config>`: what a larger cross-encoder on
the top few candidates would add, over a grid of block sizes and weights (the study that chooses
``rerank.teacher_top`` and ``teacher_weight``; ``query()`` runs the chosen one, measured with ``python -m eval
--compare``).

The config's judged queries (``eval.queries``) get their candidate sets in the order ``query()`` gives them
without a teacher: the learned ranker's where the config has one, else the z-score mix of the cross-encoder and
the first stages (``rerank.weight``; the sets cached with the ranker job's candidates).  The teacher
(``--teacher``: a cross-encoder folder with an ONNX export, ``--quantize`` none or int8) then scores each
query's candidates; for every ``--top`` N and ``--weights`` w the base's top N stay on top, reordered among
themselves by ``w · z(teacher) + (1 − w) · z(base score)`` (z over the N; :func:`engine.final_rank.reorder_top`).
MRR@10 and NDCG@10 of each against the base, with 95% paired bootstrap intervals; the precision of the
teacher's top product at margins over its second (what pseudo-labels from unlabeled queries would be worth);
and the teacher's
milliseconds per query for N pairs (its time over all candidates, scaled by N over their number: batches of
N cost a little more per pair).  Writes ``cascade.json`` and ``cascade.md``.  Settings are chosen on these
judged queries: the gain of the chosen one is a dev figure, confirmed only on other queries.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from core.cli import command, load, run


def base_order(engine, cand, cfg) -> tuple[np.ndarray, np.ndarray]:
    """One query's candidates as ``query()`` orders them without a teacher: (each candidate's final score, the
    candidate indices in final order)."""
    from engine.rerank import combine

    if not cfg.rerank.ranker:
        mix = combine(cand.ce, cand.first, cfg.rerank.weight)
        return mix, np.argsort(-mix, kind="stable")
    res, _ = engine.rank_candidates(cand, len(cand.rows))
    where = {int(r): i for i, r in enumerate(cand.rows)}
    order = np.array([where[int(r)] for r in res.rows], dtype=np.int64)
    score = np.zeros(len(cand.rows))
    score[order] = res.scores
    return score, order


def evaluate(cfg, teacher_path: Path, quantize: str, tops: list[int], weights: list[float], progress: bool) -> dict:
    from core import metrics
    from core.bootstrap import paired_bootstrap
    from core.formats.judged import read_queries
    from engine.onnx_models import OnnxCrossEncoder
    from engine.rerank import trained_max_length
    from engine.search import SearchEngine
    from finetune.ranker_sessions import candidate_cache
    import dataclasses

    from engine.final_rank import reorder_top
    from tqdm import tqdm

    engine = SearchEngine.from_config(dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, teacher=None)))
    dev = read_queries(cfg.eval.queries)
    qids = [q for q in dev.texts if dev.relevance.get(q)]
    texts = [dev.texts[q] for q in qids]
    cache = (cfg.finetune.out_dir or cfg.root / "models" / cfg.name) / "cache"
    cands = candidate_cache(engine, texts, progress=progress, cache_dir=cache)
    teacher = OnnxCrossEncoder(Path(teacher_path), trained_max_length(Path(teacher_path)), 128, quantize)
    row_of, titles = engine.products.row_map(), engine.products.titles
    qrels = {
        str(q): {str(row_of[p]): g for p, g in judged.items() if p in row_of}
        for q, judged in dev.gains(cfg.eval.gain_offset).items()
    }
    runs: dict[str, dict] = {"base": {}}
    names = [(n, w) for n in tops for w in weights]
    for n, w in names:
        runs[f"top{n}-w{w:g}"] = {}
    seconds, pairs = 0.0, 0
    per_top = {n: 0.0 for n in tops}
    margins, right = [], []  # the teacher's top-1 margin over its second, and whether its top-1 is judged
    for qid, text in tqdm(list(zip(qids, texts)), desc="teacher", disable=not progress):
        c = cands[text]
        score, order = base_order(engine, c, cfg)
        runs["base"][str(qid)] = c.rows[order[:10]].astype(str).tolist()
        t0 = time.perf_counter()
        ts = teacher.predict([text] * len(c.rows), titles.take(c.rows))
        dt = time.perf_counter() - t0
        seconds, pairs = seconds + dt, pairs + len(c.rows)
        for n in tops:
            per_top[n] += dt * min(n, len(c.rows)) / max(len(c.rows), 1)
        if len(ts) > 1:
            first, second = np.argsort(-ts, kind="stable")[:2]
            margins.append(float(ts[first] - ts[second]))
            right.append(str(c.rows[first]) in qrels.get(str(qid), {}))
        for n, w in names:
            new = reorder_top(score, order, ts[order[:n]], w)[1]
            runs[f"top{n}-w{w:g}"][str(qid)] = c.rows[new[:10]].astype(str).tolist()
    out: dict = {
        "config": str(cfg.source),
        "teacher": str(teacher_path),
        "quantize": quantize,
        "queries": len(qids),
        "base": f"the learned ranker {cfg.rerank.ranker}"
        if cfg.rerank.ranker
        else f"z-score mix of {cfg.rerank.model} (weight {cfg.rerank.weight}) and the first stages",
        "teacher_pairs_per_second": round(pairs / seconds, 1) if seconds else None,
        "runs": {},
    }
    base = {
        m: fn(qrels, runs["base"], 10, per_query=True) for m, fn in (("mrr@10", metrics.mrr), ("ndcg@10", metrics.ndcg))
    }
    out["runs"]["base"] = {m: round(float(v.mean()), 4) for m, v in base.items()}
    for n, w in names:
        name = f"top{n}-w{w:g}"
        row: dict = {"top": n, "weight": w, "teacher_ms_per_query": round(1000 * per_top[n] / len(qids), 1)}
        for m, fn in (("mrr@10", metrics.mrr), ("ndcg@10", metrics.ndcg)):
            v = fn(qrels, runs[name], 10, per_query=True)
            d = paired_bootstrap(base[m], v)
            row[m] = round(float(v.mean()), 4)
            row[f"{m}_diff"] = {k: round(d[k], 4) for k in ("diff", "ci_low", "ci_high", "p_value")}
        out["runs"][name] = row
    out["pseudo_labels"] = pseudo_label_precision(np.asarray(margins), np.asarray(right, dtype=bool))
    return out


def pseudo_label_precision(margins: np.ndarray, right: np.ndarray, quantiles=(0, 0.25, 0.5, 0.75, 0.9)) -> list:
    """How often the teacher's top product is a judged one, among the queries whose top-1 leads its second by at
    least a margin (the margins at ``quantiles`` of all): what pseudo-labels from unlabeled queries at that
    margin would be worth (a judged product missed by the judges counts as wrong: precision is a lower bound)."""
    from core.bootstrap import bootstrap_ci

    rows = []
    for q in quantiles:
        m = float(np.quantile(margins, q)) if len(margins) else 0.0
        keep = margins >= m
        if not keep.any():
            continue
        lo, hi = bootstrap_ci(right[keep].astype(np.float64))[1:]
        rows.append(
            {
                "margin": round(m, 3),
                "share": round(float(keep.mean()), 3),
                "precision": round(float(right[keep].mean()), 4),
                "ci": [round(float(lo), 4), round(float(hi), 4)],
            }
        )
    return rows


def write_report(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cascade.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = [
        f"# Cascade study: {res['config']}",
        "",
        f"Base: {res['base']}; teacher {res['teacher']} ({res['quantize']}, {res['teacher_pairs_per_second']} "
        f"pairs/s over whole candidate sets) reorders the base's top N; {res['queries']} judged queries. "
        "Chosen on these queries: a dev figure.",
        "",
        "| top N | teacher weight | MRR@10 | diff [95% CI] | NDCG@10 | diff [95% CI] | teacher ms/query |",
        "| ---: | ---: | ---: | --- | ---: | --- | ---: |",
        f"| – (base) | – | {res['runs']['base']['mrr@10']:.4f} | | {res['runs']['base']['ndcg@10']:.4f} | | 0 |",
    ]
    for name, r in res["runs"].items():
        if name == "base":
            continue
        dm, dn = r["mrr@10_diff"], r["ndcg@10_diff"]
        lines.append(
            f"| {r['top']} | {r['weight']:g} | {r['mrr@10']:.4f} | {dm['diff']:+.4f} [{dm['ci_low']:+.4f}, "
            f"{dm['ci_high']:+.4f}] | {r['ndcg@10']:.4f} | {dn['diff']:+.4f} [{dn['ci_low']:+.4f}, "
            f"{dn['ci_high']:+.4f}] | {r['teacher_ms_per_query']} |"
        )
    lines += [
        "",
        "Pseudo-labels: the teacher's top product over all candidates, kept where it leads the second by a margin",
        "(logits); precision = the share whose top product is judged (a lower bound: judges miss some).",
        "",
        "| margin ≥ | share of queries | precision [95% CI] |",
        "| ---: | ---: | --- |",
    ]
    for r in res.get("pseudo_labels", []):
        lines.append(
            f"| {r['margin']:.2f} | {r['share']:.0%} | {r['precision']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] |"
        )
    (out_dir / "cascade.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.cascade", __doc__, None, overrides=True)
    ap.add_argument("--teacher", required=True, help="the larger cross-encoder (a folder with an ONNX export)")
    ap.add_argument("--quantize", choices=("none", "int8"), default="int8")
    ap.add_argument("--top", default="3,5,10,20", help="comma-separated N: how many of the top the teacher reorders")
    ap.add_argument("--weights", default="0.5,0.75,1", help="comma-separated teacher weights within the block")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    def body():
        cfg = load(args)
        tops = [int(x) for x in args.top.split(",") if x.strip()]
        weights = [float(x) for x in args.weights.split(",") if x.strip()]
        res = evaluate(cfg, Path(args.teacher), args.quantize, tops, weights, not args.no_progress)
        write_report(res, Path(args.out))
        print((Path(args.out) / "cascade.md").read_text(encoding="utf-8"))
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
