import json

from pathlib import Path

import numpy as np
import pytest

from engine import SearchEngine
from core.config import ConfigError
from engine.fusion import fuse, reciprocal_rank_fusion, score_fusion
from core.types import SearchResult
from indexer.build import build_indexes, ensure_indexes, stale_stages
from indexer.dense import DenseIndex
from indexer.encoder import Encoder, ModelMissingError, resolve_model
from indexer.store import IndexLoadError

from conftest import make_config, write_tiny_bert


def unit(rng, n, d=16):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF8,Flat"])
def test_faiss_index_finds_nearest_and_filters_inside_search(factory):
    rng = np.random.default_rng(0)
    v = unit(rng, 600)
    d = DenseIndex(DenseIndex.build(v, factory), {}, nprobe=8, ef_search=64)
    res = d.search(v[:5], k=3)
    assert [r.rows[0] for r in res] == [0, 1, 2, 3, 4]
    assert np.allclose([r.scores[0] for r in res], 1.0, atol=1e-5)
    mask = np.zeros(600, dtype=bool)
    mask[300:] = True
    masked = d.search(v[:5], k=10, mask=mask)
    assert all(len(r.rows) == 10 and (r.rows >= 300).all() for r in masked)
    exact = np.argsort(-(v[300:] @ v[0]))[:10] + 300
    assert len(set(masked[0].rows) & set(exact)) >= 8


def test_invalid_factory_and_too_small_ivf_are_explained():
    v = unit(np.random.default_rng(1), 50)
    with pytest.raises(ValueError, match="factory"):
        DenseIndex.build(v, "NotAnIndex42")
    with pytest.raises(ValueError, match="at least 64 products"):
        DenseIndex.build(v, "IVF64,Flat")


def test_encoder_prefixes_normalizes_and_fingerprints(tiny_model, tmp_path):
    enc = Encoder(tiny_model, max_length=32, device="cpu")
    q = enc.encode_queries(["华为 手机", "蓝月亮 洗衣液"])
    p = enc.encode_passages(["华为 手机"])
    assert q.shape == (2, 32) and q.dtype == np.float32
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(q[0], p[0])  # "query: " and "passage: " prefixes differ
    assert Encoder(tiny_model, max_length=16, device="cpu").fingerprint != enc.fingerprint
    other = write_tiny_bert(tmp_path / "other", ["华为"], seed=1)
    assert Encoder(other, max_length=32, device="cpu").fingerprint != enc.fingerprint


def test_missing_model_names_the_command(tmp_path):
    with pytest.raises(ModelMissingError, match="make model"):
        resolve_model("models/base", tmp_path)
    with pytest.raises(ModelMissingError, match="make finetune"):
        resolve_model("models/wentian/bi-encoder", tmp_path)


def test_rrf_fuses_by_rank():
    a = SearchResult(np.array([1, 2, 3]), np.array([9.0, 8.0, 7.0], dtype=np.float32))
    b = SearchResult(np.array([3, 4]), np.array([0.9, 0.8], dtype=np.float32))
    fused = reciprocal_rank_fusion([a, b], k=4)
    assert fused.rows[0] == 3  # in both lists
    assert set(fused.rows) == {1, 2, 3, 4}


def test_weighted_rrf_and_score_fusion():
    a = SearchResult(np.array([1, 2, 3]), np.array([9.0, 8.0, 1.0], dtype=np.float32))
    b = SearchResult(np.array([3, 4, 5]), np.array([0.90, 0.50, 0.49], dtype=np.float32))
    # a stage weighted 0 adds nothing: the other stage's order (its absent products after it)
    assert list(fuse([a, b], 6, "rrf", [1.0, 0.0]).rows[:3]) == [1, 2, 3]
    assert list(fuse([a, b], 6, "rrf", [0.0, 1.0]).rows[:3]) == [3, 4, 5]
    # ranks: 3 is in both lists and wins; scores: 1 and 3 each top one list, 3 is last in a (scaled 0 there), and
    # 2 (scaled 7/8 in a) passes 4 (1/41 in b), which rank fusion would tie by rank
    assert fuse([a, b], 5, "rrf").rows[0] == 3
    s = score_fusion([a, b], 5, span=3)
    assert list(s.rows) == [1, 3, 2, 4, 5]
    assert np.allclose(s.scores, [1.0, 1.0, 7 / 8, 1 / 41, 0.0], atol=1e-6)
    # dense weighted 2: its best (3) leads
    assert list(score_fusion([a, b], 5, [1.0, 2.0], span=3).rows) == [3, 1, 2, 4, 5]
    with pytest.raises(ValueError, match="unknown method 'max'"):
        fuse([a, b], 5, "max")


def test_score_fusion_scale_does_not_depend_on_depth():
    rng = np.random.default_rng(0)
    lists = []
    for _ in range(2):
        rows = rng.permutation(2000)[:1000]
        lists.append(SearchResult(rows, np.sort(rng.gamma(2.0, size=1000))[::-1].astype(np.float32)))
    short = [SearchResult(r.rows[:100], r.scores[:100]) for r in lists]
    deep, page = score_fusion(lists, 20, span=100), score_fusion(short, 20, span=100)
    assert list(deep.rows) == list(page.rows)
    # scaled over the whole list instead, the deep list's top would differ from the page's
    assert list(score_fusion(lists, 20, span=1000).rows) != list(page.rows)


def test_fusion_settings_are_checked():
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="search.fusion.method"):
        make_config(Path("/tmp"), Path("/tmp/c.jsonl"), search={"fusion": {"method": "max"}})
    with pytest.raises(ConfigError, match="feedback_weight in"):
        make_config(Path("/tmp"), Path("/tmp/c.jsonl"), search={"fusion": {"feedback": 5, "feedback_weight": 0}})
    with pytest.raises(ConfigError, match=r"search.fusion.weights names \['densse'\]"):
        make_config(
            Path("/tmp"),
            Path("/tmp/c.jsonl"),
            search={"stages": ["bm25", "dense"], "fusion": {"weights": {"densse": 2}}},
        )


@pytest.fixture(scope="module")
def dense_cfg(demo_dir, tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dense")
    cfg = make_config(
        tmp,
        demo_dir / "catalog.jsonl",
        search={"stages": ["bm25", "dense"]},
        dense={
            "model": str(tiny_model),
            "base_model": str(tiny_model),
            "max_length": 32,
            "device": "cpu",
            "factory": "HNSW16",
        },
    )
    build_indexes(cfg, progress=False)
    return cfg


def test_engine_answers_from_bm25_and_dense(dense_cfg):
    eng = SearchEngine.from_config(dense_cfg)
    dense_hits = eng.retrieve("华为 手机", k=5, stage="dense")
    assert len(dense_hits.rows) == 5
    hits = eng.query("华为 手机", k=10)
    assert len(hits) == 10
    # the configured stages [bm25, dense] are fused like the hybrid stage
    assert [h.product_id for h in hits] == [
        eng.products.ids[int(r)] for r in eng.retrieve("华为 手机", 10, "hybrid").rows
    ]
    filtered = eng.query("耳机", k=5, filters={"category": "耳机"})
    assert all(
        eng.products.categories[eng.products.category_codes[eng.products.row_of(h.product_id)]] == "耳机"
        for h in filtered
    )
    manifest = json.loads(((dense_cfg.index_dir / "dense") / "manifest.json").read_text())
    assert manifest["encoder"]["fingerprint"] == eng.dense_stage("dense")[0].fingerprint
    assert manifest["factory"] == "HNSW16" and manifest["n_vectors"] == len(eng.products)


def test_hybrid_and_query_follow_the_fusion_setting(dense_cfg):
    from dataclasses import replace

    eng = SearchEngine.from_config(dense_cfg)
    rows = lambda e, stage: list(e.retrieve("华为 手机", 10, stage).rows)  # noqa: E731
    fu = dense_cfg.search.fusion
    bm25_only = replace(dense_cfg, search=replace(dense_cfg.search, fusion=replace(fu, weights={"dense": 0.0})))
    e0 = SearchEngine.from_config(bm25_only)
    bm25 = rows(e0, "bm25")
    assert rows(e0, "hybrid")[: len(bm25)] == bm25 != rows(eng, "hybrid")[: len(bm25)]
    assert [h.product_id for h in e0.query("华为 手机", k=len(bm25))] == [e0.products.ids[int(r)] for r in bm25]
    by_scores = replace(dense_cfg, search=replace(dense_cfg.search, fusion=replace(fu, method="scores")))
    es = SearchEngine.from_config(by_scores)
    lists = [es.retrieve("华为 手机", 100, s) for s in ("bm25", "dense")]
    assert rows(es, "hybrid") == list(score_fusion(lists, 10, span=dense_cfg.search.candidates).rows)


def test_feedback_query_and_kept_top():
    from engine.hybrid import feedback_query, keep_top

    vectors = np.eye(4, dtype=np.float16)
    q = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    moved = feedback_query(q, vectors, np.array([1, 2]), 0.5)
    # 0.5·q + 0.5·mean(e1, e2) = (0.5, 0.25, 0.25, 0), unit length
    assert np.allclose(moved, np.array([[0.5, 0.25, 0.25, 0.0]]) / np.sqrt(0.375), atol=1e-6)
    assert np.allclose(feedback_query(q, vectors, np.array([], dtype=np.int64), 0.5), q[None])
    plain = SearchResult(np.array([7, 8, 9]), np.array([0.03, 0.02, 0.01], dtype=np.float32))
    after = SearchResult(np.array([5, 8, 6, 7, 4]), np.array([0.09, 0.08, 0.07, 0.06, 0.05], dtype=np.float32))
    kept = keep_top(plain, after, 2, 5)
    assert list(kept.rows) == [7, 8, 5, 6, 4]  # the first two stay, the rest in the after-feedback order
    assert np.all(np.diff(kept.scores) < 0)


def test_feedback_keeps_the_first_page_and_reorders_below(dense_cfg):
    from dataclasses import replace

    fu = replace(dense_cfg.search.fusion, feedback=3, feedback_weight=0.5, feedback_below=5)
    plain_eng = SearchEngine.from_config(dense_cfg)
    fb_eng = SearchEngine.from_config(replace(dense_cfg, search=replace(dense_cfg.search, fusion=fu)))
    changed = 0
    for text in ("华为 手机", "蓝牙耳机", "洗衣液", "跑步鞋 男"):
        plain, fb = plain_eng.retrieve(text, 40, "hybrid"), fb_eng.retrieve(text, 40, "hybrid")
        assert list(fb.rows[:5]) == list(plain.rows[:5])  # the first page as the plain fusion has it
        assert len(set(fb.rows)) == len(fb.rows) == 40 and np.all(np.diff(fb.scores) <= 0)
        changed += list(fb.rows[5:]) != list(plain.rows[5:])
        # a page no deeper than the kept products is the plain fusion's, without the second search
        assert list(fb_eng.retrieve(text, 5, "hybrid").rows) == list(plain.rows[:5])
    assert changed >= 2  # the second, moved search reorders what follows the first page


def test_word_feedback_reorders_below_the_first_page(dense_cfg):
    from dataclasses import replace

    dense_only = replace(dense_cfg.search.fusion, feedback=3, feedback_weight=1.0, feedback_below=5)
    words = replace(dense_only, feedback_terms=4, feedback_term_weight=1.0)
    e1 = SearchEngine.from_config(replace(dense_cfg, search=replace(dense_cfg.search, fusion=dense_only)))
    e2 = SearchEngine.from_config(replace(dense_cfg, search=replace(dense_cfg.search, fusion=words)))
    plain = SearchEngine.from_config(dense_cfg)
    changed = 0
    for text in ("华为 手机", "蓝牙耳机", "洗衣液", "跑步鞋 男"):
        a, b = e1.retrieve(text, 40, "hybrid"), e2.retrieve(text, 40, "hybrid")
        # weight 1: the dense query does not move, so only the words change the order below the first 5
        assert list(a.rows) == list(plain.retrieve(text, 40, "hybrid").rows)
        assert list(b.rows[:5]) == list(a.rows[:5]) and len(set(b.rows)) == 40
        changed += list(b.rows) != list(a.rows)
    assert changed >= 2
    with pytest.raises(ConfigError, match="backend local only"):
        make_config(Path("/tmp"), Path("/tmp/c.jsonl"), search={"backend": "milvus", "fusion": {"feedback_terms": 3}})


def test_dense_index_refuses_another_encoder(dense_cfg, tmp_path):
    other = write_tiny_bert(tmp_path / "other", ["华为"], seed=3)
    cfg = make_config(
        dense_cfg.index_dir.parent.parent,
        dense_cfg.catalog.path,
        index_dir=str(dense_cfg.index_dir),
        search={"stages": ["bm25", "dense"]},
        dense={"model": str(other), "max_length": 32, "device": "cpu", "factory": "HNSW16"},
    )
    assert stale_stages(cfg, ["bm25", "dense"]) == ["dense"]
    with pytest.raises(IndexLoadError, match="encoder"):
        SearchEngine.from_config(cfg)


def test_eval_dense_stages(dense_cfg, tmp_path):
    from eval.evaluate import evaluate
    from core.formats.judged import read_queries

    ensure_indexes(dense_cfg, ["dense-base"], progress=False)
    eng = SearchEngine.from_config(dense_cfg)
    queries = read_queries(dense_cfg.catalog.path.parent / "queries.tsv")
    results = {r.stage: r for r in evaluate(eng, queries, ["bm25", "dense", "dense-base"], progress=False)}
    for stage in ("dense", "dense-base"):
        m = results[stage].metrics
        assert m["n_queries"] == len(queries) and 0 <= m["mrr@10"] <= 1
        assert m["recall@10"] <= m["recall@100"] <= m["recall@1000"]
    # same model for both: same run
    assert results["dense"].run == results["dense-base"].run


def test_old_bm25_format_is_rebuilt_and_unchanged_dense_kept(dense_cfg):
    bm25_dir = (dense_cfg.index_dir / "bm25").resolve()
    manifest = json.loads((bm25_dir / "manifest.json").read_text())
    manifest["format_version"] = 1
    (bm25_dir / "manifest.json").write_text(json.dumps(manifest))
    dense_before = (dense_cfg.index_dir / "dense").resolve()
    with pytest.raises(IndexLoadError, match="format version 1"):
        SearchEngine.from_config(dense_cfg)
    ensure_indexes(dense_cfg, progress=False)
    assert (dense_cfg.index_dir / "bm25").resolve() != bm25_dir
    assert (dense_cfg.index_dir / "dense").resolve() == dense_before  # same rows: vectors kept
    assert len(SearchEngine.from_config(dense_cfg).query("华为 手机", k=5)) == 5
