"""`python -m engine --config configs/demo.yaml QUERY...`: answer queries and print the hits."""

from __future__ import annotations

import sys
import time

from engine.search import SearchEngine
from engine.types import EcomsearchError, QueryError
from core.cli import command


def format_explain(e: dict) -> str:
    """One line per hit: stage ranks and scores, cross-encoder, the non-zero personal features, scores."""
    if "note" in e:
        return e["note"]
    stages = ", ".join(f"{s} #{v['rank']} {v['score']:.3g}" for s, v in e["stages"].items())
    personal = ", ".join(f"{k} {v:.2f}" for k, v in e["personal"].items() if v) or "none (no profile)"
    return (
        f"{stages}; cross-encoder {e['cross_encoder']:.3g}; ctr {e['ctr']:.3f}; personal: {personal}; "
        f"non-personal {e['non_personal_score']:.3g} -> final {e['final_score']:.3g} ({e['ranker']})"
    )


def main(argv: list[str] | None = None) -> int:
    ap = command("engine", __doc__)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--offset", type=int, default=0, help="skip this many hits (paging)")
    ap.add_argument("--category", help="only products of this category")
    ap.add_argument("--brand", help="only products of this brand")
    ap.add_argument("--price-max", type=float)
    ap.add_argument("--user", help="personalize for this user id (their recorded events)")
    ap.add_argument("--personalize", type=float, default=1.0, help="0 (off) .. 1 (full)")
    ap.add_argument("--explain", action="store_true", help="print each hit's stage scores and features")
    ap.add_argument(
        "--recommend",
        choices=("similar", "bought_together", "for_you", "trending"),
        help="recommendations instead of search: for the top hit of each query (similar, bought_together), "
        "for --user (for_you, the query as what is being typed), or trending",
    )
    ap.add_argument("--suggest", action="store_true", help="query suggestions for each argument as typed so far")
    ap.add_argument("--facets", action="append", help="facet counts under the hits: category, brand, price (repeat)")
    ap.add_argument("queries", nargs="+")
    args = ap.parse_args(argv)
    try:
        engine = SearchEngine.from_config(args.config)
    except EcomsearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    filters = {
        k: v
        for k, v in {"category": args.category, "brand": args.brand, "price_max": args.price_max}.items()
        if v is not None
    }
    if args.recommend:
        return recommend(engine, args, filters)
    if args.suggest:
        return suggest(engine, args)
    for q in args.queries:
        t0 = time.perf_counter()
        try:
            hits = engine.query(
                q,
                k=args.k,
                offset=args.offset,
                filters=filters or None,
                user_id=args.user,
                personalize=args.personalize,
                explain=args.explain,
                facets=args.facets,
            )
        except QueryError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        ms = (time.perf_counter() - t0) * 1000
        who = f", user {args.user}" if args.user else ""
        why = f"; {hits.reason}" if hits.reason else ""
        print(f"\n{q}  ({len(hits)} hits, {ms:.1f} ms{who}{why})")
        for h in hits:
            print(f"  {h.rank:>2}. [{h.product_id}] {h.title}  ({h.score:.4g})")
            if h.explain:
                print("      " + format_explain(h.explain))
        if hits.facets:
            print(f"  facets over {hits.facets['matched']} matching products ({hits.facets['ms']:.1f} ms):")
            for name, values in hits.facets["facets"].items():
                if name == "price":
                    cells = [f"¥{b['min']:g}-{b['max']:g} ({b['count']})" for b in values["buckets"] if b["count"]]
                else:
                    cells = [f"{v['value']} ({v['count']})" + (" ✓" if v["selected"] else "") for v in values[:8]]
                print(f"    {name}: " + ", ".join(cells))
    return 0


def suggest(engine, args) -> int:
    for q in args.queries:
        t0 = time.perf_counter()
        try:
            found = engine.suggest(q, k=args.k, user_id=args.user)
        except EcomsearchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        ms = (time.perf_counter() - t0) * 1000
        shown = [s.text + (f" — {s.category}" if s.category else "") for s in found]
        print(f"\n{q!r} → " + " | ".join(shown or ["(none)"]) + f"  ({ms:.1f} ms)")
    return 0


def recommend(engine, args, filters: dict) -> int:
    """``--recommend KIND``: each query's top hit (or the shopper, or nothing) and what is recommended."""
    for q in args.queries:
        try:
            product = None
            if args.recommend in ("similar", "bought_together"):
                top = engine.query(q, k=1)
                if not top.hits:
                    print(f"\n{q}: no product to recommend for")
                    continue
                product = top.hits[0].product_id
                print(f"\n{args.recommend} for [{product}] {top.hits[0].title}  (the top hit of {q!r})")
            else:
                print(f"\n{args.recommend}" + (f" for {args.user}" if args.user else "") + f" (typed: {q!r})")
            res = engine.recommend(
                args.recommend,
                product_id=product,
                user_id=args.user,
                query=q if args.recommend == "for_you" else None,
                k=args.k,
                filters=filters or None,
            )
        except QueryError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"  ({res.source}, {res.timings_ms['total']:.1f} ms)")
        for h in res:
            print(f"  {h.rank:>2}. [{h.product_id}] {h.title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
