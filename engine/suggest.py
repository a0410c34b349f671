"""Prefix → query suggestions (搜索联想): the suggestion stage of the serving index version, ranked.

What a keystroke reads (docs/suggestions.md):

1. the typed text cleaned as suggestions are stored (NFKC, traditional → simplified, lowercase; spaces and
   apostrophes between pinyin letters dropped as an input method does);
2. its completions from :class:`indexer.suggest_index.SuggestIndex` — characters, full pinyin, initials, mixed;
3. where a Latin prefix of ``typo_min_letters`` or more finds fewer than ``k``, the completions of its one-edit
   variants (deletion, substitution, insertion, transposition), worth ``typo_factor``;
4. ranked by popularity — the build's, plus the searches the service logged since (online through
   :meth:`Suggester.observe`, and read back from the store's impressions of the last ``live_days`` when the
   service starts: :meth:`Suggester.load_logged`) — times ``1 + category_boost × share``
   of the suggestion's category in a known shopper's profile; that shopper's own recent searches that match
   come first, newest first.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

import numpy as np

from engine.types import QueryError
from indexer.suggest import clean
from indexer.suggest_index import SuggestIndex, typed_keys

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_LATIN = re.compile(r"^[a-z0-9]+$")  # a prefix that may carry one typo
_PINYIN_SEP = re.compile(r"(?<=[a-z])['\s]+(?=[a-z])")
MAX_K = 20


@dataclass
class Suggestion:
    text: str
    score: float
    hits: int  # products it found at build time
    category: str | None  # the category most of those products are in, where one is
    source: str  # "popular", "recent" (the shopper's own search) or "typo"

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "score": round(self.score, 4),
            "hits": self.hits,
            "category": self.category,
            "source": self.source,
        }


def one_edit(word: str) -> set[str]:
    """Every string one deletion, substitution, insertion or transposition away (Latin letters and digits)."""
    out = set()
    for i in range(len(word) + 1):
        head, tail = word[:i], word[i:]
        if tail:
            out.add(head + tail[1:])
            if len(tail) > 1:
                out.add(head + tail[1] + tail[0] + tail[2:])
        for c in _ALPHABET:
            out.add(head + c + tail)
            if tail:
                out.add(head + c + tail[1:])
    out.discard(word)
    return out


class Suggester:
    def __init__(self, index: SuggestIndex, cfg, t2s: bool = True, events=None, clock=time.time):
        """``events``: a function returning the :class:`engine.events.UserEvents` (opened at first need), or
        None (no personal ranking, no logged searches)."""
        self.index = index
        self.cfg = cfg  # SuggestConfig
        self.t2s = t2s
        self._events_fn = events
        self.clock = clock
        self.live = np.zeros(len(index), dtype=np.float64)
        self._loaded = False
        self._lock = threading.Lock()

    @property
    def events(self):
        return self._events_fn() if self._events_fn is not None else None

    def carry_live(self, old: "Suggester") -> None:
        """Keep the online counts of an older suggester (a reload) for the suggestions both have."""
        for sid in np.flatnonzero(old.live):
            new = self.index.sid(old.index.texts[sid])
            if new is not None:
                self.live[new] += old.live[sid]
        self._loaded = old._loaded

    def clean(self, prefix: str) -> str:
        return _PINYIN_SEP.sub("", clean(prefix, self.t2s))

    def observe(self, query: str, n: float = 1.0) -> bool:
        """Count one logged search of ``query`` (the service calls this as it logs an impression); False
        when it is no suggestion."""
        sid = self.index.sid(clean(query, self.t2s))
        if sid is None:
            return False
        self.live[sid] += n
        return True

    def load_logged(self) -> None:
        """Count the searches the store logged in the last ``live_days``, once (the service at start)."""
        with self._lock:
            if self._loaded:
                return
            events = self.events
            if events is None:
                self._loaded = True
                return
            now = self.clock()
            store = events.store
            for page in store.impression_pages(now - self.cfg.live_days * 86400.0, now + 1.0):
                for row in page:
                    self.observe(row[3])
            self._loaded = True

    def reload_logged(self) -> None:
        """Count the logged searches again from the store (a user was forgotten: their searches left it)."""
        with self._lock:
            self.live = np.zeros(len(self.index), dtype=np.float64)
            self._loaded = False
        self.load_logged()

    def suggest(self, prefix: str, k: int = 8, user_id: str | None = None) -> list[Suggestion]:
        if not isinstance(prefix, str):
            raise QueryError("q", f"must be text, got {type(prefix).__name__}")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= min(MAX_K, self.cfg.top_k):
            raise QueryError("k", f"must be an integer from 1 to {min(MAX_K, self.cfg.top_k)}, got {k!r}")
        p = self.clean(prefix)
        if not p:
            return []
        ix = self.index
        found = {int(s): "popular" for s in ix.completions(p)}
        if " " in p:
            found.update((int(s), "popular") for s in ix.completions(p.replace(" ", "")) if int(s) not in found)
        if len(found) < k and _LATIN.match(p) and len(p) >= self.cfg.typo_min_letters:
            for v in one_edit(p):
                if ix.has_prefix(v):
                    found.update((int(s), "typo") for s in ix.completions(v) if int(s) not in found)
        recent = self._recent(user_id, p)
        if not found and not recent:
            return []
        sids = np.fromiter(found, dtype=np.int64, count=len(found))
        score = ix.popularity[sids] + self.live[sids]
        score = score * np.array([self.cfg.typo_factor if found[s] == "typo" else 1.0 for s in found.keys()])
        share = self._category_share(user_id)
        if share is not None:
            cats = ix.category[sids]
            score = score * (1.0 + self.cfg.category_boost * np.where(cats >= 0, share[np.maximum(cats, 0)], 0.0))
        order = np.lexsort((sids, -score))
        top = float(score.max()) if len(score) else 0.0
        out = [self._suggestion(s, top + 1.0 + (len(recent) - i), "recent") for i, s in enumerate(recent)]
        for i in order:
            if len(out) >= k:
                break
            if int(sids[i]) not in recent:
                out.append(self._suggestion(int(sids[i]), float(score[i]), found[int(sids[i])]))
        return out[:k]

    def _suggestion(self, sid: int, score: float, source: str) -> Suggestion:
        ix = self.index
        c = int(ix.category[sid])
        return Suggestion(ix.texts[sid], score, int(ix.hits[sid]), ix.categories[c] if c >= 0 else None, source)

    def _recent(self, user_id: str | None, p: str) -> list[int]:
        """The shopper's recent searches that are suggestions reached by ``p``, newest first."""
        if user_id is None or self._events_fn is None or not self.cfg.recent_searches:
            return []
        events = self.events
        key = events.user_key(user_id)
        if key is None:
            return []
        _, searches = events.store.recent(key, 0, self.cfg.recent_searches)
        out: list[int] = []
        for q, _ in searches:
            sid = self.index.sid(clean(q or "", self.t2s))
            if (
                sid is not None
                and sid not in out
                and any(key_.startswith(p) for key_ in typed_keys(self.index.texts[sid]))
            ):
                out.append(sid)
        return out

    def _category_share(self, user_id: str | None) -> np.ndarray | None:
        if user_id is None or self._events_fn is None or not self.index.categories or not self.cfg.category_boost:
            return None
        profile = self.events.profile(user_id)
        if profile is None:
            return None
        shares = profile.shares("category")
        return np.array([float(shares.get(str(c), 0.0)) for c in range(len(self.index.categories))])


def load_suggester(version, previous: Suggester | None = None) -> Suggester:
    """The suggester of an index version's ``suggest`` stage (a clear error where `make index` built none),
    keeping the online counts of ``previous``."""
    from indexer.store import read_manifest, stage_folder

    folder = stage_folder(version.cfg.index_dir, "suggest", version.root)
    read_manifest(folder, "suggest", verify=version.verify)
    t2s = version.cfg.text.traditional_to_simplified
    sug = Suggester(SuggestIndex.load(folder), version.cfg.suggest, t2s, events=version.user_events)
    if previous is not None:
        sug.carry_live(previous)
    return sug
