"""Issue 26, part 1: query suggestions — characters, pinyin, initials, mixed, traditional, typos, popularity
from the log and the service, a known shopper's searches, only suggestions that find products."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.events import Impression, new_search_id
from engine.search import SearchEngine
from engine.suggest import one_edit
from engine.types import QueryError
from indexer.build import build_indexes
from indexer.suggest import SuggestSourceError, read_query_log
from indexer.suggest_index import SuggestIndex, prefix_tables, typed_keys

from conftest import make_config

LOG = (
    ["蓝牙耳机 降噪"] * 5
    + ["蓝牙耳机 运动"] * 4
    + ["蓝牙耳机 入耳式"] * 2
    + ["华为手机"] * 6
    + ["小米 手机"] * 3
    + ["手机壳"] * 2
    + ["xyzzy不存在的东西"] * 50  # finds nothing: never offered
    + ["假货 手机"] * 40  # blocked
    + ["samsung 手机"] * 2
)


@pytest.fixture(scope="module")
def sug_engine(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suggest")
    log = tmp / "queries.tsv"
    log.write_text("qid\tquery\n" + "".join(f"{i}\t{q}\n" for i, q in enumerate(LOG)), encoding="utf-8")
    block = tmp / "blocklist.txt"
    block.write_text("# never suggest\n假货\n", encoding="utf-8")
    cfg = make_config(
        tmp,
        demo_dir / "catalog.jsonl",
        suggest={"log": str(log), "blocklist": str(block), "list_threshold": 8, "prefix_min_queries": 3},
        personal={"user_key": "k", "path": str(tmp / "events.sqlite"), "retention_days": 3650},
    )
    build_indexes(cfg, progress=False)
    return SearchEngine.from_config(cfg, load_models=False)


def texts(results) -> list[str]:
    return [s.text for s in results]


def test_the_keys_of_a_suggestion_cover_pinyin_initials_and_mixed_input():
    keys = typed_keys("蓝牙耳机")
    assert {"蓝牙耳机", "lanyaerji", "lyej", "蓝yaerji", "蓝yej", "蓝牙erji", "蓝牙ej", "蓝牙耳ji", "蓝牙耳j"} <= keys
    assert {"iphone15shoujike", "iphone15sjk"} <= typed_keys("iphone15 手机壳")


def test_characters_pinyin_initials_mixed_and_traditional_reach_the_same_suggestion(sug_engine):
    for typed in ("蓝牙", "lanya", "lan'ya", "lyej", "蓝y", "蓝牙ej", "藍牙", "LANYA"):
        assert "蓝牙耳机" in texts(sug_engine.suggest(typed, 8)), typed
    # the word-boundary prefix many logged queries share is offered before any one of them
    assert texts(sug_engine.suggest("lanya", 8))[0] == "蓝牙耳机"


def test_only_suggestions_that_find_products_and_never_a_blocked_one(sug_engine):
    ix = sug_engine.suggester().index
    assert ix.sid("xyzzy不存在的东西") is None and ix.meta["too_few_hits"] >= 1
    assert not [t for t in ix.texts if "假货" in t] and ix.meta["blocked"] >= 1
    assert all(s.hits >= 3 for s in sug_engine.suggest("手", 20))
    assert sug_engine.suggest("xyzzy", 8) == []


def test_catalog_phrases_give_a_new_shop_suggestions_and_a_category_hint(sug_engine):
    ix = sug_engine.suggester().index
    assert ix.meta["from_catalog"] > 50  # brands, categories, title segments
    hint = {s.text: s.category for s in sug_engine.suggest("shouji", 10)}
    assert hint.get("手机壳") == "手机壳" and hint.get("手机") == "手机"


def test_one_typo_in_a_latin_prefix_of_four_letters_or_more(sug_engine):
    assert {"samsung", "samsgun", "samsun"} <= one_edit("samsugn") and "samsugn" not in one_edit("samsugn")
    found = sug_engine.suggest("samsnug", 8)
    assert found and found[0].text.startswith("samsung") and found[0].source == "typo"
    assert sug_engine.suggest("qqz", 8) == []  # three letters: no typo guessed
    assert all(s.source == "popular" for s in sug_engine.suggest("samsung", 8))


def test_precomputed_lists_of_frequent_prefixes_equal_a_full_scan():
    rng = np.random.default_rng(0)
    words = ["蓝牙耳机", "蓝月亮", "手机壳", "手机", "数据线", "沙发", "iphone", "ipad", "洗衣液", "显示器"]
    texts_ = sorted({a + b for a in words for b in ["", "套装", "黑色", "新款", "pro", "降噪"]})
    pop = rng.integers(1, 100, len(texts_)).astype(float)
    keys, sids = [], []
    for i, t in enumerate(texts_):
        for k in typed_keys(t):
            keys.append(k), sids.append(i)
    prefixes, table = prefix_tables(np.asarray(keys), np.asarray(sids, dtype=np.int32), pop, 5, 6)
    assert len(prefixes) > 5
    for p, row in zip(prefixes.tolist(), table):
        full = sorted({s for k, s in zip(keys, sids) if k.startswith(p)}, key=lambda s: (-pop[s], s))[:5]
        assert row[row >= 0].tolist() == full, p
    ix = SuggestIndex.build(texts_, pop, np.ones(len(texts_)), -np.ones(len(texts_)), [], 5, 6)
    for p in ("s", "sj", "手", "手机", "lan", "ip", "xianshiqi"):
        want = {s for k, s in zip(keys, sids) if k.startswith(p)}
        got = set(ix.completions(p).tolist())
        assert got <= want and (len(got) == min(5, len(want)) or got == want), p


def test_searches_the_service_logs_raise_a_suggestion_online(sug_engine):
    sug = sug_engine.suggester()
    listed = texts(sug_engine.suggest("s", 20))
    target = listed[-1]
    assert len(listed) > 3 and texts(sug_engine.suggest("s", 3))[0] != target
    for _ in range(1000):
        assert sug.observe(target)
    assert texts(sug_engine.suggest("s", 3))[0] == target
    assert not sug.observe("没有这个建议")


def test_a_known_shoppers_recent_searches_come_first_and_errors_name_the_parameter(sug_engine):
    ev = sug_engine.user_events()
    now = time.time()
    ev.log_impressions([Impression(new_search_id(), now, ev.user_key("alice", for_write=True), "手机壳", None)])
    assert texts(sug_engine.suggest("sj", 3, user_id="alice"))[0] == "手机壳"
    assert sug_engine.suggest("sj", 3, user_id="alice")[0].source == "recent"
    assert sug_engine.suggest("sj", 3)[0].source == "popular"
    for bad in (0, 21, "3"):
        with pytest.raises(QueryError) as e:
            sug_engine.suggest("sj", bad)
        assert e.value.param == "k"


def test_suggest_over_http_and_its_errors(sug_engine):
    from fastapi.testclient import TestClient

    from engine.service import create_app
    from engine.service.http import Keys

    with TestClient(create_app(sug_engine, watch=False, keys=Keys()), raise_server_exceptions=False) as c:
        r = c.get("/suggest", params={"q": "lyej", "k": 4})
        assert r.status_code == 200 and r.json()["suggestions"][0]["text"] == "蓝牙耳机"
        assert set(r.json()["suggestions"][0]) == {"text", "score", "hits", "category", "source"}
        for params, field in (({"k": 3}, "q"), ({"q": "a", "k": 99}, "k"), ({"q": "a", "x": 1}, "x")):
            r = c.get("/suggest", params=params)
            assert r.status_code == 422 and field in r.text, (params, r.text)


def test_a_missing_query_log_is_an_error_naming_it(tmp_path):
    with pytest.raises(SuggestSourceError, match="suggest.log"):
        read_query_log(tmp_path / "nope.tsv")
    bad = tmp_path / "q.tsv"
    bad.write_text("id\tquery\n1\n", encoding="utf-8")
    with pytest.raises(SuggestSourceError, match=r"q.tsv:2: query"):
        read_query_log(bad)


def test_the_typing_simulation_counts_keys_and_picks_the_longest_prefix():
    from collections import Counter

    from eval.suggest import MostPopular, first_useful, mode_tail, simulate
    from indexer.suggest_index import syllables

    target = "蓝牙耳机降噪"
    units = syllables(target)
    assert mode_tail(units, target, "initials", 0) == "lyejjz" and mode_tail(units, target, "pinyin", 4) == "jiangzao"
    never = lambda typed, k: []  # noqa: E731
    assert simulate(never, target, units, "hanzi") == (6, 6) and simulate(never, target, units, "pinyin")[0] == 17
    # one key, then the whole target offered: two keys in all
    oracle = lambda typed, k: ["蓝牙", target] if target.startswith(typed) or typed == "l" else []  # noqa: E731
    assert simulate(oracle, target, units, "hanzi") == (2, 6)
    assert simulate(oracle, target, units, "initials") == (2, 6)
    base = MostPopular(Counter({"蓝牙耳机": 5, "蓝牙 音箱": 9, "耳机": 1}))
    assert base("蓝牙", 8) == ["蓝牙音箱", "蓝牙耳机"] and base("lanya", 8) == []
    assert first_useful(["蓝牙音箱", "蓝牙耳机"], target, "蓝牙") == 2
    assert first_useful(["蓝牙"], target, "蓝牙") == 0


def test_a_shoppers_category_shares_raise_suggestions_of_that_category(sug_engine):
    import dataclasses

    sug = sug_engine.suggester()
    plain = sug_engine.suggest("sj", 8)
    cats = {s.category for s in plain if s.category}
    assert {"手机", "手机壳"} <= cats
    target = next(s.category for s in plain[1:] if s.category and s.category != plain[0].category)
    p = sug_engine.products
    rows = np.flatnonzero(p.category_codes == p.categories.index(target))[:4]
    for r in rows:
        sug_engine.record_event("case-fan", p.ids[int(r)], "purchase")
    old = sug.cfg
    sug.cfg = dataclasses.replace(old, category_boost=1000.0)
    try:
        mine = sug_engine.suggest("sj", 8, user_id="case-fan")
    finally:
        sug.cfg = old
    assert mine[0].category == target != plain[0].category
    assert [s.text for s in sug_engine.suggest("sj", 8, user_id="nobody-known")] == texts(plain)


def test_searches_logged_by_the_service_reach_the_suggester(sug_engine):
    from fastapi.testclient import TestClient

    from engine.service import create_app
    from engine.service.http import Keys

    sug = sug_engine.suggester()
    sid = sug.index.sid("华为手机")
    before = sug.live[sid]
    app = create_app(sug_engine, watch=False, keys=Keys())
    with TestClient(app, raise_server_exceptions=False) as c:
        for _ in range(3):
            assert c.get("/search", params={"q": "华为手机", "k": 3}).status_code == 200
        assert c.get("/search", params={"q": "华为手机", "k": 3, "log": "false"}).status_code == 200
        assert app.state.impressions.flush()
    assert sug.live[sid] == before + 3  # the monitoring search (log=false) does not count


def test_the_one_key_bound_picks_the_best_eight_lists_with_hindsight():
    from eval.suggest import one_key_bound

    texts_ = ["蓝牙", "蓝牙耳机", "蓝月亮"] + [f"手{c}" for c in "机表套链环镯帕绢提"]
    targets = ["蓝牙耳机降噪", "蓝月亮洗衣液", "手机壳", "手表带", "水杯"]
    # hanzi: 蓝 → 蓝牙耳机 and 蓝月亮 both fit in 8; 手 → 手机, 手表; 水 has nothing: 4 of 5
    assert one_key_bound(texts_, targets, "hanzi") == 0.8
    # initials: "s" groups 手机壳, 手表带, 水杯 (one list for all three): still 4 of 5 here
    assert one_key_bound(texts_, targets, "initials") == 0.8
    # with only one slot per key the bound falls
    import eval.suggest as es

    old, es.K = es.K, 1
    try:
        assert one_key_bound(texts_, targets, "hanzi") == 0.4  # one of 蓝…, one of 手…
    finally:
        es.K = old


def test_a_forgotten_shoppers_searches_leave_the_live_counts(sug_engine):
    from fastapi.testclient import TestClient

    from engine.service import create_app
    from engine.service.http import Keys

    sug = sug_engine.suggester()
    sid = sug.index.sid("华为手机")
    assert sid is not None
    app = create_app(sug_engine, watch=False, keys=Keys(admin="a"))
    with TestClient(app, raise_server_exceptions=False, headers={"Authorization": "Bearer a"}) as c:
        before = sug_engine.suggester().live[sid]
        for _ in range(4):
            assert c.get("/search", params={"q": "华为手机", "k": 3, "user": "leaver"}).status_code == 200
        assert app.state.impressions.flush()
        assert sug_engine.suggester().live[sid] == before + 4
        assert c.delete("/users/leaver").status_code == 200
        assert sug_engine.suggester().live[sid] == before  # counted again from the store, without them
