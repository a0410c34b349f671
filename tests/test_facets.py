"""Issue 26, part 2: facet counts over the matching set — disjunctive, a price histogram, none without columns."""

from __future__ import annotations

import numpy as np
import pytest

from engine.facets import round_step
from engine.search import SearchEngine
from engine.types import QueryError
from indexer.build import build_indexes

from conftest import make_config


@pytest.fixture(scope="module")
def engine(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("facets")
    cfg = make_config(tmp, demo_dir / "catalog.jsonl", suggest={"enabled": False})
    build_indexes(cfg, progress=False)
    return SearchEngine.from_config(cfg, load_models=False)


def brute_matching(engine, text: str) -> np.ndarray:
    """The products holding 75% of the query's distinct word tokens, one by one (the slow reference)."""
    bm25 = engine.bm25
    tok = set(bm25.tokenizer.tokenize(text))
    need = max(1, int(np.floor(0.75 * len(tok) + 1e-9)))
    titles = engine.products.titles.tolist()
    return np.array([i for i, t in enumerate(titles) if len(tok & set(bm25.tokenizer.tokenize(t))) >= need])


def test_counts_are_over_the_matching_set_and_disjunctive(engine):
    p = engine.products
    plain = engine.query("蓝牙耳机", k=5, facets=["category", "brand", "price"])
    rows = brute_matching(engine, "蓝牙耳机")
    f = plain.facets["facets"]
    assert plain.facets["matched"] == len(rows)
    cats = {c["value"]: c["count"] for c in f["category"]}
    assert cats["耳机"] == int((p.category_codes[rows] == p.categories.index("耳机")).sum()) > 0
    assert sum(b["count"] for b in f["price"]["buckets"]) == int(np.isfinite(p.prices[rows]).sum())
    brand = f["brand"][0]["value"]
    ticked = engine.query("蓝牙耳机", k=5, filters={"brand": [brand]}, facets="category,brand")
    tf = ticked.facets["facets"]
    # the brand facet ignores the brand filter: the other brands keep their counts
    assert {b["value"]: b["count"] for b in tf["brand"]} == {b["value"]: b["count"] for b in f["brand"]}
    assert [b["value"] for b in tf["brand"] if b["selected"]] == [brand]
    # the category facet applies it: only that brand's products are counted
    in_brand = rows[p.brand_codes[rows] == p.brands.index(brand)]
    assert sum(c["count"] for c in tf["category"]) == int((p.category_codes[in_brand] >= 0).sum())
    assert all(h.brand == brand for h in ticked.hits) and ticked.hits


def test_a_price_filter_leaves_the_price_histogram_and_narrows_the_rest(engine):
    base = engine.query("手机", k=5, facets=["category", "price"]).facets["facets"]
    cut = engine.query("手机", k=5, filters={"price_max": 1000}, facets=["category", "price"]).facets["facets"]
    assert cut["price"]["buckets"] == base["price"]["buckets"] and cut["price"]["selected"] == [None, 1000]
    assert sum(c["count"] for c in cut["category"]) < sum(c["count"] for c in base["category"])
    b = base["price"]["buckets"]
    assert all(x["max"] == y["min"] for x, y in zip(b, b[1:])) and b[0]["min"] <= base["price"]["min"]
    assert b[-1]["max"] > base["price"]["max"]


def test_round_price_steps():
    assert round_step(1000, 5) == 200 and round_step(37, 6) == 10 and round_step(0.9, 6) == 0.2


def test_unknown_facets_are_refused_and_catalogs_without_columns_get_none(engine, tmp_path):
    with pytest.raises(QueryError) as e:
        engine.query("手机", facets=["colour"])
    assert e.value.param == "facets"
    cat = tmp_path / "bare.jsonl"
    cat.write_text("".join(f'{{"id": "B{i}", "title": "手机 型号{i}"}}\n' for i in range(20)), encoding="utf-8")
    cfg = make_config(tmp_path, cat, suggest={"enabled": False})
    build_indexes(cfg, progress=False)
    bare = SearchEngine.from_config(cfg, load_models=False)
    res = bare.query("手机", facets=["category", "brand", "price"])
    assert res.facets["facets"] == {} and res.facets["matched"] == 20


def test_facets_over_http(engine):
    from fastapi.testclient import TestClient

    from engine.service import create_app
    from engine.service.http import Keys

    with TestClient(create_app(engine, watch=False, keys=Keys()), raise_server_exceptions=False) as c:
        r = c.get("/search", params={"q": "蓝牙耳机", "facets": ["category", "brand"], "brand": "索尼"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body["facets"]["facets"]) == {"category", "brand"}
        assert any(b["selected"] and b["value"] == "索尼" for b in body["facets"]["facets"]["brand"])
        assert "facets" not in c.get("/search", params={"q": "蓝牙耳机"}).json()
        r = c.get("/search", params={"q": "蓝牙耳机", "facets": "size"})
        assert r.status_code == 422 and "facets" in r.text
        r = c.get("/suggest", params={"q": "lanya"})  # this config builds no suggestions
        assert r.status_code == 404 and "suggest.enabled" in r.text
