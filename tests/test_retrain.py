"""Issue 24, part 2: `make retrain` learns the ranker from logged traffic, debiased, and ships only on a win."""

import dataclasses
import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from core.config import RetrainConfig
from core.formats.judged import read_queries
from engine.query_clicks import read_npz
from engine.search import SearchEngine
from eval.sim.traffic import ClickModel, attractiveness, served_lists, simulate
from finetune.promote import promote, rollback
from finetune.retrain import RetrainError, run_retrain

DAY = 86400.0


def folder_digest(p: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def rcfg(live_cfg, tmp_path):
    """The tiny trained pipeline with its ranker copied to a private folder the retrain may replace."""
    ranker = tmp_path / "models" / "ranker"
    shutil.copytree(Path(live_cfg.finetune.out_dir) / "ranker", ranker)
    retrain = RetrainConfig(reports=tmp_path / "reports", min_searches=20, window_days=14, holdout_days=2)
    return dataclasses.replace(
        live_cfg,
        rerank=dataclasses.replace(live_cfg.rerank, ranker=str(ranker)),
        finetune=dataclasses.replace(live_cfg.finetune, retrain=retrain),
    )


def judged_targets(cfg, n: int = 40):
    j = read_queries(cfg.eval.queries)
    qids = [q for q in j.texts if j.relevance.get(q)][:n]
    return [j.texts[q] for q in qids], {j.texts[q]: attractiveness(j.relevance[q]) for q in qids}


def traffic(cfg, days=8, per_day=2, wrong=None, shuffle_clicks=False, span=DAY, seed=0, explore=0.3):
    """``days`` days (each ``span`` seconds) of simulated shoppers on the judged queries, ending now; with
    ``shuffle_clicks`` every query "wants" a random product instead of its judged ones."""
    engine = SearchEngine.from_config(dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, ranker=None)))
    texts, wanted = judged_targets(cfg)
    lists = served_lists(engine, texts)
    rng = np.random.default_rng(seed)
    if shuffle_clicks:
        wanted = {q: {str(rng.choice(lists[q])): 1.0} for q in texts if lists.get(q)}
    ev = engine.user_events()
    now = time.time() - 60
    users = [f"u{i}" for i in range(30)]
    for d in range(days):
        t0 = now - (days - d) * span
        sessions = [(str(rng.choice(users)), q, t0 + rng.random() * span * 0.9) for q in texts for _ in range(per_day)]
        simulate(ev, lists, wanted, sorted(sessions, key=lambda s: s[2]), ClickModel(eta=1.0), rng, explore)
    return engine, texts, wanted, lists, now + 30


def test_real_clicks_retrain_ship_and_swap_the_ranker_folder_atomically(rcfg):
    _, texts, wanted, _, until = traffic(rcfg, per_day=3)
    ranker = Path(rcfg.rerank.ranker)
    before = folder_digest(ranker)
    report = run_retrain(rcfg, until=until, progress=False)
    assert report["ship"], report["decision"]
    assert report["logs"]["split"].startswith("the last 2 day")
    assert set(report["methods"]) == {"naive", "position_term", "lgbm_position", "pbm_ips"}
    g = report["methods"][report["chosen"]]["holdout"]
    assert g["ci_low"] > 0 and g["new_clicks@10"] > g["serving_clicks@10"]
    prop = report["click_model"]["propensity"]
    assert prop[0] == 1.0 and prop[4] < 0.6  # θ_r = 1/r: rank 5 examined far less than rank 1
    assert folder_digest(ranker) != before
    assert folder_digest(Path(report["previous"])) == before  # the old folder kept whole, for rollback
    card = (ranker / "model_card.json").read_text()
    assert '"debias"' in card and "examination propensity" in card
    for name in ("retrain.json", "retrain.md", "retrain.png"):
        assert (rcfg.finetune.retrain.reports / name).stat().st_size > 0
    # a running engine switches on reload, and rollback restores the old files
    eng = SearchEngine.from_config(dataclasses.replace(rcfg))
    v1 = eng.versions()["ranker"]
    # forgetting a shopper takes their clicks out of the served query clicks at once, without a reload
    models = eng._version.models
    old = {q: v.copy() for q, (_, v) in models.query_clicks().table.items()}
    assert read_npz(ranker / "query_clicks.npz")[4] is not None  # saved with the parts a forget needs
    assert eng.forget_user("u0") > 0
    new = models.query_clicks().table
    assert new.keys() <= old.keys() and any(
        len(new.get(q, ((), ()))[1]) != len(v) or not np.allclose(new[q][1], v) for q, v in old.items()
    )
    assert not eng.stale() and eng.versions()["ranker"] == v1
    rollback(ranker)
    assert folder_digest(ranker) == before
    assert eng.reload()["changed"] and eng.versions()["ranker"] != v1


def test_a_model_trained_on_shuffled_labels_is_refused(rcfg):
    traffic(rcfg, shuffle_clicks=True)
    ranker = Path(rcfg.rerank.ranker)
    before = folder_digest(ranker)
    report = run_retrain(rcfg, until=time.time(), progress=False)
    assert not report["ship"], report["methods"]
    assert report["decision"].startswith("not promoted")
    assert folder_digest(ranker) == before
    assert Path(report["candidate"]).is_dir()  # kept for inspection, not served


def test_a_crash_mid_retrain_leaves_the_serving_ranker_untouched(rcfg, monkeypatch):
    traffic(rcfg, days=4)
    ranker = Path(rcfg.rerank.ranker)
    before = folder_digest(ranker)

    def boom(*a, **k):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr("finetune.ranker.fit_ranker", boom)
    monkeypatch.setattr("finetune.ranker_delta.fit_on_top", boom)
    with pytest.raises(RuntimeError):
        run_retrain(rcfg, until=time.time(), progress=False)
    assert folder_digest(ranker) == before
    assert not Path(str(ranker) + ".previous").exists()


def test_an_hour_of_traffic_trains_and_guards_split_by_time_fraction(rcfg):
    traffic(rcfg, days=4, per_day=2, span=900.0)  # four quarter-hours
    report = run_retrain(rcfg, until=time.time(), progress=False, promote=False)
    assert "too short to hold out 2 day(s)" in report["logs"]["split"]
    assert 0 < report["logs"]["holdout_searches"] < report["logs"]["searches"] * 0.5
    assert "ci_low" in report["methods"][report["chosen"]]["holdout"]


def test_too_little_traffic_is_a_clear_error(rcfg):
    traffic(rcfg, days=1, per_day=1)
    cfg = dataclasses.replace(
        rcfg, finetune=dataclasses.replace(rcfg.finetune, retrain=RetrainConfig(min_searches=10_000))
    )
    with pytest.raises(RetrainError, match="min_searches is 10000"):
        run_retrain(cfg, until=time.time(), progress=False)


def test_a_bot_clicking_one_wrong_product_a_thousand_times_is_not_promoted(rcfg):
    engine, texts, wanted, lists, until = traffic(rcfg)
    q = texts[0]
    bad = next(p for p in reversed(lists[q]) if p not in wanted[q])
    ev = engine.user_events()
    t0 = until - 3 * DAY
    rng = np.random.default_rng(1)
    bot_lists = {q: lists[q]}
    sessions = [("bot", q, t0 + i * 60.0) for i in range(1000)]
    simulate(ev, bot_lists, {q: {bad: 1.0}}, sessions, ClickModel(eta=0.0, p_relevant=1.0, p_noise=0.0), rng)
    report = run_retrain(rcfg, until=until, progress=False, promote=False)
    assert report["logs"]["users_over_the_cap"] >= 1 and report["logs"]["most_searches_by_one_user"] >= 900
    new = SearchEngine.from_config(
        dataclasses.replace(rcfg, rerank=dataclasses.replace(rcfg.rerank, ranker=report["candidate"]))
    )
    top = [h.product_id for h in new.query(q, k=10).hits]
    assert bad not in top[:3], (top, bad, lists[q])


def test_a_shop_without_a_ranker_retrains_on_top_of_the_zscore_mix(rcfg):
    ranker = Path(rcfg.rerank.ranker)
    shutil.rmtree(ranker)  # the shop serves the z-score mix: no learned ranker yet
    traffic(rcfg)
    report = run_retrain(rcfg, until=time.time(), progress=False)
    assert report["serving"].startswith("none") and report["ship"], report["decision"]
    assert (ranker / "mix.json").is_file() and (ranker / "delta-1.txt").is_file()
    j = report["judged"]
    assert j["with_traffic"]["diff"] > 0.03 and j["without_traffic"]["diff"] == 0.0
    eng = SearchEngine.from_config(rcfg)
    mix = SearchEngine.from_config(dataclasses.replace(rcfg, rerank=dataclasses.replace(rcfg.rerank, ranker=None)))
    texts, _ = judged_targets(rcfg, n=200)
    quiet = texts[40:]  # the judged queries without traffic answer exactly as the z-score mix did
    for q in quiet[:20]:  # ... to the last bit of their scores: the delta of a product without clicks is exactly 0
        assert [(h.product_id, h.score) for h in eng.query(q).hits] == [
            (h.product_id, h.score) for h in mix.query(q).hits
        ]
    assert "+1d@" in eng.versions()["ranker"]


def test_promote_swaps_whole_folders_and_rollback_restores(tmp_path):
    serving, staged = tmp_path / "ranker", tmp_path / "ranker.staging"
    serving.mkdir()
    (serving / "model.txt").write_text("old")
    staged.mkdir()
    (staged / "model.txt").write_text("new")
    prev = promote(staged, serving)
    assert (serving / "model.txt").read_text() == "new" and (prev / "model.txt").read_text() == "old"
    assert not staged.exists()
    rollback(serving)
    assert (serving / "model.txt").read_text() == "old"
    assert (tmp_path / "ranker.previous" / "model.txt").read_text() == "new"
    fresh = tmp_path / "other.staging"
    fresh.mkdir()
    (fresh / "model.txt").write_text("first")
    assert promote(fresh, tmp_path / "other") is None and (tmp_path / "other" / "model.txt").read_text() == "first"


def test_click_pairs_weigh_a_click_by_how_rarely_its_rank_is_looked_at():
    from types import SimpleNamespace

    from finetune.ranker_sessions import Session
    from finetune.retrain_ce import click_groups

    eng = SimpleNamespace(products=SimpleNamespace(titles=[f"t{i}" for i in range(6)]))
    s = Session("u", "q", 0.0, {0: 1.0, 4: 2.0}, [0, 1, 2, 3, 4, 5])  # clicked rank 1, carted rank 5
    groups = click_groups(eng, [s], [1.0, 0.5, 0.4, 0.3, 0.25, 0.2], clip=3.0)
    assert [(g.positive, g.gain) for g in groups] == [("t0", 1.0), ("t4", 2.0 * 3.0)]  # 1/0.25 = 4, clipped at 3
    assert groups[0].negatives == ["t1", "t2", "t3", "t5"]  # shown and passed over: never an engaged one


def test_the_cross_encoder_retrains_on_click_pairs_and_ships_and_rolls_back_with_the_ranker(rcfg, tmp_path):
    from finetune.retrain_ce import rollback_models

    from engine.ranker import Ranker

    ce = tmp_path / "models" / "cross-encoder"
    shutil.copytree(rcfg.rerank.model, ce)
    # the shop serves the z-score mix: the retrain can build on it over any cross-encoder's scores (a learned
    # ranker read the old model's scores, so a fresh one is fitted, which a few days of traffic rarely make win)
    shutil.rmtree(rcfg.rerank.ranker)
    Ranker.mix(rcfg.rerank.weight).save(Path(rcfg.rerank.ranker))
    ft = rcfg.finetune
    cfg = dataclasses.replace(
        rcfg,
        rerank=dataclasses.replace(rcfg.rerank, model=str(ce)),
        finetune=dataclasses.replace(ft, retrain=dataclasses.replace(ft.retrain, crossencoder_minutes=0.25)),
    )
    _, _, _, _, until = traffic(cfg, explore=0.5, per_day=3)
    ce_before, ranker_before = folder_digest(ce), folder_digest(Path(cfg.rerank.ranker))
    report = run_retrain(cfg, until=until, progress=False)
    card = report["cross_encoder"]
    assert card["usable_groups"] > 100 and card["holdout_searches"] > 20
    assert card["holdout_mrr_new"] > card["holdout_mrr_serving"], card  # the click pairs taught it something
    assert report["ship"], report["decision"]
    assert folder_digest(ce) != ce_before and folder_digest(Path(report["previous_cross_encoder"])) == ce_before
    ranker_card = (Path(cfg.rerank.ranker) / "model_card.json").read_text()
    assert "cross_encoder_retrained" in ranker_card
    eng = SearchEngine.from_config(cfg)  # the promoted pair loads: the ranker read the new model's scores
    assert eng.query("蓝牙耳机", k=3).hits
    assert sorted(rollback_models(cfg)) == sorted([cfg.rerank.ranker, str(ce)])
    assert folder_digest(ce) == ce_before and folder_digest(Path(cfg.rerank.ranker)) == ranker_before
