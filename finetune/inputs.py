"""What a training job reads and how it knows a model is current: the config's training data (a click log split by
time, or judged pairs with their dev queries) and the settings hash every model card records.

Below :mod:`finetune.job` and the trainers that consult it (:mod:`finetune.ranker`, :mod:`finetune.distill`), so
none of them imports the job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from finetune.data import TrainingQueries, from_clicklog, from_judged, split_by_time, time_cut
from core.config import Config, RerankConfig, SearchConfig, marked_settings


@dataclass
class TrainingData:
    train: TrainingQueries
    dev: TrainingQueries
    source: str
    description: str


def is_clicklog(path: Path, fmt: str = "auto") -> bool:
    if fmt != "auto":
        return fmt == "clicklog"
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return True
    with open(path, encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    return "event" in header and "timestamp" in header


def load_training_data(cfg: Config) -> TrainingData:
    """Train and dev queries from the config's ``finetune`` section."""
    from core.formats.judged import QueriesError, read_queries

    ft = cfg.finetune
    if ft.train is None:
        raise QueriesError(f"{cfg.source or cfg.name}: finetune.train is not set (a click log or judged pairs)")
    if not Path(ft.train).is_file():
        raise QueriesError(f"training data not found: {ft.train}")
    if is_clicklog(Path(ft.train), ft.format):
        from core.formats.clicklog import read_clicklog

        events = read_clicklog(ft.train)
        cut, how = clicklog_cut(cfg, events)
        before, after = split_by_time(events, cut)
        train = from_clicklog(before, ft.gains, ft.impressions_as_negatives)
        dev = from_clicklog(after, ft.gains)
        desc = (
            f"click log {ft.train}: {len(before)} events before the time cut {cut:.0f} train "
            f"({len(train)} queries), {how} ({len(after)} events, {len(dev)} queries) evaluate"
        )
    else:
        judged = read_queries(ft.train)
        train = from_judged(judged.texts, judged.relevance, positive_at=ft.positive_relevance)
        dev_path = ft.dev or cfg.eval.queries
        if dev_path is None:
            raise QueriesError("judged training pairs need dev queries: set finetune.dev or eval.queries")
        d = read_queries(dev_path)
        dev = from_judged(d.texts, d.relevance, positive_at=ft.positive_relevance)
        desc = f"judged pairs {ft.train} ({len(train)} queries); dev {dev_path} ({len(dev)} queries)"
        if ft.positive_relevance is not None:
            n_pos = sum(len(v) for v in train.positives.values())
            n_neg = sum(len(v) for v in train.negatives.values())
            desc += (
                f"; graded: {n_pos} pairs rated >= {ft.positive_relevance:g} are positives, {n_neg} rated below "
                "are known negatives of their query"
            )
    dev_qids = [q for q in dev.texts if dev.positives.get(q)][: ft.dev_queries]
    dev = dev.only(dev_qids)
    # what the models learn from (it enters their settings hashes): the file, and how its grades were read
    source = (
        str(ft.train) if ft.positive_relevance is None else f"{ft.train} (positives rated >= {ft.positive_relevance:g})"
    )
    return TrainingData(train, dev, source, desc)


def clicklog_cut(cfg: Config, events) -> tuple[float, str]:
    """The global time cut of a click log (training strictly before it) and how it was chosen."""
    from core.formats.judged import QueriesError

    ft = cfg.finetune
    if not events:
        raise QueriesError(f"{ft.train}: no events")
    if ft.holdout_days is not None:
        return max(e.timestamp for e in events) - ft.holdout_days * 86400, f"the last {ft.holdout_days:g} days"
    return time_cut(events, ft.train_fraction), f"the last {1 - ft.train_fraction:.0%} of events"


def settings_hash(*parts) -> str:
    # config sections enter with their "train" markers (core.config.NOT_TRAINED, TRAINED_WHEN_SET)
    blob = json.dumps(
        [marked_settings(p, "train") if dataclasses.is_dataclass(p) else p for p in parts],
        sort_keys=True,
        default=str,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finished(folder: Path, key: str) -> bool:
    """Whether ``folder`` holds a model trained with the settings ``key`` to its end (not paused by a time cap)."""
    card = folder / "model_card.json"
    if not card.is_file():
        return False
    try:
        card = json.loads(card.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return card.get("settings_hash") == key and not card.get("paused")


def paused_notes(models: dict, source) -> list[str]:
    """What the job says of each model its time cap paused before ``max_steps`` (the cards in ``models``)."""
    notes = []
    for name, card in models.items():
        if isinstance(card, dict) and card.get("paused"):
            section = name.replace("-", "")
            cap = card.get("training", {}).get("max_minutes")
            notes.append(
                f"{name}: paused at step {card['steps']} of {card['max_steps']} by its {cap}-minute cap "
                f"(finetune.{section}.max_minutes in {source}); its best checkpoint serves as it is: rerun with "
                "--resume (make finetune RESUME=1) to train it on to max_steps"
            )
    return notes


def ranker_queries(data: TrainingData, t) -> list[str]:
    """The judged training queries the ranker learns from: a seeded sample of ``t.max_queries``."""
    import random

    qids = list(data.train.texts)
    random.Random(t.seed).shuffle(qids)
    return qids[: t.max_queries]


def ranker_held_out(cfg: Config, data: TrainingData) -> set[str]:
    """The ranker's queries when ``finetune.ranker.held_out`` keeps them from the cross-encoder (judged pairs
    with a ranker in use); empty otherwise."""
    ft = cfg.finetune
    if not (ft.ranker.held_out and cfg.rerank.model and cfg.rerank.ranker) or is_clicklog(Path(ft.train), ft.format):
        return set()
    return set(ranker_queries(data, ft.ranker))


def without_rerank(cfg: Config, **dense) -> Config:
    """The config with no cross-encoder (and, given ``dense``, other dense settings): the first stages only."""
    return dataclasses.replace(
        cfg,
        rerank=RerankConfig(model=None),
        dense=dataclasses.replace(cfg.dense, **dense),
        search=SearchConfig(stages=["bm25"], candidates=cfg.search.candidates),
    )


def rows_of(engine, pids) -> list[int]:
    """The catalog rows of ``pids`` (ids the catalog lacks are skipped)."""
    rows = []
    for p in pids:
        try:
            rows.append(engine.products.row_of(p))
        except KeyError:
            continue
    return rows
