"""`make bench` (`python -m eval.bench.bm25 [--full]`): the BM25 stage against its peers.

Three systems, same corpus, same real Taobao queries, same run:

- ``ecomsearch``: this engine's keyword stage (our normalization + jieba
  tokenizer, bm25s index, mask-aware top-k), tokenization included;
- ``bm25s``: plain bm25s over plain ``jieba.lcut_for_search`` tokens;
- ``rank_bm25``: ``BM25Okapi`` over the same plain tokens (timed on a
  sample of queries where it is slow).

Each system is built in one process and saved, then loaded fully into RAM
(no memory-mapping) and timed in a fresh process: ``memory_mb`` is the RSS
growth of that load, the memory the index needs to serve.  Corpora: the
WenTian titles (20,834), and with ``--full`` generated catalogs of 200,000
and 1,000,000 titles whose words follow the WenTian corpus's word
frequencies and title lengths.  Writes ``reports/bench/bm25.json`` and
prints a table.
"""

from __future__ import annotations

import csv
import gc
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from core.cli import command

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "datasets"
WENTIAN = SHARED / "wentian" / "corpus.tsv"
QUERYLOG = SHARED / "querylog" / "taobao_queries.tsv"


def _rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def read_id_text(path: Path) -> tuple[list[str], list[str]]:
    """The first two columns (id, text) of a TSV with a header row: the shared corpus and query-log files."""
    ids, titles = [], []
    with open(path, encoding="utf-8") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        for row in r:
            ids.append(row[0])
            titles.append(row[1])
    return ids, titles


def _latencies(fn, queries: list[str], warmup: int = 20) -> np.ndarray:
    for q in queries[:warmup]:
        fn(q)
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        fn(q)
        out[i] = (time.perf_counter() - t0) * 1000
    return out


def _quiet_jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def build(system: str, corpus: str, folder: str, config: str | None = None) -> dict:
    """Build ``system`` over ``corpus`` (a pid/title TSV) and save it to ``folder``. Runs in a child process."""
    jieba = _quiet_jieba()
    folder = Path(folder)
    t0 = time.perf_counter()
    if system == "ecomsearch":
        from indexer.bm25 import KIND, BM25Index
        from core.formats.catalog import read_catalog
        from core.config import load_config
        from indexer.store import write_index

        cfg = load_config(config or ROOT / "configs" / "wentian.yaml")  # the engine's text and BM25 settings
        cat = read_catalog(Path(corpus), columns={"id": "pid"})
        index = BM25Index.build(cat, cfg.text, cfg.bm25)
        tokenize_s = index.build_stats["tokenize_s"]
        n = len(cat)
        build_s = time.perf_counter() - t0
        write_index(folder / "index", index.save_to, KIND, cfg.index_fingerprint())
    else:
        _, titles = read_id_text(Path(corpus))
        n = len(titles)
        tokens = [jieba.lcut_for_search(t) for t in titles]
        tokenize_s = time.perf_counter() - t0
        if system == "bm25s":
            import bm25s

            retriever = bm25s.BM25()
            retriever.index(tokens, show_progress=False)
            build_s = time.perf_counter() - t0
            retriever.save(folder / "index", show_progress=False)
        else:
            import pickle

            from rank_bm25 import BM25Okapi

            model = BM25Okapi(tokens)
            build_s = time.perf_counter() - t0
            (folder / "index").mkdir()
            with open(folder / "index" / "model.pkl", "wb") as f:
                pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
    disk = sum(p.stat().st_size for p in (folder / "index").resolve().rglob("*") if p.is_file())
    return {
        "system": system,
        "n_docs": n,
        "build_s": round(build_s, 2),
        "tokenize_s": round(tokenize_s, 2),
        "disk_mb": round(disk / 2**20, 1),
    }


def serve(system: str, folder: str, queries: list[str], k: int = 10, config: str | None = None) -> dict:
    """Load a saved index fully into memory and time single queries. Runs in a fresh child process."""
    jieba = _quiet_jieba()
    folder = Path(folder) / "index"
    import pickle

    import bm25s

    from indexer.bm25 import BM25Index
    from core.config import load_config

    cfg = load_config(config or ROOT / "configs" / "wentian.yaml")
    rss0 = _rss()  # after imports: only the loaded index (and, for ours, its tokenizer) counts
    hit = None
    if system == "ecomsearch":
        index = BM25Index.load(folder, cfg.text, mmap=False, verify=False)

        def search(q):
            return index.search(q, k=k)

        def hit(q):
            return len(index.search(q, k=k).rows) > 0
    elif system == "bm25s":
        retriever = bm25s.BM25.load(folder, mmap=False, show_progress=False)

        def search(q):
            return retriever.retrieve([jieba.lcut_for_search(q)], k=k, show_progress=False)
    else:
        with open(folder / "model.pkl", "rb") as f:
            model = pickle.load(f)

        def search(q):
            s = model.get_scores(jieba.lcut_for_search(q))
            top = np.argpartition(-s, k)[:k]
            return top[np.argsort(-s[top])]

    mem = _rss() - rss0
    lat = _latencies(search, queries)
    out = {
        "memory_mb": round(mem / 2**20, 1),
        "n_queries_timed": len(queries),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "mean_ms": round(float(lat.mean()), 3),
    }
    if hit is not None:
        out["query_hit_share"] = round(float(np.mean([hit(q) for q in queries])), 4)
    return out


def measure(system: str, corpus: str, queries: list[str], k: int = 10, config: str | None = None) -> dict:
    """Build in one process, then load and serve in a fresh one, so each figure is the system's own."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            row = pool.submit(build, system, corpus, tmp, config).result()
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            row.update(pool.submit(serve, system, tmp, queries, k, config).result())
    return row


def synthetic_corpus(titles: list[str], n: int, path: Path, seed: int = 0) -> None:
    """``n`` titles whose words follow the word frequencies and title lengths (in words) of ``titles``."""
    import jieba

    words: dict[str, int] = {}
    lengths = []
    for t in titles:
        ws = [w for w in jieba.lcut(t) if w.strip()]
        lengths.append(len(ws))
        for w in ws:
            words[w] = words.get(w, 0) + 1
    vocab = np.array(list(words))
    p = np.array(list(words.values()), dtype=np.float64)
    p /= p.sum()
    rng = np.random.default_rng(seed)
    lens = rng.choice(np.array(lengths), size=n)
    flat = vocab[rng.choice(len(vocab), size=int(lens.sum()), p=p)]
    ends = np.cumsum(lens)
    with open(path, "w", encoding="utf-8") as f:
        f.write("pid\ttitle\n")
        start = 0
        for i, end in enumerate(ends):
            f.write(f"s{i}\t{''.join(flat[start:end])}\n")
            start = end


def run_case(name: str, corpus: Path, queries: list[str], rank_sample: int) -> list[dict]:
    rows = []
    for system in ("ecomsearch", "bm25s", "rank_bm25"):
        qs = queries[:rank_sample] if system == "rank_bm25" else queries
        print(f"[{name}] {system}: building, then timing {len(qs)} queries ...", flush=True)
        row = measure(system, str(corpus), qs)
        row["corpus"] = name
        rows.append(row)
        print("   ", json.dumps(row), flush=True)
    ours, peer, ref = rows
    ours["speedup_vs_rank_bm25"] = round(ref["p50_ms"] / ours["p50_ms"], 1)
    ours["ratio_vs_bm25s"] = round(ours["p50_ms"] / peer["p50_ms"], 2)
    return rows


def main(argv=None) -> int:
    ap = command("eval.bench.bm25", __doc__, False)
    ap.add_argument("--full", action="store_true", help="also 200,000 and 1,000,000 generated titles")
    ap.add_argument("--queries", type=int, default=1000, help="real queries timed per system")
    ap.add_argument("--sizes", default="200000,1000000")
    ap.add_argument("--out", default="reports/bench/bm25.json")
    args = ap.parse_args(argv)
    if not WENTIAN.is_file() or not QUERYLOG.is_file():
        print(f"skipped: {WENTIAN} or {QUERYLOG} is absent (the benchmark runs on the shared datasets)")
        return 0
    _, qtexts = read_id_text(QUERYLOG)
    rng = np.random.default_rng(0)
    queries = [qtexts[i] for i in rng.choice(len(qtexts), size=args.queries, replace=False)]
    rows = run_case("wentian-20834", WENTIAN, queries, rank_sample=200)
    if args.full:
        _, titles = read_id_text(WENTIAN)
        with tempfile.TemporaryDirectory() as tmp:
            for n in (int(s) for s in args.sizes.split(",")):
                path = Path(tmp) / f"synthetic-{n}.tsv"
                t0 = time.perf_counter()
                synthetic_corpus(titles, n, path)
                print(f"generated {n} titles in {time.perf_counter() - t0:.0f} s", flush=True)
                rows += run_case(f"synthetic-{n}", path, queries, rank_sample=max(20, 200 * 20834 // n))
                path.unlink()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    out.write_text(json.dumps({"machine": machine, "k": 10, "results": rows}, indent=2), encoding="utf-8")
    cols = [
        "corpus",
        "system",
        "n_docs",
        "build_s",
        "tokenize_s",
        "disk_mb",
        "memory_mb",
        "p50_ms",
        "p99_ms",
        "n_queries_timed",
        "query_hit_share",
        "speedup_vs_rank_bm25",
        "ratio_vs_bm25s",
    ]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    print(f"\nwrote {out}")
    for r in rows:
        if r["system"] == "ecomsearch" and r["n_docs"] >= 1_000_000:
            checks = {
                "p50 <= 20 ms": r["p50_ms"] <= 20,
                ">= 100x rank_bm25": r["speedup_vs_rank_bm25"] >= 100,
                "<= 1.5x bm25s": r["ratio_vs_bm25s"] <= 1.5,
            }
            print(
                "targets at 1,000,000 titles: "
                + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in checks.items())
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
