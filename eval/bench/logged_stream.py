"""`python -m eval.bench.logged_stream --impressions 1000000`: logged searches through the event store in bounded
memory (writes ``reports/bench/logged_stream.json``).

Generated impressions (6 products each, 5,000 distinct queries) are logged into a fresh SQLite event store in
batches, then read back a page at a time into training rows (:func:`finetune.logged.click_rows`): how fast each
way, how much memory the read adds, how large the file is.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core.cli import command


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.logged_stream", __doc__, False)
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--page", type=int, default=10_000)
    ap.add_argument("--out", default="reports/bench/logged_stream.json")
    args = ap.parse_args(argv)

    from engine.events import Impression, SQLiteEventStore, UserEvents
    from engine.profiles import ProductFacets, ProfileSettings
    from finetune.logged import click_rows

    n, ids = args.impressions, [f"P{i}" for i in range(6)]
    facets = ProductFacets(
        np.eye(6, 4, dtype=np.float32), *(np.zeros(6, dtype=np.int32) for _ in range(4)), "bench"
    )  # facets only shape profiles; impressions never touch them
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sqlite"
        ev = UserEvents(SQLiteEventStore(path), facets, ids, ProfileSettings(30.0), "bench-key", 3650.0)
        start = time.time() - 86400
        t0 = time.perf_counter()
        for lo in range(0, n, 20_000):
            ev.log_impressions(
                [
                    Impression(
                        f"s{i:09d}", start + i * 0.01, None, f"q{i % 5000}", None, products=list(rng.permutation(ids))
                    )
                    for i in range(lo, min(n, lo + 20_000))
                ]
            )
        t_log = time.perf_counter() - t0
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        rows = click_rows(ev, start - 1, start + 86400, {"click": 1.0}, page=args.page)
        t_read = time.perf_counter() - t0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = {
            "impressions": n,
            "rows": int(len(rows.pair)),
            "log_per_second": round(n / t_log),
            "read_seconds": round(t_read, 1),
            "read_per_second": round(n / t_read),
            "page": args.page,
            "peak_rss_mb_before_read": round(rss0 / 1024),
            "peak_rss_mb_after_read": round(rss1 / 1024),
            "file_mb": round(path.stat().st_size / 1e6),
        }
    print(json.dumps(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
