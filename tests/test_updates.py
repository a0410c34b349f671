import json

import numpy as np
import pytest

from engine import SearchEngine
from indexer.bm25 import BM25Index
from indexer.build import build_indexes
from core.formats.catalog import read_catalog
from core.config import BM25Config, TextConfig
from indexer.updates import add_products

from conftest import tiny_dense_config

NEW = [
    {"id": "N1", "title": "量子波动 速读 机器人 XQ-900", "category": "儿童玩具", "brand": "乐高", "price": 99},
    {"id": "N2", "title": "喵星人 自动 猫砂盆 智能 除臭", "category": "猫粮", "brand": "新品牌", "price": 599},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def cfg(demo_dir, tiny_model, tmp_path):
    return tiny_dense_config(tmp_path, demo_dir, tiny_model, bm25={"fields": {"words": 0.3, "chars": 0.7}})


def test_added_products_score_as_in_a_full_rebuild(demo_dir, tmp_path):
    base = read_catalog(demo_dir / "catalog.jsonl")
    new = read_catalog(write_jsonl(tmp_path / "new.jsonl", NEW))
    both = read_catalog(
        write_jsonl(
            tmp_path / "all.jsonl", [json.loads(l) for l in (demo_dir / "catalog.jsonl").read_text().splitlines()] + NEW
        )
    )
    bc = BM25Config(fields={"words": 0.3, "chars": 0.7})
    # same jieba dictionary on both sides (an added product's new brand joins it only at the next rebuild)
    tc = TextConfig(dict_from_catalog=False)
    added = BM25Index.build(base, tc, bc).add(new)
    full = BM25Index.build(both, tc, bc)
    assert added.products.ids.tolist() == full.products.ids.tolist()
    for q in ("猫砂盆", "华为 手机", "机器人 xq-900", "蓝牙耳机 降噪"):
        np.testing.assert_allclose(added.scores(q), full.scores(q), rtol=1e-5, atol=1e-6)


def test_add_without_rebuild_reaches_every_stage(cfg, tmp_path):
    report = add_products(cfg, read_catalog(write_jsonl(tmp_path / "new.jsonl", NEW)), progress=False)
    n = report["stages"]["bm25"]
    assert report["stages"]["dense"] == n and report["added"] == 2
    eng = SearchEngine.from_config(cfg)  # loads: table, BM25 and FAISS agree on the products
    # the fused order depends on the tiny dense model (it likes every 猫 title); the candidates hold it
    assert eng.products.row_of("N2") in eng.retrieve("猫砂盆", k=50, stage="hybrid").rows
    assert eng.products.ids[int(eng.retrieve("猫砂盆", k=1, stage="bm25").rows[0])] == "N2"
    assert eng.products.row_of("N1") in eng.retrieve("量子波动 速读 机器人", k=len(eng.products), stage="dense").rows
    # a new brand gets a filter value too
    assert [h.product_id for h in eng.query("猫砂盆 智能", k=10, filters={"brand": "新品牌"})] == ["N2"]
    with pytest.raises(ValueError, match="already in the index"):
        add_products(cfg, read_catalog(write_jsonl(tmp_path / "again.jsonl", NEW[:1])), progress=False)


def test_deleted_product_never_returned_and_purged_at_rebuild(cfg):
    eng = SearchEngine.from_config(cfg)
    top = eng.query("华为 手机", k=1)[0].product_id
    row = eng.products.row_of(top)
    assert eng.delete([top]) == 1
    for stage in ("bm25", "dense"):
        res = eng.retrieve("华为 手机", k=len(eng.products), stage=stage)
        assert row not in res.rows
    assert top not in [h.product_id for h in eng.query("华为 手机", k=100)]
    assert top not in [h.product_id for h in SearchEngine.from_config(cfg).query("华为 手机", k=100)]  # persisted
    with pytest.raises(KeyError, match="not in the index"):
        eng.delete(["no-such-product"])
    n_before = len(eng.products)
    build_indexes(cfg, progress=False)  # full rebuild: the deleted product leaves the index files
    rebuilt = SearchEngine.from_config(cfg)
    assert len(rebuilt.products) == n_before - 1 and top not in rebuilt.products.ids.tolist()
    assert rebuilt.dense_stage("dense")[1].n == n_before - 1
