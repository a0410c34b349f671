"""`python -m finetune.train_biencoder --config configs/wentian.yaml --train ../shared/datasets/wentian/train.tsv`

Fine-tunes the config's base model on judged pairs with hard negatives mined
from the engine's BM25 and dense stages, keeps the best checkpoint by dev
MRR@10 over a pool of titles (the first 300 dev queries' hybrid top-20 and
their positives), and writes it with a model card and the per-evaluation
JSON log to ``--out`` (default ``models/<config>/bi-encoder``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from finetune.biencoder import BiEncoderTraining, Example, pool_mrr, train
from finetune.data import from_judged, mine_hard_negatives
from finetune.judged import read_queries


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finetune.train_biencoder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--train", required=True, help="judged pairs: query, pid[, qid][, relevance]")
    ap.add_argument("--out")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--scale", type=float, default=100.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    from engine import SearchEngine
    from indexer.build import ensure_indexes
    from indexer.config import load_config
    from indexer.dense import stage_model

    cfg = load_config(args.config)
    out = Path(args.out) if args.out else cfg.root / "models" / cfg.name / "bi-encoder"
    out.parent.mkdir(parents=True, exist_ok=True)
    ensure_indexes(cfg, ["dense-base", "hybrid"])
    engine = SearchEngine.from_config(cfg)
    t0 = time.perf_counter()
    judged = read_queries(args.train)
    data = from_judged(judged.texts, judged.relevance)
    negatives = mine_hard_negatives(engine, data, stages=("bm25", "dense"), window=(10, 50), per_query=1,
                                    cache_dir=out.parent / "cache", seed=args.seed)
    titles = engine.products.titles
    examples = []
    for qid, pos in data.positives.items():
        for pid in pos:
            try:
                row = engine.products.row_of(pid)
            except KeyError:
                continue
            neg_titles = [titles[engine.products.row_of(n)] for n in negatives.get(qid, [])]
            examples.append(Example(data.texts[qid], titles[row], neg_titles, pid))
    mining_s = time.perf_counter() - t0
    print(f"{len(examples)} training pairs, hard negatives mined in {mining_s:.0f} s", flush=True)

    dev = read_queries(cfg.eval.queries)
    dev_qids = list(dev.texts)[:300]
    pool_rows: dict[int, int] = {}
    positives = []
    for qid in dev_qids:
        for r in engine.retrieve(dev.texts[qid], 20, "hybrid").rows:
            pool_rows.setdefault(int(r), len(pool_rows))
        pos = set()
        for pid in dev.relevance[qid]:
            r = engine.products.row_of(pid)
            pos.add(pool_rows.setdefault(r, len(pool_rows)))
        positives.append(pos)
    pool = [titles[r] for r in pool_rows]
    evaluate = pool_mrr([dev.texts[q] for q in dev_qids], pool, positives)

    base = stage_model(cfg, "dense-base")
    model = SentenceTransformer(str(base), device="cuda" if torch.cuda.is_available() else "cpu")
    tcfg = BiEncoderTraining(lr=args.lr, batch_size=args.batch_size, scale=args.scale, max_steps=args.max_steps,
                             max_minutes=args.minutes, eval_every=args.eval_every, seed=args.seed,
                             max_length=cfg.dense.max_length)
    report = train(model, examples, tcfg, out, evaluate=evaluate, log_path=out.parent / "bi-encoder.log.json")
    card = {"base_model": str(base), "train": str(args.train), "pairs": len(examples),
            "hard_negatives": "1 per query from bm25/dense ranks 10-50, positives and near-duplicates skipped",
            "dev_metric": f"MRR@10 over a pool of {len(pool)} titles (first 300 dev queries' hybrid top-20 + positives)",
            **{k: v for k, v in report.items() if k != "log"}, "config": tcfg.__dict__, "log": report["log"]}
    (out / "model_card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False), encoding="utf-8")
    print(json.dumps({k: v for k, v in card.items() if k != "log"}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
