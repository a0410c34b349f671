"""`python -m eval --config CONFIG --queries Q.tsv --stages bm25 --out DIR`

Indexes the config's whole corpus (reusing a current index), retrieves every
judged query with each stage, and writes DIR/metrics.json, DIR/report.md,
DIR/recall.png and the runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.search import STAGES, SearchEngine
from eval.evaluate import evaluate
from finetune.judged import QueriesError, read_queries
from eval.report import write_report
from indexer.build import ensure_indexes
from indexer.catalog import CatalogError
from indexer.config import ConfigError, load_config, parse_overrides
from indexer.encoder import ModelMissingError
from indexer.store import IndexLoadError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--queries", help="TSV/CSV with header: query, pid[, qid][, relevance] (default: the config's eval.queries)")
    ap.add_argument("--stages", default="bm25", help=f"comma-separated, from {', '.join(STAGES)}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a config field, e.g. --set rerank.model=models/wentian/cross-encoder-L12 "
                         "--set rerank.weight=0.6 (repeatable)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.replace(" ", ",").split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        print(f"error: unknown stage(s) {bad}; available: {list(STAGES)}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, **parse_overrides(args.set))
        qpath = args.queries or cfg.eval.queries
        if qpath is None:
            raise QueriesError("no --queries given and the config sets no eval.queries")
        queries = read_queries(qpath)
        ensure_indexes(cfg, stages, progress=not args.no_progress)
        engine = SearchEngine.from_config(cfg)
    except (ConfigError, QueriesError, CatalogError, IndexLoadError, ModelMissingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    judged = {p for rel in queries.relevance.values() for p in rel}
    known = set(engine.products.ids.tolist())
    missing = judged - known
    if missing:
        print(f"warning: {len(missing)} judged product(s) are not in the catalog and can never be retrieved",
              file=sys.stderr)
    results = evaluate(engine, queries, stages, progress=not args.no_progress)
    context = {"config_name": cfg.name, "config": str(args.config), "queries": str(qpath),
               "corpus": f"{cfg.catalog.path} ({len(engine.products)} products)",
               "index": engine.bm25.manifest.get("build_id", "")}
    if "rerank" in stages:
        r = cfg.rerank
        ce = engine.cross_encoder()
        context["rerank"] = (f"{r.model} ({ce.num_layers} layers, max_length {ce.max_length}, {ce.device}), "
                             f"union of bm25 and dense top-{r.depth}, weight {r.weight}, first stage {r.first_stage}")
    if args.set:
        context["overrides"] = " ".join(args.set)
    for stage in stages:
        if stage in ("dense", "dense-base"):
            enc, idx = engine.dense_stage(stage)
            context[f"{stage} encoder"] = f"{enc.model_path} (max_length {enc.max_length}, {enc.device}), {idx.manifest.get('factory')}"
    payload = write_report(Path(args.out), results, context)
    for stage, m in payload.items():
        print(stage, " ".join(f"{k}={v}" for k, v in m.items()))
    print(f"wrote {args.out}/metrics.json and report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
