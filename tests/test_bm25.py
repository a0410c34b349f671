import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from indexer.bm25 import BM25Index, build_retriever, field_scores
from core.formats.catalog import read_catalog
from core.config import BM25Config, TextConfig


def random_corpus(rng, n_docs, n_words=300):
    """Zipf-like random documents in which no word is in more than half of the documents."""
    words = [f"w{i}" for i in range(n_words)]
    p = 1.0 / np.arange(1, n_words + 1) ** 0.9
    p /= p.sum()
    docs = [list(rng.choice(words, size=rng.integers(3, 40), p=p)) for _ in range(n_docs)]
    df = {}
    for d in docs:
        for w in set(d):
            df[w] = df.get(w, 0) + 1
    common = {w for w, c in df.items() if c > n_docs // 2}
    docs = [[w for w in d if w not in common] or ["w_empty_guard"] for d in docs]
    vocab = sorted({w for d in docs for w in d})
    return docs, vocab


def ranking(scores, k):
    s = np.round(np.asarray(scores, dtype=np.float64), 4)
    order = np.lexsort((np.arange(len(s)), -s))[:k]
    return order[s[order] > 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bm25s_matches_rank_bm25_top100(seed):
    rng = np.random.default_rng(seed)
    docs, vocab = random_corpus(rng, n_docs=1500)
    k1, b = 1.2, 0.75
    ours = build_retriever(docs, BM25Config(method="robertson", k1=k1, b=b))
    ref = BM25Okapi(docs, k1=k1, b=b)
    for _ in range(25):
        q = list(rng.choice(vocab, size=rng.integers(1, 5)))
        s_ref = ref.get_scores(q)
        s_ours = ours.get_scores(q) * (k1 + 1)  # bm25s leaves out the constant (k1 + 1) factor
        np.testing.assert_allclose(s_ours, s_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(ranking(s_ours, 100), ranking(s_ref, 100))


@pytest.fixture(scope="module")
def small_index(demo_dir):
    cat = read_catalog(demo_dir / "catalog.jsonl")
    return cat, BM25Index.build(cat, TextConfig(), BM25Config())


def test_exact_title_finds_its_product(small_index):
    cat, index = small_index
    for i in (0, 17, 301):
        res = index.search(cat.titles[i], k=5)
        assert i in res.rows[res.scores == res.scores[0]]  # ranked first (or tied for first)


def test_filter_is_applied_before_top_k(small_index):
    cat, index = small_index
    res_all = index.search("手机", k=10)
    # keep only products outside the unfiltered top 10: a post-filter would return nothing
    mask = np.ones(len(cat), dtype=bool)
    mask[res_all.rows] = False
    res = index.search("手机", k=10, mask=mask)
    assert len(res.rows) == 10
    assert mask[res.rows].all()
    assert set(res.rows).isdisjoint(res_all.rows)
    # nothing matching and masked: no hits, never zero-score filler
    assert len(index.search("手机", k=10, mask=np.zeros(len(cat), dtype=bool)).rows) == 0
    with pytest.raises(ValueError, match="one entry per product"):
        index.search("手机", k=10, mask=np.ones(3, dtype=bool))


def test_no_matching_token_gives_no_hits(small_index):
    _, index = small_index
    assert len(index.search("zzzqqq 龘", k=10).rows) == 0


@pytest.mark.parametrize("method", ["lucene", "robertson", "bm25+"])
def test_bincount_scoring_matches_bm25s(method):
    rng = np.random.default_rng(5)
    docs, vocab = random_corpus(rng, n_docs=400)
    retriever = build_retriever(docs, BM25Config(method=method))
    for _ in range(10):
        q = list(rng.choice(vocab, size=rng.integers(1, 6)))  # repeated tokens count twice in both
        ids = np.array(retriever.get_tokens_ids(q), dtype=np.int64)
        np.testing.assert_allclose(
            field_scores(retriever, ids), retriever.get_scores_from_ids(ids), rtol=1e-5, atol=1e-6
        )


def test_chars_field_matches_what_words_miss(tmp_path):
    from core.formats.catalog import Catalog

    titles = ["猕猴桃 新鲜 水果", "桃子 水蜜桃", "猴子 毛绒 玩具"]
    cat = Catalog([str(i) for i in range(3)], titles, [None] * 3, [None] * 3, np.full(3, np.nan), [None] * 3)
    words = BM25Index.build(cat, TextConfig(), BM25Config())
    both = BM25Index.build(cat, TextConfig(), BM25Config(fields={"words": 0.3, "chars": 0.7}))
    assert words.tokenizer.tokenize("猴桃", "chars") == ["猴", "桃"]
    assert len(words.search("猴桃", k=3).rows) == 0  # jieba: "猴桃" is no word of any title
    res = both.search("猴桃", k=3)
    assert res.rows[0] == 0 and len(res.rows) == 3  # all three share a character; the full match wins


@pytest.mark.parametrize("system", ["ecomsearch", "bm25s", "rank_bm25"])
def test_benchmark_measures_each_system(tmp_path, system):
    from eval.bench.bm25 import measure

    corpus = tmp_path / "c.tsv"
    corpus.write_text(
        "pid\ttitle\n" + "".join(f"{i}\t华为 手机 {i}号 蓝色 {i % 7}GB\n" for i in range(300)), encoding="utf-8"
    )
    row = measure(system, str(corpus), ["华为手机", "蓝色 7gb", "不存在"] * 10)
    assert row["n_docs"] == 300 and row["n_queries_timed"] == 30
    assert 0 < row["p50_ms"] <= row["p99_ms"] and row["build_s"] > 0
    if system == "ecomsearch":
        assert row["query_hit_share"] == pytest.approx(2 / 3, abs=1e-3)


def test_feedback_words_come_from_the_feedback_titles(tmp_path):
    from core.formats.catalog import Catalog

    titles = [
        "pvc pipe fitting schedule 40",
        "pvc elbow fitting schedule 40",
        "copper pipe fitting",
        "garden hose",
        "schedule 40 pvc coupling",
        "hose reel",
        "fitting kit",
        "pvc pipe",
    ]
    n = len(titles)
    cat = Catalog([str(i) for i in range(n)], titles, [None] * n, [None] * n, np.full(n, np.nan), [None] * n)
    index = BM25Index.build(cat, TextConfig(), BM25Config())
    fb = np.array([0, 1])  # what the first search put on top
    two = index.feedback_scores("pvc pipe", fb, terms=2)
    # the two rarest words both titles share and the query lacks: schedule, 40 (fitting is in 4 titles, elbow in 1)
    assert np.flatnonzero(two > 0).tolist() == [0, 1, 4]
    three = index.feedback_scores("pvc pipe", fb, terms=3)
    assert np.flatnonzero(three > 0).tolist() == [0, 1, 2, 4, 6]  # + fitting
    assert three[7] == 0  # "pvc pipe" holds only the query's own words: nothing added
    assert index.feedback_scores("pvc pipe", fb, terms=3, min_docs=3) is None  # no word in all three of two
    # the coupling (pvc, schedule 40) passes the copper pipe once the feedback words count
    base = index.scores("pvc pipe")
    assert base[4] < base[2] and (base + 0.3 * two)[4] > (base + 0.3 * two)[2]
