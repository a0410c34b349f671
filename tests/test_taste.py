"""The taste click model (engine.taste): evidence per facet value and rank in profiles (online, in bulk, from
logged searches), the empirical-Bayes taste of a value, the ranker's use of it, and the fit that decides whether
it ships (finetune.taste_fit)."""

from types import SimpleNamespace

import numpy as np
import pytest

from engine.features import FEATURES
from engine.profiles import Profile, ProductFacets, ProfileSettings, apply_event
from engine.profiles_bulk import build_profiles, merge_profiles
from engine.taste import GRID, N_BUCKETS, TasteModel, evidence_rows, fit_prior, rank_bucket

T0 = 1_767_225_600.0
DAY = 86400.0
NAMES = ("impression", "click", "add_to_cart", "purchase")


def facets_of(n=40, brands=5, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 4)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return ProductFacets(
        v,
        (np.arange(n) % 3).astype(np.int32),
        (np.arange(n) % brands).astype(np.int32),
        (np.arange(n) % 4).astype(np.int32),
        (np.arange(n) % 5).astype(np.int32),
        "g1",
    )


def log_events():
    """(user, row, event, time, rank, shapes): one user's search shows P0..P4 and P2 is clicked at rank 3 (P3, P4
    below the click: examined unknown), a later search shows P5..P7 and nothing is clicked; another user clicks
    and buys P7.  Brands are the row modulo 5."""
    ev = [("u", i, "impression", T0 + i, i + 1, i <= 2) for i in range(5)] + [("u", 2, "click", T0 + 10, 3, True)]
    ev += [("u", 5 + i, "impression", T0 + DAY + i, i + 1, False) for i in range(3)]
    ev += [("w", 7, "impression", T0 + 5, 1, True), ("w", 7, "click", T0 + 6, 1, True)]
    ev += [("w", 7, "purchase", T0 + 60, 0, True)]
    return sorted(ev, key=lambda e: e[3])


def online_and_bulk(ev, facets, s):
    """The profiles of ``ev`` ((user, row, event, time, rank, shapes[, relevance]) each) applied one event at a time
    and in bulk, their taste evidence checked equal."""
    online: dict[str, Profile] = {}
    for u, row, e, t, rank, shapes, *x in ev:
        apply_event(online.setdefault(u, Profile()), facets, row, f"P{row}", e, t, s, rank, shapes, *x)
    users, rows, codes, ts, ranks, shapes = zip(*((u, r, NAMES.index(e), t, k, sh) for u, r, e, t, k, sh, *_ in ev))
    xs = [np.nan if len(e) < 7 or e[6] is None else e[6] for e in ev]
    bulk = build_profiles(
        np.array(users),
        np.array(rows),
        [f"P{r}" for r in rows],
        np.array(codes),
        np.array(ts),
        facets,
        s,
        NAMES,
        ranks=np.array(ranks),
        shapes=np.array(shapes),
        relevance=np.array(xs),
    )
    for u in online:
        a, b = online[u], bulk[u]
        assert a.taste_t == b.taste_t and a.taste.keys() == b.taste.keys()
        for f in a.taste:
            assert a.taste[f].keys() == b.taste[f].keys()
            for k in a.taste[f]:
                np.testing.assert_allclose(a.taste[f][k], b.taste[f][k], rtol=1e-12, atol=1e-12)
        assert a.exposure_total == pytest.approx(b.exposure_total)
    return online, bulk


def test_taste_evidence_counts_shown_and_clicked_by_rank_the_same_online_and_in_bulk():
    facets, s = facets_of(), ProfileSettings(30.0, taste_half_life_days=365.0)
    ev = log_events()
    online, _ = online_and_bulk(ev, facets, s)
    u = online["u"]
    # brand 2 (P2): shown once at rank 3 (bucket 2) and clicked there; P3, P4 below the click count as shown
    # for the taste, not as exposure; the search without a click counts too (P5..P7: brands 0, 1, 2)
    assert u.taste_t == T0 + DAY + 2
    hl = s.taste_half_life
    brand2 = np.array(u.taste["brand"]["2"])  # P2 and P7, both shown at rank 3
    assert brand2[rank_bucket(3)] == pytest.approx(1.0 + 2.0 ** (-DAY / hl), rel=1e-12)
    assert brand2[N_BUCKETS + rank_bucket(3)] == pytest.approx(2.0 ** (-(DAY - 8) / hl), rel=1e-12)
    assert np.array(u.taste["brand"]["3"])[rank_bucket(4)] > 0  # shown below the click: taste evidence
    assert sum(u.exposure["brand"].values()) == pytest.approx(3.0, rel=0.01)  # P0..P2 examined; P3..P7 not
    assert u.weight == 1.0 and online["w"].taste["brand"]["2"][N_BUCKETS] > 0  # a purchase adds no taste click
    assert rank_bucket([1, 2, 3, 4, 5, 6, 10, 11, 50]).tolist() == [0, 1, 2, 3, 3, 4, 4, 5, 5]
    # the serialized profile keeps it; two halves merged equal the whole
    back = Profile.loads(u.dumps())
    np.testing.assert_allclose(back.taste["brand"]["2"], u.taste["brand"]["2"], rtol=1e-4)
    first, second = Profile(), Profile()
    for usr, row, e, t, rank, sh in ev:
        if usr == "u":
            apply_event(first if t < T0 + DAY else second, facets, row, f"P{row}", e, t, s, rank, sh)
    merged = merge_profiles(first, second, s)
    np.testing.assert_allclose(merged.taste["brand"]["2"], u.taste["brand"]["2"], rtol=1e-9)
    assert merged.taste_t == u.taste_t


def shopper_events(tmp_path):
    """(an event store over ``facets_of()``'s products, the key of one shopper, an hour ago)."""
    from engine.events import SQLiteEventStore, UserEvents

    facets = facets_of()
    ids = [f"P{i}" for i in range(len(facets))]
    ev = UserEvents(SQLiteEventStore(tmp_path / "e.sqlite"), facets, ids, ProfileSettings(30.0), "key", 3650.0)
    return ev, ev.user_key("shopper", for_write=True), ev.clock() - 3600


def test_a_logged_search_folds_what_it_showed_and_a_linked_click_its_rank(tmp_path):
    from engine.events.impressions import Impression

    ev, key, t = shopper_events(tmp_path)
    shown = ["P0", "P1", "P2", "P3", "P4", "P5"]
    ev.log_impressions(
        [
            Impression("s1", t, key, "q", "q", products=shown, offset=10),
            Impression("s2", t, None, "q", "q", products=shown),  # anonymous: no profile
        ]
    )
    assert ev.profile("shopper") is None  # impressions alone: taste evidence, still a cold user
    prof = ev.store.profile(key)
    assert prof.weight == 0 and len(ev.store.profiles([key, "anon:s2"])) == 1
    b0 = np.array(prof.taste["brand"]["0"])  # P0 at rank 11 and P5 at rank 16: both in the last bucket
    assert b0[N_BUCKETS - 1] == pytest.approx(2.0, rel=1e-3) and b0[N_BUCKETS:].sum() == 0
    ev.append_bulk([key], ["P2"], np.array([2]), ["click"], np.array([t + 5]), ["q"], links=[("s1", 13, None)])
    prof = ev.profile("shopper")
    assert prof.taste["brand"]["2"][N_BUCKETS + rank_bucket(13)] == pytest.approx(1.0, rel=1e-3)
    assert prof.weight == 1.0  # the click shapes the profile as before


def model_for_tests(priors=None):
    e = np.array([1.0, 0.7, 0.55, 0.45, 0.35, 0.25])
    return TasteModel(e, np.full(N_BUCKETS, 0.3), np.array([-2.0, 0.0, 2.0]), np.array([-3.0, -1.0, 0.0]), priors or {})


def test_the_taste_of_a_value_grows_with_evidence_and_shrinks_to_its_prior():
    rng = np.random.default_rng(1)
    m = model_for_tests()
    # a population: most values leave a shopper indifferent, one in five is liked (θ = 1.5)
    n = 4000
    theta = np.where(rng.random(n) < 0.2, 1.5, 0.0)
    counts = np.zeros((n, 2 * N_BUCKETS))
    shows = rng.integers(1, 12, size=n)
    for i in range(n):
        b = rng.integers(0, N_BUCKETS, size=shows[i])
        p = m.examination[b] / (1 + np.exp(-(np.log(0.3 / 0.7) + theta[i])))
        np.add.at(counts[i], b, 1.0)
        np.add.at(counts[i], N_BUCKETS + b, (rng.random(shows[i]) < p).astype(float))
    prior = fit_prior(m.loglik(counts))
    assert prior.sum() == pytest.approx(1.0) and GRID[np.argmax(prior)] < 0.75  # most mass near indifference
    m.priors = {"brand": prior}
    est = m.theta("brand", counts)
    assert est[theta > 0].mean() > est[theta == 0].mean() + 0.3
    liked = np.zeros(2 * N_BUCKETS)
    liked[[1, 2]] = 4.0
    liked[[N_BUCKETS + 1, N_BUCKETS + 2]] = 3.0  # clicked 6 of 8 times at ranks 2-3
    passed = np.zeros(2 * N_BUCKETS)
    passed[0] = 8.0  # shown first 8 times, never clicked
    th = m.theta("brand", np.stack([liked, passed, np.zeros(2 * N_BUCKETS), liked / 4]))
    assert th[0] > th[3] > 0 > th[1] and th[2] == 0.0  # more evidence, surer; nothing shown: the prior's 0
    assert m.theta("price_band", liked[None])[0] == 0.0  # a facet without a prior reads nothing


def test_relevance_logits_invert_beyond_the_knots_and_the_model_round_trips(tmp_path):
    m = model_for_tests({"brand": np.full(len(GRID), 1 / len(GRID))})
    g = np.array([-5.0, -2.0, -0.3, 1.0, 2.0, 7.5])
    x = m.relevance_logit(g)
    assert np.all(np.diff(x) > 0)
    np.testing.assert_allclose(m.score_of_logit(x), g)
    m.save(tmp_path)
    back = TasteModel.load(tmp_path)
    np.testing.assert_allclose(back.relevance_logit(g), x)
    np.testing.assert_allclose(back.priors["brand"], m.priors["brand"])
    assert TasteModel.load(tmp_path / "none") is None
    with pytest.raises(ValueError, match="increasing"):
        TasteModel(m.examination, m.attraction, [0.0, 1.0], [1.0, 0.5])


def test_a_ranker_with_a_taste_model_lifts_the_liked_brand_and_leaves_cold_users_alone(tmp_path):
    from engine.ranker import Ranker

    facets = facets_of(n=10, brands=5)
    rows = np.arange(10)
    X = np.zeros((10, len(FEATURES)))
    X[:, FEATURES.index("ce")] = np.linspace(1.0, 0.0, 10)  # relevance falls with the row
    X[:, FEATURES.index("first_stage")] = np.linspace(1.0, 0.0, 10)
    prior = np.exp(-0.5 * (GRID / 1.0) ** 2)
    ranker = Ranker.mix(0.5)
    ranker.taste = model_for_tests({"brand": prior / prior.sum()})
    ranker.save(tmp_path / "r")
    ranker = Ranker.load(tmp_path / "r")
    assert ranker.taste is not None and ranker.uses_personal
    prof = Profile()
    s = ProfileSettings(30.0)
    for i in range(6):  # brand 4 (rows 4 and 9) clicked at rank 2 six times; brand 0 shown first and passed over
        apply_event(prof, facets, 0, "P0", "impression", T0 + 100 * i, s, 1)
        apply_event(prof, facets, 9, "P9", "impression", T0 + 100 * i + 1, s, 2)
        apply_event(prof, facets, 9, "P9", "click", T0 + 100 * i + 5, s, 2)
    ev = evidence_rows(prof, facets, rows, T0 + 1000, s.taste_half_life)
    full, base = ranker.score(X, 1.0, warm=True, evidence=ev)
    assert np.argsort(-base)[0] == 0
    assert np.argsort(-full).tolist().index(9) < np.argsort(-base).tolist().index(9)  # the liked brand rises
    assert full[0] < base[0] and full[4] > base[4]  # brand 0 passed over falls, brand 4 rises
    np.testing.assert_allclose(full[[1, 2, 3, 6, 7, 8]], base[[1, 2, 3, 6, 7, 8]])  # brands never shown: as they were
    half, _ = ranker.score(X, 0.5, warm=True, evidence=ev)
    np.testing.assert_allclose(half - base, 0.5 * (full - base), atol=1e-12)
    for kw in ({"warm": False, "evidence": ev}, {"warm": True, "evidence": None}):
        np.testing.assert_array_equal(ranker.score(X, 1.0, **kw)[0], base)
    np.testing.assert_array_equal(ranker.score(X, 0.0, warm=True, evidence=ev)[0], base)


class _StubRanker:
    """The non-personal score is the first feature column."""

    def score(self, X, personalize=1.0, warm=True, evidence=None):
        return X[:, 0], X[:, 0]


def simulate_logged(strength: float, n_users=300, sessions=12, seed=0):
    """Logged sessions of 10 shown products: clicks by rank, relevance and (with ``strength``) a liked brand."""
    from finetune.taste_fit import TasteRows

    rng = np.random.default_rng(seed)
    facets = facets_of(n=60, brands=6)
    settings = ProfileSettings(30.0)
    exam = 1.0 / (1.0 + np.arange(10)) ** 0.6
    liked = rng.integers(0, 6, size=n_users)
    plan = sorted((rng.uniform(0, 30 * DAY), u) for u in range(n_users) for _ in range(sessions))
    rows = TasteRows(facets, settings.taste_half_life)
    profiles: dict[str, Profile] = {}
    for i, (t, u) in enumerate(plan):
        shown = rng.choice(60, size=10, replace=False)
        rel = rng.normal(size=10)
        p = exam / (1 + np.exp(-(rel - 1.0 + strength * (facets.brand[shown] == liked[u]))))
        clicked = rng.random(10) < p
        sess = SimpleNamespace(user=f"u{u}", t=T0 + t, shown=shown.tolist(), offset=0, gains={})
        sess.gains = {int(r): 1.0 for r, c in zip(shown, clicked) if c}
        X = np.zeros((10, len(FEATURES)))
        X[:, 0] = rel
        rows(i, sess, SimpleNamespace(rows=shown), X, SimpleNamespace(profiles=profiles))
        prof = profiles.setdefault(f"u{u}", Profile())
        for k, (r, c) in enumerate(zip(shown, clicked)):
            apply_event(prof, facets, int(r), f"P{r}", "impression", T0 + t + k, settings, k + 1, False)
            if c:
                apply_event(prof, facets, int(r), f"P{r}", "click", T0 + t + 20, settings, k + 1)
    return rows, profiles, liked, facets


def test_the_taste_fit_ships_a_model_for_a_real_taste_and_none_without_one():
    from finetune.taste_fit import fit_taste

    rows, profiles, liked, facets = simulate_logged(strength=1.5)
    model, check = fit_taste(_StubRanker(), rows, profiles, 0.2, 1.645)
    assert check["kept"] and "brand" in check["facets"] and check["facet_z"]["brand"] > 3
    assert np.all(np.diff(check["examination"][:5]) < 0)  # examination falls with the rank
    assert model is not None and "brand" in model.priors
    # each user's liked brand reads above the others
    wins = []
    for u in range(50):
        ev = evidence_rows(
            profiles[f"u{u}"], facets, np.arange(6), T0 + 31 * DAY, ProfileSettings(30.0).taste_half_life
        )
        th = model.theta("brand", ev[:, 1])
        wins.append(int(np.argmax(th)) == liked[u])
    assert np.mean(wins) > 0.5  # chance: 1 in 6
    none, check0 = fit_taste(_StubRanker(), *simulate_logged(strength=0.0, seed=1)[:2], 0.2, 1.645)
    assert none is None and not check0["kept"] and check0["facets"] == []


def test_a_shoppers_clicks_and_the_impression_log_folding_their_searches_lose_no_update(tmp_path):
    """The service's impression log folds searches into profiles in its own thread while requests record the same
    shopper's clicks: neither overwrites the other."""
    import threading

    from engine.events.impressions import Impression

    ev, key, t = shopper_events(tmp_path)
    n = 40

    def searches():
        for i in range(n):
            ev.log_impressions([Impression(f"s{i}", t, key, "q", "q", products=["P0", "P1", "P2"])])

    def clicks():
        for _ in range(n):
            ev.append_bulk([key], ["P5"], np.array([5]), ["click"], np.array([t]), ["q"])

    threads = [threading.Thread(target=searches), threading.Thread(target=clicks)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    prof = ev.store.profile(key)
    assert prof.n_events == n and prof.weight == pytest.approx(n)
    assert sum(prof.taste["brand"]["0"]) == pytest.approx(n)  # P0 (brand 0) shown first in every search


def test_a_taste_read_through_the_buckets_spread_of_relevance_is_not_shrunk():
    """Clicks on a value shown at rank 1, where what rank 1 shows varies in relevance: the taste read with that
    spread integrated out (``bucket_attraction``) finds the true θ; read at the bucket's mean relevance it is
    attenuated, as a logistic model that leaves out heterogeneity always is."""
    from finetune.taste_fit import bucket_attraction

    rng = np.random.default_rng(4)
    x = rng.normal(-0.5, 2.0, size=200_000)  # relevance logits of what rank 1 showed
    bucket = np.zeros(len(x), dtype=np.int64)
    e = np.ones(N_BUCKETS)
    spread = TasteModel(e, bucket_attraction(x, bucket), [0.0, 1.0], [0.0, 1.0])
    p0 = (1.0 / (1.0 + np.exp(-x))).mean()
    flat = TasteModel(e, np.full(N_BUCKETS, p0), [0.0, 1.0], [0.0, 1.0])
    # no spread: the table is σ(x + θ) itself
    same = bucket_attraction(np.zeros(10), np.zeros(10, dtype=np.int64))
    assert np.allclose(same[0], 1.0 / (1.0 + np.exp(-GRID)), atol=1e-4)
    # a value liked by θ = 1.5, shown at rank 1 20,000 times: its clicks under the true per-impression model
    shown = rng.choice(x, 20_000)
    clicks = (rng.random(len(shown)) < 1.0 / (1.0 + np.exp(-(shown + 1.5)))).sum()
    counts = np.zeros(2 * N_BUCKETS)
    counts[0], counts[N_BUCKETS] = len(shown), clicks
    mle = {name: GRID[np.argmax(m.loglik(counts))] for name, m in (("spread", spread), ("flat", flat))}
    assert abs(mle["spread"] - 1.5) <= 0.25 and mle["flat"] <= 1.0


def test_the_ranking_reads_the_expected_click_chance_under_the_posteriors():
    from engine.profiles import FACETS
    from engine.taste import posterior

    rng = np.random.default_rng(5)
    prior = np.where(np.isin(np.arange(len(GRID)), (12, 20)), 0.5, 1e-9)  # half indifferent, half liked (θ = 2)
    prior /= prior.sum()
    m = model_for_tests({"brand": prior, "price_band": prior})
    ev = np.zeros((6, len(FACETS), 2 * N_BUCKETS))
    b, pb = FACETS.index("brand"), FACETS.index("price_band")
    ev[:, b, 0] = rng.integers(1, 6, size=6)
    ev[:, b, N_BUCKETS] = rng.integers(0, 2, size=6) * ev[:, b, 0]
    ev[:3, pb, 1] = 3.0
    ev[:3, pb, N_BUCKETS + 1] = [0.0, 1.0, 3.0]
    ev[5] = 0.0  # a candidate the history says nothing about
    x = rng.normal(size=6)
    got = m.expected_logit(x, ev)
    # by hand: the double sum over both facets' posteriors
    post_b, post_p = posterior(m.loglik(ev[:, b]), prior), posterior(m.loglik(ev[:, pb]), prior)
    sig = 1.0 / (1.0 + np.exp(-(x[:, None, None] + GRID[None, :, None] + GRID[None, None, :])))
    p = np.einsum("ni,nj,nij->n", post_b, post_p, sig)
    assert np.allclose(got, np.log(p / (1 - p)), atol=1e-9)
    assert got[5] == x[5]  # no evidence: the relevance logit itself, bit for bit
    # an uncertain taste is worth less than its mean: E[σ(x + θ)] < σ(x + E θ) where x + θ sits above 0
    assert got[4] < x[4] + m.theta("brand", ev[4:5, b])[0] or x[4] + m.theta("brand", ev[4:5, b])[0] < 0
