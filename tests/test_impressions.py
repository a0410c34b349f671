"""Issue 24, part 1: the service logs what every search showed, and events answer a search by its id."""

import sqlite3
import threading
import time

import numpy as np
import pytest

from engine.events import Impression, SQLiteEventStore
from engine.search import SearchEngine
from engine.service import create_app
from engine.service.http import Keys
from engine.service.impressions import ImpressionLog

from conftest import tiny_dense_config
from test_personal import events_for, store_kind  # noqa: F401  (store_kind: SQLite and PostgreSQL)

ADMIN = "admin-secret-1"


@pytest.fixture()
def engine(demo_dir, tiny_model, tmp_path):
    cfg = tiny_dense_config(
        tmp_path, demo_dir, tiny_model, personal={"user_key": "k", "retention_days": 3650}, serve={"watch_seconds": 0}
    )
    return SearchEngine.from_config(cfg)


def client_for(engine):
    from fastapi.testclient import TestClient

    app = create_app(engine, watch=False, keys=Keys(admin=ADMIN))
    return TestClient(app, raise_server_exceptions=False), app.state.impressions


def impression_count(engine) -> int:
    return int(engine.user_events().store._con().execute("SELECT COUNT(*) FROM impressions").fetchone()[0])


def test_every_search_logs_what_it_showed_and_log_false_logs_nothing(engine):
    client, log = client_for(engine)
    r = client.get("/search", params={"q": "蓝牙耳机", "k": 5, "offset": 2, "user": "U7", "category": "耳机"})
    assert r.status_code == 200, r.text
    body = r.json()
    sid = body["search_id"]
    assert isinstance(sid, str) and len(sid) >= 20  # opaque, 128 random bits
    assert [h["rank"] for h in body["hits"]] == [3, 4, 5, 6, 7]
    assert log.flush(10)
    ev = engine.user_events()
    imp = ev.impression(sid)
    assert imp.products == [h["product_id"] for h in body["hits"]]  # the ids shown, in order
    assert imp.user == ev.user_key("U7") and imp.user != "U7"  # hashed, never the raw id
    assert (imp.query, imp.k, imp.offset, imp.filters) == ("蓝牙耳机", 5, 2, {"category": "耳机"})
    assert imp.versions == body["versions"] and imp.searched == body.get("searched", imp.searched)
    assert imp.rank_of(imp.products[1]) == 4
    n = impression_count(engine)
    r = client.get("/search", params={"q": "蓝牙耳机", "log": "false"})  # monitoring traffic
    assert r.status_code == 200 and r.json()["search_id"] is None
    assert log.flush(10) and impression_count(engine) == n
    second = client.get("/search", params={"q": "手机"}).json()["search_id"]
    assert second != sid and log.flush(10) and impression_count(engine) == n + 1


def test_an_event_answers_a_search_it_inherits_query_rank_and_needs_no_user(engine):
    client, log = client_for(engine)
    body = client.get("/search", params={"q": "蓝牙耳机", "k": 5}).json()
    sid, hits = body["search_id"], body["hits"]
    shown = hits[2]["product_id"]
    r = client.post("/events", json={"search_id": sid, "product_id": shown, "event": "click"})
    assert r.status_code == 200, r.text
    row = (
        engine.user_events()
        .store._con()
        .execute("SELECT user, query, search_id, rank, arm FROM events WHERE search_id = ?", (sid,))
        .fetchone()
    )
    assert row == (f"anon:{sid}", "蓝牙耳机", sid, 3, None)  # anonymous: counted for learning
    assert engine.user_events().store.profile(f"anon:{sid}") is None  # ... never a profile
    # with a user: the profile learns it too
    r = client.post("/events", json={"search_id": sid, "product_id": shown, "event": "add_to_cart", "user_id": "U8"})
    assert r.status_code == 200 and engine.profile("U8") is not None
    # what the search did not show, an unknown search, an event that answers no search: 422 naming the field
    other = next(p for p in engine.products.ids if p not in {h["product_id"] for h in hits})
    for item, field in (
        ({"search_id": sid, "product_id": other, "event": "click"}, "event.product_id"),
        ({"search_id": "no-such-search", "product_id": shown, "event": "click"}, "event.search_id"),
        ({"search_id": sid, "product_id": shown, "event": "impression"}, "event.event"),
        ({"search_id": 7, "product_id": shown, "event": "click"}, "event.search_id"),
        ({"product_id": shown, "event": "click"}, "event.user_id"),  # no search: a user is required
    ):
        r = client.post("/events", json=item)
        assert r.status_code == 422 and r.json()["error"]["param"] == field, (item, r.text)
    assert log.flush(10)


def test_a_click_right_after_its_search_finds_the_impression_still_queued(tmp_path):
    gate = threading.Event()
    written = []

    def slow_write(items):
        gate.wait(10)
        written.extend(items)

    log = ImpressionLog(slow_write, capacity=2, batch=10)
    imps = [Impression(f"s{i}", 1.0, None, "q", None, products=["P1"]) for i in range(4)]
    assert log.submit(imps[0])
    time.sleep(0.05)  # the writer took s0 and waits at the gate
    assert log.submit(imps[1]) and log.submit(imps[2])
    assert log.pending("s1") is imps[1]  # not written yet, still found
    assert not log.submit(imps[3]) and log.dropped == 1  # the queue is full: dropped and counted, never blocking
    gate.set()
    log.close()
    assert [i.search_id for i in written] == ["s0", "s1", "s2"]  # a graceful close writes everything queued
    assert log.pending("s1") is None and log.logged == 3


def test_dropped_impressions_are_counted_in_metrics(engine, monkeypatch):
    import queue

    class FullQueue:
        def put_nowait(self, item):
            raise queue.Full

    client, log = client_for(engine)
    monkeypatch.setattr(log, "_queue", FullQueue())  # the writer cannot keep up: the queue is full
    r = client.get("/search", params={"q": "蓝牙耳机"})
    assert r.status_code == 200 and r.json()["search_id"] is None  # answered, not logged
    assert 'ecomsearch_impressions_total{outcome="dropped"} 1.0' in client.get("/metrics").text


def test_forgetting_a_user_and_the_retention_take_their_impressions(tmp_path, store_kind):  # noqa: F811
    ev = events_for(tmp_path, kind=store_kind)
    now = time.time()
    mine = Impression("s-mine", now, ev.user_key("alice"), "q", None, products=["P1", "P2"])
    other = Impression("s-other", now, ev.user_key("bob"), "q", None, products=["P2"])
    old = Impression("s-old", now - 400 * 86400, None, "q", None, products=["P3"])
    ev.log_impressions([mine, other, old])
    assert ev.impression("s-mine").products == ["P1", "P2"] and ev.impression("nope") is None
    assert ev.store.profile(ev.user_key("alice")).taste  # what her search showed: taste evidence
    ev.forget("alice")
    assert ev.impression("s-mine") is None and ev.impression("s-other") is not None
    assert ev.store.profile(ev.user_key("alice")) is None  # and the profile holding it
    ev.purge(now)  # retention 365 days
    assert ev.impression("s-old") is None and ev.impression("s-other") is not None


def test_a_version_2_store_gets_impressions_and_event_links(tmp_path):
    path = tmp_path / "events.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        CREATE TABLE events (id INTEGER PRIMARY KEY, user TEXT NOT NULL, product TEXT NOT NULL,
                             event INTEGER NOT NULL, ts REAL NOT NULL, query TEXT, credited INTEGER NOT NULL DEFAULT 1);
        INSERT INTO events (user, product, event, ts) VALUES ('a', 'P1', 1, 1.0);
    """)
    con.commit()
    con.close()
    store = SQLiteEventStore(path)
    assert store.count_events() == 1
    cols = [r[1] for r in store._con().execute("PRAGMA table_info(events)")]
    assert cols[-3:] == ["search_id", "rank", "arm"]
    store.log_impressions([Impression("s1", 2.0, "a", "q", None, products=["P1"]).row()])
    assert Impression.from_row(store.impression("s1")).products == ["P1"]
    assert store._con().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "4"


def test_a_version_3_store_gets_the_relevance_of_what_its_searches_showed(tmp_path):
    path = tmp_path / "events.sqlite"
    SQLiteEventStore(path).log_impressions([Impression("old", 1.0, "a", "q", None, products=["P1"]).row()])
    con = sqlite3.connect(path)  # back to version 3: the impressions table without the relevance column
    con.executescript("""
        CREATE TABLE imp3 (search_id TEXT PRIMARY KEY, ts REAL NOT NULL, user TEXT, query TEXT NOT NULL,
            searched TEXT, filters TEXT, k INTEGER NOT NULL, offset_ INTEGER NOT NULL, products TEXT NOT NULL,
            versions TEXT, arm TEXT);
        INSERT INTO imp3 SELECT search_id, ts, user, query, searched, filters, k, offset_, products, versions, arm
            FROM impressions;
        DROP TABLE impressions;
        ALTER TABLE imp3 RENAME TO impressions;
        UPDATE meta SET value = '3' WHERE key = 'schema_version';
    """)
    con.commit()
    con.close()
    store = SQLiteEventStore(path)
    assert [r[1] for r in store._con().execute("PRAGMA table_info(impressions)")][-1] == "relevance"
    assert Impression.from_row(store.impression("old")).relevance is None  # logged before: none
    new = Impression("new", 2.0, "a", "q", None, products=["P1", "P2"], relevance=[-1.25, None])
    store.log_impressions([new.row()])
    assert Impression.from_row(store.impression("new")).relevance == [-1.25, None]
    assert store._con().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "4"


def test_replicas_opening_a_new_postgres_store_at_once_do_not_collide(pg_dsn):
    """Two replicas' first searches open the store at the same moment: the schema is created once, no error
    (CREATE SCHEMA IF NOT EXISTS alone races: a unique violation that became a 500)."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from engine.events import PostgresEventStore

    for _ in range(3):
        schema = f"race{uuid.uuid4().hex[:10]}"
        barrier = threading.Barrier(6)

        def open_one(_):
            barrier.wait()
            store = PostgresEventStore(pg_dsn, schema)
            n = store.count_events()
            store.close()
            return n

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(open_one, range(6))) == [0] * 6


def test_examined_counts_the_engaged_rank_and_the_skipped_above_it_once():
    from engine.events.impressions import examined, examined_exposure

    imp = Impression("s1", 0.0, "u", "q", "q", {}, 6, 0, [f"P{i}" for i in range(6)], {}, None)
    assert examined(imp, 3, 0) == ["P0", "P1", "P2"]  # the click at rank 3 and the two skipped above it
    assert examined(imp, 5, 3) == ["P3", "P4"] and examined(imp, 2, 3) == []  # only what is new
    page2 = Impression("s2", 0.0, "u", "q", "q", {}, 3, 10, ["A", "B", "C"], {}, None)
    assert examined(page2, 12, 0) == ["A", "B"]  # ranks 11 and 12 of the second page
    got = examined_exposure(
        {"s1": imp},
        [("s1", "u", 2, 20.0, 0), ("s1", "u", 4, 10.0, 0), ("s1", "anon:s1", 6, 5.0, 0), ("s1", "v", 1, 1.0, 0)],
    )
    # in time order: v's click at rank 1; u's at rank 4 (ranks 1-4), then u's at rank 2 adds nothing
    assert got == [("v", "P0", 1.0), ("u", "P0", 10.0), ("u", "P1", 10.0), ("u", "P2", 10.0), ("u", "P3", 10.0)]


def test_a_click_teaches_the_profile_what_was_skipped_above_it_and_the_retrain_replays_it(engine):
    from finetune.ranker_sessions import PointInTime
    from finetune.retrain_data import read_sessions, store_events
    from engine.profiles import ProfileSettings
    from core.config.training import RetrainConfig

    client, log = client_for(engine)
    body = client.get("/search", params={"q": "蓝牙耳机", "k": 8, "user": "U5"}).json()
    sid, hits = body["search_id"], [h["product_id"] for h in body["hits"]]
    assert log.flush(10)

    def exposure():
        return engine.user_events().store.profile(engine.user_events().user_key("U5")).exposure_total

    def click(rank, t):
        item = {"search_id": sid, "product_id": hits[rank - 1], "event": "click", "user_id": "U5", "timestamp": t}
        assert client.post("/events", json=item).status_code == 200

    t = time.time()
    click(3, t)
    assert exposure() == pytest.approx(3.0)  # ranks 1 and 2 skipped (weak negatives) and the clicked one
    click(2, t)
    assert exposure() == pytest.approx(3.0)  # nothing new was looked at
    click(6, t)
    assert exposure() == pytest.approx(6.0)  # ranks 4-6: looked at on the way down; 7 and 8 never count
    live = engine.user_events().store.profile(engine.user_events().user_key("U5"))
    ev = engine.user_events()
    row_of = engine.products.row_map()
    logged = read_sessions(ev, row_of, {"click": 1.0}, RetrainConfig(), t + 60)
    pit = PointInTime(store_events(ev, row_of, t + 60, logged.exposure), engine.facets(), ProfileSettings(30.0))
    replayed = pit.profiles_at(t + 60)[ev.user_key("U5")]
    assert replayed.exposure_total == pytest.approx(live.exposure_total)  # the retrain sees what serving saw
    assert replayed.exposure.keys() == live.exposure.keys()
    for f, values in live.exposure.items():
        assert replayed.exposure[f] == pytest.approx(values)
    # folded into profiles only: the product statistics (impressions column) do not count them
    np.testing.assert_array_equal(pit.timeline.at(np.array([row_of[h] for h in hits]), t + 60)[:, 0], 0)
