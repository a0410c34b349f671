"""The BM25 keyword index: our tokens in a ``bm25s`` sparse index.

bm25s precomputes every (token, product) BM25 weight into a CSC matrix, so
a query is a sum of a few sparse columns plus a top-k selection — numpy
work, nothing per product in Python.  A filter is a boolean mask applied to
the score vector inside retrieval, before top-k, so a filtered query still
returns its k best matching products.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import bm25s
import numpy as np
from bm25s.selection import topk as _topk

from indexer.catalog import Catalog
from indexer.config import BM25Config, Config, TextConfig
from indexer.products import ProductTable
from indexer.store import IndexLoadError, read_manifest, write_index
from indexer.text import Tokenizer

KIND = "bm25"


def _silence_bm25s() -> None:
    import logging

    logging.getLogger("bm25s").setLevel(logging.WARNING)


_silence_bm25s()


def build_retriever(token_lists: Sequence[list[str]], cfg: BM25Config, progress: bool = False) -> bm25s.BM25:
    retriever = bm25s.BM25(method=cfg.method, k1=cfg.k1, b=cfg.b, delta=cfg.delta)
    retriever.index(token_lists, show_progress=progress)
    return retriever


@dataclass
class SearchResult:
    rows: np.ndarray  # int64 product rows, best first
    scores: np.ndarray  # float32, > 0


class BM25Index:
    """A loaded (or freshly built) BM25 index with its product table and tokenizer."""

    def __init__(self, retriever: bm25s.BM25, products: ProductTable, tokenizer: Tokenizer, manifest: dict | None = None):
        self.retriever = retriever
        self.products = products
        self.tokenizer = tokenizer
        self.manifest = manifest or {}
        self._vocab = retriever.vocab_dict
        self._n = int(retriever.scores["num_docs"])

    def __len__(self) -> int:
        return self._n

    # -- building ---------------------------------------------------------
    @classmethod
    def build(cls, catalog: Catalog, text_cfg: TextConfig, bm25_cfg: BM25Config, progress: bool = False) -> "BM25Index":
        brands = [b for b in catalog.brands if b] if text_cfg.brands_to_dict else []
        tokenizer = Tokenizer(text_cfg, extra_words=brands)
        tokens = tokenizer.tokenize_many(catalog.index_texts(), progress=progress, desc="tokenize titles")
        retriever = build_retriever(tokens, bm25_cfg, progress=progress)
        index = cls(retriever, ProductTable.from_catalog(catalog), tokenizer)
        index.n_empty = sum(1 for t in tokens if not t)
        return index

    def save_to(self, folder: Path) -> dict:
        """Write the index files into ``folder`` (used inside :func:`indexer.store.write_index`)."""
        self.retriever.save(folder / "bm25s", show_progress=False)
        self.products.save(folder)
        (folder / "dict_words.txt").write_text("\n".join(self.tokenizer.added_words), encoding="utf-8")
        return {"n_products": len(self.products), "bm25": {"method": self.retriever.method,
                                                          "k1": self.retriever.k1, "b": self.retriever.b,
                                                          "vocab_size": len(self._vocab)}}

    @classmethod
    def load(cls, folder: Path, text_cfg: TextConfig, config_hash: str | None = None, mmap: bool = True,
             verify: bool = True) -> "BM25Index":
        folder = Path(folder)
        manifest = read_manifest(folder, KIND, verify=verify)
        if config_hash is not None and manifest.get("config_hash") != config_hash:
            raise IndexLoadError(f"{folder}: built with settings {manifest.get('config_hash')}, the config now "
                                 f"gives {config_hash} (catalog, text or bm25 changed); rebuild with `make index`")
        retriever = bm25s.BM25.load(folder / "bm25s", mmap=mmap, show_progress=False, verbosity=0)
        words = (folder / "dict_words.txt").read_text(encoding="utf-8").split("\n")
        tokenizer = Tokenizer(text_cfg, extra_words=[w for w in words if w])
        return cls(retriever, ProductTable.load(folder, mmap=mmap), tokenizer, manifest)

    # -- searching --------------------------------------------------------
    def token_ids(self, tokens: Sequence[str]) -> np.ndarray:
        vocab = self._vocab
        return np.fromiter((vocab[t] for t in tokens if t in vocab), dtype=np.int32)

    def search_tokens(self, tokens: Sequence[str], k: int = 10, mask: np.ndarray | None = None) -> SearchResult:
        """Top-k products for already tokenized query text; ``mask`` (bool, one per product) filters."""
        ids = self.token_ids(tokens)
        if len(ids) == 0:
            return SearchResult(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (self._n,):
                raise ValueError(f"mask must have one entry per product ({self._n}), got shape {mask.shape}")
        scores = self.retriever.get_scores_from_ids(ids, weight_mask=mask)
        k = min(k, self._n)
        top_scores, top_rows = _topk(scores, k=k, sorted=True, backend="numpy")
        keep = top_scores > 0  # products matching no query token never count as hits
        return SearchResult(top_rows[keep].astype(np.int64), top_scores[keep])

    def search(self, text: str, k: int = 10, mask: np.ndarray | None = None) -> SearchResult:
        return self.search_tokens(self.tokenizer.tokenize(text), k=k, mask=mask)


def build_and_save(cfg: Config, catalog: Catalog, progress: bool = True) -> tuple[Path, dict, "BM25Index"]:
    """Build the BM25 index for ``cfg`` and swap it in at ``<index_dir>/bm25``."""
    t0 = time.perf_counter()
    index = BM25Index.build(catalog, cfg.text, cfg.bm25, progress=progress)
    build_s = time.perf_counter() - t0
    from indexer.store import sha256_file

    extras = {"catalog": str(catalog.source), "catalog_sha256": sha256_file(catalog.source) if catalog.source else None,
              "n_rejected": len(catalog.rejected), "n_without_tokens": index.n_empty,
              "build_seconds": round(build_s, 3)}
    path = cfg.index_dir / KIND
    manifest = write_index(path, lambda folder: {**index.save_to(folder), **extras}, KIND, cfg.index_fingerprint())
    index.manifest = manifest
    return path, manifest, index


def describe(manifest: dict) -> str:
    return json.dumps({k: manifest[k] for k in ("n_products", "config_hash", "build_id") if k in manifest})
