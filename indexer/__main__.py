"""`python -m indexer --config configs/demo.yaml`: build the config's indexes (what `make index` runs)."""

from __future__ import annotations

import sys

from indexer.build import build_indexes, load_catalog
from core.formats.catalog import CatalogError
from core.types import EcomsearchError
from core.config import ConfigError, load_config
from indexer.encoder import ModelMissingError
from indexer.store import IndexLoadError
from core.cli import command


def main(argv: list[str] | None = None) -> int:
    ap = command("indexer", __doc__)
    ap.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="index the valid rows and write rejected ones, with reasons, to a side file",
    )
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--if-stale",
        action="store_true",
        help="rebuild only the indexes that are missing or out of date (config, catalog, encoder)",
    )
    ap.add_argument(
        "--add",
        metavar="CATALOG",
        help="add the new products of this catalog file to the built indexes, without a full rebuild",
    )
    ap.add_argument("--delete", metavar="ID", nargs="+", help="delete products from every stage")
    ap.add_argument(
        "--backend",
        choices=("local", "milvus"),
        default=None,
        help="milvus: after the local build, write it into the Milvus collection (search.milvus) "
        "unless it holds the current build already (default: the config's search.backend)",
    )
    ap.add_argument(
        "--ray",
        action="store_true",
        help="tokenize and encode the titles on Ray Data workers "
        "(RAY_ADDRESS for a cluster; always with --backend milvus)",
    )
    ap.add_argument("--ray-workers", type=int, default=None, help="Ray workers (default: every CPU)")
    args = ap.parse_args(argv)
    if args.add or args.delete:
        return update(args)
    try:
        cfg = load_config(args.config)
        catalog = load_catalog(cfg, skip_bad_rows=args.skip_bad_rows or None)
    except (ConfigError, CatalogError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"catalog {cfg.catalog.path}: {len(catalog)} products", end="")
    if catalog.rejected:
        print(f", {len(catalog.rejected)} rejected rows written to {cfg.rejects_path}", end="")
    print()
    try:
        stages = None
        if args.if_stale:
            from indexer.build import stale_stages
            from indexer.dense import index_stages

            stages = stale_stages(cfg, index_stages(cfg))
            if not stages:
                print(f"indexes in {cfg.index_dir} are current; nothing to rebuild")
        milvus = (args.backend or cfg.search.backend) == "milvus"
        builds = []
        if stages is None or stages:
            runner = None
            if args.ray or args.ray_workers or milvus:
                from indexer.distributed import RayRunner

                runner = RayRunner(args.ray_workers)
                print(f"ray: {runner.workers} workers")
            builds = build_indexes(cfg, catalog=catalog, progress=not args.no_progress, stages=stages, runner=runner)
        if milvus:
            from indexer.backends.milvus import ensure_collection, resolve_uri

            info = ensure_collection(cfg, progress=not args.no_progress)
            where = resolve_uri(cfg)
            print(
                f"milvus: {where} holds the current build"
                if info is None
                else f"milvus: {info.n_products} products -> {where} ({info.collection}) in {info.seconds:.1f} s "
                f"({info.rows_per_s:.0f} rows/s)"
            )
    except (ValueError, EcomsearchError) as e:  # ModelMissingError, IndexLoadError, ... are EcomsearchErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    for b in builds:
        extra = f", {b.detail}" if b.detail else ""
        print(f"{b.stage}: {b.n_products} products -> {b.path} ({b.path.resolve().name}) in {b.seconds:.1f} s{extra}")
    return 0


def add_rejects_path(cfg):
    """Where ``--add --skip-bad-rows`` writes the rows it rejected: ``<index_dir>.added.rejected.jsonl``."""
    return cfg.index_dir.with_name(cfg.index_dir.name + ".added.rejected.jsonl")


def update(args) -> int:
    from core.formats.catalog import read_catalog, write_rejects
    from indexer.updates import add_products, delete_products

    try:
        cfg = load_config(args.config)
        if args.delete:
            n = delete_products(cfg, args.delete)
            print(f"deleted {n} product(s) from every stage of {cfg.index_dir} (purged at the next rebuild)")
        if args.add:
            rejects = add_rejects_path(cfg)
            try:
                new = read_catalog(args.add, cfg.catalog.columns, cfg.catalog.format, skip_bad_rows=args.skip_bad_rows)
            except CatalogError as e:
                if args.skip_bad_rows and e.errors:  # every row bad: the reasons still go to the side file
                    write_rejects(e.errors, rejects)
                    raise CatalogError(f"{e} ({len(e.errors)} rejected rows with reasons in {rejects})") from None
                raise
            if args.skip_bad_rows:
                write_rejects(new.rejected, rejects)
            report = add_products(cfg, new, progress=not args.no_progress)
            stages = ", ".join(f"{k}: {v}" for k, v in report["stages"].items())
            print(f"added {report['added']} product(s) in {report['seconds']} s; products per stage: {stages}")
            if new.rejected:
                print(f"{len(new.rejected)} rejected row(s), with reasons, written to {rejects}")
            print(
                "a running engine sees the additions after its reload (the service: POST /admin/reload, or its "
                "index watcher within serve.watch_seconds)"
            )
    except (ConfigError, CatalogError, IndexLoadError, ModelMissingError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
