"""The first stages on Milvus (``search.backend: milvus``): BM25 and dense retrieval in one collection, built
and kept here (its queries: :mod:`indexer.backends.milvus_search`).

What lives where:

- **One collection per build** (``<collection>__<build id>``); the index
  folder's ``milvus-<collection>.json`` names the one that mirrors its local builds and is
  replaced only when a new collection is complete, so a failed rebuild leaves
  the previous one serving (Milvus Lite has no aliases; the same file works
  for a server).  Fields: ``row`` (the product's row in our
  product table: the primary key, so results come back as rows like the
  local stages'), ``product_id``, ``category``, ``brand``, ``price`` and
  ``has_price`` (filters become boolean expressions), one text field per
  BM25 token field with its BM25 function into a sparse vector, and the
  bi-encoder ``vector`` (FLOAT_VECTOR, inner product; FLAT or IVF_FLAT here,
  HNSW on a cluster).
- **Our tokens, not Milvus's jieba.**  Each text field holds the token
  stream of :mod:`indexer.text` that the local BM25 index was built from,
  space-joined, under a whitespace analyzer; queries are tokenized by the
  same tokenizer.  BM25 k1 and b come from the config, so the scores are the
  local index's (``lucene``: the same idf and saturation).  With several
  token fields each field is searched on its own (``bm25_oversample`` times
  deeper than asked), scaled by its best score and weighted, as the local
  index combines them.
- **Everything after retrieval stays ours**: fusion, cross-encoder, ranker and
  personalization get the same :class:`~core.types.SearchResult` rows.
- **Where the scores can differ from the local index's**: a *filtered* query
  over several token fields scales each field by its best score among the
  filtered products (locally: among all products); after a delete Milvus's
  BM25 statistics leave the product out at once (locally: at the next
  rebuild).

Milvus Lite (a local ``.db`` file, the default URI ``<index_dir>/milvus.db``)
is started by the client inside the engine's process: nothing to run by hand.
A ``http://host:19530`` URI talks to a Milvus server or cluster with the
same code.  Milvus Lite 2.5.1 (the real C++ engine) is pinned: 3.x is a
pure-Python rewrite, 0.9–3.6 s per query at 20k titles with other BM25
scores; inserts go in batches (``insert_batch``) because one 20k-row insert
stalls it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.types import EcomsearchError

log = logging.getLogger(__name__)
MAX_VARCHAR = 65535
MAX_LIMIT = 16384  # Milvus's largest topk


class MilvusError(EcomsearchError, RuntimeError):
    """The Milvus collection is missing, from another build, or Milvus refused a call."""


def _client(uri: str):
    with warnings.catch_warnings():  # milvus-lite 2.5 imports pkg_resources
        warnings.simplefilter("ignore")
        from pymilvus import MilvusClient
    return MilvusClient(uri)


def resolve_uri(cfg) -> str:
    uri = cfg.search.milvus.uri
    if not uri:
        return str(Path(cfg.index_dir) / "milvus.db")
    return uri


def _ident(name: str) -> str:
    """A name Milvus accepts for a collection (letters, digits, underscores)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def base_name(cfg) -> str:
    name = cfg.search.milvus.collection or cfg.name
    return _ident(name if not name[0].isdigit() else f"c_{name}")


def _local_builds(cfg, with_dense: bool):
    """The local builds the config's index folder points at now: (BM25 index, dense index or None)."""
    from indexer.bm25 import BM25Index
    from indexer.dense import DenseIndex

    bm25 = BM25Index.load((cfg.index_dir / "bm25").resolve(), cfg.text, config_hash=cfg.index_fingerprint())
    return bm25, (DenseIndex.load((cfg.index_dir / "dense").resolve(), None) if with_dense else None)


def token_text(tokens) -> str:
    # a token never contains whitespace for the analyzer (it would split it); the query side does the same
    return " ".join(re.sub(r"\s", "_", t) for t in tokens)


@dataclass
class BuildInfo:
    collection: str
    n_products: int
    seconds: float
    rows_per_s: float


def build_collection(cfg, bm25, dense, progress: bool = True) -> BuildInfo:
    """Write the built local indexes (the BM25 token streams, the dense vectors, the product table) into a new
    Milvus collection and record it in the index folder's manifest; the previous collection is dropped afterwards."""
    from pymilvus import DataType, Function, FunctionType

    mc = cfg.search.milvus
    t0 = time.perf_counter()
    client = _client(resolve_uri(cfg))
    build_id = (bm25.manifest.get("build_id") or "b") + ("_" + dense.manifest.get("build_id", "") if dense else "")
    name = _ident(f"{base_name(cfg)}__{build_id}")[:250]
    n = len(bm25.products)
    fields = list(bm25.retrievers)
    k1, b = float(cfg.bm25.k1), float(cfg.bm25.b)
    schema = client.create_schema(
        auto_id=False,
        description=f"ecomsearch {cfg.name}: bm25 fields "
        f"{json.dumps(bm25.weights)}, catalog {bm25.manifest.get('catalog_sha256')}",
    )
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("product_id", DataType.VARCHAR, max_length=1024)
    schema.add_field("category", DataType.VARCHAR, max_length=1024)
    schema.add_field("brand", DataType.VARCHAR, max_length=1024)
    schema.add_field("price", DataType.FLOAT)
    schema.add_field("has_price", DataType.BOOL)
    index_params = client.prepare_index_params()
    for f in fields:
        schema.add_field(
            f"{f}_text",
            DataType.VARCHAR,
            max_length=MAX_VARCHAR,
            enable_analyzer=True,
            analyzer_params={"tokenizer": "whitespace"},
        )
        schema.add_field(f"{f}_sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name=f"bm25_{f}",
                function_type=FunctionType.BM25,
                input_field_names=[f"{f}_text"],
                output_field_names=[f"{f}_sparse"],
            )
        )
        index_params.add_index(
            f"{f}_sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25", params={"bm25_k1": k1, "bm25_b": b}
        )
    vectors = None
    if dense is not None and dense.vectors is not None:
        vectors = exact_vectors(dense)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        params = {"nlist": mc.nlist} if mc.index_type.upper().startswith("IVF") else {}
        index_params.add_index("vector", index_type=mc.index_type.upper(), metric_type="IP", params=params)
    if client.has_collection(name):
        client.drop_collection(name)
    client.create_collection(name, schema=schema, index_params=index_params)
    from indexer.deleted import deleted_ids

    gone = deleted_ids(cfg)  # deleted since the local build: never in the collection (filters would not mask them)
    ids = bm25.products.ids
    rows = [r for r in range(n) if ids[r] not in gone] if gone else range(n)
    try:
        insert_rows(client, name, bm25, vectors, rows, mc.insert_batch, progress)
        client.flush(name)
        client.load_collection(name)
        old = (read_collection_manifest(cfg) or {}).get("collection")
        write_collection_manifest(
            cfg,
            collection=name,
            bm25_build=bm25.manifest.get("build_id"),
            dense_build=dense.manifest.get("build_id") if dense else None,
            n_products=n,
        )
        if old is not None and old != name and client.has_collection(old):
            client.drop_collection(old)
    except BaseException:
        if client.has_collection(name) and (read_collection_manifest(cfg) or {}).get("collection") != name:
            client.drop_collection(name)  # the previous build keeps serving
        raise
    secs = time.perf_counter() - t0
    return BuildInfo(name, n, secs, n / secs if secs > 0 else 0.0)


def exact_vectors(dense) -> np.ndarray:
    """The float32 vectors FAISS searches (the index folder's ``vectors.npy`` is a float16 copy, whose rounding
    would reorder near-ties); the float16 copy where the index cannot give them back (compressed codes)."""
    try:
        return dense.index.reconstruct_batch(np.arange(dense.n, dtype=np.int64))
    except RuntimeError:
        return np.asarray(dense.vectors, dtype=np.float32)


def insert_rows(client, name: str, bm25, vectors, rows, batch_size: int, progress: bool = False) -> None:
    """Insert product rows (their facets, token streams and vectors) in batches of ``batch_size``."""
    from tqdm import tqdm

    products = bm25.products
    cats, brands = products.categories, products.brands
    cat_codes, brand_codes = np.asarray(products.category_codes), np.asarray(products.brand_codes)
    prices = np.asarray(products.prices, dtype=np.float64)
    vocab_of = {f: {i: t for t, i in r.vocab_dict.items()} for f, r in bm25.retrievers.items()}
    rows = list(rows)
    for start in tqdm(
        range(0, len(rows), batch_size), desc=f"milvus insert ({name})", disable=not progress, unit="batch"
    ):
        batch = []
        for r in rows[start : start + batch_size]:
            item = {
                "row": r,
                "product_id": products.ids[r],
                "category": cats[cat_codes[r]] if cat_codes[r] >= 0 else "",
                "brand": brands[brand_codes[r]] if brand_codes[r] >= 0 else "",
                "price": float(prices[r]) if np.isfinite(prices[r]) else 0.0,
                "has_price": bool(np.isfinite(prices[r])),
            }
            for f, dt in bm25.doc_tokens.items():
                ids = dt.ids[dt.indptr[r] : dt.indptr[r + 1]]
                item[f"{f}_text"] = token_text(vocab_of[f][int(i)] for i in ids)[:MAX_VARCHAR]
            if vectors is not None:
                item["vector"] = np.asarray(vectors[r], dtype=np.float32).tolist()
            batch.append(item)
        client.insert(name, batch)


def add_rows(cfg, progress: bool = False) -> int:
    """After products were added to the local builds (``python -m indexer --add``): insert the new rows into
    the collection and record the new builds.  Returns the number of rows inserted."""
    info = read_collection_manifest(cfg)
    if info is None:
        raise MilvusError(f"no Milvus collection for {cfg.index_dir}; build it with `make index BACKEND=milvus`")
    bm25, dense = _local_builds(cfg, with_dense=bool(info.get("dense_build")) and (cfg.index_dir / "dense").exists())
    start, stop = int(info["n_products"]), len(bm25.products)
    client = _client(resolve_uri(cfg))
    vectors = exact_vectors(dense) if dense is not None else None
    insert_rows(client, info["collection"], bm25, vectors, range(start, stop), cfg.search.milvus.insert_batch, progress)
    client.flush(info["collection"])
    write_collection_manifest(
        cfg,
        collection=info["collection"],
        bm25_build=bm25.manifest.get("build_id"),
        dense_build=dense.manifest.get("build_id") if dense is not None else None,
        n_products=stop,
    )
    return stop - start


def delete_ids(cfg, product_ids) -> int:
    """Delete products (by id) from the collection; returns how many rows were deleted."""
    from indexer.products import ProductTable

    info = read_collection_manifest(cfg)
    if info is None:
        return 0
    row_of = ProductTable.load((cfg.index_dir / "bm25").resolve()).row_map()
    rows = [int(row_of[p]) for p in product_ids if p in row_of]
    if rows:
        _client(resolve_uri(cfg)).delete(info["collection"], ids=rows)
    return len(rows)


def _is_lite_file(uri: str) -> bool:
    """A Milvus Lite database file (not a server or socket URI)."""
    return not re.match(r"^[a-z]+:", uri)


def serve_lite(cfg) -> str | None:
    """For several processes over a Milvus Lite file (replicas): start its server once, in this process, and
    return the URI (a unix socket) they all connect to — a Lite file opens in one process only.  None for a
    server URI."""
    uri = resolve_uri(cfg)
    if not _is_lite_file(uri):
        return None
    with warnings.catch_warnings():  # milvus-lite 2.5 imports pkg_resources
        warnings.simplefilter("ignore")
        from milvus_lite.server_manager import server_manager_instance
    return server_manager_instance.start_and_get_uri(uri)


def manifest_path(cfg) -> Path:
    return Path(cfg.index_dir) / f"milvus-{base_name(cfg)}.json"


def read_collection_manifest(cfg) -> dict | None:
    """Which collection holds this index folder's builds: ``<index_dir>/milvus-<name>.json`` (uri, collection, the
    bm25 and dense build ids it mirrors), replaced atomically when a build or an addition completes, as the
    local build folders' links are.  None when absent or written for another collection name."""
    try:
        m = json.loads(manifest_path(cfg).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if m.get("alias") != base_name(cfg):  # (the URI may differ: replicas reach a Lite file through its socket)
        return None
    return m


def write_collection_manifest(cfg, **fields) -> None:
    f = manifest_path(cfg)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"uri": resolve_uri(cfg), "alias": base_name(cfg), **fields}, indent=1) + "\n", encoding="utf-8"
    )
    tmp.replace(f)


def check_collection(cfg, bm25_build: str | None, dense_build: str | None):
    """A client on the config's collection when it holds these builds; :class:`MilvusError` otherwise."""
    uri, alias = resolve_uri(cfg), base_name(cfg)
    info = read_collection_manifest(cfg)
    if info is None:
        raise MilvusError(
            f"{uri}: no Milvus collection {alias!r} for {cfg.index_dir}; build it with `make index BACKEND=milvus`"
        )
    name = info["collection"]
    try:
        client = _client(uri)
        present = client.has_collection(name)
    except Exception as e:
        raise MilvusError(f"{uri}: cannot open the Milvus collection {name!r}: {e}") from None
    if not present:
        raise MilvusError(f"{uri}: the collection {name!r} is gone; rebuild with `make index BACKEND=milvus`")
    if info.get("bm25_build") != bm25_build or (dense_build is not None and info.get("dense_build") != dense_build):
        raise MilvusError(
            f"{uri}: collection {name!r} holds builds bm25 {info.get('bm25_build')} / dense "
            f"{info.get('dense_build')}, the local indexes are {bm25_build} / {dense_build}; "
            f"rebuild with `make index BACKEND=milvus`"
        )
    return client, name


def build_from_disk(cfg, progress: bool = True) -> BuildInfo:
    """The Milvus collection from the local build folders the config points at now (``make index
    BACKEND=milvus`` runs this after the local build)."""
    bm25, dense = _local_builds(
        cfg, with_dense="dense" in cfg.search.stages or bool(cfg.rerank.model and (cfg.index_dir / "dense").exists())
    )
    return build_collection(cfg, bm25, dense, progress)


def ensure_collection(cfg, progress: bool = True) -> BuildInfo | None:
    """Build the collection unless one for the current local builds is there (None: it was current)."""
    from indexer.store import read_manifest

    bm25_manifest = read_manifest((cfg.index_dir / "bm25").resolve(), "bm25", verify=False)
    dense_dir = (cfg.index_dir / "dense").resolve()
    dense_build = read_manifest(dense_dir, "dense", verify=False).get("build_id") if dense_dir.exists() else None
    try:
        check_collection(cfg, bm25_manifest.get("build_id"), dense_build)
        return None
    except MilvusError:
        return build_from_disk(cfg, progress)
