"""Metrics → reports: ``metrics.json``, ``report.md``, a recall plot and the runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from eval.evaluate import RECALL_CURVE_KS, StageResult
from core.metrics import ranked
from eval.significance import fmt_interval, intervals, most_hurt, paired


def write_report(
    out: Path,
    results: list[StageResult],
    context: dict,
    texts: dict[str, str] | None = None,
    relevance: dict[str, dict[str, float]] | None = None,
    titles=None,
    seed: int = 0,
) -> dict:
    """``metrics.json``, ``significance.json`` (each stage's intervals, each stage's paired gain), ``report.md``,
    ``per_query.tsv``, ``recall.png`` and the runs.  ``texts`` (qid → query), ``relevance`` (qid → judged)
    and ``titles`` (pid → title) let the report show the queries each stage hurt most."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        r.stage: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.metrics.items()} for r in results
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    sig = significance(results, seed)
    if sig:
        (out / "significance.json").write_text(json.dumps(sig, indent=2) + "\n", encoding="utf-8")
    qids = list(relevance) if relevance is not None else None
    if results and results[0].per_query and qids is not None:
        write_per_query(out / "per_query.tsv", results, qids, texts or {})

    for r in results:
        with open(out / f"run.{r.stage}.tsv", "w", encoding="utf-8") as f:
            f.write("qid\tpid\trank\tscore\n")
            for qid, scored in r.run.items():
                for rank, (pid, s) in enumerate(sorted(scored.items(), key=lambda kv: -kv[1])[:100], start=1):
                    f.write(f"{qid}\t{pid}\t{rank}\t{s:.6g}\n")

    plot = _plot_recall(out / "recall.png", results)
    cols = [k for k in next(iter(payload.values())) if k not in ("n_queries", "n_queries_recall")] if payload else []
    lines = [
        f"# Evaluation: {context.get('config_name', '')}",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        *[f"- {k}: {v}" for k, v in context.items()],
        "",
        "| stage | " + " | ".join(cols) + " | queries | p50 ms | p99 ms |",
        "| --- | " + " | ".join("---:" for _ in cols) + " | ---: | ---: | ---: |",
    ]
    for r in results:
        m = payload[r.stage]
        lat = r.latency_ms
        lines.append(
            f"| {r.stage} | "
            + " | ".join(f"{m[c]:.4f}" for c in cols)
            + f" | {_queries_cell(m)} | {np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} |"
        )
    if sig:
        lines += significance_lines(sig)
    if qids is not None and len(results) > 1 and results[0].per_query:
        lines += hurt_lines(results, qids, texts or {}, relevance or {}, titles)
    if plot:
        lines += ["", f"![recall at k]({plot.name})"]
    lines += ["", "Latency is per query on this machine, tokenization included, retrieving the deepest cut.", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return payload


def significance(results: list[StageResult], seed: int = 0) -> dict:
    """Each stage's 95% interval per metric, and each stage's paired gain over the stage before it."""
    if not results or not results[0].per_query:
        return {}
    out = {"intervals": {r.stage: intervals(r.per_query, seed) for r in results}, "gains": {}}
    for prev, r in zip(results, results[1:]):
        out["gains"][f"{r.stage} vs {prev.stage}"] = paired(prev.per_query, r.per_query, seed)
    return out


def significance_lines(sig: dict) -> list[str]:
    metrics = list(next(iter(sig["intervals"].values())))
    lines = [
        "",
        "## Confidence (95% bootstrap over queries)",
        "",
        "| stage | " + " | ".join(metrics) + " |",
        "| --- | " + " | ".join("---" for _ in metrics) + " |",
    ]
    for stage, m in sig["intervals"].items():
        lines.append(
            f"| {stage} | "
            + " | ".join(fmt_interval(m[k]["mean"], m[k]["ci_low"], m[k]["ci_high"]) for k in metrics)
            + " |"
        )
    if sig["gains"]:
        lines += [
            "",
            "Each stage against the one before it on the same queries (paired bootstrap; p two-sided):",
            "",
            "| change | " + " | ".join(f"{k} diff [95% CI] | p" for k in metrics) + " |",
            "| --- | " + " | ".join("--- | ---:" for _ in metrics) + " |",
        ]
        for name, g in sig["gains"].items():
            lines.append(
                f"| {name} | "
                + " | ".join(
                    f"{fmt_interval(g[k]['diff'], g[k]['ci_low'], g[k]['ci_high'], signed=True)} | "
                    f"{g[k]['p_value']:.3f}"
                    for k in metrics
                )
                + " |"
            )
    return lines


def write_per_query(path: Path, results: list[StageResult], qids: list[str], texts: dict[str, str]) -> None:
    metrics = list(results[0].per_query)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(["qid", "query"] + [f"{r.stage}:{m}" for r in results for m in metrics]) + "\n")
        for i, q in enumerate(qids):
            text = texts.get(q, "").replace("\t", " ")
            f.write("\t".join([q, text] + [f"{r.per_query[m][i]:.4f}" for r in results for m in metrics]) + "\n")


def hurt_lines(
    results: list[StageResult],
    qids: list[str],
    texts: dict[str, str],
    relevance: dict[str, dict[str, float]],
    titles,
    n: int = 5,
) -> list[str]:
    """For each stage, the queries whose MRR@10 it lowered most against the stage before, with both top 3."""

    def title(pid: str) -> str:
        t = titles(pid) if callable(titles) else (titles or {}).get(pid, "")
        return (t or "").replace("|", "/").replace("\n", " ")

    lines = ["", "## The queries each stage hurt most (MRR@10 against the stage before)"]
    for prev, r in zip(results, results[1:]):
        hurt = most_hurt(prev.per_query["mrr@10"], r.per_query["mrr@10"], qids, n)
        fell = int((r.per_query["mrr@10"] < prev.per_query["mrr@10"]).sum())
        rose = int((r.per_query["mrr@10"] > prev.per_query["mrr@10"]).sum())
        lines += ["", f"### {r.stage} vs {prev.stage}: {rose} queries up, {fell} down", ""]
        if not hurt:
            lines.append("No query fell.")
            continue
        lines += ["| query | judged | MRR@10 | top 3 before | top 3 after |", "| --- | --- | --- | --- | --- |"]
        for q, a, b in hurt:
            judged = ", ".join(f"{title(p)[:30]} ({p})" for p, g in relevance.get(q, {}).items() if g > 0)[:90]

            def top(run):
                return "; ".join(title(p)[:24] or p for p in ranked(run.get(q, {}))[:3])

            lines.append(
                f"| {texts.get(q, q)} | {judged} | {a:.2f} → {b:.2f} | {top(prev.run)} | {top(r.run)} |".replace(
                    "\n", " "
                )
            )
    return lines


def _queries_cell(m: dict) -> str:
    """The number of queries; and, where some have no relevant product, how many the recall is over."""
    n, nr = m["n_queries"], m.get("n_queries_recall", m["n_queries"])
    return f"{n}" if nr == n else f"{n} (recall: the {nr} with a relevant product)"


def _plot_recall(path: Path, results: list[StageResult]) -> Path | None:
    if not results or not results[0].recall_curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ks = RECALL_CURVE_KS[: len(r.recall_curve)]
        ax.plot(ks, r.recall_curve, marker="o", ms=3, label=r.stage)
    ax.set_xscale("log")
    ax.set_xlabel("k (products retrieved)")
    ax.set_ylabel("recall@k")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
