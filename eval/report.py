"""Metrics → reports: ``metrics.json``, ``report.md``, a recall plot and the runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from eval.evaluate import RECALL_CURVE_KS, StageResult


def write_report(out: Path, results: list[StageResult], context: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    payload = {r.stage: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.metrics.items()} for r in results}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    for r in results:
        with open(out / f"run.{r.stage}.tsv", "w", encoding="utf-8") as f:
            f.write("qid\tpid\trank\tscore\n")
            for qid, scored in r.run.items():
                for rank, (pid, s) in enumerate(sorted(scored.items(), key=lambda kv: -kv[1])[:100], start=1):
                    f.write(f"{qid}\t{pid}\t{rank}\t{s:.6g}\n")

    plot = _plot_recall(out / "recall.png", results)
    cols = [k for k in next(iter(payload.values())) if k != "n_queries"] if payload else []
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
        lines.append(f"| {r.stage} | " + " | ".join(f"{m[c]:.4f}" for c in cols)
                     + f" | {m['n_queries']} | {np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} |")
    if plot:
        lines += ["", f"![recall at k]({plot.name})"]
    lines += ["", "Latency is per query on this machine, tokenization included, retrieving the deepest cut.", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return payload


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
