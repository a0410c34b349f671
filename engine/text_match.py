"""How a query's words meet each candidate's title, from the BM25 index's token lists: what the final ranker
reads beside the cross-encoder, which sees the text but not exactly (a 4-layer model blurs ``mate60`` into
``mate50``, ``500ml`` into ``350ml``).

Per candidate (:data:`TEXT_MATCH`):

- ``coverage``: the share of the query's distinct word tokens the title holds (a token unknown to the index
  counts as one no title holds);
- ``code_match``: the same share over the query's *codes* only, the tokens with a Latin letter or a digit
  (model numbers, sizes and units, Latin brand names: ``mate60``, ``256g``, ``iphone``); −1 when the query has
  none, so "no code asked" differs from "every code missed";
- ``title_len``: the title's number of word tokens (long titles stack keywords).

Vectorized over the candidates: one gather of their token ids, one ``isin``, one ``unique``.
"""

from __future__ import annotations

import re

import numpy as np

TEXT_MATCH = ("coverage", "code_match", "title_len")
_CODE = re.compile(r"[0-9a-z]")


def text_match(bm25, query: str | None, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), 3]`` (:data:`TEXT_MATCH`) for ``query`` against the titles of product ``rows`` in the
    ``words`` field of ``bm25`` (an :class:`indexer.bm25.BM25Index`); zeros (codes −1) without a query."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros((len(rows), len(TEXT_MATCH)))
    out[:, 1] = -1.0
    dt = bm25.doc_tokens.get("words")
    if dt is None or not len(rows):
        return out
    starts, ends = dt.indptr[rows], dt.indptr[rows + 1]
    lens = ends - starts
    out[:, 2] = lens
    if not query:
        return out
    vocab = bm25.retrievers["words"].vocab_dict
    tokens = set(bm25.tokenizer.tokenize(query))
    codes = {t for t in tokens if _CODE.search(t)}
    if not tokens:
        return out
    # every candidate's token ids, flat, with the candidate each belongs to
    owner = np.repeat(np.arange(len(rows)), lens)
    flat = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)
    ids = dt.ids[flat].astype(np.int64)
    span = int(ids.max()) + 1 if len(ids) else 1  # (candidate, token) pairs as one integer key
    for col, wanted in ((0, tokens), (1, codes)):
        if not wanted:
            continue
        known = np.array(sorted(vocab[t] for t in wanted if t in vocab), dtype=np.int64)
        hit = np.isin(ids, known)
        pairs = np.unique(owner[hit] * span + ids[hit])  # a token repeated in a title counts once
        out[:, col] = np.bincount(pairs // span, minlength=len(rows)) / len(wanted)
    return out
