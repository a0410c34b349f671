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
    return 0


if __name__ == "__main__":
    sys.exit(main())
