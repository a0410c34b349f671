"""The final ranker's training rows: sessions from events (one per user and query, 30-minute gaps), the
point-in-time replay of profiles and counts (:class:`PointInTime`: nothing from after a session's start), the
engine's candidate sets per query (cached on disk), their feature rows and the labelled :class:`Dataset`.
:mod:`finetune.ranker` fits the model on them.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from engine.features import FEATURES, StatsTimeline, timeline_ctr_popularity, personal_features
from engine.profiles import Profile, ProductFacets, ProfileSettings, apply_event, bought_rows
from engine.text_match import TEXT_MATCH

EVENT_NAMES = ("impression", "click", "add_to_cart", "purchase")
SESSION_GAP = 1800.0


@dataclass
class Session:
    user: str | None
    query: str
    t: float  # when the session started: only events strictly before it are known
    gains: dict[int, float] = field(default_factory=dict)  # product row -> best gain
    shown: list[int] = field(default_factory=list)  # product rows shown (impressions), in order
    offset: int = 0  # the 0-based position of shown[0] (a logged search's page offset)
    weight: float = 1.0  # the session's training weight (a user's searches are capped in all: finetune.retrain)
    search_id: str | None = None  # a logged search's id


@dataclass
class EventArrays:
    """A time-ordered event log as parallel arrays (user keys, product rows and ids, event codes, times)."""

    users: np.ndarray
    rows: np.ndarray
    pids: np.ndarray
    codes: np.ndarray
    ts: np.ndarray
    counted: np.ndarray | None = None  # per event: whether it counts in the product statistics (None: all)
    shapes_profile: np.ndarray | None = None  # per event: whether it shapes its user's profile (None: all)
    ranks: np.ndarray | None = None  # per event: its 1-based rank in its search (0: unknown; None: none known)
    relevance: np.ndarray | None = None  # per event: the logged click log-odds of its product (nan: none logged)

    @classmethod
    def from_events(cls, events: Iterable, row_of: Mapping[str, int], exposure: str = "shown") -> "EventArrays":
        """From :class:`core.formats.clicklog.Event` objects; events on products not in the index are dropped.
        ``exposure="examined"``: an impression shapes a profile only at or above its search's deepest engagement
        (:func:`engine.events.impressions.examined_in_log`; ``personal.exposure``).  Each event's rank in its
        search (impressions in the order first shown) feeds the profiles' taste evidence (:mod:`engine.taste`)."""
        from engine.events.impressions import searches_in_log

        kept = sorted((e for e in events if e.product_id in row_of), key=lambda e: e.timestamp)
        out = cls.from_rows(
            [(e.user_id, row_of[e.product_id], e.product_id, EVENT_NAMES.index(e.event), e.timestamp) for e in kept]
        )
        if kept:
            keep, ranks = searches_in_log(
                *zip(*((e.user_id, e.query, e.event, e.product_id, e.timestamp) for e in kept))
            )
            out.ranks = np.asarray(ranks, dtype=np.int64)
            x = [e.relevance for e in kept]
            if any(v is not None for v in x):
                out.relevance = np.array([np.nan if v is None else v for v in x], dtype=np.float64)
            if exposure == "examined":
                out.shapes_profile = np.asarray(keep, dtype=bool)
        return out

    @classmethod
    def from_rows(cls, rows: Sequence[tuple]) -> "EventArrays":
        """From (user, product row, product id, event code, time) tuples, already in time order."""
        if not rows:
            return cls(*(np.zeros(0, dtype=d) for d in (object, np.int64, object, np.int64, np.float64)))
        u, r, p, c, t = zip(*rows)
        return cls(
            np.asarray(u, dtype=object),
            np.asarray(r, dtype=np.int64),
            np.asarray(p, dtype=object),
            np.asarray(c, dtype=np.int64),
            np.asarray(t, dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.ts)


def sessions_from_events(
    events: Iterable, row_of: Mapping[str, int], gains: Mapping[str, float], gap: float = SESSION_GAP
) -> list[Session]:
    """Sessions of a click log (see the module docstring), in time order."""
    by_key: dict[tuple[str, str], list] = defaultdict(list)
    for e in events:
        if e.product_id in row_of:
            by_key[(e.user_id, e.query.strip())].append(e)
    out = []
    for (user, query), evs in by_key.items():
        evs.sort(key=lambda e: e.timestamp)
        cur: Session | None = None
        last = -np.inf
        for e in evs:
            if cur is None or e.timestamp - last > gap:
                cur = Session(user, query, e.timestamp)
                out.append(cur)
            last = e.timestamp
            row = row_of[e.product_id]
            g = float(gains.get(e.event, 0.0))
            if e.event == "impression" and row not in cur.shown:
                cur.shown.append(row)
            if g > 0:
                cur.gains[row] = max(cur.gains.get(row, 0.0), g)
    out.sort(key=lambda s: s.t)
    return out


class PointInTime:
    """Profiles and product counts as of any time, from events replayed in time order.

    :meth:`profiles_at` must be called with non-decreasing times; it applies every event strictly
    before ``t`` and returns the live profiles (read them before the next call).
    """

    def __init__(self, events: EventArrays, facets: ProductFacets, settings: ProfileSettings, query_clicks=None):
        self.events = events
        self.query_clicks = query_clicks  # an engine.query_clicks.QueryClickTimeline (logged searches), or None
        self.facets = facets
        self.settings = settings
        c = slice(None) if events.counted is None else events.counted
        self.timeline = StatsTimeline(events.rows[c], events.codes[c], events.ts[c], len(facets))
        self.profiles: dict[str, Profile] = {}
        self._next = 0
        self._t = -np.inf

    def profiles_at(self, t: float) -> dict[str, Profile]:
        if t < self._t:
            raise ValueError("PointInTime.profiles_at needs non-decreasing times")
        self._t = t
        ev = self.events
        end = int(np.searchsorted(ev.ts, t, side="left"))
        for i in range(self._next, end):
            shapes = ev.shapes_profile is None or bool(ev.shapes_profile[i])
            rank = int(ev.ranks[i]) if ev.ranks is not None else 0
            if not shapes and rank <= 0:
                continue
            user = ev.users[i]
            p = self.profiles.get(user)
            if p is None:
                p = self.profiles[user] = Profile()
            event = EVENT_NAMES[ev.codes[i]]
            x = float(ev.relevance[i]) if ev.relevance is not None else None
            apply_event(
                p, self.facets, int(ev.rows[i]), ev.pids[i], event, float(ev.ts[i]), self.settings, rank, shapes, x
            )
        self._next = max(self._next, end)
        return self.profiles


def candidate_cache(
    engine, queries: Sequence[str], batch: int = 32, progress: bool = True, cache_dir: Path | None = None
) -> dict:
    """The engine's non-personal candidate sets (with cross-encoder scores) for each distinct query.

    With ``cache_dir`` they are kept on disk, keyed by the index builds, the cross-encoder's files and the
    rerank settings, so the ranker job, the personalization benchmark and reruns score each query once.
    """
    import pickle

    uniq = list(dict.fromkeys(queries))
    cached: dict = {}
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"candidates-{_candidates_key(engine)}.pkl"
        if path.is_file():
            with open(path, "rb") as f:
                cached = pickle.load(f)
    out = {q: cached[q] for q in uniq if q in cached}
    for q, c in out.items():
        if c.match is None or c.match.shape[1] != len(TEXT_MATCH):  # cached before (some of) these features
            from engine.text_match import text_match

            c.match = text_match(engine.bm25, q, c.rows)
    todo = [q for q in uniq if q not in out]
    for i in tqdm(range(0, len(todo), batch), desc="candidates + cross-encoder", disable=not progress or not todo):
        chunk = todo[i : i + batch]
        for q, c in zip(chunk, engine.candidate_sets(chunk, engine.live)):
            out[q] = c
    if path is not None and todo:
        cached.update(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump(cached, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    return out


def _candidates_key(engine) -> str:
    from engine.types import RERANK_FIRST_STAGES
    from finetune.inputs import settings_hash

    r = engine.cfg.rerank
    ce = engine.cross_encoder()
    builds = [engine.bm25.manifest.get("build_id")]
    builds += [engine.dense_stage(s)[1].manifest.get("build_id") for s in RERANK_FIRST_STAGES if s != "bm25"]
    deleted = int(engine.live.size - engine.live.sum()) if engine.live is not None else 0
    parts = [builds, deleted, r.depth, r.first_stage, engine.cfg.search.candidates, ce.fingerprint() or str(r.model)]
    parts += [f"lookup{r.lookup_depth}"] if r.lookup_depth else []
    return settings_hash(*parts, *(["base_cosine", _base_build(engine)] if r.base_cosine else []))


def _base_build(engine) -> str | None:
    """The zero-shot encoder's index build the candidates' ``base`` cosines come from."""
    from engine.types import DENSE_BASE

    encoder, index = engine.dense_stage(DENSE_BASE)
    return f"{index.manifest.get('build_id')}/{encoder.fingerprint}"


def session_features(
    engine, cand, session: Session, pit: PointInTime | None, prior: float, row_of: Mapping[str, int], half_life: float
) -> np.ndarray:
    """The feature rows of one session's candidates, as of the session's start."""
    from engine.features import feature_matrix

    rows = cand.rows
    if pit is not None:
        profiles = pit.profiles_at(session.t)
        prof = profiles.get(session.user) if session.user is not None else None
        if prof is not None and prof.weight <= 0:
            prof = None
        ctr, pop = timeline_ctr_popularity(pit.timeline, rows, session.t, prior)
        personal = (
            personal_features(
                rows,
                prof,
                engine.facets(),
                session.t,
                half_life,
                bought_rows(prof, row_of),
                pit.settings.session_half_life,
            )
            if prof is not None
            else None
        )
    else:
        ctr, pop, personal = np.zeros(len(rows)), np.zeros(len(rows)), None
    qc = pit.query_clicks if pit is not None else None
    qctr = qc.at(session.t).lookup(session.query, rows) if qc is not None else None
    return feature_matrix(cand, ctr, pop, personal, qctr)


@dataclass
class Dataset:
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray  # rows per session
    sessions: list[int]  # index of each kept session in the input list
    position: np.ndarray | None = None  # each row's logged position (0 = top; -1 unknown: judged pairs)
    weight: np.ndarray | None = None  # each row's session weight (None: all 1)
    offset: np.ndarray | None = None  # a score each row starts from beside g's (the taste model's; None: 0)

    def split(self, n_first: int) -> tuple["Dataset", "Dataset"]:
        """(the first ``n_first`` sessions, the rest)."""
        cut = int(self.groups[:n_first].sum())
        return (
            self._rows(slice(None, cut), self.groups[:n_first], self.sessions[:n_first]),
            self._rows(slice(cut, None), self.groups[n_first:], self.sessions[n_first:]),
        )

    def take(self, sessions: np.ndarray) -> "Dataset":
        """The sessions where the boolean mask ``sessions`` is true, in their order."""
        sessions = np.asarray(sessions, dtype=bool)
        kept = [s for s, k in zip(self.sessions, sessions) if k]
        return self._rows(np.repeat(sessions, self.groups), self.groups[sessions], kept)

    def shuffled(self, seed: int = 0) -> "Dataset":
        """The same sessions with rows in a random order within each (seeded): a ranking that cannot tell
        rows apart must not inherit the logged order (its position bias) when it is measured."""
        rng = np.random.default_rng(seed)
        key = np.repeat(np.arange(len(self.groups)), self.groups) + rng.random(len(self.y))
        return self._rows(np.argsort(key, kind="stable"), self.groups, self.sessions)

    def _rows(self, rows, groups: np.ndarray, sessions: list[int]) -> "Dataset":
        """The dataset of ``rows`` (an index, a mask or a slice), every row-aligned array taken alike."""

        def part(a):
            return None if a is None else a[rows]

        return Dataset(
            self.X[rows], self.y[rows], groups, sessions, part(self.position), part(self.weight), part(self.offset)
        )

    @property
    def logged(self) -> bool:
        """Whether rows carry the position they were shown at (a click log, not judged pairs)."""
        return self.position is not None and bool((self.position >= 0).any())


def build_dataset(
    engine,
    sessions: Sequence[Session],
    pit: PointInTime | None,
    cands: dict,
    prior: float,
    progress: bool = True,
    collect=None,
) -> Dataset:
    """Feature rows and labels of the sessions (in time order) whose candidates hold a positive.  ``collect(i,
    session, candidates, feature rows, pit)`` is called for every logged session (one with impressions), with or
    without a positive, as of its start (:class:`finetune.taste_fit.TasteRows`)."""
    row_of = engine.products.row_map() if pit is not None else {}
    half_life = engine.cfg.personal.half_life_days * 86400.0
    Xs, ys, groups, kept, positions, weights = [], [], [], [], [], []
    for i, s in enumerate(tqdm(sessions, desc="ranker features", disable=not progress, mininterval=2.0)):
        cand = cands[s.query]
        if not len(cand.rows):
            continue
        y = np.array([s.gains.get(int(r), 0.0) for r in cand.rows])
        X = session_features(engine, cand, s, pit, prior, row_of, half_life)
        if collect is not None and s.shown:
            collect(i, s, cand, X, pit)
        pos = np.full(len(y), -1.0)
        if s.shown:  # logged sessions: only what the user saw has a label; the rest is unknown, not 0
            seen = np.isin(cand.rows, s.shown)
            where = {r: j for j, r in enumerate(s.shown)}
            X, y = X[seen], y[seen]
            pos = np.array([s.offset + where[int(r)] for r in cand.rows[seen]], dtype=np.float64)
        if len(y) < 2 or y.max() <= 0:
            continue
        Xs.append(X)
        ys.append(y)
        groups.append(len(y))
        kept.append(i)
        positions.append(pos)
        weights.append(np.full(len(y), s.weight))
    if not Xs:
        return Dataset(
            np.zeros((0, len(FEATURES))), np.zeros(0), np.zeros(0, dtype=np.int64), [], np.zeros(0), np.zeros(0)
        )
    return Dataset(
        np.vstack(Xs),
        np.concatenate(ys),
        np.asarray(groups, dtype=np.int64),
        kept,
        np.concatenate(positions),
        np.concatenate(weights),
    )
