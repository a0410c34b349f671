"""`make retrain CONFIG=...`: learn the final ranker again from the service's own traffic, debiased, and put it
in service only when it wins.

1. **Read** the logged searches of the window from the event store (:mod:`finetune.retrain_data`): what each
   search showed, in order, and what the shopper did with it; the most recent days held out.
2. **Estimate the position bias**: a position-based click model fitted by EM on every logged row before the
   cut (:mod:`finetune.click_model`): the examination propensity of each rank.
   Optionally (``retrain.crossencoder_minutes`` > 0) the cross-encoder trains further on the debiased click pairs
   first (:mod:`finetune.retrain_ce`); the ranker then goes over its scores and the two ship together.
3. **Train** the LightGBM LambdaRank ranker on the engaged searches (features point-in-time: profiles and
   product counts from events strictly before each search), once per debiasing method (``retrain.debias``:
   ``auto`` fits naive labels, the additive position term, LightGBM's own ``position`` debiasing and the click
   model's inverse propensities as weights) and keep the one with the best inverse-propensity-weighted DCG@10 on
   the validation sessions (the last ones before the cut).
4. **Guard** (:mod:`finetune.ship_guard`): against the serving ranker (or the z-score mix when none serves) on
   the held-out searches, clipped IPS clicks@10 with a paired bootstrap interval; on the judged dev queries
   where the config has them, NDCG@10 may lose at most ``judged_tolerance``.
5. **Promote** on a win (:mod:`finetune.promote`: an atomic swap of the ranker folder, the old one kept as
   ``<ranker>.previous``); a running service switches on ``POST /admin/reload`` (``--reload URL`` sends it).
   A refused model stays in ``<ranker>.staging`` for inspection; a crash at any step leaves the serving folder
   untouched.

Writes a model card (in the ranker folder) and a report (``reports/retrain/<config>/``: Markdown, JSON, PNG).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from core.config import DEBIAS_METHODS, Config
from core.types import EcomsearchError


class RetrainError(EcomsearchError, ValueError):
    """The retrain cannot run: no ranker configured, too little logged traffic."""


def judged_queries(cfg: Config):
    """The config's judged dev queries (``finetune.dev`` if judged, else ``eval.queries``), or None."""
    from core.formats.judged import read_queries

    for p in (cfg.finetune.dev, cfg.eval.queries):
        if p and Path(p).is_file():
            return read_queries(p), str(p)
    return None, None


def run_retrain(cfg: Config, until: float | None = None, promote: bool = True, progress: bool = True) -> dict:
    """Steps 1-5 of the module docstring; returns the report (also written to the report folder)."""
    from engine import SearchEngine
    from engine.features import FEATURES
    from engine.profiles import ProfileSettings
    from engine.ranker import Ranker
    from finetune.click_model import fit_pbm
    from finetune.logged import click_rows
    from finetune.promote import promote as swap_in, staging_folder
    from finetune.ranker import candidates_card, cross_encoder_card, fit_ranker
    from finetune.ranker_delta import fit_on_top, group_scores
    from finetune.ranker_sessions import PointInTime, build_dataset, candidate_cache
    from finetune.retrain_data import read_sessions, store_events
    from finetune.counterfactual import debiased_dcg
    from finetune.ship_guard import holdout_ranks, ips_guard, judged_check

    t0 = time.perf_counter()
    rc, ft = cfg.finetune.retrain, cfg.finetune
    if not cfg.rerank.ranker or not cfg.rerank.model:
        raise RetrainError(f"{cfg.source}: `make retrain` learns the final ranker: set rerank.model and rerank.ranker")
    serving_dir = Path(cfg.rerank.ranker)
    until = float(until if until is not None else time.time())
    base = dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, ranker=None))
    engine = SearchEngine.from_config(base)
    events = engine.user_events()
    row_of = engine.products.row_map()
    timing: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timing[name] = round(time.perf_counter() - since, 2)
        return time.perf_counter()

    t = time.perf_counter()
    logged = read_sessions(events, row_of, ft.gains, rc, until)
    if len(logged.train) < rc.min_searches:
        raise RetrainError(
            f"only {len(logged.train)} logged searches with a click, cart or purchase before the time cut "
            f"({logged.searches} logged in the {rc.window_days:g} days before {_when(until)}); "
            f"finetune.retrain.min_searches is {rc.min_searches}: serve more traffic first"
        )
    rows = click_rows(events, logged.since, logged.cut, ft.gains)
    pbm = fit_pbm(rows.pair, rows.rank, rows.clicked)
    # naive: no debiasing anywhere (clicks as labels, query clicks as raw click rates): the baseline
    propensity = np.ones_like(pbm.propensity) if rc.debias == "naive" else pbm.propensity
    t = lap("read_and_click_model_s", t)

    pit = PointInTime(
        store_events(events, row_of, until, logged.exposure),
        engine.facets(),
        ProfileSettings.from_config(cfg.personal),
        logged.query_click_timeline(propensity, rc.query_click_min_users),
    )
    ce_card, ce_staged, engine_new = None, None, engine
    if rc.crossencoder_minutes > 0:  # the cross-encoder first (finetune.retrain_ce); the ranker goes over its scores
        from finetune.retrain_ce import finetune_on_clicks

        ce_card, ce_staged = finetune_on_clicks(cfg, engine, logged, propensity, progress)
        if ce_staged is not None:
            engine_new = SearchEngine.from_config(
                dataclasses.replace(base, rerank=dataclasses.replace(base.rerank, model=str(ce_staged)))
            )
        t = lap("crossencoder_s", t)
    cache = serving_dir.parent / "cache"
    queries = [s.query for s in logged.train + logged.holdout]
    cands = candidate_cache(engine, queries, progress=progress, cache_dir=cache)
    cands_new = (
        cands if engine_new is engine else candidate_cache(engine_new, queries, progress=progress, cache_dir=cache)
    )
    data = build_dataset(engine_new, logged.train, pit, cands_new, cfg.personal.ctr_prior, progress)
    t = lap("features_s", t)

    served = bool(Ranker.file_signature(serving_dir))
    serving = (  # no learned ranker serves: the z-score mix does (the base a warm start builds on)
        Ranker.load(serving_dir)
        if served
        else Ranker.mix(
            cfg.rerank.weight,
            {
                "model": f"the z-score mix, weight {cfg.rerank.weight}",
                "cross_encoder": cross_encoder_card(engine),
                "candidates": candidates_card(engine),
            },
        )
    )
    methods = DEBIAS_METHODS if rc.debias == "auto" else (rc.debias,)
    desc = f"logged searches {logged.split}; {len(logged.train)} engaged searches before the cut"
    # what a warm start builds on: the serving ranker, or, over a new cross-encoder, the z-score mix (it reads
    # any cross-encoder's scores); a learned ranker read the old one's scores, so a new one is fitted instead
    warm = serving
    if engine_new is not engine:
        warm = copy.copy(serving) if serving.mix_weight is not None else None
        if warm is not None:
            warm.card = {**serving.card, "cross_encoder": cross_encoder_card(engine_new)}
    fitted: dict = {}
    for m in methods:
        if rc.warm_start and warm is not None:
            ranker, valid = fit_on_top(warm, data, ft.ranker, m, propensity, rc.clip, rc.delta_features)
            ranker.card["data"] = desc
        else:
            ranker, valid = fit_ranker(
                engine_new,
                data,
                ft.ranker,
                FEATURES,
                description=desc,
                progress=progress,
                method=m,
                propensity=propensity,
                clip=rc.clip,
            )
        scores = group_scores(ranker, valid)
        fitted[m] = (ranker, round(debiased_dcg(valid, scores, propensity, rc.clip), 4) if len(valid.y) else None)
    chosen = max(methods, key=lambda m: (fitted[m][1] or 0.0, -methods.index(m)))
    t = lap("training_s", t)

    models = {"serving": serving, **{m: fitted[m][0] for m in methods}}
    ranks = holdout_ranks(engine, logged.holdout, pit, models, cands, {m: cands_new for m in methods})
    guards = {
        m: ips_guard(ranks, "serving", m, logged.holdout_searches, propensity, rc.k, rc.clip, rc.seed) for m in methods
    }
    judged, judged_path = judged_queries(cfg)
    judged_out = (
        judged_check(
            engine,
            judged,
            pit,
            until,
            {"serving": serving, "new": fitted[chosen][0]},
            rc.judged_tolerance,
            cache,
            engines={"new": engine_new},
        )
        if judged is not None
        else None
    )
    t = lap("guard_s", t)
    win = bool(guards[chosen].get("ship"))
    judged_ok = judged_out is None or judged_out.get("passed", True)
    ship = win and judged_ok
    if ship:
        why = f"the held-out searches' clicks@{rc.k} interval lies above zero"
        if judged_out is not None:
            why += f" and the judged dev queries lose at most {rc.judged_tolerance}"
    elif not win:
        g = guards[chosen]
        why = f"held-out clicks@{rc.k}: interval [{g.get('ci_low')}, {g.get('ci_high')}] does not lie above zero"
    else:
        d = judged_out["new_minus_serving"]["diff"]
        why = f"judged dev NDCG@10 {d:+.4f} loses more than {rc.judged_tolerance}"
    report = {
        "config": str(cfg.source),
        "until": until,
        "logs": logged.summary(),
        "click_model": pbm.to_dict(),
        "methods": {m: {"valid_debiased_dcg@10": fitted[m][1], "holdout": guards[m]} for m in methods},
        "chosen": chosen,
        "serving": str(serving_dir) if served else "none (the z-score mix)",
        "judged": None if judged_out is None else {"path": judged_path, **judged_out},
        "ship": ship,
        "decision": ("promoted: " if ship and promote else "not promoted: " if not ship else "won, --no-promote: ")
        + why,
        "dataset": {"sessions": int(len(data.groups)), "rows": int(len(data.y))},
        "cross_encoder": ce_card,
    }
    ranker = fitted[chosen][0]
    if ce_staged is not None:  # the card tells a rollback to take the cross-encoder back too
        ranker.card["cross_encoder_retrained"] = ce_card
    ranker.card.update(
        data=desc,
        debias=chosen,
        retrain={k: report[k] for k in ("until", "logs", "click_model", "methods", "judged", "decision")},
        position_bias="examination propensity per rank, fitted by EM (position-based click model): "
        + ", ".join(f"{x:.3f}" for x in propensity[:10]),
    )
    staged = staging_folder(serving_dir)
    ranker.save(staged)
    if ranker.reads("query_ctr"):  # the query clicks as of the window's end, looked up at serving time
        pit.query_clicks.at(until).snapshot(logged.since).save(staged, engine.products.ids)
    if ship and promote:
        if ce_staged is not None:
            from finetune.retrain_ce import promote_cross_encoder

            # the cross-encoder (and its ONNX export) first: a reload in between refuses the mismatched pair
            # and keeps serving the old one
            report["previous_cross_encoder"] = str(promote_cross_encoder(ce_staged, cfg))
        report["previous"] = str(swap_in(staged, serving_dir))
        report["promoted"] = str(serving_dir)
    else:
        report["candidate"] = str(staged)
        if ce_staged is not None:
            report["candidate_cross_encoder"] = str(ce_staged)
    lap("total_s", t0)
    report["timing"] = timing
    write_report(report, rc.reports or Path("reports/retrain") / cfg.name, propensity)
    return report


def write_report(report: dict, out: Path, propensity: np.ndarray) -> None:
    """``retrain.json``, ``retrain.md`` and ``retrain.png`` (the fitted position bias; each method's held-out
    gain with its interval)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrain.json").write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    logs = report["logs"]
    lines = [
        f"# Retrain: {report['config']}",
        "",
        f"**Decision: {report['decision']}**",
        "",
        f"- Window ending {_when(report['until'])}: {logs['searches']} logged searches over {logs['span_days']:.3f} "
        f"days; {logs['split']}; {logs['engaged_train_searches']} engaged searches train, "
        f"{logs['holdout_searches']} held out ({logs['engaged_holdout_searches']} engaged).",
        f"- Users over the per-user cap: {logs['users_over_the_cap']} (most searches by one user: "
        f"{logs['most_searches_by_one_user']}).",
        "- Position bias (examination relative to rank 1, EM): " + ", ".join(f"{x:.2f}" for x in propensity[:10]),
        f"- Serving: {report['serving']}; chosen method: **{report['chosen']}**.",
        "",
        "| method | valid debiased DCG@10 | held-out clicks@10 serving | new | diff [95% CI] | ship |",
        "|---|---|---|---|---|---|",
    ]
    for m, r in report["methods"].items():
        h = r["holdout"]
        k = next((key for key in h if key.startswith("new_clicks@")), None)
        lines.append(
            f"| {m} | {r['valid_debiased_dcg@10']} | {h.get(k.replace('new', 'serving')) if k else '-'} | "
            f"{h.get(k) if k else '-'} | {h.get('diff', '-')} [{h.get('ci_low', '-')}, {h.get('ci_high', '-')}] | "
            f"{h.get('ship')} |"
        )
    if report["judged"]:
        j = report["judged"]
        d = j.get("new_minus_serving", {})
        lines += [
            "",
            f"Judged dev queries ({j['path']}, {j['queries']}): NDCG@10 serving {j['ndcg@10']['serving']}, "
            f"new {j['ndcg@10']['new']}, diff {d.get('diff')} [{d.get('ci_low')}, {d.get('ci_high')}]; "
            f"passed: {j.get('passed')}.",
        ]
    lines += ["", f"Timing (s): {report.get('timing')}", ""]
    (out / "retrain.md").write_text("\n".join(lines), encoding="utf-8")
    _plot(report, out / "retrain.png", propensity)


def _plot(report: dict, path: Path, propensity: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot(np.arange(1, len(propensity) + 1), propensity, marker="o")
    a.set(xlabel="rank", ylabel="examination relative to rank 1", title="position bias (EM click model)")
    names = list(report["methods"])
    diffs = [report["methods"][m]["holdout"].get("diff", 0.0) for m in names]
    lo = [d - report["methods"][m]["holdout"].get("ci_low", d) for d, m in zip(diffs, names)]
    hi = [report["methods"][m]["holdout"].get("ci_high", d) - d for d, m in zip(diffs, names)]
    b.bar(names, diffs, yerr=[lo, hi], capsize=4, color=["C2" if m == report["chosen"] else "C0" for m in names])
    b.axhline(0, color="k", lw=0.8)
    b.set(ylabel="held-out clicks@10, new − serving", title="ship guard (IPS, 95% CI)")
    b.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def send_reload(url: str) -> dict:
    """``POST <url>/admin/reload`` with the admin key from the environment (``ECOMSEARCH_ADMIN_KEY``)."""
    import os
    import urllib.request

    key = os.environ.get("ECOMSEARCH_ADMIN_KEY")
    if not key:
        raise RetrainError("--reload needs the service's admin key in the environment variable ECOMSEARCH_ADMIN_KEY")
    req = urllib.request.Request(
        url.rstrip("/") + "/admin/reload", method="POST", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read().decode())


def main(argv: list[str] | None = None) -> int:

    from core.cli import command, load, run

    ap = command("finetune.retrain", __doc__, overrides=True)
    ap.add_argument("--until", type=float, help="the window's end (Unix time; default now)")
    ap.add_argument("--no-promote", action="store_true", help="train and guard, but leave the serving ranker")
    ap.add_argument("--rollback", action="store_true", help="swap the previous ranker back in, and nothing else")
    ap.add_argument("--reload", metavar="URL", help="after a promotion, POST URL/admin/reload (a running service)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    def body():
        cfg = load(args)
        if args.rollback:
            if not cfg.rerank.ranker:
                raise RetrainError(f"{cfg.source}: no rerank.ranker to roll back")
            from finetune.retrain_ce import rollback_models

            done = rollback_models(cfg)
            print(f"rolled back: {', '.join(done)} hold the previous models again")
        else:
            report = run_retrain(cfg, args.until, promote=not args.no_promote, progress=not args.no_progress)
            print(report["decision"])
            print(
                json.dumps(
                    {k: report[k] for k in ("logs", "chosen", "methods", "judged", "timing")},
                    indent=1,
                    ensure_ascii=False,
                    default=str,
                )
            )
            if not report.get("promoted"):
                return 0
        if args.reload:
            print(json.dumps(send_reload(args.reload), ensure_ascii=False))
        return 0

    return run(body, errors=(ValueError, FileNotFoundError, OSError))


if __name__ == "__main__":
    import sys

    sys.exit(main())
