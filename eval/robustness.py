"""`python -m eval.robustness --config C --queries DEV --perturbed P --out DIR`: does query understanding hold
up against what shoppers type?

Evaluates the same stage (default ``rerank``: what ``query()`` returns) four times: clean and perturbed
queries (``python -m eval.perturb``), query understanding on and off (``query.rewrite``).  Reports MRR@10
and NDCG@10 of each, the drop from clean to perturbed with understanding off and on (paired bootstrap
intervals), the clean-query difference on − off (what understanding costs where nothing is wrong), and
the drop per perturbation kind (from the perturbed file's ``.log.tsv``).  Writes ``robustness.json`` and
``robustness.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from core.bootstrap import paired_bootstrap
from eval.evaluate import evaluate
from eval.significance import fmt_interval
from core.formats.judged import read_queries
from core.cli import command, load

METRICS = ("mrr@10", "ndcg@10")


def run(cfg, sets: dict, stage: str, rewrite: bool, progress: bool) -> dict[str, dict[str, np.ndarray]]:
    """Each query set's per-query metrics under one engine (models loaded once per setting)."""
    from engine.search import SearchEngine

    engine = SearchEngine.from_config(dataclasses.replace(cfg, query=dataclasses.replace(cfg.query, rewrite=rewrite)))
    out = {}
    for name, queries in sets.items():
        res = evaluate(engine, queries, [stage], progress=progress)[0]
        out[name] = {m: res.per_query[m] for m in METRICS}
    return out


def kinds_of(perturbed: Path) -> dict[str, str]:
    log = perturbed.with_name(perturbed.name + ".log.tsv")
    if not log.is_file():
        return {}
    with open(log, encoding="utf-8", newline="") as f:
        return {r["qid"]: r["kind"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.robustness", __doc__, None, overrides=True)
    ap.add_argument("--queries", help="clean judged queries (default: the config's eval.queries)")
    ap.add_argument("--perturbed", required=True, help="the same queries perturbed (python -m eval.perturb)")
    ap.add_argument("--stage", default="rerank")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    cfg = load(args)
    clean = read_queries(args.queries or cfg.eval.queries)
    pert = read_queries(args.perturbed)
    if list(clean.relevance) != list(pert.relevance):
        print("error: the perturbed file does not hold the same query ids in the same order", file=sys.stderr)
        return 2
    progress = not args.no_progress
    res = {}
    for rewrite in (False, True):
        for name, pq in run(cfg, {"clean": clean, "perturbed": pert}, args.stage, rewrite, progress).items():
            res[f"{name}/{'on' if rewrite else 'off'}"] = pq
    res = {k: res[k] for k in ("clean/off", "clean/on", "perturbed/off", "perturbed/on")}  # the report's order
    out = {"config": args.config, "stage": args.stage, "n_queries": len(clean), "runs": {}, "compare": {}}
    for key, pq in res.items():
        out["runs"][key] = {m: round(float(v.mean()), 4) for m, v in pq.items()}
    pairs = {
        "drop, understanding off (perturbed − clean)": ("clean/off", "perturbed/off"),
        "drop, understanding on (perturbed − clean)": ("clean/on", "perturbed/on"),
        "clean queries: on − off": ("clean/off", "clean/on"),
        "perturbed queries: on − off": ("perturbed/off", "perturbed/on"),
    }
    for name, (a, b) in pairs.items():
        out["compare"][name] = {
            m: {
                k: round(v, 4)
                for k, v in paired_bootstrap(res[a][m], res[b][m]).items()
                if k in ("diff", "ci_low", "ci_high", "p_value")
            }
            for m in METRICS
        }
    off = out["compare"]["drop, understanding off (perturbed − clean)"]["mrr@10"]["diff"]
    on = out["compare"]["drop, understanding on (perturbed − clean)"]["mrr@10"]["diff"]
    out["drop_kept"] = round(on / off, 3) if off < 0 else None  # share of the drop left (target ≤ 0.5)
    kinds = kinds_of(Path(args.perturbed))
    qids = list(clean.relevance)
    by_kind = {}
    for kind in sorted(set(kinds.values())):
        sel = np.array([kinds.get(q) == kind for q in qids])
        if sel.any():
            by_kind[kind] = {
                "n": int(sel.sum()),
                **{f"{k}": round(float(res[k]["mrr@10"][sel].mean()), 4) for k in res},
            }
    out["by_kind_mrr@10"] = by_kind
    dst = Path(args.out)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "robustness.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = [
        f"# Robustness: {args.config}, stage {args.stage}, {len(clean)} queries",
        "",
        f"- clean: {args.queries or cfg.eval.queries}",
        f"- perturbed: {args.perturbed}",
        "",
        "| queries | understanding | MRR@10 | NDCG@10 |",
        "| --- | --- | ---: | ---: |",
    ]
    for key, m in out["runs"].items():
        q, u = key.split("/")
        lines.append(f"| {q} | {u} | {m['mrr@10']:.4f} | {m['ndcg@10']:.4f} |")
    lines += ["", "| comparison | MRR@10 [95% CI] | p | NDCG@10 [95% CI] | p |", "| --- | --- | ---: | --- | ---: |"]
    for name, d in out["compare"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{fmt_interval(d[m]['diff'], d[m]['ci_low'], d[m]['ci_high'], signed=True)} | {d[m]['p_value']:.3f}"
                for m in METRICS
            )
            + " |"
        )
    if out["drop_kept"] is not None:
        lines += [
            "",
            f"Share of the MRR@10 drop left with understanding on: **{out['drop_kept']:.2f}** "
            "(1 = no help, 0 = the drop is gone).",
        ]
    if by_kind:
        lines += [
            "",
            "MRR@10 by perturbation kind:",
            "",
            "| kind | queries | clean, off | clean, on | perturbed, off | perturbed, on |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for kind, b in by_kind.items():
            lines.append(
                f"| {kind} | {b['n']} | {b['clean/off']:.4f} | {b['clean/on']:.4f} | "
                f"{b['perturbed/off']:.4f} | {b['perturbed/on']:.4f} |"
            )
    (dst / "robustness.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
