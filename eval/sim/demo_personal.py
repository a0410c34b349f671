"""`python -m eval.sim.demo_personal --config configs/demo.yaml 蓝牙耳机`: the end of `make demo`.

Loads the demo's simulated click log into the event store (once: a stamp
file beside the store records it), picks two simulated users who engaged
most with the query's category but prefer different brands, and shows the
same query for both (their top results differ), the non-personalized
ranking, and one explained hit.  The users are simulated (`eval.sim.demo_data`).
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path
from core.cli import command


def pick_users(events, brand_of: dict[str, str], category_of: dict[str, str], category: str) -> list[str]:
    """Two users with the most engagement in ``category`` whose favourite brands there differ."""
    by_user: dict[str, Counter] = defaultdict(Counter)
    for e in events:
        if e.event != "impression" and category_of.get(e.product_id) == category:
            by_user[e.user_id][brand_of[e.product_id]] += {"click": 1, "add_to_cart": 2, "purchase": 3}[e.event]
    ranked = sorted(by_user, key=lambda u: -sum(by_user[u].values()))
    first = ranked[0]
    fav = by_user[first].most_common(1)[0][0]
    second = next(u for u in ranked[1:] if by_user[u].most_common(1)[0][0] != fav)
    return [first, second]


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.sim.demo_personal", __doc__)
    ap.add_argument("--category", default="耳机", help="the category the two users are picked in")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("query", nargs="?", default="蓝牙耳机")
    args = ap.parse_args(argv)

    from engine.__main__ import format_explain
    from engine.search import SearchEngine
    from core.formats.clicklog import read_clicklog
    from core.formats.catalog import read_catalog

    engine = SearchEngine.from_config(args.config)
    cfg = engine.cfg
    ev = engine.user_events()
    stamp = Path(str(cfg.personal.path) + ".demo-ingested")
    log = cfg.finetune.train
    if not stamp.is_file() or stamp.read_text().strip() != str(engine.bm25.manifest.get("build_id")):
        rep = ev.ingest(log, skip_bad_rows=True)
        stamp.write_text(str(engine.bm25.manifest.get("build_id")))
        print(f"event store {cfg.personal.path}: {rep.summary()}")
    events = read_clicklog(log)
    catalog = read_catalog(cfg.catalog.path)
    brand_of = dict(zip(catalog.ids, catalog.brands))
    category_of = dict(zip(catalog.ids, catalog.categories))
    users = pick_users(events, brand_of, category_of, args.category)
    print(f"\n{args.query}: the same query for two simulated users (and for nobody)")
    lists = {}
    for user in [None, *users]:
        hits = engine.query(args.query, k=args.k, user_id=user, explain=True)
        lists[user] = hits
        prof = engine.profile(user) if user else None
        if prof is not None:
            brands = sorted(prof.shares("brand").items(), key=lambda kv: -kv[1])[:2]
            taste = ", ".join(f"{engine.products.brands[int(b)]} {s:.0%}" for b, s in brands)
            head = f"user {user} ({prof.n_events} events; brands: {taste})"
        else:
            head = "no user (non-personalized)"
        print(f"\n  {head}")
        for h in hits:
            row = engine.products.row_of(h.product_id)
            brand = engine.products.brands[engine.products.brand_codes[row]]
            print(f"    {h.rank}. [{h.product_id}] {h.title}  ({brand}, ¥{engine.products.prices[row]:g})")
    a, b = ([h.product_id for h in lists[u]] for u in users)
    print(f"\n  the two users share {len(set(a) & set(b))} of their top {args.k}")
    hit = lists[users[0]][0]
    print(f"\n  why [{hit.product_id}] is first for {users[0]}:\n    {format_explain(hit.explain)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
