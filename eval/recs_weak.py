"""`python -m eval.recs_weak --config configs/demo.yaml`: what the block of recommendations under a weak search
is worth (`make eval-recs` runs it after the main evaluation).

The click log's searches after the cut (the last ``--test-days``): each shopper's first search of a query and
the first product they engaged with in it (the target).  The engine answers the query (its first page, k=10);
where the target is **not** on it — the page failed this shopper — the block the service would add
(:func:`engine.service.recommend_route.weak_block`'s recommendations: for-you from the shopper's history as of
that moment and the query relaxed, the page's products left out) is compared, HR@10 of the target, with what the
shopper would see by paging on (the search's ranks 11–20) and with trending.  Also reported: how often the page
missed.

The signal the service uses to add the block (fewer than ``recs.weak_min_hits`` hits, or a best score under
``recs.weak_score``) is measured too: the share of missed pages it flags.

**Where the block is shown** (``narrowed``): unfiltered, the engine always fills a page, so the block appears
when filters leave fewer than ``recs.weak_min_hits`` products.  Each search is narrowed the way a shopper does
on the page — the category of its top hit, a brand of that category, a ±10% price band around one of that
category's prices (drawn at random, seeded, up to ``--draws`` times until the service's signal fires; nothing
of the target is used) — and on the flagged searches the target's HR@10 is compared between the few filtered
hits, the block (which ignores the filters), trending, and the same search without its filters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from core.bootstrap import bootstrap_ci, paired_bootstrap
from core.cli import command, load, run

from engine.recs import GAINS


def searches(test, row_of: dict) -> list[tuple[str, str, int, float]]:
    """(user, query, target row, time of the search): each shopper's first search of a query after the cut and
    the first product they engaged with in it."""
    first: dict[tuple[str, str], float] = {}
    done: set = set()
    out = []
    for e in sorted(test, key=lambda e: e.timestamp):
        if not e.query:
            continue
        key = (e.user_id, e.query)
        first.setdefault(key, e.timestamp)
        if e.event in GAINS and key not in done:
            done.add(key)
            out.append((e.user_id, e.query, row_of[e.product_id], first[key]))
    return out


def evaluate(
    cfg, test_days: float = 10.0, limit: int | None = None, progress: bool = True, draws: int = 3, seed: int = 0
) -> dict:
    from tqdm import tqdm

    from core.formats.clicklog import read_clicklog
    from engine.search import SearchEngine
    from engine.service.recommend_route import weak_reason
    from eval.recs import history_before, split_events, trained_recommender

    engine = SearchEngine.from_config(cfg)
    p = engine.products
    row_of = p.row_map()
    train, test, cut = split_events(read_clicklog(cfg.finetune.train), row_of, test_days)
    rec, _, _ = trained_recommender(engine, train, row_of, cut, cfg)
    history: dict[str, list] = {}
    for e in sorted(train + test, key=lambda e: e.timestamp):
        history.setdefault(e.user_id, []).append(e)
    mask = engine.version.with_live(np.ones(len(p), dtype=bool))
    cases = searches(test, row_of)[: limit or None]
    trend_scores, _, _ = rec.trending(mask)
    trend_top = rec.top(trend_scores, mask, 20)  # the same for every search: computed once
    rows: dict[str, list] = {"missed": [], "block": [], "page2": [], "trending": [], "flagged": []}
    narrow: dict[str, list] = {"hits": [], "page": [], "block": [], "trending": [], "unfiltered": []}
    rng = np.random.default_rng(seed)
    for user, q, target, t in tqdm(cases, desc="weak searches", disable=not progress):
        res = engine.query(q, k=20)
        ids = [row_of[h.product_id] for h in res.hits]
        page1, page2 = ids[:10], ids[10:20]
        hist = history_before(history.get(user, []), t, row_of, cfg)
        scores, _, _ = rec.for_history(hist, q, mask, None, now=t)
        block = [r for r in rec.top(scores, mask, 10 + len(page1)) if r not in page1][:10]
        trend = [r for r in trend_top if r not in page1][:10]
        rows["missed"].append(target not in page1)
        rows["block"].append(target in block)
        rows["page2"].append(target in page2)
        rows["trending"].append(target in trend)
        page = engine.query(q, k=10)
        rows["flagged"].append(weak_reason(page, cfg.recs) is not None)
        few = narrowed(engine, q, page1, rng, draws, cfg.recs) if page1 else None
        if few is not None:
            shown = [row_of[h.product_id] for h in few.hits]
            block = [r for r in rec.top(scores, mask, 10 + len(shown)) if r not in shown][:10]
            narrow["hits"].append(len(shown))
            narrow["page"].append(target in shown)
            narrow["block"].append(target in block)
            narrow["trending"].append(target in [r for r in trend_top if r not in shown][:10])
            narrow["unfiltered"].append(target in page1)
    arr = {k: np.array(v, dtype=float) for k, v in rows.items()}
    missed = arr["missed"] > 0
    out: dict = {"searches": len(cases), "missed_first_page": int(missed.sum()), "products": len(p)}
    for name, sel in (("missed", missed),):
        block: dict = {"cases": int(sel.sum())}
        for s in ("block", "page2", "trending"):
            v = arr[s][sel]
            _, lo, hi = bootstrap_ci(v) if len(v) else (0.0, float("nan"), float("nan"))
            block[s] = {"hr@10": round(float(v.mean()), 4) if len(v) else None, "ci": [round(lo, 4), round(hi, 4)]}
        if sel.sum():
            block["block_minus_page2"] = paired_bootstrap(arr["page2"][sel], arr["block"][sel])
        out[name] = block
    flagged = arr["flagged"] > 0
    out["signal"] = {
        "flagged": int(flagged.sum()),
        "share_of_missed_flagged": round(float(flagged[missed].mean()), 4) if missed.any() else None,
        "share_of_fine_flagged": round(float(flagged[~missed].mean()), 4) if (~missed).any() else None,
    }
    out["narrowed"] = narrowed_summary(narrow, len(cases), draws)
    return out


def narrowed(engine, q: str, page1: list[int], rng, draws: int, recs_cfg):
    """The search narrowed by a shopper's filters (the category of its top hit, a brand of that category, a
    ±10% price band around one of its prices), drawn up to ``draws`` times until the service flags the page
    (fewer than ``recs.weak_min_hits`` hits); the flagged page, or None."""
    from engine.service.recommend_route import weak_reason

    p = engine.products
    cat = p.category_codes[page1[0]]
    rows = np.flatnonzero(p.category_codes == cat)
    for _ in range(draws):
        price = float(p.prices[rng.choice(rows)])
        filters = {
            "category": [p.categories[cat]],
            "brand": [p.brands[p.brand_codes[rng.choice(rows)]]],
            "price_min": 0.9 * price,
            "price_max": 1.1 * price,
        }
        page = engine.query(q, k=10, filters=filters)
        if weak_reason(page, recs_cfg) is not None:
            return page
    return None


def narrowed_summary(narrow: dict, searches: int, draws: int) -> dict:
    """HR@10 of the target on the flagged narrowed searches: the few hits, the block, trending, unfiltered."""
    arr = {k: np.array(v, dtype=float) for k, v in narrow.items()}
    out: dict = {"searches": searches, "draws": draws, "flagged": len(arr["hits"])}
    if not len(arr["hits"]):
        return out
    out["mean_hits"] = round(float(arr["hits"].mean()), 3)
    for s in ("page", "block", "trending", "unfiltered"):
        _, lo, hi = bootstrap_ci(arr[s])
        out[s] = {"hr@10": round(float(arr[s].mean()), 4), "ci": [round(lo, 4), round(hi, 4)]}
    out["block_minus_trending"] = paired_bootstrap(arr["trending"], arr["block"])
    out["page_or_block_minus_page"] = paired_bootstrap(arr["page"], np.maximum(arr["page"], arr["block"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.recs_weak", __doc__, overrides=True)
    ap.add_argument("--out", default=None, help="default reports/recs/<config name>/weak.json")
    ap.add_argument("--test-days", type=float, default=10.0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--draws", type=int, default=3, help="filter draws per search until the page is flagged")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    def body():
        cfg = load(args)
        res = evaluate(cfg, args.test_days, args.limit, not args.no_progress, args.draws)
        out = Path(args.out) if args.out else cfg.root / "reports" / "recs" / cfg.name / "weak.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        m = res["missed"]
        print(
            f"{res['searches']} searches, first page missed the target in {res['missed_first_page']}: "
            f"block HR@10 {m['block']['hr@10']}, page two {m['page2']['hr@10']}, trending {m['trending']['hr@10']}"
        )
        nw = res["narrowed"]
        if nw["flagged"]:
            print(
                f"narrowed by filters to < {cfg.recs.weak_min_hits} hits: {nw['flagged']} searches; the few hits "
                f"{nw['page']['hr@10']}, the block {nw['block']['hr@10']}, trending {nw['trending']['hr@10']}, "
                f"unfiltered {nw['unfiltered']['hr@10']}"
            )
        print(f"wrote {out}")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
