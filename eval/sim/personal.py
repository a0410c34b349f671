"""`python -m eval.sim.personal --config C --out reports/personal/<config>`: does personalization lift, and never hurt?

**The users are simulated.**  Nothing here is real user behaviour; the
benchmark checks that the engine learns a taste when there is one, and that
it changes nothing when there is none.  The behaviour model:

- **Queries** come from the config's own training queries (the click log's
  or the judged pairs'), a seeded sample of ``--queries``.  Each query's
  candidates are the engine's (bm25 ∪ dense top ``rerank.depth``,
  cross-encoder scored).  A query is *ambiguous* when its top-30 candidates
  span at least 3 values of a taste facet (brands, k-means groups), else
  *specific*.  Each query has an *area*: the most common category (catalogs
  with categories) or group among its top 10.
- **Users** have 1–3 areas they shop in (85% of their queries; 15% anywhere)
  and a stable **taste**: a liked value of each facet the catalog has — one
  favourite brand per area (catalogs with brands; for titles-only catalogs
  20% of the k-means groups instead), and a price band (their band and,
  half the time, each neighbour).  ``taste(p)`` is the share of the
  product's facets the user likes (0..1).
- **Relevance** of a candidate is its non-personal engine score
  standardized over the query's candidates (``z``; the z-score mix of
  cross-encoder and first stages, not the learned ranker, so the benchmark
  does not grade the ranker by itself), saturating: ``3 σ(2 z)`` (the top
  candidates of a query are about equally relevant; the engine's score
  differences among near-identical products are not the user's).
- **Clicks** (before the cut): the simulated shop logs 10 of the engine's
  non-personalized top 30, best first with exploration (a Plackett-Luce
  draw on ``0.5 z``); the user examines position ``i`` (0-based) with
  probability ``1 / (1 + i)^0.6`` and clicks an examined product with
  probability ``σ(3 σ(2 z) − 2.5 + strength · 3 · (taste − 0.3))``; a click
  becomes an add-to-cart with probability ``0.25 + 0.25 taste`` (0.3
  without taste), and that a purchase half the time.  ``strength`` is 0
  (taste ``none``), 1 (``medium``) or 2 (``strong``).
- **Time**: ``--days`` simulated days, sessions spread uniformly; 25% of
  the users are *cold*: they arrive after the global time cut (the last
  ``--eval-days``) and have no history.
- **Training**: only sessions before the cut.  The ranker is trained exactly
  as `make finetune` trains it (:func:`finetune.ranker.train_ranker`, profiles
  and counts point-in-time); profiles for evaluation are those at the cut.
  When it ships a taste model, the log is then given what the service would
  have logged had that ranker served it — each impression's and click's
  relevance (:mod:`eval.sim.served`) — and the ranker is trained again on it,
  as a shop's next retrain reads its own traffic.
- **Evaluation** on sessions after the cut: the user's judgments are drawn
  from the same click model without position bias (each candidate examined
  with probability 0.5), so neither ranking is favoured by what it showed;
  sessions without a click are dropped.  NDCG@10 and MRR@10 of the
  personalized ranking (``personalize=1``) against the same ranker with
  ``personalize=0`` (the non-personal ranking), with 95% paired bootstrap
  intervals of the difference, for warm and cold users.
- **References** on the same sessions: *relevance* (the simulator's own
  relevance ``z`` alone), *Bayes* (:class:`HistoryPosterior`: the best
  ranking each user's training sessions support) and the *oracle* (true
  taste).  Bayes − relevance is the most any profile built from that much
  history can lift; ``--curve 30,60`` repeats the medium taste with more
  sessions per user, to show how the lift and that ceiling grow with history.

**Guard on real queries** (the config's judged ``eval.queries``): each
query gets a synthetic history of 5 sessions, each showing 10 products and
one of them clicked: (a) a product of the judged product's own group (the
judged product excluded), or (b) a random product; the 9 others shown are
random; MRR@10 with the medium-taste ranker (and, as ``guard_strong``, the
strong-taste one), personalized vs not, at every value of the ``personalize``
knob in ``--knobs`` (the lift's share of the room against the guard's cost);
and the same histories ranked by the simulator's own Bayes posterior against
its relevance alone (each guard session assumed to show what the simulated
shop shows at each position on average): what a perfect learner of the
simulated tastes pays on those queries.  The
same queries compare the config's own learned ranker (``rerank.ranker``,
no user) with the z-score mix on the same candidates.

Writes ``personal.json``, ``report.md`` and ``lift.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from engine.profiles import ProfileSettings
from eval.sim.personal_eval import evaluate_sessions, summarize
from eval.sim.personal_guard import guard
from eval.sim.personal_report import write_report
from core.cli import command, load
from eval.sim.served import served_relevance, share_logged
from eval.sim.shoppers import TASTES, World, build_world, make_users, simulate, HistoryPosterior


def run_taste(engine, world: World, taste: str, args, rng_seed: int, out_dir: Path, progress: bool):
    from engine.ranker import Ranker
    from finetune.ranker import train_ranker
    from finetune.ranker_sessions import EventArrays, PointInTime

    rng = np.random.default_rng(rng_seed)
    users = make_users(world, args.users, rng)
    row_ids = engine.products.ids
    log, cut = simulate(world, users, TASTES[taste], args.days, args.eval_days, args.sessions, rng, row_ids)
    row_of = engine.products.row_map()
    assert all(e.timestamp < cut for e in log.events) and all(s.t < cut for s in log.sessions)
    settings = ProfileSettings.from_config(engine.cfg.personal)
    exposure = args.exposure or settings.exposure
    pit = PointInTime(EventArrays.from_events(log.events, row_of, exposure), engine.facets(), settings)
    tcfg = engine.cfg.finetune.ranker

    def train(pit, logged: str = ""):
        card = train_ranker(
            engine,
            log.sessions,
            pit,
            tcfg,
            out_dir / f"ranker-{taste}",
            cands=world.cands,
            progress=progress,
            description=f"simulated sessions before the cut, taste {taste}{logged}",
        )
        return card, Ranker.load(out_dir / f"ranker-{taste}")

    card, ranker = train(pit)
    logged = 0.0
    if ranker.taste is not None:  # the engine serves the log with it (and logs relevance), then learns again
        log.events = served_relevance(engine, ranker, world, log, pit)
        logged = share_logged(log.events)
        pit = PointInTime(EventArrays.from_events(log.events, row_of, exposure), engine.facets(), settings)
        card, ranker = train(pit, ", relevance logged")
    profiles = pit.profiles_at(cut)
    profile_of = lambda uid: p if (p := profiles.get(uid)) is not None and p.weight > 0 else None  # noqa: E731
    by_uid = {u.uid: u for u in users}
    bayes = {
        "bayes": HistoryPosterior(world, by_uid, log.sessions, TASTES[taste]),
        "bayes_upper": HistoryPosterior(world, by_uid, log.sessions, TASTES[taste], given_others=True),
    }
    knobs = extra_knobs(args.knobs)
    res = evaluate_sessions(
        engine, ranker, world, log.eval_sessions, pit, profile_of, by_uid, TASTES[taste], bayes, knobs
    )
    summary = summarize(res, log.eval_sessions, args.seed)
    per_user = np.unique([s.user for s in log.sessions], return_counts=True)[1]
    summary["train"] = {
        "events": len(log.events),
        "sessions": len(log.sessions),
        "relevance_logged": round(logged, 3),
        "ranker_sessions": card["sessions"],
        "history_sessions_per_warm_user": round(float(per_user.mean()), 1) if len(per_user) else 0.0,
        "cut": cut,
        "importance_gain": card["importance_gain"],
        "ambiguous_queries": int(world.ambiguous.sum()),
        "queries": len(world.queries),
    }
    return summary, (ranker, by_uid)


def extra_knobs(text: str) -> tuple[float, ...]:
    """The ``--knobs`` values besides 1 (which every run reports)."""
    return tuple(float(k) for k in text.split(",") if k.strip() and float(k) != 1.0)


def query_pool(cfg, n: int, seed: int) -> list[str]:
    """A seeded sample of the config's training queries (click log before the cut, or judged pairs)."""
    from finetune.inputs import is_clicklog

    ft = cfg.finetune
    if ft.train is None or not Path(ft.train).is_file():
        raise FileNotFoundError(f"{cfg.source}: finetune.train ({ft.train}) is needed for the query pool")
    if is_clicklog(Path(ft.train), ft.format):
        from core.formats.clicklog import read_clicklog
        from finetune.inputs import clicklog_cut

        events = read_clicklog(ft.train)
        cut, _ = clicklog_cut(cfg, events)
        texts = sorted({e.query.strip() for e in events if e.timestamp < cut})
    else:
        from core.formats.judged import read_queries

        texts = sorted(set(read_queries(ft.train).texts.values()))
    rng = np.random.default_rng(seed)
    return [texts[i] for i in sorted(rng.choice(len(texts), size=min(n, len(texts)), replace=False))]


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.sim.personal", __doc__, None, overrides=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tastes", default="none,medium,strong")
    ap.add_argument("--queries", type=int, default=600, help="size of the query pool (training queries)")
    ap.add_argument("--users", type=int, default=1200)
    ap.add_argument("--sessions", type=float, default=15.0, help="mean sessions per user")
    ap.add_argument(
        "--curve",
        default="",
        help="comma-separated sessions per user: the medium-taste lift at each (a learning curve; empty: none)",
    )
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--eval-days", type=float, default=15.0)
    ap.add_argument(
        "--guard",
        default=None,
        help="judged queries for the guard and the ranker-vs-mix comparison "
        "(default: the config's eval.queries; 'none' skips them)",
    )
    ap.add_argument("--guard-limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--exposure",
        choices=("shown", "examined"),
        default=None,
        help="what profiles count as seen: every logged impression, or those at and above a search's deepest "
        "engagement (default: the config's personal.exposure)",
    )
    ap.add_argument(
        "--knobs",
        default="0.25,0.5,0.75,1",
        help="values of the personalize knob at which the warm users' lift and the guard are also reported",
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from engine.search import SearchEngine
    from indexer.build import ensure_indexes

    t0 = time.perf_counter()
    progress = not args.no_progress
    knobs = extra_knobs(args.knobs)
    cfg = load(args)
    # the simulation needs the cross-encoder's candidates; the learned ranker is what it trains
    shipped_ranker = cfg.rerank.ranker
    cfg = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, ranker=None))
    ensure_indexes(cfg, ["dense"], progress=progress)
    engine = SearchEngine.from_config(cfg)
    out = Path(args.out)
    cache = (cfg.finetune.out_dir or cfg.root / "models" / cfg.name) / "cache"
    world = build_world(engine, query_pool(cfg, args.queries, args.seed), progress, cache_dir=cache)
    payload: dict = {}
    rankers, sim_users = {}, {}
    for i, taste in enumerate(t for t in args.tastes.split(",") if t):
        if taste not in TASTES:
            print(f"error: unknown taste {taste!r}; use {', '.join(TASTES)}", file=sys.stderr)
            return 2
        payload[taste], (rankers[taste], sim_users[taste]) = run_taste(
            engine, world, taste, args, args.seed + 1, out, progress
        )
        w = payload[taste]["warm"]["ndcg@10"]
        print(
            f"{taste}: warm NDCG@10 {w['base']:.4f} -> {w['personal']:.4f} ({w['diff']:+.4f} "
            f"[{w['ci_low']:+.4f}, {w['ci_high']:+.4f}]); cold diff {payload[taste]['cold']['ndcg@10']['diff']:+.4f}"
        )
    curve = []
    for n_sessions in (float(x) for x in args.curve.split(",") if x.strip()):
        run_args = argparse.Namespace(**{**vars(args), "sessions": n_sessions})
        res, _ = run_taste(engine, world, "medium", run_args, args.seed + 1, out / f"curve-{n_sessions:g}", progress)
        curve.append(
            {
                "sessions": n_sessions,
                "warm": res["warm"],
                "history_sessions_per_warm_user": res["train"]["history_sessions_per_warm_user"],
            }
        )
        w = res["warm"]["ndcg@10"]
        print(
            f"medium, {n_sessions:g} sessions per user: warm NDCG@10 {w['diff']:+.4f} "
            f"[{w['ci_low']:+.4f}, {w['ci_high']:+.4f}], Bayes − relevance {w['bayes'] - w['relevance']:+.4f}"
        )
    if curve:
        payload["curve"] = curve
    guard_path = args.guard
    if guard_path is None:
        guard_path = cfg.eval.queries
    if guard_path and guard_path != "none" and "medium" in rankers:
        from engine.ranker import Ranker

        shipped = None
        if shipped_ranker:
            p = Path(shipped_ranker)
            p = p if p.is_absolute() else cfg.root / p
            shipped = Ranker.load(p) if (p / "model.txt").is_file() else None
        g = guard(
            engine,
            rankers["medium"],
            Path(guard_path),
            5,
            args.seed,
            progress,
            args.guard_limit,
            cache_dir=cache,
            shipped=shipped,
            knobs=knobs,
            bayes=(world, sim_users["medium"], TASTES["medium"]),
        )
        if "ranker_vs_mix" in g:
            payload["ranker_vs_mix"] = g.pop("ranker_vs_mix")
            m = payload["ranker_vs_mix"]["mrr@10"]
            print(f"{shipped_ranker} vs z-score mix on {guard_path}: MRR@10 {m['zscore_mix']:.4f} -> {m['ranker']:.4f}")
        payload["guard_bayes"] = g.pop("bayes")
        payload["guard"] = g
        if "strong" in rankers and rankers["strong"].uses_personal:  # the same histories, the strong-taste ranker
            g = guard(
                engine,
                rankers["strong"],
                Path(guard_path),
                5,
                args.seed,
                progress,
                args.guard_limit,
                cache_dir=cache,
                bayes=(world, sim_users["strong"], TASTES["strong"]),
            )
            payload["guard_strong_bayes"] = g.pop("bayes")
            payload["guard_strong"] = g
        for key in ("guard", "guard_bayes", "guard_strong", "guard_strong_bayes"):
            for name, g in payload.get(key, {}).items():
                print(
                    f"{key} {name}: MRR@10 {g['mrr@10']['base']:.4f} -> {g['mrr@10']['personal']:.4f} "
                    f"({g['mrr@10']['diff']:+.4f})"
                )
    context = {
        "config": str(args.config),
        "facets": list(world.facets),
        "query pool": f"{len(world.queries)} training queries ({int(world.ambiguous.sum())} ambiguous)",
        "users": args.users,
        "mean sessions per user": args.sessions,
        "days": f"{args.days:g} (last {args.eval_days:g} evaluate)",
        "cross-encoder": cfg.rerank.model,
        "seed": args.seed,
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }
    payload["context"] = context
    write_report(out, payload, context)
    print(f"wrote {out}/personal.json, report.md, lift.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
