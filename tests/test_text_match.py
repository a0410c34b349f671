"""The ranker's text-match features: how a query's words and codes meet each candidate's title."""

import numpy as np


def test_text_match_counts_words_and_codes_each_title_holds():
    from core.config import BM25Config, TextConfig
    from core.formats.catalog import Catalog
    from engine.text_match import TEXT_MATCH, text_match
    from indexer.bm25 import BM25Index

    titles = ["华为 mate60 手机壳 黑色", "华为 mate50 手机壳", "苹果 iphone 15 充电器 20w 快充 数据线", "保温杯"]
    cat = Catalog([str(i) for i in range(4)], titles, [None] * 4, [None] * 4, np.full(4, np.nan), [None] * 4)
    bm25 = BM25Index.build(cat, TextConfig(), BM25Config(fields={"words": 0.2, "chars": 0.8}))
    m = text_match(bm25, "华为mate60手机壳", np.array([1, 0, 3]))
    cov, code, length, chars, qlen = (m[:, TEXT_MATCH.index(f)] for f in TEXT_MATCH)
    assert code[1] == 1.0 and code[0] < 1.0 and code[2] == 0.0  # mate60 and 60 held by title 0 only
    assert cov[1] > cov[0] > cov[2] == 0.0
    assert chars[1] > chars[0] > chars[2] == 0.0 and chars[1] == 1.0  # 华 手 机 壳 mate60 … one by one
    assert (qlen == len(set(bm25.tokenizer.tokenize("华为mate60手机壳")))).all()
    # a word jieba cuts one way in the query and another in the title still meets it character by character
    two = text_match(bm25, "黑色手机", np.array([0, 3]))
    assert two[0, TEXT_MATCH.index("char_coverage")] == 1.0 and two[1, TEXT_MATCH.index("char_coverage")] == 0.0
    assert length.tolist() == [len(bm25.tokenizer.tokenize(titles[r])) for r in (1, 0, 3)]
    assert (text_match(bm25, "手机壳", np.array([0]))[:, 1] == -1).all()  # no code asked: −1, not "missed"
    assert text_match(bm25, "保温杯", np.array([], dtype=np.int64)).shape == (0, len(TEXT_MATCH))
    words_only = BM25Index.build(cat, TextConfig(), BM25Config())
    assert (text_match(words_only, "华为手机壳", np.array([0, 1]))[:, TEXT_MATCH.index("char_coverage")] == -1).all()


def test_the_cross_encoders_rank_and_gap_within_the_query():
    from engine.features import FEATURES, Candidates, feature_matrix

    cand = Candidates(np.arange(4), np.zeros(4), np.zeros(4), {}, {}, np.array([0.5, 2.0, -1.0, 2.0]))
    X = feature_matrix(cand, np.zeros(4), np.zeros(4), None)
    assert X[:, FEATURES.index("ce_rank")].tolist() == [3, 1, 4, 2]  # ties keep the candidates' order
    assert X[:, FEATURES.index("ce_gap")].tolist() == [-1.5, 0.0, -3.0, 0.0]
