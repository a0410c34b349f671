"""The final ranker's stage of `make finetune`: learn it from the click log's training-period sessions (point-in-time
profiles and counts) or from the judged training queries, and measure it on the held-out sessions after the time
cut (:func:`holdout_sessions_report`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from finetune.inputs import TrainingData, clicklog_cut, is_clicklog, ranker_held_out, ranker_queries
from core.config import Config


def train_ranker_stage(cfg: Config, data: TrainingData, out: Path, progress: bool) -> dict:
    """The final ranker: from the click log's training-period sessions (point-in-time profiles and counts),
    or from the judged training queries (non-personal features only)."""
    from engine import SearchEngine
    from engine.features import NON_PERSONAL
    from engine.profiles import ProfileSettings
    from finetune.ranker import train_ranker
    from finetune.ranker_sessions import EventArrays, PointInTime, Session, sessions_from_events
    from indexer.build import ensure_indexes

    t = cfg.finetune.ranker
    if not cfg.rerank.model:
        raise ValueError(f"{cfg.source}: the ranker reranks the cross-encoder's candidates: set rerank.model")
    base = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, ranker=None))
    ensure_indexes(base, ["dense"], progress=progress)
    engine = SearchEngine.from_config(base)
    row_of = engine.products.row_map()
    ft = cfg.finetune
    if is_clicklog(Path(ft.train), ft.format):
        from core.formats.clicklog import read_clicklog

        events = read_clicklog(ft.train)
        cut, how = clicklog_cut(cfg, events)
        before = [e for e in events if e.timestamp < cut]
        sessions = sessions_from_events(before, row_of, ft.gains)
        pc = cfg.personal
        settings = ProfileSettings.from_config(pc)
        pit = PointInTime(EventArrays.from_events(before, row_of, settings.exposure), engine.facets(), settings)
        desc = (
            f"click log {ft.train}: {len(sessions)} sessions (user, query; 30-minute gaps) before the time cut "
            f"{cut:.0f} ({how} held out), labels = best gain per product"
        )
        card = train_ranker(
            engine, sessions, pit, t, out, progress=progress, description=desc, cache_dir=out.parent / "cache"
        )
        after = [e for e in events if e.timestamp >= cut]
        card["holdout"] = holdout_sessions_report(
            engine, out, sessions_from_events(after, row_of, ft.gains), pit, cut, progress
        )
        return card
    sessions = []
    for qid in ranker_queries(data, t):
        gains = {row_of[p]: g for p, g in data.train.positives[qid].items() if p in row_of}
        if gains:
            sessions.append(Session(None, data.train.texts[qid], 0.0, gains))
    desc = (
        f"judged pairs {ft.train}: {len(sessions)} training queries (seeded sample of {len(data.train)}"
        f"{', left out of the cross-encoder' if ranker_held_out(cfg, data) else ''}), "
        "the judged product as positive; no users, so non-personal features only"
    )
    return train_ranker(
        engine,
        sessions,
        None,
        t,
        out,
        features=NON_PERSONAL,
        progress=progress,
        description=desc,
        cache_dir=out.parent / "cache",
    )


def holdout_sessions_report(engine, ranker_dir: Path, sessions, pit, cut: float, progress: bool) -> dict:
    """The held-out sessions after the time cut, each ranked for its own user (profiles and counts as of the
    cut) and without a user: NDCG@10 / MRR@10 of the engaged products over the whole candidate list, with the
    z-score mix as the reference."""

    from engine.features import FEATURES
    from engine.ranker import Ranker
    from engine.rerank import combine
    from core import metrics
    from core.bootstrap import paired_bootstrap
    from finetune.ranker_sessions import candidate_cache, session_features

    ranker = Ranker.load(ranker_dir)
    cands = candidate_cache(
        engine, [s.query for s in sessions], progress=progress, cache_dir=ranker_dir.parent / "cache"
    )
    row_of = engine.products.row_map()
    pc = engine.cfg.personal
    runs: dict[str, dict] = {"zscore_mix": {}, "ranker": {}, "personal": {}}
    qrels = {}
    for i, s in enumerate(sessions):
        c = cands[s.query]
        if not s.gains or not len(c.rows):
            continue
        sid = f"s{i}"
        qrels[sid] = {str(r): g for r, g in s.gains.items()}
        at_cut = dataclasses.replace(s, t=cut)  # profiles and counts frozen at the cut
        X = session_features(engine, c, at_cut, pit, pc.ctr_prior, row_of, pc.half_life_days * 86400.0)
        full, base = ranker.score(X, 1.0, warm=bool(X[:, FEATURES.index("history")].any()))
        mix = combine(c.ce, c.first, engine.cfg.rerank.weight)
        for name, sc in (("zscore_mix", mix), ("ranker", base), ("personal", full)):
            runs[name][sid] = metrics.top_ids(c.rows, sc)
    out: dict = {"sessions": len(qrels)}
    for m, fn in (("ndcg@10", metrics.ndcg), ("mrr@10", metrics.mrr)):
        per = {k: fn(qrels, v, 10, per_query=True) for k, v in runs.items()}
        out[m] = {k: round(float(v.mean()), 4) for k, v in per.items()}
        d = paired_bootstrap(per["ranker"], per["personal"])
        out[m]["personal_minus_ranker"] = {k: round(d[k], 4) for k in ("diff", "ci_low", "ci_high", "p_value")}
    return out
