"""The deleted-products list of an index folder: ``<index_dir>/deleted.json``, a JSON list of product ids written
atomically (no character of an id can split it; an older index's one-id-per-line ``deleted.txt`` is still read),
its signature (what a running engine compares on every query) and the live-row mask every stage applies.

Written by :mod:`indexer.updates` (under its lock), read by the engine, the full rebuild and the Milvus backend.
"""

from __future__ import annotations

import json
import os

import numpy as np

from core.config import Config
from indexer.store import IndexLoadError

DELETED = "deleted.json"
LEGACY_DELETED = "deleted.txt"  # one id per line, as indexes before deleted.json wrote it


def deleted_signature(cfg: Config) -> tuple | None:
    """(inode, size, mtime) of the deleted list (None when absent): changes with every write (atomic replace)."""
    for name in (DELETED, LEGACY_DELETED):
        try:
            st = os.stat(cfg.index_dir / name)
        except FileNotFoundError:
            continue
        return (name, st.st_ino, st.st_size, st.st_mtime_ns)
    return None


def deleted_ids(cfg: Config) -> set[str]:
    path = cfg.index_dir / DELETED
    legacy = cfg.index_dir / LEGACY_DELETED
    if not path.is_file():
        if not legacy.is_file():
            return set()
        path = legacy
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise IndexLoadError(
            f"{path}: not UTF-8 text (byte {e.start}): the deleted-products list is damaged; "
            "restore it, or remove it and delete the products again"
        ) from None
    if path == legacy:
        return {line.strip() for line in text.split("\n") if line.strip()}
    try:
        ids = json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexLoadError(
            f"{path}: not valid JSON ({e.msg}): the deleted-products list is damaged; restore it, "
            "or remove it and delete the products again"
        ) from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise IndexLoadError(f"{path}: expected a JSON list of product ids; the deleted-products list is damaged")
    return set(ids)


def write_deleted(cfg: Config, ids: set[str]) -> None:
    path = cfg.index_dir / DELETED
    tmp = path.with_name(f".{DELETED}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(sorted(ids), f, ensure_ascii=False, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    (cfg.index_dir / LEGACY_DELETED).unlink(missing_ok=True)  # its ids are in deleted.json now


def live_mask(products, deleted: set[str]) -> np.ndarray | None:
    """One bool per product row: False for deleted products and for rows an id's newer row superseded (None
    when every row is live).  Looked up through the table's id -> row map: the work grows with the deleted
    ids, not with the catalog."""
    superseded = products.superseded_rows()
    if not deleted and not len(superseded):
        return None
    row_of = products.row_map()
    live = np.ones(len(products), dtype=bool)
    live[superseded] = False
    live[[row_of[i] for i in deleted if i in row_of]] = False
    return live
