"""Query understanding: what a shopper typed → what the engine searches, with a log of every rewrite.

Rules, in order, each reading the catalog's own vocabulary
(:mod:`indexer.query_tables`), each switchable in ``query.rules``:

- ``normalize``: full-width → half-width, traditional → simplified, lower case
  (the tokenizer's normalization, applied to the text every stage sees, the
  dense encoder and the cross-encoder included);
- ``units``: a number's unit in the spelling the catalog uses for that
  number (``500毫升`` → ``500ml`` where titles have ``500ml`` more often than
  ``500毫升``; ``1.5千克`` → ``1.5kg``);
- ``aliases``: a brand or product name in the other script when the catalog
  rarely writes the typed one (``huawei`` → ``华为`` where titles say 华为):
  the typed form must be in fewer than a quarter of the titles its partner is;
- ``pinyin``: a run of Latin letters that is not a catalog word but spells
  catalog words in toneless pinyin (``shouji`` → 手机, ``lanyaerji`` → 蓝牙耳机);
- ``typos``: one character that no catalog word, no dictionary word (jieba's)
  and no character pair of the titles covers, replaced by a homophone that
  makes a catalog word and leaves the whole run covered (``蓝牙耳鸡`` → ``蓝牙耳机``, the typo a
  pinyin input method makes), or a Latin word one edit from a catalog word
  (``samsumg`` → ``samsung``); the word made must be in ``3 × min_df`` titles.

Words the catalog knows are never touched, so a clean query passes unchanged
unless it mixes spellings.  :meth:`QueryRewriter.rewrite` returns the text
to search and the steps (rule, from, to); ``query(explain=True)`` shows them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from indexer.query_tables import UNIT_GROUPS, QueryTables
from indexer.text import fold_plural

RULES = ("normalize", "units", "aliases", "pinyin", "typos")
_UNIT = re.compile(
    r"(?<![a-z0-9.])(\d+(?:\.\d+)?)\s*("
    + "|".join(sorted({u for g in UNIT_GROUPS for u in g}, key=len, reverse=True))
    + r")(?![a-z0-9])"
)
_LATIN_RUN = re.compile(r"[a-z]+")
_HAN_RUN = re.compile(r"[\u4e00-\u9fff]+")
_LATIN_WORD = re.compile(r"(?<![a-z0-9])[a-z][a-z0-9\-]*[a-z0-9](?![a-z0-9])")


@dataclass
class Rewrite:
    text: str  # what the engine searches
    steps: list[dict] = field(default_factory=list)  # {"rule", "from", "to"}


class QueryRewriter:
    def __init__(self, tables: QueryTables, normalize, rules=RULES, min_df: int = 3, lexicon=None):
        unknown = [r for r in rules if r not in RULES]
        if unknown:
            raise ValueError(f"unknown query rule(s) {unknown}; the rules are {list(RULES)}")
        self.tables = tables
        self.normalize = normalize
        self.rules = tuple(r for r in RULES if r in rules)
        self.min_df = min_df
        self.df = tables.df
        # a general dictionary (the tokenizer's jieba words): a word it knows is no typo, even where a small
        # catalog never uses it
        self.lexicon = lexicon if lexicon is not None else {}
        self.bigrams = set(tables.bigrams)
        self._unit_of = {u: g for g in UNIT_GROUPS for u in g}
        self._han_aliases = [k for k in tables.aliases if not k.isascii()]
        self._deletes: dict[str, list[str]] | None = None

    def rewrite(self, text: str) -> Rewrite:
        """The text to search and the steps that made it; a query no rule changed is searched as typed."""
        out = Rewrite(self.normalize(text) if "normalize" not in self.rules else text)
        for rule in self.rules:
            out.text = getattr(self, f"_{rule}")(out.text, out)
        if not out.steps:
            out.text = text
        return out

    # -- rules: each returns the new text and logs its steps ------------------------------------------------
    def _normalize(self, text: str, log: Rewrite) -> str:
        new = self.normalize(text)
        if new != text and new != text.lower():  # a change of case alone is not worth a log line
            log.steps.append({"rule": "normalize", "from": text, "to": new})
        return new

    def _units(self, text: str, log: Rewrite) -> str:
        def best(m: re.Match) -> str:
            num, unit = m.group(1), m.group(2)
            group = self._unit_of[unit]
            # this number with each spelling, as catalog tokens: the one the catalog has most, if it has one
            n, choice = max((self.df.get(f"{num}{u}", 0), u) for u in group)
            if choice == unit or n <= self.df.get(f"{num}{unit}", 0):
                return m.group(0)
            log.steps.append({"rule": "units", "from": m.group(0), "to": f"{num}{choice}"})
            return f"{num}{choice}"

        return _UNIT.sub(best, text)

    def _aliases(self, text: str, log: Rewrite) -> str:
        found = set(_LATIN_WORD.findall(text)) | {k for k in self._han_aliases if k in text}
        for tok in sorted(found, key=len, reverse=True):
            partners = self.tables.aliases.get(tok)
            if not partners:
                continue
            partner = max(partners, key=lambda p: self.df.get(p, 0))
            if self.df.get(tok, 0) * 4 < self.df.get(partner, 0):
                text = text.replace(tok, partner)
                log.steps.append({"rule": "aliases", "from": tok, "to": partner})
        return text

    def _pinyin(self, text: str, log: Rewrite) -> str:
        def convert(m: re.Match) -> str:
            run = m.group(0)
            if len(run) < 4 or max(self.df.get(run, 0), self.df.get(fold_plural(run), 0)) >= self.min_df:
                return run
            words = self.segment_pinyin(run)
            if words is None:
                return run
            han = "".join(words)
            log.steps.append({"rule": "pinyin", "from": run, "to": han})
            return han

        return _LATIN_RUN.sub(convert, text)

    def segment_pinyin(self, run: str) -> list[str] | None:
        """The catalog words whose toneless pinyin spells ``run`` exactly, most frequent first; None if none do."""
        py = self.tables.pinyin
        n = len(run)
        best: list[tuple[float, list[str]] | None] = [None] * (n + 1)
        best[0] = (0.0, [])
        for i in range(n):
            if best[i] is None:
                continue
            for j in range(i + 2, min(n, i + 24) + 1):
                hit = py.get(run[i:j])
                if hit is None:
                    continue
                score = best[i][0] + math.log(hit[1] + 1) - 2.0  # fewer, more frequent words
                if best[j] is None or score > best[j][0]:
                    best[j] = (score, best[i][1] + [hit[0]])
        return best[n][1] if best[n] is not None else None

    def _typos(self, text: str, log: Rewrite) -> str:
        for m in _HAN_RUN.finditer(text):
            fixed = self._han_typo(m.group(0))
            if fixed is not None:
                log.steps.append({"rule": "typos", "from": m.group(0), "to": fixed})
                return text[: m.start()] + fixed + text[m.end() :]  # one typo per query
        for m in _LATIN_RUN.finditer(text):
            run = m.group(0)
            if len(run) < 4 or run in self.df or fold_plural(run) in self.df:
                continue  # a catalog word (as the index stores it: plurals folded)
            fixed = self._latin_typo(run)
            if fixed is not None:
                log.steps.append({"rule": "typos", "from": run, "to": fixed})
                return text[: m.start()] + fixed + text[m.end() :]
        return text

    def _covered(self, run: str) -> list[bool]:
        """Which characters of a Han run lie inside a catalog or dictionary word of 2+ characters, or in a
        pair of characters the catalog's titles write."""
        cov = [False] * len(run)
        for i in range(len(run)):
            if run[i : i + 2] in self.bigrams:
                cov[i] = cov[i + 1] = True
            for j in range(i + 2, min(len(run), i + 6) + 1):
                if self.df.get(run[i:j], 0) >= self.min_df or self.lexicon.get(run[i:j], 0) > 0:
                    for p in range(i, j):
                        cov[p] = True
        return cov

    def warm(self) -> None:
        """Load what a first rewrite would (pypinyin and its tables, ~0.5 s), so no query pays for it."""
        if "typos" in self.rules or "pinyin" in self.rules:
            from pypinyin import lazy_pinyin

            lazy_pinyin("预热")

    def _han_typo(self, run: str) -> str | None:
        from pypinyin import lazy_pinyin

        cov = self._covered(run)
        if all(cov):
            return None
        best = None
        for p in (i for i, c in enumerate(cov) if not c):
            syl = lazy_pinyin(run[p], errors="ignore")
            if not syl:
                continue
            for h in self.tables.homophones.get(syl[0], ""):
                if h == run[p]:
                    continue
                fixed = run[:p] + h + run[p + 1 :]
                # the most frequent catalog word (2-4 characters) the fix makes through position p
                n = max(
                    (
                        self.df.get(fixed[a:b], 0)
                        for a in range(max(0, p - 3), p + 1)
                        for b in range(max(a + 2, p + 1), min(len(run), a + 4) + 1)
                    ),
                    default=0,
                )
                if n >= 3 * self.min_df and (best is None or n > best[0]) and all(self._covered(fixed)):
                    best = (n, fixed)  # the fix makes a catalog word and leaves nothing uncovered
        return best[1] if best else None

    def _latin_typo(self, run: str) -> str | None:
        if self._deletes is None:
            self._deletes = {}
            for w, n in self.df.items():
                if len(w) >= 4 and n >= 3 * self.min_df and w.isascii() and w.isalpha():
                    for v in {w[:i] + w[i + 1 :] for i in range(len(w))} | {w}:
                        self._deletes.setdefault(v, []).append(w)
        cands = set(self._deletes.get(run, []))
        for v in {run[:i] + run[i + 1 :] for i in range(len(run))}:
            cands.update(self._deletes.get(v, []))
        cands = [c for c in cands if c != run and _one_edit(run, c)]
        return max(cands, key=lambda c: (self.df[c], c)) if cands else None


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` differ by one insertion, deletion, substitution or adjacent swap."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        )
    s, t = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(s) and s[i] == t[i]:
        i += 1
    return s[i:] == t[i + 1 :]
