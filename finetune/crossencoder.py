"""Fine-tuning the cross-encoder on the candidates it will rerank.

Each training group is one query, one positive and ``group_size - 1``
negatives drawn (fresh for every epoch) from the query's mined negatives:
products in the union of the bm25 and dense candidates, inside a rank window,
neither a positive nor a near-duplicate title of one.  So training sees the
distribution serving sees.

- ``listwise``: softmax cross-entropy of the positive against its group (the
  score is a logit with identity activation; only differences count);
- ``pointwise``: binary cross-entropy per pair (positive 1, negatives 0);
- ``graded`` (graded judged pairs, e.g. Home Depot's 1–3): a group is up to
  ``group_size`` of one query's *judged* products, and the softmax over them
  is matched to the judged order: cross-entropy against targets
  proportional to ``2^gain − 1`` (ListNet), so a 3 learns to beat a 2.33,
  not only a judged product an unseen one.

A listwise or pointwise group's loss is weighted by its positive's gain (click 1, add-to-cart 2,
purchase 3 by default).  Word embeddings can stay frozen (most of the base
model's parameters, and most of AdamW's cost on a CPU).  With
``lora_rank > 0`` only LoRA adapters on the attention's query and value
projections and the classifier head train (``peft``); checkpoints hold the
adapters (``lora/``) and the merged model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from engine.rerank import CrossEncoder
from finetune import loop
from core.config import CrossEncoderTrainConfig


@dataclass
class Group:
    query: str
    positive: str
    negatives: list[str]  # the pool; each epoch samples group_size - 1 of them
    gain: float = 1.0


def _epochs(usable: Sequence, batch_size: int, rng: np.random.Generator, draw: Callable):
    """Endless batches of ``draw(example)`` over ``usable``, in a fresh random order every epoch."""
    while True:
        order = rng.permutation(len(usable))
        for i in range(0, len(order), batch_size):
            yield [draw(usable[j]) for j in order[i : i + batch_size]]


def usable_groups(examples: Sequence[Group], group_size: int) -> list[Group]:
    """The examples that can fill a group: at least ``group_size - 1`` negatives."""
    return [e for e in examples if len(e.negatives) >= group_size - 1]


def groups(examples: Sequence[Group], batch_size: int, group_size: int, rng: np.random.Generator):
    """Batches of (query, [positive, negatives...], gain) in a fresh random order per epoch; examples with
    fewer negatives than ``group_size - 1`` are skipped (they cannot fill a group)."""
    usable = usable_groups(examples, group_size)
    if not usable:
        raise ValueError(f"no training query has {group_size - 1} negatives; lower group_size or widen the window")

    def draw(e: Group):
        picks = rng.choice(len(e.negatives), group_size - 1, replace=False)
        return e.query, [e.positive] + [e.negatives[p] for p in picks], e.gain

    return _epochs(usable, batch_size, rng, draw)


@dataclass
class GradedGroup:
    """One query's judged products and their gains (graded pairs; ``loss: graded``)."""

    query: str
    titles: list[str]
    gains: list[float]


def usable_graded(examples: Sequence[GradedGroup]) -> list[GradedGroup]:
    """The queries that teach an order: two judged products or more, not all of one grade."""
    return [e for e in examples if len(e.titles) >= 2 and max(e.gains) > min(e.gains)]


def graded_groups(examples: Sequence[GradedGroup], batch_size: int, group_size: int, rng: np.random.Generator):
    """Batches of (query, titles, gains): up to ``group_size`` of each query's judged products, drawn afresh
    every epoch; queries whose judged products all share one grade teach no order and are skipped."""
    usable = usable_graded(examples)
    if not usable:
        raise ValueError("no training query has two judged products of different grades (loss: graded)")

    def draw(e: GradedGroup):
        picks = rng.choice(len(e.titles), min(group_size, len(e.titles)), replace=False)
        return e.query, [e.titles[p] for p in picks], [e.gains[p] for p in picks]

    return _epochs(usable, batch_size, rng, draw)


def graded_loss(model: CrossEncoder, batch) -> torch.Tensor:
    """Mean over the batch's queries of the cross-entropy between the softmax of their products' logits and
    targets proportional to ``2^gain − 1`` (uniform where the drawn products share one grade)."""
    sizes = [len(titles) for _, titles, _ in batch]
    queries = [q for q, titles, _ in batch for _ in titles]
    titles = [t for _, ts, _ in batch for t in ts]
    flat = model.logits(queries, titles).float().view(-1)
    g = max(sizes)
    index = torch.tensor([i * g + j for i, n in enumerate(sizes) for j in range(n)], device=flat.device)
    logits = torch.full((len(batch) * g,), float("-inf"), device=flat.device).index_put((index,), flat).view(-1, g)
    mask = torch.isfinite(logits)
    target = torch.zeros(len(batch), g, device=flat.device)
    for i, (_, _, gains) in enumerate(batch):
        w = 2.0 ** np.asarray(gains, dtype=np.float64) - 1.0
        w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
        target[i, : len(w)] = torch.as_tensor(w, dtype=torch.float32)
    logp = torch.where(mask, torch.log_softmax(logits, dim=1), torch.zeros_like(logits))
    return -(target * logp).sum(1).mean()


def judged_ndcg(
    queries: Sequence[str], titles: Sequence[Sequence[str]], gains: Sequence[Sequence[float]], batch_size: int = 128
) -> Callable[[CrossEncoder], float]:
    """Dev metric for graded pairs: NDCG@10 of the cross-encoder alone ordering each dev query's judged products
    (the ``--judged-only`` benchmark's measure)."""
    from core import metrics

    pair_q = [q for q, ts in zip(queries, titles) for _ in ts]
    pair_t = [t for ts in titles for t in ts]
    bounds = np.cumsum([0] + [len(ts) for ts in titles])
    qrels = {str(i): {str(j): float(x) for j, x in enumerate(g)} for i, g in enumerate(gains)}

    def evaluate(model: CrossEncoder) -> float:
        scores = model.predict(pair_q, pair_t, batch_size=batch_size)
        run = {
            str(i): metrics.top_ids(np.arange(bounds[i + 1] - bounds[i]), scores[bounds[i] : bounds[i + 1]])
            for i in range(len(titles))
        }
        return float(metrics.ndcg(qrels, run, 10)) if run else 0.0

    return evaluate


def group_loss(model: CrossEncoder, batch, loss: str = "listwise") -> torch.Tensor:
    """The gain-weighted mean loss over a batch of groups (the positive first in each)."""
    g = len(batch[0][1])
    queries = [q for q, titles, _ in batch for _ in titles]
    titles = [t for _, ts, _ in batch for t in ts]
    logits = model.logits(queries, titles).float().view(len(batch), g)
    weights = torch.tensor([w for _, _, w in batch], dtype=torch.float32, device=logits.device)
    if loss == "listwise":
        per_group = torch.nn.functional.cross_entropy(
            logits, torch.zeros(len(batch), dtype=torch.long, device=logits.device), reduction="none"
        )
    else:
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        per_group = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
    return (per_group * weights).sum() / weights.sum()


def rerank_mrr(
    queries: Sequence[str], candidates: Sequence[Sequence[str]], positives: Sequence[set[int]], batch_size: int = 128
) -> Callable[[CrossEncoder], float]:
    """Dev metric during training: MRR@10 of the cross-encoder alone ordering each dev query's candidates
    (indices into ``candidates[i]``; a positive the first stages missed counts as a miss)."""
    pair_q = [q for q, c in zip(queries, candidates) for _ in c]
    pair_t = [t for c in candidates for t in c]
    bounds = np.cumsum([0] + [len(c) for c in candidates])

    def evaluate(model: CrossEncoder) -> float:
        scores = model.predict(pair_q, pair_t, batch_size=batch_size)
        rr = []
        for i, pos in enumerate(positives):
            top = np.argsort(-scores[bounds[i] : bounds[i + 1]], kind="stable")[:10]
            rr.append(next((1.0 / (r + 1) for r, j in enumerate(top) if j in pos), 0.0))
        return float(np.mean(rr)) if rr else 0.0

    return evaluate


def with_lora(model: CrossEncoder, cfg: CrossEncoderTrainConfig) -> Callable[[Path], None]:
    """Wrap ``model.model`` in LoRA adapters (:mod:`finetune.lora`; the classifier head trains in full) and
    return the checkpoint writer: the adapters and the merged model, a plain transformers folder."""
    from finetune import lora

    model.model = peft_model = lora.adapt(model.model, cfg, "SEQ_CLS")

    def save(folder: Path) -> None:
        merged = lora.save_adapters(peft_model, folder)
        CrossEncoder(merged, model.tokenizer, model.max_length, model.batch_size).save(Path(folder))

    return save


def train(
    model: CrossEncoder,
    examples: Sequence[Group] | Sequence[GradedGroup],
    cfg: CrossEncoderTrainConfig,
    out: Path,
    evaluate: Callable[[CrossEncoder], float] | None = None,
    log_path: Path | None = None,
    progress: bool = True,
    resume: bool = False,
    extra_log: dict | None = None,
    pause_on_time: bool = False,
) -> dict:
    """Train ``model`` in place; keep the best checkpoint (by ``evaluate``) in ``out``;
    ``pause_on_time``: a time cap pauses the run, resumable (:func:`finetune.loop.run`).
    With ``cfg.workers`` > 1 the training runs in that many data-parallel processes (Ray Train); the best
    checkpoint on disk is the result (``model`` itself stays as it was)."""
    if cfg.workers > 1 and loop.world()[1] == 1:
        from finetune.distributed import train_on_workers

        return train_on_workers(
            lambda: train(model, examples, cfg, out, evaluate, log_path, progress, resume, extra_log, pause_on_time),
            cfg.workers,
            use_gpu=torch.cuda.is_available(),
        )
    torch.manual_seed(cfg.seed)
    model.max_length = cfg.max_length
    if cfg.freeze_word_embeddings:
        model.model.get_input_embeddings().weight.requires_grad_(False)
    save = lambda folder: model.save(folder)  # noqa: E731
    if cfg.lora_rank > 0:
        save = with_lora(model, cfg)
    params = [p for p in model.model.parameters() if p.requires_grad]
    if cfg.loss == "graded":
        batches = lambda rng: graded_groups(examples, cfg.batch_size, cfg.group_size, rng)  # noqa: E731
        step_loss = lambda batch: graded_loss(model, batch)  # noqa: E731
    else:
        batches = lambda rng: groups(examples, cfg.batch_size, cfg.group_size, rng)  # noqa: E731
        step_loss = lambda batch: group_loss(model, batch, cfg.loss)  # noqa: E731
    return loop.run(
        model.model,
        params,
        batches,
        step_loss,
        cfg,
        Path(out),
        save=save,
        evaluate=None if evaluate is None else (lambda: evaluate(model)),
        log_path=log_path,
        resume=resume,
        progress=progress,
        desc=f"cross-encoder ({model.num_layers} layers)",
        extra_log=extra_log,
        pause_on_time=pause_on_time,
    )
