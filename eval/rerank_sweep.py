"""`python -m eval.rerank_sweep --config configs/wentian.yaml --models A,B --out DIR`

How the rerank stage's settings trade off: for each cross-encoder, every judged
query's candidates (the union of the bm25 and dense top-``depth``, the largest
depth swept) are scored once; MRR@10, NDCG@10 and Recall@10 are then computed
for each (depth, weight) pair, the same combination the engine applies
(``weight * z(cross-encoder) + (1 - weight) * z(first stage)``, the first
stage scored by reciprocal rank fusion or by the stages' standardized raw scores).  Also times scoring
on this machine (pairs/s).  Scores are cached under DIR/scores (keyed by the
model's files and the exact pairs), so a rerun with other weights or depths is
free.  ``--ensemble`` also sweeps the models' average (each standardized per
query).  Writes DIR/sweep.json, DIR/sweep.md and DIR/sweep.png (MRR@10 against
weight, one line per model and depth).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from engine.fusion import reciprocal_rank_fusion
from engine.rerank import CrossEncoder, combine, first_stage_scores, standardize
from core import metrics
from core.types import SearchResult
from core.cli import command


def main(argv=None) -> int:
    ap = command("eval.rerank_sweep", __doc__, None)
    ap.add_argument("--models", required=True, help="comma-separated cross-encoder folders")
    ap.add_argument("--queries", help="judged queries (default: the config's eval.queries)")
    ap.add_argument("--depths", default="20,30,50")
    ap.add_argument("--weights", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    ap.add_argument("--first-stage", default="rrf,scores", help="first-stage scores to combine with: rrf, scores")
    ap.add_argument("--limit", type=int, help="only the first N queries")
    ap.add_argument(
        "--ensemble",
        action="store_true",
        help="also sweep the models' ensemble (mean of their per-query standardized scores)",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from engine import SearchEngine
    from finetune.inputs import without_rerank
    from core.formats.judged import read_queries
    from indexer.build import ensure_indexes
    from core.config import load_config

    cfg = without_rerank(load_config(args.config))
    queries = read_queries(args.queries or cfg.eval.queries)
    qids = list(queries.texts)[: args.limit]
    texts = [queries.texts[q] for q in qids]
    qrels = {q: queries.relevance[q] for q in qids}
    depths = sorted(int(d) for d in args.depths.split(","))
    weights = [float(w) for w in args.weights.split(",")]
    modes = [m for m in args.first_stage.split(",") if m]
    top = max(depths)
    cfg = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, depth=top))
    ensure_indexes(cfg, ["dense"])
    engine = SearchEngine.from_config(cfg)
    ids, titles = engine.products.ids, engine.products.titles
    result: dict = {"config": args.config, "queries": len(qids), "models": {}}
    # what the engine reranks at the deepest depth: the fused union and the stages' top lists
    cands = [(fused, lists) for fused, lists, _ in engine.stage_candidates(texts, engine.live)]
    pair_q, pair_t, spans = [], [], []
    for text, (fused, _) in zip(texts, cands):
        spans.append((len(pair_q), len(pair_q) + len(fused.rows)))
        pair_q += [text] * len(fused.rows)
        pair_t += [titles[int(r)] for r in fused.rows]
    cache_dir = Path(args.out) / "scores"
    scored: dict[str, np.ndarray] = {}
    for model_path in [m for m in args.models.split(",") if m]:
        ce = CrossEncoder.load(model_path, device=cfg.rerank.device)
        scores, seconds = cached_scores(ce, Path(model_path), pair_q, pair_t, cache_dir)
        scored[model_path] = scores
        entry = {"layers": ce.num_layers, "pairs": len(pair_q)}
        if seconds is not None:
            entry["pairs_per_second"] = round(len(pair_q) / seconds, 1)
        result["models"][model_path] = entry
    if args.ensemble and len(scored) > 1:
        # each model's scores standardized per query, then averaged: no model dominates by its scale
        ens = np.zeros(len(pair_q))
        for sc in scored.values():
            for a, b in spans:
                ens[a:b] += standardize(sc[a:b]) / len(scored)
        name = "ensemble(" + "+".join(Path(m).name for m in scored) + ")"
        scored[name] = ens
        result["models"][name] = {
            "layers": sum(result["models"][m]["layers"] or 12 for m in result["models"]),
            "pairs": len(pair_q),
            "ensemble_of": list(result["models"]),
        }
    for model_path, scores in scored.items():
        rows = []
        for depth in depths:
            # candidates of a shallower depth: in either stage's top-`depth`, fusion recomputed at that depth
            subsets = []
            for (fused, lists), (a, b) in zip(cands, spans):
                keep_rows = np.union1d(lists[0].rows[:depth], lists[1].rows[:depth])
                cut = [SearchResult(lst.rows[:depth], lst.scores[:depth]) for lst in lists]
                sub = reciprocal_rank_fusion(cut, 2 * depth)
                pos = {int(r): j for j, r in enumerate(fused.rows)}
                ce_sub = scores[a:b][[pos[int(r)] for r in sub.rows]]
                assert len(sub.rows) == len(keep_rows)
                subsets.append((sub, cut, ce_sub))
            for mode, w in [(m, w) for m in modes for w in weights]:
                run = {}
                for qid, (sub, cut, ce_sub) in zip(qids, subsets):
                    s = combine(ce_sub, first_stage_scores(sub, cut, mode), w)
                    run[qid] = {ids[int(r)]: float(v) for r, v in zip(sub.rows, s)}
                rows.append(
                    {
                        "depth": depth,
                        "first_stage": mode,
                        "weight": w,
                        "mrr@10": round(metrics.mrr(qrels, run, 10), 4),
                        "ndcg@10": round(metrics.ndcg(qrels, run, 10), 4),
                        "recall@10": round(metrics.recall(qrels, run, 10), 4),
                        "candidates": round(float(np.mean([len(x[0].rows) for x in subsets])), 1),
                    }
                )
        r = result["models"][model_path]
        r["sweep"] = rows
        best = max(rows, key=lambda x: x["mrr@10"])
        speed = f", {r['pairs_per_second']:.0f} pairs/s" if "pairs_per_second" in r else ""
        print(f"{model_path}: {r['layers']} layers{speed}; best {best}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    lines = [
        f"# Rerank sweep: {args.config}, {len(qids)} queries",
        "",
        "MRR@10 by combination weight (1 = cross-encoder alone, 0 = first-stage fusion alone).",
        "",
    ]
    for m, r in result["models"].items():
        if "ensemble_of" in r:
            speed = ", the average of its models' per-query standardized scores"
        elif "pairs_per_second" in r:
            speed = f", {r['pairs_per_second']} pairs/s on this machine"
        else:
            speed = ", scores from the cache"
        lines += [
            f"## {m} ({r['layers']} layers{speed})",
            "",
            "| depth | first stage | candidates | " + " | ".join(f"w={w:g}" for w in weights) + " |",
            "|---|---|---|" + "---|" * len(weights),
        ]
        for d in depths:
            for mode in modes:
                rs = [x for x in r["sweep"] if x["depth"] == d and x["first_stage"] == mode]
                lines.append(
                    f"| {d} | {mode} | {rs[0]['candidates']} | " + " | ".join(f"{x['mrr@10']:.4f}" for x in rs) + " |"
                )
        lines.append("")
    (out / "sweep.md").write_text("\n".join(lines), encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m, r in result["models"].items():
            for d in depths:
                for mode in modes:
                    rs = [x for x in r["sweep"] if x["depth"] == d and x["first_stage"] == mode]
                    ax.plot(
                        [x["weight"] for x in rs],
                        [x["mrr@10"] for x in rs],
                        marker="o",
                        label=f"{Path(m).name} ({r['layers']}L), depth {d}, {mode}",
                    )
        ax.set_xlabel("cross-encoder weight (0 = bm25+dense fusion alone)")
        ax.set_ylabel("MRR@10")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "sweep.png", dpi=120)
    except ImportError:
        pass
    print(f"wrote {out}/sweep.json, sweep.md")
    return 0


def cached_scores(
    ce, model_dir: Path, queries: list[str], titles: list[str], cache_dir: Path
) -> tuple[np.ndarray, float | None]:
    """The cross-encoder's scores of these pairs, from ``cache_dir`` when this model (the names, sizes and
    mtimes of the files in its folder) already scored exactly these pairs; else scored and cached.  Returns
    (scores, seconds spent scoring, None when cached)."""
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    for q, t in zip(queries, titles):
        h.update(f"{q}\t{t}\n".encode())
    path = cache_dir / f"{model_dir.name}-{h.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path), None
    t0 = time.perf_counter()
    scores = np.asarray(ce.predict(queries, titles), dtype=np.float64)
    seconds = time.perf_counter() - t0
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, scores)
    return scores, seconds


if __name__ == "__main__":
    raise SystemExit(main())
