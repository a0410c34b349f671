"""The offline retraining job behind `make finetune`: training data → bi-encoder → dense index → cross-encoder.

1. Training data from the config's ``finetune.train``: a click log (split by
   a global time cut: events before it train, events after it are the dev
   queries) or judged pairs (dev: ``finetune.dev``, else ``eval.queries``).
2. Bi-encoder: hard negatives mined from the bm25 and zero-shot dense
   rankings, MNRL training from the base model, best checkpoint by dev MRR@10
   over a pool of titles → ``<out>/bi-encoder``.
3. The dense index is rebuilt with it (atomically; the old one serves until
   the new one is complete).
4. Cross-encoder: negatives from the union of the bm25 and (new) dense
   candidates it will rerank, listwise or pointwise training from the base
   model's first N layers, best checkpoint by dev MRR@10 of its reranking
   → ``<out>/cross-encoder``.

Each model folder gets a ``model_card.json`` (data, steps, minutes, seed, dev
metrics, the full curve); each training writes ``<model>.log.json`` at every
evaluation.  With ``resume`` a finished model whose card matches the current
settings is kept, and an interrupted training continues from its last
evaluation.  A training stopped by its time cap (``max_minutes``) before its
``max_steps`` is *paused*: its best checkpoint serves, the job says so, and
``resume`` goes on to ``max_steps`` (what a faster machine trains in one run).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

from finetune.data import mine_hard_negatives
from finetune.crossencoder_stage import train_crossencoder
from finetune.inputs import (
    TrainingData,
    finished,
    load_training_data,
    paused_notes,
    ranker_held_out,
    rows_of,
    settings_hash,
    without_rerank,
)
from finetune.export_onnx import export_config
from finetune.ranker_stage import train_ranker_stage
from core.config import Config

JOB_STAGES = ("bi-encoder", "cross-encoder", "ranker")


def _eval_query_texts(cfg: Config) -> set[str]:
    """The texts of the config's evaluation queries (never trained on)."""
    from core.formats.judged import read_queries

    q = cfg.eval.queries
    return set(read_queries(q).texts.values()) if q and Path(q).is_file() else set()


def train_biencoder(cfg: Config, data: TrainingData, out: Path, resume: bool, progress: bool) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from engine import SearchEngine
    from finetune.biencoder import Example, pool_mrr, train
    from indexer.build import ensure_indexes
    from indexer.dense import stage_model

    t = cfg.finetune.biencoder
    mining_cfg = without_rerank(cfg)
    ensure_indexes(mining_cfg, ["dense-base"], progress=progress)
    engine = SearchEngine.from_config(mining_cfg)
    t0 = time.perf_counter()
    negatives = mine_hard_negatives(
        engine,
        data.train,
        stages=("bm25", "dense-base"),
        window=tuple(t.negatives_window),
        per_query=t.hard_negatives,
        cache_dir=out.parent / "cache",
        seed=t.seed,
    )
    titles = engine.products.titles
    examples = []
    for qid, pos in data.train.positives.items():
        # mined only: a product judged lower (Home Depot's 2.33 against 2.67) is too close to be a bi-encoder's
        # negative; the cross-encoder learns that order
        neg = [titles[r] for r in rows_of(engine, negatives.get(qid, []))]
        for pid in pos:
            for row in rows_of(engine, [pid]):
                examples.append(Example(data.train.texts[qid], titles[row], neg, pid))
    mining_s = time.perf_counter() - t0
    # dev: rank a pool of titles (the dev queries' hybrid top-20 and their positives)
    pool_rows: dict[int, int] = {}
    positives = []
    dev_texts = list(data.dev.texts.values())
    for res in engine.candidates_many(dev_texts, stages=("bm25", "dense-base")):
        for r in res.rows[:20]:
            pool_rows.setdefault(int(r), len(pool_rows))
    for qid in data.dev.texts:
        positives.append({pool_rows.setdefault(r, len(pool_rows)) for r in rows_of(engine, data.dev.positives[qid])})
    evaluate = pool_mrr(dev_texts, [titles[r] for r in pool_rows], positives)
    base = t.init_from or stage_model(cfg, "dense-base")
    model = SentenceTransformer(str(base), device="cuda" if torch.cuda.is_available() else "cpu")
    distill, distill_note = None, {}
    if t.distill_from is not None:
        from finetune.biencoder import read_teacher_cache

        held = set(data.dev.texts.values()) | _eval_query_texts(cfg)
        distill = read_teacher_cache(t.distill_from, exclude=held)
        distill_note = {
            "distillation": f"listwise KL to the teacher scores in {t.distill_from} ({len(distill)} "
            f"queries, dev and evaluation queries left out), weight {t.distill_weight}"
        }
    report = train(
        model,
        examples,
        t,
        out,
        evaluate=evaluate,
        log_path=out.with_name(out.name + ".log.json"),
        progress=progress,
        resume=resume,
        pause_on_time=True,  # a slow machine's time cap pauses it: RESUME=1 goes on
        distill=distill,
    )
    return {
        "base_model": str(base),
        "data": data.description,
        "pairs": len(examples),
        **distill_note,
        "hard_negatives": f"{t.hard_negatives} per query from bm25/dense-base ranks "
        f"{t.negatives_window[0]}-{t.negatives_window[1]}, positives and near-duplicates skipped",
        "mining_seconds": round(mining_s, 1),
        "dev_metric": f"MRR@10 over a pool of {len(pool_rows)} titles ({len(dev_texts)} dev queries' "
        "bm25+dense-base top-20 and their positives)",
        **report,
        "training": dataclasses.asdict(t),
    }


def config_stages(cfg: Config) -> list[str]:
    """The models a config uses, so the ones `make finetune` trains: the bi-encoder where ``dense.model`` names
    the job's own (a config serving the zero-shot base model trains none), the cross-encoder and the ranker
    where ``rerank.model`` is set (``--stages`` still trains any one to try)."""
    ft = cfg.finetune
    out_dir = ft.out_dir or cfg.root / "models" / cfg.name
    dense = Path(cfg.dense.model)
    dense = dense if dense.is_absolute() else cfg.root / dense
    uses_own = dense.resolve() == (out_dir / "bi-encoder").resolve()
    stages = ["bi-encoder"] if uses_own else []
    return stages + (["cross-encoder", "ranker"] if cfg.rerank.model else [])


def run_job(
    cfg: Config,
    stages: Sequence[str] = JOB_STAGES,
    resume: bool = False,
    progress: bool = True,
    cross_encoder_layers: int | None = None,
    cross_encoder_out: Path | None = None,
) -> dict:
    """Train what ``stages`` name and rebuild the dense index; returns a summary (also in ``<out>/finetune.json``)."""
    from indexer.build import ensure_indexes
    from indexer.encoder import resolve_model

    bad = [s for s in stages if s not in JOB_STAGES]
    if bad:
        raise ValueError(f"unknown job stage(s) {bad}; choose from {list(JOB_STAGES)}")
    ft = cfg.finetune
    out_dir = ft.out_dir or cfg.root / "models" / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    bi_out = out_dir / "bi-encoder"
    ce_out = cross_encoder_out or out_dir / "cross-encoder"
    _check_config_names(cfg, bi_out, ce_out)
    data = load_training_data(cfg)
    summary: dict = {"config": str(cfg.source), "data": data.description, "models": {}}
    t_start = time.perf_counter()
    if "bi-encoder" in stages:
        key = settings_hash(ft.biencoder, data.source, cfg.dense.base_model, len(data.train))
        summary["models"]["bi-encoder"] = _stage(
            bi_out, key, resume, lambda: train_biencoder(cfg, data, bi_out, resume, progress)
        )
    # the dense index follows the config's bi-encoder (rebuilt only when its fingerprint changed)
    resolve_model(cfg.dense.model, cfg.root)
    t0 = time.perf_counter()
    ensure_indexes(without_rerank(cfg), ["dense"], progress=progress)
    summary["dense_index_seconds"] = round(time.perf_counter() - t0, 1)
    # the stages after this search as serving does: with the query encoder's ONNX export where the config uses it
    summary["onnx"] = export_config(cfg, if_missing=True, only_used=True, kinds=("query-encoder",))
    if "cross-encoder" in stages:
        t = cfg.finetune.crossencoder
        layers = cross_encoder_layers if cross_encoder_layers is not None else t.num_layers
        key = settings_hash(
            dataclasses.replace(t, num_layers=layers),
            data.source,
            cfg.dense.base_model,
            len(data.train),
            cfg.rerank.depth,
            *([cfg.eval.gain_offset] if t.loss == "graded" else []),  # graded: gains it learns
            *(["ranker_held_out", ft.ranker.max_queries, ft.ranker.seed] if ranker_held_out(cfg, data) else []),
        )
        summary["models"]["cross-encoder"] = _stage(
            ce_out, key, resume, lambda: train_crossencoder(cfg, data, ce_out, resume, progress, num_layers=layers)
        )
    if "ranker" in stages and cfg.rerank.model:
        # the ranker learns from the scores serving will give: the cross-encoder's ONNX export where it runs on one
        summary["onnx"] += export_config(cfg, if_missing=True, only_used=True, kinds=("cross-encoder",))
        rk_out = out_dir / "ranker"
        from engine.features import FEATURES

        key = settings_hash(
            ft.ranker,
            FEATURES,  # what the engine computes: a new feature retrains the ranker
            cfg.personal,
            data.source,
            len(data.train),
            cfg.rerank.depth,
            *([cfg.rerank.lookup_depth] if cfg.rerank.lookup_depth else []),  # the features' values change with it
            *(["base_cosine"] if cfg.rerank.base_cosine else []),
            _model_hash(cfg.rerank.model, cfg.root),
            _model_hash(cfg.dense.model, cfg.root),  # it reads the dense stage's cosines and ranks
        )
        summary["models"]["ranker"] = _stage(
            rk_out, key, resume, lambda: train_ranker_stage(cfg, data, rk_out, progress), whole_card=True
        )
    summary["minutes"] = round((time.perf_counter() - t_start) / 60, 2)
    summary["paused"] = paused_notes(summary["models"], cfg.source)
    (out_dir / "finetune.json").write_text(
        json.dumps(summary, indent=1, ensure_ascii=False, default=str), encoding="utf-8"
    )
    return summary


def _stage(folder: Path, key: str, resume: bool, train, whole_card: bool = False):
    """One model of the job: kept when ``resume`` finds it finished with the same settings (``key``), else
    trained by ``train()`` and its card written with the key.  Returns what the summary says of it (the card
    without its training log, unless ``whole_card``)."""
    if resume and finished(folder, key):
        return f"{folder} (kept: finished with the same settings)"
    card = train()
    card["settings_hash"] = key
    _write_card(folder, card)
    return card if whole_card else {k: v for k, v in card.items() if k != "log"}


def _model_hash(model: str, root: Path) -> str:
    """A cheap fingerprint of a model folder (file names, sizes, times): retrain what depends on it when it changes."""
    p = Path(model) if Path(model).is_absolute() else root / model
    if not p.is_dir():
        return ""
    return settings_hash(sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in p.iterdir() if f.is_file()))


def _write_card(folder: Path, card: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_card.json").write_text(
        json.dumps(card, indent=1, ensure_ascii=False, default=str), encoding="utf-8"
    )


def _check_config_names(cfg: Config, bi_out: Path, ce_out: Path) -> None:
    """Warn when the config's dense.model / rerank.model do not name what this job writes."""
    import sys

    dense = Path(cfg.dense.model)
    dense = dense if dense.is_absolute() else cfg.root / dense
    if dense.resolve() != bi_out.resolve():
        print(
            f"note: {cfg.source}: dense.model is {cfg.dense.model}, not the bi-encoder this job trains ({bi_out});"
            " the dense index follows dense.model",
            file=sys.stderr,
        )
    if cfg.rerank.model:
        ce = Path(cfg.rerank.model)
        ce = ce if ce.is_absolute() else cfg.root / ce
        if ce.resolve() != ce_out.resolve():
            print(f"note: {cfg.source}: rerank.model is {cfg.rerank.model}, not {ce_out}", file=sys.stderr)
