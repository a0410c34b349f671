"""The candidate sets the final ranker orders: stage scores looked up deeper than the lists that chose them."""

import dataclasses

import numpy as np
import pytest

from core.config import ConfigError

QUERIES = ["蓝牙耳机", "运动鞋 男", "手机壳", "咖啡机"]


def _engine(cfg, depth: int, lookup: int, **rerank):
    from engine.search import SearchEngine

    r = dataclasses.replace(cfg.rerank, depth=depth, lookup_depth=lookup, **rerank)
    return SearchEngine.from_config(dataclasses.replace(cfg, rerank=r))


def test_lookup_depth_gives_one_stage_candidates_the_other_stages_exact_score(live_cfg):
    plain, deep = _engine(live_cfg, 4, 0), _engine(live_cfg, 4, 40)
    exact = 0
    for q in QUERIES:
        assert plain.understand(q).text == q  # candidate_sets takes understood text
        a, b = plain.candidate_sets([q])[0], deep.candidate_sets([q])[0]
        assert a.rows.tolist() == b.rows.tolist()  # the same candidates, in the same order
        np.testing.assert_allclose(a.ce, b.ce, rtol=1e-5)
        for stage in ("bm25", "dense"):
            full = deep.retrieve(q, k=40, stage=stage)
            pos = {int(r): i for i, r in enumerate(full.rows)}
            for j, row in enumerate(b.rows):
                if int(row) in pos:  # within the stage's top 40: its own score and rank there
                    assert b.stage_scores[stage][j] == pytest.approx(float(full.scores[pos[int(row)]]), rel=1e-5)
                    assert b.stage_ranks[stage][j] == pos[int(row)] + 1
                    if pos[int(row)] >= 4:  # outside the top 4 that chose the candidates
                        exact += 1
                        assert a.stage_ranks[stage][j] == 5  # before: absent, rank depth + 1
                        assert a.stage_scores[stage][j] >= b.stage_scores[stage][j] - 1e-6  # the list's lowest
                else:
                    assert b.stage_ranks[stage][j] == 41
        # the features do not depend on how deep a request asks (a long page fetches longer lists)
        c = deep.candidate_sets([q], deep=200)[0]
        assert c.rows.tolist() == b.rows.tolist()
        for stage in ("bm25", "dense"):
            np.testing.assert_array_equal(c.stage_scores[stage], b.stage_scores[stage])
            np.testing.assert_array_equal(c.stage_ranks[stage], b.stage_ranks[stage])
    assert exact > 0, "no candidate was found deeper in the other list: the test would not see a broken lookup"


def test_lookup_depth_below_the_rerank_depth_is_refused(tmp_path, demo_dir):
    from conftest import make_config

    with pytest.raises(ConfigError, match="lookup_depth"):
        rerank = {"model": "models/ce", "depth": 20, "lookup_depth": 10}
        make_config(tmp_path, demo_dir / "catalog.jsonl", rerank=rerank)


def test_a_ranker_is_served_only_with_the_lookup_it_learnt_from(live_cfg):
    from engine.models import ModelMismatchError

    ranker = str(live_cfg.finetune.out_dir / "ranker")  # the tiny job's ranker: it learnt without a lookup
    assert _engine(live_cfg, 4, 0, ranker=ranker).query("手机壳", k=5).hits
    with pytest.raises(ModelMismatchError, match="lookup_depth 40"):
        _engine(live_cfg, 4, 40, ranker=ranker).query("手机壳", k=5)
    # the online experiment's candidate ranker is held to the same lookup
    serve = dataclasses.replace(
        live_cfg.serve, interleave=dataclasses.replace(live_cfg.serve.interleave, candidate=ranker)
    )
    assert _engine(dataclasses.replace(live_cfg, serve=serve), 4, 0)._version.ranker("candidate") is not None
    with pytest.raises(ModelMismatchError, match="lookup_depth 40"):
        _engine(dataclasses.replace(live_cfg, serve=serve), 4, 40)._version.ranker("candidate")


def test_base_cosine_gives_each_candidate_the_zero_shot_encoders_cosine(live_cfg):
    from engine.features import BASE, FEATURES

    on, off = _engine(live_cfg, 4, 0, base_cosine=True), _engine(live_cfg, 4, 0)
    cols = [FEATURES.index(f) for f in BASE]
    rest = [i for i in range(len(FEATURES)) if i not in cols]
    for q in QUERIES:
        a, b = off.candidate_sets([q])[0], on.candidate_sets([q])[0]
        assert a.base is None and a.rows.tolist() == b.rows.tolist()
        # the dense-base stage's own search over every product: its inner products are the cosines
        full = on.retrieve(q, k=len(on.products), stage="dense-base")
        cos = dict(zip(full.rows.tolist(), full.scores.tolist()))
        np.testing.assert_allclose(b.base, [cos[int(r)] for r in b.rows], atol=2e-3)  # float16 vectors
        Xa, Xb = off.features(a), on.features(b)
        assert not Xa[:, cols].any()  # off: not computed
        np.testing.assert_array_equal(Xa[:, rest], Xb[:, rest])  # nothing else moves
        base_cos, gap, rank = Xb[:, cols].T
        np.testing.assert_array_equal(base_cos, b.base)
        assert gap.max() == 0 and np.all(gap <= 0)
        assert sorted(rank.tolist()) == list(range(1, len(b.rows) + 1))
        assert base_cos[rank == 1][0] == base_cos.max()
        hit = on.query(q, k=3, explain=True).hits[0]  # the explanation shows it
        assert hit.explain["base_cosine"] == pytest.approx(cos[on.products.row_of(hit.product_id)], abs=2e-3)
        assert "base_cosine" not in off.query(q, k=3, explain=True).hits[0].explain


def test_base_cosine_needs_the_cross_encoder_and_brings_its_index(tmp_path, demo_dir, live_cfg):
    from conftest import make_config
    from indexer.dense import index_stages

    with pytest.raises(ConfigError, match="base_cosine"):
        make_config(tmp_path, demo_dir / "catalog.jsonl", rerank={"base_cosine": True})
    assert "dense-base" not in index_stages(live_cfg)
    on = dataclasses.replace(live_cfg, rerank=dataclasses.replace(live_cfg.rerank, base_cosine=True))
    assert "dense-base" in index_stages(on)  # make index builds what the feature reads


def test_base_cosine_runs_its_query_encoder_on_onnx(live_cfg):
    from engine.onnx_models import OnnxQueryEncoder
    from finetune.export_onnx import export_config

    cfg = dataclasses.replace(
        live_cfg,
        rerank=dataclasses.replace(live_cfg.rerank, base_cosine=True),
        dense=dataclasses.replace(live_cfg.dense, query_runtime="onnx"),
    )
    exported = export_config(cfg, if_missing=True, only_used=True, kinds=("query-encoder",))
    assert str(live_cfg.dense.base_model) in {r["source"] for r in exported}
    onnx_eng, torch_eng = _engine(cfg, 4, 0), _engine(live_cfg, 4, 0, base_cosine=True)
    assert isinstance(onnx_eng.dense_stage("dense-base")[0], OnnxQueryEncoder)
    for q in QUERIES:
        np.testing.assert_allclose(
            onnx_eng.candidate_sets([q])[0].base, torch_eng.candidate_sets([q])[0].base, atol=1e-3
        )


def test_a_ranker_reads_the_base_cosine_only_where_it_is_computed(live_cfg, tmp_path):
    from engine.features import BASE
    from engine.models import ModelMismatchError
    from engine.ranker import Ranker
    from finetune.inputs import load_training_data
    from finetune.ranker_stage import train_ranker_stage

    job_ranker = Ranker.load(live_cfg.finetune.out_dir / "ranker")  # learnt with the setting off: never reads them
    assert not set(BASE) & set(job_ranker.features)
    cfg = dataclasses.replace(live_cfg, rerank=dataclasses.replace(live_cfg.rerank, base_cosine=True, ranker=None))
    card = train_ranker_stage(cfg, load_training_data(cfg), tmp_path / "ranker", progress=False)
    assert set(BASE) <= set(card["features"]) and card["candidates"]["base_cosine"] is True
    path = str(tmp_path / "ranker")
    assert _engine(live_cfg, 20, 0, base_cosine=True, ranker=path).query("手机壳", k=5).hits
    with pytest.raises(ModelMismatchError, match="base_cosine"):
        _engine(live_cfg, 20, 0, ranker=path).query("手机壳", k=5)
