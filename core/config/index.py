"""The config sections of the index build (``indexer/``): the catalog, text analysis, BM25, the dense stage
and the Milvus backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.config.loader import INDEXED_WHEN_SET, NOT_INDEXED, NOT_TRAINED, TRAINED_WHEN_SET  # noqa: F401


@dataclass
class CatalogConfig:
    # not in the index fingerprint: the catalog's content is (catalog_sha256 in each manifest), so a built tree
    # copied to another folder stays current
    path: Path = field(metadata=NOT_INDEXED)
    # jsonl | csv | tsv | auto (by extension)
    format: str = "auto"
    # our field name -> column name in the file (id, title, category, brand, price, attributes)
    columns: dict[str, str] = field(default_factory=dict)
    skip_bad_rows: bool = field(default=False, metadata=NOT_INDEXED)
    # where rejected rows go with --skip-bad-rows; default: <index dir>/rejected.jsonl
    rejects_path: Path | None = field(default=None, metadata=NOT_INDEXED)


@dataclass
class TextConfig:
    traditional_to_simplified: bool = True
    # extra jieba dictionary (one word per line, optional frequency and POS, jieba format)
    user_dict: Path | None = field(default=None, metadata=NOT_INDEXED)  # its content is fingerprinted
    # add the catalog's brands and categories to jieba's dictionary
    dict_from_catalog: bool = True
    # stopword file; None uses the built-in list
    stopwords: Path | None = field(default=None, metadata=NOT_INDEXED)  # its content is fingerprinted
    # also index each Latin/number part of a mixed token (iphone15pro -> iphone, 15, pro)
    split_alnum: bool = True
    # character n-grams (1..n) for Han words jieba does not know; 0 turns it off
    unknown_word_ngrams: int = 0
    fold_plurals: bool = True
    # join a number and a following unit ("500 ml" -> 500ml)
    join_units: bool = True
    # English measurements: fractions as decimals, unit spellings as one token (1/2 in. = 1/2" = 0.5in)
    english_units: bool = field(default=False, metadata=INDEXED_WHEN_SET)


@dataclass
class BM25Config:
    # bm25s method: robertson | lucene | atire | bm25l | bm25+
    method: str = "lucene"
    k1: float = 1.5
    b: float = 0.75
    delta: float = 0.5
    # token fields and their weights: "words" (jieba search mode), "chars" (Han characters);
    # with several fields each field's scores are scaled by the query's best score, then weighted and summed
    fields: dict[str, float] = field(default_factory=lambda: {"words": 1.0})


@dataclass
class DenseConfig:
    # the bi-encoder the `dense` stage uses: a local folder (relative to root) or a hub id
    model: str = "models/base"
    # the zero-shot base model (`dense-base` stage; `make model` builds it into models/base)
    base_model: str = "models/base"
    max_length: int = 64
    batch_size: int = 64
    device: str = "auto"  # auto: cuda when torch sees a GPU, else cpu
    # FAISS index factory string: Flat, HNSW32, IVF4096,PQ32, ...
    factory: str = "Flat"
    # how queries are encoded at search time (products are always encoded by torch at build time):
    # torch, or onnx (+ quantize: none | int8), exported by `python -m finetune.export_onnx`
    query_runtime: str = "torch"
    query_quantize: str = "none"
    # search-time parameters: nprobe (IVF), efSearch (HNSW)
    nprobe: int = 32
    ef_search: int = 128
    # vocabulary trimming of the `dense` model: keep the pieces the catalog and these training
    # queries need (never dev or held-out queries), plus every single character
    trim_vocab: bool = False
    trim_queries: Path | None = None
    # product groups: spherical k-means over the product vectors, computed by `make index` and stored with the
    # dense index (personalization's stand-in for categories); 0 = about sqrt(products / 2), within 8..1024
    groups: int = 0


@dataclass
class MilvusConfig:
    """``search.backend: milvus`` (indexer.backends.milvus): where the collection lives and how it is indexed."""

    # a Milvus Lite file (default <index_dir>/milvus.db, started inside the engine) or http://host:19530
    uri: str | None = None
    # the alias queries use (default: the config's name); each build is a collection of its own behind it
    collection: str | None = None
    # the vector index: FLAT (exact, as FAISS Flat) or IVF_FLAT here; HNSW on a Milvus server
    index_type: str = "FLAT"
    nlist: int = 128
    nprobe: int = 16
    # rows per insert call (Milvus Lite stalls on one very large insert)
    insert_batch: int = 1000
    # with several BM25 token fields, each field is searched this many times deeper than asked, then merged
    bm25_oversample: int = 4
