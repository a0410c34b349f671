"""Issue 26, part 3: merchandising rules — pin, hide, boost/bury, redirect; conflicts in a stated order; a bad
rule refused naming the field; never a deleted product back; every path; versioned."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.rules import RuleError, parse_rule
from engine.rules_apply import apply_rules
from engine.search import SearchEngine
from indexer.build import build_indexes

from conftest import make_config

ADMIN = "rules-admin-key"


@pytest.fixture()
def engine(demo_dir, tmp_path):
    cfg = make_config(
        tmp_path,
        demo_dir / "catalog.jsonl",
        suggest={"list_threshold": 8},
        personal={"user_key": "k", "path": str(tmp_path / "events.sqlite")},
    )
    build_indexes(cfg, progress=False)
    return SearchEngine.from_config(cfg, load_models=False)


def rule(rid: str, query: dict, consequence: dict, **more):
    return parse_rule({"id": rid, "condition": {"query": query}, "consequence": consequence, **more})


def ids(res) -> list[str]:
    return [h.product_id for h in res.hits]


def other_product(engine, query: str, k: int = 10) -> str:
    """A product the query does not show in its first ``k``."""
    shown = set(ids(engine.query(query, k=k)))
    return next(p for p in engine.products.ids.tolist() if p not in shown)


def test_pin_hide_and_redirect_apply_after_ranking_and_name_the_rule(engine):
    plain = ids(engine.query("手机", k=10))
    pinned = other_product(engine, "手机", 50)
    engine.rules.put(
        parse_rule(
            {
                "id": "phones",
                "condition": {"query": {"exact": "手机"}},
                "consequence": {"pin": [{"product": pinned, "position": 2}], "hide": [plain[0]], "redirect": "/sale"},
            }
        )
    )
    res = engine.query("手机", k=10, explain=True)
    got = ids(res)
    assert got[1] == pinned and plain[0] not in got and len(got) == 10
    assert got[0] == plain[1] and got[2:] == [p for p in plain[2:] if p != pinned][:8]
    assert res.hits[1].rules == ["phones"] and res.hits[1].explain["rules"] == ["phones"]
    assert res.rules["fired"] == ["phones"] and res.rules["redirect"] == "/sale" and res.rules["version"] == 1
    assert ids(engine.query("手机壳", k=10))[1] != pinned  # exact: another query is untouched
    # page 2 continues the ruled list
    assert ids(engine.query("手机", k=5, offset=5)) == got[5:10]


def test_conflicting_pins_follow_the_stated_order_and_a_hide_beats_a_pin(engine):
    shown = set(ids(engine.query("手机", k=60)))
    a, b = [p for p in engine.products.ids.tolist() if p not in shown][:2]
    engine.rules.put(rule("low", {"any": True}, {"pin": [{"product": b, "position": 1}]}, priority=1))
    engine.rules.put(rule("high", {"contains": "手机"}, {"pin": [{"product": a, "position": 1}]}, priority=5))
    got = ids(engine.query("手机", k=5))
    assert got[:2] == [a, b]  # the higher priority keeps position 1, the other goes to the next free one
    engine.rules.put(rule("hide-a", {"any": True}, {"hide": [a]}))
    got = ids(engine.query("手机", k=5))
    assert a not in got and got[0] == b


def test_boost_and_bury_by_attribute(engine):
    p = engine.products
    plain = engine.query("手机", k=20)
    brands = [p.columns(p.row_of(h.product_id))["brand"] for h in plain.hits]
    last = brands[-1]
    engine.rules.put(rule("boost", {"any": True}, {"boost": [{"field": "brand", "value": last, "weight": 10}]}))
    boosted = engine.query("手机", k=20)
    assert boosted.hits[0].brand == last and boosted.hits[0].rules == ["boost"]
    bury = {"boost": [{"field": "brand", "value": brands[0], "weight": -10}]}
    engine.rules.put(rule("boost", {"any": True}, bury))
    buried = engine.query("手机", k=20)
    assert buried.hits[-1].brand == brands[0] and buried.hits[0].brand != brands[0]


def test_time_windows_and_filters_in_the_condition(engine):
    pinned = other_product(engine, "手机", 50)
    now = time.time()
    pin = {"pin": [{"product": pinned, "position": 1}]}
    engine.rules.put(
        parse_rule({"id": "later", "condition": {"query": {"any": True}, "start": now + 3600}, "consequence": pin})
    )
    assert ids(engine.query("手机", k=3))[0] != pinned
    only_huawei = {"query": {"any": True}, "filters": {"brand": ["华为"]}}
    engine.rules.put(parse_rule({"id": "later", "condition": only_huawei, "consequence": pin}))
    assert ids(engine.query("手机", k=3))[0] != pinned
    # the pinned product must pass the search's own filters: pinned only when it is a 华为 product
    res = engine.query("手机", k=3, filters={"brand": "华为"})
    p = engine.products
    assert (ids(res)[0] == pinned) == (p.columns(p.row_of(pinned))["brand"] == "华为")


def test_no_rule_brings_a_deleted_product_back(engine):
    pinned = other_product(engine, "手机", 50)
    engine.rules.put(rule("pin", {"any": True}, {"pin": [{"product": pinned, "position": 1}]}))
    assert ids(engine.query("手机", k=3))[0] == pinned
    engine.delete([pinned])
    assert pinned not in ids(engine.query("手机", k=10))


def test_a_bad_rule_is_refused_naming_the_field(engine):
    known = engine.known_product
    good = {"id": "r1", "condition": {"query": {"exact": "手机"}}, "consequence": {"hide": ["P100000"]}}
    for change, field in (
        ({"id": "bad id!"}, "id"),
        ({"condition": {"query": {"like": "x"}}}, "condition.query"),
        ({"condition": {"query": {"any": True}, "start": "tomorrow"}}, "condition.start"),
        ({"consequence": {"pin": [{"product": "P100000", "position": 0}]}}, "consequence.pin[0].position"),
        ({"consequence": {"pin": [{"product": "NOPE", "position": 1}]}}, "consequence.pin[0].product"),
        ({"consequence": {"boost": [{"field": "colour", "value": "红", "weight": 1}]}}, "consequence.boost[0].field"),
        ({"consequence": {"redirect": "javascript:alert(1)"}}, "consequence.redirect"),
        ({"consequence": {}}, "consequence"),
        ({"priority": "high"}, "priority"),
    ):
        with pytest.raises(RuleError) as e:
            parse_rule({**good, **change}, known)
        assert e.value.field == field, (change, e.value)
    assert parse_rule(good, known).id == "r1"


def test_rules_reach_recommendations_and_suggestion_counts(engine):
    top = engine.recommend("trending", k=5).hits[0].product_id
    engine.rules.put(rule("gone", {"any": True}, {"hide": [top]}))
    assert top not in [h.product_id for h in engine.recommend("trending", k=10).hits]
    # every product a suggestion finds hidden: its count falls and it is no longer offered
    s = engine.suggest("手机", 1)[0]
    rows = engine.bm25.matching(s.text, engine.cfg.suggest.min_match)
    engine.rules.put(rule("all", {"any": True}, {"hide": [engine.products.ids[int(r)] for r in rows]}))
    assert s.text not in [x.text for x in engine.suggest("手机", 8)]


def test_rules_over_http_and_the_cli_with_versions(engine, tmp_path):
    from fastapi.testclient import TestClient

    from engine.rules_cli import main as cli
    from engine.service import create_app
    from engine.service.http import Keys

    pinned = other_product(engine, "手机", 50)
    web = {
        "id": "web",
        "condition": {"query": {"exact": "手机"}},
        "consequence": {"pin": [{"product": pinned, "position": 1}]},
    }
    with TestClient(create_app(engine, watch=False, keys=Keys(admin=ADMIN)), raise_server_exceptions=False) as c:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        assert c.post("/rules", json=web).status_code in (401, 403)  # admin only
        r = c.post("/rules", json=web, headers=auth)
        assert r.status_code == 200 and r.json()["version"] == 1
        body = c.get("/search", params={"q": "手机", "k": 3}, headers=auth).json()
        assert body["hits"][0]["product_id"] == pinned and body["rules"] == {
            "version": 1,
            "fired": ["web"],
            "redirect": None,
        }
        bad = c.post("/rules", json={**web, "consequence": {"hide": ["NOPE"]}}, headers=auth)
        assert bad.status_code == 422 and "consequence.hide[0]" in bad.text
        assert c.get("/rules", headers=auth).json()["rules"][0]["id"] == "web"
        assert c.delete("/rules/web", headers=auth).json()["version"] == 2
        assert c.delete("/rules/web", headers=auth).status_code == 404
        assert c.get("/search", params={"q": "手机", "k": 3}, headers=auth).json()["rules"]["fired"] == []
    f = tmp_path / "rule.yaml"
    f.write_text(f"id: cli\ncondition: {{query: {{any: true}}}}\nconsequence: {{hide: [{pinned}]}}\n", encoding="utf-8")
    cfg_file = tmp_path / "c.yaml"
    import yaml

    from core.config import config_to_dict

    cfg_file.write_text(yaml.safe_dump(config_to_dict(engine.cfg), allow_unicode=True), encoding="utf-8")
    assert cli(["add", str(f), "--config", str(cfg_file)]) == 0
    assert [r.id for r in engine.rules.rules()[1]] == ["cli"] and engine.rules.rules()[0] == 3
    assert cli(["delete", "nope", "--config", str(cfg_file)]) == 2


def test_apply_rules_keeps_order_without_rules():
    class P:
        categories, brands = ["a"], ["b"]
        category_codes = np.zeros(3, dtype=np.int32)
        brand_codes = np.zeros(3, dtype=np.int32)
        ids = ["x", "y", "z"]

        def row_map(self):
            return {"x": 0, "y": 1, "z": 2}

    rows, scores, moved = apply_rules([], np.array([2, 0, 1]), np.array([3.0, 2.0, 1.0]), P(), np.ones(3, bool))
    assert rows.tolist() == [2, 0, 1] and moved == {}


def test_rules_from_the_yaml_file_apply_are_read_only_and_their_edits_count(engine, tmp_path):
    from engine.rule_book import RuleBook

    pinned = other_product(engine, "手机", 50)
    f = tmp_path / "rules.yaml"
    f.write_text(
        "rules:\n  - id: file-pin\n    condition: {query: {exact: 手机}}\n"
        f"    consequence: {{pin: [{{product: {pinned}, position: 1}}]}}\n",
        encoding="utf-8",
    )
    engine.rules = RuleBook(engine.cfg.index_dir, f, engine.rules.normalize)
    res = engine.query("手机", k=3)
    assert ids(res)[0] == pinned and res.rules["fired"] == ["file-pin"]
    with pytest.raises(RuleError) as e:
        engine.rules.put(rule("file-pin", {"any": True}, {"hide": [pinned]}))
    assert e.value.field == "id" and "YAML" in str(e.value)
    v1 = engine.rules.rules()[0]
    f.write_text(f.read_text(encoding="utf-8").replace("exact: 手机", "exact: 手机壳"), encoding="utf-8")
    assert engine.rules.rules()[0] != v1 and ids(engine.query("手机", k=3))[0] != pinned
    f.write_text("rules:\n  - id: broken\n    condition: {query: {exact: x}}\n    consequence: {pin: 3}\n")
    with pytest.raises(RuleError, match="rules.yaml: rules\\[0\\].consequence.pin"):
        engine.rules.rules()
