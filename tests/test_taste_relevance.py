"""Taste evidence that knows how relevant each shown product was (engine.taste_counts): the serving ranker's click
log-odds of a product, logged with the impression, counted per rank bucket beside the counts — the same online, in
bulk, merged and from the impression log — and read by the taste model (engine.taste)."""

import dataclasses

import numpy as np
import pytest

from engine.profiles import Profile, ProfileSettings, apply_event
from engine.profiles_bulk import merge_profiles
from engine.taste import GRID, N_BUCKETS, posterior_mean, rank_bucket
from engine.taste_counts import TASTE_PARTS, TASTE_WIDTH, taste_columns
from tests.test_taste import DAY, T0, facets_of, log_events, model_for_tests, online_and_bulk, shopper_events

LOGGED = ("impression", "click")  # the events a search logs a relevance for


def logged(ev):
    """``log_events`` with a relevance on the first day's impressions and clicks of user u (x = −1.5 − rank/10),
    none on the rest."""
    return [(*e, -1.5 - e[4] / 10 if e[0] == "u" and e[3] < T0 + DAY and e[2] in LOGGED else None) for e in ev]


def block(v, part):
    j = TASTE_PARTS.index(part)
    return np.asarray(v)[j * N_BUCKETS : (j + 1) * N_BUCKETS]


def test_relevance_is_counted_per_rank_bucket_the_same_online_in_bulk_and_merged():
    facets, s = facets_of(), ProfileSettings(30.0, taste_half_life_days=365.0)
    ev = logged(log_events())
    online, _ = online_and_bulk(ev, facets, s)
    u = online["u"]
    decay = 2.0 ** (-(DAY - 8) / s.taste_half_life)  # the first day's events, decayed to the last one
    brand2 = u.taste["brand"]["2"]  # P2 shown at rank 3 and clicked (x −1.8); P7 at rank 3 the next day (no x)
    b = rank_bucket(3)
    assert len(brand2) == TASTE_WIDTH
    assert block(brand2, "shown")[b] == pytest.approx(1.0 + 2.0 ** (-DAY / s.taste_half_life), rel=1e-9)
    assert block(brand2, "shown_x")[b] == pytest.approx(2.0 ** (-DAY / s.taste_half_life), rel=1e-9)
    assert block(brand2, "sum_x")[b] == pytest.approx(-1.8 * 2.0 ** (-DAY / s.taste_half_life), rel=1e-9)
    assert block(brand2, "clicked_x")[b] == pytest.approx(decay, rel=1e-9)
    assert block(brand2, "sum_clicked_x")[b] == pytest.approx(-1.8 * decay, rel=1e-9)
    assert sum(block(online["w"].taste["brand"]["2"], "shown_x")) == 0  # w's events logged no relevance
    # serialized and merged, the relevance stays; a profile stored before relevance was logged reads as counts only
    back = Profile.loads(u.dumps())
    np.testing.assert_allclose(back.taste["brand"]["2"], brand2, rtol=1e-4, atol=1e-4)
    first, second = Profile(), Profile()
    for usr, row, e, t, rank, sh, x in ev:
        if usr == "u":
            apply_event(first if t < T0 + DAY else second, facets, row, f"P{row}", e, t, s, rank, sh, x)
    np.testing.assert_allclose(merge_profiles(first, second, s).taste["brand"]["2"], brand2, rtol=1e-9, atol=1e-12)
    old = Profile.loads(u.dumps().replace(b'"ta":', b'"ta_":'))
    old.taste = {"brand": {"2": list(brand2[: 2 * N_BUCKETS])}}
    assert len(Profile.loads(old.dumps()).taste["brand"]["2"]) == TASTE_WIDTH
    assert taste_columns(3, True, float("nan")) == [(N_BUCKETS + b, 1.0)]  # nan: not logged


def test_a_click_on_a_product_the_engine_found_a_poor_match_says_more_of_a_taste():
    """The likelihood with relevance is the exact one at each bucket's mean relevance per outcome; counts without
    relevance read as before; a click on a poor match (x = −3) moves the taste more than one on a good match."""
    m = model_for_tests()
    rng = np.random.default_rng(0)
    n = 60
    rank, x, clicked = rng.integers(1, 15, n), rng.normal(-1.0, 1.0, n), rng.random(n) < 0.3
    ev = np.zeros(TASTE_WIDTH)
    for r, xx, c in zip(rank, x, clicked):
        for col, f in taste_columns(r, False, xx):
            ev[col] += f
        if c:
            for col, f in taste_columns(r, True, xx):
                ev[col] += f
    b = rank_bucket(rank)
    want = np.zeros(len(GRID))
    for k in range(N_BUCKETS):
        for c in (False, True):
            sel = (b == k) & (clicked == c)
            if sel.any():
                p = m.examination[k] / (1.0 + np.exp(-(x[sel].mean() + GRID)))
                want += sel.sum() * (np.log(p) if c else np.log1p(-p))
    np.testing.assert_allclose(m.loglik(ev[None])[0], want - want[GRID.size // 2], atol=1e-9)
    counts = ev[: 2 * N_BUCKETS]
    np.testing.assert_allclose(m.loglik(np.concatenate([counts, np.zeros(4 * N_BUCKETS)])), m.loglik(counts))

    prior = np.exp(-0.5 * GRID**2)
    prior /= prior.sum()

    def taste_after_click(xx):
        e = np.zeros(TASTE_WIDTH)
        for col, f in taste_columns(4, False, xx) + taste_columns(4, True, xx):
            e[col] += f
        return float(posterior_mean(m.loglik(e[None]), prior)[0])

    assert taste_after_click(-3.0) > taste_after_click(0.0) + 0.1 > 0.1


def test_the_impression_log_carries_relevance_into_the_profile_and_to_a_linked_click(tmp_path):
    from engine.events.impressions import Impression

    ev, key, t = shopper_events(tmp_path)
    shown = ["P0", "P1", "P2", "P5"]
    imp = Impression("s1", t, key, "q", "q", products=shown, relevance=[-0.5, None, -2.0, -1.0])
    ev.log_impressions([imp])
    got = ev.impression("s1")
    assert got.relevance == [-0.5, None, -2.0, -1.0] and got.relevance_of(3) == -2.0 and got.relevance_of(9) is None
    b0 = ev.store.profile(key).taste["brand"]["0"]  # P0 (rank 1, x −0.5) and P5 (rank 4, x −1.0)
    assert block(b0, "shown_x")[rank_bucket(1)] == pytest.approx(1.0, rel=1e-3)
    assert block(b0, "sum_x")[rank_bucket(4)] == pytest.approx(-1.0, rel=1e-3)
    assert sum(block(ev.store.profile(key).taste["brand"]["1"], "shown_x")) == 0  # P1: none logged
    ev.append_bulk(
        [key], ["P2"], np.array([2]), ["click"], np.array([t + 5]), ["q"], links=[("s1", 3, None)], relevance=[-2.0]
    )
    b2 = ev.profile("shopper").taste["brand"]["2"]
    assert block(b2, "clicked_x")[rank_bucket(3)] == pytest.approx(1.0, rel=1e-3)
    assert block(b2, "sum_clicked_x")[rank_bucket(3)] == pytest.approx(-2.0, rel=1e-3)
    # an impression logged without relevance (no taste model served it) stores none
    ev.log_impressions([Impression("s2", t, key, "q", "q", products=shown)])
    assert ev.impression("s2").relevance is None


def test_the_final_ranking_returns_the_relevance_a_taste_model_read_in_each_hit():
    """What the service logs with an impression: the taste model's ``r(g)`` of each hit's non-personal score, in
    the final order (none without a taste model; nan below the reranked candidates)."""
    from core.config import RerankConfig
    from engine.features import FEATURES, Candidates
    from engine.final_rank import rank_candidates
    from engine.ranker import Ranker

    n = 6
    ce = np.linspace(1.0, 0.0, n)
    cand = Candidates(np.arange(n)[::-1].copy(), np.zeros(n), ce.copy(), {}, {}, ce=ce.copy())
    X = np.zeros((n, len(FEATURES)))
    X[:, FEATURES.index("ce")] = ce
    X[:, FEATURES.index("first_stage")] = ce
    ranker = Ranker.mix(0.5)
    r = RerankConfig()
    plain, _ = rank_candidates(cand, 4, r, ranker, lambda c, p: X)
    assert plain.relevance is None
    ranker.taste = model_for_tests()
    res, _ = rank_candidates(cand, 4, r, ranker, lambda c, p: X)
    base = ranker.score(X, 0.0, warm=False)[1]
    order = [int(np.flatnonzero(cand.rows == row)[0]) for row in res.rows]
    np.testing.assert_allclose(res.relevance, ranker.taste.relevance_logit(base[order]), rtol=1e-6)
    assert np.all(np.diff(res.relevance) <= 1e-6)  # best first


def test_the_service_logs_each_hits_relevance_and_a_click_answering_the_search_counts_it(live_cfg, tmp_path):
    """End to end: a ranker with a taste model serves a search; the impression holds each reranked hit's r(g) (the
    hits' answer does not show it); a click sent with the search id folds that relevance into the taste evidence."""
    import shutil

    from fastapi.testclient import TestClient

    from engine.ranker import Ranker
    from engine.search import SearchEngine
    from engine.service import create_app
    from engine.service.http import Keys

    folder = tmp_path / "ranker-taste"
    shutil.copytree(live_cfg.finetune.out_dir / "ranker", folder)  # what `make finetune` trained
    ranker = Ranker.load(folder)
    prior = np.exp(-0.5 * GRID**2)
    ranker.taste = model_for_tests({"brand": prior / prior.sum()})
    ranker.save(folder)
    cfg = dataclasses.replace(live_cfg, rerank=dataclasses.replace(live_cfg.rerank, ranker=str(folder)))
    eng = SearchEngine.from_config(cfg)
    app = create_app(eng, watch=False, keys=Keys(admin="admin-secret-1"))
    client = TestClient(app, raise_server_exceptions=False)
    r = client.get("/search", params={"q": "蓝牙耳机", "k": 5, "user": "U3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert all("relevance" not in h for h in body["hits"])
    assert app.state.impressions.flush(10)
    imp = eng.user_events().impression(body["search_id"])
    xs = imp.relevance
    assert xs is not None and len(xs) == 5 and all(x is not None and np.isfinite(x) for x in xs)
    assert xs == sorted(xs, reverse=True) or any(h.get("personalized") for h in body["hits"])
    pid = body["hits"][1]["product_id"]
    click = {"search_id": body["search_id"], "product_id": pid, "event": "click", "user_id": "U3"}
    r = client.post("/events", json=click)
    assert r.status_code == 200, r.text
    prof = eng.user_events().profile("U3")
    brand = eng.facets().brand[eng.products.row_map()[pid]]
    ev = prof.taste["brand"][str(int(brand))]
    b = rank_bucket(2)
    assert block(ev, "clicked_x")[b] == pytest.approx(1.0, rel=1e-3)
    assert block(ev, "sum_clicked_x")[b] == pytest.approx(xs[1], abs=1e-3)


def test_the_taste_fit_keeps_counts_alone_where_no_relevance_was_logged():
    """A click log's replay (no relevance anywhere) keeps 12 numbers per value and row, not 36; sessions with and
    without relevance line up, the former's relevance blocks zero."""
    from types import SimpleNamespace

    from engine.features import FEATURES
    from finetune.taste_fit import TasteRows

    facets, s = facets_of(), ProfileSettings(30.0)
    rows = TasteRows(facets, s.taste_half_life)
    profiles = {"a": Profile(), "b": Profile()}
    for user, x in (("a", None), ("b", -1.0)):
        apply_event(profiles[user], facets, 3, "P3", "impression", T0, s, 1, False, x)
        apply_event(profiles[user], facets, 3, "P3", "click", T0 + 5, s, 1, True, x)
    shown = [3, 8, 13]
    X = np.zeros((3, len(FEATURES)))
    for i, user in enumerate(("a", "b")):
        sess = SimpleNamespace(user=user, t=T0 + DAY, shown=shown, offset=0, gains={3: 1.0})
        rows(i, sess, SimpleNamespace(rows=np.array(shown)), X, SimpleNamespace(profiles=profiles))
    assert [e.shape[-1] for e in rows.evidence] == [2 * N_BUCKETS, TASTE_WIDTH]
    ev = rows.arrays()[3]
    assert ev.shape == (6, 4, TASTE_WIDTH) and not ev[:3, :, 2 * N_BUCKETS :].any() and ev[3:, :, 2 * N_BUCKETS :].any()
    np.testing.assert_array_equal(ev[:3, :, : 2 * N_BUCKETS], ev[3:, :, : 2 * N_BUCKETS])
