"""`make bench-loop CONFIG=...`: the learning loop on simulated shoppers, naive against debiased.

Half of the config's judged queries (seeded) get traffic, the other half none.  Each simulated day, every
trafficked query is searched by ``--sessions`` shoppers on average (Poisson; distinct users from a pool), who are
shown the serving engine's top 10 and click by the position-based click model (:mod:`eval.sim.traffic`:
examination ``r^−η``, a judged product clicked by its grade, noise clicks, carts, purchases); everything is
logged into a private event store exactly as the service logs it.  After each day `make retrain`'s job runs twice
on the logs so far, without promoting (the logging policy stays the serving ranker): **naive** (clicks as labels,
raw click rates) and **debiased** (the EM click model's propensities; the debiasing method the job picks), and
query() with each candidate ranker is measured on the judged queries with traffic and on those without (MRR@10,
NDCG@10, paired bootstrap interval against the serving ranker as of the same day: the logged clicks also move
the product counts a serving ranker may read).

**The position trap** (``--trap``): queries where the serving top 1 is a weaker product than one shown at ranks
3-8, under strong position bias (η = 2) and many sessions: the naive learner sees the top product clicked most
and keeps it first; the debiased one discounts rank 1's examination and moves the better product up.

Writes ``loop.json``, ``loop.md`` and ``loop.png`` to ``--out``; the serving models are copied, never changed
(a config without a trained ranker serves the z-score mix, which the retrain then builds on).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from core.cli import command, load, run

DAY = 86400.0


def judged_split(cfg, share: float, seed: int):
    from core.formats.judged import read_queries

    j = read_queries(cfg.eval.queries)
    qids = [q for q in j.texts if any(g > 0 for g in j.relevance.get(q, {}).values())]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(qids))
    cut = int(len(qids) * share)
    return j, [qids[i] for i in order[:cut]], [qids[i] for i in order[cut:]]


def measure(engine, j, qids: list[str], k: int = 10) -> dict[str, np.ndarray]:
    """Per-query MRR@10 and NDCG@10 of query() (no user)."""
    from core import metrics

    texts = [j.texts[q] for q in qids]
    run_: dict = {}
    for i in range(0, len(texts), 32):
        for q, res in zip(qids[i : i + 32], engine.query_batch(texts[i : i + 32], k=k)):
            run_[q] = [h.product_id for h in res.hits]
    qrels = {q: dict(j.relevance[q]) for q in qids}
    return {
        "mrr@10": metrics.mrr(qrels, run_, k, per_query=True),
        "ndcg@10": metrics.ndcg(qrels, run_, k, per_query=True),
    }


def compare(base: dict, new: dict) -> dict:
    from core.bootstrap import paired_bootstrap

    out = {}
    for m in base:
        d = paired_bootstrap(base[m], new[m])
        out[m] = {k: round(float(d[k]), 4) for k in ("personal", "diff", "ci_low", "ci_high")}
        out[m]["value"] = out[m].pop("personal")
    return out


def private_config(cfg, out: Path):
    """The config over a private event store and a private copy of the serving ranker."""
    out.mkdir(parents=True, exist_ok=True)
    ranker = out / "ranker"
    if ranker.exists():
        shutil.rmtree(ranker)
    src = Path(cfg.rerank.ranker) if cfg.rerank.ranker else None
    if src is not None and (src / "model.txt").is_file():
        shutil.copytree(src, ranker)
    else:  # no learned ranker: the shop serves the z-score mix, and the retrain builds on it
        from engine.ranker import Ranker

        Ranker.mix(cfg.rerank.weight, {"model": f"the z-score mix, weight {cfg.rerank.weight}"}).save(ranker)
    db = out / "events.sqlite"
    for f in out.glob("events.sqlite*"):
        f.unlink()
    return dataclasses.replace(
        cfg,
        rerank=dataclasses.replace(cfg.rerank, ranker=str(ranker)),
        personal=dataclasses.replace(cfg.personal, path=db, user_key="bench-loop", retention_days=3650),
        serve=dataclasses.replace(cfg.serve, log_impressions=True),
    )


def retrain_as(cfg, method: str, reports: Path, until: float) -> dict:
    from finetune.retrain import run_retrain

    rc = dataclasses.replace(
        cfg.finetune.retrain, debias="naive" if method == "naive" else "auto", reports=reports, min_searches=10
    )
    cfg_m = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, retrain=rc))
    t0 = time.perf_counter()
    report = run_retrain(cfg_m, until=until, promote=False, progress=False)
    report["minutes"] = round((time.perf_counter() - t0) / 60, 2)
    # keep the candidate: the next retrain's staging replaces the folder
    kept = reports / "ranker"
    if kept.exists():
        shutil.rmtree(kept)
    shutil.copytree(report["candidate"], kept)
    report["candidate"] = str(kept)
    return report


def with_ranker(cfg, folder: str):
    from engine import SearchEngine

    return SearchEngine.from_config(dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, ranker=folder)))


def simulate_days(engine, j, qids, days, sessions, eta, seed, end, explore, users=200, start_day=0):
    # the serving engine's top 10 of each query is computed once: the logging policy stays the serving ranker
    """``days`` simulated days of shoppers on ``qids`` ending at ``end`` (day ``start_day + i`` each)."""
    from eval.sim.traffic import ClickModel, attractiveness, served_lists, simulate

    texts = [j.texts[q] for q in qids]
    lists = served_lists(engine, texts)
    wanted = {j.texts[q]: attractiveness(j.relevance[q]) for q in qids}
    rng = np.random.default_rng(seed)
    pool = [f"shopper{i}" for i in range(users)]
    ev = engine.user_events()
    for d in range(days):
        t0 = end - (days - d) * DAY
        sess = []
        for q in texts:
            for _ in range(rng.poisson(sessions)):
                sess.append((str(rng.choice(pool)), q, t0 + rng.random() * DAY * 0.95))
        sess.sort(key=lambda s: s[2])
        t = time.perf_counter()
        counts = simulate(ev, lists, wanted, sess, ClickModel(eta=eta), rng, explore)
        counts["logging_searches_per_s"] = round(counts["searches"] / max(time.perf_counter() - t, 1e-9), 1)
        yield d + start_day, counts


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.loop", __doc__, overrides=True)
    ap.add_argument("--out", default=None, help="default reports/loop/<config name>")
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--sessions", type=float, default=1.0, help="sessions per trafficked query per day (mean)")
    ap.add_argument("--share", type=float, default=0.5, help="share of the judged queries with traffic")
    ap.add_argument("--eta", type=float, default=1.0, help="position bias: examination r^-eta")
    ap.add_argument("--explore", type=float, default=0.0, help="share of searches shown in a shuffled order")
    ap.add_argument("--trap", type=int, default=20, help="position-trap queries (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    def body():
        from engine import SearchEngine

        cfg0 = load(args)
        out = Path(args.out or f"reports/loop/{cfg0.name}")
        cfg = private_config(cfg0, out / "work")
        j, traffic, quiet = judged_split(cfg, args.share, args.seed)
        serving = SearchEngine.from_config(cfg)
        base = {"with_traffic": measure(serving, j, traffic), "without_traffic": measure(serving, j, quiet)}
        end = time.time() - 60
        days = []
        for d, counts in simulate_days(
            serving, j, traffic, args.days, args.sessions, args.eta, args.seed, end, args.explore
        ):
            until = end - (args.days - d - 1) * DAY
            row = {"day": d + 1, "traffic": counts, "sessions_per_query": round(args.sessions * (d + 1), 2)}
            # the serving ranker as of now: the logged clicks also move the product counts it may read (ctr,
            # popularity), for every query; the retrain is measured against that, not against day 0
            now = with_ranker(cfg, cfg.rerank.ranker)
            base_now = {g: measure(now, j, qs) for g, qs in (("with_traffic", traffic), ("without_traffic", quiet))}
            row["serving_now"] = {g: {m: round(float(v.mean()), 4) for m, v in base_now[g].items()} for g in base_now}
            for method in ("naive", "debiased"):
                rep = retrain_as(cfg, method, out / "work" / method, until)
                eng = with_ranker(cfg, rep["candidate"])
                row[method] = {
                    "chosen": rep["chosen"],
                    "retrain_minutes": rep["minutes"],
                    "guard": rep["decision"],
                    **{
                        g: compare(base_now[g], measure(eng, j, qs))
                        for g, qs in (("with_traffic", traffic), ("without_traffic", quiet))
                    },
                }
            days.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
        result = {
            "config": str(cfg0.source),
            "judged_queries": {"with_traffic": len(traffic), "without_traffic": len(quiet)},
            "click_model": {"eta": args.eta, "explore": args.explore},
            "serving": {g: {m: round(float(v.mean()), 4) for m, v in base[g].items()} for g in base},
            "days": days,
        }
        gained = [r for r in days if r["debiased"]["with_traffic"]["mrr@10"]["ci_low"] > 0]
        result["sessions_per_query_until_the_gain"] = gained[0]["sessions_per_query"] if gained else None
        if args.trap:
            result["trap"] = position_trap(cfg0, out / "trap", j, quiet, args.trap, args.seed, args.explore)
        write(result, out)
        return 0

    return run(body, errors=(ValueError, FileNotFoundError))


def position_trap(cfg0, out: Path, j, qids, n: int, seed: int, explore: float = 0.0) -> dict:
    """Queries whose serving top 1 is weaker than a product at ranks 3-8, 150 sessions each at η = 2 (``explore``:
    the share of them shown in a shuffled order, as in the main run)."""
    from engine import SearchEngine
    from eval.sim.traffic import served_lists

    cfg = private_config(cfg0, out / "work")
    serving = SearchEngine.from_config(cfg)
    lists = served_lists(serving, [j.texts[q] for q in qids])
    trap = []
    for q in qids:
        rel, shown = j.relevance[q], lists.get(j.texts[q], [])
        best = max(rel.values())
        if len(shown) >= 8 and rel.get(shown[0], 0) < best and any(rel.get(p, 0) == best for p in shown[2:8]):
            trap.append(q)
    trap = trap[:n]
    if not trap:
        return {"queries": 0, "note": "no judged query has a weaker top 1 and its best product at ranks 3-8"}
    end = time.time() - 60
    for _ in simulate_days(serving, j, trap, 2, 75.0, 2.0, seed + 1, end, explore):
        pass
    out_ = {"queries": len(trap), "sessions_per_query": 150, "eta": 2.0, "explore": explore}
    for method in ("naive", "debiased"):
        rep = retrain_as(cfg, method, out / "work" / method, end)
        eng = with_ranker(cfg, rep["candidate"])
        got = served_lists(eng, [j.texts[q] for q in trap])
        first_best = [
            max(j.relevance[q].values()) == j.relevance[q].get((got[j.texts[q]] or [None])[0], 0) for q in trap
        ]
        out_[method] = {"best_product_first": round(float(np.mean(first_best)), 3), "chosen": rep["chosen"]}
    return out_


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "loop.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    lines = [
        f"# The learning loop on simulated shoppers: {result['config']}",
        "",
        f"Judged queries with traffic: {result['judged_queries']['with_traffic']}, without: "
        f"{result['judged_queries']['without_traffic']}; click model η = {result['click_model']['eta']}, "
        f"explore {result['click_model']['explore']}. Serving: {result['serving']}.",
        "",
        "| day | sessions/query | method | MRR@10 with traffic (diff [CI]) | MRR@10 without traffic (diff [CI]) | "
        "retrain min |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["days"]:
        for method in ("naive", "debiased"):
            r = row[method]
            w, wo = r["with_traffic"]["mrr@10"], r["without_traffic"]["mrr@10"]
            lines.append(
                f"| {row['day']} | {row['sessions_per_query']} | {method} ({r['chosen']}) | {w['value']} "
                f"({w['diff']:+.4f} [{w['ci_low']:+.4f}, {w['ci_high']:+.4f}]) | {wo['value']} "
                f"({wo['diff']:+.4f} [{wo['ci_low']:+.4f}, {wo['ci_high']:+.4f}]) | {r['retrain_minutes']} |"
            )
    lines += [
        "",
        f"Sessions per trafficked query until the debiased gain's interval is above zero: "
        f"{result.get('sessions_per_query_until_the_gain')}. Logging: "
        + ", ".join(f"day {r['day']} {r['traffic']['logging_searches_per_s']:.0f} searches/s" for r in result["days"])
        + " into the store (the service's cost per search: `python -m eval.bench.impression_cost`).",
    ]
    if "trap" in result:
        lines += ["", f"Position trap: {json.dumps(result['trap'], ensure_ascii=False)}"]
    (out / "loop.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(result, out / "loop.png")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    x = [r["sessions_per_query"] for r in result["days"]]
    for ax, group in zip(axes, ("with_traffic", "without_traffic")):
        ax.axhline(result["serving"][group]["mrr@10"], color="k", lw=0.8, label="serving")
        for method, c in (("naive", "C1"), ("debiased", "C0")):
            v = [r[method][group]["mrr@10"] for r in result["days"]]
            lo = [m["value"] - (m["diff"] - m["ci_low"]) for m in v]
            hi = [m["value"] + (m["ci_high"] - m["diff"]) for m in v]
            ax.plot(x, [m["value"] for m in v], marker="o", color=c, label=method)
            ax.fill_between(x, lo, hi, color=c, alpha=0.15)
        ax.set(title=f"judged queries {group.replace('_', ' ')}", xlabel="sessions per trafficked query")
    axes[0].set_ylabel("query() MRR@10")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
