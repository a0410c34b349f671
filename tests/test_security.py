"""What the probe of the demo service found (issue 22), door side: writes without a key, cross-site posts, leaks
in headers and errors, 500s for bad input, tracebacks from CLIs, a damaged event store served."""

import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from engine.service.http import ADMIN_ENV, MAX_REQUEST_HEAD, JsonErrorH11Protocol, Keys, inline_script_hashes
from engine.search import SearchEngine
from engine.service import REPLICA, create_app

from conftest import ROOT, tiny_dense_config

ADMIN, SEARCH = "admin-secret-1", "search-secret-2"


@pytest.fixture()
def cfg(demo_dir, tiny_model, tmp_path):
    return tiny_dense_config(
        tmp_path,
        demo_dir,
        tiny_model,
        personal={"user_key": "k", "retention_days": 3650},
        serve={"cors_origins": ["https://shop.example"], "watch_seconds": 0},
    )


@pytest.fixture()
def engine(cfg):
    return SearchEngine.from_config(cfg)


def client_for(engine, keys, **headers):
    from fastapi.testclient import TestClient

    return TestClient(create_app(engine, watch=False, keys=keys), raise_server_exceptions=False, headers=headers)


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


# -- keys -----------------------------------------------------------------------------------------------
def admin_calls(pid):
    return [
        ("post", "/products", {"json": [{"id": "NEW-9", "title": "量子 机器人"}]}),
        ("delete", f"/products/{pid}", {}),
        ("delete", "/users/U0250", {}),
        ("post", "/admin/reload", {}),
    ]


def test_admin_endpoints_are_off_without_an_admin_key_and_need_it_when_set(engine):
    pid = engine.products.ids[0]
    with client_for(engine, Keys()) as c:
        for method, path, kw in admin_calls(pid):
            r = getattr(c, method)(path, **kw)
            assert r.status_code == 403 and ADMIN_ENV in r.json()["error"]["message"], (path, r.text)
        assert c.get("/search", params={"q": "耳机"}).status_code == 200  # search stays open
    with client_for(engine, Keys(admin=ADMIN)) as c:
        for method, path, kw in admin_calls(pid):
            for headers in ({}, bearer("wrong"), {"Authorization": ADMIN}, bearer(ADMIN + "x")):
                r = getattr(c, method)(path, headers=headers, **kw)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, headers)
                assert ADMIN not in r.text
        assert pid in [h.product_id for h in engine.query(engine.products.titles[0], k=10)]  # nothing happened
        for method, path, kw in admin_calls(pid):
            r = getattr(c, method)(path, headers=bearer(ADMIN), **kw)
            assert r.status_code == 200, (path, r.text)


def test_a_search_key_closes_search_events_and_metrics_to_everyone_else(engine):
    pid = engine.products.ids[0]
    event = {"user_id": "u1", "product_id": pid, "event": "click"}
    with client_for(engine, Keys(admin=ADMIN, search=SEARCH)) as c:
        for call in (
            lambda h: c.get("/search", params={"q": "耳机"}, headers=h),
            lambda h: c.post("/events", json=event, headers=h),
            lambda h: c.get("/facets", headers=h),
            lambda h: c.get("/metrics", headers=h),
        ):
            assert call({}).status_code == 401 and call(bearer("nope")).status_code == 401
            assert call(bearer(SEARCH)).status_code == 200 and call(bearer(ADMIN)).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        # the search key is not an admin key
        assert c.delete("/users/u1", headers=bearer(SEARCH)).status_code == 401


# -- browsers -------------------------------------------------------------------------------------------
def test_only_json_bodies_and_only_allowed_origins_may_write(engine):
    pid = engine.products.ids[0]
    body = json.dumps({"user_id": "u1", "product_id": pid, "event": "click"})
    with client_for(engine, Keys(admin=ADMIN), **bearer(ADMIN)) as c:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"content-type": ctype} if ctype else {}
            r = c.post("/events", content=body, headers=headers)
            assert r.status_code == 415 and r.json()["error"]["param"] == "content-type", ctype
            r = c.post("/products", content=json.dumps([{"id": "X1", "title": "t"}]), headers=headers)
            assert r.status_code == 415
        evil = {"Origin": "http://evil.example", "content-type": "application/json"}
        assert c.post("/events", content=body, headers=evil).status_code == 403
        assert c.post("/products", content=json.dumps([{"id": "X1", "title": "t"}]), headers=evil).status_code == 403
        assert engine.profile("u1") is None
        # a configured shop origin may call the API from its pages (CORS), the service's own page too
        ok = c.post(
            "/events", content=body, headers={"Origin": "https://shop.example", "content-type": "application/json"}
        )
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://shop.example"
        pre = c.options(
            "/events",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert pre.status_code == 200
        bad_pre = c.options(
            "/events", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in bad_pre.headers
        same = c.post(
            "/events", content=body, headers={"Origin": "http://testserver", "content-type": "application/json"}
        )
        assert same.status_code == 200


def test_headers_say_nosniff_the_page_has_a_csp_and_the_replica_name_is_opaque(engine):
    import os

    with client_for(engine, Keys()) as c:
        r = c.get("/search", params={"q": "耳机"})
        assert r.headers["x-content-type-options"] == "nosniff"
        replica = r.headers["x-ecomsearch-replica"]
        assert replica == REPLICA and socket.gethostname() not in replica and str(os.getpid()) not in replica
        page = c.get("/")
        csp = page.headers["content-security-policy"]
        assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert all(h in csp for h in inline_script_hashes(page.text)) and "frame-ancestors 'none'" in csp


def test_public_messages_cut_the_servers_folders_only():
    from engine.service.http import public

    msg = "/srv/shop/indexes/t/bm25@1: corrupt; see /srv/shop/README.md and /tmp/x.jsonl"
    assert public(msg, "/srv/shop", "/tmp") == "indexes/t/bm25@1: corrupt; see README.md and x.jsonl"
    assert public("a/b: bad", "/") == "a/b: bad"  # a root of / would otherwise eat every slash


def test_errors_never_name_the_servers_folders(engine, cfg):
    with client_for(engine, Keys(admin=ADMIN), **bearer(ADMIN)) as c:
        pid = engine.products.ids[0]
        r = c.post("/products", json=[{"id": pid, "title": "已有 商品"}])
        assert r.status_code == 409
        assert "/tmp" not in r.text and str(cfg.index_dir) not in r.text and str(cfg.root) not in r.text


# -- bad input is a 4xx naming it, never a 500 ----------------------------------------------------------
def test_hostile_values_get_a_4xx_naming_the_field(engine):
    pid = engine.products.ids[0]
    big = int("9" * 400)
    with client_for(engine, Keys(admin=ADMIN), **bearer(ADMIN)) as c:
        cases = [
            (
                "post",
                "/events",
                json.dumps({"user_id": "u", "product_id": pid, "event": "click", "timestamp": big}),
                422,
                "event.timestamp",
            ),
            (
                "post",
                "/events",
                json.dumps({"user_id": "u", "product_id": pid, "event": "click", "timestamp": 1e12}),
                422,
                "event.timestamp",
            ),
            ("post", "/products", json.dumps([{"id": "N1", "title": "t", "price": big}]), 422, "products[0].price"),
            ("post", "/products", json.dumps([{"id": "N1", "title": "t", "colour": "red"}]), 422, "products[0].colour"),
            (
                "post",
                "/products",
                json.dumps([{"id": "N1", "title": "t", "category": {"a": 1}}]),
                422,
                "products[0].category",
            ),
            ("post", "/products", json.dumps([{"id": "N\n1", "title": "t"}]), 422, "products[0].id"),
            ("post", "/events", "[" * 50_000 + "]" * 50_000, 400, "body"),
            ("post", "/events", "1" * 5000, 400, "body"),
        ]
        for method, path, body, status, param in cases:
            r = getattr(c, method)(path, content=body, headers={"content-type": "application/json"})
            assert (r.status_code, r.json()["error"]["param"]) == (status, param), (path, body[:60], r.text[:300])
        for path, param in (
            ("/users/%20", "user_id"),
            ("/products/PX-newline%0AP1", "product_id"),
            ("/users/" + "u" * 300, "user_id"),
        ):
            r = c.delete(path)
            assert r.status_code == 422 and r.json()["error"]["param"] == param, (path, r.text)
        r = c.get("/search", params={"q": "耳机", "user": "a\nb"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "user"


def serve_in_thread(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="error",
            http=JsonErrorH11Protocol,
            h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, port


def raw_request(port, data: bytes) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """One whole HTTP response from a keep-alive connection (a response may arrive in several pieces)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return int(head.split()[1]), body


def test_what_uvicorn_refuses_before_the_app_is_a_json_error_too(engine):
    server, port = serve_in_thread(create_app(engine, watch=False, keys=Keys()))
    try:
        status, body = raw_request(port, b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        assert status == 400 and body["error"]["message"]
        status, body = raw_request(port, b"GET /search?q=" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 414 and body["error"]["param"] == "request"
        # and a bad request keeps the connection usable for the next one (no 500, no reset)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for _ in range(2):
                s.sendall(
                    b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 11\r\n\r\n[[[[[]]]]]]"
                )
                assert read_response(s)[0] == 400
    finally:
        server.should_exit = True


# -- CLIs: one line naming the file and key, rc 2 -------------------------------------------------------
def cli(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def cli_on(module, config, tmp_path):
    """``python -m <module> --config <config>`` with the arguments the module needs besides."""
    extra = {"engine": ["耳机"], "eval": ["--out", str(tmp_path / "out")]}.get(module, [])
    return cli("-m", module, "--config", str(config), *extra)


@pytest.mark.parametrize(
    "patch, expect",
    [
        ({"index_dir": 5}, "index_dir"),
        ({"root": 5}, "root"),
        ({"text": {"user_dict": "nowhere.txt"}}, "text.user_dict"),
        ({"catalog": {"path": 5}}, "catalog.path"),
        ({"bm25": [1, 2]}, "bm25: expected a mapping"),
    ],
)
def test_cli_config_mistakes_are_one_line_naming_the_key(demo_dir, tmp_path, patch, expect):
    import yaml

    raw = {
        "name": "t",
        "root": str(ROOT),
        "catalog": {"path": str(demo_dir / "catalog.jsonl")},
        "index_dir": str(tmp_path / "idx"),
        **patch,
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    for module in ("engine", "indexer", "eval"):
        r = cli_on(module, path, tmp_path)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, (module, r.stderr)


def test_a_config_that_is_not_utf8_and_an_eval_without_its_catalog_say_so(demo_dir, tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: café\ncatalog: {path: x.jsonl}\nindex_dir: idx\n".encode("latin-1"))
    for module in ("engine", "indexer", "eval"):
        r = cli_on(module, bad, tmp_path)
        assert r.returncode == 2 and "UTF-8" in r.stderr and "Traceback" not in r.stderr, (module, r.stderr)
    import yaml

    cfg = tmp_path / "gone.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "root": str(ROOT),
                "catalog": {"path": str(tmp_path / "gone.jsonl")},
                "index_dir": str(tmp_path / "idx"),
                "search": {"stages": ["bm25"]},
                "eval": {"queries": str(demo_dir / "queries.tsv")},
            }
        ),
        encoding="utf-8",
    )
    r = cli("-m", "eval", "--config", str(cfg), "--stages", "bm25", "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "gone.jsonl" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_damaged_event_store_is_refused_with_a_clear_message(engine, cfg):
    from engine.events import EventError, SQLiteEventStore

    engine.user_events().record("u1", engine.products.ids[0], "click")
    engine.user_events().store.close()
    path = cfg.personal.path
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF  # a flipped byte in the header
    path.write_bytes(bytes(data))
    with pytest.raises(EventError, match="damaged"):
        SQLiteEventStore(path)
    np.testing.assert_equal(path.exists(), True)  # refused, not replaced: nothing is lost
