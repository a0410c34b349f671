"""The HTTP service: every endpoint with good and bad input, the metrics, the search page's contract."""

import json

import pytest

from engine.service.http import Keys
from engine.search import SearchEngine
from engine.service import create_app

ADMIN = "test-admin-key"


@pytest.fixture()
def client(live_cfg):
    """The service over the tiny pipeline; the client sends the admin key (tests of the keys themselves:
    test_security.py)."""
    from fastapi.testclient import TestClient

    engine = SearchEngine.from_config(live_cfg)
    with TestClient(
        create_app(engine, watch=False, keys=Keys(admin=ADMIN)),
        raise_server_exceptions=False,
        headers={"Authorization": f"Bearer {ADMIN}"},
    ) as c:
        c.engine = engine
        yield c


def test_search_answers_hits_timings_and_versions_and_pages_with_offset(client):
    r = client.get("/search", params={"q": "蓝牙耳机", "k": 6})
    assert r.status_code == 200
    body = r.json()
    assert len(body["hits"]) == 6 and [h["rank"] for h in body["hits"]] == list(range(1, 7))
    assert set(body["hits"][0]) >= {"product_id", "title", "score", "rank"}
    assert body["timings_ms"]["total"] > 0 and "cross_encoder" in body["timings_ms"]
    v = body["versions"]
    assert v["bm25"] == client.engine.bm25.manifest["build_id"] and v["dense"] and "cross_encoder" in v
    page2 = client.get("/search", params={"q": "蓝牙耳机", "k": 3, "offset": 3}).json()
    assert [h["product_id"] for h in page2["hits"]] == [h["product_id"] for h in body["hits"][3:6]]
    assert [h["rank"] for h in page2["hits"]] == [4, 5, 6]
    # the same as the Python API
    assert [h.product_id for h in client.engine.query("蓝牙耳机", k=6)] == [h["product_id"] for h in body["hits"]]


def test_filters_explain_and_a_query_with_nothing_to_search(client):
    eng = client.engine
    cat = eng.products.categories[int(eng.products.category_codes[0])]
    r = client.get("/search", params={"q": "耳机", "category": cat, "k": 5, "explain": "true"}).json()
    rows = [eng.products.row_of(h["product_id"]) for h in r["hits"]]
    assert all(eng.products.categories[int(eng.products.category_codes[row])] == cat for row in rows)
    assert "stages" in r["hits"][0]["explain"] and "final_score" in r["hits"][0]["explain"]
    emoji = client.get("/search", params={"q": "😀🎧"}).json()
    assert emoji["hits"] == [] and emoji["reason"]
    nothing = client.get("/search", params={"q": "蓝牙耳机", "price_max": 0.0001}).json()
    assert nothing["hits"] == []


@pytest.mark.parametrize(
    "params, param",
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "耳机", "k": 0}, "k"),
        ({"q": "耳机", "k": 2.5}, "k"),
        ({"q": "耳机", "k": "abc"}, "k"),
        ({"q": "耳机", "k": 100000}, "k"),
        ({"q": "耳机", "offset": -1}, "offset"),
        ({"q": "耳机", "colour": "red"}, "colour"),
        ({"q": "耳机", "price_max": "nan"}, "price_max"),
        ({"q": "耳机", "price_max": "abc"}, "price_max"),
        ({"q": "耳机", "price_min": 10, "price_max": 5}, "price_min"),
        ({"q": "耳机", "personalize": 2}, "personalize"),
        ({"q": "耳机", "user": " "}, "user"),
        ({"q": "耳机", "explain": "maybe"}, "explain"),
    ],
)
def test_bad_search_requests_get_a_4xx_naming_the_parameter(client, params, param):
    r = client.get("/search", params=params)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    assert "Traceback" not in r.text


def test_events_one_or_a_batch_bad_ones_named_and_forget(client):
    pid = client.engine.products.ids[0]
    assert client.post("/events", json={"user_id": "u1", "product_id": pid, "event": "click"}).json() == {"recorded": 1}
    batch = [
        {"user_id": "u1", "product_id": pid, "event": "purchase", "query": "耳机"},
        {"user_id": "u2", "product_id": pid, "event": "impression", "timestamp": 1767227116},
    ]
    assert client.post("/events", json={"events": batch}).json() == {"recorded": 2}
    assert client.engine.profile("u1").n_events == 2
    bad = client.post("/events", json=[batch[0], {"user_id": "u3", "product_id": "NOPE", "event": "click"}])
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "events[1].product_id"
    assert client.engine.profile("u3") is None  # nothing of a bad batch is stored
    cases = [
        (b"{not json", 400, "body"),
        (b"", 400, "body"),
        (json.dumps({"user_id": "u", "product_id": pid, "event": "look"}).encode(), 422, "event.event"),
        (json.dumps({"user_id": "u", "product_id": pid, "event": "click", "colour": 1}).encode(), 422, "event.colour"),
        (
            json.dumps({"user_id": "u", "product_id": pid, "event": "click", "timestamp": "soon"}).encode(),
            422,
            "event.timestamp",
        ),
        (json.dumps({"product_id": pid, "event": "click"}).encode(), 422, "event.user_id"),
    ]
    for body, status, param in cases:
        r = client.post("/events", content=body, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["param"]) == (status, param), r.text
    big = client.post("/events", content=b"[" + b" " * 2_000_000 + b"]", headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["param"] == "body"
    r = client.delete("/users/u1")
    assert r.status_code == 200 and r.json()["events_deleted"] == 2
    assert client.engine.profile("u1") is None


def test_products_added_are_found_and_deleted_are_gone_when_the_call_returns(client):
    new = {
        "id": "NEW-1",
        "title": "量子波动 速读 机器人 XQ-900",
        "category": "儿童玩具",
        "brand": "新品牌",
        "price": 99,
    }
    r = client.post("/products", json=[new])
    assert r.status_code == 200 and r.json()["added"] == 1
    hits = client.get("/search", params={"q": "量子波动 速读 机器人", "k": 5}).json()["hits"]
    # found at once (the tiny untrained models only order it among ties; BM25 alone puts it first)
    assert "NEW-1" in [h["product_id"] for h in hits]
    assert client.engine.products.ids[int(client.engine.retrieve("量子波动 速读 机器人", k=1).rows[0])] == "NEW-1"
    assert client.post("/products", json=[new]).status_code == 409  # already there
    bad = client.post("/products", json=[{"id": "X", "title": ""}])
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "products[0].title"
    top = client.get("/search", params={"q": "蓝牙耳机", "k": 3}).json()["hits"][0]["product_id"]
    assert client.delete(f"/products/{top}").json()["deleted"] is True
    for _ in range(3):
        ids = [h["product_id"] for h in client.get("/search", params={"q": "蓝牙耳机", "k": 50}).json()["hits"]]
        assert top not in ids
    assert client.delete("/products/NO-SUCH").status_code == 404


def test_health_ready_metrics_docs_and_reload(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    client.get("/search", params={"q": "蓝牙耳机"})
    client.get("/search", params={"q": ""})
    text = client.get("/metrics").text
    assert 'ecomsearch_requests_total{endpoint="/search",method="GET",status="200"} 1.0' in text
    assert 'ecomsearch_requests_total{endpoint="/search",method="GET",status="422"} 1.0' in text
    assert 'ecomsearch_request_seconds_bucket{endpoint="/search"' in text
    assert 'ecomsearch_stage_seconds_count{stage="cross_encoder"} 1.0' in text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/search",
        "/events",
        "/users/{user_id}",
        "/products",
        "/products/{product_id}",
        "/health",
        "/ready",
        "/metrics",
        "/admin/reload",
    } <= set(paths)
    assert client.post("/admin/reload").json()["changed"] is False
    assert client.get("/nowhere").status_code == 404 and client.get("/nowhere").json()["error"]


def test_the_search_page_and_its_contract(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    for element in ('id="q"', 'id="suggest"', 'id="facets"', 'id="user"', 'id="explain"'):
        assert element in html
    assert 'api("/search?' in html and 'api("/facets")' in html and 'api("/suggest?' in html
    facets = client.get("/facets").json()
    assert facets["categories"] and facets["brands"]
    assert facets["users"] and {"user_id", "favourite_brands"} <= set(facets["users"][0])  # the demo click log
    # what the page sends, the API accepts
    r = client.get(
        "/search",
        params={
            "q": "蓝牙耳机",
            "k": "10",
            "category": facets["categories"][0],
            "user": facets["users"][0]["user_id"],
            "explain": "true",
            "facets": "category,brand,price",
        },
    )
    assert r.status_code == 200 and set(r.json()["facets"]["facets"]) <= {"category", "brand", "price"}
    assert client.get("/suggest", params={"q": "lanya", "k": "8"}).status_code == 200


def test_the_index_watcher_switches_to_a_rebuilt_index(live_cfg):
    import dataclasses
    import time

    from fastapi.testclient import TestClient

    from indexer.build import build_indexes

    cfg = dataclasses.replace(live_cfg, serve=dataclasses.replace(live_cfg.serve, watch_seconds=0.2))
    engine = SearchEngine.from_config(cfg)
    with TestClient(create_app(engine, keys=Keys(admin=ADMIN)), raise_server_exceptions=False) as c:
        before = c.get("/search", params={"q": "蓝牙耳机"}).json()["versions"]
        build_indexes(cfg, stages=["bm25"], progress=False)  # `make index` from another process
        for _ in range(100):
            if engine.version.number > 1:
                break
            time.sleep(0.1)
        after = c.get("/search", params={"q": "蓝牙耳机"}).json()["versions"]
        assert after["engine_version"] == "2" and after["bm25"] != before["bm25"]
        assert after["dense"] == before["dense"]  # unchanged parts are shared, not reloaded
        assert "ecomsearch_reloads_total 1.0" in c.get("/metrics").text


def test_a_server_side_failure_is_a_json_500_with_an_error_id_and_no_stack_trace(client):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire at /secret/path")

    client.engine.version.query = broken
    r = client.get("/search", params={"q": "蓝牙耳机"})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["error_id"] and "Traceback" not in r.text and "/secret/path" not in r.text
