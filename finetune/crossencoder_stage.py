"""The cross-encoder's stage of `make finetune`: its training groups (a query, its positive and negatives from the
candidates it will rerank; or, with ``loss: graded``, a query's judged products and their grades), its dev metric,
and the training run (:mod:`finetune.crossencoder`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from core.config import Config
from finetune.data import TrainingQueries, mine_hard_negatives
from finetune.inputs import TrainingData, ranker_held_out, rows_of, without_rerank


def train_crossencoder(
    cfg: Config, data: TrainingData, out: Path, resume: bool, progress: bool, num_layers: int | None = None
) -> dict:
    from engine import SearchEngine
    from engine.rerank import CrossEncoder
    from finetune.crossencoder import train
    from indexer.build import ensure_indexes
    from indexer.dense import stage_model

    t = cfg.finetune.crossencoder
    if num_layers is not None:
        t = dataclasses.replace(t, num_layers=num_layers)
    held = ranker_held_out(cfg, data)
    if held:  # the ranker's queries: it must see cross-encoder scores of queries the cross-encoder never saw
        data = dataclasses.replace(data, train=data.train.only(q for q in data.train.texts if q not in held))
    first = without_rerank(cfg)
    ensure_indexes(first, ["dense"], progress=progress)
    engine = SearchEngine.from_config(first)
    # the loss decides the training groups and the dev metric; the rest is one recipe
    examples_of = graded_examples if t.loss == "graded" else group_examples
    examples, evaluate, notes = examples_of(cfg, t, data, engine, out)
    # the layers it starts from: the base model's, or the fine-tuned bi-encoder's (already tuned to these
    # queries and titles)
    base = stage_model(cfg, "dense-base" if t.init == "base" else "dense")
    model = CrossEncoder.from_base(
        base, t.num_layers, max_length=t.max_length, device=cfg.rerank.device, seed=t.seed, pooling=t.pooling
    )
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
    )
    if held:
        notes["ranker_held_out"] = f"{len(held)} training queries left out: the ranker's (finetune.ranker.held_out)"
    return {
        "base_model": str(base),
        "num_layers": model.num_layers,
        "data": data.description,
        "groups": len(examples),
        **notes,
        **report,
        "training": dataclasses.asdict(t),
    }


def group_examples(cfg: Config, t, data: TrainingData, engine, out: Path):
    """Listwise / pointwise: one group per positive with the query's negatives (known ones first, then mined from
    the candidates it will rerank); the dev metric is MRR@10 over each dev query's candidates."""
    from finetune.crossencoder import Group, rerank_mrr, usable_groups

    t0 = time.perf_counter()
    lo, hi = t.negatives_window
    pool = 3 * (t.group_size - 1)
    negatives = mine_hard_negatives(
        engine,
        data.train,
        stages=("bm25", "dense"),
        window=(lo, hi),
        per_query=pool,
        cache_dir=out.parent / "cache",
        seed=t.seed,
    )
    titles = engine.products.titles
    examples = []
    for qid, pos in data.train.positives.items():
        neg = negative_titles(engine, data.train, qid, negatives)
        for pid, gain in pos.items():
            for row in rows_of(engine, [pid]):
                examples.append(Group(data.train.texts[qid], titles[row], neg, float(gain)))
    mining_s = time.perf_counter() - t0
    dev_qids = list(data.dev.texts)[: t.eval_queries]
    dev_texts = [data.dev.texts[q] for q in dev_qids]
    cands = engine.candidates_many(dev_texts)
    cand_titles = [[titles[int(r)] for r in c.rows] for c in cands]
    positives = []
    for qid, c in zip(dev_qids, cands):
        where = {int(r): i for i, r in enumerate(c.rows)}
        positives.append({where[r] for r in rows_of(engine, data.dev.positives[qid]) if r in where})
    notes = {
        "usable_groups": len(usable_groups(examples, t.group_size)),
        "negatives": f"up to {pool} per query from the union of bm25 and dense ranks {lo}-{hi}, "
        f"{t.group_size - 1} sampled per group each epoch; positives and near-duplicates skipped",
        "mining_seconds": round(mining_s, 1),
        "dev_metric": f"MRR@10 of the cross-encoder alone over the union of bm25 and dense top-"
        f"{cfg.rerank.depth} ({len(dev_texts)} dev queries)",
    }
    return examples, rerank_mrr(dev_texts, cand_titles, positives), notes


def graded_examples(cfg: Config, t, data: TrainingData, engine, out: Path):
    """``loss: graded``: one group per training query, its judged products with their gains (relevance +
    ``eval.gain_offset``); the dev metric is NDCG@10 over each dev query's judged products."""
    from finetune.crossencoder import GradedGroup, judged_ndcg, usable_graded

    if not data.train.judged:
        raise ValueError(f"finetune.crossencoder.loss graded needs judged pairs with grades; {data.source} has none")
    titles = engine.products.titles
    offset = cfg.eval.gain_offset

    def groups_of(queries: TrainingQueries, qids) -> list[GradedGroup]:
        out_groups = []
        for qid in qids:
            pairs = [
                (titles[row], r + offset)
                for pid, r in queries.judged.get(qid, {}).items()
                for row in rows_of(engine, [pid])
            ]
            if pairs:
                out_groups.append(GradedGroup(queries.texts[qid], [p[0] for p in pairs], [p[1] for p in pairs]))
        return out_groups

    examples = groups_of(data.train, data.train.judged)
    dev = groups_of(data.dev, list(data.dev.texts)[: t.eval_queries])
    notes = {
        "usable_groups": len(usable_graded(examples)),
        "loss": f"graded (ListNet): up to {t.group_size} judged products per query, targets 2^gain - 1, "
        f"gain = relevance {offset:+g}",
        "dev_metric": f"NDCG@10 of the cross-encoder alone over each dev query's judged products "
        f"({len(dev)} dev queries)",
    }
    return examples, judged_ndcg([g.query for g in dev], [g.titles for g in dev], [g.gains for g in dev]), notes


def negative_titles(engine, train: TrainingQueries, qid: str, mined: dict[str, list[str]]) -> list[str]:
    """A query's negative titles for the cross-encoder: its known negatives (judged below the positives, or
    shown and ignored when the config asks) first, then the mined ones."""
    known = sorted(train.negatives.get(qid, ()))
    pids = known + [p for p in mined.get(qid, []) if p not in train.negatives.get(qid, ())]
    return [engine.products.titles[r] for r in rows_of(engine, pids)]
