"""The cascade in query(): a larger cross-encoder (``rerank.teacher``) reorders the final order's top few."""

import dataclasses

import numpy as np
import pytest

from core.config import ConfigError
from engine.final_rank import reorder_top


def test_reorder_top_moves_only_the_block_and_keeps_it_above_the_rest():
    score = np.array([0.2, 3.0, 1.0, 2.0, 0.5])
    order = np.argsort(-score, kind="stable")  # 1, 3, 2, 4, 0
    new, new_order = reorder_top(score, order, np.array([-1.0, 0.0, 5.0]), 1.0)
    assert new_order.tolist() == [2, 3, 1, 4, 0]  # the teacher's order within the top 3, the rest as it was
    assert np.all(np.diff(new[new_order]) <= 0), "scores must follow the new order"
    assert new[[2, 3, 1]].min() > new[[4, 0]].max()
    _, same = reorder_top(score, order, np.array([-1.0, 0.0, 5.0]), 0.0)
    assert same.tolist() == order.tolist()  # weight 0: the final score alone
    # half and half: row 3 is second by score but last by the teacher, row 2 the reverse: 3 ends last
    _, both = reorder_top(score, order, np.array([0.0, -5.0, 5.0]), 0.5)
    assert set(both[:3].tolist()) == {1, 2, 3} and both[2] == 3 and both[3:].tolist() == [4, 0]


def test_a_teacher_needs_a_cross_encoder_and_a_block_of_two(tmp_path, demo_dir):
    from conftest import make_config

    for rerank in ({"teacher": "models/t"}, {"model": "models/ce", "teacher": "models/t", "teacher_top": 1}):
        with pytest.raises(ConfigError, match="rerank.teacher"):
            make_config(tmp_path, demo_dir / "catalog.jsonl", rerank=rerank)


def test_query_reorders_the_top_block_by_the_teacher_and_says_so(live_cfg):
    from engine.rerank import CrossEncoder
    from engine.search import SearchEngine

    plain = SearchEngine.from_config(live_cfg)
    teacher_path = live_cfg.rerank.model  # the tiny trained cross-encoder stands in for a larger one
    cfg = dataclasses.replace(
        live_cfg, rerank=dataclasses.replace(live_cfg.rerank, teacher=teacher_path, teacher_top=4, teacher_weight=1.0)
    )
    taught = SearchEngine.from_config(cfg)
    teacher = CrossEncoder.load(teacher_path)
    moved = 0
    for q in ["蓝牙耳机", "运动鞋 男", "手机壳", "咖啡机"]:
        a = plain.query(q, k=10)
        b = taught.query(q, k=10, explain=True)
        ids_a, ids_b = [h.product_id for h in a.hits], [h.product_id for h in b.hits]
        assert sorted(ids_a[:4]) == sorted(ids_b[:4]) and ids_a[4:] == ids_b[4:]
        t = teacher.predict([q] * 4, [h.title for h in b.hits[:4]])
        assert np.all(np.diff(t) <= 1e-5), f"{q}: the top 4 must follow the teacher at weight 1"
        assert all("teacher" in h.explain for h in b.hits[:4]) and not any("teacher" in h.explain for h in b.hits[4:])
        moved += ids_a[:4] != ids_b[:4]
        cov = [h.explain["text_match"]["coverage"] for h in b.hits[:4]]
        assert all(0 <= c <= 1 for c in cov) and max(cov) > 0  # the query's words are in its best titles
    assert moved > 0, "the teacher never changed an order: the test would not see a broken cascade"
    assert "teacher" in taught.query("手机").versions


def test_the_cascade_study_starts_from_the_order_query_gives(live_cfg):
    from eval.cascade import base_order
    from engine.search import SearchEngine

    ranker = str(live_cfg.finetune.out_dir / "ranker")
    for cfg in (live_cfg, dataclasses.replace(live_cfg, rerank=dataclasses.replace(live_cfg.rerank, ranker=ranker))):
        engine = SearchEngine.from_config(cfg)
        for q in ["蓝牙耳机", "运动鞋 男"]:
            cand = engine.candidate_sets([q], engine.live)[0]
            score, order = base_order(engine, cand, cfg)
            shown = [h.product_id for h in engine.query(q, k=10).hits]
            ids = engine.products.ids
            assert [ids[r] for r in cand.rows[order[:10]]] == shown[: min(10, len(order))]
            assert np.all(np.diff(score[order]) <= 0)
    assert engine.ranker() is not None
