"""`python -m eval --config CONFIG --queries Q.tsv --stages bm25 --out DIR`

Indexes the config's whole corpus (reusing a current index), retrieves every
judged query with each stage, and writes DIR/metrics.json, DIR/report.md
(each stage's 95% bootstrap interval, each stage's paired gain over the one
before with its p-value, the queries each stage hurt most), DIR/per_query.tsv,
DIR/recall.png and the runs.

`python -m eval --config CONFIG --compare A B --stages rerank --out DIR`
evaluates the same queries and stages twice, under A and under B, and reports
the paired difference B − A: the check to run before shipping a change.  A and
B are each a config file (.yaml), a model folder, which replaces the model of
the same kind in CONFIG: a ranker folder (model.txt) → rerank.ranker, a
cross-encoder → rerank.model, a bi-encoder (sentence-transformers folder) →
dense.model, or settings over CONFIG and its --set (`rerank.teacher=models/x`,
comma-separated; `rerank.depth=20` as the other side keeps CONFIG as is).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from engine.search import SearchEngine
from engine.types import STAGES
from eval.evaluate import evaluate
from eval.report import write_report
from eval.significance import fmt_interval, paired
from core.formats.judged import QueriesError, read_queries
from indexer.build import ensure_indexes
from core.formats.catalog import CatalogError
from core.config import ConfigError, load_config, parse_overrides
from indexer.encoder import ModelMissingError
from indexer.store import IndexLoadError
from core.cli import command, load


def variant(cfg, spec: str, overrides: dict | None = None):
    """The config ``spec`` names: a config file, ``cfg`` with one model replaced by a folder, or ``cfg``
    reloaded with ``SECTION.FIELD=VALUE`` settings (comma-separated) over its ``overrides`` (the ``--set``)."""
    if "=" in spec:
        from core.config.loader import merge

        return load_config(cfg.source, **merge(overrides or {}, parse_overrides(spec.split(","))))
    p = Path(spec)
    if p.suffix in (".yaml", ".yml"):
        return load_config(p)
    if not p.is_dir():
        raise ConfigError(f"--compare: {spec} is neither a config file (.yaml) nor a model folder")
    if (p / "model.txt").is_file():
        return dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, ranker=str(p.resolve())))
    if (p / "modules.json").is_file():  # a sentence-transformers folder: the bi-encoder
        return dataclasses.replace(cfg, dense=dataclasses.replace(cfg.dense, model=str(p.resolve())))
    if (p / "config.json").is_file():
        return dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, model=str(p.resolve())))
    raise ConfigError(
        f"--compare: {spec} holds no ranker (model.txt), bi-encoder (modules.json) or cross-encoder (config.json)"
    )


def run_config(cfg, queries, stages, progress: bool, judged_only: bool = False):
    ensure_indexes(cfg, stages, progress=progress)
    engine = SearchEngine.from_config(cfg)
    return engine, evaluate(engine, queries, stages, progress=progress, judged_only=judged_only)


def compare(
    cfg,
    a: str,
    b: str,
    queries,
    stages,
    out: Path,
    progress: bool,
    seed: int = 0,
    judged_only: bool = False,
    overrides: dict | None = None,
) -> dict:
    """Evaluate under ``a`` and ``b`` (:func:`variant`); write ``compare.json`` and ``compare.md`` (B − A per
    stage)."""
    results = {}
    for name, spec in (("A", a), ("B", b)):
        c = variant(cfg, spec, overrides)
        _, res = run_config(c, queries, stages, progress, judged_only)
        results[name] = res
        write_report(out / name, res, {"config": spec}, queries.texts, queries.relevance)
    payload = {"A": a, "B": b, "n_queries": len(queries), "stages": {}}
    lines = [
        f"# Compare: B − A on {len(queries)} queries",
        "",
        f"- A: {a}",
        f"- B: {b}",
        "",
        "| stage | metric | A | B | B − A [95% CI] | p |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    for ra, rb in zip(results["A"], results["B"]):
        d = paired(ra.per_query, rb.per_query, seed)
        payload["stages"][ra.stage] = d
        for m, v in d.items():
            lines.append(
                f"| {ra.stage} | {m} | {v['a']:.4f} | {v['b']:.4f} | "
                f"{fmt_interval(v['diff'], v['ci_low'], v['ci_high'], signed=True)} | {v['p_value']:.3f} |"
            )
    lines += ["", "Paired bootstrap over queries (2,000 resamples); p two-sided. Per-side reports in A/ and B/."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (out / "compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return payload


def describe_run(cfg, engine, stages) -> dict:
    """What a report says it measured: corpus, index build, and for each model stage the model, its runtime
    and settings (torch or ONNX encoders alike)."""
    out = {
        "corpus": f"{cfg.catalog.path} ({len(engine.products)} products)",
        "index": engine.bm25.manifest.get("build_id", ""),
    }
    if "rerank" in stages and cfg.rerank.model:
        r = cfg.rerank
        ce = engine.cross_encoder()
        layers = getattr(ce, "num_layers", None)
        out["rerank"] = (
            f"{r.model} ({layers or '?'} layers, max_length {ce.max_length}, "
            f"{getattr(ce, 'runtime', 'torch')} on {getattr(ce, 'device', 'cpu')}), "
            f"union of bm25 and dense top-{r.depth}, weight {r.weight}, first stage {r.first_stage}"
            + (f", ranker {r.ranker}" if r.ranker else "")
        )
    for stage in stages:
        if stage in ("dense", "dense-base"):
            enc, idx = engine.dense_stage(stage)
            path = getattr(enc, "model_path", None) or getattr(enc, "path", "?")
            out[f"{stage} encoder"] = (
                f"{path} (max_length {getattr(enc, 'max_length', '?')}, "
                f"{getattr(enc, 'runtime', 'torch')} on {getattr(enc, 'device', 'cpu')}), "
                f"{idx.manifest.get('factory')}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = command("eval", __doc__, None, overrides=True)
    ap.add_argument(
        "--queries", help="TSV/CSV with header: query, pid[, qid][, relevance] (default: the config's eval.queries)"
    )
    ap.add_argument("--stages", default="bm25", help=f"comma-separated, from {', '.join(STAGES)}")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--judged-only",
        action="store_true",
        help="each query ranks only its own judged products (a reranking benchmark: Home Depot)",
    )
    ap.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="two configs, model folders or SECTION.FIELD=VALUE[,...] settings over --config, on the same "
        "queries: the paired difference B − A",
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.replace(" ", ",").split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        print(f"error: unknown stage(s) {bad}; available: {list(STAGES)}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    try:
        cfg = load(args)
        qpath = args.queries or cfg.eval.queries
        if qpath is None:
            raise QueriesError("no --queries given and the config sets no eval.queries")
        queries = read_queries(qpath)
        if args.compare:
            payload = compare(
                cfg,
                *args.compare,
                queries,
                stages,
                Path(args.out),
                progress,
                judged_only=args.judged_only,
                overrides=parse_overrides(args.set or []),
            )
            for stage, d in payload["stages"].items():
                print(
                    stage,
                    " ".join(
                        f"{m}: {v['diff']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}] p={v['p_value']:.3f}"
                        for m, v in d.items()
                    ),
                )
            print(f"wrote {args.out}/compare.md and compare.json")
            return 0
        engine, results = run_config(cfg, queries, stages, progress, args.judged_only)
    except (ConfigError, QueriesError, CatalogError, IndexLoadError, ModelMissingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    judged = {p for rel in queries.relevance.values() for p in rel}
    missing = judged - set(engine.products.ids.tolist())
    if missing:
        print(
            f"warning: {len(missing)} judged product(s) are not in the catalog and can never be retrieved",
            file=sys.stderr,
        )
    context = {
        "config_name": cfg.name,
        "config": str(args.config),
        "queries": str(qpath),
        **describe_run(cfg, engine, stages),
    }
    if args.judged_only:
        context["ranking"] = "judged only: each query ranks only its own judged products"
    if args.set:
        context["overrides"] = " ".join(args.set)
    products = engine.products
    row_of = products.row_map()
    payload = write_report(
        Path(args.out),
        results,
        context,
        queries.texts,
        queries.relevance,
        lambda pid: products.titles[row_of[pid]] if pid in row_of else "",
    )
    for stage, m in payload.items():
        print(stage, " ".join(f"{k}={v}" for k, v in m.items()))
    print(f"wrote {args.out}/metrics.json, report.md and per_query.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
