"""Personalization: events (validation, privacy, concurrency, retention), profiles, point-in-time features,
the learned ranker's personalize knob, cold users and explain."""

import dataclasses
import hashlib
import multiprocessing as mp
import threading
import uuid

import numpy as np
import pytest

from engine import SearchEngine
from engine.events import EventError, PostgresEventStore, PrivacyError, SQLiteEventStore, UserEvents
from engine.features import FEATURES, PERSONAL, StatsTimeline
from engine.profiles import Profile, ProductFacets, ProfileSettings, apply_event, price_bands_of
from core.formats.clicklog import Event

DAY = 86400.0
T0 = 1_767_225_600.0


def tiny_facets(n=6, d=4):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return ProductFacets(
        v,
        np.array([0, 0, 1, 1, -1, 0], dtype=np.int32)[:n],
        np.array([0, 1, 0, 1, 2, 2])[:n].astype(np.int32),
        np.array([3, 3, 4, 4, 3, 4])[:n].astype(np.int32),
        np.array([0, 4, 1, 2, -1, 0])[:n].astype(np.int32),
        "g1",
    )


@pytest.fixture(params=["sqlite", "postgres"])
def store_kind(request):
    """Run a test on the embedded SQLite store and on PostgreSQL (a real server, a fresh schema per test)."""
    if request.param == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        return ("postgres", dsn, f"t{uuid.uuid4().hex[:12]}")
    return ("sqlite", None, None)


def open_test_store(kind, tmp_path):
    if kind is None or kind[0] == "sqlite":
        return SQLiteEventStore(tmp_path / "events.sqlite")
    return PostgresEventStore(kind[1], kind[2] + "_" + hashlib.md5(str(tmp_path).encode()).hexdigest()[:6])


def events_for(tmp_path, key="k", clock=None, retention_days=365.0, kind=None, exposure="shown"):
    facets = tiny_facets()
    ids = [f"P{i}" for i in range(len(facets))]
    kw = {"clock": clock} if clock else {}
    settings = ProfileSettings(30.0, exposure=exposure)
    return UserEvents(open_test_store(kind, tmp_path), facets, ids, settings, key, retention_days, **kw)


# -- events in ---------------------------------------------------------------------------------------------
def test_bad_events_get_a_clear_error(tmp_path, store_kind):
    ev = events_for(tmp_path, kind=store_kind)
    with pytest.raises(EventError, match="product_id.*unknown product 'P99'"):
        ev.record("u1", "P99", "click", T0)
    with pytest.raises(EventError, match="'event'.*'like' is not one of"):
        ev.record("u1", "P1", "like", T0)
    with pytest.raises(EventError, match="timestamp"):
        ev.record("u1", "P1", "click", "yesterday")
    with pytest.raises(EventError, match="user_id.*empty"):
        ev.record("  ", "P1", "click", T0)
    assert ev.store.count_events() == 0


def test_events_are_refused_without_a_key_and_stored_only_hashed(tmp_path):
    with pytest.raises(PrivacyError, match="ECOMSEARCH_USER_KEY"):
        events_for(tmp_path / "a", key=None).record("alice", "P1", "click", T0)
    ev = events_for(tmp_path / "b", key="secret")
    ev.record("alice", "P1", "click", T0, query="耳机")
    raw = (tmp_path / "b" / "events.sqlite").read_bytes() + (tmp_path / "b" / "events.sqlite-wal").read_bytes()
    assert b"alice" not in raw
    other = events_for(tmp_path / "c", key="other")
    assert ev.user_key("alice") != other.user_key("alice") and len(ev.user_key("alice")) == 32


def test_an_event_is_visible_to_the_next_profile_read_and_impressions_do_not_count(tmp_path, store_kind):
    ev = events_for(tmp_path, kind=store_kind)
    ev.record("u1", "P2", "impression", T0)
    assert ev.profile("u1") is None  # nothing engaged with yet: a cold user
    ev.record("u1", "P2", "purchase", T0 + 10)
    p = ev.profile("u1")
    assert p is not None and p.bought == ["P2"] and p.shares("brand") == {"0": 1.0}
    assert ev.stats().counts[2].tolist() == [1, 0, 0, 1]


def _writer(kind, tmp_path, user_prefix, n):
    ev = UserEvents(
        open_test_store(kind, tmp_path), tiny_facets(), [f"P{i}" for i in range(6)], ProfileSettings(30.0), "k"
    )
    for i in range(n):
        ev.record(f"{user_prefix}{i % 3}", f"P{i % 6}", "click", T0 + i)


def test_concurrent_writers_in_threads_and_processes_lose_no_update(tmp_path, store_kind):
    ev = events_for(tmp_path, kind=store_kind)
    threads = [
        threading.Thread(target=lambda: [ev.record(f"u{i % 3}", f"P{i % 6}", "click", T0 + i) for i in range(40)])
        for _ in range(4)
    ]
    procs = [mp.get_context("spawn").Process(target=_writer, args=(store_kind, tmp_path, "u", 40)) for _ in range(2)]
    for t in threads + procs:
        t.start()
    for t in threads + procs:
        t.join()
    assert all(p.exitcode == 0 for p in procs)
    assert ev.store.count_events() == 6 * 40
    assert sum(ev.profile(f"u{j}").n_events for j in range(3)) == 6 * 40


def test_forget_user_leaves_nothing_of_them_in_the_database_file(tmp_path):
    ev = events_for(tmp_path)
    secret_query = "一个非常独特的查询词ZQX"
    for i in range(50):
        ev.record("alice", f"P{i % 6}", "click", T0 + i, query=secret_query)
        ev.record("bob", f"P{i % 6}", "click", T0 + i, query="猫粮")
    alice = ev.user_key("alice").encode()
    assert ev.forget("alice") == 50
    assert ev.profile("alice") is None and ev.profile("bob") is not None
    ev.store.close()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("events.sqlite")]
    raw = b"".join(p.read_bytes() for p in files)
    assert alice not in raw and secret_query.encode() not in raw
    assert ev.user_key("bob").encode() in raw


def test_forget_user_leaves_no_row_of_them_in_postgres(tmp_path, pg_dsn):
    ev = events_for(tmp_path, kind=("postgres", pg_dsn, "forget"))
    for i in range(20):
        ev.record("alice", f"P{i % 6}", "click", T0 + i, query="一个非常独特的查询词ZQX")
        ev.record("bob", f"P{i % 6}", "click", T0 + i, query="猫粮")
    alice = ev.user_key("alice")
    assert ev.forget("alice") == 20
    con = ev.store._con()
    dump = str(con.execute("SELECT * FROM events").fetchall()) + str(con.execute("SELECT * FROM profiles").fetchall())
    assert alice not in dump and "ZQX" not in dump and ev.user_key("bob") in dump
    assert ev.profile("alice") is None and ev.profile("bob") is not None


def test_retention_drops_old_events(tmp_path, store_kind):
    now = [T0 + 60]
    ev = events_for(tmp_path, clock=lambda: now[0], retention_days=365, kind=store_kind)
    ev.record("u1", "P1", "click", T0)
    now[0] = T0 + 400 * DAY  # u1's click is 400 days old now
    ev.record("u2", "P2", "click", T0 + 100 * DAY)
    assert ev.purge() == 1
    assert ev.store.count_events() == 1 and ev.profile("u1") is None and ev.profile("u2") is not None


def test_bulk_ingestion_reports_bad_rows_and_matches_online_profiles(tmp_path, store_kind):
    import json

    log = tmp_path / "clicks.jsonl"
    rows = [
        {
            "user_id": f"u{i % 4}",
            "query": "q",
            "product_id": f"P{i % 6}",
            "event": ["click", "purchase", "impression", "add_to_cart"][i % 4],
            "timestamp": T0 + i * 3600,
        }
        for i in range(40)
    ]
    bad = [
        {"user_id": "u1", "query": "q", "product_id": "P77", "event": "click", "timestamp": T0},
        {"user_id": "u1", "query": "q", "product_id": "P1", "event": "click", "timestamp": "soon"},
        {"user_id": "", "query": "q", "product_id": "P1", "event": "click", "timestamp": T0},
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows[:20] + bad + rows[20:]) + "\n", encoding="utf-8")
    bulk = events_for(tmp_path / "bulk", kind=store_kind)
    with pytest.raises(EventError, match=r"clicks.jsonl:21: field 'product_id'"):
        bulk.ingest(log)
    assert bulk.store.count_events() == 0  # a failed load stores nothing
    rep = bulk.ingest(log, skip_bad_rows=True)
    assert rep.recorded == 40 and [line for line, _ in rep.rejected] == [21, 22, 23]
    assert "timestamp" in rep.rejected[1][1] and "user_id" in rep.rejected[2][1]
    online = events_for(tmp_path / "online", kind=store_kind)
    for r in rows:
        online.record(r["user_id"], r["product_id"], r["event"], r["timestamp"], r["query"])
    for u in ("u0", "u1", "u2", "u3"):
        a, b = bulk.profile(u), online.profile(u)
        if a is None:
            assert b is None
            continue
        assert a.t == b.t and a.n_events == b.n_events and a.bought == b.bought
        np.testing.assert_allclose(a.centroid, b.centroid, rtol=1e-5)
        for f in ("category", "brand", "group", "price_band"):
            assert a.shares(f).keys() == b.shares(f).keys()
            np.testing.assert_allclose(list(a.shares(f).values()), [b.shares(f)[k] for k in a.shares(f)], rtol=1e-6)
            ea, eb = a.exposure.get(f, {}), b.exposure.get(f, {})
            assert ea.keys() == eb.keys()
            np.testing.assert_allclose([ea[k] for k in ea], [eb[k] for k in ea], rtol=1e-6)
        assert a.exposure_t == b.exposure_t and a.exposure_total == pytest.approx(b.exposure_total, rel=1e-9)
        assert a.session_weight == pytest.approx(b.session_weight, rel=1e-9)
        np.testing.assert_allclose(a.session_centroid, b.session_centroid, rtol=1e-5, atol=1e-30)
    np.testing.assert_array_equal(bulk.stats().counts, online.stats().counts)


def test_a_click_log_teaches_profiles_only_what_each_search_surely_showed(tmp_path):
    """personal.exposure: examined — an impression shapes the profile only at or above its search's deepest
    engagement; the product statistics still count every impression."""
    import json

    from engine.events.impressions import examined_in_log

    rows = [("u", "q", "impression", f"P{i}", T0 + i) for i in range(5)]  # one search shows P0..P4
    rows += [("u", "q", "click", "P2", T0 + 10)]  # clicked at rank 3: P0, P1 skipped, P3, P4 unknown
    rows += [("u", "q2", "impression", "P5", T0 + 20)]  # a search without a click: nothing known
    rows += [("u", "q", "impression", "P0", T0 + 7200), ("u", "q", "click", "P0", T0 + 7210)]  # a later search
    assert examined_in_log(*zip(*rows)) == [True, True, True, False, False, True, False, True, True]
    log = tmp_path / "clicks.jsonl"
    log.write_text(
        "\n".join(json.dumps(dict(zip(("user_id", "query", "event", "product_id", "timestamp"), r))) for r in rows),
        encoding="utf-8",
    )
    examined = events_for(tmp_path / "a", exposure="examined")
    shown = events_for(tmp_path / "b", exposure="shown")
    for ev in (examined, shown):
        ev.ingest(log)
    a, b = examined.profile("u"), shown.profile("u")
    assert a.exposure_total == pytest.approx(4.0, rel=0.01) and b.exposure_total == pytest.approx(7.0, rel=0.01)
    np.testing.assert_array_equal(examined.stats().counts, shown.stats().counts)  # every impression counted
    examined.record("u", "P5", "impression", T0 + 7300)  # alone, an impression shapes no profile
    assert examined.profile("u").exposure_total == pytest.approx(a.exposure_total)


# -- profiles ----------------------------------------------------------------------------------------------
def test_profile_weights_decay_with_the_half_life_and_affinities_are_capped():
    facets = tiny_facets()
    s = ProfileSettings(half_life_days=10, affinity_cap=1)
    p = Profile()
    apply_event(p, facets, 0, "P0", "click", T0, s)
    apply_event(p, facets, 1, "P1", "click", T0 + 10 * DAY, s)  # one half-life later: the first counts 0.5
    assert p.weight == pytest.approx(1.5)
    np.testing.assert_allclose(p.centroid, 0.5 * facets.vectors[0] + facets.vectors[1], rtol=1e-6)
    assert p.affinities["brand"] == {"1": 1.0}  # capped at one value: brand 0 (0.5) dropped
    assert p.strength(T0 + 20 * DAY, s.half_life) == pytest.approx(0.75)
    late = Profile(**{**p.__dict__, "affinities": {k: dict(v) for k, v in p.affinities.items()}})
    apply_event(late, facets, 2, "P2", "click", T0, s)  # an old event arriving late counts at its age
    assert late.weight == pytest.approx(2.0) and late.t == p.t
    # an impression adds exposure only: the engagement side (weight, time, centroid, affinities) is unchanged
    before = (p.weight, p.t, p.centroid.copy(), {k: dict(v) for k, v in p.affinities.items()}, p.n_events)
    assert apply_event(p, facets, 3, "P3", "impression", T0 + 11 * DAY, s) is True
    assert (p.weight, p.t, p.affinities, p.n_events) == (before[0], before[1], before[3], before[4])
    np.testing.assert_array_equal(p.centroid, before[2])
    assert p.exposure_total == 1.0 and p.exposure["brand"] == {str(facets.brand[3]): 1.0}
    apply_event(p, facets, 3, "P3", "impression", T0 + 21 * DAY, s)  # one half-life later: the first counts 0.5
    assert p.exposure_total == pytest.approx(1.5) and p.exposure_t == T0 + 21 * DAY
    assert apply_event(p, facets, 3, "P3", "no_such_gain", T0 + 22 * DAY, s) is False


def test_the_in_session_profile_counts_the_last_minutes_and_fades_within_hours():
    from engine.features import personal_features
    from engine.profiles_bulk import build_profiles, merge_profiles

    facets, s = tiny_facets(), ProfileSettings(half_life_days=30, session_minutes=30)
    p = Profile()
    for i in range(10):  # a long history on product 0, days ago
        apply_event(p, facets, 0, "P0", "purchase", T0 + i * DAY, s)
    now = T0 + 12 * DAY
    apply_event(p, facets, 1, "P1", "click", now - 60, s)  # this session: product 1, a minute ago
    X = personal_features(np.array([0, 1]), p, facets, now, s.half_life, None, s.session_half_life)
    long, sess, strength = (X[:, PERSONAL.index(f)] for f in ("centroid_cos", "session_cos", "session"))
    assert long[0] > long[1]  # the long history is about product 0 ...
    assert sess[1] > sess[0] and sess[1] == pytest.approx(1.0, abs=1e-5)  # ... the session about product 1
    assert strength[0] == pytest.approx(np.log1p(2 ** (-60 / 1800)), rel=1e-6)
    later = personal_features(np.array([0, 1]), p, facets, now + 6 * 3600, s.half_life, None, s.session_half_life)
    assert not later[:, [PERSONAL.index("session_cos"), PERSONAL.index("session")]].any()  # the session is over
    assert later[0, PERSONAL.index("centroid_cos")] == pytest.approx(long[0])  # the long profile stays
    # a profile stored and read back, and one merged from two halves built in bulk, keep the session part
    q = Profile.loads(p.dumps())
    assert q.session_weight == p.session_weight
    np.testing.assert_array_equal(q.session_centroid, p.session_centroid)
    rows = np.array([0] * 10 + [1])
    ts = np.array([T0 + i * DAY for i in range(10)] + [now - 60])
    codes = np.array([3] * 10 + [1])
    names = ("impression", "click", "add_to_cart", "purchase")
    half = [
        build_profiles(
            np.array(["u"] * len(rows[sl])), rows[sl], [f"P{r}" for r in rows[sl]], codes[sl], ts[sl], facets, s, names
        )
        for sl in (slice(0, 6), slice(6, None))
    ]
    m = merge_profiles(half[0]["u"], half[1]["u"], s)
    assert m.session_weight == pytest.approx(p.session_weight, rel=1e-9)
    np.testing.assert_allclose(m.session_centroid, p.session_centroid, rtol=1e-5)


def test_a_users_own_click_rate_on_a_brand_corrects_for_what_they_were_shown():
    from engine.features import personal_features

    facets, s = tiny_facets(), ProfileSettings(half_life_days=30)
    p = Profile()
    for i in range(10):  # brand 0 (row 0) shown ten times, clicked once; brand 1 (row 1) shown once, clicked once
        apply_event(p, facets, 0, "P0", "impression", T0 + i, s)
    apply_event(p, facets, 0, "P0", "click", T0 + 20, s)
    apply_event(p, facets, 1, "P1", "impression", T0 + 30, s)
    apply_event(p, facets, 1, "P1", "click", T0 + 40, s)
    X = personal_features(np.array([0, 1, 4]), p, facets, T0 + 50, s.half_life)
    aff, ctr = X[:, PERSONAL.index("brand_aff")], X[:, PERSONAL.index("brand_ctr")]
    assert aff[0] == pytest.approx(aff[1], rel=1e-4)  # one click each: engagement shares cannot tell them apart
    assert ctr[1] > 1.0 > ctr[0]  # given what was shown, brand 1 is chosen, brand 0 passed over
    assert ctr[2] == pytest.approx(1.0, abs=1e-3)  # brand 2, never shown: the user's average
    # smoothing: rate 2/11, brand 0 (1 + 3 r) / (10 + 3) / r
    r = 2 / 11
    assert ctr[0] == pytest.approx((1 + 3 * r) / 13 / r, rel=1e-3)
    clicks_only = Profile()
    apply_event(clicks_only, facets, 0, "P0", "click", T0, s)  # no impressions known: the rates are 0
    assert not personal_features(np.array([0, 1]), clicks_only, facets, T0, s.half_life)[
        :, [PERSONAL.index(f"{f}_ctr") for f in ("category", "brand", "group", "price_band")]
    ].any()


def _logged_data(rng, n_sessions=600, personal_effect=1.0, shown=10):
    """Logged sessions: clicks follow ce, position bias and (scaled by ``personal_effect``) brand_ctr."""
    from finetune.ranker_sessions import Dataset

    n = n_sessions * shown
    X = np.zeros((n, len(FEATURES)))
    X[:, FEATURES.index("ce")] = rng.normal(size=n)
    X[:, FEATURES.index("brand_ctr")] = rng.gamma(2.0, 0.5, size=n)
    X[:, FEATURES.index("history")] = 1.0
    pos = np.tile(np.arange(shown, dtype=float), n_sessions)
    logit = (
        X[:, FEATURES.index("ce")] + personal_effect * 1.5 * np.log(X[:, FEATURES.index("brand_ctr")]) - 0.4 * pos - 1.0
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return Dataset(X, y, np.full(n_sessions, shown), list(range(n_sessions)), pos)


def test_validation_rows_are_shuffled_within_their_sessions_only():
    data = _logged_data(np.random.default_rng(3), n_sessions=30)
    sh = data.shuffled(0)
    assert sh.groups.tolist() == data.groups.tolist() and not np.array_equal(sh.position, data.position)
    for i in range(30):
        a, b = slice(10 * i, 10 * i + 10), slice(10 * i, 10 * i + 10)
        assert sorted(sh.position[b]) == sorted(data.position[a]) and sorted(sh.y[b]) == sorted(data.y[a])
    order = np.lexsort((data.position, np.repeat(np.arange(30), 10)))
    np.testing.assert_array_equal(sh.X[np.lexsort((sh.position, np.repeat(np.arange(30), 10)))], data.X[order])


def test_the_logged_position_is_learned_and_is_a_constant_at_serving(tmp_path):
    from engine.ranker import Ranker
    from finetune.ranker_fit import fit
    from core.config import RankerTrainConfig

    data = _logged_data(np.random.default_rng(1), personal_effect=0.0)
    train, valid = data.split(500)
    valid = valid.shuffled()
    feats = ["ce", "bm25_score"]
    booster, _ = fit(train, valid, RankerTrainConfig(num_rounds=60, early_stopping=60), feats, progress=False)
    assert booster.feature_name() == feats + ["position"]
    Z = np.column_stack([np.zeros(10), np.zeros(10), np.arange(10.0)])
    assert (np.diff(booster.predict(Z)) <= 0).all() and booster.predict(Z)[0] > booster.predict(Z)[-1]
    Ranker(booster, booster.feature_name(), {}).save(tmp_path / "r")
    ranker = Ranker.load(tmp_path / "r")
    X = np.zeros((5, len(FEATURES)))
    X[:, FEATURES.index("ce")] = [2.0, -1.0, 0.5, 1.0, -2.0]
    score, _ = ranker.score(X)
    np.testing.assert_allclose(score, booster.predict(np.column_stack([X[:, [0, 3]], np.zeros(5)])))
    assert np.argsort(-score).tolist() == [0, 3, 2, 1, 4]  # ce alone orders them


def test_the_staged_ranker_keeps_a_personal_boost_only_when_held_out_sessions_confirm_it(tmp_path):
    from engine.ranker import Ranker
    from finetune.ranker_personal import fit_staged, personal_gain
    from core.config import RankerTrainConfig

    tcfg = RankerTrainConfig(num_rounds=80, early_stopping=20)
    feats = ["ce", "bm25_score", "brand_ctr", "history"]
    results = {}
    for effect in (1.0, 0.0):
        train, valid = _logged_data(np.random.default_rng(2), n_sessions=1500, personal_effect=effect).split(1200)
        valid = valid.shuffled()
        g, h, *_ = fit_staged(train, valid, tcfg, feats, progress=False)
        assert "brand_ctr" not in g.feature_name() and set(h.feature_name()) == {"brand_ctr", "history"}
        results[effect] = (g, h, personal_gain(g, h, valid))
    assert results[1.0][2]["z"] >= 3 and results[0.0][2]["z"] <= 1  # a real taste is sure, none is noise
    g, h, _ = results[1.0]
    Ranker(g, g.feature_name(), {}, h, h.feature_name(), 0.9).save(tmp_path / "r")
    ranker = Ranker.load(tmp_path / "r")
    assert (tmp_path / "r" / "personal.txt").is_file() and ranker.uses_personal and ranker.personal_scale == 0.9
    X = np.zeros((6, len(FEATURES)))
    X[:, FEATURES.index("ce")] = 0.5
    X[:, FEATURES.index("history")] = 1.0
    X[:, FEATURES.index("brand_ctr")] = [0.2, 0.5, 1.0, 1.5, 2.5, 4.0]
    full, base = ranker.score(X, 1.0)
    assert np.ptp(base) == 0 and np.argsort(-full).tolist() == [5, 4, 3, 2, 1, 0]
    half, _ = ranker.score(X, 0.5)
    np.testing.assert_allclose(half - base, 0.5 * (full - base))
    H = X[:, [FEATURES.index(f) for f in h.feature_name()]]
    cold = np.zeros_like(H)
    np.testing.assert_allclose(full - base, 0.9 * (h.predict(H) - h.predict(cold)))  # the vouched-for share
    np.testing.assert_array_equal(ranker.score(X, 1.0, warm=False)[0], base)


def test_cross_validation_sees_a_weak_taste_that_one_held_out_slice_misses():
    """A weak personal effect: the last 15% of 1,000 sessions cannot tell it from noise, five folds over all of
    them can (and still refuse a booster where there is no effect), and the booster is fitted on every session
    with the number of trees the folds chose."""
    from finetune.ranker_fit import fit_base
    from finetune.ranker_personal import fit_personal_cv, personal_gain, fit_staged
    from core.config import RankerTrainConfig

    tcfg = RankerTrainConfig(num_rounds=60, early_stopping=20)
    feats = ["ce", "bm25_score", "brand_ctr", "history"]
    checks = {}
    for effect in (0.35, 0.0):
        data = _logged_data(np.random.default_rng(5), n_sessions=1000, personal_effect=effect)
        train, valid = data.split(850)
        valid = valid.shuffled()
        g, h, *_ = fit_staged(train, valid, tcfg, feats, progress=False)
        held_out = personal_gain(g, h, valid)
        g, _, _ = fit_base(train, valid, tcfg, ["ce", "bm25_score"], progress=False)
        h, curve, cv = fit_personal_cv(g, data, tcfg, ["brand_ctr", "history"])
        assert cv["sessions"] == 1000 and cv["folds"] == 5 and 1 <= cv["trees"] <= 60 and len(curve) == 60
        assert h.current_iteration() == cv["trees"]
        checks[effect] = (held_out["z"], cv["z"])
    assert checks[0.35][0] < 1.645 < checks[0.35][1]  # one slice misses the taste, five folds see it
    assert checks[0.0][1] < 1.645  # and no taste is still none


def test_price_bands_are_quantiles_within_each_category():
    prices = np.array([10, 20, 30, 40, 50, 1000, 2000, np.nan])
    cats = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    bands = price_bands_of(prices, cats, 5)
    assert bands[:5].tolist() == [0, 1, 2, 3, 4] and bands[5] < bands[6] and bands[7] == -1


# -- point in time -----------------------------------------------------------------------------------------
def test_product_counts_and_profiles_use_only_events_before_the_query_time():
    from finetune.ranker_sessions import EventArrays, PointInTime

    rows = np.array([2, 2, 2, 5, 2])
    codes = np.array([0, 1, 0, 1, 3])
    ts = np.array([T0, T0 + 1, T0 + 2, T0 + 2, T0 + 3])
    tl = StatsTimeline(rows, codes, ts, 6)
    assert tl.at(np.array([2, 5, 0]), T0 + 2).tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert tl.at(np.array([2]), T0 + 100).tolist() == [[2, 1, 0, 1]]
    assert tl.at(np.array([2]), T0 - 5).tolist() == [[0, 0, 0, 0]]
    events = [
        Event("u", "q", f"P{r}", ["impression", "click", "add_to_cart", "purchase"][c], t)
        for r, c, t in zip(rows, codes, ts)
    ]
    pit = PointInTime(
        EventArrays.from_events(events, {f"P{i}": i for i in range(6)}), tiny_facets(), ProfileSettings(30.0)
    )
    assert "u" not in pit.profiles_at(T0 + 1) or pit.profiles_at(T0 + 1)["u"].n_events == 0
    assert pit.profiles_at(T0 + 2)["u"].n_events == 1  # the click at T0+1, not the one at T0+2
    assert pit.profiles_at(T0 + 3.5)["u"].bought == ["P2"]


def test_ranker_training_sessions_never_see_their_own_or_later_clicks(job_cfg, trained):
    """Each session's personal features equal those computed from the events strictly before it."""
    from engine.features import personal_features
    from core.formats.clicklog import read_clicklog
    from finetune.ranker_sessions import EventArrays, PointInTime, sessions_from_events

    eng = SearchEngine.from_config(job_cfg)
    row_of = eng.user_events().row_map()
    events = [e for e in read_clicklog(job_cfg.finetune.train)][:6000]
    settings = ProfileSettings(30.0)
    sessions = sessions_from_events(events, row_of, {"click": 1, "add_to_cart": 2, "purchase": 3})
    pit = PointInTime(EventArrays.from_events(events, row_of), eng.facets(), settings)
    checked = 0
    for s in sessions[200:260]:
        prof = pit.profiles_at(s.t).get(s.user)
        fresh = Profile()
        for e in sorted(events, key=lambda e: e.timestamp):
            if e.user_id == s.user and e.timestamp < s.t:
                apply_event(fresh, eng.facets(), row_of[e.product_id], e.product_id, e.event, e.timestamp, settings)
        rows = np.array(sorted(s.gains) or [0])
        a = personal_features(rows, prof if prof and prof.weight > 0 else None, eng.facets(), s.t, settings.half_life)
        b = personal_features(rows, fresh if fresh.weight > 0 else None, eng.facets(), s.t, settings.half_life)
        np.testing.assert_allclose(a, b, atol=1e-6)
        checked += prof is not None and prof.weight > 0
    assert checked > 10


# -- the engine: cold users, the knob, explain -------------------------------------------------------------
def _brand_ranker(tmp_path):
    """A LightGBM ranker trained on synthetic rows whose label follows the brand affinity and the ce score."""
    import lightgbm as lgb

    from engine.ranker import Ranker

    rng = np.random.default_rng(0)
    n, g = 4000, 20
    X = np.zeros((n, len(FEATURES)))
    X[:, FEATURES.index("ce")] = rng.normal(size=n)
    X[:, FEATURES.index("brand_aff")] = rng.random(n) * (rng.random(n) < 0.5)
    y = (X[:, FEATURES.index("ce")] + 3 * X[:, FEATURES.index("brand_aff")] > 1.5).astype(int)
    feats = ["ce", "bm25_score", "dense_score", "brand_aff", "category_aff", "centroid_cos"]
    cols = [FEATURES.index(f) for f in feats]
    booster = lgb.train(
        {"objective": "lambdarank", "verbosity": -1, "min_data_in_leaf": 20, "num_threads": 1},
        lgb.Dataset(X[:, cols], y, group=[g] * (n // g)),
        num_boost_round=30,
    )
    Ranker(booster, feats, {"note": "test"}).save(tmp_path / "ranker")
    return tmp_path / "ranker"


@pytest.fixture(scope="module")
def personal_engine(job_cfg, trained, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("personal")
    cfg = dataclasses.replace(
        job_cfg,
        rerank=dataclasses.replace(job_cfg.rerank, ranker=str(_brand_ranker(tmp))),
        personal=dataclasses.replace(job_cfg.personal, user_key="test-key", path=tmp / "events.sqlite"),
    )
    return SearchEngine.from_config(cfg)


def _brand_of(eng, hit):
    return eng.products.brand_codes[eng.products.row_of(hit.product_id)]


def test_cold_users_get_exactly_the_non_personalized_ranking(personal_engine):
    eng = personal_engine
    eng.record_event("only-looked", eng.products.ids[3], "impression")
    base = eng.query("蓝牙耳机", k=20)
    for kw in ({"user_id": None}, {"user_id": "never-seen"}, {"user_id": "only-looked"}):
        assert [(h.product_id, h.score) for h in eng.query("蓝牙耳机", k=20, **kw)] == [
            (h.product_id, h.score) for h in base
        ]


def test_the_personalize_knob_scales_the_personal_contribution(personal_engine):
    eng = personal_engine
    q = "耳机"
    base = eng.query(q, k=30)
    # the user buys the brand of the 20th hit: personalized, its products move up
    target = _brand_of(eng, base[19])
    rows = np.flatnonzero(eng.products.brand_codes == target)[:5]
    for r in rows:
        eng.record_event("fan", eng.products.ids[int(r)], "purchase")
    off = eng.query(q, k=30, user_id="fan", personalize=0.0)
    half = eng.query(q, k=30, user_id="fan", personalize=0.5)
    full = eng.query(q, k=30, user_id="fan", personalize=1.0)
    assert [h.product_id for h in off] == [h.product_id for h in base]
    share = lambda hits: np.mean([_brand_of(eng, h) == target for h in hits[:10]])  # noqa: E731
    assert share(full) > share(base)
    assert share(base) <= share(half) <= share(full)
    # the page's badge: hits the shopper's history ranked higher than they rank for nobody, and only those
    lifted = [h for h in full if h.personalized]
    base_rank = {h.product_id: h.rank for h in base}
    assert lifted and all(base_rank.get(h.product_id, 99) > h.rank for h in lifted)
    assert any(_brand_of(eng, h) == target for h in lifted) and lifted[0].to_dict()["personalized"] is True
    assert not any(h.personalized for h in off) and not any(h.personalized for h in base)
    with pytest.raises(ValueError, match="personalize"):
        eng.query(q, user_id="fan", personalize=1.5)


def test_explain_gives_each_hit_its_stage_scores_and_personal_features(personal_engine):
    eng = personal_engine
    hits = eng.query("耳机", k=5, user_id="fan", explain=True)
    for h in hits:
        e = h.explain
        assert set(e["stages"]) == {"bm25", "dense"} and all("rank" in v for v in e["stages"].values())
        assert set(e["personal"]) == set(PERSONAL) and e["ranker"] == "lightgbm"
        assert e["final_score"] == pytest.approx(h.score, rel=1e-6)
    assert any(h.explain["personal"]["brand_aff"] > 0 for h in hits)
    assert all(h.explain is None for h in eng.query("耳机", k=5))


def test_the_engine_records_validates_and_forgets(personal_engine):
    eng = personal_engine
    with pytest.raises(EventError, match="unknown product"):
        eng.record_event("fan", "NOPE", "click")
    eng.record_event("leaver", eng.products.ids[0], "click")
    assert eng.profile("leaver") is not None
    assert eng.forget_user("leaver") == 1 and eng.profile("leaver") is None


def test_the_dense_index_stores_product_vectors_and_kmeans_groups(job_cfg, trained):
    from indexer.dense import n_groups

    eng = SearchEngine.from_config(job_cfg)
    _, dense = eng.dense_stage("dense")
    n = len(eng.products)
    assert dense.vectors.shape[0] == n and dense.groups.shape == (n,)
    k = n_groups(n)
    assert dense.group_centroids.shape[0] == k and set(np.unique(dense.groups)) <= set(range(k))
    v = np.asarray(dense.vectors, dtype=np.float32)
    sims = v @ dense.group_centroids.T
    assert (sims.argmax(axis=1) == dense.groups).mean() > 0.99  # each product sits in its nearest group
    fac = eng.facets()
    assert (fac.group == dense.groups).all() and (fac.price_band >= 0).all() and fac.price_band.max() == 4


def test_the_ingest_command_loads_a_click_log_and_lists_bad_rows(job_cfg, trained, tmp_path, monkeypatch, capsys):
    import json

    import yaml

    from engine.events_cli import main as events_main

    cfg_file = tmp_path / "t.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "root": str(job_cfg.root),
                "catalog": {"path": str(job_cfg.catalog.path)},
                "index_dir": str(job_cfg.index_dir),
                "text": {"unknown_word_ngrams": 1},
                "dense": {"model": job_cfg.dense.model, "base_model": job_cfg.dense.base_model, "max_length": 64},
                "search": {"stages": ["bm25", "dense"]},
                "personal": {"path": str(tmp_path / "ev.sqlite")},
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    log = tmp_path / "clicks.jsonl"
    ids = SearchEngine.from_config(job_cfg, load_models=False).products.ids
    good = [
        {"user_id": "a", "query": "q", "product_id": ids[i], "event": "click", "timestamp": 1_767_225_600 + i}
        for i in range(5)
    ]
    bad = {"user_id": "a", "query": "q", "product_id": ids[0], "event": "wishlist", "timestamp": 1_767_225_600}
    log.write_text("\n".join(json.dumps(r) for r in good + [bad]) + "\n", encoding="utf-8")
    monkeypatch.delenv("ECOMSEARCH_USER_KEY", raising=False)
    assert events_main(["ingest", str(log), "--config", str(cfg_file), "--skip-bad-rows"]) == 2
    assert "ECOMSEARCH_USER_KEY" in capsys.readouterr().err
    monkeypatch.setenv("ECOMSEARCH_USER_KEY", "k")
    assert events_main(["ingest", str(log), "--config", str(cfg_file)]) == 2
    assert "clicks.jsonl:6: field 'event'" in capsys.readouterr().err
    assert events_main(["ingest", str(log), "--config", str(cfg_file), "--skip-bad-rows"]) == 0
    captured = capsys.readouterr()
    assert "5 events recorded for 1 users, 1 rejected" in captured.out and "wishlist" in captured.err


def test_logged_sessions_train_on_what_was_shown_and_judged_ones_on_every_candidate(job_cfg, trained):
    from finetune.ranker_sessions import Session, build_dataset, candidate_cache

    eng = SearchEngine.from_config(job_cfg)
    q = "华为 手机"
    cands = candidate_cache(eng, [q], progress=False)
    rows = cands[q].rows
    shown = [int(r) for r in rows[:8]]
    logged = Session("u", q, T0, {shown[2]: 1.0}, shown)
    judged = Session(None, q, 0.0, {int(rows[5]): 1.0})
    never_clicked = Session("u", q, T0, {}, shown)
    data = build_dataset(eng, [logged, judged, never_clicked], None, cands, 20.0, progress=False)
    assert data.sessions == [0, 1] and data.groups.tolist() == [8, len(rows)]
    assert data.y[:8].tolist() == [0, 0, 1, 0, 0, 0, 0, 0] and data.y[8:].sum() == 1


def test_a_ranker_trained_on_another_cross_encoder_is_refused(job_cfg, trained, tmp_path):
    import json
    import shutil

    from engine.models import ModelMismatchError

    ranker = tmp_path / "ranker"
    shutil.copytree(job_cfg.finetune.out_dir / "ranker", ranker)
    card = json.loads((ranker / "model_card.json").read_text())
    assert card["cross_encoder"]["fingerprint"]  # the job records what it trained on
    assert (
        SearchEngine.from_config(
            dataclasses.replace(job_cfg, rerank=dataclasses.replace(job_cfg.rerank, ranker=str(ranker)))
        ).ranker()
        is not None
    )
    card["cross_encoder"]["fingerprint"] = "0" * 16
    (ranker / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelMismatchError, match="retrain"):
        SearchEngine.from_config(
            dataclasses.replace(job_cfg, rerank=dataclasses.replace(job_cfg.rerank, ranker=str(ranker)))
        )


def test_the_config_chooses_the_event_store_and_postgres_needs_a_dsn(tmp_path, pg_dsn, monkeypatch):
    from conftest import make_config
    from engine.events import open_store
    from core.config import ConfigError

    cat = tmp_path / "c.jsonl"
    cat.write_text('{"id": "P1", "title": "耳机"}\n', encoding="utf-8")
    monkeypatch.delenv("ECOMSEARCH_PG_DSN", raising=False)
    with pytest.raises(ConfigError, match="personal.store postgres needs personal.dsn"):
        make_config(tmp_path, cat, personal={"store": "postgres"})
    with pytest.raises(ConfigError, match="not built in"):
        make_config(tmp_path, cat, personal={"store": "mongo"})
    cfg = make_config(tmp_path, cat, personal={"store": "postgres", "dsn": pg_dsn, "pg_schema": "cfgtest"})
    store = open_store(cfg.personal)
    assert isinstance(store, PostgresEventStore) and store.schema == "cfgtest"
    store.close()
    assert isinstance(open_store(make_config(tmp_path, cat).personal), SQLiteEventStore)


def test_cross_validation_folds_keep_every_session_whole():
    from finetune.ranker_fit import session_folds

    groups = np.array([3, 1, 4, 2, 5, 2, 3])
    folds = session_folds(groups, 3, seed=1)
    session = np.repeat(np.arange(len(groups)), groups)
    tests = [te for _, te in folds]
    assert sorted(np.concatenate(tests).tolist()) == list(range(groups.sum()))  # each row tested exactly once
    for tr, te in folds:
        assert len(te) and not set(tr) & set(te) and len(tr) + len(te) == groups.sum()
        assert not set(session[tr]) & set(session[te])  # no session split across train and test
    assert [te.tolist() for _, te in session_folds(groups, 3, seed=1)] == [te.tolist() for te in tests]
    with pytest.raises(ValueError, match="folds"):
        session_folds(groups, 8)


def test_cross_validation_chooses_the_rounds_and_fits_every_session():
    from finetune.ranker_fit import fit_cv
    from finetune.ranker_sessions import Dataset
    from core.config import RankerTrainConfig

    rng = np.random.default_rng(0)
    n_sessions, per = 300, 8
    n = n_sessions * per
    X = np.zeros((n, len(FEATURES)))
    X[:, FEATURES.index("ce")] = rng.normal(size=n)
    X[:, FEATURES.index("bm25_score")] = rng.normal(size=n)  # noise
    y = np.zeros(n)
    best = X[:, FEATURES.index("ce")].reshape(n_sessions, per).argmax(1) + np.arange(n_sessions) * per
    y[best] = 1.0
    data = Dataset(X, y, np.full(n_sessions, per), list(range(n_sessions)))
    tcfg = RankerTrainConfig(num_rounds=300, early_stopping=10, cv_folds=4, min_data_in_leaf=20)
    booster, curve = fit_cv(data, tcfg, ["ce", "bm25_score"])
    assert booster.current_iteration() == len(curve) < 300  # stopped where the folds' mean peaked
    assert int(np.argmax(curve)) == len(curve) - 1 and curve[-1] > 0.9
    Z = np.column_stack([np.linspace(-2, 2, 9), np.zeros(9)])
    assert (np.diff(booster.predict(Z)) >= 0).all() and booster.predict(Z)[-1] > booster.predict(Z)[0]
