"""Catalog vocabulary → the tables query understanding reads (``query_tables.json`` beside the BM25 index).

Built from the BM25 index's own tokens, so the engine's rewrites speak the
catalog's language:

- ``df``: document frequency of every token of the ``words`` field;
- ``units``: per unit spelling (``ml``, ``毫升``, ``kg``, ``千克`` …) how many
  catalog tokens are a number followed by it: which spelling the catalog uses;
- ``pinyin``: toneless pinyin of each Han word (2–4 characters, ``min_df``
  documents or more) → the most frequent word spelled so (``shouji`` → 手机);
- ``homophones``: toneless syllable → the catalog's Han characters read so
  (what a pinyin input method confuses: 耳鸡 for 耳机);
- ``bigrams``: the pairs of adjacent Han characters in two or more titles
  (a pair the catalog writes is no typo, even inside a word jieba does not
  know);
- ``aliases``: a Latin token and a Han word that name the same thing across
  scripts (``huawei`` ↔ 华为, ``apple`` ↔ 苹果), mined from co-occurrence in
  titles: the Han word is the Latin name's most frequent Han partner, they
  share at least ``min_pair`` titles and at least half the rarer one's titles,
  are written side by side in a third of those, and the Han word is a name
  (a proper-noun tag in jieba's dictionary, or a word it does not know).

Vectorized with numpy/scipy over the token ids; pinyin via ``pypinyin``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TABLES_FILE = "query_tables.json"
# jieba's part-of-speech tags of names (people, places, organisations, other proper nouns): the Han side of
# an alias is one of these, or a word jieba does not know (a newer brand)
FORMAT = 4
NAME_TAGS = {"nr", "nrt", "nrfg", "ns", "nt", "nz"}
_HAN_WORD = re.compile(r"[\u4e00-\u9fff]{2,4}")
_HAN_RUN = re.compile(r"[\u4e00-\u9fff]{2,}")
_NUM_UNIT = re.compile(r"\d+(?:\.\d+)?([a-z\u4e00-\u9fff]+)")
# unit spellings that mean the same unit (query understanding picks the catalog's)
UNIT_GROUPS = (
    ("ml", "毫升"),
    ("l", "升"),
    ("kg", "千克", "公斤"),
    ("g", "克"),
    ("cm", "厘米"),
    ("mm", "毫米"),
    ("w", "瓦"),
    ("v", "伏"),
    ("mah", "毫安", "毫安时"),
    ("inch", "英寸"),
    ("gb", "g内存"),
    ("m", "米"),
)


@dataclass
class QueryTables:
    df: dict[str, int]
    n_docs: int
    units: dict[str, int] = field(default_factory=dict)
    pinyin: dict[str, list] = field(default_factory=dict)  # key -> [word, df]
    homophones: dict[str, str] = field(default_factory=dict)  # syllable -> characters
    aliases: dict[str, list[str]] = field(default_factory=dict)
    bigrams: list[str] = field(default_factory=list)  # adjacent Han character pairs in 2+ titles

    def save(self, folder: Path) -> Path:
        path = Path(folder) / TABLES_FILE
        payload = {"format": FORMAT, **self.__dict__}
        path.write_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: Path) -> "QueryTables | None":
        path = Path(folder) / TABLES_FILE
        if not path.is_file():
            return None
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.pop("format", None) != FORMAT:
            return None
        return cls(**d)


def token_df(doc_tokens, n_vocab: int) -> np.ndarray:
    """Document frequency of each token id of a CSR token field."""
    n_docs = len(doc_tokens.indptr) - 1
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), np.diff(doc_tokens.indptr))
    pairs = np.unique(doc * n_vocab + doc_tokens.ids.astype(np.int64))
    return np.bincount(pairs % n_vocab, minlength=n_vocab)


def build_query_tables(bm25, min_df: int = 2, min_pair: int = 3) -> QueryTables:
    """The tables of a loaded :class:`indexer.bm25.BM25Index` (its ``words`` field)."""
    from pypinyin import lazy_pinyin

    vocab = bm25.retrievers["words"].vocab_dict
    tokens = np.empty(len(vocab), dtype=object)
    for t, i in vocab.items():
        tokens[i] = t
    doc_tokens = bm25.doc_tokens["words"]
    df = token_df(doc_tokens, len(vocab))
    n_docs = len(doc_tokens.indptr) - 1
    df_map = {str(tokens[i]): int(df[i]) for i in np.flatnonzero(df > 0)}

    spelled = {u for group in UNIT_GROUPS for u in group}
    units: dict[str, int] = {}
    for t, n in df_map.items():
        m = _NUM_UNIT.fullmatch(t)
        if m and m.group(1) in spelled:
            units[m.group(1)] = units.get(m.group(1), 0) + n

    pinyin: dict[str, list] = {}
    chars: dict[str, set[str]] = {}
    for t, n in df_map.items():
        if n < min_df or not _HAN_WORD.fullmatch(t):
            continue
        syl = lazy_pinyin(t, errors="ignore")
        if len(syl) != len(t):
            continue
        key = "".join(syl)
        if key not in pinyin or pinyin[key][1] < n:
            pinyin[key] = [t, n]
        for ch, s in zip(t, syl):
            chars.setdefault(s, set()).add(ch)
    homophones = {s: "".join(sorted(c)) for s, c in chars.items()}

    titles = [bm25.tokenizer.normalize(t) for t in bm25.products.titles]
    pairs: dict[str, int] = {}
    for t in titles:
        for run in _HAN_RUN.findall(t):
            for bg in {run[i : i + 2] for i in range(len(run) - 1)}:
                pairs[bg] = pairs.get(bg, 0) + 1
    bigrams = sorted(bg for bg, n in pairs.items() if n >= 2)
    return QueryTables(
        df_map,
        n_docs,
        units,
        pinyin,
        homophones,
        mine_aliases(doc_tokens, tokens, df, titles, min_df, min_pair),
        bigrams,
    )


def mine_aliases(
    doc_tokens, tokens: np.ndarray, df: np.ndarray, titles, min_df: int = 2, min_pair: int = 3
) -> dict[str, list[str]]:
    """Latin token ↔ Han word pairs that name the same thing (see the module docstring).  Besides
    co-occurring, a pair must be written side by side (``华为huawei``, ``apple/苹果``, ``戴森(dyson)``) in at
    least a third of the titles that hold both: what separates a name's two spellings from a topic's
    two words (``led`` and 照明 share titles too, but not as one name)."""
    import scipy.sparse as sp

    from indexer.text import LATIN_UNITS

    # a name is letters (not a unit, not a model number)
    latin = np.array(
        [str(t).isascii() and str(t).isalpha() and len(str(t)) >= 2 and str(t) not in LATIN_UNITS for t in tokens]
    ) & (df >= min_df)
    han = np.array([bool(_HAN_WORD.fullmatch(str(t))) for t in tokens]) & (df >= min_df)
    if not latin.any() or not han.any():
        return {}
    n_docs = len(doc_tokens.indptr) - 1
    doc = np.repeat(np.arange(n_docs), np.diff(doc_tokens.indptr))
    X = sp.csr_matrix((np.ones(len(doc), dtype=np.float32), (doc, doc_tokens.ids)), shape=(n_docs, len(tokens)))
    X.sum_duplicates()
    X.data[:] = 1.0  # presence: a token twice in a title counts once
    L, H = np.flatnonzero(latin), np.flatnonzero(han)
    C = (X[:, L].T @ X[:, H]).tocsr()  # titles shared by each Latin token and Han word
    if C.nnz == 0:
        return {}
    best_h = np.asarray(C.argmax(axis=1)).ravel()  # each Latin token's most frequent Han partner
    import jieba.posseg

    jieba.posseg.dt.tokenizer.check_initialized()
    tags = jieba.posseg.dt.word_tag_tab
    Xc = X.tocsc()
    aliases: dict[str, list[str]] = {}
    for li in range(len(L)):
        hi = int(best_h[li])
        shared = C[li, hi]
        if shared < min_pair:
            continue
        if shared < 0.5 * min(df[L[li]], df[H[hi]]):
            continue
        a, b = str(tokens[L[li]]), str(tokens[H[hi]])
        if tags.get(b) is not None and tags[b] not in NAME_TAGS:
            continue  # a common word (代购, 照明), not a name
        both = np.intersect1d(
            Xc.indices[Xc.indptr[L[li]] : Xc.indptr[L[li] + 1]], Xc.indices[Xc.indptr[H[hi]] : Xc.indptr[H[hi] + 1]]
        )
        side = re.compile(
            re.escape(a)
            + r"[\s/()（）\-]{0,2}"
            + re.escape(b)
            + "|"
            + re.escape(b)
            + r"[\s/()（）\-]{0,2}"
            + re.escape(a)
        )
        if sum(1 for d in both if side.search(titles[d])) * 3 < len(both):
            continue
        aliases.setdefault(a, []).append(b)
        aliases.setdefault(b, []).append(a)
    return aliases


def query_tables(bm25) -> QueryTables:
    """The tables saved in the index's build folder (``make index`` writes them), else built now (an index
    built before query understanding existed)."""
    folder = getattr(bm25, "folder", None)
    tables = QueryTables.load(folder) if folder is not None else None
    return tables if tables is not None else build_query_tables(bm25)
