"""The BM25 keyword index: our tokens in a ``bm25s`` sparse index.

bm25s precomputes every (token, product) BM25 weight into a CSC matrix, so
a query is a sum of a few sparse columns plus a top-k selection — numpy
work, nothing per product in Python.  A filter is a boolean mask applied to
the score vector inside retrieval, before top-k, so a filtered query still
returns its k best matching products.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import bm25s
import numpy as np

from core.formats.catalog import Catalog
from core.config import BM25Config, Config, TextConfig
from indexer.products import ProductTable
from indexer.store import IndexLoadError, read_manifest, sha256_file, write_index
from indexer.text import Tokenizer
from core.types import SearchResult

KIND = "bm25"


def _silence_bm25s() -> None:
    import logging

    logging.getLogger("bm25s").setLevel(logging.WARNING)


_silence_bm25s()


def build_retriever(token_lists: Sequence[list[str]], cfg: BM25Config, progress: bool = False) -> bm25s.BM25:
    retriever = bm25s.BM25(method=cfg.method, k1=cfg.k1, b=cfg.b, delta=cfg.delta)
    retriever.index(token_lists, show_progress=progress)
    return retriever


def field_scores(retriever: bm25s.BM25, token_ids: np.ndarray, token_weights: np.ndarray | None = None) -> np.ndarray:
    """BM25 score of every product for one query: a sum of the query tokens' sparse columns, each scaled by its
    ``token_weights`` entry where given.

    One ``np.bincount`` over the concatenated postings (C speed) instead of
    a Python loop per token.
    """
    sc = retriever.scores
    n = int(sc["num_docs"])
    indptr = sc["indptr"]
    starts, ends = indptr[token_ids], indptr[token_ids + 1]
    if len(token_ids) == 1:
        sl = slice(int(starts[0]), int(ends[0]))
        rows, weights = sc["indices"][sl], sc["data"][sl]
    else:
        rows = np.concatenate([sc["indices"][a:b] for a, b in zip(starts, ends)])
        weights = np.concatenate([sc["data"][a:b] for a, b in zip(starts, ends)])
    if token_weights is not None:
        weights = weights * np.repeat(np.asarray(token_weights, dtype=np.float64), ends - starts)
    scores = np.bincount(rows, weights=weights, minlength=n)
    if retriever.nonoccurrence_array is not None:  # bm25l / bm25+
        extra = retriever.nonoccurrence_array[token_ids]
        scores += (extra if token_weights is None else extra * token_weights).sum()
    return scores


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows with a positive score, best first (ties by row, also at the k-th place: the same
    products whatever the partition picks, as every backend returns them)."""
    cand = np.flatnonzero(scores > 0)
    if len(cand) > k:
        kth = -np.partition(-scores[cand], k - 1)[k - 1]
        cand = cand[scores[cand] >= kth]  # every product tied with the k-th, then cut by row below
    order = np.lexsort((cand, -scores[cand]))[:k]
    rows = cand[order]
    return rows.astype(np.int64), scores[rows].astype(np.float32)


@dataclass
class DocTokens:
    """Each product's token ids in one field (CSR), kept so that products can be added without re-tokenizing."""

    indptr: np.ndarray  # int64, n_docs + 1
    ids: np.ndarray  # int32

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> "DocTokens":
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(t) for t in lists], out=indptr[1:])
        ids = np.fromiter((i for t in lists for i in t), dtype=np.int32, count=int(indptr[-1]))
        return cls(indptr, ids)

    def extend(self, other: "DocTokens") -> "DocTokens":
        return DocTokens(
            np.concatenate([self.indptr, other.indptr[1:] + self.indptr[-1]]), np.concatenate([self.ids, other.ids])
        )

    def lists(self) -> list[list[int]]:
        return [self.ids[a:b].tolist() for a, b in zip(self.indptr[:-1], self.indptr[1:])]


class BM25Index:
    """A loaded (or freshly built) BM25 index: one bm25s index per token field, the product table, the tokenizer."""

    def __init__(
        self,
        retrievers: dict[str, bm25s.BM25],
        weights: dict[str, float],
        products: ProductTable,
        tokenizer: Tokenizer,
        manifest: dict | None = None,
        doc_tokens: dict[str, DocTokens] | None = None,
    ):
        self.retrievers = retrievers
        self.weights = weights
        self.products = products
        self.tokenizer = tokenizer
        self.manifest = manifest or {}
        self.doc_tokens = doc_tokens or {}
        self.folder: Path | None = None  # the build folder it was loaded from
        self._n = len(products)

    def __len__(self) -> int:
        return self._n

    # -- building ---------------------------------------------------------
    @classmethod
    def build(
        cls, catalog: Catalog, text_cfg: TextConfig, bm25_cfg: BM25Config, progress: bool = False, runner=None
    ) -> "BM25Index":
        """``runner`` (:class:`indexer.distributed.RayRunner`): tokenize the titles on its workers."""
        words = (
            [w for col in (catalog.brands, catalog.categories) for w in col if w] if text_cfg.dict_from_catalog else []
        )
        tokenizer = Tokenizer(text_cfg, extra_words=words)
        many = runner.tokenizer(tokenizer, text_cfg, tokenizer.added_words) if runner is not None else tokenizer
        texts = catalog.index_texts()
        retrievers, doc_tokens = {}, {}
        stats = {"tokenize_s": 0.0, "index_s": 0.0, "n_without_tokens": 0}
        for fname in bm25_cfg.fields:
            t0 = time.perf_counter()
            tokens = many.tokenize_many(texts, progress=progress, desc=f"tokenize titles ({fname})", field=fname)
            t1 = time.perf_counter()
            retrievers[fname] = r = build_retriever(tokens, bm25_cfg, progress=progress)
            doc_tokens[fname] = DocTokens.from_lists([[r.vocab_dict[t] for t in doc] for doc in tokens])
            stats["tokenize_s"] += t1 - t0
            stats["index_s"] += time.perf_counter() - t1
            stats["n_without_tokens"] = max(stats["n_without_tokens"], sum(1 for t in tokens if not t))
            del tokens
        index = cls(
            retrievers, dict(bm25_cfg.fields), ProductTable.from_catalog(catalog), tokenizer, doc_tokens=doc_tokens
        )
        index.build_stats = stats
        return index

    def add(self, catalog: Catalog, progress: bool = False) -> "BM25Index":
        """A new index with ``catalog``'s products appended as new rows.

        Only the new titles are tokenized (with the index's tokenizer: a new
        brand joins jieba's dictionary at the next full rebuild); BM25 weights
        are recomputed for all products from the stored token ids (document
        frequencies and lengths change with every product added).
        """
        texts = catalog.index_texts()
        retrievers, doc_tokens = {}, {}
        for fname, old in self.retrievers.items():
            vocab = dict(old.vocab_dict)
            new_lists = []
            for doc in self.tokenizer.tokenize_many(texts, progress=progress, field=fname):
                new_lists.append([vocab.setdefault(t, len(vocab)) for t in doc])
            tokens = self.doc_tokens[fname].extend(DocTokens.from_lists(new_lists))
            r = bm25s.BM25(method=old.method, k1=old.k1, b=old.b, delta=old.delta)
            r.scores = r.build_index_from_ids(list(range(len(vocab))), tokens.lists(), show_progress=progress)
            r.vocab_dict = vocab
            r.unique_token_ids_set = set(vocab.values())
            retrievers[fname], doc_tokens[fname] = r, tokens
        return BM25Index(
            retrievers, self.weights, self.products.append(catalog), self.tokenizer, dict(self.manifest), doc_tokens
        )

    def save_to(self, folder: Path) -> dict:
        """Write the index files into ``folder`` (used inside :func:`indexer.store.write_index`)."""
        for fname, r in self.retrievers.items():
            r.save(folder / f"bm25s-{fname}", show_progress=False)
            np.save(folder / f"doc_tokens-{fname}.indptr.npy", self.doc_tokens[fname].indptr)
            np.save(folder / f"doc_tokens-{fname}.ids.npy", self.doc_tokens[fname].ids)
        self.products.save(folder)
        (folder / "dict_words.txt").write_text("\n".join(self.tokenizer.added_words), encoding="utf-8")
        if "words" in self.retrievers:  # what query understanding reads (engine.understanding)
            from indexer.query_tables import build_query_tables

            build_query_tables(self).save(folder)
        any_r = next(iter(self.retrievers.values()))
        return {
            "n_products": len(self.products),
            "bm25": {
                "method": any_r.method,
                "k1": any_r.k1,
                "b": any_r.b,
                "fields": self.weights,
                "vocab_size": {f: len(r.vocab_dict) for f, r in self.retrievers.items()},
            },
        }

    @classmethod
    def load(
        cls,
        folder: Path,
        text_cfg: TextConfig,
        config_hash: str | None = None,
        mmap: bool = True,
        verify: bool = True,
        tokenizer: Tokenizer | None = None,
    ) -> "BM25Index":
        """An index from its build folder.  ``tokenizer``: one already built (a running engine's); reused when it
        was built from the same text settings and dictionary words (loading jieba's dictionary is most of the
        cost of opening a small index: an add followed by a reload would pay it twice)."""
        folder = Path(folder)
        manifest = read_manifest(folder, KIND, verify=verify)
        if config_hash is not None and manifest.get("config_hash") != config_hash:
            raise IndexLoadError(
                f"{folder}: built with settings {manifest.get('config_hash')}, the config now "
                f"gives {config_hash} (catalog, text or bm25 changed); rebuild with `make index`"
            )
        weights = manifest["bm25"]["fields"]
        retrievers = {
            f: bm25s.BM25.load(folder / f"bm25s-{f}", mmap=mmap, show_progress=False, verbosity=0) for f in weights
        }
        words = tuple(w for w in (folder / "dict_words.txt").read_text(encoding="utf-8").split("\n") if w)
        if tokenizer is None or tokenizer.source != (text_cfg, words):
            tokenizer = Tokenizer(text_cfg, extra_words=words)
        mode = "r" if mmap else None
        doc_tokens = {
            f: DocTokens(
                np.load(folder / f"doc_tokens-{f}.indptr.npy", mmap_mode=mode),
                np.load(folder / f"doc_tokens-{f}.ids.npy", mmap_mode=mode),
            )
            for f in weights
        }
        index = cls(retrievers, weights, ProductTable.load(folder, mmap=mmap), tokenizer, manifest, doc_tokens)
        index.folder = folder
        return index

    # -- searching --------------------------------------------------------
    def scores(self, text: str) -> np.ndarray | None:
        """Every product's score for a query (None when no query token is in the index)."""
        total = None
        multi = len(self.retrievers) > 1
        tokens = self.tokenizer.tokenize_fields(text, tuple(self.retrievers))
        for fname, r in self.retrievers.items():
            vocab = r.vocab_dict
            ids = np.fromiter((vocab[t] for t in tokens[fname] if t in vocab), dtype=np.int64)
            if len(ids) == 0:
                continue
            s = field_scores(r, ids)
            if multi:
                best = s.max()
                if best <= 0:
                    continue
                s *= self.weights[fname] / best
            total = s if total is None else total + s
        return total

    def token_matrix(self):
        """Token × product CSR matrix of the ``words`` field, 1 where a title holds the token (built once)."""
        m = getattr(self, "_token_matrix", None)
        if m is None:
            import scipy.sparse as sp

            dt = self.doc_tokens["words"]
            n_docs = len(dt.indptr) - 1
            docs = np.repeat(np.arange(n_docs), np.diff(dt.indptr))
            shape = (len(self.retrievers["words"].vocab_dict) + 1, n_docs)
            m = sp.csr_matrix((np.ones(len(dt.ids), dtype=np.float32), (dt.ids, docs)), shape=shape)
            m.data[:] = 1.0  # a token repeated in a title counts once
            self._token_matrix = m
        return m

    def token_sets(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Per text: the ids of its distinct ``words`` tokens the index knows, and how many distinct tokens it
        has in all (an unknown token counts as one no product holds)."""
        vocab = self.retrievers["words"].vocab_dict
        toks = [set(self.tokenizer.tokenize(t)) for t in texts]
        return [sorted(vocab[t] for t in ts if t in vocab) for ts in toks], np.array([len(ts) for ts in toks])

    def matching(self, text: str, min_match: float, mask: np.ndarray | None = None) -> np.ndarray:
        """The rows of the products holding at least ``min_match`` of the query's distinct word tokens (rounded
        down, at least one; Elasticsearch's minimum_should_match), under ``mask``."""
        (ids,), n = self.token_sets([text])
        if not ids:
            return np.zeros(0, dtype=np.int64)
        need = max(1, int(np.floor(min_match * n[0] + 1e-9)))
        counts = np.asarray(self.token_matrix()[ids].sum(axis=0)).ravel()
        keep = counts >= need
        if mask is not None:
            keep &= mask
        return np.flatnonzero(keep)

    def feedback_scores(self, text: str, rows: np.ndarray, terms: int, min_docs: int = 2) -> np.ndarray | None:
        """Every product's score for the ``terms`` best words of the titles of ``rows`` (pseudo-relevance
        feedback, after RM3): words the query lacks that at least ``min_docs`` of those titles hold, ranked by
        that count × idf, each weighted by the share of titles holding it; in the scale :meth:`scores` gives
        the query's words (None: no such word, or no ``words`` field)."""
        r, dt = self.retrievers.get("words"), self.doc_tokens.get("words")
        if r is None or dt is None or len(rows) == 0 or terms <= 0:
            return None
        (query_ids,), _ = self.token_sets([text])
        held = np.concatenate([np.unique(dt.ids[dt.indptr[x] : dt.indptr[x + 1]]) for x in np.asarray(rows)])
        ids, count = np.unique(held[~np.isin(held, query_ids)], return_counts=True)
        keep = count >= min_docs
        if not keep.any():
            return None
        ids, count = ids[keep], count[keep]
        df = np.diff(r.scores["indptr"])[ids]
        idf = np.log((self._n - df + 0.5) / (df + 0.5) + 1.0)
        best = np.lexsort((ids, -(count * idf)))[:terms]
        out = field_scores(r, ids[best].astype(np.int64), count[best] / len(rows))
        if len(self.retrievers) > 1:  # scores() scales each field by its weight over its best product
            words = field_scores(r, np.asarray(query_ids, dtype=np.int64)) if query_ids else out
            out *= self.weights["words"] / max(float(words.max()), 1e-9)
        return out

    def search(self, text: str, k: int = 10, mask: np.ndarray | None = None) -> SearchResult:
        """Top-k products for a query; ``mask`` (bool, one per product) filters inside retrieval, before top-k."""
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (self._n,):
                raise ValueError(f"mask must have one entry per product ({self._n}), got shape {mask.shape}")
        scores = self.scores(text)
        if scores is None:
            return SearchResult(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        return self.top(scores, k, mask)

    def top(self, scores: np.ndarray, k: int, mask: np.ndarray | None = None) -> SearchResult:
        """The top-k of every product's ``scores`` (:meth:`scores`, perhaps with more added), ``mask`` applied
        (``scores`` itself is left as it is)."""
        if mask is not None:
            scores = np.where(np.asarray(mask, dtype=bool), scores, 0.0)
        return SearchResult(*top_k(scores, min(k, self._n)))


def build_and_save(
    cfg: Config, catalog: Catalog, progress: bool = True, runner=None, commit=None
) -> tuple[Path, dict, "BM25Index"]:
    """Build the BM25 index for ``cfg`` and swap it in at ``<index_dir>/bm25`` (with ``commit``, an
    :class:`indexer.store.IndexCommit`: when it switches, with the other stages it built)."""
    t0 = time.perf_counter()
    index = BM25Index.build(catalog, cfg.text, cfg.bm25, progress=progress, runner=runner)
    build_s = time.perf_counter() - t0
    extras = {
        "catalog": str(catalog.source),
        "catalog_sha256": sha256_file(catalog.source) if catalog.source else None,
        "n_rejected": len(catalog.rejected),
        "n_without_tokens": index.build_stats["n_without_tokens"],
        "build_seconds": round(build_s, 3),
    }
    path = cfg.index_dir / KIND
    save = lambda folder: {**index.save_to(folder), **extras}  # noqa: E731
    manifest = (
        commit.build(KIND, save, KIND, cfg.index_fingerprint())
        if commit is not None
        else write_index(path, save, KIND, cfg.index_fingerprint())
    )
    index.manifest = manifest
    return path, manifest, index
