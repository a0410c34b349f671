"""`make finetune` end to end on tiny data: click log → bi-encoder → dense index → cross-encoder → reranked hits."""

import json

import numpy as np
import pytest

from engine import SearchEngine
from core.formats.clicklog import read_clicklog
from finetune.inputs import load_training_data
from finetune.job import run_job
from indexer.build import stale_stages
from indexer.encoder import ModelMissingError, model_fingerprint
from indexer.store import read_manifest


def test_a_missing_fine_tuned_model_names_the_command(job_cfg, trained, tmp_path):
    import dataclasses

    cfg = dataclasses.replace(job_cfg, rerank=dataclasses.replace(job_cfg.rerank, model=str(tmp_path / "nothing")))
    with pytest.raises(ModelMissingError, match="make finetune"):
        SearchEngine.from_config(cfg)


def test_the_time_cut_keeps_later_events_out_of_training(job_cfg, demo_dir):
    data = load_training_data(job_cfg)
    events = read_clicklog(demo_dir / "clicks.jsonl")
    cut = max(e.timestamp for e in events) - 10 * 86400
    later = {(e.query.strip(), e.product_id) for e in events if e.timestamp >= cut and e.event != "impression"}
    earlier = {(e.query.strip(), e.product_id) for e in events if e.timestamp < cut and e.event != "impression"}
    trained_pairs = {(data.train.texts[q], p) for q, pos in data.train.positives.items() for p in pos}
    assert trained_pairs == earlier and trained_pairs - later == earlier - later
    dev_pairs = {(data.dev.texts[q], p) for q, pos in data.dev.positives.items() for p in pos}
    assert dev_pairs <= later and len(data.dev) == 40


def test_the_job_writes_both_models_with_cards_and_reindexes(job_cfg, trained):
    out = job_cfg.finetune.out_dir
    for name in ("bi-encoder", "cross-encoder"):
        card = json.loads((out / name / "model_card.json").read_text())
        assert card["steps"] == 6 and [e["step"] for e in card["log"]] == [0, 3, 6]
        assert card["best_dev"] == max(e["dev"] for e in card["log"]) and "time cut" in card["data"]
        assert (out / f"{name}.log.json").is_file() and not (out / f"{name}.resume.pt").exists()
    assert json.loads((out / "cross-encoder" / "model_card.json").read_text())["num_layers"] == 1
    manifest = read_manifest(job_cfg.index_dir / "dense", "dense", verify=False)
    assert manifest["encoder"]["fingerprint"] == model_fingerprint(out / "bi-encoder", 64)
    assert not stale_stages(job_cfg, ["bm25", "dense", "dense-base"])
    summary = json.loads((out / "finetune.json").read_text())
    assert set(summary["models"]) == {"bi-encoder", "cross-encoder", "ranker"}
    card = json.loads((out / "ranker" / "model_card.json").read_text())
    assert card["sessions"] > 10 and "strictly before" in card["point_in_time"]
    assert (out / "ranker" / "model.txt").is_file() and (out / "ranker" / "features.json").is_file()


def test_resume_keeps_finished_models(job_cfg, trained):
    out = job_cfg.finetune.out_dir
    before = (out / "cross-encoder" / "model.safetensors").stat().st_mtime_ns
    summary = run_job(job_cfg, resume=True, progress=False)
    assert all("kept" in v for v in summary["models"].values())
    assert (out / "cross-encoder" / "model.safetensors").stat().st_mtime_ns == before


def test_a_model_paused_by_its_time_cap_is_not_finished_and_the_job_says_how_to_go_on(tmp_path):
    from finetune.inputs import finished, paused_notes

    card = {"settings_hash": "k", "steps": 157, "max_steps": 400, "paused": True, "training": {"max_minutes": 22}}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    assert not finished(tmp_path, "k")  # --resume trains it on instead of keeping it
    (tmp_path / "model_card.json").write_text(json.dumps({**card, "paused": False}))
    assert finished(tmp_path, "k") and not finished(tmp_path, "other settings")
    notes = paused_notes({"bi-encoder": card, "cross-encoder": {**card, "paused": False}, "ranker": "kept"}, "c.yaml")
    assert len(notes) == 1 and "step 157 of 400" in notes[0] and "finetune.biencoder.max_minutes" in notes[0]
    assert "RESUME=1" in notes[0]
    # the cap only pauses, so it is no setting of the model: a model finished under one cap is kept under another
    from core.config.training import BiEncoderTrainConfig
    from finetune.inputs import settings_hash

    assert settings_hash(BiEncoderTrainConfig(max_minutes=22)) == settings_hash(BiEncoderTrainConfig(max_minutes=60))
    assert settings_hash(BiEncoderTrainConfig(max_steps=300)) != settings_hash(BiEncoderTrainConfig(max_steps=400))


def test_the_engine_reranks_the_union_of_first_stage_candidates(job_cfg, trained):
    eng = SearchEngine.from_config(job_cfg)
    text = "华为 手机"
    cands = eng.candidates_many([text])[0]
    assert len(cands.rows) == len(set(cands.rows.tolist())) > 20  # two stages' top-20, merged
    bm, de = eng.retrieve(text, 20, "bm25"), eng.retrieve(text, 20, "dense")
    assert set(cands.rows.tolist()) == set(bm.rows.tolist()) | set(de.rows.tolist())

    hits = eng.query(text, k=10)
    titles = [eng.products.titles[int(r)] for r in cands.rows]
    ce = eng.cross_encoder().predict([text] * len(titles), titles)
    from engine.rerank import combine

    expected = cands.rows[np.argsort(-combine(ce, cands.scores, 0.5), kind="stable")][:10]
    assert [h.product_id for h in hits] == [eng.products.ids[int(r)] for r in expected]

    # beyond the reranked union the hybrid ranking continues, without repeats
    deep = eng.retrieve(text, 200, "rerank")
    # (the union from 200-deep stage lists cut to 20: BM25 ties at rank 20 may break differently at another k)
    union = eng.stage_candidates([text], eng.live, deep=200)[0][0]
    n = len(union.rows)
    assert len(deep.rows) == 200 and len(set(deep.rows.tolist())) == 200
    assert set(deep.rows[:n].tolist()) == set(union.rows.tolist())
    hybrid = eng.retrieve(text, 200, "hybrid")
    rest = [r for r in hybrid.rows.tolist() if r not in set(union.rows.tolist())]
    assert deep.rows[n:].tolist() == rest[: 200 - n]
    assert np.all(np.diff(deep.scores) <= 0)


def test_rerank_respects_filters_and_batches_like_single_queries(job_cfg, trained):
    eng = SearchEngine.from_config(job_cfg)
    hits = eng.query("耳机", k=10, filters={"category": "耳机"})
    assert hits and all(
        eng.products.categories[eng.products.category_codes[eng.products.row_of(h.product_id)]] == "耳机" for h in hits
    )
    texts = ["华为 手机", "猫粮", "蓝牙耳机 降噪"]
    batched = eng.retrieve_many(texts, 30, "rerank")
    for t, b in zip(texts, batched):
        single = eng.retrieve(t, 30, "rerank")
        # the same scores whatever batch a pair was scored in (padding differs: float noise only)
        np.testing.assert_allclose(single.scores, b.scores, atol=1e-3)  # z-scores of a barely trained tiny model
        assert set(single.rows.tolist()) == set(b.rows.tolist())


def test_eval_overrides_parse_into_config_sections():
    from core.config import parse_overrides
    from core.config import ConfigError

    assert parse_overrides(["rerank.weight=0.6", "rerank.model=models/x", "search.candidates=50"]) == {
        "rerank": {"weight": 0.6, "model": "models/x"},
        "search": {"candidates": 50},
    }
    with pytest.raises(ConfigError, match="SECTION.FIELD=VALUE"):
        parse_overrides(["weight=0.6"])


def test_settings_that_do_not_change_a_model_stay_out_of_its_settings_hash():
    import dataclasses

    from finetune.inputs import settings_hash
    from core.config import BiEncoderTrainConfig, PersonalConfig

    be, personal = BiEncoderTrainConfig(), PersonalConfig()
    assert settings_hash(dataclasses.replace(be, workers=4)) == settings_hash(be)  # wall time only
    assert settings_hash(dataclasses.replace(personal, dsn="postgresql://x", pg_schema="s")) == settings_hash(
        personal
    )  # where events are stored
    assert settings_hash(dataclasses.replace(be, lora_rank=8)) != settings_hash(be)  # set: it counts
    assert settings_hash(dataclasses.replace(be, lr=1e-4)) != settings_hash(be)


def test_graded_pairs_give_known_negatives_first_and_their_own_settings_hash(job_cfg, trained, tmp_path):
    import dataclasses

    from finetune.data import TrainingQueries
    from finetune.crossencoder_stage import negative_titles

    eng = SearchEngine.from_config(job_cfg)
    ids, titles = eng.products.ids, eng.products.titles
    data = TrainingQueries({"q": "耳机"}, {"q": {ids[0]: 3.0}}, {"q": {ids[2], ids[1]}})
    mined = {"q": [ids[1], ids[3], "no-such-product", ids[4]]}
    # judged-lower products first (sorted), then the mined ones not already there; unknown ids skipped
    known = [titles[i] for i in sorted((1, 2), key=lambda i: ids[i])]
    assert negative_titles(eng, data, "q", mined) == known + [titles[3], titles[4]]
    # reading the grades changes what the models learn: it enters their settings hash (through the data source);
    # unset, the source is the file as before
    judged = tmp_path / "train.tsv"
    judged.write_text("query\tpid\trelevance\n耳机\t" + ids[0] + "\t3\n耳机\t" + ids[1] + "\t1.33\n", encoding="utf-8")
    ft = dataclasses.replace(job_cfg.finetune, train=judged, format="judged", dev=judged)
    plain = load_training_data(dataclasses.replace(job_cfg, finetune=ft))
    graded = load_training_data(dataclasses.replace(job_cfg, finetune=dataclasses.replace(ft, positive_relevance=2.5)))
    assert plain.source == str(judged) and graded.source != plain.source
    assert list(plain.train.negatives.values()) == [set()] and list(graded.train.negatives.values()) == [{ids[1]}]


def test_the_job_trains_what_the_config_uses(job_cfg):
    import dataclasses

    from finetune.job import JOB_STAGES, config_stages

    assert config_stages(job_cfg) == list(JOB_STAGES)  # a reranking config: all three
    no_rerank = dataclasses.replace(job_cfg, rerank=dataclasses.replace(job_cfg.rerank, model=None))
    assert config_stages(no_rerank) == ["bi-encoder"]  # Home Depot: no cross-encoder to train by default
    base = dataclasses.replace(job_cfg.dense, model=str(job_cfg.dense.base_model))
    assert config_stages(dataclasses.replace(job_cfg, dense=base)) == ["cross-encoder", "ranker"]  # the demo


def _judged_cfg(job_cfg, tmp_path, n: int, prefix: int, ranker):
    """``job_cfg`` trained on judged pairs instead of its click log: the first ``prefix`` characters of each of
    the first ``n`` product titles as a query judging that product (1), with the given ranker settings."""
    import dataclasses

    eng = SearchEngine.from_config(job_cfg)
    ids, titles = eng.products.ids, eng.products.titles
    judged = tmp_path / "train.tsv"
    judged.write_text(
        "query\tpid\trelevance\n" + "".join(f"{titles[i][:prefix]}\t{ids[i]}\t1\n" for i in range(n)), encoding="utf-8"
    )
    ft = dataclasses.replace(job_cfg.finetune, train=judged, format="judged", dev=judged, dev_queries=2, ranker=ranker)
    return dataclasses.replace(job_cfg, finetune=ft)


def test_the_rankers_queries_can_be_held_out_of_the_cross_encoders_training(job_cfg, trained, tmp_path, monkeypatch):
    import dataclasses

    import finetune.crossencoder
    from finetune.inputs import ranker_held_out, ranker_queries
    from finetune.crossencoder_stage import train_crossencoder

    ranker = dataclasses.replace(job_cfg.finetune.ranker, max_queries=4, held_out=True)
    cfg = _judged_cfg(job_cfg, tmp_path, 12, 8, ranker)
    cfg = dataclasses.replace(cfg, rerank=dataclasses.replace(job_cfg.rerank, ranker=str(tmp_path / "ranker")))
    ft = cfg.finetune
    data = load_training_data(cfg)
    held = ranker_held_out(cfg, data)
    assert len(held) == 4 and held == set(ranker_queries(data, ft.ranker)) and held <= set(data.train.texts)
    # off, without a ranker in use, or for a click log (its ranker learns from sessions): nothing held out
    off = dataclasses.replace(cfg, finetune=dataclasses.replace(ft, ranker=job_cfg.finetune.ranker))
    assert ranker_held_out(off, data) == set()
    assert ranker_held_out(dataclasses.replace(cfg, rerank=dataclasses.replace(cfg.rerank, ranker=None)), data) == set()
    assert (
        ranker_held_out(
            dataclasses.replace(job_cfg, finetune=dataclasses.replace(job_cfg.finetune, ranker=ft.ranker)),
            load_training_data(job_cfg),
        )
        == set()
    )

    seen = {}

    def fake_train(model, examples, t, out, **kw):
        seen["queries"] = {e.query for e in examples}
        return {}

    monkeypatch.setattr(finetune.crossencoder, "train", fake_train)
    card = train_crossencoder(cfg, data, tmp_path / "ce", resume=False, progress=False)
    held_texts = {data.train.texts[q] for q in held}
    assert seen["queries"] and not seen["queries"] & held_texts  # the cross-encoder never saw the ranker's queries
    assert seen["queries"] <= {data.train.texts[q] for q in data.train.texts if q not in held}
    assert "4 training queries left out" in card["ranker_held_out"]
    train_crossencoder(off, data, tmp_path / "ce-off", resume=False, progress=False)
    assert seen["queries"] & held_texts  # without the setting they are trained on


def test_a_judged_pairs_ranker_can_choose_its_trees_by_cross_validation(job_cfg, trained, tmp_path):
    import dataclasses

    from finetune.ranker_stage import train_ranker_stage

    ranker = dataclasses.replace(
        job_cfg.finetune.ranker, max_queries=40, cv_folds=3, min_data_in_leaf=5, early_stopping=5, num_rounds=60
    )
    cfg = _judged_cfg(job_cfg, tmp_path, 40, 10, ranker)
    ft = cfg.finetune
    card = train_ranker_stage(cfg, load_training_data(cfg), tmp_path / "ranker", progress=False)
    assert card["sessions"] >= 10 and card["valid_sessions"] == 0 and card["train_sessions"] == card["sessions"]
    assert card["validation"].startswith("3-fold cross-validation")
    assert 1 <= card["best_iteration"] <= 60
    # without it the last sessions stop the boosting early, as for click logs
    plain = dataclasses.replace(cfg, finetune=dataclasses.replace(ft, ranker=dataclasses.replace(ranker, cv_folds=0)))
    card = train_ranker_stage(plain, load_training_data(plain), tmp_path / "ranker-plain", progress=False)
    assert card["valid_sessions"] > 0 and "stop the boosting early" in card["validation"]
