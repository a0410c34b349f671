"""Pseudo-labels from the distillation teacher's cache: the confident top titles of unlabeled queries."""

import json

import numpy as np

from finetune.pseudo_labels import pick, read_cache, write_pairs


def test_confident_unlabeled_queries_get_their_top_title_and_nothing_else(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    chunk = [
        ["蓝牙耳机", ["耳机 A", "耳机 B", "手机壳"], [3.0, 0.5, -1.0]],  # leads by 2.5: kept
        ["手机壳", ["手机壳 红", "手机壳 蓝"], [1.0, 0.9]],  # leads by 0.1: too close
        ["运动鞋", ["跑鞋", "袜子"], [4.0, 0.0]],  # a training query: judged already
        ["保温杯", ["杯子"], [2.0]],  # one candidate: no margin to read
    ]
    (cache / "chunk-0000000-a.json").write_text(json.dumps(chunk, ensure_ascii=False), encoding="utf-8")
    (cache / "chunk-0000128-b.json").write_text('[["cut short', encoding="utf-8")  # a killed run's chunk
    (cache / "chunk-0000256-c.json").write_text(
        json.dumps([["蓝牙耳机", ["耳机 B", "耳机 A"], [9.0, 0.0]]], ensure_ascii=False), encoding="utf-8"
    )
    scored = list(read_cache(cache))
    assert len(scored) == 5 and isinstance(scored[0][2], np.ndarray)
    picked = pick(scored, 1.0, exclude={"运动鞋"})
    assert [(q, t) for q, t, _ in picked] == [("蓝牙耳机", "耳机 A")]  # its first appearance only

    train = tmp_path / "train.tsv"
    train.write_text("qid\tquery\tpid\n1\t运动鞋\tp9\n", encoding="utf-8")
    out = tmp_path / "pseudo" / "pairs.tsv"
    assert write_pairs(out, picked + [("旧查询", "已下架", 3.0)], {"耳机 A": "p1"}, train) == 1
    assert out.read_text(encoding="utf-8").splitlines() == [
        "qid\tquery\tpid",
        "1\t运动鞋\tp9",
        "pseudo-0\t蓝牙耳机\tp1",
    ]
