"""The offline index job: catalog → validated rows → indexes, each swapped in atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from indexer import bm25
from core.formats.catalog import Catalog, read_catalog, write_rejects
from core.config import Config
from indexer.dense import DENSE_STAGES, index_stages
from indexer.store import (
    IndexCommit,
    IndexLoadError,
    index_commit,
    read_manifest,
    sha256_file,
    stage_folder,
    version_root,
)


@dataclass
class StageBuild:
    stage: str
    path: Path
    seconds: float
    n_products: int
    detail: str = ""


def load_catalog(cfg: Config, skip_bad_rows: bool | None = None) -> Catalog:
    """Read the config's catalog; rejected rows (with --skip-bad-rows) go to the side file."""
    from core.formats.catalog import CatalogError
    from indexer.updates import with_additions

    skip = cfg.catalog.skip_bad_rows if skip_bad_rows is None else skip_bad_rows
    if not Path(cfg.catalog.path).is_file():
        raise CatalogError(f"{cfg.source or cfg.name}: catalog.path: file not found: {cfg.catalog.path}")
    try:
        catalog = read_catalog(cfg.catalog.path, cfg.catalog.columns, cfg.catalog.format, skip_bad_rows=skip)
    except CatalogError as e:
        if skip and e.errors:  # every row bad: still say which and why
            write_rejects(e.errors, cfg.rejects_path)
            raise CatalogError(
                f"{e} ({len(e.errors)} rejected rows with reasons in {cfg.rejects_path})", e.errors
            ) from None
        raise
    if skip:  # rewritten on every skipping build, so it never lists rows of an older catalog
        write_rejects(catalog.rejected, cfg.rejects_path)
    return with_additions(cfg, catalog)


def build_indexes(
    cfg: Config,
    skip_bad_rows: bool | None = None,
    progress: bool = True,
    catalog: Catalog | None = None,
    stages: Iterable[str] | None = None,
    runner=None,
    commit: IndexCommit | None = None,
) -> list[StageBuild]:
    """Build the indexes of ``stages`` (default: what the config's stages need).

    They replace the serving version together, only when all are complete (one
    switch, :class:`indexer.store.IndexCommit`; with ``commit``, when that one
    switches), so a failed or killed build leaves the previous version serving.
    ``runner`` (:class:`indexer.distributed.RayRunner`): tokenize and encode the titles on Ray workers.
    """
    if commit is None:
        with index_commit(cfg.index_dir) as c:
            return build_indexes(cfg, skip_bad_rows, progress, catalog, stages, runner, c)
    from indexer.deleted import deleted_ids
    from indexer.updates import exclude_deleted

    stages = list(stages) if stages is not None else index_stages(cfg)
    catalog = catalog or load_catalog(cfg, skip_bad_rows)
    catalog_sha = sha256_file(catalog.source) if catalog.source else None
    catalog, n_purged = exclude_deleted(catalog, deleted_ids(cfg))  # deleted products leave the index files
    built = []
    bm25_index = None
    for stage in stages:
        t0 = time.perf_counter()
        if stage == "bm25":
            path, manifest, bm25_index = bm25.build_and_save(
                cfg, catalog, progress=progress, runner=runner, commit=commit
            )
            detail = ""
        elif stage == "suggest":
            from indexer import suggest

            if bm25_index is None:  # only the suggestions are stale: the serving bm25 build's tokens
                bm25_index = bm25.BM25Index.load(stage_folder(cfg.index_dir, "bm25"), cfg.text, verify=False)
            path, manifest = suggest.build_and_save(cfg, bm25_index, commit=commit, progress=progress)
            detail = f"{manifest['n_suggestions']} suggestions, {manifest['n_keys']} keys"
        elif stage in DENSE_STAGES:
            from indexer import dense

            if stage == "dense" and cfg.dense.trim_vocab:
                from indexer.vocab_trim import ensure_trimmed

                ensure_trimmed(cfg, catalog.index_texts(), catalog_sha)
            encoder = dense.dense_encoder(cfg, stage)
            if runner is not None:
                encoder = runner.encoder(encoder)
            path = cfg.index_dir / stage
            manifest, _ = dense.build_and_save(
                path,
                catalog.index_texts(),
                encoder,
                cfg.dense.factory,
                cfg.index_fingerprint(),
                progress=progress,
                extras={"catalog_sha256": catalog_sha, "n_products": len(catalog)},
                groups=cfg.dense.groups,
                commit=commit,
            )
            detail = f"{manifest['factory']}, {manifest['titles_per_second']} titles/s, {manifest['n_groups']} groups"
        else:
            raise ValueError(f"no index for stage {stage!r}")
        if n_purged:
            detail = f"{detail}, {n_purged} deleted products left out".lstrip(", ")
        n_products = manifest.get("n_products", len(bm25_index) if bm25_index is not None else 0)
        built.append(StageBuild(stage, path, time.perf_counter() - t0, n_products, detail))
    return built


def stale_stages(cfg: Config, stages: Iterable[str]) -> list[str]:
    """The stages whose index is missing, damaged, built from another config, catalog or encoder, or holding
    other products than the serving bm25 build (the stages of one version must hold the same rows)."""
    from core.formats.catalog import CatalogError

    if not Path(cfg.catalog.path).is_file():
        raise CatalogError(f"{cfg.source or cfg.name}: catalog.path: file not found: {cfg.catalog.path}")
    catalog_sha = sha256_file(cfg.catalog.path)
    stale = []
    root = version_root(cfg.index_dir)
    try:
        n_rows = read_manifest(root / "bm25", "bm25", verify=False).get("n_products")
    except IndexLoadError:
        n_rows = None
    for stage in stages:
        kind = stage if stage in ("bm25", "suggest") else "dense"
        try:
            manifest = read_manifest(root / stage, kind, verify=False)
        except IndexLoadError:
            stale.append(stage)
            continue
        if stage == "suggest":  # built from the version's bm25 build, the query log and the settings
            from indexer.suggest import sources_fingerprint

            if "bm25" in stale or manifest.get("sources") != sources_fingerprint(cfg):
                stale.append(stage)
            continue
        if (
            manifest.get("config_hash") != cfg.index_fingerprint()
            or manifest.get("catalog_sha256") != catalog_sha
            or (n_rows is not None and manifest.get("n_products") != n_rows)
        ):
            stale.append(stage)
        elif stage in DENSE_STAGES:
            from indexer.dense import stage_model
            from indexer.encoder import ModelMissingError, model_fingerprint

            d = cfg.dense
            try:
                fingerprint = model_fingerprint(stage_model(cfg, stage), d.max_length)
            except ModelMissingError:
                if not (stage == "dense" and d.trim_vocab):
                    raise
                fingerprint = None  # the trimmed copy is made by the build
            if (
                manifest.get("encoder", {}).get("fingerprint") != fingerprint
                or manifest.get("factory") != d.factory
                or manifest.get("groups_configured") != d.groups
            ):
                stale.append(stage)
    return stale


def index_is_current(cfg: Config, stage: str = "bm25") -> bool:
    return not stale_stages(cfg, [stage])


def ensure_indexes(cfg: Config, stages: Iterable[str] = (), progress: bool = True) -> None:
    """Build the indexes the config and ``stages`` need, unless current ones exist (eval CLI, demo).

    A dense index stays when only BM25 needed rebuilding and the product rows
    did not change (same catalog file, same number of products).
    """
    needed = index_stages(cfg, stages)
    stale = stale_stages(cfg, needed)
    if stale:
        _rebuild(cfg, needed, stale, progress)
    if cfg.search.backend == "milvus":  # the collection mirrors the local builds
        from indexer.backends.milvus import ensure_collection

        ensure_collection(cfg, progress=progress)


def _rebuild(cfg: Config, needed, stale, progress: bool) -> None:
    with index_commit(cfg.index_dir) as commit:  # the stale stages and those whose rows changed: one switch
        built = {b.stage: b for b in build_indexes(cfg, progress=progress, stages=stale, commit=commit)}
        if "bm25" in built:
            n = built["bm25"].n_products
            rows_changed = []
            for stage in needed:
                if stage in built or stage in ("bm25", "suggest"):  # suggest: stale whenever bm25 is
                    continue
                manifest = read_manifest(cfg.index_dir / stage, "dense", verify=False)
                if manifest.get("n_products") != n:
                    rows_changed.append(stage)
            if rows_changed:
                build_indexes(cfg, progress=progress, stages=rows_changed, commit=commit)
