"""Recommendation models (finetune.recs → engine.recs) on tiny generated events with known structure."""

from __future__ import annotations

import numpy as np
import pytest

from engine import recs
from core.config import RecsConfig
from finetune.recs import build, build_and_save

DAY = 86400.0


def _events(seed: int = 0):
    """20 products: 0–4 phones, 5–9 cases (case 5+i fits phone i), 10–19 unrelated snacks.  Shoppers browse
    two phones in a visit, buy one and its case days later; others click two snacks in a visit."""
    rng = np.random.default_rng(seed)
    users, rows, events, ts = [], [], [], []
    t = 1_767_225_600.0
    for u in range(300):
        t += 3600.0
        if u % 2 == 0:
            p = int(rng.integers(0, 5))
            q = (p + 1) % 5
            for r, e, dt in ((p, "click", 0), (q, "click", 60), (p, "add_to_cart", 120), (p, "purchase", 180)):
                users.append(f"u{u}"), rows.append(r), events.append(e), ts.append(t + dt)
            users.append(f"u{u}"), rows.append(5 + p), events.append("purchase"), ts.append(t + 2 * DAY)
        else:
            a, b = rng.choice(np.arange(10, 20), size=2, replace=False)
            for r, dt in ((a, 0), (b, 30)):
                users.append(f"u{u}"), rows.append(int(r)), events.append("click"), ts.append(t + dt)
            users.append(f"u{u}"), rows.append(int(a)), events.append("impression"), ts.append(t + 40)
    return users, rows, events, ts


@pytest.fixture(scope="module")
def built():
    return build(*_events(), 20, RecsConfig(factors=8, iterations=10, neighbours=5, min_support=2))


def test_similar_comes_from_co_engagement_within_visits(built):
    similar, _, _, card = built
    nb, sc = similar.of(0)
    assert set(nb[:2].tolist()) == {1, 4}  # the phones browsed beside phone 0
    assert (np.diff(sc) <= 0).all() and 0 not in nb  # best first, never the product itself
    snack_nb, _ = similar.of(12)
    assert len(snack_nb) and set(snack_nb.tolist()) <= set(range(10, 20))  # snacks go with snacks
    assert card["engagements"] == 150 * 5 + 150 * 2 and card["users"] == 300  # impressions ignored


def test_bought_together_finds_the_complement_and_needs_support(built):
    _, together, _, card = built
    nb, _ = together.of(2)
    assert nb[0] == 7  # phone 2 → its case, carted/bought in the same basket (days apart)
    assert set(nb.tolist()) <= {7}  # nothing below min_support
    assert together.of(12)[0].size == 0  # snacks were never carted
    assert card["baskets"] == 150


def test_als_user_vector_follows_the_current_history(built):
    similar, together, items, card = built
    m = recs.RecModels(similar, together, items, card["regularization"], card)
    phone = m.user_vector(np.array([3]), np.array([3.0]))
    snack = m.user_vector(np.array([11, 14]), np.array([1.0, 1.0]))
    s_phone, s_snack = items @ phone, items @ snack
    assert s_phone[:10].mean() > s_phone[10:].mean() and s_snack[10:].mean() > s_snack[:10].mean()
    assert m.user_vector(np.array([], dtype=int), np.array([])) is None


def test_saved_models_load_by_product_id_and_a_failed_build_keeps_the_old(tmp_path, monkeypatch):
    ids = [f"P{i}" for i in range(20)]
    out = tmp_path / "recs"
    card = build_and_save(out, ids, *_events(), RecsConfig(factors=8, iterations=5, neighbours=5))
    assert card["products_with_together"] == 10
    m = recs.load(out, ids)
    assert m.together.of(2)[0][0] == 7
    # the serving index lost P3 and gained P99 in front: neighbours follow the ids, not the rows
    new_ids = ["P99"] + [p for p in ids if p != "P3"]
    m2 = recs.load(out, new_ids)
    row = {p: i for i, p in enumerate(new_ids)}
    assert [new_ids[r] for r in m2.together.of(row["P2"])[0]] == ["P7"]
    assert m2.similar.of(0)[0].size == 0 and all(new_ids[r] != "P3" for r in m2.similar.rows[m2.similar.rows >= 0])
    assert np.allclose(m2.items[row["P5"]], m.items[5])

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(recs, "save", boom)
    import finetune.recs as frecs

    monkeypatch.setattr(frecs, "save", boom)
    with pytest.raises(RuntimeError):
        build_and_save(out, ids, *_events(1), RecsConfig(factors=8, iterations=5, neighbours=5))
    assert recs.load(out, ids).together.of(2)[0][0] == 7  # the previous build still serves


def test_a_build_from_far_fewer_events_does_not_replace_the_serving_one(tmp_path):
    from finetune.recs import shrunk

    ids = [f"P{i}" for i in range(20)]
    out = tmp_path / "recs"
    assert shrunk(out, 10) is None  # nothing serving yet
    build_and_save(out, ids, *_events(), RecsConfig(factors=8, iterations=5))
    assert shrunk(out, 1050) is None and shrunk(out, 600) is None
    assert "300 engagements against the serving build's 1050" in shrunk(out, 300)


def test_the_quality_guard_passes_a_real_log_and_refuses_shuffled_shoppers(job_cfg, trained, demo_dir):
    import dataclasses

    from engine.search import SearchEngine
    from finetune import recs_guard
    from finetune.recs import events_of_log

    eng = SearchEngine.from_config(job_cfg, load_models=False)
    p = eng.products
    s = RecsConfig(factors=8, iterations=5, guard_min_cases=20)
    src = events_of_log(demo_dir / "clicks.jsonl", p.row_map())
    ok = recs_guard.check(eng, src, s)
    assert ok["passed"] and ok["hr_ours"] > ok["hr_popularity"], ok
    assert ok["for_you_cases"] > 0 and ok["similar_cases"] > 0 and ok["cut"] < max(src[3])
    perm = np.random.default_rng(0).permutation(len(src[0]))
    shuffled = ([src[0][i] for i in perm], *src[1:])  # every event credited to a random shopper
    bad = recs_guard.check(eng, shuffled, s)
    assert not bad["passed"] and bad["reason"].startswith("not ahead of popularity"), bad
    few = recs_guard.check(eng, src, dataclasses.replace(s, guard_min_cases=10**6))
    assert few["passed"] and "not judged" in few["reason"]


def test_held_out_cases_take_the_first_engagement_and_clicks_within_a_visit():
    from finetune.recs_guard import held_out_cases

    t = 1_000_000.0
    users = ["a", "a", "a", "a", "b", "c", "c"]
    rows = [1, 2, 3, 4, 5, 6, 7]
    events = ["click", "click", "click", "impression", "click", "click", "click"]
    ts = [t - 10, t + 1, t + 60, t + 61, t + 5, t + 100, t + 9000]
    for_you, similar = held_out_cases(users, rows, events, np.array(ts), t, 1800.0)
    assert for_you == [("a", 2)]  # b and c have no history before the cut
    assert similar == [(2, 3)]  # c's clicks are 2.5 hours apart: two visits


def test_a_build_the_guard_refuses_leaves_the_serving_models(job_cfg, trained, demo_dir, tmp_path):
    import dataclasses
    import json

    from core.config import write_config
    from core.formats.clicklog import read_clicklog, write_clicklog
    from finetune.recs import main

    events = read_clicklog(demo_dir / "clicks.jsonl")
    perm = np.random.default_rng(1).permutation(len(events))
    shuffled = [dataclasses.replace(e, user_id=events[i].user_id) for e, i in zip(events, perm)]
    write_clicklog(shuffled, tmp_path / "shuffled.jsonl")
    recs_cfg = RecsConfig(models=tmp_path / "recs", factors=8, iterations=5, guard_min_cases=20)
    good = write_config(dataclasses.replace(job_cfg, recs=recs_cfg), tmp_path / "good.yaml")
    assert main(["--config", str(good)]) == 0
    card = json.loads((tmp_path / "recs" / "model_card.json").read_text())
    assert card["guard"]["passed"] and card["guard"]["hr_ours"] > card["guard"]["hr_popularity"]
    ft = dataclasses.replace(job_cfg.finetune, train=tmp_path / "shuffled.jsonl")
    bad = write_config(dataclasses.replace(job_cfg, recs=recs_cfg, finetune=ft), tmp_path / "bad.yaml")
    assert main(["--config", str(bad)]) == 2
    assert json.loads((tmp_path / "recs" / "model_card.json").read_text()) == card  # the serving build stays
    assert main(["--config", str(bad), "--force"]) == 0


def test_judged_pairs_build_no_recommendations_and_do_not_fail_the_job(job_cfg, trained, tmp_path, capsys):
    """`make finetune` on WenTian or Home Depot (judged pairs, no shoppers) ends with this step: it says why it
    builds nothing, leaves no models, and succeeds; a missing file is still an error."""
    import dataclasses

    from core.config import write_config
    from finetune.recs import main

    judged = tmp_path / "judged.tsv"
    judged.write_text("query\tpid\trelevance\nphone\tp1\t3\n", encoding="utf-8")
    recs_cfg = RecsConfig(models=tmp_path / "recs")
    ft = dataclasses.replace(job_cfg.finetune, train=judged)
    cfg = write_config(dataclasses.replace(job_cfg, recs=recs_cfg, finetune=ft), tmp_path / "judged.yaml")
    assert main(["--config", str(cfg)]) == 0
    assert "judged pairs" in capsys.readouterr().out
    assert not (tmp_path / "recs").exists()
    ft = dataclasses.replace(job_cfg.finetune, train=tmp_path / "missing.tsv")
    gone = write_config(dataclasses.replace(job_cfg, recs=recs_cfg, finetune=ft), tmp_path / "gone.yaml")
    assert main(["--config", str(gone)]) == 2


def test_the_guard_scores_a_seeded_sample_of_a_large_stores_cases(job_cfg, trained, demo_dir):
    from engine.search import SearchEngine
    from finetune import recs_guard
    from finetune.recs import events_of_log

    eng = SearchEngine.from_config(job_cfg, load_models=False)
    p = eng.products
    src = events_of_log(demo_dir / "clicks.jsonl", p.row_map())
    s = RecsConfig(factors=8, iterations=5, guard_min_cases=5, guard_max_cases=10)
    a = recs_guard.check(eng, src, s)
    b = recs_guard.check(eng, src, s)
    assert a["for_you_cases"] + a["similar_cases"] > 20 and a["scored_cases"] == 20  # 10 per task scored
    assert a == b  # the same sample each run
