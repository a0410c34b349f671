"""`python -m eval.sim.personal_ce --config configs/demo.yaml`: the design's other reading of personalization.

Instead of personal features for the final ranker, give the cross-encoder the
user's context as text — the profile's two strongest brands and price band
(``query | 偏好: 品牌 A B; 价位 中高``) — and train it on the click log.  Both
cross-encoders (with and without the context) are trained the same way on the
same groups: the click log's training-period sessions before the time cut,
each a positive (best gain) against the products shown and ignored, the
context as of the session's start (point-in-time, like the ranker's
features).  Evaluated on the held-out sessions after the cut (context as of
the cut), NDCG@10 / MRR@10 of each session's engaged products over the
engine's candidates: the cross-encoder alone and in the z-score mix, against
the learned ranker with personal features.  Writes
``<out>/ce_context.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from core.cli import command

BANDS = ("低", "中低", "中", "中高", "高")


def context_text(profile, brands: list[str]) -> str:
    """The user's context as a short text segment ('' for no profile)."""
    if profile is None or profile.weight <= 0:
        return ""
    parts = []
    top = sorted(profile.shares("brand").items(), key=lambda kv: -kv[1])[:2]
    if top:
        parts.append("品牌 " + " ".join(brands[int(b)] for b, _ in top))
    band = sorted(profile.shares("price_band").items(), key=lambda kv: -kv[1])[:1]
    if band:
        parts.append("价位 " + BANDS[min(int(band[0][0]), len(BANDS) - 1)])
    return "偏好: " + "; ".join(parts) if parts else ""


def with_context(query: str, ctx: str) -> str:
    return f"{query} | {ctx}" if ctx else query


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.sim.personal_ce", __doc__)
    ap.add_argument("--out", default="reports/personal/demo")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from engine.ranker import Ranker
    from engine.rerank import CrossEncoder, combine
    from engine.search import SearchEngine
    from core import metrics
    from core.bootstrap import paired_bootstrap
    from core.formats.clicklog import read_clicklog
    from finetune.crossencoder import Group, train
    from finetune.inputs import clicklog_cut
    from finetune.ranker_sessions import (
        EventArrays,
        PointInTime,
        candidate_cache,
        session_features,
        sessions_from_events,
    )
    from core.config import load_config
    from indexer.dense import stage_model

    t0 = time.perf_counter()
    progress = not args.no_progress
    cfg = load_config(args.config)
    shipped = cfg.rerank.ranker
    cfg = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, ranker=None))
    engine = SearchEngine.from_config(cfg)
    row_of = engine.products.row_map()
    titles, brands = engine.products.titles, engine.products.brands
    pc, ft = cfg.personal, cfg.finetune
    events = read_clicklog(ft.train)
    cut, _ = clicklog_cut(cfg, events)
    before = [e for e in events if e.timestamp < cut]
    after = [e for e in events if e.timestamp >= cut]
    from engine.profiles import ProfileSettings

    settings = ProfileSettings.from_config(pc)
    pit = PointInTime(EventArrays.from_events(before, row_of, settings.exposure), engine.facets(), settings)
    groups = {"context": [], "plain": []}
    for s in sessions_from_events(before, row_of, ft.gains):
        prof = pit.profiles_at(s.t).get(s.user)
        ctx = context_text(prof, brands)
        negatives = [titles[r] for r in s.shown if r not in s.gains]
        for r, g in s.gains.items():
            groups["context"].append(Group(with_context(s.query, ctx), titles[r], negatives, g))
            groups["plain"].append(Group(s.query, titles[r], negatives, g))
    held = [s for s in sessions_from_events(after, row_of, ft.gains) if s.gains]
    cands = candidate_cache(
        engine,
        [s.query for s in held],
        progress=progress,
        cache_dir=(ft.out_dir or cfg.root / "models" / cfg.name) / "cache",
    )
    profiles = pit.profiles_at(cut)
    t = cfg.finetune.crossencoder
    out = Path(args.out)
    scores: dict[str, dict[int, np.ndarray]] = {}
    minutes = {}
    for name, exs in groups.items():
        t1 = time.perf_counter()
        model = CrossEncoder.from_base(
            stage_model(cfg, "dense-base"), t.num_layers, max_length=t.max_length, device=cfg.rerank.device, seed=t.seed
        )
        train(model, exs, dataclasses.replace(t, eval_every=10**9), out / f"ce-{name}", progress=progress)
        model = CrossEncoder.load(out / f"ce-{name}", device=cfg.rerank.device)
        minutes[name] = round((time.perf_counter() - t1) / 60, 2)
        pair_q, pair_t, bounds = [], [], [0]
        for s in held:
            c = cands[s.query]
            q = with_context(s.query, context_text(profiles.get(s.user), brands)) if name == "context" else s.query
            pair_q += [q] * len(c.rows)
            pair_t += titles.take(c.rows)
            bounds.append(len(pair_q))
        sc = model.predict(pair_q, pair_t)
        scores[name] = {i: sc[bounds[i] : bounds[i + 1]] for i in range(len(held))}
    runs: dict[str, dict] = {}
    qrels = {}
    ranker = None
    if shipped:
        p = Path(shipped)
        ranker = Ranker.load(p if p.is_absolute() else cfg.root / p)
    for i, s in enumerate(held):
        c = cands[s.query]
        sid = f"s{i}"
        qrels[sid] = {str(r): g for r, g in s.gains.items()}
        order = {
            "ce_plain": scores["plain"][i],
            "ce_context": scores["context"][i],
            "mix_plain": combine(scores["plain"][i], c.first, 0.5),
            "mix_context": combine(scores["context"][i], c.first, 0.5),
        }
        if ranker is not None:
            X = session_features(
                engine, c, dataclasses.replace(s, t=cut), pit, pc.ctr_prior, row_of, pc.half_life_days * 86400.0
            )
            order["ranker_personal"], _ = ranker.score(X, 1.0, warm=True)
        for k, v in order.items():
            runs.setdefault(k, {})[sid] = metrics.top_ids(c.rows, v)
    result = {"sessions": len(held), "train_groups": len(groups["plain"]), "minutes": minutes}
    for m, fn in (("ndcg@10", metrics.ndcg), ("mrr@10", metrics.mrr)):
        per = {k: fn(qrels, v, 10, per_query=True) for k, v in runs.items()}
        result[m] = {k: round(float(v.mean()), 4) for k, v in per.items()}
        for a, b in (("ce_plain", "ce_context"), ("mix_plain", "mix_context")):
            d = paired_bootstrap(per[a], per[b])
            result[m][f"{b}_minus_{a}"] = {k: round(d[k], 4) for k in ("diff", "ci_low", "ci_high", "p_value")}
    result["total_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ce_context.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
