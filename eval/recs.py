"""`make eval-recs [CONFIG=...]`: recommendations measured on a time split of the click log.

The log's events before the cut (the last ``--test-days``) build every system; the events after it are the
targets, each ranked against the **whole catalog** (no sampled negatives: sampled metrics do not keep the order
of systems, Krichene and Rendle 2020):

- **for_you**: each user with history before the cut, the first product they engage with after it; the
  system sees their history (engagements and searches) as of the cut.
- **similar**: two products clicked one after the other in one visit (30 minutes) after the cut: the second
  given the first.
- **bought_together**: two products carted (or bought) by one user within ``recs.basket_days`` after the cut,
  of different titles: the later given the earlier.

Systems, all from the same training events: **ours** (:mod:`engine.recommend` over the models
:mod:`finetune.recs` builds), **popularity** (gain-weighted engagements), **item-kNN** (``implicit``'s cosine
item-item model; for for_you its recommendation from the user's items) and **ALS** (``implicit``; for for_you
its user factors, for the item tasks its item factors' similar items).  HR@10 and NDCG@10 with 95% bootstrap
intervals, catalog coverage (the share of products in any top 10), and our p50/p99 per call.  Writes
``recs.json``, ``report.md`` and ``recs.png`` under ``--out``.

**The demo's shoppers are simulated** (:mod:`eval.sim.demo_data`): they buy a case and a charger after a
phone, socks after running shoes, a keyboard after a laptop and a cup after coffee (half in the same visit,
half days later), and buy milk, coffee, cat food, detergent, shampoo and face masks again every one to three
weeks; everything else once.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from core.bootstrap import bootstrap_ci, paired_bootstrap
from core.cli import command, load, run
from engine.recs import GAINS

TASKS = ("for_you", "similar", "bought_together")
SYSTEMS = ("ours", "popularity", "item_knn", "als")


def split_events(events, row_of: dict, test_days: float, valid: bool = False):
    """(train, test, cut): the click log's events on indexed products, split by time.  ``valid``: the test
    window is left out and the window before it is the test (what settings are tuned on)."""
    ev = sorted((e for e in events if e.product_id in row_of), key=lambda e: e.timestamp)
    if not ev:
        raise ValueError("no events on indexed products")
    if valid:
        end = ev[-1].timestamp - test_days * 86400.0
        ev = [e for e in ev if e.timestamp < end]
    cut = ev[-1].timestamp - test_days * 86400.0
    return [e for e in ev if e.timestamp < cut], [e for e in ev if e.timestamp >= cut], cut


def targets(test, row_of: dict, train_users: set, visit: float, basket: float, titles) -> dict[str, list]:
    """Per task, (seed, target row, time) cases from the test events (see the module doc)."""
    by_user: dict[str, list] = {}
    for e in test:
        if e.event in GAINS:
            by_user.setdefault(e.user_id, []).append(e)
    out: dict[str, list] = {t: [] for t in TASKS}
    for u, evs in by_user.items():
        if u in train_users:
            out["for_you"].append((u, row_of[evs[0].product_id], evs[0].timestamp))
        clicks = [e for e in evs if e.event == "click"]
        for a, b in zip(clicks, clicks[1:]):
            ra, rb = row_of[a.product_id], row_of[b.product_id]
            if ra != rb and b.timestamp - a.timestamp <= visit and titles[ra] != titles[rb]:
                out["similar"].append((ra, rb, b.timestamp))
        carts = [e for e in evs if e.event in ("add_to_cart", "purchase")]
        seen: set = set()
        for i, a in enumerate(carts):
            for b in carts[i + 1 :]:
                ra, rb = row_of[a.product_id], row_of[b.product_id]
                if b.timestamp - a.timestamp > basket:
                    break
                if ra != rb and titles[ra] != titles[rb] and (ra, rb) not in seen:
                    seen.add((ra, rb))
                    out["bought_together"].append((ra, rb, b.timestamp))
                    break  # the next cart item only
    return out


def trained_recommender(engine, train, row_of: dict, cut: float, cfg):
    """Our recommender over models built from the training engagements (and trending as of the cut); the
    build's card and the seconds it took (:func:`finetune.recs_build.built_recommender`)."""
    from finetune.recs_build import built_recommender

    eng = [e for e in train if e.event in GAINS]
    src = tuple(list(col) for col in zip(*[(e.user_id, row_of[e.product_id], e.event, e.timestamp) for e in eng]))
    return built_recommender(engine, src, cfg.recs, cut)


def history_before(events: list, t: float, row_of: dict, cfg):
    """A user's history (:class:`engine.events.history.History`) from their log events before ``t``, as the
    store would give it (newest engagements and searches first)."""
    from engine.events.history import make_history

    ev = [e for e in events if e.timestamp < t][::-1][: cfg.recs.history_events]
    eng_ev = [e for e in ev if e.event in GAINS]
    return make_history(
        [row_of[e.product_id] for e in eng_ev],
        [e.event for e in eng_ev],
        [e.timestamp for e in eng_ev],
        [e.query for e in eng_ev],
        [(e.query, e.timestamp) for e in ev if e.event not in GAINS],
        cfg.recs.history_searches,
    )


def rank_metrics(ranked: list[np.ndarray], truth: list[int], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per case: hit@k and NDCG@k of one target."""
    hit, ndcg = np.zeros(len(truth)), np.zeros(len(truth))
    for i, (r, t) in enumerate(zip(ranked, truth)):
        pos = np.flatnonzero(np.asarray(r[:k]) == t)
        if len(pos):
            hit[i], ndcg[i] = 1.0, 1.0 / np.log2(pos[0] + 2)
    return hit, ndcg


class Baselines:
    """Popularity, item-kNN and ALS from ``implicit`` on the training engagements."""

    def __init__(self, users, rows, gains, n: int, factors: int, seed: int = 0):
        import scipy.sparse as sp
        from implicit.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import CosineRecommender
        from threadpoolctl import threadpool_limits

        self.uids = {u: i for i, u in enumerate(sorted(set(users)))}
        ui = np.array([self.uids[u] for u in users])
        self.M = sp.csr_matrix((gains, (ui, rows)), shape=(len(self.uids), n)).astype(np.float32)
        self.pop = np.asarray(self.M.sum(axis=0)).ravel()
        self.pop_order = np.argsort(-self.pop, kind="stable")
        with threadpool_limits(1, "blas"):
            self.knn = CosineRecommender(K=50)
            self.knn.fit(self.M, show_progress=False)
            self.als = AlternatingLeastSquares(factors=factors, iterations=15, regularization=0.05, random_state=seed)
            self.als.fit(self.M, show_progress=False)

    def popularity(self, k: int, exclude: int | None = None) -> np.ndarray:
        top = self.pop_order[: k + 1]
        return top[top != exclude][:k]

    def for_user(self, model, user: str, k: int) -> np.ndarray:
        i = self.uids[user]
        ids, _ = model.recommend(i, self.M[i], N=k, filter_already_liked_items=False)
        return np.asarray(ids)

    def similar(self, model, row: int, k: int) -> np.ndarray:
        ids, _ = model.similar_items(row, N=k + 1)
        ids = np.asarray(ids)
        return ids[ids != row][:k]


def evaluate(
    cfg, test_days: float = 10.0, progress: bool = True, limit: int | None = None, valid: bool = False
) -> dict:
    from tqdm import tqdm

    from core.formats.clicklog import read_clicklog
    from engine.search import SearchEngine

    engine = SearchEngine.from_config(cfg)
    products = engine.products
    row_of = products.row_map()
    train, test, cut = split_events(read_clicklog(cfg.finetune.train), row_of, test_days, valid)
    eng = [e for e in train if e.event in GAINS]
    users, rows = [e.user_id for e in eng], [row_of[e.product_id] for e in eng]
    rec, card, build_s = trained_recommender(engine, train, row_of, cut, cfg)
    t0 = time.perf_counter()
    base = Baselines(users, rows, np.array([GAINS[e.event] for e in eng]), len(products), cfg.recs.factors)
    base_s = time.perf_counter() - t0
    titles = [products.titles[i] for i in range(len(products))]
    cases = targets(test, row_of, set(users), cfg.recs.visit_minutes * 60.0, cfg.recs.basket_days * 86400.0, titles)
    history: dict[str, list] = {}
    for e in train:
        history.setdefault(e.user_id, []).append(e)
    mask = engine.version.with_live(np.ones(len(products), dtype=bool))
    k = 10
    out: dict = {
        "split": "validation (the window before the test window)" if valid else "test",
        "products": len(products),
        "cut": cut,
        "test_days": test_days,
        "train_events": len(train),
        "test_events": len(test),
        "build_seconds": round(build_s, 2),
        "baseline_seconds": round(base_s, 2),
        "card": card,
        "tasks": {},
    }
    for task in TASKS:
        todo = cases[task][:limit] if limit else cases[task]
        ranked: dict[str, list] = {s: [] for s in SYSTEMS}
        ms = []
        for seed, target, t in tqdm(todo, desc=f"eval {task}", disable=not progress):
            t1 = time.perf_counter()
            if task == "for_you":
                hist = history_before(history[seed], t, row_of, cfg)
                scores, _, _ = rec.for_history(hist, None, mask, None, now=cut)
                ranked["ours"].append(rec.top(scores, mask, k))
            elif task == "similar":
                scores, _, _ = rec.similar(seed, mask)
                ranked["ours"].append(rec.top(scores, mask, k, exclude=seed))
            else:
                scores, _, _ = rec.bought_together(seed, mask)
                ranked["ours"].append(rec.top(scores, mask, k, exclude=seed))
            ms.append((time.perf_counter() - t1) * 1000)
            if task == "for_you":
                ranked["popularity"].append(base.popularity(k))
                ranked["item_knn"].append(base.for_user(base.knn, seed, k))
                ranked["als"].append(base.for_user(base.als, seed, k))
            else:
                ranked["popularity"].append(base.popularity(k, exclude=seed))
                ranked["item_knn"].append(base.similar(base.knn, seed, k))
                ranked["als"].append(base.similar(base.als, seed, k))
        truth = [c[1] for c in todo]
        out["tasks"][task] = _block(ranked, truth, ms, len(products), k)
        if task == "bought_together" and len(products.categories):  # the complements: another category
            cats = products.category_codes
            other = [i for i, c in enumerate(todo) if cats[c[0]] != cats[c[1]]]
            sub = {s: [ranked[s][i] for i in other] for s in SYSTEMS}
            out["tasks"]["bought_together, other category"] = _block(
                sub, [truth[i] for i in other], [], len(products), k
            )
    return out


def _block(ranked: dict, truth: list, ms: list, n_products: int, k: int) -> dict:
    """One task's HR@10 [CI], NDCG@10 and coverage per system, ours against the best implicit baseline and
    popularity (paired bootstrap), our latency."""
    block: dict = {
        "cases": len(truth),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if ms else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if ms else None,
        "systems": {},
    }
    hits = {}
    for s in SYSTEMS:
        hit, ndcg = rank_metrics(ranked[s], truth, k)
        hits[s] = hit
        _, lo, hi = bootstrap_ci(hit)
        shown = np.unique(np.concatenate(ranked[s])) if ranked[s] else np.zeros(0)
        block["systems"][s] = {
            "hr@10": round(float(hit.mean()), 4) if len(hit) else float("nan"),
            "hr_ci": [round(lo, 4), round(hi, 4)],
            "ndcg@10": round(float(ndcg.mean()), 4) if len(ndcg) else float("nan"),
            "coverage": round(len(shown) / n_products, 4),
        }
    block["hits"] = {s: h.astype(int).tolist() for s, h in hits.items()}  # per case (eval.recs_worlds pools them)
    best = max(("item_knn", "als"), key=lambda s: hits[s].mean() if len(truth) else 0.0)
    block["vs_best_implicit"] = {"baseline": best, **paired_bootstrap(hits[best], hits["ours"])}
    block["vs_popularity"] = paired_bootstrap(hits["popularity"], hits["ours"])
    return block


def write_report(out_dir: Path, res: dict, context: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = {t: {k: v for k, v in b.items() if k != "hits"} for t, b in res["tasks"].items()}
    (out_dir / "recs.json").write_text(
        json.dumps({**context, **res, "tasks": tasks}, indent=1, ensure_ascii=False) + "\n"
    )
    lines = [
        f"# Recommendations: {context['config']}",
        "",
        "A time split of the click log: everything before the cut builds every system, the engagements after "
        f"it (the last {res['test_days']:g} days) are the targets, each ranked against the whole catalog of "
        f"{context['products']} products. " + (context.get("simulated") or ""),
        "",
        f"- training events: {res['train_events']}, test events: {res['test_events']}",
        f"- our models built in {res['build_seconds']} s; implicit's baselines in {res['baseline_seconds']} s",
        f"- baskets with two or more products in training: {res['card']['baskets']}; repeat categories: "
        f"{', '.join(res['card']['repeat_categories']) or 'none'}",
        "",
        "| task | cases | system | HR@10 [95% CI] | NDCG@10 | coverage | × popularity |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for task, b in res["tasks"].items():
        pop = b["systems"]["popularity"]["hr@10"]
        for s, m in b["systems"].items():
            ratio = f"{m['hr@10'] / pop:.1f}×" if pop > 0 else "–"
            name = f"**{s}**" if s == "ours" else s
            lines.append(
                f"| {task} | {b['cases']} | {name} | {m['hr@10']:.4f} [{m['hr_ci'][0]:.4f}, {m['hr_ci'][1]:.4f}] | "
                f"{m['ndcg@10']:.4f} | {m['coverage']:.3f} | {ratio} |"
            )
    lines += [
        "",
        "| task | ours − best implicit baseline (HR@10) [95% CI] | ours − popularity | p50 / p99 ms per call |",
        "| --- | --- | --- | ---: |",
    ]
    for task, b in res["tasks"].items():
        v, p = b["vs_best_implicit"], b["vs_popularity"]
        lines.append(
            f"| {task} | {v['diff']:+.4f} [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}] ({v['baseline']}) | "
            f"{p['diff']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] | "
            f"{b['p50_ms'] or '–'} / {b['p99_ms'] or '–'} |"
        )
    lines += ["", "![HR@10 by task and system](recs.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
    _plot(res, out_dir / "recs.png")


def grouped_bars(path: Path, groups: list[str], series: dict, ylabel: str, title: str, zero: bool = False) -> None:
    """A bar chart with 95% intervals: per group (x), one bar per series; ``series``: name -> (values, lows,
    highs) aligned with ``groups``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(series)
    for j, (name, (vals, lo, hi)) in enumerate(series.items()):
        err = [[v - low for v, low in zip(vals, lo)], [high - v for v, high in zip(vals, hi)]]
        ax.bar(np.arange(len(groups)) + j * width, vals, width, yerr=err, capsize=3, label=name)
    if zero:
        ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot(res: dict, path: Path) -> None:
    tasks = list(res["tasks"])
    series = {}
    for s in SYSTEMS:
        m = [res["tasks"][t]["systems"][s] for t in tasks]
        series[s] = ([x["hr@10"] for x in m], [x["hr_ci"][0] for x in m], [x["hr_ci"][1] for x in m])
    grouped_bars(path, tasks, series, "HR@10 (95% CI)", "next item, ranked against the whole catalog")


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.recs", __doc__, overrides=True)
    ap.add_argument("--out", default=None, help="default reports/recs/<config name>")
    ap.add_argument("--test-days", type=float, default=10.0)
    ap.add_argument("--limit", type=int, default=None, help="at most this many cases per task")
    ap.add_argument("--valid", action="store_true", help="evaluate on the window before the test window (tuning)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    def body():
        cfg = load(args)
        if cfg.finetune.train is None or not Path(cfg.finetune.train).is_file():
            print(f"error: {cfg.source}: finetune.train ({cfg.finetune.train}) is no click log", file=sys.stderr)
            return 2
        res = evaluate(cfg, args.test_days, not args.no_progress, args.limit, args.valid)
        out = Path(args.out) if args.out else cfg.root / "reports" / "recs" / cfg.name
        simulated = (
            "**The shoppers are simulated** (eval.sim.demo_data): accessories after phones, running shoes, "
            "laptops and coffee; repeat purchases of consumables."
            if "demo" in cfg.name
            else ""
        )
        write_report(out, res, {"config": str(cfg.source), "products": res["products"], "simulated": simulated})
        for task, b in res["tasks"].items():
            hr = {s: m["hr@10"] for s, m in b["systems"].items()}
            print(f"{task} ({b['cases']} cases): " + ", ".join(f"{s} {v:.4f}" for s, v in hr.items()))
        print(f"wrote {out}/recs.json, report.md, recs.png")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
