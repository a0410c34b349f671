"""`python -m eval.ablation --config configs/wentian.yaml`: what each BM25 choice does.

Starts from the baseline the dataset README quotes (plain jieba search-mode
tokens, bm25s defaults) and adds one change at a time — normalization,
Latin/number handling, n-grams for unknown words, a character field beside
the word field, BM25 variant and k1/b — each measured on the config's judged
queries, whole corpus indexed.  Writes ``reports/ablation/<config>/ablation.md``
and ``.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jieba

from eval.evaluate import score_run
from core.formats.judged import read_queries
from indexer.bm25 import BM25Index, build_retriever
from indexer.build import load_catalog
from core.config import BM25Config, TextConfig, load_config
from indexer.products import ProductTable
from core.cli import command

COLS = ["mrr@10", "ndcg@10", "recall@10", "recall@100", "recall@1000"]


class PlainJieba:
    """The README baseline: lowercased ``jieba.cut_for_search`` tokens of the raw titles, nothing else."""

    def __init__(self):
        self._tk = jieba.Tokenizer()
        self._tk.initialize()

    def tokenize(self, text: str, field: str = "words") -> list[str]:
        return [w.lower() for w in self._tk.cut_for_search(text) if w.strip()]

    def tokenize_fields(self, text: str, fields) -> dict[str, list[str]]:
        return {f: self.tokenize(text, f) for f in fields}


def evaluate_index(index: BM25Index, queries, ecfg) -> dict:
    depth = max(ecfg.ks)
    ids = index.products.ids
    run = {}
    for qid, text in queries.texts.items():
        res = index.search(text, k=depth)
        run[qid] = {ids[int(r)]: float(s) for r, s in zip(res.rows, res.scores)}
    m, _, _ = score_run(queries, run, ecfg.gain_offset, ecfg.relevant_threshold, ecfg.ks)
    return m


def main(argv=None) -> int:
    ap = command("eval.ablation", __doc__, None)
    ap.add_argument("--queries", help="default: the config's eval.queries")
    ap.add_argument("--out", default="reports/ablation")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    qpath = args.queries or cfg.eval.queries
    queries = read_queries(qpath)
    catalog = load_catalog(cfg)
    table = ProductTable.from_catalog(catalog)

    off = TextConfig(
        traditional_to_simplified=False,
        split_alnum=False,
        unknown_word_ngrams=0,
        join_units=False,
        fold_plurals=False,
        dict_from_catalog=cfg.text.dict_from_catalog,
        user_dict=cfg.text.user_dict,
    )
    step = lambda tc, **kw: dataclasses.replace(tc, **kw)  # noqa: E731
    t1 = step(off, traditional_to_simplified=True)
    t2 = step(t1, join_units=True)
    t3 = step(t2, split_alnum=True)
    t4 = step(t3, fold_plurals=True)
    t5 = step(t4, unknown_word_ngrams=1)
    t6 = step(t4, unknown_word_ngrams=2)
    words = BM25Config()
    variants = [
        ("plain jieba search mode, bm25s defaults (README baseline)", None, words),
        ("+ normalization (NFKC, lowercase), stopwords, Latin/number tokens", off, words),
        ("+ traditional→simplified", t1, words),
        ("+ number+unit joining (500 ml → 500ml, 41寸)", t2, words),
        ("+ Latin/number parts of mixed tokens (iphone15 → iphone, 15)", t3, words),
        ("+ English plural folding", t4, words),
        ("+ char 1-grams for words jieba does not know", t5, words),
        ("+ char 1,2-grams for words jieba does not know", t6, words),
        ("chars field only (Han characters + Latin tokens)", t5, BM25Config(fields={"chars": 1.0})),
        ("words 0.2 + chars 0.8 fields", t5, BM25Config(fields={"words": 0.2, "chars": 0.8})),
        ("words 0.35 + chars 0.65 fields", t5, BM25Config(fields={"words": 0.35, "chars": 0.65})),
        ("words 0.5 + chars 0.5 fields", t5, BM25Config(fields={"words": 0.5, "chars": 0.5})),
    ]
    rows = []
    for name, tc, bc in variants:
        t0 = time.perf_counter()
        if tc is None:
            tok = PlainJieba()
            tokens = [tok.tokenize(t) for t in catalog.titles]
            index = BM25Index({"words": build_retriever(tokens, bc)}, {"words": 1.0}, table, tok)
        else:
            index = BM25Index.build(catalog, tc, bc)
        m = evaluate_index(index, queries, cfg.eval)
        rows.append(
            {
                "change": name,
                "bm25": f"{bc.method} k1={bc.k1} b={bc.b}",
                **m,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    n_text = len(rows)

    # BM25 variant and k1/b on the best text setting
    best = max(rows, key=lambda r: r["mrr@10"])
    name, tc, bc = variants[rows.index(best)]
    tok = BM25Index.build(catalog, tc, bc).tokenizer
    field_tokens = {f: tok.tokenize_many(catalog.index_texts(), field=f) for f in bc.fields}
    for method in ("lucene", "robertson", "atire", "bm25+"):
        for k1 in (0.3, 0.6, 0.9, 1.2, 1.5):
            for b in (0.5, 0.75, 0.9):
                grid_cfg = dataclasses.replace(bc, method=method, k1=k1, b=b)
                index = BM25Index(
                    {f: build_retriever(t, grid_cfg) for f, t in field_tokens.items()}, dict(bc.fields), table, tok
                )
                m = evaluate_index(index, queries, cfg.eval)
                rows.append({"change": name, "bm25": f"{method} k1={k1} b={b}", **m})
        print(f"grid {method} done", flush=True)

    out = Path(args.out) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    lines = [
        f"# BM25 ablation: {cfg.name}, {qpath} ({len(queries)} queries), whole corpus ({len(catalog)}) indexed",
        "",
        "Command: `python -m eval.ablation --config " + str(args.config) + "`",
        "",
        "## Text processing, one change at a time (lucene k1=1.5 b=0.75)",
        "",
        "| change | " + " | ".join(COLS) + " |",
        "| --- | " + " | ".join("---:" for _ in COLS) + " |",
    ]
    for r in rows[:n_text]:
        lines.append(f"| {r['change']} | " + " | ".join(f"{r[c]:.4f}" for c in COLS) + " |")
    lines += [
        "",
        f"## BM25 variant and k1/b on: {name} (top 12 of {len(rows) - n_text} by MRR@10)",
        "",
        "| bm25 | " + " | ".join(COLS) + " |",
        "| --- | " + " | ".join("---:" for _ in COLS) + " |",
    ]
    for r in sorted(rows[n_text:], key=lambda r: -r["mrr@10"])[:12]:
        lines.append(f"| {r['bm25']} | " + " | ".join(f"{r[c]:.4f}" for c in COLS) + " |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}/ablation.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
