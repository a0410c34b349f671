"""`python -m eval.ablation --config configs/wentian.yaml --queries dev.tsv`: what each BM25 choice does.

Starts from the baseline the dataset README quotes (plain jieba search-mode
tokens, bm25s defaults) and adds one change at a time — normalization,
Latin/number handling, n-grams for unknown words, BM25 variant and k1/b —
then writes a Markdown table and JSON to ``reports/ablation/``.  Tokens are
computed once per text setting and reused across BM25 parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jieba
import numpy as np

from eval.evaluate import score_run
from eval.queries import read_queries
from indexer.bm25 import build_retriever
from indexer.build import load_catalog
from indexer.config import BM25Config, TextConfig, load_config
from indexer.text import Tokenizer


def plain_jieba() -> Callable[[str], list[str]]:
    tk = jieba.Tokenizer()
    tk.initialize()
    return lambda s: [w for w in tk.cut_for_search(s) if w.strip()]


def evaluate_tokens(doc_tokens, query_tokens, qids, pids, queries, bm25_cfg, ecfg):
    retriever = build_retriever(doc_tokens, bm25_cfg)
    vocab = retriever.vocab_dict
    n = len(pids)
    run = {}
    for qid, toks in zip(qids, query_tokens):
        ids = np.fromiter((vocab[t] for t in toks if t in vocab), dtype=np.int32)
        if len(ids) == 0:
            run[qid] = {}
            continue
        scores = retriever.get_scores_from_ids(ids)
        k = min(max(ecfg.ks), n)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[scores[top] > 0]
        run[qid] = {pids[i]: float(scores[i]) for i in top}
    m, _ = score_run(queries, run, ecfg.gain_offset, ecfg.relevant_threshold, ecfg.ks)
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.ablation", description=__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument("--queries", required=True)
    ap.add_argument("--out", default="reports/ablation")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    queries = read_queries(args.queries)
    catalog = load_catalog(cfg)
    texts = catalog.index_texts()
    qids, qtexts = list(queries.texts), list(queries.texts.values())
    base_text = cfg.text
    default_bm25 = BM25Config()

    text_variants: list[tuple[str, Callable[[], Callable[[str], list[str]]]]] = [
        ("plain jieba search mode (README baseline)", plain_jieba),
    ]
    off = dict(traditional_to_simplified=False, split_alnum=False, unknown_word_ngrams=0, join_units=False,
               fold_plurals=False)

    def ours(**changes):
        tc = dataclasses.replace(base_text, **changes)
        return lambda: Tokenizer(tc, extra_words=[b for b in catalog.brands if b] if tc.brands_to_dict else [])

    text_variants += [
        ("+ normalization (NFKC, lowercase), stopwords, Latin/number tokens", ours(**off)),
        ("+ traditional→simplified", ours(**{**off, "traditional_to_simplified": True})),
        ("+ number+unit joining", ours(**{**off, "traditional_to_simplified": True, "join_units": True})),
        ("+ Latin/number parts of mixed tokens", ours(**{**off, "traditional_to_simplified": True, "join_units": True,
                                                      "split_alnum": True})),
        ("+ plural folding (= config text settings)", ours(**{"unknown_word_ngrams": base_text.unknown_word_ngrams})),
        ("+ char 1-grams for unknown words", ours(unknown_word_ngrams=1)),
        ("+ char 1,2-grams for unknown words", ours(unknown_word_ngrams=2)),
    ]
    rows = []
    token_cache = {}
    for name, make in text_variants:
        t0 = time.perf_counter()
        tok = make()
        doc_tokens = [tok(t) for t in texts]
        query_tokens = [tok(q) for q in qtexts]
        token_cache[name] = (doc_tokens, query_tokens)
        m = evaluate_tokens(doc_tokens, query_tokens, qids, catalog.ids, queries, default_bm25, cfg.eval)
        rows.append({"change": name, "bm25": "lucene k1=1.5 b=0.75", **m, "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)

    # BM25 variant and parameters on the config's text settings
    best_text = max(rows[1:], key=lambda r: r["mrr@10"])["change"]
    doc_tokens, query_tokens = token_cache[best_text]
    grid = [BM25Config(method=m, k1=k1, b=b)
            for m in ("lucene", "robertson", "atire", "bm25+", "bm25l")
            for k1 in (0.6, 0.9, 1.2, 1.5, 2.0) for b in (0.3, 0.5, 0.75, 0.9)]
    for bc in grid:
        m = evaluate_tokens(doc_tokens, query_tokens, qids, catalog.ids, queries, bc, cfg.eval)
        rows.append({"change": f"text: {best_text}", "bm25": f"{bc.method} k1={bc.k1} b={bc.b}", **m})
    best = max(rows, key=lambda r: r["mrr@10"])
    print("best:", json.dumps(best, ensure_ascii=False))

    out = Path(args.out) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    cols = ["mrr@10", "ndcg@10", "recall@10", "recall@100", "recall@1000"]
    lines = [f"# BM25 ablation on {args.queries}", "", "## Text processing (one change at a time, lucene k1=1.5 b=0.75)", "",
             "| change | " + " | ".join(cols) + " |", "| --- | " + " | ".join("---:" for _ in cols) + " |"]
    for r in rows[: len(text_variants)]:
        lines.append(f"| {r['change']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    lines += ["", f"## BM25 variant and parameters (text: {best_text}), top 15 by MRR@10", "",
              "| bm25 | " + " | ".join(cols) + " |", "| --- | " + " | ".join("---:" for _ in cols) + " |"]
    for r in sorted(rows[len(text_variants):], key=lambda r: -r["mrr@10"])[:15]:
        lines.append(f"| {r['bm25']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}/ablation.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
