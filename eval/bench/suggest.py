"""`python -m eval.bench.suggest --config configs/wentian.yaml`: suggestion speed and memory at 100k+ suggestions
(part of `make bench-serving`; writes ``reports/bench/suggest.json``).

The suggestions are built from the config's log **without** the hit check (``suggest.min_hits=0``: every logged
query and shared prefix is kept, 100k+ for the Taobao log) into a scratch copy of the index, so the sizes are
those of a large shop. Timed, in one run:

1. **in-process**: :meth:`engine.suggest.Suggester.suggest` on every prefix of the config's judged queries typed
   as hanzi, full pinyin and initials (each keystroke one call, k=8), against a **peer**: the same suggestions
   in a sorted Python list scanned by ``bisect`` for the typed characters, the most popular first (no pinyin);
2. **over HTTP**: ``GET /suggest`` of ``python -m engine.service`` on the scratch copy, one client, the same
   keystrokes.

Memory: the stage's files on disk and the resident memory the loaded suggester adds.  Also timed: facet counts
(category, brand, price) of the judged queries over the config's catalog.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core.cli import command


def keystrokes(texts: list[str], limit: int) -> list[str]:
    """Every prefix of each text typed as hanzi, full pinyin and initials."""
    from eval.suggest import MODES, mode_tail
    from indexer.suggest_index import syllables

    out = []
    for t in texts[:limit]:
        t = t.replace(" ", "")
        units = syllables(t)
        for mode in MODES:
            full = mode_tail(units, t, mode, 0)
            out += [full[:n] for n in range(1, len(full) + 1)]
    return out


def rss_mb() -> float:
    """This process's resident memory now (Linux), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def drive_suggest(url: str, typed: list[str]) -> dict:
    import httpx

    lat = []
    errors = 0
    async with httpx.AsyncClient(timeout=30.0) as http:
        for q in typed:
            t0 = time.perf_counter()
            r = await http.get(url + "/suggest", params={"q": q, "k": 8})
            lat.append((time.perf_counter() - t0) * 1000)
            errors += r.status_code != 200
    return {
        "requests": len(typed),
        "errors": errors,
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
    }


def facet_timing(cfg, texts: list[str]) -> dict:
    """Facet counts (category, brand, price) of each query over the config's catalog: p50/p99 ms."""
    from engine.facets import FACETS, facet_counts
    from engine.search import SearchEngine

    engine = SearchEngine.from_config(cfg, load_models=False)
    v = engine.version
    facet_counts(v, texts[0], None, list(FACETS))  # the token matrix is built once
    ms, matched = [], []
    for t in texts:
        t0 = time.perf_counter()
        out = facet_counts(v, v.understand(t).text, None, list(FACETS))
        ms.append((time.perf_counter() - t0) * 1000)
        matched.append(out["matched"])
    return {
        "products": len(engine.products),
        "queries": len(texts),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "median_matched": int(np.median(matched)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.suggest", __doc__)
    ap.add_argument("--targets", type=int, default=300, help="judged queries typed")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="config overrides for the service (key=value)")
    ap.add_argument("--out", default="reports/bench/suggest.json")
    args = ap.parse_args(argv)

    import bisect

    from core.config import load_config, parse_overrides
    from core.formats.judged import read_queries
    from engine.suggest import Suggester
    from eval.bench.load_test import Service, scratch_config
    from indexer.build import build_indexes

    base = load_config(args.config, **parse_overrides(args.set))
    typed = keystrokes(list(read_queries(base.eval.queries).texts.values()), args.targets)
    with tempfile.TemporaryDirectory() as tmp:
        path = scratch_config(args.config, Path(tmp))
        sets = args.set + ["suggest.min_hits=0"]
        cfg = load_config(path, **parse_overrides(sets))
        t0 = time.perf_counter()
        build_indexes(cfg, stages=["suggest"], progress=False)
        build_s = time.perf_counter() - t0
        from indexer.store import stage_folder
        from indexer.suggest_index import SuggestIndex

        folder = stage_folder(cfg.index_dir, "suggest")
        disk_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        import gc

        gc.collect()
        before = rss_mb()
        index = SuggestIndex.load(folder)
        sug = Suggester(index, cfg.suggest, cfg.text.traditional_to_simplified)
        for q in typed:
            sug.suggest(q, 8)  # every page of the tries touched once: their mapped files count as resident
        added_mb = rss_mb() - before
        ours = []
        for q in typed:
            t1 = time.perf_counter()
            sug.suggest(q, 8)
            ours.append((time.perf_counter() - t1) * 1000)
        texts = sorted(index.texts)
        pop = dict(zip(index.texts, index.popularity))
        peer = []
        for q in typed:
            t1 = time.perf_counter()
            lo, hi = bisect.bisect_left(texts, q), bisect.bisect_left(texts, q + "\U0010ffff")
            sorted(texts[lo:hi], key=lambda t: -pop[t])[:8]
            peer.append((time.perf_counter() - t1) * 1000)
        result = {
            "config": str(args.config),
            "suggestions": len(index),
            "keys": index.meta["n_keys"],
            "frequent_prefixes": index.meta["n_frequent"],
            "build_seconds": round(build_s, 1),
            "disk_mb": round(disk_mb, 1),
            "resident_mb_added": round(added_mb, 1),
            "keystrokes": len(typed),
            "in_process": {
                "p50_ms": round(float(np.percentile(ours, 50)), 3),
                "p99_ms": round(float(np.percentile(ours, 99)), 3),
            },
            "peer_bisect_hanzi_only": {
                "p50_ms": round(float(np.percentile(peer, 50)), 3),
                "p99_ms": round(float(np.percentile(peer, 99)), 3),
            },
        }
        result["facets"] = facet_timing(cfg, list(read_queries(base.eval.queries).texts.values())[: args.targets])
        print(json.dumps(result, ensure_ascii=False), flush=True)
        if not args.no_http:
            with Service(str(path), sets + ["serve.watch_seconds=0"]) as svc:
                svc.wait_ready()
                asyncio.run(drive_suggest(svc.url, typed[:100]))  # warm up
                result["http"] = asyncio.run(drive_suggest(svc.url, typed))
            print("http:", json.dumps(result["http"]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
