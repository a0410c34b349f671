from core.config import TextConfig
from indexer.text import Tokenizer, fold_plural, normalize


def test_normalize_fullwidth_case_traditional_and_control_chars():
    assert normalize("ＡＰＰＬＥ　ｉＰｈｏｎｅ１５") == "apple iphone15"
    assert normalize("高爾夫球桿") == "高尔夫球杆"
    assert normalize("高爾夫", traditional_to_simplified=False) == "高爾夫"
    assert normalize("a\x00b\u200bc\x7f") == "a b c "


def test_latin_words_numbers_and_units_stay_tokens():
    tok = Tokenizer(TextConfig())
    toks = tok.tokenize("Apple/苹果 iPhone15 Pro 256GB 手机 可乐500 ml 电子标签5.65")
    for t in ("apple", "苹果", "iphone15", "pro", "256gb", "手机", "500ml", "5.65"):
        assert t in toks, (t, toks)
    # mixed tokens also give their parts so "iphone 15" finds "iPhone15"
    assert {"iphone", "15"} <= set(toks)
    assert "41寸" in tok.tokenize("吉他41寸")


def test_plural_folding_and_stopwords():
    assert fold_plural("batteries") == "battery"
    assert fold_plural("boxes") == "box"
    assert fold_plural("shoes") == "shoe"
    assert fold_plural("glass") == "glass"
    tok = Tokenizer(TextConfig())
    assert tok.tokenize("the Boxes of Batteries") == ["box", "battery"]
    assert "的" not in tok.tokenize("我的手机")


def test_brand_words_join_the_dictionary():
    plain = Tokenizer(TextConfig())
    assert "蓝月亮洁" not in plain.tokenize("蓝月亮洁洗衣液")
    with_brand = Tokenizer(TextConfig(), extra_words=["蓝月亮洁"])
    assert "蓝月亮洁" in with_brand.tokenize("蓝月亮洁洗衣液")


def test_unknown_word_ngrams():
    word = "噗叽噜咔"  # no dictionary word: jieba guesses with its HMM
    off = Tokenizer(TextConfig(unknown_word_ngrams=0)).tokenize(word)
    on = Tokenizer(TextConfig(unknown_word_ngrams=1)).tokenize(word)
    assert not set("噗叽噜咔") <= set(off)
    assert set("噗叽噜咔") <= set(on)


def test_query_and_title_tokenize_alike():
    tok = Tokenizer(TextConfig())
    assert tok.tokenize("ＩＰＨＯＮＥ１５") == tok.tokenize("iphone15")
