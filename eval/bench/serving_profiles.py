"""`python -m eval.bench.serving_profiles --config configs/wentian.yaml`: quality against latency of the serving levers.

Each profile is the config with some settings changed (ONNX Runtime for the cross-encoder and/or the query
encoder, int8 weights, fewer candidates, a shorter max length, a distilled student cross-encoder, the 12-layer
teacher on the top few: ``rerank.teacher``).  For each:
MRR@10 / NDCG@10 of what ``query()`` returns on the judged queries (all of them, batched), with a paired
bootstrap CI of the difference from the first profile; and single-query latency through ``query()``, one query
at a time, on the first ``--latency-queries`` of them (the candidate cache off: every query computed).  The
cache is measured on its own: real query-log traffic replayed with the cache on (hit rate, p50/p99).

Writes ``profiles.json`` (resumable: finished profiles are kept), ``profiles.md`` and ``curve.png``
(MRR@10 against p50 latency) to ``--out``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from engine.search import SearchEngine
from core import metrics
from core.bootstrap import bootstrap_ci, paired_bootstrap
from eval.bench.load_test import QUERYLOG
from core.formats.judged import read_queries
from core.config import load_config, parse_overrides
from indexer.vocab_trim import read_query_column
from core.cli import command

# name -> (what changes, overrides); the first is the reference every other is compared with
CE = "models/wentian/cross-encoder"  # the 4-layer cross-encoder (`make finetune CONFIG=configs/wentian.yaml`)
STUDENT = "models/wentian/cross-encoder-L2-distilled"  # `python -m finetune.distill ... --layers 2`
TEACHER = "models/wentian/teacher-L12"  # the 12-layer cross-encoder (docs/fine-tuning.md: the teacher)
# every profile names every lever, so that none depends on what the config currently chooses
REF = {
    "rerank": {
        "model": CE,
        "runtime": "torch",
        "quantize": "none",
        "depth": 50,
        "max_length": None,
        "ranker": "models/wentian/ranker",
        "teacher": None,
        "teacher_top": 5,
        "teacher_weight": 0.5,
        "teacher_quantize": "none",
    },
    "dense": {"query_runtime": "torch", "query_quantize": "none"},
}


def lever(rerank: dict | None = None, dense: dict | None = None) -> dict:
    return {"rerank": {**REF["rerank"], **(rerank or {})}, "dense": {**REF["dense"], **(dense or {})}}


FP32 = {"runtime": "onnx"}  # ONNX Runtime fp32: the same scores as torch (max difference ~1e-5), 4x faster
INT8 = {"runtime": "onnx", "quantize": "int8"}
QENC = {"query_runtime": "onnx", "query_quantize": "int8"}
# name -> (what changes, overrides); "torch" is the reference every other is compared with.  Each lever alone is
# measured on ONNX fp32 (torch's scores, so the same quality as torch would give, at ONNX's speed); then combined.
PROFILES: dict[str, tuple[str, dict]] = {
    "hybrid": ("first stages only (no rerank)", lever({"model": None, "ranker": None})),
    "torch": ("4-layer cross-encoder, torch, depth 50, max length 96, ranker (reference)", lever()),
    "onnx-fp32": ("ONNX Runtime, fp32", lever(FP32)),
    "onnx-int8": ("ONNX Runtime, int8 weights", lever(INT8)),
    "qenc-int8": ("+ query encoder on ONNX int8 (cross-encoder ONNX fp32)", lever(FP32, QENC)),
    "depth30": ("depth 30 (ONNX fp32)", lever({**FP32, "depth": 30})),
    "depth20": ("depth 20 (ONNX fp32)", lever({**FP32, "depth": 20})),
    "len48-mix": (
        "max length 48 (ONNX fp32; z-score mix: the ranker was trained at 96)",
        lever({**FP32, "max_length": 48, "ranker": None}),
    ),
    "mix": ("z-score mix instead of the ranker (ONNX fp32)", lever({**FP32, "ranker": None})),
    "int8+qenc": ("ONNX int8 cross-encoder and query encoder", lever(INT8, QENC)),
    "int8+qenc+d30": ("ONNX int8 cross-encoder and query encoder, depth 30", lever({**INT8, "depth": 30}, QENC)),
    "int8+qenc+d20": ("ONNX int8 cross-encoder and query encoder, depth 20", lever({**INT8, "depth": 20}, QENC)),
    "int8+qenc+d20+cascade5": (
        "the same, the 12-layer int8 teacher reordering the top 5 (rerank.teacher)",
        lever({**INT8, "depth": 20, "teacher": TEACHER, "teacher_quantize": "int8"}, QENC),
    ),
    "int8+qenc+d20+cascade3": (
        "the same, the teacher on the top 3",
        lever({**INT8, "depth": 20, "teacher": TEACHER, "teacher_quantize": "int8", "teacher_top": 3}, QENC),
    ),
    "int8+qenc+d15+cascade5": (
        "depth 15, the teacher on the top 5",
        lever({**INT8, "depth": 15, "teacher": TEACHER, "teacher_quantize": "int8"}, QENC),
    ),
    "int8+qenc+d20-mix": (
        "the same with the z-score mix (to compare with the student)",
        lever({**INT8, "depth": 20, "ranker": None}, QENC),
    ),
    "student+int8+qenc+d20-mix": (
        "2-layer student distilled from the 4-layer model, ONNX int8, depth 20, z-score mix",
        lever({**INT8, "depth": 20, "ranker": None, "model": STUDENT}, QENC),
    ),
}


def merged(a: dict, b: dict) -> dict:
    out = {k: dict(v) for k, v in a.items()}
    for sec, fields in b.items():
        out.setdefault(sec, {}).update(fields)
    return out


def profile_config(config: str, base: dict, overrides: dict):
    ov = merged(base, overrides)
    return load_config(config, **ov)


def quality(config: str, base: dict, name: str, overrides: dict, queries, progress: bool) -> dict:
    """MRR@10 / NDCG@10 of what ``query()`` returns on every judged query (batched: same answers)."""
    cfg = profile_config(config, base, merged(overrides, {"search": {"cache_size": 0}}))
    engine = SearchEngine.from_config(cfg)
    qids, texts = list(queries.texts), list(queries.texts.values())
    run = {}
    step = 16
    t0 = time.perf_counter()
    for i in range(0, len(texts), step):
        for qid, res in zip(qids[i : i + step], engine.query_batch(texts[i : i + step], k=10)):
            run[qid] = {h.product_id: h.score for h in res.hits}
        if progress and i % 160 == 0:
            print(f"  {name}: {i + step}/{len(texts)} queries", file=sys.stderr, flush=True)
    qrels = queries.gains(cfg.eval.gain_offset)
    per_q = metrics.mrr(qrels, run, 10, per_query=True)
    return {
        "name": name,
        "what": PROFILES[name][0] if name in PROFILES else name,
        "overrides": overrides,
        "mrr@10": float(np.mean(per_q)),
        "ndcg@10": float(metrics.ndcg(qrels, run, 10)),
        "mrr@10_ci": list(bootstrap_ci(per_q)[1:]),
        "per_query_mrr": per_q.tolist(),
        "quality_minutes": round((time.perf_counter() - t0) / 60, 1),
        "versions": engine.version.versions(),
    }


def latency(config: str, base: dict, overrides: dict, queries, n_latency: int) -> dict:
    """Single-query latency through ``query()``, one query at a time (a quiet machine: run it alone)."""
    cfg = profile_config(config, base, merged(overrides, {"search": {"cache_size": 0}}))
    t0 = time.perf_counter()
    engine = SearchEngine.from_config(cfg)
    load_s = time.perf_counter() - t0
    texts = list(queries.texts.values())
    for t in texts[:5]:
        engine.query(t, k=10)
    lat, steps = [], {}
    for t in texts[:n_latency]:
        t1 = time.perf_counter()
        res = engine.query(t, k=10)
        lat.append((time.perf_counter() - t1) * 1000)
        for s, v in res.timings_ms.items():
            if isinstance(v, float):
                steps.setdefault(s, []).append(v)
    lat = np.asarray(lat)
    return {
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "mean_ms": float(lat.mean()),
        "n_latency": len(lat),
        "steps_p50_ms": {s: float(np.percentile(v, 50)) for s, v in steps.items()},
        "load_seconds": round(load_s, 1),
    }


def measure_cache(config: str, base: dict, overrides: dict, log_path: Path, n: int) -> dict:
    """Replay ``n`` query-log queries in their order with the candidate cache on."""
    cfg = profile_config(config, base, overrides)
    engine = SearchEngine.from_config(cfg)
    texts = read_query_column(log_path, distinct=False)[:n]  # repeats kept: they are what a cache serves
    lat = []
    for t in texts:
        t0 = time.perf_counter()
        engine.query(t, k=10)
        lat.append((time.perf_counter() - t0) * 1000)
    lat = np.asarray(lat)
    hits = engine.version.cache_hits
    again = []  # the same queries once more: what a hit costs (the personal ranking still runs)
    for t in texts[: cfg.search.cache_size]:
        t0 = time.perf_counter()
        engine.query(t, k=10)
        again.append((time.perf_counter() - t0) * 1000)
    return {
        "queries": len(texts),
        "distinct": len(set(texts)),
        "hit_rate": hits / max(1, len(texts)),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "hit_p50_ms": float(np.percentile(again, 50)),
        "hit_p99_ms": float(np.percentile(again, 99)),
        "cache_size": cfg.search.cache_size,
    }


def write_report(out: Path, results: dict, reference: str, hybrid: str | None) -> None:
    rows = [r for r in results.values() if "p50_ms" in r and "mrr@10" in r]
    ref = results.get(reference)
    hyb = results.get(hybrid) if hybrid else None
    lines = [
        "# Serving profiles: quality against latency",
        "",
        "MRR@10 of what `query()` returns on every judged query; latency one query at a time through "
        "`query()` (p50/p99 over the first queries, candidate cache off). Gain kept = (profile − hybrid) / "
        f"({reference} − hybrid).",
        "",
        "| profile | what | MRR@10 [95% CI] | Δ vs reference [95% CI] | gain kept | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = kept = ""
        if ref and r is not ref:
            pb = paired_bootstrap(np.asarray(ref["per_query_mrr"]), np.asarray(r["per_query_mrr"]))
            delta = f"{pb['diff']:+.4f} [{pb['ci_low']:+.4f}, {pb['ci_high']:+.4f}]"
        if ref and hyb and r is not hyb:
            kept = f"{(r['mrr@10'] - hyb['mrr@10']) / max(1e-9, ref['mrr@10'] - hyb['mrr@10']):.0%}"
        ci = r["mrr@10_ci"]
        lines.append(
            f"| {r['name']} | {r['what']} | {r['mrr@10']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}] | {delta} | "
            f"{kept} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |"
        )
    if "cache" in results:
        c = results["cache"]
        lines += [
            "",
            f"Candidate cache ({c['profile']}): {c['queries']} query-log queries in log order, "
            f"{c['distinct']} distinct, hit rate {c['hit_rate']:.1%}, p50 {c['p50_ms']:.0f} ms, "
            f"p99 {c['p99_ms']:.0f} ms; the same queries again (every one a hit): p50 "
            f"{c.get('hit_p50_ms', float('nan')):.2f} ms, p99 {c.get('hit_p99_ms', float('nan')):.2f} ms.",
        ]
    (out / "profiles.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["p50_ms"], r["mrr@10"], s=30)
        ax.annotate(r["name"], (r["p50_ms"], r["mrr@10"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
    if ref and hyb:
        target = hyb["mrr@10"] + 0.9 * (ref["mrr@10"] - hyb["mrr@10"])
        ax.axhline(target, color="grey", ls="--", lw=0.8)
        ax.text(ax.get_xlim()[1], target, " 90% of the gain", va="bottom", ha="right", fontsize=8, color="grey")
    ax.axvline(100, color="red", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency per query, ms (2-core CPU, log scale)")
    ax.set_ylabel("MRR@10 (dev)")
    ax.set_title("Serving profiles: quality against latency")
    fig.tight_layout()
    fig.savefig(out / "curve.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.serving_profiles", __doc__, "configs/wentian.yaml", overrides=True)
    ap.add_argument("--queries", help="judged queries (default: the config's eval.queries)")
    ap.add_argument("--profiles", default=",".join(PROFILES))
    ap.add_argument("--reference", default="torch")
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='another profile: NAME={"rerank": {...}} (e.g. a student cross-encoder)',
    )
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--cache-profile", help="measure the candidate cache with this profile")
    ap.add_argument("--cache-log", default=str(QUERYLOG))
    ap.add_argument("--cache-queries", type=int, default=1000)
    ap.add_argument("--out", default="reports/serving/wentian")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = parse_overrides(args.set)
    cfg = load_config(args.config, **base)
    queries = read_queries(args.queries or cfg.eval.queries)
    profiles = {n: PROFILES[n] for n in args.profiles.split(",") if n}
    for item in args.extra:
        name, _, spec = item.partition("=")
        profiles[name] = (f"extra: {spec}", json.loads(spec))
        PROFILES[name] = profiles[name]
    path = out / "profiles.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for phase in ("quality", "latency"):  # every profile's quality first; then the timings, back to back
        for name, (what, overrides) in profiles.items():
            r = results.get(name, {})
            if r.get("overrides") != overrides:
                r = {}
            if phase in r.get("done", []):
                continue
            print(f"{name} ({phase}): {what}", file=sys.stderr, flush=True)
            if phase == "quality":
                r = {**quality(args.config, base, name, overrides, queries, True), "done": ["quality"]}
            else:
                r.update(latency(args.config, base, overrides, queries, args.latency_queries))
                r["done"] = r["done"] + ["latency"]
                print(
                    f"{name}: MRR@10 {r['mrr@10']:.4f}, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms",
                    file=sys.stderr,
                    flush=True,
                )
            results[name] = r
            path.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    if args.cache_profile:
        c = measure_cache(args.config, base, PROFILES[args.cache_profile][1], Path(args.cache_log), args.cache_queries)
        results["cache"] = {**c, "profile": args.cache_profile}
        path.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    write_report(out, results, args.reference, "hybrid" if "hybrid" in results else None)
    print((out / "profiles.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
