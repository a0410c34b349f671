"""SearchEngine.recommend: similar, bought together, for you, trending — on the tiny demo catalog."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from core.config import RecsConfig
from engine.recommend import RecommendError
from engine.search import SearchEngine
from finetune.recs import build_and_save

DAY = 86400.0


def _rows_of(eng, category: str) -> np.ndarray:
    p = eng.products
    return np.flatnonzero(p.category_codes == p.categories.index(category))


def _basket_events(eng, phones, cases, n_users: int = 60):
    """Shoppers who buy phone i and then case i (a complement), and browse two phones in one visit."""
    users, rows, events, ts = [], [], [], []
    t = time.time() - 30 * DAY
    for u in range(n_users):
        i = u % len(phones)
        for r, e, dt in (
            (phones[i], "click", 0),
            (phones[(i + 1) % len(phones)], "click", 60),
            (phones[i], "purchase", 120),
            (cases[i], "add_to_cart", 400),
            (cases[i], "purchase", 500),
        ):
            users.append(f"s{u}"), rows.append(int(r)), events.append(e), ts.append(t + u * 3600 + dt)
    return users, rows, events, ts


@pytest.fixture(scope="module")
def rec_engine(job_cfg, trained, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recs")
    cfg = dataclasses.replace(
        job_cfg,
        personal=dataclasses.replace(job_cfg.personal, user_key="test-key", path=tmp / "events.sqlite"),
        recs=RecsConfig(models=tmp / "recs", min_baskets=10, factors=8, iterations=5, trending_refresh_seconds=3600),
    )
    eng = SearchEngine.from_config(cfg)
    phones, cases = _rows_of(eng, "手机")[:4], _rows_of(eng, "手机壳")[:4]
    p = eng.products
    build_and_save(
        cfg.recs.models,
        p.ids.tolist(),
        *_basket_events(eng, phones, cases),
        cfg.recs,
        categories=(p.category_codes, p.categories),
    )
    return eng, phones, cases


def test_similar_is_content_plus_behaviour_and_never_the_product_or_its_title(rec_engine):
    eng, phones, _ = rec_engine
    pid = eng.products.ids[int(phones[0])]
    res = eng.recommend("similar", product_id=pid, k=8, explain=True)
    assert res.source == "behaviour + content" and len(res) == 8
    titles = [h.title for h in res]
    assert pid not in [h.product_id for h in res] and eng.products.titles[int(phones[0])] not in titles
    assert len(set(titles)) == len(titles)
    assert {"dense", "bm25", "behaviour"} <= set(res[0].explain)
    assert eng.products.ids[int(phones[1])] in [h.product_id for h in res]  # browsed in the same visits
    brand = eng.products.brands[eng.products.brand_codes[int(phones[0])]]
    only = eng.recommend("similar", product_id=pid, k=5, filters={"brand": brand})
    assert len(only) and all(
        eng.products.brands[eng.products.brand_codes[eng.products.row_of(h.product_id)]] == brand for h in only
    )


def test_bought_together_finds_the_complement_and_falls_back_in_the_open(rec_engine):
    eng, phones, cases = rec_engine
    res = eng.recommend("bought_together", product_id=eng.products.ids[int(phones[2])], k=5, explain=True)
    assert res.source == "bought together" and res[0].product_id == eng.products.ids[int(cases[2])]
    # a product with no pairs of its own: the pairs of its most similar products, or trending elsewhere
    other = int(_rows_of(eng, "手机")[-1])
    res = eng.recommend("bought_together", product_id=eng.products.ids[other], k=5)
    assert res.source.startswith("fallback:")
    strict = dataclasses.replace(eng.cfg.recs, min_baskets=10_000)
    from engine.recommend import Recommender

    rec = Recommender(eng.version, eng.recommender().models, strict)
    scores, _, source = rec.bought_together(int(phones[2]), np.ones(len(eng.products), dtype=bool))
    assert "too few baskets" in source
    cats = eng.products.category_codes
    assert (cats[scores["rows"]] != cats[int(phones[2])]).all()  # never the product's own category


def test_for_you_follows_the_users_newest_click_and_forgetting_resets_it(rec_engine):
    eng, phones, cases = rec_engine
    cold = eng.recommend("for_you", user_id="newcomer", k=5)
    assert cold.source.startswith("fallback: trending") and len(cold) == 5
    earphones = _rows_of(eng, "耳机")
    eng.record_event("fan", eng.products.ids[int(earphones[0])], "click", query="蓝牙耳机")
    first = eng.recommend("for_you", user_id="fan", k=5)
    assert first.source.startswith("for you") and first.hits != cold.hits
    cats = eng.products.category_codes
    assert cats[eng.products.row_of(first[0].product_id)] == cats[int(earphones[0])]
    eng.record_event("fan", eng.products.ids[int(phones[2])], "purchase", query="手机")
    second = eng.recommend("for_you", user_id="fan", k=5)
    assert [h.product_id for h in second] != [h.product_id for h in first]  # the next call sees the new event
    assert eng.products.ids[int(cases[2])] in [h.product_id for h in second]  # and what goes with it
    assert eng.products.ids[int(phones[2])] not in [h.product_id for h in second]  # phones are bought once
    eng.forget_user("fan")
    gone = eng.recommend("for_you", user_id="fan", k=5)
    assert gone.source.startswith("fallback: trending") and "paused" in gone.source  # models built before
    p = eng.products  # a build after the forget serves again (the other tests read the built models)
    build_and_save(
        eng.cfg.recs.models,
        p.ids.tolist(),
        *_basket_events(eng, phones, cases),
        eng.cfg.recs,
        categories=(p.category_codes, p.categories),
    )
    assert "paused" not in eng.recommend("for_you", user_id="newcomer", k=5).source


def test_a_forgotten_users_share_leaves_every_recommendation_at_once(job_cfg, trained, tmp_path):
    """One shopper alone links a phone with a pair of earphones (one visit) and alone bought the earphones: after
    they are forgotten, neither the neighbours built before nor trending show it, and a rebuild from the click
    log (which still holds them) leaves them out."""
    from engine import forgotten
    from finetune.recs import without_forgotten

    cfg = dataclasses.replace(
        job_cfg,
        personal=dataclasses.replace(job_cfg.personal, user_key="test-key", path=tmp_path / "events.sqlite"),
        recs=RecsConfig(models=tmp_path / "recs", factors=8, iterations=5, trending_refresh_seconds=3600),
    )
    eng = SearchEngine.from_config(cfg)
    p = eng.products
    phone, ear = int(_rows_of(eng, "手机")[0]), int(_rows_of(eng, "耳机")[0])
    users, rows, events, ts = _basket_events(eng, _rows_of(eng, "手机")[1:4], _rows_of(eng, "手机壳")[1:4], 30)
    t = time.time() - DAY
    for r, e, dt in ((phone, "click", 0), (ear, "click", 60), (ear, "purchase", 90)):
        users.append("loner"), rows.append(r), events.append(e), ts.append(t + dt)
        eng.record_event("loner", p.ids[r], e, timestamp=t + dt)
    log = (users, rows, events, ts)
    build_and_save(cfg.recs.models, p.ids.tolist(), *log, cfg.recs, categories=(p.category_codes, p.categories))

    def behaviour_of_ear():
        res = eng.recommend("similar", product_id=p.ids[phone], k=10, explain=True)
        return res, {h.product_id: h.explain.get("behaviour", 0.0) for h in res}.get(p.ids[ear], 0.0)

    res, linked = behaviour_of_ear()
    assert linked > 0 and "paused" not in res.source
    assert eng.recommend("trending", k=1)[0].product_id == p.ids[ear]  # the only purchase in the store

    assert eng.forget_user("loner") == 3
    assert list(forgotten.read(cfg)) == [eng.user_events().user_key("loner")]  # hashed, never the id
    res, linked = behaviour_of_ear()
    assert linked == 0 and "paused" in res.source  # at once, in this process and any other reading the ledger
    assert eng.recommend("trending", k=3).source.startswith("fallback: catalog order")  # no engagement is left

    ue = eng.user_events()
    kept, left_out = without_forgotten(log, forgotten.read(cfg), lambda u: ue.user_key(u, for_write=True))
    assert left_out == 3 and "loner" not in kept[0] and len(kept[0]) == len(users) - 3
    time.sleep(0.01)
    build_and_save(cfg.recs.models, p.ids.tolist(), *kept, cfg.recs, categories=(p.category_codes, p.categories))
    res, linked = behaviour_of_ear()
    assert linked == 0 and res.source == "content (no co-visits for this product)"  # not paused; loner gone


def test_for_you_reads_the_query_being_typed(rec_engine):
    eng, _, _ = rec_engine
    res = eng.recommend("for_you", query="蓝牙耳机", k=5)
    cats = eng.products.category_codes
    assert all(eng.products.categories[cats[eng.products.row_of(h.product_id)]] == "耳机" for h in res[:3])


def test_trending_counts_new_events_at_once(rec_engine):
    eng, _, _ = rec_engine
    eng.recommend("trending", k=3)  # counts read from the store
    target = eng.products.ids[7]
    for u in range(5):
        eng.record_event(f"buyer{u}", target, "purchase")
    res = eng.recommend("trending", k=3)
    assert res.source == "trending" and res[0].product_id == target
    cat = eng.products.categories[eng.products.category_codes[7]]
    in_cat = eng.recommend("trending", k=3, filters={"category": cat})
    assert in_cat[0].product_id == target


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"kind": "popular"}, "kind"),
        ({"kind": "similar"}, "product"),
        ({"kind": "similar", "product_id": "NOPE"}, "product"),
        ({"kind": "trending", "k": 0}, "k"),
        ({"kind": "for_you", "user_id": "  "}, "user"),
        ({"kind": "trending", "filters": {"colour": "red"}}, "colour"),
    ],
)
def test_bad_arguments_name_the_parameter(rec_engine, kwargs, param):
    eng, _, _ = rec_engine
    with pytest.raises(Exception) as err:
        eng.recommend(**kwargs)
    assert getattr(err.value, "param", None) == param
    assert isinstance(err.value, (RecommendError, ValueError))


def test_http_recommend_and_the_block_under_a_search_with_few_results(rec_engine):
    from fastapi.testclient import TestClient

    from engine.service import create_app
    from engine.service.http import Keys

    eng, phones, cases = rec_engine
    with TestClient(create_app(eng, watch=False, keys=Keys(admin="k")), headers={"Authorization": "Bearer k"}) as c:
        pid = eng.products.ids[int(phones[2])]
        r = c.get("/recommend", params={"kind": "bought_together", "product": pid, "k": 3})
        assert r.status_code == 200 and r.json()["hits"][0]["product_id"] == eng.products.ids[int(cases[2])]
        assert r.json()["kind"] == "bought_together" and "versions" in r.json()
        bad = c.get("/recommend", params={"kind": "similar", "product": "NOPE"})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "product"
        assert c.get("/recommend", params={"kind": "similar", "colour": "red"}).json()["error"]["param"] == "colour"
        assert c.get("/recommend").json()["error"]["param"] == "kind"
        # a filter nothing passes: no hits, but a block of recommendations from the query relaxed
        s = c.get("/search", params={"q": "蓝牙耳机", "price_max": 0.01, "log": "false"}).json()
        assert s["hits"] == [] and s["recommendations"]["reason"].startswith("few results (0")
        recs = s["recommendations"]["hits"]
        cats = eng.products.category_codes
        assert recs and eng.products.categories[cats[eng.products.row_of(recs[0]["product_id"])]] == "耳机"
        fine = c.get("/search", params={"q": "蓝牙耳机", "k": 5, "log": "false"}).json()
        assert fine["recommendations"] is None


def test_for_you_offers_again_what_shoppers_buy_again_and_not_what_they_buy_once(rec_engine):
    from engine.events.history import History
    from engine.recommend import Recommender

    eng, phones, _ = rec_engine
    m = eng.recommender().models
    repeat = dataclasses.replace(m, card={**m.card, "repeat_categories": ["牛奶"]})
    rec = Recommender(eng.version, repeat, eng.cfg.recs)
    milk = int(_rows_of(eng, "牛奶")[0])
    now = time.time()
    hist = History(np.array([milk, int(phones[0])]), ["purchase", "purchase"], np.array([now - 10 * DAY] * 2))
    mask = np.ones(len(eng.products), dtype=bool)
    scores, parts, _ = rec.for_history(hist, None, mask, now=now)
    top = rec.top(scores, mask, 10)
    assert milk in top and int(phones[0]) not in top  # milk is bought again, the phone once
    assert "again" in parts


def test_a_new_build_is_picked_up_at_the_next_call(rec_engine):
    eng, phones, cases = rec_engine
    before = eng.recommender()
    assert eng.recommender() is before  # nothing changed: the same recommender
    p = eng.products
    users, rows, events, ts = _basket_events(eng, phones, cases[::-1])  # phone i now goes with case 3 - i
    time.sleep(0.01)
    build_and_save(eng.cfg.recs.models, p.ids.tolist(), users, rows, events, ts, eng.cfg.recs)
    after = eng.recommender()
    assert after is not before
    res = eng.recommend("bought_together", product_id=p.ids[int(phones[0])], k=3)
    assert res[0].product_id == p.ids[int(cases[::-1][0])]


def test_the_command_line_prints_recommendations_for_a_querys_top_hit(rec_engine, tmp_path, capsys):
    from core.config import write_config
    from engine.__main__ import main

    eng, phones, cases = rec_engine
    path = write_config(eng.cfg, tmp_path / "c.yaml")
    title = eng.products.titles[int(phones[2])]
    assert main(["--config", str(path), "-k", "3", "--recommend", "similar", title]) == 0
    out = capsys.readouterr().out
    top = eng.query(title, k=1)[0]
    assert f"similar for [{top.product_id}]" in out
    assert all(f"[{h.product_id}]" in out for h in eng.recommend("similar", product_id=top.product_id, k=3))
    assert main(["--config", str(path), "--recommend", "trending", "x"]) == 0 and "trending" in capsys.readouterr().out


def test_the_history_read_counts_engagements_not_impressions(rec_engine):
    from engine.events.history import recent_history

    eng, _, _ = rec_engine
    ue = eng.user_events()
    eng.record_event("looker", eng.products.ids[1], "click", query="手机")
    for i in range(30):  # many impressions after the click
        eng.record_event("looker", eng.products.ids[10 + i], "impression", query="手机")
    hist = recent_history(ue, "looker", 5, 5)
    assert hist.rows.tolist() == [1] and hist.events == ["click"] and hist.searches[0][0] == "手机"


def test_for_you_taste_prefers_the_brand_a_shopper_keeps_choosing_in_a_category(rec_engine):
    from engine.events.history import History
    from engine.for_you import taste
    from engine.recommend import Recommender

    eng, _, _ = rec_engine
    p = eng.products
    phones = _rows_of(eng, "手机")
    brands = p.brand_codes[phones]
    chosen, other = np.unique(brands)[:2]
    mine = phones[brands == chosen]
    seen, unseen = mine[:2], mine[2:]
    assert len(unseen) and (brands == other).any()
    w = np.array([1.0, 1.0])
    t = taste(p, seen, w, 0.2)
    assert t[unseen].min() == 1.0  # the same category and brand as the history: the top
    assert 0 < t[phones[brands == other]].max() < t[unseen].min()  # the category's other brands: a little
    assert t[_rows_of(eng, "牛奶")].max() == 0.0  # another category: nothing
    only = dataclasses.replace(eng.cfg.recs, for_you_weights={"als": 0, "neighbours": 0, "again": 0})
    rec = Recommender(eng.version, eng.recommender().models, only)
    now = time.time()
    hist = History(seen, ["click", "click"], np.array([now - 3600.0] * 2))
    mask = np.ones(len(p), dtype=bool)
    scores, parts, source = rec.for_history(hist, None, mask, now=now)
    assert list(parts) == ["taste"] and source == "for you: taste"
    assert parts["taste"].max() == pytest.approx(0.5)  # not named in the config: its default weight
    assert set(rec.top(scores, mask, 3).tolist()) <= set(mine.tolist())


@pytest.mark.parametrize(
    "recs, fragment",
    [
        ({"for_you_weights": {"tase": 1.0}}, "recs.for_you_weights names unknown part(s) ['tase']"),
        ({"together_weights": {"together": -1}}, "recs.together_weights weights must be numbers >= 0"),
        ({"taste_category": -0.5}, "recs.taste_category must be >= 0"),
    ],
)
def test_recommendation_weights_are_checked_when_the_config_loads(tmp_path, demo_dir, recs, fragment):
    from core.config import ConfigError
    from conftest import make_config

    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, demo_dir / "catalog.jsonl", recs=recs)
    assert fragment in str(err.value)


def test_for_you_taste_without_categories_reads_the_brand_and_without_either_nothing():
    from types import SimpleNamespace

    from engine.for_you import taste

    brands_only = SimpleNamespace(
        category_codes=np.full(6, -1), brand_codes=np.array([0, 0, 1, 1, -1, -1]), categories=[], brands=["A", "B"]
    )
    t = taste(brands_only, np.array([0, 4]), np.array([1.0, 1.0]), 0.2)
    assert t.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # brand A's products; the unbranded ones say nothing
    titles_only = SimpleNamespace(category_codes=np.full(3, -1), brand_codes=np.full(3, -1), categories=[], brands=[])
    assert not taste(titles_only, np.array([0, 1]), np.array([1.0, 2.0]), 0.2).any()


def test_an_own_pair_across_categories_bought_together_less_than_chance_counts_less(rec_engine, tmp_path):
    from engine import recs
    from engine.recommend import Recommender

    eng, phones, cases = rec_engine
    p = eng.products
    all_phones, socks, milk = _rows_of(eng, "手机"), _rows_of(eng, "袜子"), _rows_of(eng, "牛奶")
    rare = int(next(r for r in all_phones if r not in phones))
    users, rows, events, ts = _basket_events(eng, phones, cases)
    t = max(ts) + 3600.0
    for u in range(30):  # socks go into baskets with milk, not with phones
        for r, dt in ((int(socks[u % len(socks)]), 0.0), (int(milk[u % len(milk)]), 60.0)):
            users.append(f"m{u}"), rows.append(r), events.append("purchase"), ts.append(t + u * 3600 + dt)
    for r, dt in ((rare, 0.0), (int(socks[0]), 60.0)):  # and once, one shopper's phone and socks
        users.append("once"), rows.append(r), events.append("purchase"), ts.append(t - 7200 + dt)
    cats = (p.category_codes, p.categories)
    build_and_save(tmp_path / "recs", p.ids.tolist(), users, rows, events, ts, eng.cfg.recs, cats)
    models = recs.load(tmp_path / "recs", p.ids.tolist())
    assert models.together.of(rare)[0].tolist() == [int(socks[0])]  # its one pair: the socks
    lift = models.card["category_lift"]["手机"]
    assert lift["袜子"] < 1 < lift["手机壳"]
    rec = Recommender(eng.version, models, eng.cfg.recs)
    mask = np.ones(len(p), dtype=bool)
    scores, parts, _ = rec.bought_together(rare, mask)
    at = {int(r): i for i, r in enumerate(scores["rows"])}
    assert parts["together"][at[int(socks[0])]] == pytest.approx(lift["袜子"], rel=1e-6)  # was 1.0
    scores, parts, _ = rec.bought_together(int(phones[2]), mask)  # a pair across categories that go together
    at = {int(r): i for i, r in enumerate(scores["rows"])}
    assert parts["together"][at[int(cases[2])]] == 1.0
