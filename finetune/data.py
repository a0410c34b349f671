"""Training data for the fine-tuning jobs: click logs or judged pairs → (query, positives, hard negatives).

- Click, add-to-cart and purchase events are positives with graded gains
  (1/2/3 by default); impressions without any of them are negatives only
  when the config says so.
- Click-log events are split by a global time cut: training strictly before
  it, evaluation from it on, never randomly, so the future never trains the past.
- Hard negatives come from the engine's own first stages (BM25, dense): the
  products ranked inside a window (e.g. 10–50) that are neither a positive
  nor a near-duplicate title of one.  They are cached on disk, keyed by the
  index builds and the queries, so reruns are cheap.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from core.formats.clicklog import Event

DEFAULT_GAINS = {"click": 1, "add_to_cart": 2, "purchase": 3}


@dataclass
class TrainingQueries:
    """Queries with their graded positives and (optional) known negatives."""

    texts: dict[str, str] = field(default_factory=dict)  # qid -> query text
    positives: dict[str, dict[str, float]] = field(default_factory=dict)  # qid -> pid -> gain
    negatives: dict[str, set[str]] = field(default_factory=dict)  # qid -> pids shown and ignored
    judged: dict[str, dict[str, float]] = field(default_factory=dict)  # judged pairs: qid -> pid -> relevance

    def __len__(self) -> int:
        return len(self.texts)

    def only(self, qids) -> "TrainingQueries":
        """These queries restricted to ``qids`` (in that order; unknown ids skipped)."""
        qids = [q for q in qids if q in self.texts]
        return TrainingQueries(
            {q: self.texts[q] for q in qids},
            {q: self.positives[q] for q in qids if q in self.positives},
            {q: self.negatives[q] for q in qids if q in self.negatives},
            {q: self.judged[q] for q in qids if q in self.judged},
        )


def time_cut(events: Sequence[Event], train_fraction: float) -> float:
    """The timestamp before which ``train_fraction`` of the events lie."""
    if not 0 < train_fraction < 1:
        raise ValueError("train_fraction must be between 0 and 1")
    ts = np.sort(np.fromiter((e.timestamp for e in events), dtype=np.float64, count=len(events)))
    return float(ts[min(int(len(ts) * train_fraction), len(ts) - 1)])


def split_by_time(events: Iterable[Event], cut: float) -> tuple[list[Event], list[Event]]:
    """(events strictly before ``cut``, events at or after it)."""
    before, after = [], []
    for e in events:
        (before if e.timestamp < cut else after).append(e)
    return before, after


def from_clicklog(
    events: Iterable[Event], gains: Mapping[str, float] | None = None, impressions_as_negatives: bool = False
) -> TrainingQueries:
    """Group events by query text: best gain per (query, product); ignored impressions as negatives if asked."""
    gains = dict(DEFAULT_GAINS if gains is None else gains)
    best: dict[str, dict[str, float]] = defaultdict(dict)
    shown: dict[str, set[str]] = defaultdict(set)
    for e in events:
        q = e.query.strip()
        if e.event in gains:
            best[q][e.product_id] = max(best[q].get(e.product_id, 0.0), float(gains[e.event]))
        elif e.event == "impression":
            shown[q].add(e.product_id)
    out = TrainingQueries()
    for i, q in enumerate(sorted(set(best) | (set(shown) if impressions_as_negatives else set()))):
        qid = f"c{i}"
        out.texts[qid] = q
        out.positives[qid] = best.get(q, {})
        if impressions_as_negatives:
            out.negatives[qid] = shown.get(q, set()) - set(best.get(q, {}))
    return out


def from_judged(
    texts: Mapping[str, str],
    relevance: Mapping[str, Mapping[str, float]],
    min_relevance: float = 0.0,
    positive_at: float | None = None,
) -> TrainingQueries:
    """Judged pairs (e.g. WenTian train.tsv): relevance above ``min_relevance`` (or, graded, at least
    ``positive_at``) is a positive with that gain; the other judged products are known negatives."""
    out = TrainingQueries()
    is_pos = (lambda r: r >= positive_at) if positive_at is not None else (lambda r: r > min_relevance)
    for qid, judged in relevance.items():
        pos = {p: float(r) for p, r in judged.items() if is_pos(r)}
        neg = {p for p, r in judged.items() if not is_pos(r)}
        out.texts[qid] = texts[qid]
        out.positives[qid] = pos
        out.negatives[qid] = neg
        out.judged[qid] = {p: float(r) for p, r in judged.items()}
    return out


def _char_set(title: str) -> set[str]:
    return {c for c in title.lower() if not c.isspace()}


def near_duplicate(a: str, b: str, threshold: float = 0.9) -> bool:
    """Titles whose character sets overlap by ``threshold`` (Jaccard) or more: the same product, relisted."""
    sa, sb = _char_set(a), _char_set(b)
    if not sa or not sb:
        return False
    return len(sa & sb) / len(sa | sb) >= threshold


def mine_hard_negatives(
    engine,
    data: TrainingQueries,
    stages: Sequence[str] = ("bm25", "dense"),
    window: tuple[int, int] = (10, 50),
    per_query: int = 4,
    duplicate_threshold: float = 0.9,
    cache_dir: Path | None = None,
    seed: int = 0,
) -> dict[str, list[str]]:
    """For each query: up to ``per_query`` products ranked within ``window`` by the stages, skipping
    positives and near-duplicates of a positive's title; interleaved across stages, cached on disk."""
    lo, hi = window
    if not 0 <= lo < hi:
        raise ValueError(f"negative window must satisfy 0 <= start < end, got {window}")
    key = _cache_key(engine, data, stages, window, per_query, duplicate_threshold, seed)
    path = Path(cache_dir) / f"hard-negatives-{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    ids, titles = engine.products.ids, engine.products.titles
    rng = np.random.default_rng(seed)
    qids = list(data.texts)
    ranked = {s: engine.retrieve_many([data.texts[q] for q in qids], hi, s) for s in stages}
    out: dict[str, list[str]] = {}
    for i, qid in enumerate(qids):
        positives = data.positives.get(qid, {})
        pos_titles = []
        for p in positives:
            try:
                pos_titles.append(titles[engine.products.row_of(p)])
            except KeyError:
                continue
        per_stage = []
        for s in stages:
            rows = ranked[s][i].rows[lo:hi]
            rows = rows[rng.permutation(len(rows))]
            per_stage.append([int(r) for r in rows])
        chosen: list[str] = []
        seen = set(positives)
        for round_rows in _interleave(per_stage):
            pid = ids[round_rows]
            if pid in seen:
                continue
            seen.add(pid)
            if any(near_duplicate(titles[round_rows], t, duplicate_threshold) for t in pos_titles):
                continue
            chosen.append(pid)
            if len(chosen) == per_query:
                break
        out[qid] = chosen
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
    return out


def _interleave(lists: Sequence[Sequence[int]]):
    for i in range(max((len(x) for x in lists), default=0)):
        for x in lists:
            if i < len(x):
                yield x[i]


def _cache_key(engine, data: TrainingQueries, stages, window, per_query, threshold, seed) -> str:
    h = hashlib.sha256()
    builds = [engine.bm25.manifest.get("build_id", "")]
    for s in stages:
        if s != "bm25":
            builds.append(engine.dense_stage(s)[1].manifest.get("build_id", ""))
    h.update(json.dumps([builds, list(stages), list(window), per_query, threshold, seed]).encode())
    for qid in data.texts:
        h.update(f"{qid}\t{data.texts[qid]}\t{sorted(data.positives.get(qid, {}))}\n".encode())
    return h.hexdigest()[:16]
