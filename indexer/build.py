"""The offline index job: catalog → validated rows → indexes, swapped in atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from indexer import bm25
from indexer.catalog import Catalog, read_catalog, write_rejects
from indexer.config import Config
from indexer.store import IndexLoadError, read_manifest, sha256_file


@dataclass
class StageBuild:
    stage: str
    path: Path
    seconds: float
    n_products: int


def load_catalog(cfg: Config, skip_bad_rows: bool | None = None) -> Catalog:
    """Read the config's catalog; rejected rows (with --skip-bad-rows) go to the side file."""
    skip = cfg.catalog.skip_bad_rows if skip_bad_rows is None else skip_bad_rows
    catalog = read_catalog(cfg.catalog.path, cfg.catalog.columns, cfg.catalog.format, skip_bad_rows=skip)
    if skip:  # rewritten on every skipping build, so it never lists rows of an older catalog
        write_rejects(catalog.rejected, cfg.rejects_path)
    return catalog


def build_indexes(cfg: Config, skip_bad_rows: bool | None = None, progress: bool = True,
                  catalog: Catalog | None = None) -> list[StageBuild]:
    """Build every index the config's stages need; each one replaces the previous only when complete."""
    catalog = catalog or load_catalog(cfg, skip_bad_rows)
    built = []
    t0 = time.perf_counter()
    path, manifest, _ = bm25.build_and_save(cfg, catalog, progress=progress)
    built.append(StageBuild("bm25", path, time.perf_counter() - t0, manifest["n_products"]))
    return built


def index_is_current(cfg: Config, stage: str = "bm25") -> bool:
    """True when the stage's index exists, is intact and was built from this config and catalog file."""
    try:
        manifest = read_manifest(cfg.index_dir / stage, stage, verify=False)
    except IndexLoadError:
        return False
    return (manifest.get("config_hash") == cfg.index_fingerprint()
            and manifest.get("catalog_sha256") == sha256_file(cfg.catalog.path))


def ensure_indexes(cfg: Config, progress: bool = True) -> None:
    """Build the indexes unless current ones exist (used by the eval CLI and the demo)."""
    if not index_is_current(cfg):
        build_indexes(cfg, progress=progress)
