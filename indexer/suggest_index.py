"""The suggestion index: every way a shopper may type a suggestion, in a trie, with the top completions of
frequent prefixes precomputed.

Each suggestion is reachable by several keys (``docs/suggestions.md``):

- its text, with and without its spaces (character prefix: ``蓝牙`` → 蓝牙耳机);
- its full pinyin and its pinyin initials (``lanya``, ``lyej`` → 蓝牙耳机), Latin and digits kept as typed;
- the mixed spellings a pinyin input method produces mid-word: the first characters as Han, the rest as full
  pinyin or initials (``蓝y``, ``蓝牙ej``).

A prefix with few keys is answered by walking the trie (``marisa-trie``, at most ``list_threshold`` keys);
a frequent one (``l``, ``蓝``) reads its ``top_k`` completions from a table computed at build time, so no
keystroke ever loops over all suggestions.  The table is filled with numpy: the keys sorted, each prefix length
cut at once (``astype('U<d>')``), equal prefixes are contiguous runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILES = ("keys.marisa", "texts.marisa", "prefixes.marisa", "arrays.npz", "suggest.json")
MAX_DEPTH = 16  # prefixes up to this many characters may be frequent (longer ones walk the trie)
_HAN = re.compile(r"[\u4e00-\u9fff]")


def syllables(text: str) -> list[str]:
    """One unit per character: the toneless pinyin of a Han character, any other character as itself
    (spaces dropped to ``""``)."""
    from pypinyin import lazy_pinyin

    units = lazy_pinyin(text, errors=lambda run: list(run))
    if len(units) != len(text):  # never expected: fall back to characters
        units = list(text)
    return ["" if u.isspace() else u for u in units]


def typed_keys(text: str) -> set[str]:
    """Every key a shopper may type for ``text``: the text, and from each Han character on its full pinyin or
    its initials after the characters before it."""
    units = syllables(text)
    keys = {text, text.replace(" ", "")}
    han = [bool(_HAN.match(c)) for c in text]
    for i, is_han in enumerate(han):
        if not is_han:
            continue
        head = text[:i].replace(" ", "")
        keys.add(head + "".join(units[i:]))
        keys.add(head + "".join(u[:1] if h else u for u, h in zip(units[i:], han[i:])))
    return keys


def prefix_tables(keys: np.ndarray, key_sid: np.ndarray, pop: np.ndarray, top_k: int, threshold: int):
    """(prefixes, table): every prefix of up to MAX_DEPTH characters with more than ``threshold`` keys, and
    for each its ``top_k`` most popular distinct suggestions (-1 padded), vectorized over the sorted keys."""
    order = np.argsort(keys, kind="stable")
    keys, key_sid = keys[order], key_sid[order]
    lengths = np.char.str_len(keys)
    n_sug = len(pop)
    prefixes: list[np.ndarray] = []
    tables: list[np.ndarray] = []
    for d in range(1, MAX_DEPTH + 1):
        long = lengths >= d
        if long.sum() <= threshold:
            break
        cut = keys[long].astype(f"U{d}")
        sid = key_sid[long]
        starts = np.flatnonzero(np.r_[True, cut[1:] != cut[:-1]])
        sizes = np.diff(np.r_[starts, len(cut)])
        heavy = sizes > threshold
        if not heavy.any():
            break
        group = np.repeat(np.arange(len(starts)), sizes)
        keep = heavy[group]
        g_heavy = np.cumsum(heavy) - 1  # group → row among this depth's frequent prefixes
        pair = np.unique(g_heavy[group[keep]].astype(np.int64) * n_sug + sid[keep])
        g, s = pair // n_sug, pair % n_sug
        o = np.lexsort((s, -pop[s], g))
        g, s = g[o], s[o]
        first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        rank = np.arange(len(g)) - np.repeat(first, np.diff(np.r_[first, len(g)]))
        table = np.full((int(heavy.sum()), top_k), -1, dtype=np.int32)
        take = rank < top_k
        table[g[take], rank[take]] = s[take]
        prefixes.append(cut[starts[heavy]])
        tables.append(table)
    if not tables:
        return np.zeros(0, dtype="U1"), np.zeros((0, top_k), dtype=np.int32)
    return np.concatenate(prefixes), np.concatenate(tables)


@dataclass
class SuggestIndex:
    """Suggestions (text, popularity, hit count, category hint) and their key trie; see the module doc."""

    texts: list[str]
    popularity: np.ndarray  # float64, per suggestion
    hits: np.ndarray  # int32: products each finds at build time
    category: np.ndarray  # int32: the category code its hint names, -1 for none
    categories: list[str]
    keys: object  # marisa_trie.RecordTrie: key → suggestion ids
    text_ids: object  # marisa_trie.Trie of the texts (its ids ≠ suggestion ids: text_sid maps them)
    text_sid: np.ndarray
    prefixes: object  # marisa_trie.Trie of the frequent prefixes
    prefix_row: np.ndarray  # trie id → row of table
    table: np.ndarray  # int32 [frequent prefixes, top_k]
    threshold: int
    meta: dict

    @classmethod
    def build(cls, texts, popularity, hits, category, categories, top_k: int, threshold: int, meta=None):
        import marisa_trie

        pop = np.asarray(popularity, dtype=np.float64)
        key_list: list[str] = []
        key_sid: list[int] = []
        for sid, t in enumerate(texts):
            for k in typed_keys(t):
                key_list.append(k)
                key_sid.append(sid)
        sid_arr = np.asarray(key_sid, dtype=np.int32)
        keys = marisa_trie.RecordTrie("<i", zip(key_list, ((int(s),) for s in sid_arr)))
        prefixes, table = prefix_tables(np.asarray(key_list, dtype=str), sid_arr, pop, top_k, threshold)
        ptrie = marisa_trie.Trie(prefixes.tolist())
        prefix_row = np.empty(len(ptrie), dtype=np.int32)
        for row, p in enumerate(prefixes.tolist()):
            prefix_row[ptrie[p]] = row
        tt = marisa_trie.Trie(texts)
        text_sid = np.empty(len(tt), dtype=np.int32)
        for sid, t in enumerate(texts):
            text_sid[tt[t]] = sid
        meta = {**(meta or {}), "n_suggestions": len(texts), "n_keys": len(key_list), "n_frequent": len(prefixes)}
        return cls(
            list(texts),
            pop,
            np.asarray(hits, dtype=np.int32),
            np.asarray(category, dtype=np.int32),
            list(categories),
            keys,
            tt,
            text_sid,
            ptrie,
            prefix_row,
            table,
            threshold,
            meta,
        )

    def __len__(self) -> int:
        return len(self.texts)

    def save_to(self, folder: Path) -> dict:
        folder = Path(folder)
        self.keys.save(str(folder / "keys.marisa"))
        self.text_ids.save(str(folder / "texts.marisa"))
        self.prefixes.save(str(folder / "prefixes.marisa"))
        np.savez(
            folder / "arrays.npz",
            popularity=self.popularity,
            hits=self.hits,
            category=self.category,
            text_sid=self.text_sid,
            prefix_row=self.prefix_row,
            table=self.table,
        )
        info = {"texts": self.texts, "categories": self.categories, "threshold": self.threshold, "meta": self.meta}
        (folder / "suggest.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
        return dict(self.meta)

    @classmethod
    def load(cls, folder: Path) -> "SuggestIndex":
        import marisa_trie

        folder = Path(folder)
        info = json.loads((folder / "suggest.json").read_text(encoding="utf-8"))
        arr = np.load(folder / "arrays.npz")
        keys = marisa_trie.RecordTrie("<i")
        keys.mmap(str(folder / "keys.marisa"))
        texts, prefixes = marisa_trie.Trie(), marisa_trie.Trie()
        texts.mmap(str(folder / "texts.marisa"))
        prefixes.mmap(str(folder / "prefixes.marisa"))
        return cls(
            info["texts"],
            arr["popularity"],
            arr["hits"],
            arr["category"],
            info["categories"],
            keys,
            texts,
            arr["text_sid"],
            prefixes,
            arr["prefix_row"],
            arr["table"],
            int(info["threshold"]),
            info["meta"],
        )

    def sid(self, text: str) -> int | None:
        """The suggestion id of an exact (normalized) text, or None."""
        i = self.text_ids.get(text)
        return None if i is None else int(self.text_sid[i])

    def completions(self, prefix: str) -> np.ndarray:
        """The distinct suggestion ids a typed (normalized) prefix reaches: a frequent prefix's precomputed top
        list (by build popularity), else every suggestion under it in the trie."""
        if not prefix:
            return np.zeros(0, dtype=np.int32)
        i = self.prefixes.get(prefix)
        if i is not None:
            row = self.table[self.prefix_row[i]]
            return row[row >= 0]
        found = self.keys.items(prefix)
        if not found:
            return np.zeros(0, dtype=np.int32)
        return np.unique(np.fromiter((v[0] for _, v in found), dtype=np.int32, count=len(found)))

    def has_prefix(self, prefix: str) -> bool:
        return next(self.keys.iterkeys(prefix), None) is not None
