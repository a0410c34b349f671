"""Issue 24, part 3: team-draft interleaving and A/B in the service, credited from the logged impressions."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.experiments import ab_arm, credit, experiment_stats, searches_needed, sign_test, team_draft
from engine.search import SearchEngine
from engine.service import create_app
from engine.service.http import Keys

ADMIN = "admin-secret-1"


def test_team_draft_takes_turns_and_shows_each_product_once():
    rng = np.random.default_rng(0)
    a = [f"a{i}" for i in range(10)]
    b = ["a1", "b1", "a0", "b2", "b3", "b4", "b5", "b6", "b7", "b8"]
    for _ in range(50):
        page, teams = team_draft(a, b, 10, rng)
        assert len(page) == 10 == len(set(page)) == len(teams)
        assert abs(teams.count("A") - teams.count("B")) <= 1
        # each team's picks keep its own ranker's order
        for team, src in (("A", a), ("B", b)):
            picked = [p for p, t in zip(page, teams) if t == team]
            assert picked == sorted(picked, key=src.index)
    # the first position goes to either ranker about half the time
    firsts = [team_draft(a, b, 10, rng)[1][0] for _ in range(400)]
    assert 0.4 < firsts.count("A") / 400 < 0.6
    short, teams = team_draft(["x"], ["y"], 10, rng)
    assert sorted(short) == ["x", "y"] and len(teams) == 2


def test_clicks_are_credited_to_the_team_that_placed_the_product():
    assert credit("td:ABAB", [1, 3]) == (2, 0)
    assert credit("td:ABAB", [2, 2, 2]) == (0, 1)  # one product, one credit
    assert credit("td:ABAB", [9]) == (0, 0)  # beyond the page: nothing
    stats = experiment_stats([("td:AB", [2])] * 9 + [("td:AB", [1])] + [("td:AB", [])] * 5)
    il = stats["interleaving"]
    assert (il["candidate_wins"], il["serving_wins"], il["no_clicks"]) == (9, 1, 5)
    assert il["sign_test_p"] == pytest.approx(0.021484, abs=1e-5)  # 2 * P(X <= 1 | n=10, p=1/2)
    assert sign_test(5, 5) == 1.0 and searches_needed(0.6) > searches_needed(0.7) > 0
    ab = experiment_stats([("ab:A", [1])] * 10 + [("ab:A", [])] * 90 + [("ab:B", [1])] * 30 + [("ab:B", [])] * 70)
    assert ab["ab"]["click_rate"] == {"A": 0.1, "B": 0.3} and ab["ab"]["p"] < 0.01
    # A/B assignment is stable per key and close to the share
    arms = [ab_arm(f"user{i}", 0.2) for i in range(5000)]
    assert arms == [ab_arm(f"user{i}", 0.2) for i in range(5000)]
    assert 0.17 < arms.count("B") / 5000 < 0.23


@pytest.fixture()
def experiment_cfg(live_cfg, tmp_path):
    ranker = Path(live_cfg.finetune.out_dir) / "ranker"
    cand = tmp_path / "candidate"
    shutil.copytree(ranker, cand)
    return dataclasses.replace(
        live_cfg,
        rerank=dataclasses.replace(live_cfg.rerank, ranker=str(ranker)),
        serve=dataclasses.replace(
            live_cfg.serve,
            watch_seconds=0,
            interleave=dataclasses.replace(live_cfg.serve.interleave, candidate=str(cand), share=1.0),
        ),
    )


def client(cfg):
    from fastapi.testclient import TestClient

    eng = SearchEngine.from_config(cfg)
    return TestClient(create_app(eng, watch=False, keys=Keys(admin=ADMIN)), raise_server_exceptions=False), eng


def test_interleaved_searches_log_teams_and_experiments_counts_the_clicks(experiment_cfg):
    c, eng = client(experiment_cfg)
    with c:
        plain = eng.query("蓝牙耳机", k=10)
        r = c.get("/search", params={"q": "蓝牙耳机", "k": 10}).json()
        # the candidate is the same model: the interleaved page is the serving page
        assert [h["product_id"] for h in r["hits"]] == [h.product_id for h in plain.hits]
        assert [h["rank"] for h in r["hits"]] == list(range(1, 11))
        imp = c.app.state.impressions.pending(r["search_id"]) or eng.user_events().impression(r["search_id"])
        assert imp.arm.startswith("td:") and len(imp.arm) == 3 + 10
        team = imp.arm[3 + 2]  # the team of rank 3
        ok = c.post(
            "/events", json={"search_id": r["search_id"], "product_id": r["hits"][2]["product_id"], "event": "click"}
        )
        assert ok.status_code == 200, ok.text
        c.app.state.impressions.flush()
        # a second page is never interleaved
        r2 = c.get("/search", params={"q": "蓝牙耳机", "k": 5, "offset": 5}).json()
        c.app.state.impressions.flush()
        assert eng.user_events().impression(r2["search_id"]).arm is None
        got = c.get("/experiments", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        il = got["interleaving"]
        assert il["searches"] == 1
        assert (il["candidate_wins"], il["serving_wins"]) == ((1, 0) if team == "B" else (0, 1))
        assert c.get("/experiments").status_code in (401, 403)


def other_ranker(folder: Path) -> None:
    """A ranker that orders by the bm25 rank (a different page from the serving ranker's)."""
    import lightgbm as lgb

    from engine.features import NON_PERSONAL, ranker_features
    from engine.ranker import Ranker

    feats = ranker_features(NON_PERSONAL, base_cosine=False)  # what the experiment's config computes
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, len(feats)))
    y = (X[:, feats.index("bm25_rank")] < -0.5).astype(int)
    booster = lgb.train(
        {"objective": "lambdarank", "verbosity": -1, "num_leaves": 7}, lgb.Dataset(X, y, group=[20] * 100), 20
    )
    Ranker(booster, feats, {"model": "test: bm25 rank"}).save(folder)


def test_ab_mode_serves_the_candidate_page_to_its_arm(experiment_cfg):
    cand = Path(experiment_cfg.serve.interleave.candidate)
    shutil.rmtree(cand)
    other_ranker(cand)
    cfg = dataclasses.replace(
        experiment_cfg,
        serve=dataclasses.replace(
            experiment_cfg.serve, interleave=dataclasses.replace(experiment_cfg.serve.interleave, mode="ab")
        ),
    )
    c, eng = client(cfg)
    with c:
        serving = [h.product_id for h in eng.query("蓝牙耳机", k=10).hits]
        candidate = [h.product_id for h in eng.query("蓝牙耳机", k=10, variant="candidate").hits]
        assert serving != candidate
        r = c.get("/search", params={"q": "蓝牙耳机", "k": 10, "user": "U0001"}).json()
        assert [h["product_id"] for h in r["hits"]] == candidate  # share 1: every shopper in the candidate's arm
        c.app.state.impressions.flush()
        assert eng.user_events().impression(r["search_id"]).arm == "ab:B"
        assert "candidate_ranker" in eng.versions()
        got = c.get("/experiments", headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert got["ab"]["searches"] == {"A": 0, "B": 1} and got["mode"] == "ab"


def test_a_missing_candidate_serves_the_serving_page_and_logs_no_arm(experiment_cfg):
    shutil.rmtree(experiment_cfg.serve.interleave.candidate)
    c, eng = client(experiment_cfg)
    with c:
        r = c.get("/search", params={"q": "蓝牙耳机", "k": 10})
        assert r.status_code == 200
        assert [h["product_id"] for h in r.json()["hits"]] == [h.product_id for h in eng.query("蓝牙耳机").hits]
        c.app.state.impressions.flush()
        assert eng.user_events().impression(r.json()["search_id"]).arm is None


def test_an_exploration_share_shows_pages_shuffled_and_logs_what_was_shown(live_cfg):
    def run(explore):
        cfg = dataclasses.replace(live_cfg, serve=dataclasses.replace(live_cfg.serve, watch_seconds=0, explore=explore))
        c, eng = client(cfg)
        with c:
            plain = [h.product_id for h in eng.query("蓝牙耳机", k=10).hits]
            pages = [c.get("/search", params={"q": "蓝牙耳机", "k": 10}).json() for _ in range(6)]
            second = c.get("/search", params={"q": "蓝牙耳机", "k": 5, "offset": 5}).json()
            c.app.state.impressions.flush()
            imps = [eng.user_events().impression(p["search_id"]) for p in pages]
            return plain, pages, imps, eng.user_events().impression(second["search_id"]), c

    plain, pages, imps, second, c = run(1.0)
    shown = [[h["product_id"] for h in p["hits"]] for p in pages]
    assert all(sorted(s) == sorted(plain) for s in shown)  # the same products ...
    assert any(s != plain for s in shown)  # ... in another order
    assert all([h["rank"] for h in p["hits"]] == list(range(1, 11)) for p in pages)
    assert all(i.products == s and i.arm == "explore" for i, s in zip(imps, shown))  # logged as shown
    assert second.arm is None  # a later page is never shuffled
    with c:  # a click answers the rank it was shown at
        p = pages[0]
        ok = c.post("/events", json={"search_id": p["search_id"], "product_id": shown[0][3], "event": "click"})
        assert ok.status_code == 200
    plain, pages, imps, _, _ = run(0.0)
    assert all([h["product_id"] for h in p["hits"]] == plain and i.arm is None for p, i in zip(pages, imps))
