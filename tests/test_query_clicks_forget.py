"""Forgetting a user takes their share out of the final ranker's query clicks (``query_clicks.npz``) at once:
exactly what a snapshot counted without them would hold, read through the event store as `make retrain` reads it."""

import time
from types import SimpleNamespace

import numpy as np

from core.config import RetrainConfig
from engine import forgotten
from engine.events import Impression
from engine.query_clicks import FILE, QueryClicks, forget_in, read_npz
from finetune.retrain_data import read_sessions

from test_personal import events_for

GAINS = {"click": 1.0, "add_to_cart": 2.0, "purchase": 3.0}
PROPENSITY = np.array([1.0, 0.6, 0.4, 0.3, 0.2])


def log_traffic(ev, now: float, users=("alice", "bob", "carol", "dave")) -> None:
    """Each user searches 耳机 and 手机 a few times (shown P0..P4 in turns) and clicks; alice clicks P3 for 耳机
    twice over three searches, bob and carol click it too, dave only looks."""
    imps, clicks = [], []
    for user in users:
        u = ("alice", "bob", "carol", "dave").index(user)  # the same traffic per user whoever else there is
        rng = np.random.default_rng(u)
        key = ev.user_key(user, for_write=True)
        for s in range(3 + u):
            q = "耳机" if s % 2 == 0 else "手机"
            order = [f"P{i}" for i in rng.permutation(5)]
            sid = f"s-{user}-{s}"
            t = now - 3600 * (10 - s) - u
            imps.append(Impression(sid, t, key, q, None, products=order))
            if user != "dave":
                pid = "P3" if q == "耳机" else order[int(rng.integers(5))]
                clicks.append((key, pid, "click", t + 5, q, (sid, order.index(pid) + 1, None)))
    ev.log_impressions(imps)
    users_, pids, events, ts, queries, links = zip(*clicks)
    rows = np.array([int(p[1:]) for p in pids])
    ev.append_bulk(list(users_), list(pids), rows, list(events), np.array(ts), list(queries), list(links))


def snapshot_of(ev, until: float) -> QueryClicks:
    row_of = {p: i for i, p in enumerate(ev.product_ids)}
    logged = read_sessions(ev, row_of, GAINS, RetrainConfig(), until)
    return logged.query_click_timeline(PROPENSITY, 1.0).at(until).snapshot(logged.since)


def table_of(path) -> dict:
    queries, products, sizes, vals, _, _ = read_npz(path)
    out, start = {}, 0
    for q, n in zip(queries, sizes.tolist()):
        out.update({(q, products[i]): float(vals[i]) for i in range(start, start + n)})
        start += n
    return out


def test_a_forget_leaves_exactly_the_snapshot_counted_without_the_user(tmp_path):
    now = time.time()
    ev = events_for(tmp_path / "a")
    log_traffic(ev, now)
    ids = list(ev.product_ids)
    folder = tmp_path / "ranker"
    folder.mkdir()
    snap = snapshot_of(ev, now + 60)
    snap.save(folder, ids)
    before = table_of(folder / FILE)
    assert before[("耳机", "P3")] > 0 and snap.meta["since"] < now < snap.meta["until"]

    cfg = SimpleNamespace(root=tmp_path, rerank=SimpleNamespace(ranker=str(folder)))
    cfg.serve = SimpleNamespace(interleave=SimpleNamespace(candidate=None))
    key = ev.user_key("alice", for_write=True)
    changed = forgotten.forget_query_clicks(cfg, ev.store, key)
    ev.forget("alice")
    after = table_of(folder / FILE)

    twin = events_for(tmp_path / "b")  # the same traffic never having had alice
    log_traffic(twin, now, users=("bob", "carol", "dave"))
    (tmp_path / "twin").mkdir()
    snapshot_of(twin, now + 60).save(tmp_path / "twin", ids)
    expected = table_of(tmp_path / "twin" / FILE)
    assert changed > 0 and after.keys() == expected.keys()
    assert np.allclose([after[k] for k in expected], [expected[k] for k in expected])
    assert after[("耳机", "P3")] < before[("耳机", "P3")]  # one of three clickers gone
    # nothing of hers is left to take: a second forget changes nothing
    assert forgotten.forget_query_clicks(cfg, ev.store, key) == 0 and table_of(folder / FILE) == after


def test_a_snapshot_without_parts_drops_what_the_user_clicked(tmp_path):
    ids = [f"P{i}" for i in range(5)]
    QueryClicks({"耳机": (np.array([1, 3]), np.array([0.2, 0.5]))}).save(tmp_path, ids)
    mine = Impression("s1", 10.0, "k", "耳机", None, products=["P3", "P1"])
    assert forget_in(tmp_path / FILE, [mine], [("s1", "P3", 11.0)]) == 1
    assert table_of(tmp_path / FILE) == {("耳机", "P1"): 0.2}  # P1 only seen: its value stays
    other = Impression("s2", 10.0, "k", "手机", None, products=["P1"])
    assert forget_in(tmp_path / FILE, [other], []) == 0  # nothing of theirs in it: untouched
