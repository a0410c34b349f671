"""Probe a running service the way issue 22's probe did (`make probe-service CONFIG=...`): ids that split a
list, times that freeze a profile, writes without a key, cross-site posts, leaks, hostile values, what uvicorn
refuses, a bot's clicks, forgetting, adds under search load, a kill -9 in the middle of an add.

The service is started (and killed) by the probe, with an admin key of its own, over the config's built index
(``python -m indexer --config CONFIG`` first).  Each check prints PASS or FAIL; the exit code is 1 when one fails.
It changes the index (adds products) and the event store: run it on a copy, never on a shop's live data.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from core.cli import command

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "probe-admin-" + str(os.getpid())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(config: str, log: Path) -> tuple[subprocess.Popen, str, int]:
    """``python -m engine.service`` on a free port with the probe's admin key, once it is ready."""
    port = free_port()
    env = {**os.environ, "ECOMSEARCH_ADMIN_KEY": ADMIN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.service", "--config", config, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url, port
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}; see {log}")
        time.sleep(0.5)
    raise SystemExit(f"the service did not get ready; see {log}")


def probe(config: str, log: Path) -> list[tuple[str, bool, str]]:
    results: list[tuple[str, bool, str]] = []
    RUN = str(int(time.time()))

    def check(name, ok, detail=""):
        results.append((name, bool(ok), str(detail)))
        print(("PASS " if ok else "FAIL ") + name + (f"  [{detail}]" if detail != "" else ""), flush=True)

    proc, url, port = start(config, log)
    A = {"Authorization": f"Bearer {ADMIN}"}
    c = httpx.Client(base_url=url, timeout=120)
    ids = [h["product_id"] for h in c.get("/search", params={"q": "手机", "k": 50}).json()["hits"]]
    victim = ids[5]

    # -- ids ------------------------------------------------------------------------------------------------
    for bad in ["PX-newline\n" + victim, "a\rb", "a\u2028b", "x" * 300]:
        r = c.post("/products", json=[{"id": bad, "title": "探针 商品"}], headers=A)
        check(f"POST /products id {bad[:12]!r} refused", r.status_code == 422, r.status_code)
    r = c.delete("/products/PX-newline%0A" + victim, headers=A)
    check("DELETE /products/PX-newline%0A<id> refused", r.status_code == 422, r.status_code)
    check(
        "the other product still searchable",
        victim in [h["product_id"] for h in c.get("/search", params={"q": "手机", "k": 50}).json()["hits"]],
    )
    r = c.post("/events", json={"user_id": "u\n1", "product_id": victim, "event": "click"})
    check("event with a newline user id refused", r.status_code == 422, r.status_code)

    # -- times ----------------------------------------------------------------------------------------------
    for _ in range(20):
        c.post("/events", json={"user_id": "freeze-1", "product_id": victim, "event": "click"})
    for ts in (1e12, 0, -5, "9999-12-31", 1e300, int("9" * 400)):
        r = c.post("/events", json={"user_id": "freeze-1", "product_id": victim, "event": "click", "timestamp": ts})
        check(
            f"timestamp {str(ts)[:12]} refused",
            r.status_code == 422 and r.json()["error"]["param"] == "event.timestamp",
            r.status_code,
        )

    # -- doors ----------------------------------------------------------------------------------------------
    for method, path, kw in (
        ("delete", "/users/U0250", {}),
        ("post", "/products", {"json": [{"id": "Z1", "title": "t"}]}),
        ("delete", f"/products/{victim}", {}),
        ("post", "/admin/reload", {}),
    ):
        r = getattr(c, method)(path, **kw)
        check(f"{method.upper()} {path} without a key", r.status_code == 401, r.status_code)
        r = getattr(c, method)(path, headers={"Authorization": "Bearer wrong"}, **kw)
        check(f"{method.upper()} {path} with a wrong key", r.status_code == 401, r.status_code)
    body = json.dumps({"user_id": "csrf", "product_id": victim, "event": "click"})
    r = c.post("/events", content=body, headers={"content-type": "text/plain", "Origin": "http://evil.example"})
    check("text/plain cross-site POST /events refused", r.status_code in (403, 415), r.status_code)
    r = c.post("/events", content=body, headers={"content-type": "text/plain"})
    check("text/plain POST /events (no Origin)", r.status_code == 415, r.status_code)
    r = c.post("/events", content=body, headers={"content-type": "application/json", "Origin": "http://evil.example"})
    check("JSON POST /events from evil.example", r.status_code == 403, r.status_code)
    r = c.post(
        "/products",
        content=json.dumps([{"id": "Z2", "title": "t"}]),
        headers={"content-type": "text/plain", "Origin": "http://evil.example", **A},
    )
    check("text/plain cross-site POST /products refused", r.status_code in (403, 415), r.status_code)
    r = c.post(
        "/products", content=json.dumps([{"id": "Z2", "title": "t"}]), headers={"content-type": "text/plain", **A}
    )
    check("text/plain POST /products (no Origin)", r.status_code == 415, r.status_code)
    check("csrf user got nothing", c.get("/search", params={"q": "手机", "user": "csrf"}).status_code == 200)
    page = c.get("/")
    check(
        "page has CSP and nosniff",
        "content-security-policy" in page.headers and page.headers.get("x-content-type-options") == "nosniff",
    )
    rep = page.headers.get("x-ecomsearch-replica", "")
    check("replica header opaque", socket.gethostname() not in rep and str(proc.pid) not in rep, rep)
    r = c.post("/products", json=[{"id": victim, "title": "dup"}], headers=A)
    check(
        "409 names no server path",
        r.status_code == 409 and "/tmp" not in r.text and str(ROOT) not in r.text,
        r.text[:120],
    )

    # -- errors ---------------------------------------------------------------------------------------------
    for name, kw, status in (
        (
            "400-digit timestamp",
            {"content": '{"user_id":"u","product_id":"%s","event":"click","timestamp":%s}' % (victim, "9" * 400)},
            422,
        ),
        ("nested brackets", {"content": "[" * 50000 + "]" * 50000}, 400),
    ):
        r = c.post("/events", headers={"content-type": "application/json"}, **kw)
        check(f"{name}: {status}", r.status_code == status, r.status_code)
    r = c.post(
        "/products",
        content='[{"id":"Z3","title":"t","price":%s}]' % ("9" * 400),
        headers={"content-type": "application/json", **A},
    )
    check("400-digit price: 422", r.status_code == 422, r.status_code)
    r = c.post("/products", json=[{"id": "Z4", "title": "t", "colour": "red"}], headers=A)
    check(
        "unknown field colour: 422 named", r.status_code == 422 and r.json()["error"]["param"] == "products[0].colour"
    )
    r = c.post("/products", json=[{"id": "Z5", "title": "t", "category": {"a": 1}}], headers=A)
    check("category object: 422 named", r.status_code == 422 and r.json()["error"]["param"] == "products[0].category")
    r = c.delete("/users/%20", headers=A)
    check("DELETE /users/%20: 422", r.status_code == 422, r.status_code)
    for raw, want in (
        (b"GET /search?q=" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    ):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(raw)
            out = b""
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except ConnectionResetError:
                pass
        head, _, b = out.partition(b"\r\n\r\n")
        ok = head.startswith(b"HTTP/1.1 %d" % want) and b.startswith(b'{"error"')
        check(f"raw request -> JSON {want}", ok, head.split(b"\r\n")[0])

    # -- clicks that lie ------------------------------------------------------------------------------------
    q = "蓝牙耳机"
    before = [h["product_id"] for h in c.get("/search", params={"q": q, "k": 30}).json()["hits"]]
    target = before[24]
    r = c.post("/events", json=[{"user_id": "bot-1", "product_id": target, "event": "click"}] * 1000)
    after = [h["product_id"] for h in c.get("/search", params={"q": q, "k": 30}).json()["hits"]]
    check(
        "1,000 bot clicks move the anonymous ranking by <= 1",
        abs(after.index(target) - 24) <= 1 if target in after else False,
        f"{24} -> {after.index(target) if target in after else 'gone'}",
    )

    # -- forgetting -----------------------------------------------------------------------------------------
    for i in range(50):
        c.post("/events", json={"user_id": "spammer-1", "product_id": ids[i % 10], "event": "click"})
    r = c.delete("/users/spammer-1", headers=A)
    check("forget spammer-1", r.status_code == 200 and r.json()["events_deleted"] == 50, r.text[:80])

    # -- adds: latency and searches meanwhile -----------------------------------------------------------------
    lat = []
    stop = threading.Event()

    def searcher():
        with httpx.Client(base_url=url, timeout=120) as s:
            while not stop.is_set():
                t = time.perf_counter()
                s.get("/search", params={"q": "华为手机", "k": 10})
                lat.append(time.perf_counter() - t)

    base = []
    for _ in range(20):
        t = time.perf_counter()
        c.get("/search", params={"q": "华为手机", "k": 10})
        base.append(time.perf_counter() - t)
    th = threading.Thread(target=searcher)
    th.start()
    adds = []
    for i in range(5):
        t = time.perf_counter()
        r = c.post(
            "/products", json=[{"id": f"ADD-{RUN}-{i}", "title": f"探针 新品 蓝牙音箱 型号{i}", "price": 99}], headers=A
        )
        adds.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    stop.set()
    th.join()
    check(
        "POST /products one product",
        True,
        f"median {statistics.median(adds) * 1000:.0f} ms, max {max(adds) * 1000:.0f} ms",
    )
    check(
        "searches during adds",
        True,
        f"p50 {statistics.median(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms "
        f"(idle p50 {statistics.median(base) * 1000:.0f} ms)",
    )
    r = c.delete(f"/products/ADD-{RUN}-0", headers=A)
    r = c.post("/products", json=[{"id": f"ADD-{RUN}-0", "title": f"探针 回来 的 商品 {RUN}"}], headers=A)
    check(
        "a deleted id added again without a rebuild",
        r.status_code == 200
        and c.get("/search", params={"q": f"探针 回来 的 商品 {RUN}", "k": 1}).json()["hits"][0]["product_id"]
        == f"ADD-{RUN}-0",
        r.status_code,
    )

    # -- kill -9 during an add ------------------------------------------------------------------------------
    killer = threading.Timer(0.05, lambda: os.kill(proc.pid, signal.SIGKILL))
    killer.start()
    try:
        c.post(
            "/products", json=[{"id": f"KILL-{RUN}-{i}", "title": f"被杀 的 添加 {i}"} for i in range(50)], headers=A
        )
    except httpx.HTTPError:
        pass
    proc.wait()
    proc, url, port = start(config, log)
    c = httpx.Client(base_url=url, timeout=120)
    r = c.get("/ready")
    check("restart after kill -9 mid-add loads", r.status_code == 200, r.status_code)
    idx = subprocess.run(
        [sys.executable, "-m", "indexer", "--config", config, "--if-stale", "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    check("indexer --if-stale after the kill", idx.returncode == 0, idx.stdout.strip()[-120:])
    proc.terminate()
    proc.wait()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = command("eval.bench.probe_service", __doc__.split("\n")[0], None)
    ap.add_argument("--log", default="reports/probe/service.log")
    args = ap.parse_args(argv)
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    results = probe(args.config, log)
    failed = [r for r in results if not r[1]]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks pass")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
