"""Catalog and query text → normalized text → tokens.

One :class:`Tokenizer` serves both sides (index and query), so a product
title and a query that mean the same words produce the same tokens.

Normalization: NFKC (full-width → half-width), optional traditional →
simplified (character table from OpenCC), lowercase, control and format
characters removed.

Tokenization: Han runs go through jieba in search mode (a word and its
dictionary sub-words); Latin words and numbers are cut out before jieba sees
them, so ``iphone15``, ``500ml`` and ``5.65`` stay tokens; a number followed by
a unit is joined (``500 ml`` → ``500ml``, ``41寸``); English plurals are folded;
stopwords dropped.

A second token field, ``chars``, cuts Han runs into single characters
instead of words (Latin and number tokens as above): short e-commerce
queries often share characters, not jieba words, with the titles they want.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import jieba
from tqdm import tqdm

from core.config import TextConfig

jieba.setLogLevel(logging.WARNING)

# Latin units that join a preceding number ("500 ml" -> "500ml").
LATIN_UNITS = (
    "ml",
    "l",
    "g",
    "kg",
    "mg",
    "gb",
    "tb",
    "mb",
    "cm",
    "mm",
    "m",
    "km",
    "w",
    "kw",
    "v",
    "mah",
    "ah",
    "hz",
    "ghz",
    "mhz",
    "oz",
    "lb",
    "lbs",
    "in",
    "inch",
    "ft",
    "p",
    "k",
    "x",
)
# Chinese measure words and units that form one token with a preceding number (41寸, 3斤).
HAN_UNITS = (
    "毫升",
    "厘米",
    "毫米",
    "公斤",
    "千克",
    "英寸",
    "寸",
    "克",
    "斤",
    "升",
    "米",
    "码",
    "瓦",
    "伏",
    "片",
    "粒",
    "支",
    "包",
    "袋",
    "盒",
    "瓶",
    "罐",
    "箱",
    "个",
    "只",
    "件",
    "套",
    "张",
    "双",
    "条",
    "块",
    "卷",
    "本",
    "册",
    "层",
    "匹",
    "岁",
    "号",
    "度",
    "色",
    "代",
    "年",
    "月",
    "天",
    "人",
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff0-\uffff]")
_UNIT_JOIN = re.compile(r"(\d+(?:\.\d+)?)\s+(" + "|".join(sorted(LATIN_UNITS, key=len, reverse=True)) + r")(?![a-z])")
# Han run | Latin/number run (5.65, 3.5mm, iphone15, v1.2) | anything else is a separator
_SEGMENT = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)|([a-z0-9]+(?:\.[0-9]+[a-z0-9]*)*)")
_NUM_HAN_UNIT = re.compile(r"(" + "|".join(sorted(HAN_UNITS, key=len, reverse=True)) + r")")
# English measurements (text.english_units): fractions become decimals (1-1/2 → 1.5, 5/8 → 0.625) and a
# number's unit, spelled any of the ways titles and shoppers spell it, becomes one canonical token
# (1/2 in. / 1/2 inch / 1/2" → 0.5in; 3-gal. / 3 gallon → 3gal).
_MIXED_FRACTION = re.compile(r"(?<![\d.])(\d+)[\s-]+(\d+)/(\d+)(?![\d/])")
_FRACTION = re.compile(r"(?<![\d./])(\d+)/(\d+)(?![\d/])")
ENGLISH_UNITS = {
    "in": ("inches", "inch", "in", '"', "''"),
    "ft": ("feet", "foot", "ft", "'"),
    "gal": ("gallons", "gallon", "gal"),
    "lb": ("pounds", "pound", "lbs", "lb"),
    "oz": ("ounces", "ounce", "oz"),
    "qt": ("quarts", "quart", "qt"),
    "pt": ("pints", "pint", "pt"),
    "sqft": ("square feet", "square foot", "sq ft", "sqft"),
    "cuft": ("cubic feet", "cubic foot", "cu ft", "cuft"),
    "v": ("volts", "volt", "v"),
    "w": ("watts", "watt", "w"),
    "amp": ("amps", "amp", "a"),
    "ga": ("gauge", "ga"),
    "mm": ("millimeters", "mm"),
    "cm": ("centimeters", "cm"),
    "yd": ("yards", "yard", "yd"),
    "btu": ("btu",),
    "mah": ("mah",),
}
_SPACES = re.compile(r"\s+")
_EN_UNIT_OF = {spelling: canon for canon, spellings in ENGLISH_UNITS.items() for spelling in spellings}
_EN_UNIT = re.compile(
    r"(\d+(?:\.\d+)?)\s*-?\s*("
    + "|".join(re.escape(u).replace(r"\ ", r"\.?\s*") for u in sorted(_EN_UNIT_OF, key=len, reverse=True))
    + r")(?:\.(?!\d))?(?![a-z0-9])"
)


def english_measurements(text: str) -> str:
    """Fractions → decimals and number + unit → one canonical token, on normalized (lower-case) text."""

    def dec(x: float) -> str:
        return f"{x:.3f}".rstrip("0").rstrip(".")

    text = _MIXED_FRACTION.sub(lambda m: dec(int(m.group(1)) + int(m.group(2)) / max(int(m.group(3)), 1)), text)
    text = _FRACTION.sub(lambda m: dec(int(m.group(1)) / max(int(m.group(2)), 1)), text)

    def unit(m: re.Match) -> str:
        spelled = _SPACES.sub(" ", m.group(2).replace(".", ""))
        return f"{m.group(1)}{_EN_UNIT_OF[spelled]} "

    return _EN_UNIT.sub(unit, text)


# Token fields a BM25 index can be built on.
FIELDS = ("words", "chars")
_ALNUM_PARTS = re.compile(r"[a-z]+|[0-9]+(?:\.[0-9]+)?")


@functools.lru_cache(maxsize=2)
def opencc_char_table(name: str = "TSCharacters") -> dict[int, str]:
    """A single-character conversion table from OpenCC's data, for ``str.translate``: ``TSCharacters``
    (traditional → simplified), ``STCharacters`` (simplified → traditional); the first candidate of each."""
    import opencc

    path = Path(opencc.__file__).parent / "dictionary" / f"{name}.txt"
    table: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and len(parts[0]) == 1:
            table[ord(parts[0])] = parts[1].split(" ")[0]
    return table


@functools.lru_cache(maxsize=1)
def builtin_stopwords() -> frozenset[str]:
    text = resources.files("indexer").joinpath("resources/stopwords.txt").read_text(encoding="utf-8")
    return frozenset(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))


def normalize(text: str, traditional_to_simplified: bool = True) -> str:
    """NFKC, optional traditional → simplified, lowercase, no control characters."""
    text = unicodedata.normalize("NFKC", text)
    if traditional_to_simplified:
        text = text.translate(opencc_char_table("TSCharacters"))
    text = _CONTROL.sub(" ", text.lower())
    return text


def fold_plural(word: str) -> str:
    """Fold a regular English plural to its singular (boxes → box, batteries → battery)."""
    if len(word) <= 3 or not word.isalpha() or not word.isascii():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


class Tokenizer:
    """Normalizes and tokenizes product titles and queries the same way.

    ``extra_words`` (e.g. the catalog's brands) join jieba's dictionary so that
    they come out as one token.
    """

    def __init__(self, cfg: TextConfig | None = None, extra_words: Iterable[str] = ()):
        self.cfg = cfg or TextConfig()
        extra_words = tuple(extra_words)
        self.source = (self.cfg, extra_words)  # what it was built from: a load with the same reuses it
        # only Han words need jieba's help; Latin words are tokens already
        words = sorted(
            {
                w
                for w in (self.normalize(x).strip() for x in extra_words)
                if len(w) >= 2 and (m := _SEGMENT.fullmatch(w)) and m.group(1)
            }
        )
        if not words and self.cfg.user_dict is None:
            # nothing to add: share jieba's default dictionary (~80 MB) with the rest of the process
            self._jieba = jieba.dt
            self._jieba.check_initialized()
        else:
            self._jieba = jieba.Tokenizer()
            self._jieba.initialize()
        if self.cfg.user_dict is not None:
            if not Path(self.cfg.user_dict).is_file():
                raise FileNotFoundError(f"text.user_dict: file not found: {self.cfg.user_dict}")
            self._jieba.load_userdict(str(self.cfg.user_dict))
        for w in words:
            self._jieba.add_word(w, freq=max(self._jieba.suggest_freq(w, False), 10))
        self.added_words: list[str] = words
        if self.cfg.stopwords is not None:
            lines = Path(self.cfg.stopwords).read_text(encoding="utf-8").splitlines()
            self.stopwords = frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))
        else:
            self.stopwords = builtin_stopwords()
        self._freq = self._jieba.FREQ

    def normalize(self, text: str) -> str:
        return normalize(text, self.cfg.traditional_to_simplified)

    @property
    def lexicon(self) -> dict[str, int]:
        """jieba's dictionary (word → frequency; 0 for prefixes that are no word)."""
        return self._freq

    def __call__(self, text: str) -> list[str]:
        return self.tokenize(text)

    def tokenize(self, text: str, field: str = "words") -> list[str]:
        """Tokens of one field: ``words`` (jieba search mode) or ``chars`` (Han characters)."""
        return self.tokenize_fields(text, (field,))[field]

    def tokenize_fields(self, text: str, fields: Sequence[str]) -> dict[str, list[str]]:
        """Tokens of several fields from one pass of normalization and segmentation.

        The fields share the normalization and the Latin/number tokens; they
        differ only in how a run of Han characters is cut.
        """
        bad = [f for f in fields if f not in FIELDS]
        if bad:
            raise ValueError(f"unknown field(s) {bad}; fields are {FIELDS}")
        cfg = self.cfg
        text = self.normalize(text)
        if cfg.english_units:
            text = english_measurements(text)
        if cfg.join_units:
            text = _UNIT_JOIN.sub(r"\1\2", text)
        out: dict[str, list[str]] = {f: [] for f in fields}
        shared: list[str] = []  # Latin/number tokens, the same in every field
        stop = self.stopwords
        for m in _SEGMENT.finditer(text):
            han, latin = m.group(1), m.group(2)
            if han is not None:
                if shared:
                    for toks in out.values():
                        toks.extend(shared)
                    shared = []
                if "words" in out:
                    self._han_tokens(han, out["words"])
                if "chars" in out:
                    out["chars"].extend(c for c in han if c not in stop)
                continue
            if cfg.join_units and latin.replace(".", "").isdigit():
                unit = _NUM_HAN_UNIT.match(text, m.end())
                if unit:
                    shared.append(latin + unit.group(1))
            if cfg.fold_plurals:
                latin = fold_plural(latin)
            if latin not in stop:
                shared.append(latin)
            if cfg.split_alnum and not latin.isalpha() and not latin.replace(".", "").isdigit():
                parts = _ALNUM_PARTS.findall(latin)
                if len(parts) > 1:
                    shared.extend(p for p in parts if p not in stop)
        for toks in out.values():
            toks.extend(shared)
        return out

    def _han_tokens(self, run: str, out: list[str]) -> None:
        stop = self.stopwords
        n = self.cfg.unknown_word_ngrams
        for w in self._jieba.cut_for_search(run, HMM=True):
            if w in stop:
                continue
            out.append(w)
            if n and len(w) > 1 and w not in self._freq:
                # jieba guessed this word (HMM): add its characters' n-grams so
                # that a query spelling it differently can still match
                for size in range(1, min(n, len(w) - 1) + 1):
                    out.extend(w[i : i + size] for i in range(len(w) - size + 1) if w[i : i + size] not in stop)

    def tokenize_many(
        self, texts: Sequence[str], progress: bool = False, desc: str = "tokenize", field: str = "words"
    ) -> list[list[str]]:
        it = tqdm(texts, desc=desc, unit="doc", disable=not progress, mininterval=1.0)
        return [self.tokenize(t, field) for t in it]
