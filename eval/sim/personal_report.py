"""The personalization benchmark's report: ``personal.json``, ``report.md`` and the lift plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from eval.sim.shoppers import TASTES


def write_report(out: Path, payload: dict, context: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "personal.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    lines = [
        f"# Personalization benchmark: {context['config']}",
        "",
        "**The users are simulated** (see `eval/sim/personal.py` for the behaviour model): stable tastes over "
        + ", ".join(context["facets"])
        + "; position-biased clicks on 10 of the engine's non-personal top 30 (Plackett-Luce draw) before "
        "the time cut; judgments after it drawn from the same click model without position bias. "
        "Personal = the ranker with `personalize=1` and the user's profile at the cut; base = the same ranker "
        "with `personalize=0`. Differences are personal − base with 95% paired bootstrap intervals over sessions. "
        "Oracle: the simulator's own click utility with the user's true taste (a ceiling no profile reaches).",
        "",
        *[f"- {k}: {v}" for k, v in context.items()],
        "",
        "Bayes: the best ranking the user's training sessions support — the simulator's own click model "
        "(positions, relevance, taste strength) turned into a posterior per facet value from each user's "
        "logged impressions and clicks (the facets' posteriors updated from each other in turn, mean field), "
        "candidates ranked by expected click. Bayes upper: the same with the user's true taste on the other "
        "facets given (an upper estimate, the reference of earlier reports). Oracle − Bayes is what no "
        "profile can know from the history; Bayes − personal is what the features and ranker leave; "
        "'reached' = diff / (Bayes − relevance).",
        "",
        "Relevance: the simulator's relevance alone (no taste), the ranking the Bayes posterior is added to; "
        "Bayes − relevance is the most a profile built from this much history can lift NDCG@10.",
        "",
        "| taste | users | group | sessions | NDCG@10 base | NDCG@10 personal | diff [95% CI] | relevance | Bayes "
        "| reached | Bayes upper | oracle | MRR@10 base | MRR@10 personal | diff [95% CI] |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for taste in TASTES:
        if taste not in payload:
            continue
        for group in ("warm", "cold"):
            b = payload[taste][group]
            n, m = b["ndcg@10"], b["mrr@10"]
            room = n.get("bayes", float("nan")) - n.get("relevance", float("nan"))
            lines.append(
                f"| {taste} | {b['n_users']} | {group} | {b['n_queries']} | {n['base']:.4f} | "
                f"{n['personal']:.4f} | {n['diff']:+.4f} [{n['ci_low']:+.4f}, {n['ci_high']:+.4f}] | "
                f"{n.get('relevance', float('nan')):.4f} | {n.get('bayes', float('nan')):.4f} | "
                f"{_share(n['diff'], room)} | {n.get('bayes_upper', float('nan')):.4f} | "
                f"{n.get('oracle', float('nan')):.4f} | "
                f"{m['base']:.4f} | {m['personal']:.4f} | {m['diff']:+.4f} [{m['ci_low']:+.4f}, "
                f"{m['ci_high']:+.4f}] |"
            )
    if payload.get("curve"):
        lines += [
            "",
            "## Lift by length of history (medium taste, warm users)",
            "",
            "The same simulation with more sessions per user: what the profile and ranker gain as history "
            "grows, against the most that history supports (Bayes − relevance).",
            "",
            "| sessions per user | training sessions per warm user | NDCG@10 diff [95% CI] | Bayes − relevance "
            "| share of it reached |",
            "| ---: | ---: | --- | ---: | ---: |",
        ]
        for row in payload["curve"]:
            n = row["warm"]["ndcg@10"]
            room = n["bayes"] - n["relevance"]
            share = _share(n["diff"], room)
            lines.append(
                f"| {row['sessions']:g} | {row['history_sessions_per_warm_user']:g} | {n['diff']:+.4f} "
                f"[{n['ci_low']:+.4f}, {n['ci_high']:+.4f}] | {room:+.4f} | {share} |"
            )
    for key, taste in (("guard", "medium"), ("guard_strong", "strong")):
        if key not in payload:
            continue
        lines += [
            "",
            f"## Guard on real dev queries (synthetic histories, {taste}-taste ranker)",
            "",
            "| history | queries | MRR@10 base | MRR@10 personal | diff [95% CI] |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        rows = [(name, g) for name, g in payload[key].items()]
        rows += [(f"{name}, Bayes", g) for name, g in payload.get(f"{key}_bayes", {}).items()]
        for name, g in rows:
            m = g["mrr@10"]
            lines.append(
                f"| {name} | {g['n_queries']} | {m['base']:.4f} | {m['personal']:.4f} | {m['diff']:+.4f} "
                f"[{m['ci_low']:+.4f}, {m['ci_high']:+.4f}] |"
            )
        if f"{key}_bayes" in payload:
            lines += [
                "",
                "Bayes: the same histories read by the simulator's own posterior (each guard session assumed to "
                "show what the simulated shop shows at each position on average), candidates ranked by expected "
                "clicks against the simulator's relevance alone: what a perfect learner of the simulated tastes "
                "pays on these queries.",
            ]
    lines += _knob_table(payload)
    if "ranker_vs_mix" in payload:
        b = payload["ranker_vs_mix"]
        lines += [
            "",
            f"## The config's learned ranker against the z-score mix (no users, {b['n_queries']} dev queries)",
            "",
            "| metric | z-score mix | ranker | diff [95% CI] | p |",
            "| --- | ---: | ---: | --- | ---: |",
        ]
        for m in ("mrr@10", "ndcg@10"):
            v = b[m]
            lines.append(
                f"| {m} | {v['zscore_mix']:.4f} | {v['ranker']:.4f} | {v['diff']:+.4f} "
                f"[{v['ci_low']:+.4f}, {v['ci_high']:+.4f}] | {v['p_value']:.3f} |"
            )
    if _plot(out / "lift.png", payload):
        lines += ["", "![NDCG@10 lift by taste strength](lift.png)"]
    for taste in TASTES:
        if taste in payload:
            imp = payload[taste]["train"]["importance_gain"]
            top = sorted(imp.items(), key=lambda kv: -kv[1])[:6]
            lines += [
                "",
                f"Ranker ({taste}): {payload[taste]['train']['ranker_sessions']} training sessions; "
                f"relevance logged with {payload[taste]['train'].get('relevance_logged', 0.0):.0%} of the "
                "impressions and clicks; top features by gain: " + ", ".join(f"{k} {v:.0f}" for k, v in top),
            ]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _plot(path: Path, payload: dict) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tastes = [t for t in TASTES if t in payload]
    if not tastes:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for off, group, color in ((-0.15, "warm", "tab:blue"), (0.15, "cold", "tab:gray")):
        d = [payload[t][group]["ndcg@10"] for t in tastes]
        x = np.arange(len(tastes)) + off
        ax.bar(x, [v["diff"] for v in d], width=0.3, color=color, label=f"{group} users")
        ax.errorbar(
            x,
            [v["diff"] for v in d],
            yerr=[[v["diff"] - v["ci_low"] for v in d], [v["ci_high"] - v["diff"] for v in d]],
            fmt="none",
            ecolor="k",
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(tastes)), tastes)
    ax.set_xlabel("taste strength (simulated users)")
    ax.set_ylabel("NDCG@10 personal − base")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _share(diff: float, room: float) -> str:
    """The share of the room (Bayes − relevance) a lift reached; – where there is no room."""
    return f"{diff / room:.0%}" if room > 0.001 else "–"


def _knob_table(payload: dict) -> list[str]:
    """The medium-taste ranker at each value of the personalize knob: the warm users' lift against the guard."""
    knobs = payload.get("medium", {}).get("knobs")
    if not knobs:
        return []
    warm = payload["medium"]["warm"]["ndcg@10"]
    room = warm.get("bayes", float("nan")) - warm.get("relevance", float("nan"))
    guard = payload.get("guard", {})
    rows = {**knobs, "1": {"ndcg@10": warm}}
    lines = [
        "",
        "## The personalize knob: lift against the guard (medium taste)",
        "",
        "| personalize | warm NDCG@10 diff [95% CI] | share of the Bayes room | guard random history MRR@10 diff "
        "[95% CI] | guard group history MRR@10 diff |",
        "| ---: | --- | ---: | --- | ---: |",
    ]
    for k in sorted(rows, key=float):
        n = rows[k]["ndcg@10"]
        cells = []
        for name in ("random_history", "group_history"):
            g = guard.get(name, {})
            m = g.get("mrr@10") if k == "1" else g.get("knobs", {}).get(k)
            cells.append(f"{m['diff']:+.4f} [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]" if m else "–")
        lines.append(
            f"| {k} | {n['diff']:+.4f} [{n['ci_low']:+.4f}, {n['ci_high']:+.4f}] | {_share(n['diff'], room)} | "
            f"{cells[0]} | {cells[1].split(' ')[0]} |"
        )
    return lines
