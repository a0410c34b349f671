"""`make serve WORKERS=2`: two stateless replicas over one Milvus collection and one PostgreSQL event store,
under a concurrent load: no errors, both answer, a delete through one is never returned by either."""

import dataclasses
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

if not os.environ.get("CI"):
    pytest.importorskip("pymilvus", reason="pip install -e '.[scale]'")

from indexer.build import ensure_indexes  # noqa: E402
from core.config import write_config  # noqa: E402

from conftest import ROOT, copy_config  # noqa: E402

ADMIN = "replicas-test-admin-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def replicas(job_cfg, trained, tmp_path, pg_dsn):
    import httpx

    cfg = copy_config(job_cfg, tmp_path)
    cfg = dataclasses.replace(
        cfg,
        search=dataclasses.replace(
            cfg.search, backend="milvus", milvus=dataclasses.replace(cfg.search.milvus, uri=str(tmp_path / "milvus.db"))
        ),
        personal=dataclasses.replace(cfg.personal, store="postgres", dsn=pg_dsn, pg_schema="replicas"),
        serve=dataclasses.replace(cfg.serve, watch_seconds=0.5),
    )
    ensure_indexes(cfg, progress=False)
    path = write_config(cfg, tmp_path / "replicas.yaml")
    port = free_port()
    log = open(tmp_path / "service.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.service", "--config", str(path), "--port", str(port), "--workers", "2"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "ECOMSEARCH_ADMIN_KEY": ADMIN},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        seen = set()
        deadline = time.time() + 120
        while time.time() < deadline and len(seen) < 2:  # both replicas loaded and answering
            try:
                r = httpx.get(f"{url}/ready", timeout=2)
                if r.status_code == 200:
                    seen.add(r.headers["x-ecomsearch-replica"])
            except httpx.HTTPError:
                time.sleep(0.3)
            assert proc.poll() is None, (tmp_path / "service.log").read_text()
        assert len(seen) == 2, (tmp_path / "service.log").read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_two_replicas_serve_a_load_without_errors_and_share_deletes_and_events(replicas, pg_dsn):
    import httpx

    queries = ["手机", "蓝牙耳机", "猫粮", "运动鞋", "笔记本电脑", "面膜", "儿童玩具", "咖啡"]

    def search(i):
        with httpx.Client(timeout=30) as c:  # a new connection per request: the kernel picks a replica
            r = c.get(f"{replicas}/search", params={"q": queries[i % len(queries)], "k": 10})
            return r.status_code, r.headers["x-ecomsearch-replica"], r.json()

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(search, range(120)))
    assert all(code == 200 for code, _, _ in out), [(code, body) for code, _, body in out if code != 200][:3]
    assert len({rep for _, rep, _ in out}) == 2  # both replicas took part

    victim = out[0][2]["hits"][0]["product_id"]
    with httpx.Client(timeout=30) as c:
        assert c.delete(f"{replicas}/products/{victim}", headers={"Authorization": f"Bearer {ADMIN}"}).json()["deleted"]
        ev = c.post(
            f"{replicas}/events",
            json={"user_id": "u-shared", "product_id": out[0][2]["hits"][1]["product_id"], "event": "purchase"},
        )
        assert ev.status_code == 200
    after = []
    while len({rep for _, rep, _ in after}) < 2 and len(after) < 300:  # until both replicas have answered
        after.append(search(0))
    assert len({rep for _, rep, _ in after}) == 2
    for code, rep, body in after:
        assert code == 200 and victim not in [h["product_id"] for h in body["hits"]], rep
    # events through either replica land in the one PostgreSQL store every replica reads profiles from
    answered, sent = set(), 0
    while (len(answered) < 2 or sent < 30) and sent < 300:
        with httpx.Client(timeout=30) as c:
            r = c.post(
                f"{replicas}/events",
                json={"user_id": f"u{sent % 3}", "event": "click", "product_id": out[1][2]["hits"][0]["product_id"]},
            )
        assert r.status_code == 200
        answered.add(r.headers["x-ecomsearch-replica"])
        sent += 1
    assert len(answered) == 2
    import psycopg

    with psycopg.connect(pg_dsn, options="-c search_path=replicas") as con:
        assert con.execute("SELECT COUNT(*) FROM events").fetchone()[0] == sent + 1
        assert con.execute("SELECT COUNT(*) FROM profiles").fetchone()[0] == 4
