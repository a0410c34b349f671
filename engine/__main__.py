"""`python -m engine --config configs/demo.yaml QUERY...`: answer queries and print the hits."""

from __future__ import annotations

import argparse
import sys
import time

from engine.search import SearchEngine
from indexer.config import ConfigError
from indexer.encoder import ModelMissingError
from indexer.store import IndexLoadError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--category", help="only products of this category")
    ap.add_argument("--brand", help="only products of this brand")
    ap.add_argument("--price-max", type=float)
    ap.add_argument("queries", nargs="+")
    args = ap.parse_args(argv)
    try:
        engine = SearchEngine.from_config(args.config)
    except (ConfigError, IndexLoadError, ModelMissingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    filters = {k: v for k, v in {"category": args.category, "brand": args.brand, "price_max": args.price_max}.items()
               if v is not None}
    for q in args.queries:
        t0 = time.perf_counter()
        hits = engine.query(q, k=args.k, filters=filters or None)
        ms = (time.perf_counter() - t0) * 1000
        print(f"\n{q}  ({len(hits)} hits, {ms:.1f} ms)")
        for h in hits:
            print(f"  {h.rank:>2}. [{h.product_id}] {h.title}  ({h.score:.4g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
