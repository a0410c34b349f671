"""make eval-recs: the time split, the targets, the metrics and a run on the tiny demo."""

from __future__ import annotations

import dataclasses

import numpy as np

from core.formats.clicklog import Event
from eval.recs import SYSTEMS, evaluate, rank_metrics, split_events, targets, write_report


def test_hit_and_ndcg_of_one_target_against_the_whole_list():
    hit, ndcg = rank_metrics([np.array([5, 7, 9]), np.array([1, 2]), np.array([3])], [7, 9, 3], k=10)
    assert hit.tolist() == [1.0, 0.0, 1.0]
    np.testing.assert_allclose(ndcg, [1 / np.log2(3), 0.0, 1.0])


def test_targets_take_the_next_click_in_a_visit_and_the_next_cart_in_a_basket():
    rows = {f"P{i}": i for i in range(6)}
    titles = [f"t{i}" for i in range(6)]
    t = 1_000_000.0
    test = [
        Event("u", "q", "P0", "click", t),
        Event("u", "q", "P1", "click", t + 60),  # similar: P1 given P0 (same visit)
        Event("u", "q", "P2", "click", t + 7200),  # a new visit: no pair with P1
        Event("u", "q", "P3", "add_to_cart", t + 7300),
        Event("u", "q", "P4", "add_to_cart", t + 86400),  # bought together: P4 given P3 (within 7 days)
        Event("v", "q", "P5", "impression", t),  # impressions are no target
    ]
    cases = targets(test, rows, {"u"}, 1800.0, 7 * 86400.0, titles)
    assert [(a, b) for a, b, _ in cases["similar"]] == [(0, 1)]
    assert [(a, b) for a, b, _ in cases["bought_together"]] == [(3, 4)]
    assert [(u, r) for u, r, _ in cases["for_you"]] == [("u", 0)]  # the first engagement after the cut
    train, test_, cut = split_events(test, rows, test_days=0.5)
    assert all(e.timestamp < cut for e in train) and all(e.timestamp >= cut for e in test_)


def test_the_evaluation_runs_on_the_tiny_demo_and_ours_beats_popularity(job_cfg, trained, tmp_path):
    from core.config import RecsConfig

    cfg = dataclasses.replace(job_cfg, recs=RecsConfig(factors=8, iterations=5))
    res = evaluate(cfg, test_days=10, progress=False, limit=150)
    for task in ("for_you", "similar", "bought_together"):
        block = res["tasks"][task]
        assert block["cases"] > 10 and set(block["systems"]) == set(SYSTEMS)
        assert 0 <= block["systems"]["ours"]["hr@10"] <= 1 and block["p99_ms"] > 0
    sim = res["tasks"]["similar"]["systems"]
    assert sim["ours"]["hr@10"] > sim["popularity"]["hr@10"]  # content and co-visits know what goes together
    write_report(tmp_path, res, {"config": "t", "products": 600, "simulated": ""})
    assert (tmp_path / "recs.png").stat().st_size > 0 and "| similar |" in (tmp_path / "report.md").read_text()


def test_weak_searches_take_each_shoppers_first_search_and_its_first_engagement(job_cfg, trained):
    from core.config import RecsConfig
    from eval.recs_weak import evaluate as evaluate_weak, searches

    rows = {f"P{i}": i for i in range(4)}
    t = 1_000.0
    log = [
        Event("u", "耳机", "P0", "impression", t),
        Event("u", "耳机", "P1", "click", t + 30),  # the target of u's 耳机 search, at the time it began
        Event("u", "耳机", "P2", "purchase", t + 60),  # a later engagement of the same search: not another case
        Event("v", "手机", "P3", "click", t + 90),
        Event("v", "", "P0", "click", t + 99),  # no query: no search
    ]
    assert searches(log, rows) == [("u", "耳机", 1, t), ("v", "手机", 3, t + 90)]
    cfg = dataclasses.replace(job_cfg, recs=RecsConfig(factors=8, iterations=5))
    res = evaluate_weak(cfg, test_days=10, limit=40, progress=False)
    m = res["missed"]
    assert res["searches"] == 40 and m["cases"] == res["missed_first_page"] > 0
    for s in ("block", "page2", "trending"):
        assert 0 <= m[s]["hr@10"] <= 1
    assert res["signal"]["flagged"] == 0  # every tiny-demo search has a full page: the count signal stays quiet
    nw = res["narrowed"]  # narrowed by filters until the signal fires: where the block is shown
    assert 0 < nw["flagged"] <= 40 and nw["mean_hits"] < cfg.recs.weak_min_hits
    for s in ("page", "block", "trending", "unfiltered"):
        assert 0 <= nw[s]["hr@10"] <= 1
    assert {"diff", "ci_low", "ci_high"} <= set(nw["block_minus_trending"])


def test_simulated_worlds_pool_their_cases_and_the_demo_seed_redraws_the_demos_log(
    job_cfg, trained, tmp_path, demo_dir
):
    import pytest

    from core.config import RecsConfig
    from engine.search import SearchEngine
    from eval.recs_worlds import NotTheDemoCatalog, demo_products, measure, write_report

    cfg = dataclasses.replace(job_cfg, recs=RecsConfig(factors=8, iterations=5))
    res = measure(cfg, [11, 21], tmp_path, users=120, valid=False, progress=False, limit=60)
    log = (tmp_path / "logs" / "clicks-11-120.jsonl").read_text()
    assert log == (demo_dir / "clicks.jsonl").read_text()  # click seed 11 is the demo's own shoppers
    assert set(res["worlds"]) == {11, 21}
    for task, block in res["pooled"].items():
        assert block["cases"] > 0 and set(block["systems"]) == set(SYSTEMS)
        assert block["best_implicit"] in ("item_knn", "als")
        v = block["vs"]["popularity"]
        assert v["diff"] == pytest.approx(
            block["systems"]["ours"]["hr@10"] - block["systems"]["popularity"]["hr@10"], abs=2e-4
        )
    assert res["pooled"]["for_you"]["cases"] > 60  # both worlds' cases, each capped at 60
    write_report(tmp_path / "out", res)
    assert "| for_you |" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "worlds.png").stat().st_size > 0
    with pytest.raises(NotTheDemoCatalog, match="not the generated demo catalog"):
        demo_products(SearchEngine.from_config(cfg).products, seeds=(8,))
