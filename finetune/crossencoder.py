"""Fine-tuning the cross-encoder on the candidates it will rerank.

Each training group is one query, one positive and ``group_size - 1``
negatives drawn (fresh for every epoch) from the query's mined negatives:
products in the union of the bm25 and dense candidates, inside a rank window,
neither a positive nor a near-duplicate title of one.  So training sees the
distribution serving sees.

- ``listwise``: softmax cross-entropy of the positive against its group (the
  score is a logit with identity activation; only differences count);
- ``pointwise``: binary cross-entropy per pair (positive 1, negatives 0).

A group's loss is weighted by its positive's gain (click 1, add-to-cart 2,
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
from indexer.config import CrossEncoderTrainConfig


@dataclass
class Group:
    query: str
    positive: str
    negatives: list[str]  # the pool; each epoch samples group_size - 1 of them
    gain: float = 1.0


def groups(examples: Sequence[Group], batch_size: int, group_size: int, rng: np.random.Generator):
    """Batches of (query, [positive, negatives...], gain) in a fresh random order per epoch; examples with
    fewer negatives than ``group_size - 1`` are skipped (they cannot fill a group)."""
    usable = [e for e in examples if len(e.negatives) >= group_size - 1]
    if not usable:
        raise ValueError(f"no training query has {group_size - 1} negatives; lower group_size or widen the window")
    while True:
        order = rng.permutation(len(usable))
        for i in range(0, len(order), batch_size):
            batch = []
            for j in order[i : i + batch_size]:
                e = usable[j]
                picks = rng.choice(len(e.negatives), group_size - 1, replace=False)
                batch.append((e.query, [e.positive] + [e.negatives[p] for p in picks], e.gain))
            yield batch


def group_loss(model: CrossEncoder, batch, loss: str = "listwise") -> torch.Tensor:
    """The gain-weighted mean loss over a batch of groups (the positive first in each)."""
    g = len(batch[0][1])
    queries = [q for q, titles, _ in batch for _ in titles]
    titles = [t for _, ts, _ in batch for t in ts]
    logits = model.logits(queries, titles).float().view(len(batch), g)
    weights = torch.tensor([w for _, _, w in batch], dtype=torch.float32, device=logits.device)
    if loss == "listwise":
        per_group = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long,
                                                                          device=logits.device), reduction="none")
    else:
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        per_group = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
    return (per_group * weights).sum() / weights.sum()


def rerank_mrr(queries: Sequence[str], candidates: Sequence[Sequence[str]], positives: Sequence[set[int]],
               batch_size: int = 128) -> Callable[[CrossEncoder], float]:
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
    """Wrap ``model.model`` in LoRA adapters (peft) and return the checkpoint writer: the adapters alone
    (``<out>/lora/``: what a parameter-efficient run adds) and the merged model beside them, a plain
    transformers folder that serving loads and exports like any other."""
    import copy

    from peft import LoraConfig, TaskType, get_peft_model

    lcfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=["query", "value"])
    model.model = get_peft_model(model.model, lcfg)
    peft_model = model.model

    def save(folder: Path) -> None:
        folder = Path(folder)
        peft_model.save_pretrained(str(folder / "lora"))
        merged = copy.deepcopy(peft_model).merge_and_unload()
        CrossEncoder(merged, model.tokenizer, model.max_length, model.batch_size).save(folder)
    return save


def train(model: CrossEncoder, examples: Sequence[Group], cfg: CrossEncoderTrainConfig, out: Path,
          evaluate: Callable[[CrossEncoder], float] | None = None, log_path: Path | None = None,
          progress: bool = True, resume: bool = False, extra_log: dict | None = None) -> dict:
    """Train ``model`` in place; keep the best checkpoint (by ``evaluate``) in ``out``.
    With ``cfg.workers`` > 1 the training runs in that many data-parallel processes (Ray Train); the best
    checkpoint on disk is the result (``model`` itself stays as it was)."""
    if cfg.workers > 1 and loop.world()[1] == 1:
        from finetune.distributed import train_on_workers

        return train_on_workers(
            lambda: train(model, examples, cfg, out, evaluate, log_path, progress, resume, extra_log), cfg.workers,
            use_gpu=torch.cuda.is_available())
    torch.manual_seed(cfg.seed)
    model.max_length = cfg.max_length
    if cfg.freeze_word_embeddings:
        model.model.get_input_embeddings().weight.requires_grad_(False)
    save = lambda folder: model.save(folder)  # noqa: E731
    if cfg.lora_rank > 0:
        save = with_lora(model, cfg)
    params = [p for p in model.model.parameters() if p.requires_grad]
    return loop.run(model.model, params, lambda rng: groups(examples, cfg.batch_size, cfg.group_size, rng),
                    lambda batch: group_loss(model, batch, cfg.loss), cfg, Path(out),
                    save=save,
                    evaluate=None if evaluate is None else (lambda: evaluate(model)),
                    log_path=log_path, resume=resume, progress=progress, desc=f"cross-encoder ({model.num_layers} layers)",
                    extra_log=extra_log)
