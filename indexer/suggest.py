"""Query log + catalog → suggestions that find products → the suggestion index (a stage of the index version).

Sources (``suggest:`` in the config, docs/suggestions.md):

- the query log (``suggest.log``; else the click log's searches, one per shopper and query): every query, and
  each word-boundary prefix that ``prefix_min_queries`` or more queries start with (蓝牙耳机 from
  蓝牙耳机 降噪, 蓝牙耳机 运动 …); popularity = the searches of the text + those of the queries extending it;
- the catalog, so that a new shop has suggestions on day one: brands, categories and the word pairs and
  triples that ``segment_min_products`` titles contain, each worth ``catalog_weight`` per product.

Every candidate is searched at build time against the BM25 index's word tokens, vectorized as one sparse
product per chunk: it is kept only where ``min_hits`` products hold ``min_match`` of its tokens; the
categories of those products give its hint.  A blocklist phrase removes every suggestion that contains it.
"""

from __future__ import annotations

import csv
import hashlib
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np

from core.types import EcomsearchError
from indexer.suggest_index import SuggestIndex
from indexer.text import normalize

KIND = "suggest"
_SPACES = re.compile(r"\s+")
_HAN = re.compile(r"[\u4e00-\u9fff]")
MAXIMAL = 0.9  # a prefix or segment followed by one word in this share of its uses is a fragment


class SuggestSourceError(EcomsearchError, ValueError):
    """A query log or blocklist that cannot be read (names the file and line)."""


def clean(text: str, traditional_to_simplified: bool = True) -> str:
    """The form suggestions are stored and looked up in: normalized, single spaces, trimmed."""
    return _SPACES.sub(" ", normalize(text, traditional_to_simplified)).strip()


def read_query_log(path: Path) -> list[str]:
    """Queries of a log: one per line, or a TSV/CSV whose header has a ``query`` column."""
    path = Path(path)
    if not path.is_file():
        raise SuggestSourceError(f"suggest.log: file not found: {path}")
    with open(path, encoding="utf-8", newline="") as f:
        head = f.readline()
        sep = "\t" if "\t" in head else ("," if "," in head else None)
        cols = [c.strip().lower() for c in head.rstrip("\r\n").split(sep)] if sep else []
        if sep and "query" in cols:
            col = cols.index("query")
            out = []
            for line, row in enumerate(csv.reader(f, delimiter=sep, quoting=csv.QUOTE_NONE), start=2):
                if not row:
                    continue
                if len(row) <= col:
                    raise SuggestSourceError(f"{path}:{line}: query: missing (the row has {len(row)} columns)")
                out.append(row[col])
            return out
        return [head.rstrip("\r\n")] + [line.rstrip("\r\n") for line in f]


def clicklog_queries(path: Path) -> list[str]:
    """One search per shopper and query of a click log (of a judged-queries file: its queries)."""
    from core.formats.clicklog import ClickLogError, read_clicklog

    try:
        events = read_clicklog(path)
    except ClickLogError:
        return read_query_log(path)  # finetune.train may be judged queries (a query column)
    return [q for _, q in {(e.user_id, e.query) for e in events if e.query}]


def read_blocklist(path: Path | None, t2s: bool) -> list[str]:
    if path is None:
        return []
    if not Path(path).is_file():
        raise SuggestSourceError(f"suggest.blocklist: file not found: {path}")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [c for c in (clean(x, t2s) for x in lines if not x.lstrip().startswith("#")) if c]


def log_candidates(queries: list[str], cfg, t2s: bool) -> Counter:
    """Searches per query text, plus the word-boundary prefixes shared by ``prefix_min_queries`` queries and
    not nearly always followed by the same next word (蓝牙耳机半 is a fragment of 蓝牙耳机半入耳)."""
    import jieba

    counts = Counter(c for c in (clean(q, t2s) for q in queries) if c and len(c) <= cfg.max_chars)
    extend: Counter = Counter()
    child: dict[str, Counter] = {}
    for q, n in counts.items():
        heads, pos = [], 0
        for w in list(jieba.cut(q))[:-1]:
            pos += len(w)
            head = q[:pos].strip()
            if len(head) >= 2 and head != q and (not heads or head != heads[-1]):
                heads.append(head)
        for h, nxt in zip(heads, heads[1:] + [q]):
            extend[h] += n
            child.setdefault(h, Counter())[nxt] += n
    out = Counter(counts)
    for head, n in extend.items():
        if head in counts or (n >= cfg.prefix_min_queries and max(child[head].values()) < MAXIMAL * n):
            out[head] += n
    return out


def catalog_candidates(products, cfg, t2s: bool) -> Counter:
    """Brands, categories and frequent title segments, weighted by the products they name."""
    import jieba

    out: Counter = Counter()
    for codes, names in ((products.brand_codes, products.brands), (products.category_codes, products.categories)):
        if codes is None or not len(names):
            continue
        n = np.bincount(codes[codes >= 0], minlength=len(names))
        for name, c in zip(names, n):
            t = clean(name, t2s)
            if t and c:
                out[t] += cfg.catalog_weight * float(c)
    df: Counter = Counter()
    for title in products.titles.tolist():
        words = [w for w in jieba.cut(clean(title, t2s)) if w.strip()]
        seen = set()
        for size in (2, 3, 4):
            for i in range(len(words) - size + 1):
                seen.add(tuple(words[i : i + size]))
        df.update(seen)
    widest: dict[tuple, int] = {}  # per segment, the titles of its most frequent one-word extension
    for seg, c in df.items():
        widest[seg[:-1]] = max(widest.get(seg[:-1], 0), c)
    for seg, c in df.items():
        text = "".join(seg)
        if len(seg) == 4 or c < cfg.segment_min_products or not (2 <= len(text) <= 12 and _HAN.search(text)):
            continue
        # a fragment of a longer phrase (手机4g全 of 手机4g全网通) is no suggestion: keep the maximal one
        if widest.get(seg, 0) >= MAXIMAL * c:
            continue
        out[text] += cfg.catalog_weight * c
    return out


def merge_spacing(pop: Counter) -> Counter:
    """One suggestion per text that differs only in spaces (蓝月亮 洗衣液 / 蓝月亮洗衣液): the most popular
    spelling, with the popularity of all."""
    groups: dict[str, list[str]] = {}
    for t in pop:
        groups.setdefault(t.replace(" ", ""), []).append(t)
    out: Counter = Counter()
    for spellings in groups.values():
        best = max(spellings, key=lambda t: (pop[t], -len(t)))
        out[best] = sum(pop[t] for t in spellings)
    return out


def hit_counts(bm25, texts: list[str], min_match: float, chunk: int = 4096, progress: bool = False):
    """(hits, category code of the majority of hits or -1, its share): per text, the products holding at least
    ``min_match`` of its distinct word tokens (:meth:`indexer.bm25.BM25Index.matching`, one sparse product per
    chunk of texts)."""
    import scipy.sparse as sp
    from tqdm import tqdm

    X = bm25.token_matrix()
    n_vocab, n_docs = X.shape
    cats = bm25.products.category_codes
    n_cat = len(bm25.products.categories)
    C = None
    if n_cat:
        has = cats >= 0
        C = sp.csr_matrix((np.ones(int(has.sum())), (np.flatnonzero(has), cats[has])), shape=(n_docs, n_cat))
    hits = np.zeros(len(texts), dtype=np.int32)
    top_cat = np.full(len(texts), -1, dtype=np.int32)
    share = np.zeros(len(texts))
    for a in tqdm(range(0, len(texts), chunk), desc="suggestion hits", disable=not progress):
        ids, n_tok = bm25.token_sets(texts[a : a + chunk])
        rows = np.repeat(np.arange(len(ids)), [len(i) for i in ids])
        cols = np.fromiter((j for i in ids for j in i), dtype=np.int64, count=len(rows))
        Q = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(ids), n_vocab))
        need = np.maximum(1, np.floor(min_match * n_tok + 1e-9))
        M = (Q @ X).tocsr()
        M.data = (M.data >= np.repeat(need, np.diff(M.indptr))).astype(np.float32)
        M.eliminate_zeros()
        h = np.diff(M.indptr)
        h[np.array([len(i) == 0 for i in ids], dtype=bool)] = 0
        hits[a : a + len(ids)] = h
        if C is not None:
            counts = (M @ C).toarray()
            top_cat[a : a + len(ids)] = counts.argmax(axis=1)
            share[a : a + len(ids)] = counts.max(axis=1) / np.maximum(h, 1)
    return hits, top_cat, share


def sources_fingerprint(cfg) -> str:
    """What the suggestion stage was built from: its settings, the log and the blocklist."""
    from dataclasses import asdict

    h = hashlib.sha256(repr(sorted(asdict(cfg.suggest).items())).encode())
    for p in (cfg.suggest.log or cfg.finetune.train, cfg.suggest.blocklist):
        if p is not None and Path(p).is_file():
            h.update(Path(p).read_bytes())
    h.update(cfg.index_fingerprint().encode())
    return h.hexdigest()[:16]


def build_suggest_index(cfg, bm25, progress: bool = False, exclude=frozenset()) -> SuggestIndex:
    """The suggestions of ``cfg`` over the BM25 index just built (or serving); ``exclude``: cleaned query texts
    left out of the log (an evaluation's held-out targets)."""
    sc = cfg.suggest
    t2s = cfg.text.traditional_to_simplified
    t0 = time.perf_counter()
    if sc.log is not None:
        queries, log_name = read_query_log(sc.log), str(sc.log)
    elif cfg.finetune.train is not None and Path(cfg.finetune.train).is_file():
        queries, log_name = clicklog_queries(cfg.finetune.train), f"click log {cfg.finetune.train}"
    else:
        queries, log_name = [], None
    if exclude:
        queries = [q for q in queries if clean(q, t2s) not in exclude]
    from_log = log_candidates(queries, sc, t2s)
    from_catalog = catalog_candidates(bm25.products, sc, t2s)
    pop = Counter(from_log)
    pop.update(from_catalog)
    pop = merge_spacing(pop)
    blocked = read_blocklist(sc.blocklist, t2s)
    block_re = re.compile("|".join(re.escape(b) for b in blocked)) if blocked else None
    texts = [t for t in pop if not (block_re and block_re.search(t))]
    hits, cat, share = hit_counts(bm25, texts, sc.min_match, progress=progress)
    keep = hits >= sc.min_hits
    kept = [t for t, k in zip(texts, keep) if k]
    cat = np.where(share[keep] >= sc.category_min_share, cat[keep], -1)
    meta = {
        "log": log_name,
        "log_queries": len(queries),
        "from_log": len(from_log),
        "from_catalog": len(from_catalog),
        "blocked": len(pop) - len(texts),
        "too_few_hits": int((~keep).sum()),
        "min_hits": sc.min_hits,
    }
    index = SuggestIndex.build(
        kept,
        [pop[t] for t in kept],
        hits[keep],
        cat,
        bm25.products.categories,
        sc.top_k,
        sc.list_threshold,
        meta,
    )
    index.meta["build_seconds"] = round(time.perf_counter() - t0, 2)
    return index


def build_and_save(cfg, bm25, commit=None, progress: bool = True) -> tuple[Path, dict]:
    """Build the suggestion stage and write it as a build of the index version (with ``commit``: switched in
    with the other stages it built)."""
    from indexer.store import write_index

    index = build_suggest_index(cfg, bm25, progress)
    save = lambda folder: {**index.save_to(folder), "sources": sources_fingerprint(cfg)}  # noqa: E731
    path = cfg.index_dir / KIND
    if commit is not None:
        manifest = commit.build(KIND, save, KIND, cfg.index_fingerprint())
    else:
        manifest = write_index(path, save, KIND, cfg.index_fingerprint())
    return path, manifest
