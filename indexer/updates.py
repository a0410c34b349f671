"""Changing a built index between full rebuilds: adding and deleting products.

- **Add**: new products get new rows in every stage: the product table and
  BM25 (only the new titles are tokenized; BM25 weights are recomputed from
  the stored token ids) and every dense index (only the new titles are
  encoded).  Each stage is written as a new version and swapped in
  atomically.  A product already in the index is refused (a changed
  product is picked up by the next full rebuild).
- **Delete**: a product id goes to ``<index_dir>/deleted.txt`` (written
  atomically).  Every stage masks deleted rows inside retrieval, so they are
  never returned again; the next full rebuild leaves them out of the index
  files altogether.
"""

from __future__ import annotations

import os
import time
from typing import Iterable

import numpy as np

from indexer.bm25 import KIND as BM25_KIND
from indexer.bm25 import BM25Index
from indexer.catalog import Catalog
from indexer.config import Config
from indexer.store import read_manifest, write_index

DELETED = "deleted.txt"


def deleted_ids(cfg: Config) -> set[str]:
    path = cfg.index_dir / DELETED
    if not path.is_file():
        return set()
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def _write_deleted(cfg: Config, ids: set[str]) -> None:
    path = cfg.index_dir / DELETED
    tmp = path.with_name(f".{DELETED}.{os.getpid()}")
    tmp.write_text("".join(f"{i}\n" for i in sorted(ids)), encoding="utf-8")
    os.replace(tmp, path)


def live_mask(products, deleted: set[str]) -> np.ndarray | None:
    """One bool per product row: False for deleted products (None when nothing is deleted)."""
    if not deleted:
        return None
    ids = np.asarray(products.ids.tolist(), dtype=object)
    return ~np.isin(ids, np.asarray(sorted(deleted), dtype=object))


def delete_products(cfg: Config, ids: Iterable[str]) -> int:
    """Mark products deleted in every stage; unknown ids are an error. Returns how many were newly deleted."""
    ids = [str(i) for i in ids]
    index = BM25Index.load(cfg.index_dir / BM25_KIND, cfg.text, verify=False)
    known = set(index.products.ids.tolist())
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise KeyError(f"not in the index at {cfg.index_dir}: {', '.join(unknown[:10])}"
                       + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
    before = deleted_ids(cfg)
    _write_deleted(cfg, before | set(ids))
    return len(set(ids) - before)


def add_products(cfg: Config, catalog: Catalog, progress: bool = True) -> dict:
    """Append ``catalog``'s products to every built stage of ``cfg``'s index (no full rebuild)."""
    from indexer.dense import DENSE_STAGES

    t0 = time.perf_counter()
    bm25_dir = cfg.index_dir / BM25_KIND
    old = BM25Index.load(bm25_dir, cfg.text, config_hash=cfg.index_fingerprint(), mmap=False, verify=False)
    present = set(catalog.ids) & set(old.products.ids.tolist())
    if present:
        shown = ", ".join(sorted(present)[:10])
        raise ValueError(f"{catalog.source}: {len(present)} product(s) already in the index ({shown}); "
                         "add only new products, or run a full rebuild (`make index`) for changed ones")
    n_old = len(old)
    rows = np.arange(n_old, n_old + len(catalog), dtype=np.int64)
    texts = catalog.index_texts()
    report = {"added": len(catalog), "stages": {}}

    # dense stages first: a reader that sees the new BM25 table also finds the new vectors
    for stage in DENSE_STAGES:
        folder = cfg.index_dir / stage
        if not (folder / "manifest.json").is_file():
            continue
        from indexer.dense import KIND as DENSE_KIND
        from indexer.dense import DenseIndex, dense_encoder

        manifest = read_manifest(folder, DENSE_KIND, verify=False)
        encoder = dense_encoder(cfg, stage)
        dense = DenseIndex.load(folder, encoder.fingerprint, verify=False)
        dense.on_gpu = False
        dense.add(encoder.encode_passages(texts, progress=progress), rows)
        extras = {k: manifest[k] for k in ("catalog_sha256", "factory", "groups_configured") if k in manifest}
        extras["n_products"] = n_old + len(catalog)
        extras["added_since_build"] = manifest.get("added_since_build", 0) + len(catalog)
        write_index(folder, lambda f, d=dense, e=extras: {**d.save_to(f), **e}, DENSE_KIND, manifest["config_hash"])
        report["stages"][stage] = dense.n

    new = old.add(catalog, progress=progress)
    m = old.manifest
    extras = {k: m[k] for k in ("catalog", "catalog_sha256", "n_rejected", "n_without_tokens") if k in m}
    extras["added_since_build"] = m.get("added_since_build", 0) + len(catalog)
    write_index(bm25_dir, lambda f: {**new.save_to(f), **extras}, BM25_KIND, m["config_hash"])
    report["stages"]["bm25"] = len(new)
    deleted = deleted_ids(cfg)
    if deleted & set(catalog.ids):  # deleted and purged earlier, now added again
        _write_deleted(cfg, deleted - set(catalog.ids))
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
    return Catalog(pick(catalog.ids), pick(catalog.titles), pick(catalog.categories), pick(catalog.brands),
                   np.asarray(catalog.prices)[keep], pick(catalog.attributes), catalog.source,
                   catalog.rejected), len(catalog) - len(keep)
