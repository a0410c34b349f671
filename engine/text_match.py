"""How a query's words meet each candidate's title, from the BM25 index's token lists: what the final ranker
reads beside the cross-encoder, which sees the text but not exactly (a 4-layer model blurs ``mate60`` into
``mate50``, ``500ml`` into ``350ml``).

Per candidate (:data:`TEXT_MATCH`):

- ``coverage``: the share of the query's distinct word tokens the title holds (a token unknown to the index
  counts as one no title holds);
- ``code_match``: the same share over the query's *codes* only, the tokens with a Latin letter or a digit
  (model numbers, sizes and units, Latin brand names: ``mate60``, ``256g``, ``iphone``); −1 when the query has
  none, so "no code asked" differs from "every code missed";
- ``title_len``: the title's number of word tokens (long titles stack keywords);
- ``char_coverage``: the share of the query's distinct ``chars``-field tokens (Han characters one by one, and
  its Latin and number tokens) the title holds, where the index has that field (a word jieba cut differently in
  the query and the title still meets it); −1 without one;
- ``query_len``: the query's number of distinct word tokens (the same for every candidate: how much the other
  features can be trusted — a one-word query's coverage says little).

Vectorized over the candidates: one gather of their token ids, one ``isin``, one ``unique``.
"""

from __future__ import annotations

import re

import numpy as np

TEXT_MATCH = ("coverage", "code_match", "title_len", "char_coverage", "query_len")
_CODE = re.compile(r"[0-9a-z]")


def text_match(bm25, query: str | None, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), 5]`` (:data:`TEXT_MATCH`) for ``query`` against the titles of product ``rows`` in the
    ``words`` (and ``chars``) fields of ``bm25`` (an :class:`indexer.bm25.BM25Index`); zeros (codes and chars −1)
    without a query."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), len(TEXT_MATCH)))
    out[:, [1, 3]] = -1.0
    dt = bm25.doc_tokens.get("words")
    if dt is None or not len(rows):
        return out
    out[:, 2] = dt.indptr[rows + 1] - dt.indptr[rows]
    if not query:
        return out
    fields = tuple(f for f in ("words", "chars") if f in bm25.doc_tokens and f in bm25.retrievers)
    tokens = bm25.tokenizer.tokenize_fields(query, fields)
    words = set(tokens.get("words", ()))
    out[:, 4] = len(words)
    if not words:
        return out
    out[:, 0] = _shares(bm25, "words", rows, words)
    codes = {t for t in words if _CODE.search(t)}
    if codes:
        out[:, 1] = _shares(bm25, "words", rows, codes)
    chars = set(tokens.get("chars", ()))
    if chars:
        out[:, 3] = _shares(bm25, "chars", rows, chars)
    return out


def _shares(bm25, field: str, rows: np.ndarray, wanted: set) -> np.ndarray:
    """Per candidate row, the share of the ``wanted`` tokens its title holds in ``field`` (a token unknown to the
    index counts as one no title holds): one gather of the titles' token ids, one ``isin``, one ``unique``."""
    dt, vocab = bm25.doc_tokens[field], bm25.retrievers[field].vocab_dict
    starts, ends = dt.indptr[rows], dt.indptr[rows + 1]
    lens = ends - starts
    owner = np.repeat(np.arange(len(rows)), lens)  # every candidate's token ids, flat, with their candidate
    flat = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    ids = dt.ids[flat].astype(np.int64)
    span = int(ids.max()) + 1 if len(ids) else 1  # (candidate, token) pairs as one integer key
    known = np.array(sorted(vocab[t] for t in wanted if t in vocab), dtype=np.int64)
    hit = np.isin(ids, known)
    pairs = np.unique(owner[hit] * span + ids[hit])  # a token repeated in a title counts once
    return np.bincount(pairs // span, minlength=len(rows)) / len(wanted)
