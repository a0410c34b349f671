"""Changing a built index between full rebuilds: adding and deleting products.

- **Add**: new products get new rows in every stage: the product table and
  BM25 (only the new titles are tokenized; BM25 weights are recomputed from
  the stored token ids) and every dense index (only the new titles are
  encoded).  Each stage is written as a new version and swapped in
  atomically.  A product already in the index is refused (a changed
  product is picked up by the next full rebuild).
- **Delete**: a product id goes to ``<index_dir>/deleted.json`` (a JSON list,
  written atomically: no character of an id can split it in two; an older
  index's one-id-per-line ``deleted.txt`` is still read).  Every stage masks deleted rows inside retrieval, so they are
  never returned again (a running engine checks the file on every query);
  every full rebuild leaves them out of the index files.
- **Durable**: added products are also appended to ``<index_dir>/additions.jsonl``,
  which every full rebuild merges into the catalog (a product the catalog
  file itself holds wins), so an addition survives ``make index``; a deleted
  product stays deleted across rebuilds (``deleted.json`` is kept) until it is
  added again (no rebuild needed: the new row supersedes the deleted one).
- **Milvus** (``search.backend: milvus``): deletes are deleted from the
  collection and additions inserted into it, under the same lock.
- **Two processes**: adds and deletes take an exclusive file lock
  (``<index_dir>/.updates.lock``) around their read-modify-write, so two at
  once lose nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from typing import Container, Iterable

import numpy as np

from indexer.bm25 import KIND as BM25_KIND
from indexer.bm25 import BM25Index
from core.formats.catalog import Catalog
from core.config import Config
from indexer.products import ProductTable
from indexer.deleted import write_deleted, deleted_ids
from indexer.store import index_commit, read_manifest, stage_folder, version_root
from core.types import id_problem

ADDITIONS = "additions.jsonl"
LOCK = ".updates.lock"


@contextlib.contextmanager
def updates_lock(cfg: Config):
    """An exclusive lock (flock) over the index folder's adds and deletes, across processes."""
    cfg.index_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.index_dir / LOCK, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def delete_products(cfg: Config, ids: Iterable[str], known: Container[str] | None = None) -> int:
    """Mark products deleted in every stage; unknown ids are an error. Returns how many were newly deleted.
    ``known``: ids a caller already holds (a running engine's product table); only ids outside it are looked
    up in the built index (a newer build may hold them)."""
    ids = [str(i) for i in ids]
    for i in ids:
        problem = id_problem(i)
        if problem:
            raise ValueError(f"product id {i!r}: {problem}")
    with updates_lock(cfg):
        unknown = [i for i in ids if known is None or i not in known]
        if unknown:
            built = ProductTable.load(stage_folder(cfg.index_dir, BM25_KIND)).row_map()
            unknown = [i for i in unknown if i not in built]
        if unknown:
            raise KeyError(
                f"not in the index at {cfg.index_dir}: {', '.join(unknown[:10])}"
                + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            )
        before = deleted_ids(cfg)
        write_deleted(cfg, before | set(ids))
        if cfg.search.backend == "milvus":  # the collection forgets them too (its BM25 statistics included)
            from indexer.backends.milvus import delete_ids

            delete_ids(cfg, ids)
    return len(set(ids) - before)


def add_products(
    cfg: Config, catalog: Catalog, progress: bool = True, encoders: dict | None = None, tokenizer=None
) -> dict:
    """Append ``catalog``'s products to every built stage of ``cfg``'s index (no full rebuild, one switch) and
    to the durable additions file every rebuild merges.  ``encoders``, ``tokenizer``: see :func:`_add_products`."""
    with updates_lock(cfg):
        report = _add_products(cfg, catalog, progress, encoders, tokenizer)
        _append_additions(cfg, catalog)
        if cfg.search.backend == "milvus":  # the new rows, and the new builds they now mirror
            from indexer.backends.milvus import add_rows

            report["stages"]["milvus"] = add_rows(cfg, progress)
    return report


def _catalog_rows(catalog: Catalog) -> Iterable[dict]:
    for i, pid in enumerate(catalog.ids):
        row = {"id": pid, "title": catalog.titles[i]}
        if catalog.categories[i]:
            row["category"] = catalog.categories[i]
        if catalog.brands[i]:
            row["brand"] = catalog.brands[i]
        if np.isfinite(catalog.prices[i]):
            row["price"] = float(catalog.prices[i])
        if catalog.attributes[i]:
            row["attributes"] = catalog.attributes[i]
        yield row


def _append_additions(cfg: Config, catalog: Catalog) -> None:
    path = cfg.index_dir / ADDITIONS
    with open(path, "a", encoding="utf-8") as f:
        for row in _catalog_rows(catalog):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def with_additions(cfg: Config, catalog: Catalog) -> Catalog:
    """The catalog plus the products added since (``additions.jsonl``) that it does not hold itself (an id
    added, deleted and added again: its last addition)."""
    from core.formats.catalog import CatalogError, catalog_from_rows

    path = cfg.index_dir / ADDITIONS
    if not path.is_file() or path.stat().st_size == 0:
        return catalog
    last: dict = {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CatalogError(
                    f"{path}:{n}: damaged line ({e}); the products added since the last build are "
                    "read from this file: repair or remove that line"
                ) from None
            last[str(row.get("id")) if isinstance(row, dict) else n] = row
    added = catalog_from_rows(list(last.values()), str(path))
    have = set(catalog.ids)
    keep = [i for i, pid in enumerate(added.ids) if pid not in have]
    if not keep:
        return catalog
    pick = lambda col: [col[i] for i in keep]  # noqa: E731
    return Catalog(
        catalog.ids + pick(added.ids),
        catalog.titles + pick(added.titles),
        catalog.categories + pick(added.categories),
        catalog.brands + pick(added.brands),
        np.concatenate([catalog.prices, np.asarray(added.prices)[keep]]),
        catalog.attributes + pick(added.attributes),
        catalog.source,
        catalog.rejected,
    )


def _add_products(
    cfg: Config, catalog: Catalog, progress: bool = True, encoders: dict | None = None, tokenizer=None
) -> dict:
    """Every stage of the serving version with ``catalog``'s rows appended, switched in as one new version.
    ``encoders`` (stage -> a loaded passage encoder) and ``tokenizer`` (the BM25 one): a running engine's, reused
    so that adding one product costs encoding one title, not loading a model or jieba's dictionary."""
    from indexer.dense import DENSE_STAGES, index_stages

    t0 = time.perf_counter()
    root = version_root(cfg.index_dir)
    old = BM25Index.load(
        stage_folder(cfg.index_dir, BM25_KIND, root),
        cfg.text,
        config_hash=cfg.index_fingerprint(),
        mmap=False,
        verify=False,
        tokenizer=tokenizer,
    )
    present = (set(catalog.ids) & set(old.products.row_map())) - deleted_ids(cfg)  # a deleted id may come back
    if present:
        shown = ", ".join(sorted(present)[:10])
        raise ValueError(
            f"{len(present)} product(s) already in the index ({shown}); add only new products, or "
            "run a full rebuild (`make index`) for changed ones"
        )
    n_old = len(old)
    rows = np.arange(n_old, n_old + len(catalog), dtype=np.int64)
    texts = catalog.index_texts()
    report = {"added": len(catalog), "stages": {}}
    with index_commit(cfg.index_dir) as commit:
        new = old.add(catalog, progress=progress)
        m = old.manifest
        extras = {k: m[k] for k in ("catalog", "catalog_sha256", "n_rejected", "n_without_tokens") if k in m}
        extras["added_since_build"] = m.get("added_since_build", 0) + len(catalog)
        commit.build(BM25_KIND, lambda f: {**new.save_to(f), **extras}, BM25_KIND, m["config_hash"])
        report["stages"]["bm25"] = len(new)
        # only the dense stages the config uses: another one left in the folder (an older build, another
        # format) is not this config's business
        used = set(index_stages(cfg))
        for stage in DENSE_STAGES:
            if stage not in used or not (root / stage / "manifest.json").is_file():
                continue
            from indexer.dense import KIND as DENSE_KIND
            from indexer.dense import DenseIndex, dense_encoder

            folder = stage_folder(cfg.index_dir, stage, root)
            manifest = read_manifest(folder, DENSE_KIND, verify=False)
            encoder = (encoders or {}).get(stage) or dense_encoder(cfg, stage)
            dense = DenseIndex.load(folder, encoder.fingerprint, verify=False)
            dense.on_gpu = False
            dense.add(encoder.encode_passages(texts, progress=progress), rows)
            extras = {k: manifest[k] for k in ("catalog_sha256", "factory", "groups_configured") if k in manifest}
            extras["n_products"] = n_old + len(catalog)
            extras["added_since_build"] = manifest.get("added_since_build", 0) + len(catalog)
            commit.build(stage, lambda f, d=dense, e=extras: {**d.save_to(f), **e}, DENSE_KIND, manifest["config_hash"])
            report["stages"][stage] = dense.n
    deleted = deleted_ids(cfg)
    if deleted & set(catalog.ids):  # deleted earlier, now added again: the new row serves
        write_deleted(cfg, deleted - set(catalog.ids))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def exclude_deleted(catalog: Catalog, deleted: set[str]) -> tuple[Catalog, int]:
    """The catalog without deleted products (purged from the rebuilt index files)."""
    if not deleted:
        return catalog, 0
    keep = [i for i, pid in enumerate(catalog.ids) if pid not in deleted]
    if len(keep) == len(catalog):
        return catalog, 0
    pick = lambda col: [col[i] for i in keep]  # noqa: E731
    return Catalog(
        pick(catalog.ids),
        pick(catalog.titles),
        pick(catalog.categories),
        pick(catalog.brands),
        np.asarray(catalog.prices)[keep],
        pick(catalog.attributes),
        catalog.source,
        catalog.rejected,
    ), len(catalog) - len(keep)
