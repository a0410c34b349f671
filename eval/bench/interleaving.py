"""`python -m eval.bench.interleaving --config configs/demo.yaml`: how many searches an online experiment needs to
see a known quality difference, team-draft interleaving against an A/B comparison of click rates.

The two rankings are the config's serving ranker (A) and B: by default A's page with its best judged product moved
down three places (a known, modest loss), or the z-score mix without the ranker (``--b mix``), or another ranker
folder (``--candidate``); their true difference is measured on the judged queries (NDCG@10), and a test
detects it when p < 0.05 in that direction.  Simulated shoppers search a
random judged query, see a page and click by the position-based click model (:mod:`eval.sim.traffic`: rank r
examined with ``r^−η``, a judged product clicked by its grade, others with ``p_noise``).  For each number of
searches, ``--trials`` experiments are run: interleaving (every search shows a team-draft page; the sign test on
searches won) and A/B (half the searches see A, half B; the two-proportion test on searches with a click).  An
experiment detects the difference when its test says p < 0.05 in the right direction; the power is the share of
trials that do.  Writes ``sensitivity.{json,md,png}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

from core.cli import command, load, run


def pages(engine, texts: list[str], variant: str | None = None) -> dict[str, list[str]]:
    out = {}
    for i in range(0, len(texts), 32):
        chunk = texts[i : i + 32]
        for q, res in zip(chunk, engine.query_batch(chunk, k=10, variant=variant)):
            out[q] = [h.product_id for h in res.hits]
    return out


def demote_best(page: list[str], relevance: dict[str, float], by: int = 3) -> list[str]:
    """The page with its highest-graded judged product moved ``by`` places down (unchanged without one)."""
    graded = [(relevance.get(p, 0.0), -i) for i, p in enumerate(page)]
    if not graded or max(graded)[0] <= 0:
        return list(page)
    i = -max(graded)[1]
    out = page[:i] + page[i + 1 :]
    out.insert(min(i + by, len(out)), page[i])
    return out


def z_test_p(successes: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided p of a sign test (normal approximation with continuity correction), vectorized."""
    n = np.maximum(n, 1)
    z = (np.abs(successes - n / 2.0) - 0.5).clip(min=0) / np.sqrt(n / 4.0)
    return np.array([math.erfc(x / math.sqrt(2)) for x in z])


def simulate(attr_a, attr_b, il_attr, il_team, n, trials, rng, eta, p_rel, p_noise, a_better: bool = True):
    """Power of interleaving and of A/B at ``n`` searches (``trials`` experiments each), detecting the
    difference in its true direction (``a_better``)."""
    theta = np.arange(1, 11, dtype=np.float64) ** -eta
    nq, m = il_attr.shape[:2]

    def clicks(attr):
        seen = rng.random(attr.shape) < theta
        return seen & (rng.random(attr.shape) < np.where(attr > 0, p_rel * attr, p_noise))

    il_hit = ab_hit = 0
    for _ in range(trials):
        q, j = rng.integers(0, nq, n), rng.integers(0, m, n)
        c = clicks(il_attr[q, j])
        team_b = il_team[q, j]
        b = (c & team_b).sum(1)
        a = (c & ~team_b).sum(1)
        wins, losses = int((b > a).sum()), int((a > b).sum())
        p = float(z_test_p(np.array([wins]), np.array([wins + losses]))[0])
        il_hit += int(p < 0.05 and (wins < losses) == a_better)
        half = n // 2
        qa, qb = rng.integers(0, nq, half), rng.integers(0, nq, n - half)
        ca = clicks(attr_a[qa]).any(1).sum()
        cb = clicks(attr_b[qb]).any(1).sum()
        pooled = (ca + cb) / n
        se = math.sqrt(max(pooled * (1 - pooled) * (1 / half + 1 / (n - half)), 1e-12))
        z = (ca / half - cb / (n - half)) / se
        ab_hit += int(math.erfc(abs(z) / math.sqrt(2)) < 0.05 and (z > 0) == a_better)
    return il_hit / trials, ab_hit / trials


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.interleaving", __doc__, overrides=True)
    ap.add_argument("--b", choices=("demote", "mix"), default="demote", help="B: A's best demoted, or the z-score mix")
    ap.add_argument("--candidate", help="a ranker folder for B (instead of --b)")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--out", default=None, help="default reports/experiments/<config name>")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    def body():
        from core import metrics
        from core.formats.judged import read_queries
        from engine import SearchEngine
        from engine.experiments import team_draft
        from eval.sim.traffic import ClickModel, attractiveness

        cfg = load(args)
        out = Path(args.out or f"reports/experiments/{cfg.name}")
        j = read_queries(cfg.eval.queries)
        qids = [q for q in j.texts if any(g > 0 for g in j.relevance[q].values())]
        texts = [j.texts[q] for q in qids]
        a_eng = SearchEngine.from_config(cfg)
        pa = pages(a_eng, texts)
        if args.candidate or args.b == "mix":
            b_cfg = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, ranker=args.candidate))
            pb = pages(SearchEngine.from_config(b_cfg), texts)
            b_name = args.candidate or "the z-score mix (no ranker)"
        else:
            pb = {j.texts[q]: demote_best(pa[j.texts[q]], j.relevance[q]) for q in qids}
            b_name = "A's page with its best judged product three places lower"
        qrels = {q: dict(j.relevance[q]) for q in qids}
        ndcg_a = metrics.ndcg(qrels, {q: pa[j.texts[q]] for q in qids}, 10, per_query=True)
        ndcg_b = metrics.ndcg(qrels, {q: pb[j.texts[q]] for q in qids}, 10, per_query=True)
        rng = np.random.default_rng(args.seed)
        att = {q: attractiveness(j.relevance[q]) for q in qids}

        def attr_of(q, page):
            row = [att[q].get(p, 0.0) for p in page][:10]
            return row + [0.0] * (10 - len(row))

        attr_a = np.array([attr_of(q, pa[j.texts[q]]) for q in qids])
        attr_b = np.array([attr_of(q, pb[j.texts[q]]) for q in qids])
        m = 16  # team-draft pages per query (the coin flips differ per search)
        il_attr = np.zeros((len(qids), m, 10))
        il_team = np.zeros((len(qids), m, 10), dtype=bool)
        for i, q in enumerate(qids):
            for r in range(m):
                page, teams = team_draft(pa[j.texts[q]], pb[j.texts[q]], 10, rng)
                il_attr[i, r, : len(page)] = attr_of(q, page)[: len(page)]
                il_team[i, r, : len(teams)] = [t == "B" for t in teams]
        cm = ClickModel(eta=args.eta)
        a_better = bool(ndcg_a.mean() >= ndcg_b.mean())
        grid = [25, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800]
        curve = []
        for n in grid:
            il, ab = simulate(
                attr_a, attr_b, il_attr, il_team, n, args.trials, rng, cm.eta, cm.p_relevant, cm.p_noise, a_better
            )
            curve.append({"searches": n, "interleaving_power": il, "ab_power": ab})
            print(json.dumps(curve[-1]), flush=True)

        def needed(key):
            return next((c["searches"] for c in curve if c[key] >= 0.8), None)

        result = {
            "config": str(cfg.source),
            "A": "serving ranker",
            "B": b_name,
            "judged_queries": len(qids),
            "ndcg@10": {"A": round(float(ndcg_a.mean()), 4), "B": round(float(ndcg_b.mean()), 4)},
            "click_model": dataclasses.asdict(cm),
            "trials": args.trials,
            "curve": curve,
            "searches_for_80%_power": {"interleaving": needed("interleaving_power"), "ab": needed("ab_power")},
        }
        write(result, out)
        print(json.dumps(result["searches_for_80%_power"]))
        return 0

    return run(body, errors=(ValueError, FileNotFoundError))


def write(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "sensitivity.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    need = result["searches_for_80%_power"]
    lines = [
        f"# Interleaving against A/B: {result['config']}",
        "",
        f"A = {result['A']} (NDCG@10 {result['ndcg@10']['A']}), B = {result['B']} (NDCG@10 {result['ndcg@10']['B']}) "
        f"on {result['judged_queries']} judged queries; {result['trials']} simulated experiments per size.",
        "",
        f"Searches for 80% power: interleaving **{need['interleaving']}**, A/B on click rate **{need['ab']}**.",
        "",
        "| searches | interleaving power | A/B power |",
        "|---|---|---|",
        *(f"| {c['searches']} | {c['interleaving_power']:.2f} | {c['ab_power']:.2f} |" for c in result["curve"]),
        "",
    ]
    (out / "sensitivity.md").write_text("\n".join(lines), encoding="utf-8")
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = [c["searches"] for c in result["curve"]]
    ax.plot(x, [c["interleaving_power"] for c in result["curve"]], marker="o", label="team-draft interleaving")
    ax.plot(x, [c["ab_power"] for c in result["curve"]], marker="o", label="A/B (searches with a click)")
    ax.axhline(0.8, color="k", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="searches in the experiment", ylabel="power (p < 0.05, right direction)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sensitivity.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
