"""The personalization benchmark's simulator: time split, cold users, taste in clicks, the report's shape."""

import json

import numpy as np
import pytest

from engine import SearchEngine
from eval.sim import personal, shoppers
from core.bootstrap import bootstrap_ci, paired_bootstrap


@pytest.fixture(scope="module")
def world(job_cfg, trained):
    eng = SearchEngine.from_config(job_cfg)
    queries = personal.query_pool(job_cfg, 60, seed=0)
    return eng, shoppers.build_world(eng, queries, progress=False)


def test_the_simulator_splits_by_time_and_cold_users_have_no_history(world):
    eng, w = world
    rng = np.random.default_rng(0)
    users = shoppers.make_users(w, 60, rng)
    log, cut = shoppers.simulate(
        w, users, 1.0, days=30, eval_days=10, sessions_per_user=6, rng=rng, row_ids=eng.products.ids
    )
    assert log.events and log.sessions and log.eval_sessions
    assert all(e.timestamp < cut for e in log.events) and all(s.t < cut for s in log.sessions)
    assert all(t >= cut for _, _, t, _ in log.eval_sessions)
    cold = {u.uid for u in users if u.cold}
    assert cold and not any(e.user_id in cold for e in log.events)
    assert any(uid in cold for uid, _, _, _ in log.eval_sessions)


def test_simulated_users_click_what_they_like_only_when_they_have_a_taste(world):
    eng, w = world
    share = {}
    for strength in (0.0, 2.0):
        rng = np.random.default_rng(1)
        users = shoppers.make_users(w, 80, rng)
        by_uid = {u.uid: u for u in users}
        log, _ = shoppers.simulate(w, users, strength, 30, 10, 8, rng, eng.products.ids)
        row_of = {eng.products.ids[i]: i for i in range(len(eng.products))}
        liked = [
            shoppers.taste_of(w, by_uid[e.user_id], np.array([row_of[e.product_id]]))[0]
            for e in log.events
            if e.event == "click"
        ]
        shown = [
            shoppers.taste_of(w, by_uid[e.user_id], np.array([row_of[e.product_id]]))[0]
            for e in log.events
            if e.event == "impression"
        ]
        share[strength] = np.mean(liked) - np.mean(shown)
    assert abs(share[0.0]) < 0.03 and share[2.0] > 0.05


def test_the_bayes_ranking_from_history_learns_the_taste_only_when_there_is_one(world):
    eng, w = world
    rng = np.random.default_rng(2)
    users = shoppers.make_users(w, 80, rng)
    by_uid = {u.uid: u for u in users}
    log, _ = shoppers.simulate(w, users, 0.0, 30, 10, 8, rng, eng.products.ids)
    flat = shoppers.HistoryPosterior(w, by_uid, log.sessions, 0.0)
    assert all(not np.any(v) for v in flat.llr.values())  # no taste: clicks say nothing
    q = w.queries[0]
    assert np.array_equal(
        np.argsort(-flat.expected_clicks(users[0].uid, q), kind="stable"), np.argsort(-w.z[q], kind="stable")
    )  # so it ranks by relevance alone
    log, _ = shoppers.simulate(w, users, 2.0, 30, 10, 8, rng, eng.products.ids)
    f = next(iter(w.facets))
    codes = np.arange(w.n_values[f])
    for given_others in (False, True):  # from the history alone, and with the other facets' truth given
        bayes = shoppers.HistoryPosterior(w, by_uid, log.sessions, 2.0, given_others=given_others)
        liked, other = [], []
        for u in users:
            llr = bayes.log_ratio(f, u.uid, codes)
            mask = np.isin(codes, list(u.liked[f])) & (llr != 0)
            liked += llr[mask].tolist()
            other += llr[~np.isin(codes, list(u.liked[f])) & (llr != 0)].tolist()
        assert np.mean(liked) > np.mean(other) + 0.5  # the history points at the liked values


def test_the_guards_bayes_reference_lifts_the_clicked_values_and_leaves_an_empty_history_alone(world):
    from types import SimpleNamespace

    from eval.sim.personal_guard import bayes_clicks, position_z

    eng, w = world
    rng = np.random.default_rng(3)
    users = {u.uid: u for u in shoppers.make_users(w, 80, rng)}
    zpos = position_z(w, seed=0)
    assert zpos.shape == (10,) and zpos[0] > zpos[-1]  # the shop shows its best first
    f = next(iter(w.facets))
    codes = w.facets[f]
    q = next(q for q in w.queries if len(np.unique(codes[w.cands[q].rows])) >= 2)
    c = w.cands[q]
    z = np.zeros(len(c.rows))  # equally relevant: only the history can order them
    flat = bayes_clicks((w, users, 1.0), [], zpos, c, z)
    assert np.allclose(flat, flat[0])
    liked = codes[c.rows[0]]
    others = np.flatnonzero(codes != liked)
    lists = [[int(c.rows[0])] + rng.choice(others, 9).tolist() for _ in range(5)]  # clicked in one value, 5 times
    exp = bayes_clicks((w, users, 1.0), lists, zpos, SimpleNamespace(rows=c.rows), z)
    same = codes[c.rows] == liked
    assert exp[same].min() > exp[~same].max()
    # without taste in the world the same history says nothing
    none = bayes_clicks((w, users, 0.0), lists, zpos, c, z)
    assert np.allclose(none, bayes_clicks((w, users, 0.0), [], zpos, c, z))


def test_the_benchmark_writes_the_agreed_json_and_cold_users_are_identical(job_cfg, trained, tmp_path):
    import yaml

    cfg_file = tmp_path / "t.yaml"
    raw = {
        "name": "t",
        "root": str(job_cfg.root),
        "catalog": {"path": str(job_cfg.catalog.path)},
        "index_dir": str(job_cfg.index_dir),
        "text": {"unknown_word_ngrams": 1},
        "dense": {"model": job_cfg.dense.model, "base_model": job_cfg.dense.base_model, "max_length": 64},
        "search": {"stages": ["bm25", "dense"]},
        "rerank": {"model": job_cfg.rerank.model, "depth": 20, "weight": 0.5},
        "finetune": {
            "train": str(job_cfg.finetune.train),
            "holdout_days": 10,
            "out_dir": str(job_cfg.finetune.out_dir),
            "ranker": {"num_rounds": 30, "min_data_in_leaf": 10},
        },
    }
    cfg_file.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "report"
    assert (
        personal.main(
            [
                "--config",
                str(cfg_file),
                "--out",
                str(out),
                "--queries",
                "60",
                "--users",
                "60",
                "--sessions",
                "8",
                "--tastes",
                "none,medium",
                "--guard",
                "none",
                "--curve",
                "16",
                "--knobs",
                "0,0.5,1",
                "--no-progress",
            ]
        )
        == 0
    )
    payload = json.loads((out / "personal.json").read_text())
    for taste in ("none", "medium"):
        for group in ("warm", "cold"):
            b = payload[taste][group]
            assert {"n_users", "n_queries", "ndcg@10", "mrr@10"} <= set(b)
            assert {"base", "personal", "diff", "ci_low", "ci_high"} <= set(b["ndcg@10"])
        cold = payload[taste]["cold"]
        assert cold["n_queries"] > 0 and cold["ndcg@10"]["diff"] == 0 and cold["mrr@10"]["diff"] == 0
    # no taste: the Bayes ranking is the relevance ranking, so the ceiling's lift is exactly 0
    none = payload["none"]["warm"]["ndcg@10"]
    assert none["bayes"] == none["relevance"]
    # the learning curve: the medium taste again with twice the history per user
    (row,) = payload["curve"]
    assert (
        row["sessions"] == 16
        and row["history_sessions_per_warm_user"] > payload["medium"]["train"]["history_sessions_per_warm_user"]
    )
    assert {"diff", "ci_low", "ci_high", "bayes", "bayes_upper", "relevance"} <= set(row["warm"]["ndcg@10"])
    # the knob: at 0 the personal ranking is the base one, at 1 it is the reported lift
    knobs = payload["medium"]["knobs"]
    assert set(knobs) == {"0", "0.5"} and knobs["0"]["ndcg@10"]["diff"] == 0
    report = (out / "report.md").read_text()
    assert "personalize knob" in report
    assert "simulated" in report and "Lift by length of history" in report and (out / "lift.png").is_file()


def test_bootstrap_intervals_cover_the_mean_and_a_zero_difference_has_p_one():
    x = np.random.default_rng(0).normal(1.0, 1.0, 400)
    m, lo, hi = bootstrap_ci(x)
    assert lo < m < hi and lo < 1.0 < hi and hi - lo < 0.3
    same = paired_bootstrap(x, x)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    up = paired_bootstrap(x, x + 0.2)
    assert up["ci_low"] > 0.19 and up["p_value"] < 0.01


def test_the_user_context_text_names_the_strongest_brands_and_price_band():
    from engine.profiles import Profile
    from eval.sim.personal_ce import context_text, with_context

    p = Profile(weight=3.0, affinities={"brand": {"0": 1.0, "2": 3.0, "1": 0.5}, "price_band": {"4": 2.0, "0": 1.0}})
    ctx = context_text(p, ["索尼", "苹果", "漫步者"])
    assert ctx == "偏好: 品牌 漫步者 索尼; 价位 高"
    assert with_context("蓝牙耳机", ctx) == "蓝牙耳机 | 偏好: 品牌 漫步者 索尼; 价位 高"
    assert context_text(None, []) == "" and with_context("蓝牙耳机", "") == "蓝牙耳机"


def test_the_simulated_log_carries_the_relevance_the_engine_served_each_product_at(world):
    """What the service logs with an impression, given to the simulated shop's log: each impression and click
    the serving ranker's r(g) of its product at the session's time; carts and purchases none."""
    from engine.features import feature_matrix, timeline_ctr_popularity
    from engine.profiles import ProfileSettings
    from engine.ranker import Ranker
    from eval.sim.served import served_relevance, share_logged
    from finetune.ranker_sessions import EventArrays, PointInTime
    from tests.test_taste import model_for_tests

    eng, w = world
    rng = np.random.default_rng(4)
    users = shoppers.make_users(w, 30, rng)
    log, _ = shoppers.simulate(w, users, 1.0, 30, 10, 4, rng, eng.products.ids)
    row_of = eng.products.row_map()
    settings = ProfileSettings.from_config(eng.cfg.personal)
    pit = PointInTime(EventArrays.from_events(log.events, row_of), eng.facets(), settings)
    ranker = Ranker.mix(0.5)
    ranker.taste = model_for_tests()
    events = served_relevance(eng, ranker, w, log, pit)
    assert len(events) == len(log.events) and share_logged(events) == 1.0 and share_logged(log.events) == 0.0
    assert all((e.relevance is not None) == (e.event in ("impression", "click")) for e in events)
    s = log.sessions[len(log.sessions) // 2]
    c = w.cands[s.query]
    ctr, pop = timeline_ctr_popularity(pit.timeline, c.rows, s.t, eng.cfg.personal.ctr_prior)
    x = ranker.taste.relevance_logit(ranker.score(feature_matrix(c, ctr, pop, None), 0.0, warm=False)[1])
    got = {(e.product_id, e.timestamp): e.relevance for e in events if e.user_id == s.user and e.event == "impression"}
    for pos, row in enumerate(s.shown):
        assert got[eng.products.ids[row], s.t + pos] == pytest.approx(x[list(c.rows).index(row)])
    # the profiles built from it count the relevance beside the ranks
    prof = PointInTime(EventArrays.from_events(events, row_of), eng.facets(), settings).profiles_at(np.inf)[s.user]
    assert any(sum(v[12:]) != 0 for vals in prof.taste.values() for v in vals.values())
